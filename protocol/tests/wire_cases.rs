//! Explicit wire cases: framing edge cases, malformed JSON, wrong JSON types for each field kind,
//! message-type nibbles, trailing white space, signed HRESULTs, ActivityId echo, case-insensitive
//! names and zero values left out on encode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use rgcs_protocol::frame::{encode_frame, FrameDecoder, FrameError, Header, MAX_GUEST_TO_HOST};
use rgcs_protocol::message::*;
use rgcs_protocol::{gojson, HResult, JsonString, MessageId};

fn header(t: u32, size: u32, id: u64) -> Vec<u8> {
    Header {
        message: MessageId(t),
        size,
        id,
    }
    .to_bytes()
    .to_vec()
}

fn payload_of(name: &str) -> Vec<u8> {
    common::load(name)[16..].to_vec()
}

// ---- framing ------------------------------------------------------------------------------

#[test]
fn truncated_header_waits_for_more() {
    let mut dec = FrameDecoder::new(1024);
    dec.extend(&header(0x1010_0201, 18, 1)[..15]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.wanted(), 1);
    dec.extend(&[0]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.wanted(), 2);
}

#[test]
fn truncated_payload_waits_for_more() {
    let mut dec = FrameDecoder::new(1024);
    let mut b = header(0x1010_0201, 20, 1);
    b.extend_from_slice(b"{}");
    dec.extend(&b);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.wanted(), 2);
    dec.extend(b"\n");
    assert_eq!(dec.next_frame(), Ok(None));
    dec.extend(b" ");
    let f = dec.next_frame().unwrap().unwrap();
    assert_eq!(f.payload, b"{}\n ");
}

#[test]
fn size_bounds() {
    for size in [0u32, 1, 15] {
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&header(0x1010_0201, size, 1));
        assert_eq!(dec.next_frame(), Err(FrameError::TooSmall { size }));
        assert_eq!(dec.buffered(), 0);
    }
    // 16: a frame with an empty payload
    let mut dec = FrameDecoder::new(1024);
    dec.extend(&header(0x1010_0201, 16, 9));
    let f = dec.next_frame().unwrap().unwrap();
    assert_eq!((f.id, f.payload.len()), (9, 0));
    // an empty payload is a JSON error for a typed body, not a framing error
    assert!(Request::decode(MessageId::WAIT_FOR_PROCESS, &f.payload).is_err());
    // hcsshim's guest unmarshals a Start's base too: no JSON is 0xC037010D there, so an error here
    assert!(Request::decode(MessageId::START, &f.payload).is_err());
    assert_eq!(
        Request::decode(MessageId::START, b"{\"ContainerId\":\"c\"}").unwrap(),
        Request::Start
    );
    for m in [
        MessageId::START,
        MessageId::SHUTDOWN_GRACEFUL,
        MessageId::SHUTDOWN_FORCED,
        MessageId::DUMP_STACKS,
        MessageId::DELETE_CONTAINER_STATE,
    ] {
        for bad in [&b"not json"[..], b"[1]", b"{\"ContainerId\":7}"] {
            assert!(Request::decode(m, bad).is_err(), "{m} accepted {bad:?}");
        }
    }
    // exactly max is fine, max + 1 is not
    let mut dec = FrameDecoder::new(64);
    dec.extend(&encode_frame(MessageId::START, 1, &[b' '; 48], 64).unwrap());
    assert!(dec.next_frame().unwrap().is_some());
    dec.extend(&header(0x1010_0201, 65, 2));
    assert_eq!(dec.next_frame(), Err(FrameError::TooLarge { size: 65, max: 64 }));
    assert!(encode_frame(MessageId::START, 1, &[b' '; 49], 64).is_err());
}

#[test]
fn responses_over_64k_are_refused() {
    let big = ResponseBase::error("", HResult::FAIL, "x".repeat(70_000));
    assert!(matches!(
        encode_response(MessageId::CREATE, 1, &big, &Empty {}),
        Err(EncodeError::Frame(FrameError::TooLarge {
            max: MAX_GUEST_TO_HOST,
            ..
        }))
    ));
    let mut bounded = big;
    bounded.bound_messages(16 * 1024);
    assert!(encode_response(MessageId::CREATE, 1, &bounded, &Empty {}).is_ok());
}

// ---- JSON ----------------------------------------------------------------------------------

#[test]
fn garbage_json_is_an_error_for_every_typed_request() {
    for m in [
        MessageId::NEGOTIATE_PROTOCOL,
        MessageId::CREATE,
        MessageId::EXECUTE_PROCESS,
        MessageId::WAIT_FOR_PROCESS,
        MessageId::SIGNAL_PROCESS,
        MessageId::RESIZE_CONSOLE,
        MessageId::GET_PROPERTIES,
        MessageId::MODIFY_SETTINGS,
    ] {
        for bad in [
            &b""[..],
            b"{",
            b"nul",
            b"{\"a\":}",
            b"[]",
            b"\"x\"",
            b"{} {}",
            b"\xff\xfe",
        ] {
            assert!(Request::decode(m, bad).is_err(), "{m:?} accepted {bad:?}");
        }
    }
    // lenient base decoding never fails
    assert_eq!(RequestBase::decode_lenient(b"{"), RequestBase::default());
}

/// One wrong-typed value per field kind; each must fail, as it does in Go.
#[test]
fn wrong_json_types_are_errors() {
    let base_bad = [
        r#"{"ContainerId":5}"#,
        r#"{"ActivityId":true}"#,
        r#"{"otsc":[1]}"#,
        r#"{"otsc":{"traceparent":1}}"#,
    ];
    for b in base_bad {
        assert!(decode_request_body::<Empty>(b.as_bytes()).is_err(), "{b}");
    }
    let cases: [(MessageId, &str); 24] = [
        // u32
        (MessageId::WAIT_FOR_PROCESS, r#"{"ProcessId":"1"}"#),
        (MessageId::WAIT_FOR_PROCESS, r#"{"ProcessId":-1}"#),
        (MessageId::WAIT_FOR_PROCESS, r#"{"TimeoutInMs":4294967296}"#),
        (MessageId::WAIT_FOR_PROCESS, r#"{"ProcessId":1.5}"#),
        // u16
        (MessageId::RESIZE_CONSOLE, r#"{"Height":65536}"#),
        // i32
        (MessageId::SIGNAL_PROCESS, r#"{"Options":{"Signal":2147483648}}"#),
        // object
        (MessageId::SIGNAL_PROCESS, r#"{"Options":15}"#),
        (MessageId::EXECUTE_PROCESS, r#"{"Settings":"x"}"#),
        // JSON in a string: an object instead of a string, a string that is not JSON, wrong inner types
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":{}}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{\"CommandArgs\":\"ls\"}"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{\"Environment\":[]}"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{\"EmulateConsole\":\"true\"}"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{\"CreateStdInPipe\":1}"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"ProcessParameters":"{\"OciProcess\":{\"args\":[\"x\"]}}"}}"#,
        ),
        (
            MessageId::EXECUTE_PROCESS,
            r#"{"Settings":{"VsockStdioRelaySettings":{"StdIn":"1"}}}"#,
        ),
        (MessageId::CREATE, r#"{"ContainerConfig":{"SchemaVersion":{}}}"#),
        (
            MessageId::CREATE,
            r#"{"ContainerConfig":"{\"SchemaVersion\":\"2.1\"}"}"#,
        ),
        (
            MessageId::GET_PROPERTIES,
            r#"{"Query":"{\"PropertyTypes\":\"ProcessList\"}"}"#,
        ),
        // u8 / bool / string / array inside ModifySettings
        (
            MessageId::MODIFY_SETTINGS,
            r#"{"Request":{"ResourceType":"MappedVirtualDisk","Settings":{"Lun":256}}}"#,
        ),
        (
            MessageId::MODIFY_SETTINGS,
            r#"{"Request":{"ResourceType":"MappedVirtualDisk","Settings":{"ReadOnly":"true"}}}"#,
        ),
        (
            MessageId::MODIFY_SETTINGS,
            r#"{"Request":{"ResourceType":"MappedDirectory","Settings":{"MountPath":true}}}"#,
        ),
        (
            MessageId::MODIFY_SETTINGS,
            r#"{"Request":{"ResourceType":"MappedVirtualDisk","Settings":{"Options":"ro"}}}"#,
        ),
        // enum-like string
        (
            MessageId::MODIFY_SETTINGS,
            r#"{"Request":{"RequestType":1,"ResourceType":"VPCIDevice","Settings":{}}}"#,
        ),
    ];
    for (m, json) in cases {
        assert!(
            Request::decode(m, json.as_bytes()).is_err(),
            "{m:?} accepted {json}"
        );
    }
    // responses: HRESULT out of range, ExitCode of the wrong type
    assert!(decode_response::<Empty>(br#"{"Result":4294967296}"#).is_err());
    assert!(decode_response::<WaitForProcessResponse>(br#"{"Result":0,"ExitCode":"0"}"#).is_err());
}

#[test]
fn null_means_zero_value() {
    let r = Request::decode(
        MessageId::SIGNAL_PROCESS,
        br#"{"ContainerId":null,"ProcessId":null,"Options":null}"#,
    )
    .unwrap();
    assert_eq!(r, Request::SignalProcess(SignalProcessRequest::default()));
}

// ---- message types --------------------------------------------------------------------------

#[test]
fn wrong_type_nibble_is_not_a_request() {
    let exec = payload_of("execute_process_request");
    assert!(matches!(
        Request::decode(MessageId::EXECUTE_PROCESS, &exec),
        Ok(Request::ExecuteProcess(_))
    ));
    for t in [0x2010_0501u32, 0x3010_0501, 0x0010_0501, 0xF010_0501] {
        let m = MessageId(t);
        assert_eq!(Request::decode(m, &exec).unwrap(), Request::NotImplemented(m));
        // the answer still follows the response rule
        assert_eq!(m.response(), MessageId(0x2010_0501));
    }
    // unknown ids and the other category
    let m = MessageId(0x1010_1001);
    assert_eq!(
        Request::decode(m, b"garbage").unwrap(),
        Request::NotImplemented(m)
    );
    assert_eq!(
        Request::decode(MessageId::MODIFY_SERVICE_SETTINGS, b"{}").unwrap(),
        Request::NotImplemented(MessageId::MODIFY_SERVICE_SETTINGS)
    );
}

#[test]
fn trailing_newline_and_white_space_are_accepted() {
    for tail in ["", "\n", "\r\n", " \t\n\n"] {
        let p = format!(r#"{{"ProcessId":7,"TimeoutInMs":50}}{tail}"#);
        assert_eq!(
            Request::decode(MessageId::WAIT_FOR_PROCESS, p.as_bytes()).unwrap(),
            Request::WaitForProcess(WaitForProcessRequest {
                process_id: 7,
                timeout_in_ms: 50
            })
        );
    }
    assert!(Request::decode(MessageId::WAIT_FOR_PROCESS, b"{}\nx").is_err());
    // the host's encoder adds the newline, the guest's does not
    let req = encode_request(MessageId::START, 1, &RequestBase::new("c"), &Empty {}).unwrap();
    assert_eq!(req.last(), Some(&b'\n'));
    let resp = encode_response(MessageId::START, 1, &ResponseBase::ok("a"), &Empty {}).unwrap();
    assert_eq!(resp.last(), Some(&b'}'));
}

#[test]
fn result_is_signed_on_the_wire() {
    let frame = encode_response(
        MessageId::SIGNAL_PROCESS,
        4,
        &ResponseBase::error("", HResult::NOT_FOUND, "gone"),
        &Empty {},
    )
    .unwrap();
    let json = String::from_utf8(frame[16..].to_vec()).unwrap();
    assert!(json.starts_with(r#"{"Result":-2147023728,"#), "{json}");
    assert!(
        json.contains(r#""ErrorRecords":[{"Result":-2147023728,"#),
        "{json}"
    );
    let (base, Empty {}) = decode_response::<Empty>(json.as_bytes()).unwrap();
    assert_eq!(base.result, HResult::NOT_FOUND);
    // a peer that sends the unsigned form is understood
    let (base, Empty {}) = decode_response::<Empty>(br#"{"Result":2147942487}"#).unwrap();
    assert_eq!(base.result, HResult::INVALID_ARG);
    // the fixtures carry signed values only
    for f in common::all().iter().filter(|f| f.dir == common::Dir::Response) {
        let (base, Empty {}) = decode_response::<Empty>(&payload_of(f.name)).unwrap();
        let r = format!(r#"{{"Result":{}"#, base.result.0);
        assert!(f.payload.starts_with(&r), "{}", f.name);
    }
}

#[test]
fn activity_id_is_echoed() {
    // every success fixture is exactly what the guest builds from its request's ActivityId
    let fixtures = common::all();
    let base_only = |f: &&common::Fixture| {
        f.dir == common::Dir::Response
            && f.payload == r#"{"Result":0,"ActivityId":"00000000-0000-0000-0000-000000000000"}"#
    };
    let mut checked = 0;
    for r in fixtures.iter().filter(base_only) {
        checked += 1;
        let q = fixtures
            .iter()
            .find(|q| q.dir == common::Dir::Request && q.message == r.message.request() && q.id == r.id)
            .unwrap();
        let base = RequestBase::decode_lenient(&payload_of(q.name));
        let out = encode_response(q.message, q.id, &ResponseBase::ok(&base.activity_id), &Empty {}).unwrap();
        assert_eq!(out, common::load(r.name), "{}", r.name);
    }
    assert!(checked >= 6);
    let q = payload_of("execute_process_request");
    let base = RequestBase::decode_lenient(&q);
    let out = encode_response(
        MessageId::EXECUTE_PROCESS,
        7,
        &ResponseBase::ok(&base.activity_id),
        &ExecuteProcessResponse { process_id: 1234 },
    )
    .unwrap();
    assert_eq!(out, common::load("execute_process_response"));
    // a non-zero activity ID comes back, even when the body is malformed
    let id = "5f0e2c1b-9a8d-4c7e-b6f5-a4d3c2b1e0f9";
    let bad = format!(r#"{{"ContainerId":"c","ActivityId":"{id}","ProcessId":"oops"}}"#);
    assert!(Request::decode(MessageId::WAIT_FOR_PROCESS, bad.as_bytes()).is_err());
    let base = RequestBase::decode_lenient(bad.as_bytes());
    let out = encode_response(
        MessageId::WAIT_FOR_PROCESS,
        3,
        &ResponseBase::error(&base.activity_id, HResult::INVALID_JSON, "bad json"),
        &Empty {},
    )
    .unwrap();
    let json = String::from_utf8(out[16..].to_vec()).unwrap();
    assert!(
        json.starts_with(&format!(r#"{{"Result":-1070137075,"ActivityId":"{id}","#)),
        "{json}"
    );
    // an empty ActivityId is omitted, not sent as ""
    let out = encode_response(MessageId::START, 3, &ResponseBase::ok(""), &Empty {}).unwrap();
    assert_eq!(&out[16..], br#"{"Result":0}"#);
}

#[test]
fn names_match_case_insensitively() {
    let p = br#"{"containerid":"c1","ACTIVITYID":"a","settings":{"processparameters":"{\"CreateInUtilityVm\":true,\"commandargs\":[\"ls\"],\"environment\":{\"Path\":\"/bin\"}}","vsockstdiorelaysettings":{"stdin":5,"STDOUT":6}}}"#;
    let (base, body) = decode_request_body::<ExecuteProcessRequest>(p).unwrap();
    assert_eq!(
        (base.container_id.as_str(), base.activity_id.as_str()),
        ("c1", "a")
    );
    let params = &body.settings.process_parameters;
    assert!(params.create_in_utility_vm);
    assert_eq!(params.command_args, ["ls"]);
    // map keys are data: kept as sent
    assert_eq!(params.environment.get("Path").map(String::as_str), Some("/bin"));
    assert_eq!(body.settings.vsock_stdio_relay_settings.std_in, 5);
    assert_eq!(body.settings.vsock_stdio_relay_settings.std_out, 6);
    let m = br#"{"request":{"requesttype":"Remove","resourcetype":"MappedVirtualDisk","settings":{"mountpath":"/m","LUN":2,"readonly":true}}}"#;
    let Request::ModifySettings(r) = Request::decode(MessageId::MODIFY_SETTINGS, m).unwrap() else {
        panic!("not a ModifySettings");
    };
    assert_eq!(r.request.request_type, RequestType::Remove);
    assert_eq!(
        r.request.resource,
        Resource::MappedVirtualDisk(MappedVirtualDisk {
            mount_path: "/m".into(),
            lun: 2,
            read_only: true,
            ..MappedVirtualDisk::default()
        })
    );
    // values (not names) stay case-sensitive, as in Go
    let q: GetPropertiesRequest =
        gojson::from_str(r#"{"query":"{\"propertytypes\":[\"processlist\"]}"}"#).unwrap();
    assert_eq!(
        q.query.property_types,
        [PropertyType::Other("processlist".into())]
    );
}

// ---- zero values ----------------------------------------------------------------------------

fn modify_frame(id: u64, container: &str, request: ModificationRequest) -> Vec<u8> {
    encode_request(
        MessageId::MODIFY_SETTINGS,
        id,
        &RequestBase::new(container),
        &ModifySettingsRequest { request },
    )
    .unwrap()
}

#[test]
fn zero_values_are_left_out_exactly_as_in_appendix_a() {
    let uvm = UVM_CONTAINER_ID;
    // row 3: DeviceNumber 0 absent
    let vpmem = modify_frame(
        1,
        uvm,
        ModificationRequest::new(
            RequestType::Add,
            Resource::VpMemDevice(VpMemDevice {
                device_number: 0,
                mount_path: "/run/layers/p0".into(),
                ..VpMemDevice::default()
            }),
        ),
    );
    assert_eq!(vpmem, common::load("modify_settings_vpmem_add_request"));
    // row 4: Controller 0, Partition 0, ReadOnly false absent
    let mvd = modify_frame(
        2,
        uvm,
        ModificationRequest::new(
            RequestType::Add,
            Resource::MappedVirtualDisk(MappedVirtualDisk {
                mount_path: format!("/run/gcs/c/{}", common::CID),
                lun: 1,
                controller: 0,
                read_only: false,
                ensure_filesystem: true,
                filesystem: "ext4".into(),
                ..MappedVirtualDisk::default()
            }),
        ),
    );
    assert_eq!(
        mvd,
        common::load("modify_settings_mapped_virtual_disk_add_request")
    );
    // Controller 0 / LUN 0: an empty settings object, still present
    let scsi = modify_frame(
        5,
        uvm,
        ModificationRequest::new(RequestType::Remove, Resource::ScsiDevice(ScsiDevice::default())),
    );
    assert!(String::from_utf8_lossy(&scsi).ends_with(
        r#""Request":{"RequestType":"Remove","ResourceType":"SCSIDevice","Settings":{}}}
"#
    ));
    // and they decode back as zeros
    let Request::ModifySettings(r) = Request::decode(
        MessageId::MODIFY_SETTINGS,
        &payload_of("modify_settings_vpmem_add_request"),
    )
    .unwrap() else {
        panic!()
    };
    assert!(
        matches!(&r.request.resource, Resource::VpMemDevice(d) if d.device_number == 0 && d.mapping_info.is_none())
    );
    // stdio ports of unrequested pipes, Signal 0, empty process parameters
    let exec = ExecuteProcessRequest {
        settings: ExecuteProcessSettings {
            process_parameters: JsonString(ProcessParameters::default()),
            stdio_relay_settings: None,
            vsock_stdio_relay_settings: VsockStdioRelaySettings {
                std_in: 0,
                std_out: 5,
                std_err: 0,
            },
        },
    };
    assert_eq!(
        serde_json::to_string(&exec).unwrap(),
        r#"{"Settings":{"ProcessParameters":"{}","VsockStdioRelaySettings":{"StdOut":5}}}"#
    );
    let sig = SignalProcessRequest {
        process_id: 3,
        options: Some(SignalProcessOptions { signal: 0 }),
    };
    assert_eq!(
        serde_json::to_string(&sig).unwrap(),
        r#"{"ProcessId":3,"Options":{}}"#
    );
    assert_eq!(sig.signal(), SIGKILL);
    // schema versions are omitempty too (hcsshim's SchemaVersion / hcsschema.Version)
    assert_eq!(
        serde_json::to_string(&SchemaVersion { major: 2, minor: 0 }).unwrap(),
        r#"{"Major":2}"#
    );
}

// ---- OCI documents -------------------------------------------------------------------------

#[test]
fn go_field_order_of_the_oci_spec_decodes_the_same() {
    // Go's runtime-spec orders `process` before `root` and `mounts` after `hostname`; oci-spec
    // serialises in another order. Decoding does not care; re-encoding uses oci-spec's order.
    let go = r#"{"ociVersion":"1.1.0","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},"root":{"path":"rootfs","readonly":true},"hostname":"h","mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"linux":{"cgroupsPath":"","resources":{"cpu":{"period":100000,"quota":-1}}}}"#;
    let spec: oci_spec::runtime::Spec = gojson::from_str(go).unwrap();
    assert_eq!(spec.hostname().as_deref(), Some("h"));
    assert_eq!(spec.process().as_ref().unwrap().args().as_ref().unwrap(), &["sh"]);
    let again: oci_spec::runtime::Spec = gojson::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
    // Go omits nothing required here: a process without `user` or `cwd` is refused by oci-spec
    assert!(gojson::from_str::<oci_spec::runtime::Process>(r#"{"args":["sh"]}"#).is_err());
}
