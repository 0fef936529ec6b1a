//! UVM-level ModifySettings through the real `gcs` binary and host-shim's bridge client: the
//! decoder, dispatch and storage answer each refusal with the HRESULT of docs/gcs-reference.md §4.13, and
//! a hostile path mounts nothing. No VM; nothing here mounts (every request is refused, or removes
//! a path that does not exist).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::process::Stdio;
use std::time::Duration;

use rgcs_client::bridge::BridgeClient;
use rgcs_protocol::message::{Empty, UVM_CONTAINER_ID};
use rgcs_protocol::{HResult, MessageId};
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::time::timeout;

use common::TempDir;

const STEP: Duration = Duration::from_secs(10);

async fn modify(
    client: &BridgeClient,
    container: &str,
    request: Value,
) -> Result<(), (Option<HResult>, String)> {
    client
        .call::<_, Empty>(
            MessageId::MODIFY_SETTINGS,
            container,
            &json!({ "Request": request }),
        )
        .await
        .map(|_| ())
        .map_err(|e| (e.hresult(), e.to_string()))
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[tokio::test]
async fn modify_settings_refusals_carry_the_protocol_hresults() {
    let dir = TempDir::new("agent-storage");
    let sock = dir.0.join("bridge.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcs"))
        .arg("--bridge")
        .arg(format!("unix:{}", sock.display()))
        .arg("--run-dir")
        .arg(dir.0.join("run"))
        .args(["--log-level", "warning", "--no-redial"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (stream, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let client = BridgeClient::new(stream);
    client.negotiate().await.unwrap();
    let before = mountinfo();
    let uvm = UVM_CONTAINER_ID;

    // hostile paths: refused, nothing mounted, nothing created
    for path in [
        "/run/layers/../../etc/rgcs",
        "run/layers/p0",
        "/etc/rgcs-hostile",
        "/run/layers/p0,upperdir=/etc",
    ] {
        let (hr, msg) = modify(
            &client,
            uvm,
            json!({"RequestType": "Add", "ResourceType": "VPMemDevice", "Settings": {"MountPath": path}}),
        )
        .await
        .unwrap_err();
        assert_eq!(hr, Some(HResult::FAIL), "{path}: {msg}");
        assert!(msg.contains("MountPath"), "{msg}");
        let (hr, _) = modify(
            &client,
            uvm,
            json!({"ResourceType": "CombinedLayers", "Settings": {
                "ContainerRootPath": "/run/gcs/c/rgcs-bridge-test/rootfs",
                "Layers": [{"Path": path}]}}),
        )
        .await
        .unwrap_err();
        assert_eq!(hr, Some(HResult::FAIL));
    }
    assert!(!std::path::Path::new("/etc/rgcs-hostile").exists());
    assert!(!std::path::Path::new("/run/gcs/c/rgcs-bridge-test").exists());

    // Remove of something never mounted is success (§6.2–§6.5)
    modify(
        &client,
        uvm,
        json!({"RequestType": "Remove", "ResourceType": "MappedDirectory",
               "Settings": {"MountPath": "/run/mounts/plan9/rgcs-bridge-test-absent", "Port": 564}}),
    )
    .await
    .unwrap();
    modify(
        &client,
        uvm,
        json!({"RequestType": "Remove", "ResourceType": "MappedVirtualDisk", "Settings": {}}),
    )
    .await
    .unwrap();

    // the error table of §4.13
    let cases = [
        (
            uvm,
            json!({"ResourceType": "ContainerConstraints", "RequestType": "Update",
                     "Settings": {"Windows": {}, "Linux": {}}}),
            HResult::SYSTEM_NOT_FOUND,
        ),
        (
            uvm,
            json!({"ResourceType": "HvSocket", "Settings": {}}),
            HResult::FAIL,
        ),
        (uvm, json!({"ResourceType": "Bogus"}), HResult::FAIL),
        (
            uvm,
            json!({"ResourceType": "Network", "Settings": {"ID": "x"}}),
            HResult::FAIL,
        ),
        (
            uvm,
            json!({"ResourceType": "VPCIDevice", "Settings": {"VMBusGUID": "x"}}),
            HResult::FAIL,
        ),
        (
            uvm,
            json!({"ResourceType": "SCSIDevice", "Settings": {"Lun": 1}}),
            HResult::FAIL,
        ),
        (
            uvm,
            json!({"RequestType": "Update", "ResourceType": "VPMemDevice",
                     "Settings": {"MountPath": "/run/layers/p0"}}),
            HResult::FAIL,
        ),
        (
            uvm,
            json!({"ResourceType": "MappedVirtualDisk", "Settings": {"Lun": 256}}),
            HResult::INVALID_JSON,
        ),
        (
            uvm,
            json!({"ResourceType": "MappedDirectory"}),
            HResult::INVALID_JSON,
        ),
        (
            uvm,
            json!({"ResourceType": "MappedDirectory", "Settings": {
                     "MountPath": "/run/mounts/plan9/0", "Port": 564, "ShareName": "0,trans=tcp"}}),
            HResult::FAIL,
        ),
        (
            uvm,
            json!({"ResourceType": "MappedVirtualDisk", "Settings": {
                     "MountPath": "/run/mounts/scsi/m1", "Encrypted": true}}),
            HResult::FAIL,
        ),
    ];
    for (container, request, want) in cases {
        let (hr, msg) = modify(&client, container, request.clone()).await.unwrap_err();
        assert_eq!(hr, Some(want), "{request}: {msg}");
    }
    assert_eq!(mountinfo(), before);

    client.shutdown_uvm(false).await.unwrap();
    let status = timeout(STEP, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}
