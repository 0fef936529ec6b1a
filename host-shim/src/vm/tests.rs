//! Launcher tests with the real vhost-device-vsock and a fake QEMU (a shell script), with the
//! test itself playing the guest by connecting to the per-port Unix sockets the way
//! vhost-device-vsock would.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const WAIT: Duration = Duration::from_secs(20);

/// Fails the test if vhost-device-vsock is missing (scripts/setup.sh installs it).
fn vhost_bin() -> PathBuf {
    let bin = config::default_vhost_device_vsock();
    assert!(
        bin.is_file(),
        "vhost-device-vsock not found ({}): run scripts/setup.sh",
        bin.display()
    );
    bin
}

/// A config whose "QEMU" is `script`, with dummy kernel and initrd files in `dir`.
fn fake_config(dir: &Path, script: &str) -> UvmConfig {
    let qemu = dir.join("fake-qemu");
    std::fs::write(&qemu, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("vmlinux"), b"x").unwrap();
    std::fs::write(dir.join("initrd"), b"x").unwrap();
    let mut cfg = UvmConfig::new(dir.join("vmlinux"), dir.join("initrd"));
    cfg.accel = Accel::Tcg;
    cfg.qemu_bin = qemu;
    cfg.vhost_device_vsock_bin = vhost_bin();
    cfg
}

/// `Uvm::start`, retried on ETXTBSY: a parallel test's fork may briefly hold our fresh script
/// open for writing.
async fn start(cfg: &UvmConfig, opts: &UvmOptions) -> Uvm {
    let mut tries = 0;
    loop {
        match Uvm::start(cfg, opts).await {
            Ok(uvm) => return uvm,
            Err(VmError::Spawn(SpawnError::Spawn { source, .. }))
                if source.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("start failed: {e:?}"),
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn uvm_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Uvm>();
    assert_send_sync::<GuestLogs>();
}

#[tokio::test]
async fn vhost_device_vsock_starts_and_is_cleaned_up() {
    let parent = tempfile::tempdir_in("/tmp").unwrap();
    let mut cfg = UvmConfig::new("/k", "/i");
    cfg.vhost_device_vsock_bin = vhost_bin();
    let run_dir = RunDir::create(parent.path()).unwrap();
    let dir = run_dir.path().to_path_buf();
    let child = start_vhost_device_vsock(&cfg, &run_dir, Duration::from_secs(10))
        .await
        .unwrap();
    let pid = child.pid();
    assert!(run_dir.vhost_socket().exists());
    let status = child.stop().await.unwrap();
    assert!(
        status.signal() == Some(libc::SIGTERM) || status.success(),
        "{status:?}"
    );
    drop(child);
    drop(run_dir);
    assert!(!dir.exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
}

#[tokio::test]
async fn a_bad_backend_binary_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fake_config(dir.path(), "exec sleep 30");
    cfg.vhost_device_vsock_bin = "/bin/false".into();
    let err = Uvm::start(&cfg, &UvmOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, VmError::VhostNotReady { status: Some(_), .. }),
        "{err}"
    );
    cfg.vhost_device_vsock_bin = dir.path().join("does-not-exist");
    let err = Uvm::start(&cfg, &UvmOptions::default()).await.unwrap_err();
    assert!(matches!(err, VmError::Spawn(_)), "{err}");
}

#[tokio::test]
async fn serves_entropy_logs_and_bridge_then_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_config(dir.path(), "echo \"fake qemu $*\"; exec sleep 60");
    let uvm = start(&cfg, &UvmOptions::default()).await;
    let run_dir = uvm.run_dir().to_path_buf();
    assert!(run_dir.as_os_str().len() <= rundir::MAX_RUN_DIR_LEN);
    assert!(run_dir.join("vhost.sock").exists());
    let port = |p: u32| rgcs_client::vsock::port_path(uvm.vsock_prefix(), p);
    for p in [ENTROPY_PORT, LOG_PORT, BRIDGE_PORT] {
        assert!(port(p).exists(), "no listener for port {p}");
    }

    // Entropy: 512 bytes, then EOF.
    assert!(!uvm.entropy_delivered());
    let mut s = UnixStream::connect(port(ENTROPY_PORT)).await.unwrap();
    let mut seed = Vec::new();
    s.read_to_end(&mut seed).await.unwrap();
    assert_eq!(seed.len(), entropy::ENTROPY_BYTES);
    wait_until("entropy_delivered", || uvm.entropy_delivered()).await;

    // Logs: JSON and raw lines become records.
    let logs = uvm.guest_logs();
    let mut log = UnixStream::connect(port(LOG_PORT)).await.unwrap();
    log.write_all(b"{\"time\":\"t\",\"level\":\"info\",\"msg\":\"gcs started\",\"pid\":1}\npanic: boom\n")
        .await
        .unwrap();
    let rec = logs.wait_for(WAIT, |r| r.msg == "gcs started").await.unwrap();
    assert_eq!(rec.fields["pid"], 1);
    assert!(logs
        .wait_for(WAIT, |r| r.raw && r.msg == "panic: boom")
        .await
        .is_some());

    // Bridge: the accepted stream is connected to the "guest".
    let (guest, host) = tokio::join!(UnixStream::connect(port(BRIDGE_PORT)), uvm.accept_bridge(WAIT));
    let (mut guest, mut host) = (guest.unwrap(), host.unwrap());
    guest.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    // Stdio listeners.
    let stdio = uvm.listen(FIRST_STDIO_PORT).unwrap();
    assert!(port(FIRST_STDIO_PORT).exists());
    drop(stdio);
    assert!(!port(FIRST_STDIO_PORT).exists());

    // QEMU got the argv and logs to qemu.log.
    let qemu_log = uvm.qemu_log().to_path_buf();
    wait_until("qemu.log", || {
        std::fs::read_to_string(&qemu_log).is_ok_and(|s| s.contains("-no-reboot"))
    })
    .await;
    assert!(uvm.exit_status().is_none());
    let status = uvm.shutdown().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!run_dir.exists(), "run dir left behind");
}

#[tokio::test]
async fn qemu_exiting_early_fails_the_bridge_wait() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_config(dir.path(), "echo 'qemu: bad option' >&2; exit 3");
    let uvm = start(&cfg, &UvmOptions::default()).await;
    let err = uvm.accept_bridge(WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::QemuExited {
                port: BRIDGE_PORT,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(uvm.wait(WAIT).await.unwrap().code(), Some(3));
    assert!(std::fs::read_to_string(uvm.qemu_log())
        .unwrap()
        .contains("bad option"));
    let run_dir = uvm.run_dir().to_path_buf();
    drop(uvm);
    assert!(!run_dir.exists());
}

#[tokio::test]
async fn without_bridge_serving_the_port_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_config(dir.path(), "exec sleep 60");
    let opts = UvmOptions {
        serve_bridge: false,
        ..UvmOptions::default()
    };
    let uvm = start(&cfg, &opts).await;
    assert!(matches!(
        uvm.accept_bridge(WAIT).await,
        Err(VmError::BridgeNotServed)
    ));
    let own = uvm.listen(BRIDGE_PORT).unwrap();
    assert!(rgcs_client::vsock::port_path(uvm.vsock_prefix(), BRIDGE_PORT).exists());
    assert!(uvm.wait(Duration::from_millis(20)).await.is_err());
    drop(own);
    let pid = uvm.qemu_pid();
    drop(uvm);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "qemu still running: {stat}"
    );
}
