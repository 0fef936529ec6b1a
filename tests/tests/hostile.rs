//! VM tier of the hostile-input suite (`rgcs_client::hostile`): the same cases as the in-process
//! tier, against the agent as PID 1 of a real UVM, over vsock through host-shim. Cases that end
//! the bridge find the agent dialling the host again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::hostile::{self, BoxFut, Env, Snapshot};
use rgcs_client::{census, prepare_busybox_rootfs, uvm_sh_ok, BridgeClient, ContainerClient, BUSYBOX_ROOTFS};
use rgcs_host_shim::session::Session;
use rgcs_host_shim::vm::Uvm;
use rgcs_tests::{boot_options, init_logging};
use tokio::sync::Mutex;

const STALL: Duration = Duration::from_millis(2000);

struct InVm {
    uvm: Uvm,
    /// The client the snapshot shell runs on (the current one; replaced on reconnect).
    current: Mutex<Arc<ContainerClient>>,
}

impl Env for InVm {
    fn reconnect(&self) -> BoxFut<'_, Result<Arc<ContainerClient>, String>> {
        Box::pin(async move {
            let s = self
                .uvm
                .accept_bridge(Duration::from_secs(60))
                .await
                .map_err(|e| rgcs_protocol::error_chain(&e))?;
            let b = Arc::new(BridgeClient::new(s));
            b.negotiate().await.map_err(|e| e.to_string())?;
            let c = Arc::new(ContainerClient::new(b, self.uvm.vsock_prefix()));
            *self.current.lock().await = Arc::clone(&c);
            Ok(c)
        })
    }

    fn rootfs(&self) -> String {
        BUSYBOX_ROOTFS.to_owned()
    }

    fn bundle(&self, id: &str) -> String {
        rgcs_client::bundle_path(id)
    }

    fn symlink_under_root(&self) -> BoxFut<'_, Result<String, String>> {
        Box::pin(async move {
            let c = Arc::clone(&*self.current.lock().await);
            uvm_sh_ok(
                &c,
                "mkdir -p /run/mounts && ln -sfn / /run/mounts/rgcs-hostile-link",
            )
            .await
            .map_err(|e| rgcs_protocol::error_chain(&e))?;
            Ok("/run/mounts/rgcs-hostile-link".into())
        })
    }

    fn snapshot(&self) -> BoxFut<'_, Result<Snapshot, String>> {
        Box::pin(async move {
            let c = Arc::clone(&*self.current.lock().await);
            let mut last: Option<Snapshot> = None;
            for _ in 0..20 {
                let n = census(&c).await.map_err(|e| rgcs_protocol::error_chain(&e))?;
                let s = Snapshot {
                    mounts: usize::try_from(n.mounts).unwrap_or(usize::MAX),
                    processes: usize::try_from(n.processes).unwrap_or(usize::MAX),
                    cgroups: n.cgroups,
                    state: n.state,
                    agent_fds: usize::try_from(n.agent_fds).unwrap_or(usize::MAX),
                };
                if last.as_ref() == Some(&s) {
                    return Ok(s);
                }
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            last.ok_or_else(|| "no snapshot".into())
        })
    }

    fn stall(&self) -> Duration {
        STALL
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_suite_in_a_uvm() {
    init_logging();
    let mut opts = boot_options();
    opts.agent_args = vec!["--bridge-stall-ms".into(), STALL.as_millis().to_string()];
    let Session { uvm, bridge, .. } = Session::boot(&opts).await.expect("boot");
    let client = Arc::new(ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix()));
    prepare_busybox_rootfs(&client, BUSYBOX_ROOTFS)
        .await
        .expect("busybox rootfs");
    let env = InVm {
        uvm,
        current: Mutex::new(Arc::clone(&client)),
    };
    let results = hostile::run(&env, client).await;
    for r in &results {
        eprintln!("{} {}", if r.result.is_ok() { "ok  " } else { "FAIL" }, r.name);
    }
    let failures = hostile::failures(&results);
    let c = Arc::clone(&*env.current.lock().await);
    let _ = c.bridge().shutdown_uvm(true).await;
    let _ = env.uvm.wait(Duration::from_secs(30)).await;
    env.uvm.shutdown().await;
    assert!(results.len() > 60, "only {} cases", results.len());
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed in the UVM:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}
