//! The VM-tier harness: boots the real agent as PID 1 in a real UVM and drives it only through
//! host-shim's public API.
//!
//! Artefacts come from the environment, as `scripts/test.sh` sets it: `RGCS_INITRD` (the initrd
//! from `rgcs initrd build`). A missing artefact fails the test with a message saying how to build
//! it; nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed step is a failed test

pub mod cases;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rgcs_host_shim::session::BootOptions;

/// The initrd to boot, from `RGCS_INITRD`.
pub fn initrd() -> PathBuf {
    rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// Boot options for tests: the test initrd, debug guest logs.
pub fn boot_options() -> BootOptions {
    let mut o = BootOptions::new(initrd());
    o.log_level = "debug".into();
    o
}

/// Boots a UVM for a test (logging on), prepares the busybox rootfs; the UVM and its client.
pub async fn boot_with_busybox() -> (rgcs_host_shim::vm::Uvm, rgcs_client::ContainerClient) {
    init_logging();
    let rgcs_host_shim::session::Session { uvm, bridge, .. } =
        rgcs_host_shim::session::Session::boot(&boot_options())
            .await
            .expect("boot and negotiate");
    let client = rgcs_client::ContainerClient::new(std::sync::Arc::new(bridge), uvm.vsock_prefix());
    rgcs_client::prepare_busybox_rootfs(&client, rgcs_client::BUSYBOX_ROOTFS)
        .await
        .expect("busybox rootfs");
    (uvm, client)
}

/// Powers the UVM off through the bridge and stops what is left of it.
pub async fn power_off(client: &rgcs_client::ContainerClient, uvm: rgcs_host_shim::vm::Uvm) {
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(Duration::from_secs(30)).await;
    uvm.shutdown().await;
}

/// Installs a tracing subscriber once (host logs and re-emitted guest logs, shown on failure).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RGCS_LOG").unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PIDs of live processes whose command line mentions `needle` (leftover QEMU or
/// vhost-device-vsock of a run dir).
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                // a zombie has an empty cmdline, so a match is a live process
                found.push(pid);
            }
        }
    }
    found
}
