//! VM tier, the CLI: `rgcs uvm boot --vsock-dir DIR --no-bridge` boots a UVM and leaves the bridge
//! port to another host program (a conformance tool). This test is that program: it listens where
//! the CLI says guest port 0x40000000 arrives, negotiates with the real agent, then interrupts the
//! CLI and checks that the VM, its processes and its run directory are gone.
//! Needs `RGCS_INITRD` (set by `scripts/test.sh`); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rgcs_client::bridge::BridgeClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::time::timeout;

fn initrd() -> PathBuf {
    rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}"))
}

fn live_processes_mentioning(needle: &Path) -> usize {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|s| s.parse::<u32>().is_ok()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.windows(needle.len()).any(|w| w == needle))
        .count()
}

#[tokio::test]
async fn no_bridge_mode_hands_the_bridge_port_to_another_program_and_cleans_up() {
    let dir = tempfile::Builder::new()
        .prefix("rgcs-cli")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_rgcs"))
        .args(["uvm", "boot", "--no-bridge", "--vsock-dir"])
        .arg(dir.path())
        .arg("--initrd")
        .arg(initrd())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let prefix = timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(p) = line.strip_prefix("vsock prefix: ") {
                return PathBuf::from(p);
            }
        }
        panic!("the CLI never printed its vsock prefix");
    })
    .await
    .unwrap();
    assert!(
        prefix.starts_with(dir.path()),
        "{} is not under --vsock-dir",
        prefix.display()
    );
    let run_dir = prefix.parent().unwrap().to_path_buf();

    // We are the external bridge program now.
    let listener = UnixListener::bind(format!("{}_{}", prefix.display(), 0x4000_0000u32)).unwrap();
    let (stream, _) = timeout(Duration::from_secs(90), listener.accept())
        .await
        .expect("agent dialled the bridge")
        .unwrap();
    let bridge = BridgeClient::new(stream);
    let caps = bridge.negotiate().await.unwrap().capabilities;
    assert_eq!(caps.runtime_os_type, "Linux");

    // Interrupt the CLI: it stops the VM and removes what it made.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(cli.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = timeout(Duration::from_secs(30), cli.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "rgcs exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_processes_mentioning(&run_dir) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        live_processes_mentioning(&run_dir),
        0,
        "processes of {} left",
        run_dir.display()
    );
    assert!(!run_dir.exists(), "run dir {} left behind", run_dir.display());
}
