//! Property tests: encode → decode round trips of every typed message with arbitrary strings and
//! numbers, frame decoding under arbitrary chunking, and arbitrary bytes never panicking the
//! decoders nor making them buffer more than a frame.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use rgcs_protocol::frame::{encode_frame, Frame, FrameDecoder, DEFAULT_MAX_HOST_TO_GUEST};
use rgcs_protocol::message::metrics::{CpuStat, CpuUsage, MemoryEntry, MemoryStat, PidsStat};
use rgcs_protocol::message::*;
use rgcs_protocol::{HResult, JsonString, MessageId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// Any string, control characters and non-ASCII included.
fn s() -> impl Strategy<Value = String> {
    "(?s).{0,12}"
}

fn request_base() -> impl Strategy<Value = RequestBase> {
    (s(), s(), option::of(btree_map(s(), s(), 0..3))).prop_map(|(c, a, o)| RequestBase {
        container_id: c,
        activity_id: a,
        otel_span_context: o,
        opencensus_span_context: None,
    })
}

fn response_base() -> impl Strategy<Value = ResponseBase> {
    let record = (any::<i32>(), s(), s(), s(), s(), any::<u32>(), s()).prop_map(
        |(r, message, stack_trace, module_name, file_name, line, function_name)| ErrorRecord {
            result: HResult(r),
            message,
            stack_trace,
            module_name,
            file_name,
            line,
            function_name,
        },
    );
    (any::<i32>(), s(), s(), vec(record, 0..3)).prop_map(|(r, a, e, records)| ResponseBase {
        result: HResult(r),
        activity_id: a,
        error_message: e,
        error_records: records,
    })
}

fn frame_of(bytes: &[u8]) -> Frame {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_HOST_TO_GUEST);
    dec.extend(bytes);
    let f = dec.next_frame().expect("valid").expect("whole");
    assert_eq!(dec.buffered(), 0);
    f
}

fn request_roundtrip<B>(m: MessageId, id: u64, base: &RequestBase, body: &B)
where
    B: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode_request(m, id, base, body).expect("encode");
    let f = frame_of(&bytes);
    assert_eq!((f.message, f.id), (m, id));
    assert_eq!(f.payload.last(), Some(&b'\n'));
    let (b, d) = decode_request_body::<B>(&f.payload).expect("decode");
    assert_eq!(&b, base);
    assert_eq!(&d, body);
    Request::decode(m, &f.payload).expect("typed decode");
}

fn response_roundtrip<B>(m: MessageId, id: u64, base: &ResponseBase, body: &B)
where
    B: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode_response(m, id, base, body).expect("encode");
    let f = frame_of(&bytes);
    assert_eq!((f.message, f.id), (m.response(), id));
    let (b, d) = decode_response::<B>(&f.payload).expect("decode");
    assert_eq!(&b, base);
    assert_eq!(&d, body);
}

fn oci_process() -> impl Strategy<Value = oci_spec::runtime::Process> {
    (
        vec(s(), 0..3),
        vec(s(), 0..3),
        "/[a-z/]{0,8}",
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(args, env, cwd, uid, gid, terminal)| {
            let mut p = oci_spec::runtime::Process::default();
            p.set_args(Some(args));
            p.set_env(Some(env));
            p.set_cwd(cwd.into());
            p.set_terminal(Some(terminal));
            let mut user = oci_spec::runtime::User::default();
            user.set_uid(uid);
            user.set_gid(gid);
            p.set_user(user);
            p
        })
}

fn process_parameters() -> impl Strategy<Value = ProcessParameters> {
    (
        (s(), s(), vec(s(), 0..4), s(), s(), btree_map(s(), s(), 0..4)),
        vec(any::<bool>(), 9),
        vec(any::<i32>(), 0..3),
        option::of(oci_process()),
        option::of(s().prop_map(|v| json!({ "hostname": v }))),
    )
        .prop_map(
            |((app, cl, args, user, wd, env), b, console, proc_, spec)| ProcessParameters {
                application_name: app,
                command_line: cl,
                command_args: args,
                user,
                working_directory: wd,
                environment: env,
                restricted_token: b[0],
                emulate_console: b[1],
                create_std_in_pipe: b[2],
                create_std_out_pipe: b[3],
                create_std_err_pipe: b[4],
                console_size: console,
                create_in_utility_vm: b[5],
                use_existing_login: b[6],
                use_legacy_console: b[7],
                oci_specification: spec,
                oci_process: proc_,
            },
        )
}

fn property_type() -> impl Strategy<Value = PropertyType> {
    prop_oneof![
        Just("ProcessList".to_owned()),
        Just("Statistics".to_owned()),
        Just("SystemGUID".to_owned()),
        s(),
    ]
    .prop_map(|n| PropertyType::from(n.as_str()))
}

fn request_type() -> impl Strategy<Value = RequestType> {
    prop_oneof![
        Just("Add".to_owned()),
        Just("Remove".to_owned()),
        Just("PreAdd".to_owned()),
        s()
    ]
    .prop_map(|n| RequestType::from(n.as_str()))
}

fn resource() -> impl Strategy<Value = Resource> {
    let mvd = (
        s(),
        any::<u8>(),
        any::<u8>(),
        any::<u64>(),
        vec(any::<bool>(), 5),
        vec(s(), 0..3),
        s(),
    )
        .prop_map(
            |(mount_path, lun, controller, partition, b, options, filesystem)| {
                Resource::MappedVirtualDisk(MappedVirtualDisk {
                    mount_path,
                    lun,
                    controller,
                    partition,
                    read_only: b[0],
                    encrypted: b[1],
                    options,
                    block_dev: b[2],
                    verity_info: b[3].then(|| DeviceVerityInfo {
                        root_digest: "ab".into(),
                        block_size: 4096,
                        ..DeviceVerityInfo::default()
                    }),
                    ensure_filesystem: b[4],
                    filesystem,
                })
            },
        );
    let scsi = (any::<u8>(), any::<u8>())
        .prop_map(|(controller, lun)| Resource::ScsiDevice(ScsiDevice { controller, lun }));
    let dir =
        (s(), any::<i32>(), s(), any::<bool>()).prop_map(|(mount_path, port, share_name, read_only)| {
            Resource::MappedDirectory(MappedDirectory {
                mount_path,
                port,
                share_name,
                read_only,
            })
        });
    let vpmem =
        (any::<u32>(), s(), option::of((any::<u64>(), any::<u64>()))).prop_map(|(n, mount_path, m)| {
            Resource::VpMemDevice(VpMemDevice {
                device_number: n,
                mount_path,
                mapping_info: m.map(|(o, sz)| VpMemMappingInfo {
                    device_offset_in_bytes: o,
                    device_size_in_bytes: sz,
                }),
                verity_info: None,
            })
        });
    let layers = (
        s(),
        s(),
        vec((s(), s(), option::of(s()), option::of(s())), 0..3),
        s(),
    )
        .prop_map(|(container_id, container_root_path, layers, scratch_path)| {
            Resource::CombinedLayers(CombinedLayers {
                container_id,
                container_root_path,
                layers: layers
                    .into_iter()
                    .map(|(id, path, path_type, cache)| Layer {
                        id,
                        path,
                        path_type,
                        cache,
                    })
                    .collect(),
                scratch_path,
            })
        });
    let net = (
        (s(), s(), s(), s(), s(), any::<u16>()),
        vec(any::<bool>(), 3),
        vec((s(), any::<u8>()), 0..3),
        vec((s(), s(), any::<u16>()), 0..3),
    )
        .prop_map(|((ns, id, mac, suffix, servers, encap), b, ips, routes)| {
            Resource::Network(NetworkAdapter {
                namespace_id: ns,
                id,
                mac_address: mac,
                dns_suffix: suffix,
                dns_server_list: servers,
                encap_overhead: encap,
                vpci_assigned: b[0],
                ip_configs: ips
                    .into_iter()
                    .map(|(ip_address, prefix_length)| IpConfig {
                        ip_address,
                        prefix_length,
                    })
                    .collect(),
                routes: routes
                    .into_iter()
                    .map(|(next_hop, destination_prefix, metric)| Route {
                        next_hop,
                        destination_prefix,
                        metric,
                    })
                    .collect(),
                policy_based_routing: b[1],
                enable_low_metric: b[2],
                ..NetworkAdapter::default()
            })
        });
    let constraints = option::of(any::<i64>()).prop_map(|limit| {
        let mut linux = oci_spec::runtime::LinuxResources::default();
        if let Some(limit) = limit {
            let mut memory = oci_spec::runtime::LinuxMemory::default();
            memory.set_limit(Some(limit));
            linux.set_memory(Some(memory));
        }
        Resource::ContainerConstraints(Box::new(ContainerConstraints {
            windows: Some(json!({})),
            linux: Some(linux),
        }))
    });
    let policy = (s(), s(), s(), s()).prop_map(|(a, b, c, d)| {
        Resource::SecurityPolicy(ConfidentialOptions {
            enforcer_type: a,
            encoded_security_policy: b,
            encoded_uvm_reference: c,
            encoded_uvm_hash_envelope_reference: d,
        })
    });
    let fragment = (s(), s()).prop_map(|(fragment, media_type)| {
        Resource::SecurityPolicyFragment(SecurityPolicyFragment { fragment, media_type })
    });
    let vpci = s().prop_map(|vmbus_guid| Resource::VpciDevice(VpciDevice { vmbus_guid }));
    let unsupported = (s(), option::of(s())).prop_map(|(t, v)| Resource::Unsupported {
        resource_type: format!("X{t}"),
        settings: v.map_or(serde_json::Value::Null, |v| json!({ "k": v, "n": [1, -2, 3.5] })),
    });
    prop_oneof![
        mvd,
        scsi,
        dir,
        vpmem,
        layers,
        net,
        constraints,
        policy,
        fragment,
        vpci,
        Just(Resource::PodCgroupMemoryLimit),
        unsupported,
    ]
}

fn metrics() -> impl Strategy<Value = Metrics> {
    (
        any::<u64>(),
        any::<u64>(),
        vec(any::<u64>(), 0..4),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(current, total, per_cpu, usage, with_memory)| Metrics {
            pids: Some(PidsStat { current, limit: 0 }),
            cpu: Some(CpuStat {
                usage: Some(CpuUsage {
                    total,
                    per_cpu,
                    ..CpuUsage::default()
                }),
                throttling: None,
            }),
            memory: with_memory.then(|| MemoryStat {
                rss: usage,
                usage: Some(MemoryEntry {
                    usage,
                    ..MemoryEntry::default()
                }),
                ..MemoryStat::default()
            }),
            ..Metrics::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn negotiate_round_trips(base in request_base(), id in any::<u64>(), min in any::<u32>(), max in any::<u32>()) {
        request_roundtrip(MessageId::NEGOTIATE_PROTOCOL, id, &base, &NegotiateProtocolRequest { minimum_version: min, maximum_version: max });
    }

    #[test]
    fn create_round_trips(
        base in request_base(),
        id in any::<u64>(),
        cfg in option::of((any::<u32>(), any::<u32>(), s(), s(), any::<bool>())),
        versions in option::of((s(), s(), any::<u32>(), any::<u32>())),
    ) {
        let body = ContainerCreate {
            container_config: cfg.map(|(major, minor, bundle, scratch, spec)| JsonString(ContainerConfig {
                schema_version: SchemaVersion { major, minor },
                oci_bundle_path: bundle,
                oci_specification: spec.then(oci_spec::runtime::Spec::default),
                scratch_dir_path: scratch,
            })),
            supported_versions: versions.map(|(a, b, c, d)| ProtocolSupport {
                minimum_version: a,
                maximum_version: b,
                minimum_protocol_version: c,
                maximum_protocol_version: d,
            }),
        };
        request_roundtrip(MessageId::CREATE, id, &base, &body);
    }

    #[test]
    fn execute_process_round_trips(
        base in request_base(),
        id in any::<u64>(),
        params in process_parameters(),
        ports in (any::<u32>(), any::<u32>(), any::<u32>()),
        windows in any::<bool>(),
    ) {
        let body = ExecuteProcessRequest {
            settings: ExecuteProcessSettings {
                process_parameters: JsonString(params),
                stdio_relay_settings: windows.then(|| json!({"StdIn": "00000000-0000-0000-0000-000000000001"})),
                vsock_stdio_relay_settings: VsockStdioRelaySettings { std_in: ports.0, std_out: ports.1, std_err: ports.2 },
            },
        };
        request_roundtrip(MessageId::EXECUTE_PROCESS, id, &base, &body);
    }

    #[test]
    fn process_control_round_trips(
        base in request_base(),
        id in any::<u64>(),
        pid in any::<u32>(),
        n in any::<u32>(),
        signal in option::of(any::<i32>()),
        hw in (any::<u16>(), any::<u16>()),
    ) {
        request_roundtrip(MessageId::WAIT_FOR_PROCESS, id, &base, &WaitForProcessRequest { process_id: pid, timeout_in_ms: n });
        request_roundtrip(MessageId::SIGNAL_PROCESS, id, &base, &SignalProcessRequest {
            process_id: pid,
            options: signal.map(|signal| SignalProcessOptions { signal }),
        });
        request_roundtrip(MessageId::RESIZE_CONSOLE, id, &base, &ResizeConsoleRequest { process_id: pid, height: hw.0, width: hw.1 });
        for m in [MessageId::START, MessageId::SHUTDOWN_GRACEFUL, MessageId::SHUTDOWN_FORCED, MessageId::DUMP_STACKS,
                  MessageId::DELETE_CONTAINER_STATE, MessageId::UPDATE_CONTAINER, MessageId::LIFECYCLE_NOTIFICATION,
                  MessageId::MODIFY_SERVICE_SETTINGS] {
            request_roundtrip(m, id, &base, &Empty {});
        }
    }

    #[test]
    fn get_properties_round_trips(
        base in request_base(),
        id in any::<u64>(),
        types in vec(property_type(), 0..4),
        queries in option::of(s()),
    ) {
        let body = GetPropertiesRequest {
            query: JsonString(PropertyQuery {
                property_types: types,
                queries: queries.map(|q| json!({ "Statistics": { "note": q } })),
            }),
        };
        request_roundtrip(MessageId::GET_PROPERTIES, id, &base, &body);
    }

    #[test]
    fn modify_settings_round_trips(base in request_base(), id in any::<u64>(), rt in request_type(), res in resource()) {
        let body = ModifySettingsRequest { request: ModificationRequest::new(rt, res) };
        request_roundtrip(MessageId::MODIFY_SETTINGS, id, &base, &body);
    }

    #[test]
    fn responses_round_trip(
        base in response_base(),
        id in any::<u64>(),
        n in any::<u32>(),
        text in s(),
        pids in vec(any::<u32>(), 0..4),
        m in option::of(metrics()),
        flags in vec(any::<bool>(), 4),
    ) {
        response_roundtrip(MessageId::START, id, &base, &Empty {});
        response_roundtrip(MessageId::NEGOTIATE_PROTOCOL, id, &base, &NegotiateProtocolResponse {
            version: n,
            capabilities: GcsCapabilities {
                send_host_create_message: flags[0],
                supported_schema_versions: vec![SchemaVersion { major: n, minor: n / 2 }],
                runtime_os_type: text.clone(),
                guest_defined_capabilities: GuestDefinedCapabilities {
                    signal_process_supported: flags[1],
                    dump_stacks_supported: flags[2],
                    ..GuestDefinedCapabilities::default()
                },
                modify_service_settings_supported: flags[3],
                ..GcsCapabilities::default()
            },
        });
        response_roundtrip(MessageId::CREATE, id, &base, &ContainerCreateResponse { selected_version: text.clone(), selected_protocol_version: n });
        response_roundtrip(MessageId::EXECUTE_PROCESS, id, &base, &ExecuteProcessResponse { process_id: n });
        response_roundtrip(MessageId::WAIT_FOR_PROCESS, id, &base, &WaitForProcessResponse { exit_code: n });
        response_roundtrip(MessageId::DUMP_STACKS, id, &base, &DumpStacksResponse { guest_stacks: text.clone() });
        response_roundtrip(MessageId::GET_PROPERTIES, id, &base, &GetPropertiesResponse {
            properties: JsonString(Properties {
                process_list: pids.into_iter().map(|process_id| ProcessDetails { process_id }).collect(),
                lcow_metrics: m,
            }),
        });
    }

    #[test]
    fn notifications_round_trip(c in s(), a in s(), t in 0usize..9, o in 0usize..7, r in any::<i32>(), info in s()) {
        use NotificationType as N;
        use ActiveOperation as O;
        let n = ContainerNotification {
            container_id: c,
            activity_id: a,
            notification_type: [N::UnexpectedExit, N::GracefulExit, N::ForcedExit, N::None, N::Reboot, N::Constructed, N::Started, N::Paused, N::Unknown][t],
            operation: [O::None, O::Construct, O::Start, O::Pause, O::Resume, O::Shutdown, O::Terminate][o],
            result: HResult(r),
            result_info: info,
        };
        let f = frame_of(&encode_notification(&n).expect("encode"));
        prop_assert_eq!((f.message, f.id), (MessageId::CONTAINER_NOTIFICATION, 0));
        let back: ContainerNotification = rgcs_protocol::gojson::from_slice(&f.payload).expect("decode");
        prop_assert_eq!(back, n);
    }

    /// The same stream in arbitrary chunkings (empty chunks included) gives the same frames.
    #[test]
    fn chunking_does_not_matter(
        frames in vec((any::<u32>(), any::<u64>(), vec(any::<u8>(), 0..40)), 0..6),
        cuts in vec(0usize..24, 0..64),
    ) {
        let mut stream = Vec::new();
        for (t, id, p) in &frames {
            stream.extend(encode_frame(MessageId(*t), *id, p, u32::MAX).expect("frame"));
        }
        let mut dec = FrameDecoder::new(1024);
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter().cycle();
        let mut empties = 0;
        while !rest.is_empty() {
            let mut n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            // empty chunks are fed too, but progress is guaranteed
            empties = if n == 0 { empties + 1 } else { 0 };
            if empties > 2 {
                n = 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            dec.extend(chunk);
            while let Some(f) = dec.next_frame().expect("valid stream") {
                got.push(f);
            }
            prop_assert!(dec.buffered() < 1024);
        }
        prop_assert_eq!(dec.buffered(), 0);
        let want: Vec<Frame> = frames.into_iter().map(|(t, id, payload)| Frame { message: MessageId(t), id, payload }).collect();
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes: no panic, never more than a frame buffered once drained, every frame
    /// within the limit, poisoned for good after an error.
    #[test]
    fn arbitrary_bytes_never_panic_or_overbuffer(
        max in 16u32..300,
        chunks in vec(vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut dec = FrameDecoder::new(max);
        let mut poisoned = false;
        for chunk in &chunks {
            dec.extend(chunk);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(!poisoned);
                        prop_assert!(f.payload.len() + 16 <= max as usize);
                    }
                    Ok(None) => {
                        prop_assert!(!poisoned);
                        prop_assert!(dec.buffered() < max as usize);
                        break;
                    }
                    Err(_) => {
                        poisoned = true;
                        prop_assert_eq!(dec.buffered(), 0);
                        break;
                    }
                }
            }
        }
    }

    /// Arbitrary payloads never panic the typed or the lenient decoders, for every message type.
    #[test]
    fn arbitrary_payloads_never_panic(
        which in 0usize..17,
        payload in prop_oneof![
            vec(any::<u8>(), 0..128),
            "(?s).{0,64}".prop_map(String::into_bytes),
            "[{}\\[\\]\",:0-9a-zA-Z \\\\]{0,64}".prop_map(String::into_bytes),
        ],
    ) {
        let m = MessageId::ALL_REQUESTS.get(which).copied().unwrap_or(MessageId(0x1010_1001));
        let _ = Request::decode(m, &payload);
        let _ = RequestBase::decode_lenient(&payload);
        let _ = decode_response::<Empty>(&payload);
    }
}

#[test]
fn environment_map_keys_keep_their_case() {
    let env: BTreeMap<String, String> = [("Path".to_owned(), "/bin".to_owned())].into();
    let p = ProcessParameters {
        environment: env.clone(),
        ..ProcessParameters::default()
    };
    let back: ProcessParameters =
        rgcs_protocol::gojson::from_str(&serde_json::to_string(&p).expect("json")).expect("decode");
    assert_eq!(back.environment, env);
}
