//! The client and the control socket against a fake guest: a bridge peer that answers the
//! container calls and dials the stdio ports the way the agent does (before it answers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rgcs_protocol::frame::{FrameDecoder, DEFAULT_MAX_HOST_TO_GUEST};
use rgcs_protocol::io::{read_frame, write_frame};
use rgcs_protocol::message::{
    decode_request_body, encode_notification, encode_response, ContainerNotification, Empty,
    ExecuteProcessRequest, ExecuteProcessResponse, NotificationType, RequestBase, ResponseBase,
    WaitForProcessResponse,
};
use rgcs_protocol::{HResult, MessageId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::control::{request_async, stdio_from_fds, ControlServer, ProcessArgs, Request};
use super::*;
use crate::bridge::BridgeClient;
use crate::vm::vsock::port_path;
use crate::vm::FIRST_STDIO_PORT;

/// A fake guest: ExecuteProcess dials the ports, writes "out:<args>" on stdout, echoes stdin
/// after it, and closes; WaitForProcess answers 3; Create of "dup" fails; others succeed.
async fn fake_guest(stream: UnixStream, prefix: PathBuf) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_HOST_TO_GUEST);
    while let Ok(Some(f)) = read_frame(&mut rd, &mut dec).await {
        let base = RequestBase::decode_lenient(&f.payload);
        let ok = ResponseBase::ok(&base.activity_id);
        let frame = match f.message {
            MessageId::EXECUTE_PROCESS => {
                let (_, req): (RequestBase, ExecuteProcessRequest) = decode_request_body(&f.payload).unwrap();
                let ports = req.settings.vsock_stdio_relay_settings;
                let args = req
                    .settings
                    .process_parameters
                    .oci_process
                    .as_ref()
                    .and_then(|p| p.args().clone())
                    .unwrap_or_default()
                    .join(" ");
                let dial = |p: u32| {
                    let prefix = prefix.clone();
                    async move {
                        if p == 0 {
                            None
                        } else {
                            Some(UnixStream::connect(port_path(&prefix, p)).await.unwrap())
                        }
                    }
                };
                let (sin, sout) = (dial(ports.std_in).await, dial(ports.std_out).await);
                let _serr = dial(ports.std_err).await;
                tokio::spawn(async move {
                    if let Some(mut out) = sout {
                        out.write_all(format!("out:{args}\n").as_bytes()).await.unwrap();
                        if let Some(mut i) = sin {
                            let mut buf = Vec::new();
                            i.read_to_end(&mut buf).await.unwrap();
                            out.write_all(&buf).await.unwrap();
                        }
                    }
                });
                encode_response(f.message, f.id, &ok, &ExecuteProcessResponse { process_id: 42 }).unwrap()
            }
            MessageId::WAIT_FOR_PROCESS => {
                let n = ContainerNotification {
                    container_id: base.container_id.clone(),
                    notification_type: NotificationType::ForcedExit,
                    ..Default::default()
                };
                let r =
                    encode_response(f.message, f.id, &ok, &WaitForProcessResponse { exit_code: 3 }).unwrap();
                write_frame(&mut wr, &r).await.unwrap();
                encode_notification(&n).unwrap()
            }
            MessageId::CREATE if base.container_id == "dup" => {
                let e = ResponseBase::error(
                    &base.activity_id,
                    HResult::SYSTEM_ALREADY_EXISTS,
                    "container dup exists",
                );
                encode_response(f.message, f.id, &e, &Empty {}).unwrap()
            }
            _ => encode_response(f.message, f.id, &ok, &Empty {}).unwrap(),
        };
        write_frame(&mut wr, &frame).await.unwrap();
    }
}

fn setup() -> (tempfile::TempDir, Arc<ContainerClient>) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("vsock.sock");
    let (host, guest) = UnixStream::pair().unwrap();
    tokio::spawn(fake_guest(guest, prefix.clone()));
    let client = Arc::new(ContainerClient::new(Arc::new(BridgeClient::new(host)), prefix));
    (dir, client)
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
    let text = control::chain(&e);
    assert!(
        text.contains("Create for container dup failed")
            && text.contains("HrVmcomputeSystemAlreadyExists")
            && text.contains("container dup exists"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_passes_stdio_descriptors() {
    let (dir, c) = setup();
    let serve = tempfile::tempdir().unwrap();
    let server = Arc::new(ControlServer::new(Arc::clone(&c), serve.path()));
    let task = tokio::spawn(Arc::clone(&server).serve());
    for _ in 0..100 {
        if server.socket().exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = Request::Exec {
        id: "c1".into(),
        process: ProcessArgs {
            args: vec!["sh".into()],
            stdin: true,
            ..ProcessArgs::default()
        },
    };
    let (answer, fds) = request_async(serve.path(), req).await.unwrap();
    assert_eq!(answer.pid, Some(42));
    assert_eq!(answer.stdio, Some([true, true, true]));
    assert_eq!(fds.len(), 3);
    let stdio = stdio_from_fds(&answer, fds).unwrap();
    let out = stdio.capture(b"piped\n").await.unwrap();
    assert_eq!(out.stdout_text(), "out:sh\npiped\n");
    let (w, _) = request_async(
        serve.path(),
        Request::Wait {
            id: "c1".into(),
            pid: 42,
        },
    )
    .await
    .unwrap();
    assert_eq!(w.exit_code, Some(3));
    let e = request_async(
        serve.path(),
        Request::Create {
            id: "dup".into(),
            rootfs: Some("/r".into()),
            process: ProcessArgs {
                args: vec!["true".into()],
                ..ProcessArgs::default()
            },
            memory_mib: None,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("HrVmcomputeSystemAlreadyExists"), "{e}");
    task.abort();
    drop(dir);
}
