//! The control socket against the client's fake guest: stdio descriptors pass to the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::fake_guest::client_with_fake_guest;

use super::{request_async, stdio_from_fds, ControlServer, ProcessArgs, Request};

fn setup() -> (tempfile::TempDir, Arc<rgcs_client::ContainerClient>) {
    let dir = tempfile::tempdir().unwrap();
    let c = client_with_fake_guest(dir.path());
    (dir, c)
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
