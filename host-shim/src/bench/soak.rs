//! `rgcs bench soak -n N`: N container lifecycles in one UVM, each with its init's stdio and one
//! exec, and a [`Census`] of the UVM before and after. The target is nothing leaked (descriptors,
//! threads, mounts, cgroups, processes, state) and agent RSS growth under 1 MiB over 1000 cycles.
//! The VM tier runs a shorter soak with the same assertions.

use std::time::{Duration, Instant};

use rgcs_client::{
    census, exec_process, init_process, Census, ContainerClient, ContainerError, ContainerSpec, Pipes,
    ProcessSpec, UvmShellError, BUSYBOX_ROOTFS,
};
use serde::Serialize;

use super::Summary;

/// Agent RSS growth allowed over a soak, KiB (the target for 1000 cycles).
pub const RSS_GROWTH_TARGET_KIB: u64 = 1024;

/// Per-call limit.
const STEP: Duration = Duration::from_secs(60);

/// Errors of a soak.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// A container call failed in cycle `cycle`.
    #[error("cycle {cycle}: {what}")]
    Call {
        /// The cycle.
        cycle: usize,
        /// What was done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: ContainerError,
    },
    /// A process's output was wrong or did not end.
    #[error("cycle {cycle}: {what}")]
    Output {
        /// The cycle.
        cycle: usize,
        /// What is wrong.
        what: String,
    },
    /// The census failed.
    #[error("census of the uvm")]
    Census(#[from] UvmShellError),
}

/// Before and after, and the cycle times.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The benchmark name.
    pub benchmark: &'static str,
    /// Cycles run.
    pub cycles: usize,
    /// Before the first cycle.
    pub before: Census,
    /// After the last one.
    pub after: Census,
    /// One whole cycle (create, start with stdio, exec with stdio, waits, delete), ms.
    pub cycle_ms: Summary,
}

impl SoakReport {
    /// What grew (or changed) between the census before and after; empty when nothing leaked
    /// and RSS grew less than [`RSS_GROWTH_TARGET_KIB`].
    pub fn leaks(&self) -> Vec<String> {
        let (b, a) = (&self.before, &self.after);
        let mut out = Vec::new();
        for (what, x, y) in [
            ("agent descriptors", b.agent_fds, a.agent_fds),
            ("agent threads", b.agent_threads, a.agent_threads),
            ("mounts", b.mounts, a.mounts),
            ("processes", b.processes, a.processes),
        ] {
            if y > x {
                out.push(format!("{what}: {x} -> {y}"));
            }
        }
        if a.cgroups != b.cgroups {
            out.push(format!("container cgroups: {:?} -> {:?}", b.cgroups, a.cgroups));
        }
        if a.state != b.state {
            out.push(format!("agent state: {:?} -> {:?}", b.state, a.state));
        }
        let growth = a.agent_rss_kib.saturating_sub(b.agent_rss_kib);
        if growth >= RSS_GROWTH_TARGET_KIB {
            out.push(format!(
                "agent RSS grew {growth} KiB (target < {RSS_GROWTH_TARGET_KIB})"
            ));
        }
        out
    }

    /// The before/after table.
    pub fn table(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        let mut s = format!(
            "soak: {} cycles (create, start + stdio, exec + stdio, waits, delete)\n",
            self.cycles
        );
        s.push_str(&format!(
            "{:<28}{:>10}{:>10}{:>10}\n",
            "count", "before", "after", "leaked"
        ));
        for (what, x, y) in [
            ("agent fds", b.agent_fds, a.agent_fds),
            ("agent threads", b.agent_threads, a.agent_threads),
            ("agent RSS KiB", b.agent_rss_kib, a.agent_rss_kib),
            ("mounts", b.mounts, a.mounts),
            ("processes", b.processes, a.processes),
            (
                "container cgroups",
                b.cgroups.len() as u64,
                a.cgroups.len() as u64,
            ),
            ("state dirs", b.state.len() as u64, a.state.len() as u64),
        ] {
            let diff = i128::from(y) - i128::from(x);
            s.push_str(&format!("{what:<28}{x:>10}{y:>10}{diff:>+10}\n"));
        }
        s.push_str(&format!(
            "cycle ms: median {:.1}, p90 {:.1}, max {:.1}\n",
            self.cycle_ms.median, self.cycle_ms.p90, self.cycle_ms.max
        ));
        s
    }
}

/// Runs `cycles` lifecycles on `client` (the busybox rootfs must be prepared at
/// [`BUSYBOX_ROOTFS`]); the census is taken once the agent has settled.
pub async fn soak(client: &ContainerClient, cycles: usize) -> Result<SoakReport, SoakError> {
    // One cycle first so that lazily created state (cgroup parents, the zygote's caches)
    // exists in both censuses.
    cycle(client, usize::MAX).await?;
    let before = settled(client).await?;
    let mut times = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let t0 = Instant::now();
        cycle(client, i).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let after = settled(client).await?;
    Ok(SoakReport {
        benchmark: "soak",
        cycles,
        before,
        after,
        cycle_ms: Summary::of(&times).unwrap_or(Summary {
            n: 0,
            min: 0.0,
            median: 0.0,
            p90: 0.0,
            max: 0.0,
        }),
    })
}

/// Two equal censuses in a row (exits still being reaped settle within a few hundred ms).
async fn settled(client: &ContainerClient) -> Result<Census, SoakError> {
    let mut last = census(client).await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = census(client).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

async fn cycle(c: &ContainerClient, i: usize) -> Result<(), SoakError> {
    let id = format!("soak-{i}");
    let call = |what| {
        move |source| SoakError::Call {
            cycle: i,
            what,
            source,
        }
    };
    let out_err = |what: String| SoakError::Output { cycle: i, what };
    let spec = ContainerSpec::new(
        &id,
        BUSYBOX_ROOTFS,
        ProcessSpec::new(["sh", "-c", "echo init; exec sleep 1000"]),
    );
    let cfg = spec.config().map_err(|e| out_err(format!("spec: {e}")))?;
    c.create_container(&id, cfg).await.map_err(call("create"))?;
    let result = async {
        c.start(&id).await.map_err(call("start"))?;
        let (init, mut stdio) = c
            .execute_process(&id, init_process(Pipes::OUTPUT))
            .await
            .map_err(call("start init"))?;
        let mut line = [0u8; 5];
        let stdout = stdio
            .stdout
            .as_mut()
            .ok_or_else(|| out_err("no init stdout".into()))?;
        tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read_exact(stdout, &mut line))
            .await
            .map_err(|_| out_err("init printed nothing".into()))?
            .map_err(|e| out_err(format!("init stdout: {e}")))?;
        if &line != b"init\n" {
            return Err(out_err(format!("init printed {line:?}")));
        }
        let p = ProcessSpec::new(["sh", "-c", "read x; echo \"got $x\""]);
        let (pid, exec_io) = c
            .execute_process(&id, exec_process(&p, Pipes::ALL))
            .await
            .map_err(call("exec"))?;
        let out = exec_io
            .capture_for(b"ping\n", STEP)
            .await
            .map_err(|e| out_err(format!("exec stdio: {e}")))?
            .ok_or_else(|| out_err("exec output did not end".into()))?;
        if out.stdout_text() != "got ping\n" {
            return Err(out_err(format!("exec printed {:?}", out.stdout_text())));
        }
        let code = c
            .wait_for_process(&id, pid, Some(STEP))
            .await
            .map_err(call("wait exec"))?;
        if code != 0 {
            return Err(out_err(format!("exec exited {code}")));
        }
        c.signal_process(&id, init, Some(9))
            .await
            .map_err(call("kill init"))?;
        let code = c
            .wait_for_process(&id, init, Some(STEP))
            .await
            .map_err(call("wait init"))?;
        if code != 137 {
            return Err(out_err(format!("init exited {code}")));
        }
        drop(stdio);
        c.wait_notification(&id, STEP)
            .await
            .map_err(call("notification"))?;
        Ok(())
    }
    .await;
    let deleted = c.delete_container_state(&id).await.map_err(call("delete"));
    result.and(deleted)
}
