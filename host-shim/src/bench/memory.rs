//! `rgcs bench memory`: the agent's resident set idle after negotiation and with N running
//! containers (busybox `sleep` inits), and the UVM's memory in use as the guest sees it
//! (`MemTotal - MemAvailable`), each from a UVM shell. The containers are removed again and the
//! agent's RSS read once more, so growth that stays is visible too.

use std::time::Duration;

use rgcs_client::{
    census, init_process, prepare_busybox_rootfs, uvm_sh_ok, ContainerClient, ContainerSpec, Pipes,
    ProcessSpec, ShutdownKind, BUSYBOX_ROOTFS,
};
use serde::Serialize;

use crate::session::{BootOptions, Session, POWER_OFF_TIMEOUT};

/// Errors of the memory benchmark.
#[derive(Debug, thiserror::Error)]
pub enum MemoryBenchError {
    /// The UVM did not boot.
    #[error("boot failed")]
    Boot(#[from] crate::session::SessionError),
    /// A step failed.
    #[error("{0}")]
    Step(String),
}

fn step<E: std::error::Error>(what: &str) -> impl FnOnce(E) -> MemoryBenchError + '_ {
    move |e| MemoryBenchError::Step(format!("{what}: {}", rgcs_protocol::error_chain(&e)))
}

/// One reading.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reading {
    /// The agent's VmRSS, KiB.
    pub agent_rss_kib: u64,
    /// The agent's threads.
    pub agent_threads: u64,
    /// `MemTotal - MemAvailable` of the UVM, KiB.
    pub uvm_used_kib: u64,
}

/// The benchmark's JSON document.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    /// `"memory"`.
    pub benchmark: &'static str,
    /// Accelerator.
    pub accel: String,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Containers running in the second reading.
    pub containers: usize,
    /// Idle, after negotiation (and the busybox rootfs).
    pub idle: Reading,
    /// With the containers running.
    pub loaded: Reading,
    /// After they were removed.
    pub after: Reading,
}

impl MemoryReport {
    /// The printed table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "memory benchmark: accel {}, {} MiB guest RAM, {} containers\n{:<28} {:>14} {:>8} {:>14}\n",
            self.accel, self.memory_mib, self.containers, "state", "agent RSS KiB", "threads", "UVM used KiB"
        );
        for (name, r) in [
            ("idle (negotiated)", self.idle),
            (&*format!("{} containers running", self.containers), self.loaded),
            ("after removing them", self.after),
        ] {
            let _ = writeln!(
                out,
                "{name:<28} {:>14} {:>8} {:>14}",
                r.agent_rss_kib, r.agent_threads, r.uvm_used_kib
            );
        }
        out
    }
}

async fn reading(c: &ContainerClient) -> Result<Reading, MemoryBenchError> {
    // Let exits and frees settle before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cs = census(c).await.map_err(step("census"))?;
    let mem = uvm_sh_ok(
        c,
        "awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} END{print t-a}' /proc/meminfo",
    )
    .await
    .map_err(step("meminfo"))?;
    Ok(Reading {
        agent_rss_kib: cs.agent_rss_kib,
        agent_threads: cs.agent_threads,
        uvm_used_kib: mem.trim().parse().unwrap_or(0),
    })
}

/// Boots a UVM and takes the three readings around `n` running containers.
pub async fn memory(opts: &BootOptions, n: usize) -> Result<MemoryReport, MemoryBenchError> {
    let session = Session::boot(opts).await?;
    let accel = format!("{:?}", session.uvm.accel());
    let Session { uvm, bridge, .. } = session;
    let client = ContainerClient::new(std::sync::Arc::new(bridge), uvm.vsock_prefix());
    let result = async {
        prepare_busybox_rootfs(&client, BUSYBOX_ROOTFS)
            .await
            .map_err(step("busybox rootfs"))?;
        let idle = reading(&client).await?;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("mem{i}");
            let spec = ContainerSpec::new(&id, BUSYBOX_ROOTFS, ProcessSpec::new(["/bin/sleep", "100000"]));
            let cfg = spec.config().map_err(step("spec"))?;
            client.create_container(&id, cfg).await.map_err(step("Create"))?;
            client.start(&id).await.map_err(step("Start"))?;
            let (pid, _stdio) = client
                .execute_process(&id, init_process(Pipes::NONE))
                .await
                .map_err(step("init"))?;
            ids.push((id, pid));
        }
        let loaded = reading(&client).await?;
        for (id, pid) in &ids {
            let _ = client.shutdown_container(id, ShutdownKind::Forced).await;
            let _ = client
                .wait_for_process(id, *pid, Some(Duration::from_secs(30)))
                .await;
            client
                .delete_container_state(id)
                .await
                .map_err(step("DeleteContainerState"))?;
        }
        let after = reading(&client).await?;
        Ok::<_, MemoryBenchError>((idle, loaded, after))
    }
    .await;
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(POWER_OFF_TIMEOUT).await;
    uvm.shutdown().await;
    let (idle, loaded, after) = result?;
    Ok(MemoryReport {
        benchmark: "memory",
        accel,
        memory_mib: opts.memory_mib,
        containers: n,
        idle,
        loaded,
        after,
    })
}
