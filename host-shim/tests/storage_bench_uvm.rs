//! The in-UVM storage benchmark end to end: a hot-plugged scratch disk mounted by the agent
//! (`MappedVirtualDisk`, found through virtio-scsi) and a 9p share served by `p9::Server`
//! (`MappedDirectory`), written and read with busybox `dd` in the guest, then released and
//! unplugged. Needs `RGCS_INITRD` (`bash scripts/build.sh`): a missing initrd fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rgcs_client::ContainerClient;
use rgcs_host_shim::bench::storage::storage_in_uvm;
use rgcs_host_shim::session::{BootOptions, Session};

fn initrd() -> PathBuf {
    rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_bench_runs_in_a_uvm() {
    let tmp = tempfile::tempdir().unwrap();
    let Session { uvm, bridge, .. } = Session::boot(&BootOptions::new(initrd())).await.expect("boot");
    let bridge = Arc::new(bridge);
    let client = ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix());
    let mib = std::env::var("RGCS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let r = storage_in_uvm(&uvm, &bridge, &client, tmp.path(), mib)
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert!(
        r.p9_write_mb_s > 0.0 && r.p9_read_mb_s > 0.0 && r.scsi_write_mb_s > 0.0 && r.scsi_read_mb_s > 0.0
    );
    assert!(
        !tmp.path().join("share/bench.bin").exists(),
        "the guest removed its file through 9p"
    );
    drop(client);
    drop(bridge);
    uvm.shutdown().await;
}
