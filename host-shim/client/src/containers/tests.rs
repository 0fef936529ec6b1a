//! The container client against the fake guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rgcs_protocol::message::NotificationType;
use rgcs_protocol::ports::FIRST_STDIO_PORT;
use rgcs_protocol::HResult;

use crate::fake_guest::client_with_fake_guest;
use crate::spec::{exec_process, init_process, ContainerSpec, Pipes, ProcessSpec};

fn setup() -> (tempfile::TempDir, std::sync::Arc<crate::ContainerClient>) {
    let dir = tempfile::tempdir().unwrap();
    let c = client_with_fake_guest(dir.path());
    (dir, c)
}

#[tokio::test]
async fn execute_process_listens_dials_and_relays() {
    let (_dir, c) = setup();
    let p = ProcessSpec::new(["cat"]);
    let (pid, stdio) = c
        .execute_process("c1", exec_process(&p, Pipes::ALL))
        .await
        .unwrap();
    assert_eq!(pid, 42);
    let out = stdio.capture(b"in\n").await.unwrap();
    assert_eq!(out.stdout_text(), "out:cat\nin\n");
    assert_eq!(c.wait_for_process("c1", pid, None).await.unwrap(), 3);
    let n = c.wait_notification("c1", Duration::from_secs(5)).await.unwrap();
    assert_eq!(n.notification_type, NotificationType::ForcedExit);
    assert_eq!(c.notifications("c1").len(), 1);
    // Ports are never reused: the next process gets the next three.
    let before = c.next_port_for_tests();
    let _ = c
        .execute_process("c1", init_process(Pipes::OUTPUT))
        .await
        .unwrap();
    assert_eq!(c.next_port_for_tests(), before + 2);
    assert!(before >= FIRST_STDIO_PORT + 3);
}

#[tokio::test]
async fn guest_errors_name_the_container_and_hresult() {
    let (_dir, c) = setup();
    let cfg = ContainerSpec::new("dup", "/r", ProcessSpec::new(["true"]))
        .config()
        .unwrap();
    let e = c.create_container("dup", cfg).await.unwrap_err();
    assert_eq!(e.hresult(), Some(HResult::SYSTEM_ALREADY_EXISTS));
    let text = rgcs_protocol::error_chain(&e);
    assert!(
        text.contains("Create for container dup failed")
            && text.contains("HrVmcomputeSystemAlreadyExists")
            && text.contains("container dup exists"),
        "{text}"
    );
}
