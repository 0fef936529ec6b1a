//! The golden fixture table: every message type of docs/gcs-reference.md §2.4 in every direction it
//! travels, built from the JSON samples of the spec (Appendix A in full, plus §3.1 and §4).
//!
//! Each entry is the exact payload a peer sends: host → guest JSON ends with `\n` (Go's streaming
//! encoder), guest → host JSON has none. `tests/fixtures/<name>.bin` holds the raw frame (16-byte
//! header + payload); `RGCS_BLESS=1 cargo test -p rgcs-protocol --test golden` rewrites the files
//! from this table, and nothing else ever writes them.
#![allow(dead_code)] // each test crate uses a different part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::PathBuf;

use rgcs_protocol::{encode_frame, MessageId};

/// A container ID as the v1 shim makes them (64 hex digits).
pub const CID: &str = "3f9c2a8e5b7d41c6a0e8f2b4d6c8e0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c8d0e2";

/// Who sends a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Host → guest request.
    Request,
    /// Guest → host response.
    Response,
    /// Guest → host notification.
    Notification,
}

/// One fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File stem.
    pub name: &'static str,
    /// Header `Type`.
    pub message: MessageId,
    /// Header `ID`.
    pub id: u64,
    /// Direction.
    pub dir: Dir,
    /// The payload (already with its trailing `\n` for requests).
    pub payload: String,
}

impl Fixture {
    /// The frame bytes made from the table (what blessing writes).
    pub fn frame(&self) -> Vec<u8> {
        encode_frame(self.message, self.id, self.payload.as_bytes(), u32::MAX).expect("frame")
    }

    /// The fixture file.
    pub fn path(&self) -> PathBuf {
        fixtures_dir().join(format!("{}.bin", self.name))
    }
}

/// `protocol/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// Reads a fixture file; a missing file is a test failure, never a silent regeneration.
pub fn load(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} is missing ({e}); run `RGCS_BLESS=1 cargo test -p rgcs-protocol --test golden` \
             and review the new file",
            path.display()
        )
    })
}

const NULL: &str = "00000000-0000-0000-0000-000000000000";

fn req(name: &'static str, message: MessageId, id: u64, container: &str, body: &str) -> Fixture {
    let sep = if body.is_empty() { "" } else { "," };
    Fixture {
        name,
        message,
        id,
        dir: Dir::Request,
        payload: format!(r#"{{"ContainerId":"{container}","ActivityId":"{NULL}"{sep}{body}}}"#) + "\n",
    }
}

fn resp(name: &'static str, request: MessageId, id: u64, body: &str) -> Fixture {
    let sep = if body.is_empty() { "" } else { "," };
    Fixture {
        name,
        message: request.response(),
        id,
        dir: Dir::Response,
        payload: format!(r#"{{"Result":0,"ActivityId":"{NULL}"{sep}{body}}}"#),
    }
}

fn raw(name: &'static str, message: MessageId, id: u64, dir: Dir, payload: String) -> Fixture {
    Fixture {
        name,
        message,
        id,
        dir,
        payload,
    }
}

fn modify(name: &'static str, id: u64, container: &str, request: &str) -> Fixture {
    req(
        name,
        MessageId::MODIFY_SETTINGS,
        id,
        container,
        &format!(r#""Request":{request}"#),
    )
}

fn error_resp(name: &'static str, request: MessageId, id: u64, hr: i32, msg: &str) -> Fixture {
    raw(
        name,
        request.response(),
        id,
        Dir::Response,
        format!(
            r#"{{"Result":{hr},"ActivityId":"{NULL}","ErrorMessage":"{msg}","ErrorRecords":[{{"Result":{hr},"Message":"{msg}","ModuleName":"gcs","FileName":"","Line":4294967295}}]}}"#
        ),
    )
}

/// The whole table, in Appendix A order, then the remaining types.
pub fn all() -> Vec<Fixture> {
    use MessageId as M;
    let c = CID;
    let u = NULL;
    let spec = format!(
        r#"{{"ociVersion":"1.1.0","root":{{"path":"/run/gcs/c/{c}/rootfs"}},"hostname":"web","linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}}],"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"]}}}}"#
    );
    let config = format!(
        r#"{{"SchemaVersion":{{"Major":2,"Minor":1}},"OciBundlePath":"/run/gcs/c/{c}","OciSpecification":{spec},"ScratchDirPath":"/run/gcs/c/{c}/scratch/{c}"}}"#
    );
    let exec_params = r#"{"CreateStdInPipe":true,"CreateStdOutPipe":true,"OciProcess":{"terminal":true,"consoleSize":{"height":24,"width":80},"user":{"uid":0,"gid":0},"args":["sh","-c","echo hello"],"env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","TERM=xterm"],"cwd":"/","noNewPrivileges":true}}"#;
    let uvm_params = r#"{"CommandArgs":["ls","-l","/run"],"WorkingDirectory":"/","Environment":{"PATH":"/usr/bin:/bin","TERM":"xterm"},"EmulateConsole":true,"CreateStdInPipe":true,"CreateStdOutPipe":true}"#;
    let metrics = r#"{"LCOWMetrics":{"pids":{"current":3,"limit":1024},"cpu":{"usage":{"total":123456789,"kernel":23456789,"user":100000000,"per_cpu":[61728394,61728395]},"throttling":{}},"memory":{"cache":4096,"rss":1048576,"mapped_file":8192,"pg_fault":1200,"inactive_file":4096,"hierarchical_memory_limit":9223372036854771712,"total_cache":4096,"total_rss":1048576,"usage":{"limit":9223372036854771712,"usage":1056768,"max":2097152},"swap":{"limit":9223372036854771712,"usage":1056768},"kernel":{},"kernel_tcp":{}},"cgroup_stats":{"nr_sleeping":2,"nr_running":1},"memory_oom_control":{"oom_kill":1}}}"#;
    vec![
        // 1, 2: negotiation
        raw(
            "negotiate_protocol_request",
            M::NEGOTIATE_PROTOCOL,
            0,
            Dir::Request,
            format!(r#"{{"ContainerId":"","ActivityId":"{u}","MinimumVersion":4,"MaximumVersion":4}}"#)
                + "\n",
        ),
        resp(
            "negotiate_protocol_response",
            M::NEGOTIATE_PROTOCOL,
            0,
            r#""Version":4,"Capabilities":{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"RuntimeOsType":"Linux","GuestDefinedCapabilities":{"NamespaceAddRequestSupported":true,"SignalProcessSupported":true,"DumpStacksSupported":true,"DeleteContainerStateSupported":true}}"#,
        ),
        // 3-6: resources for the container
        modify(
            "modify_settings_vpmem_add_request",
            1,
            u,
            r#"{"RequestType":"Add","ResourceType":"VPMemDevice","Settings":{"MountPath":"/run/layers/p0"}}"#,
        ),
        resp("modify_settings_response", M::MODIFY_SETTINGS, 1, ""),
        modify(
            "modify_settings_mapped_virtual_disk_add_request",
            2,
            u,
            &format!(
                r#"{{"RequestType":"Add","ResourceType":"MappedVirtualDisk","Settings":{{"MountPath":"/run/gcs/c/{c}","Lun":1,"EnsureFilesystem":true,"Filesystem":"ext4"}}}}"#
            ),
        ),
        modify(
            "modify_settings_combined_layers_add_request",
            3,
            u,
            &format!(
                r#"{{"RequestType":"Add","ResourceType":"CombinedLayers","Settings":{{"ContainerID":"{c}","ContainerRootPath":"/run/gcs/c/{c}/rootfs","Layers":[{{"Path":"/run/layers/p0"}}],"ScratchPath":"/run/gcs/c/{c}/scratch/{c}"}}}}"#
            ),
        ),
        modify(
            "modify_settings_network_add_request",
            4,
            u,
            r#"{"RequestType":"Add","ResourceType":"Network","Settings":{"NamespaceID":"8e3c6f1a-2b4d-4e5f-9a0b-1c2d3e4f5a6b","ID":"a1b2c3d4-e5f6-4789-8abc-def012345678","MacAddress":"00-15-5D-52-C0-03","DNSSuffix":"svc.cluster.local,cluster.local","DNSServerList":"10.96.0.10","IPConfigs":[{"IPAddress":"10.244.1.7","PrefixLength":24}],"Routes":[{"NextHop":"10.244.1.1","DestinationPrefix":"0.0.0.0/0"}]}}"#,
        ),
        // 7: create
        req(
            "create_request",
            M::CREATE,
            5,
            c,
            &format!(
                r#""ContainerConfig":{}"#,
                serde_json::to_string(&config).expect("str")
            ),
        ),
        resp("create_response", M::CREATE, 5, r#""SelectedProtocolVersion":0"#),
        // 8: start
        req("start_request", M::START, 6, c, ""),
        resp("start_response", M::START, 6, ""),
        // 9, 10: init process and its wait
        req(
            "execute_process_request",
            M::EXECUTE_PROCESS,
            7,
            c,
            r#""Settings":{"ProcessParameters":"{\"CreateStdInPipe\":true,\"CreateStdOutPipe\":true,\"CreateStdErrPipe\":true}","VsockStdioRelaySettings":{"StdIn":1073741825,"StdOut":1073741826,"StdErr":1073741827}}"#,
        ),
        resp(
            "execute_process_response",
            M::EXECUTE_PROCESS,
            7,
            r#""ProcessId":1234"#,
        ),
        req(
            "wait_for_process_request",
            M::WAIT_FOR_PROCESS,
            8,
            c,
            r#""ProcessId":1234,"TimeoutInMs":4294967295"#,
        ),
        // 11: exec with OciProcess (tty: no stderr)
        req(
            "execute_process_exec_request",
            M::EXECUTE_PROCESS,
            9,
            c,
            &format!(
                r#""Settings":{{"ProcessParameters":{},"VsockStdioRelaySettings":{{"StdIn":1073741828,"StdOut":1073741829}}}}"#,
                serde_json::to_string(exec_params).expect("str")
            ),
        ),
        resp(
            "execute_process_exec_response",
            M::EXECUTE_PROCESS,
            9,
            r#""ProcessId":1240"#,
        ),
        req(
            "resize_console_request",
            M::RESIZE_CONSOLE,
            10,
            c,
            r#""ProcessId":1240,"Height":40,"Width":120"#,
        ),
        resp("resize_console_response", M::RESIZE_CONSOLE, 10, ""),
        req(
            "get_properties_request",
            M::GET_PROPERTIES,
            11,
            c,
            r#""Query":"{\"PropertyTypes\":[\"ProcessList\"]}""#,
        ),
        resp(
            "get_properties_response",
            M::GET_PROPERTIES,
            11,
            r#""Properties":"{\"ProcessList\":[{\"ProcessId\":1234},{\"ProcessId\":1240}]}""#,
        ),
        req(
            "get_properties_statistics_request",
            M::GET_PROPERTIES,
            12,
            c,
            r#""Query":"{\"PropertyTypes\":[\"Statistics\"]}""#,
        ),
        resp(
            "get_properties_statistics_response",
            M::GET_PROPERTIES,
            12,
            &format!(r#""Properties":{}"#, serde_json::to_string(metrics).expect("str")),
        ),
        // 12: signal or shutdown
        req(
            "signal_process_request",
            M::SIGNAL_PROCESS,
            13,
            c,
            r#""ProcessId":1234,"Options":{"Signal":15}"#,
        ),
        resp("signal_process_response", M::SIGNAL_PROCESS, 13, ""),
        req(
            "signal_process_kill_request",
            M::SIGNAL_PROCESS,
            14,
            c,
            r#""ProcessId":1240"#,
        ),
        error_resp(
            "signal_process_not_found_response",
            M::SIGNAL_PROCESS,
            14,
            -2147023728,
            "process 1240 not found",
        ),
        req("shutdown_graceful_request", M::SHUTDOWN_GRACEFUL, 15, c, ""),
        resp("shutdown_graceful_response", M::SHUTDOWN_GRACEFUL, 15, ""),
        // 13: the wait answers
        resp(
            "wait_for_process_response",
            M::WAIT_FOR_PROCESS,
            8,
            r#""ExitCode":143"#,
        ),
        // 14: the exit notification
        raw(
            "container_notification",
            M::CONTAINER_NOTIFICATION,
            0,
            Dir::Notification,
            format!(
                r#"{{"ContainerId":"{c}","ActivityId":"{u}","Type":"GracefulExit","Operation":"None","Result":0}}"#
            ),
        ),
        // 15: delete
        req(
            "delete_container_state_request",
            M::DELETE_CONTAINER_STATE,
            16,
            c,
            "",
        ),
        resp(
            "delete_container_state_response",
            M::DELETE_CONTAINER_STATE,
            16,
            "",
        ),
        // 16: resource removal
        modify(
            "modify_settings_combined_layers_remove_request",
            17,
            u,
            &format!(
                r#"{{"RequestType":"Remove","ResourceType":"CombinedLayers","Settings":{{"ContainerRootPath":"/run/gcs/c/{c}/rootfs"}}}}"#
            ),
        ),
        modify(
            "modify_settings_mapped_virtual_disk_remove_request",
            18,
            u,
            &format!(
                r#"{{"RequestType":"Remove","ResourceType":"MappedVirtualDisk","Settings":{{"MountPath":"/run/gcs/c/{c}","Lun":1}}}}"#
            ),
        ),
        modify(
            "modify_settings_scsi_device_remove_request",
            19,
            u,
            r#"{"RequestType":"Remove","ResourceType":"SCSIDevice","Settings":{"Lun":1}}"#,
        ),
        modify(
            "modify_settings_vpmem_remove_request",
            20,
            u,
            r#"{"RequestType":"Remove","ResourceType":"VPMemDevice","Settings":{"MountPath":"/run/layers/p0"}}"#,
        ),
        modify(
            "modify_settings_network_remove_request",
            21,
            u,
            r#"{"RequestType":"Remove","ResourceType":"Network","Settings":{"NamespaceID":"8e3c6f1a-2b4d-4e5f-9a0b-1c2d3e4f5a6b","ID":"a1b2c3d4-e5f6-4789-8abc-def012345678"}}"#,
        ),
        modify(
            "modify_settings_mapped_directory_remove_request",
            22,
            u,
            &format!(
                r#"{{"RequestType":"Remove","ResourceType":"MappedDirectory","Settings":{{"MountPath":"/run/gcs/c/{c}/mounts/m0"}}}}"#
            ),
        ),
        // the other resource types of §4.14
        modify(
            "modify_settings_mapped_directory_add_request",
            23,
            u,
            &format!(
                r#"{{"RequestType":"Add","ResourceType":"MappedDirectory","Settings":{{"MountPath":"/run/gcs/c/{c}/mounts/m0","Port":564,"ShareName":"0","ReadOnly":true}}}}"#
            ),
        ),
        modify(
            "modify_settings_vpmem_multimapped_add_request",
            24,
            u,
            r#"{"RequestType":"Add","ResourceType":"VPMemDevice","Settings":{"DeviceNumber":3,"MountPath":"/run/layers/p3-4096-1048576","MappingInfo":{"DeviceOffsetInBytes":4096,"DeviceSizeInBytes":1048576}}}"#,
        ),
        modify(
            "modify_settings_vpci_device_add_request",
            25,
            u,
            r#"{"RequestType":"Add","ResourceType":"VPCIDevice","Settings":{"VMBusGUID":"6f1c9a52-3d8e-4b7a-a2c4-5e6f7a8b9c0d"}}"#,
        ),
        modify(
            "modify_settings_container_constraints_request",
            26,
            c,
            r#"{"RequestType":"Update","ResourceType":"ContainerConstraints","Settings":{"Windows":{},"Linux":{"memory":{"limit":268435456},"cpu":{"shares":512,"quota":50000,"period":100000}}}}"#,
        ),
        modify(
            "modify_settings_security_policy_request",
            27,
            u,
            r#"{"RequestType":"Add","ResourceType":"SecurityPolicy","Settings":{"EnforcerType":"rego","EncodedSecurityPolicy":"cGFja2FnZSBwb2xpY3k=","EncodedUVMReference":"eyJ4IjoxfQ=="}}"#,
        ),
        modify(
            "modify_settings_security_policy_fragment_request",
            28,
            u,
            r#"{"RequestType":"Add","ResourceType":"SecurityPolicyFragment","Settings":{"Fragment":"0oRZAQ=="}}"#,
        ),
        modify(
            "modify_settings_pod_cgroup_memory_limit_request",
            29,
            u,
            r#"{"RequestType":"Update","ResourceType":"PodCgroupMemoryLimit"}"#,
        ),
        modify(
            "modify_settings_hvsocket_request",
            30,
            u,
            r#"{"RequestType":"Update","ResourceType":"HvSocket","Settings":{"DefaultBindSecurityDescriptor":"D:P(A;;FA;;;SY)"}}"#,
        ),
        error_resp(
            "modify_settings_unsupported_response",
            M::MODIFY_SETTINGS,
            30,
            -2147467259,
            "invalid ResourceType 'HvSocket'",
        ),
        // a UVM process
        req(
            "execute_process_uvm_request",
            M::EXECUTE_PROCESS,
            31,
            u,
            &format!(
                r#""Settings":{{"ProcessParameters":{},"VsockStdioRelaySettings":{{"StdIn":1073741830,"StdOut":1073741831}}}}"#,
                serde_json::to_string(uvm_params).expect("str")
            ),
        ),
        req("shutdown_forced_request", M::SHUTDOWN_FORCED, 32, c, ""),
        error_resp(
            "shutdown_forced_not_found_response",
            M::SHUTDOWN_FORCED,
            32,
            -1070137074,
            "container not found",
        ),
        req("dump_stacks_request", M::DUMP_STACKS, 33, u, ""),
        resp(
            "dump_stacks_response",
            M::DUMP_STACKS,
            33,
            r#""GuestStacks":"goroutine 1 [running]:\nmain.main()\n\t/src/cmd/gcs/main.go:42 +0x1d\n""#,
        ),
        // a Create that fails, with a full error record
        req(
            "create_existing_request",
            M::CREATE,
            34,
            c,
            &format!(
                r#""ContainerConfig":{}"#,
                serde_json::to_string(&config).expect("str")
            ),
        ),
        raw(
            "create_error_response",
            M::CREATE.response(),
            34,
            Dir::Response,
            format!(
                r#"{{"Result":-1070137073,"ActivityId":"{u}","ErrorMessage":"container {c} already exists","ErrorRecords":[{{"Result":-1070137073,"Message":"container {c} already exists","StackTrace":"hcsv2.(*Host).CreateContainer\n\t/src/internal/guest/runtime/hcsv2/uvm.go:412","ModuleName":"gcs","FileName":"/src/internal/guest/runtime/hcsv2/uvm.go","Line":412,"FunctionName":"hcsv2.(*Host).CreateContainer"}}]}}"#
            ),
        ),
        // not implemented by the Linux GCS: base-only requests, HrNotImpl answers
        req("update_container_request", M::UPDATE_CONTAINER, 35, c, ""),
        error_resp(
            "update_container_response",
            M::UPDATE_CONTAINER,
            35,
            -2147467263,
            "bridge: function not supported, header type: 0x10100e01",
        ),
        req(
            "lifecycle_notification_request",
            M::LIFECYCLE_NOTIFICATION,
            36,
            c,
            "",
        ),
        error_resp(
            "lifecycle_notification_response",
            M::LIFECYCLE_NOTIFICATION,
            36,
            -2147467263,
            "bridge: function not supported, header type: 0x10100f01",
        ),
        req(
            "modify_service_settings_request",
            M::MODIFY_SERVICE_SETTINGS,
            37,
            u,
            "",
        ),
        error_resp(
            "modify_service_settings_response",
            M::MODIFY_SERVICE_SETTINGS,
            37,
            -2147467263,
            "bridge: function not supported, header type: 0x10200101",
        ),
        // a negotiation the guest refuses
        raw(
            "negotiate_protocol_v3_request",
            M::NEGOTIATE_PROTOCOL,
            0,
            Dir::Request,
            format!(r#"{{"ContainerId":"","ActivityId":"{u}","MinimumVersion":3,"MaximumVersion":3}}"#)
                + "\n",
        ),
        error_resp(
            "negotiate_protocol_unsupported_response",
            M::NEGOTIATE_PROTOCOL,
            0,
            -1070137076,
            "unsupported protocol version range 3..3",
        ),
    ]
}
