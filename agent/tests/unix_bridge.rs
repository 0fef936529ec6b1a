//! The `gcs` binary as a process, bridged over a Unix socket (`--bridge unix:PATH`) and driven by
//! host-shim's real bridge client: negotiation, re-dial after the host drops the bridge, the
//! refusal rules on a fresh connection, and exit on shutdown. No VM, no root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::process::Stdio;
use std::time::Duration;

use rgcs_client::bridge::BridgeClient;
use rgcs_protocol::message::{Empty, UVM_CONTAINER_ID};
use rgcs_protocol::{HResult, MessageId};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::time::timeout;

use common::TempDir;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn negotiates_redials_and_exits_on_shutdown() {
    let dir = TempDir::new("agent-bridge");
    let sock = dir.0.join("bridge.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcs"))
        .arg("--bridge")
        .arg(format!("unix:{}", sock.display()))
        .args(["--log-level", "debug"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    // First connection: negotiate and use it.
    let (stream, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let client = BridgeClient::new(stream);
    let caps = client.negotiate().await.unwrap().capabilities;
    assert_eq!(caps.runtime_os_type, "Linux");
    assert!(caps.guest_defined_capabilities.signal_process_supported);
    assert!(client.dump_stacks().await.unwrap().contains("in flight"));

    // The host drops the bridge: the agent dials again, and the new connection starts
    // un-negotiated.
    drop(client);
    let (stream, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let client = BridgeClient::new(stream);
    let err = client
        .call::<_, Empty>(MessageId::DUMP_STACKS, UVM_CONTAINER_ID, &Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.hresult(), Some(HResult::NOT_IMPL), "{err}");
    client.negotiate().await.unwrap();
    let err = client.negotiate().await.unwrap_err();
    assert_eq!(
        err.hresult(),
        Some(HResult::NOT_IMPL),
        "second negotiation: {err}"
    );
    let err = client
        .call::<_, Empty>(MessageId::UPDATE_CONTAINER, "c1", &Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.hresult(), Some(HResult::NOT_IMPL));
    let err = client
        .call::<_, Empty>(MessageId::SHUTDOWN_GRACEFUL, "no-such", &Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.hresult(), Some(HResult::SYSTEM_NOT_FOUND));

    // Shutdown aimed at the UVM: no answer, the agent exits cleanly.
    client.shutdown_uvm(false).await.unwrap();
    let status = timeout(STEP, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let logs = timeout(STEP, logs).await.unwrap().unwrap();
    let negotiated = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "bridge negotiated" && v["level"] == "info" && v["time"].is_string())
        .count();
    assert_eq!(negotiated, 2, "{logs}");
}
