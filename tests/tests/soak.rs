//! VM tier, soak (issue 13): 100 container lifecycles in one UVM, each with its init's stdio and
//! an exec, and nothing left behind: the agent's descriptors, threads, the mounts, container
//! cgroups, processes and state are as before, and the agent's RSS grew less than 1 MiB. The
//! full 1000-cycle soak is `rgcs bench soak` (docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::{prepare_busybox_rootfs, ContainerClient, BUSYBOX_ROOTFS};
use rgcs_host_shim::bench::soak::soak;
use rgcs_host_shim::session::Session;
use rgcs_tests::{boot_options, init_logging};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_lifecycles_leak_nothing() {
    init_logging();
    let Session { uvm, bridge, .. } = Session::boot(&boot_options()).await.expect("boot");
    let client = ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix());
    prepare_busybox_rootfs(&client, BUSYBOX_ROOTFS)
        .await
        .expect("busybox rootfs");
    let report = soak(&client, 100).await;
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(Duration::from_secs(30)).await;
    uvm.shutdown().await;
    let report = report.expect("soak");
    eprint!("{}", report.table());
    assert!(
        report.before.agent_fds > 0 && report.before.agent_rss_kib > 0,
        "empty census: {:?}",
        report.before
    );
    let leaks = report.leaks();
    assert!(
        leaks.is_empty(),
        "leaked over {} cycles: {}",
        report.cycles,
        leaks.join("; ")
    );
}
