//! State the agent keeps across bridge connections: the module gate, the reaper, the outbox of
//! container notifications, and a record of requests in flight (for DumpStacks).
//!
//! Notifications raised while the bridge is down stay queued and go out on the next negotiated
//! connection (hcsshim HEAD behaviour), in order.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rgcs_protocol::message::ContainerNotification;
use rgcs_protocol::MessageId;
use tokio::sync::Notify;

use crate::container::registry::Registry;
use crate::container::runtime::Zygote;
use crate::error::GcsError;
use crate::modules::ModulesGate;
use crate::process::stdio::StdioTarget;
use crate::process::table::ProcessTable;
use crate::reaper::Reaper;

/// What running containers and processes needs: the zygote, the agent's run directory and where
/// stdio ports are dialled.
#[derive(Debug, Clone)]
pub struct Executor {
    /// The libcontainer zygote.
    pub zygote: Arc<Zygote>,
    /// `<run>/runtime` is libcontainer's state root, `<run>/procs/<id>` per-process state.
    pub run_dir: std::path::PathBuf,
    /// vsock, or Unix sockets in a directory (tests).
    pub stdio: StdioTarget,
}

/// Agent-wide state shared by every connection and request task.
#[derive(Debug)]
pub struct Host {
    /// Late kernel modules.
    pub modules: ModulesGate,
    /// The only reaper of child processes.
    pub reaper: Arc<Reaper>,
    /// Storage mounts and their reference counts.
    pub storage: Arc<crate::storage::Storage>,
    /// Containers.
    pub containers: Registry,
    /// Pods: each sandbox's root and workloads.
    pub pods: crate::container::pod::Pods,
    /// Network namespaces and their NICs.
    pub networks: crate::network::Networks,
    /// Processes run in the UVM itself (null container ID).
    pub uvm_processes: ProcessTable,
    executor: Option<Executor>,
    outbox: Mutex<VecDeque<ContainerNotification>>,
    outbox_ready: Notify,
    started: Instant,
    next_task: AtomicU64,
    inflight: Mutex<BTreeMap<u64, InFlight>>,
}

#[derive(Debug, Clone)]
struct InFlight {
    message: MessageId,
    request_id: u64,
    container_id: String,
    since: Instant,
}

impl Host {
    /// New state with the given module gate and reaper.
    pub fn new(modules: ModulesGate, reaper: Arc<Reaper>) -> Self {
        let networks = crate::network::Networks::new(Some(Arc::clone(&reaper)));
        let sys = crate::storage::mount::RealSys {
            reaper: Some(Arc::clone(&reaper)),
        };
        Self {
            modules,
            reaper,
            storage: Arc::new(crate::storage::Storage::new(
                Arc::new(sys),
                crate::storage::StorageConfig::default(),
            )),
            containers: Registry::default(),
            pods: crate::container::pod::Pods::default(),
            networks,
            uvm_processes: ProcessTable::default(),
            executor: None,
            outbox: Mutex::new(VecDeque::new()),
            outbox_ready: Notify::new(),
            started: Instant::now(),
            next_task: AtomicU64::new(0),
            inflight: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same state, able to run containers and processes.
    #[must_use]
    pub fn with_executor(mut self, executor: Executor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// The executor, or an error when this agent has none (its zygote failed to start).
    pub fn executor(&self) -> Result<&Executor, GcsError> {
        self.executor
            .as_ref()
            .ok_or_else(|| GcsError::Unsupported("running processes (the executor did not start)".into()))
    }

    /// Queues a container notification for the host; it is sent on the current negotiated
    /// connection, or on the next one.
    pub fn notify(&self, n: ContainerNotification) {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(n);
        self.outbox_ready.notify_one();
    }

    /// Takes the next queued notification, waiting for one.
    pub async fn next_notification(&self) -> ContainerNotification {
        loop {
            if let Some(n) = self
                .outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
            {
                return n;
            }
            self.outbox_ready.notified().await;
        }
    }

    /// Puts back a notification that could not be sent (the connection dropped), at the front.
    pub fn requeue_notification(&self, n: ContainerNotification) {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_front(n);
    }

    /// Records a request as in flight until the returned guard drops.
    pub fn track(&self, message: MessageId, request_id: u64, container_id: &str) -> InFlightGuard<'_> {
        let key = self.next_task.fetch_add(1, Ordering::Relaxed);
        let entry = InFlight {
            message,
            request_id,
            container_id: container_id.to_owned(),
            since: Instant::now(),
        };
        if let Ok(mut map) = self.inflight.lock() {
            map.insert(key, entry);
        }
        InFlightGuard { host: self, key }
    }

    /// A readable summary of what the agent is doing, at most `max` bytes (DumpStacks).
    pub fn dump(&self, max: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rgcs agent {} pid {} uptime {:.3}s; late modules: {:?}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.started.elapsed().as_secs_f64(),
            self.modules.state()
        );
        let entries: Vec<InFlight> = match self.inflight.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let (watched, unclaimed, reaped) = self.reaper.counts();
        let _ = writeln!(
            out,
            "{} container(s), {} UVM process(es); reaper: {watched} watched, {unclaimed} unclaimed, {reaped} reaped",
            self.containers.all().len(),
            self.uvm_processes.len()
        );
        for c in self.containers.all() {
            let line = format!(
                "  container {:?} {} init pid {} ({} process record(s))\n",
                c.id,
                c.state().name(),
                c.init.pid,
                c.processes.len()
            );
            if out.len() + line.len() > max / 2 {
                out.push_str("  … (truncated)\n");
                break;
            }
            out.push_str(&line);
        }
        let _ = writeln!(out, "{} request(s) in flight:", entries.len());
        for e in entries {
            let line = format!(
                "  id={} type={} container={:?} for {:.3}s\n",
                e.request_id,
                e.message.name().unwrap_or("unknown"),
                e.container_id,
                e.since.elapsed().as_secs_f64()
            );
            if out.len() + line.len() > max {
                out.push_str("  … (truncated)\n");
                break;
            }
            out.push_str(&line);
        }
        out
    }
}

/// Removes the in-flight record on drop.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    host: &'a Host,
    key: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.host.inflight.lock() {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_in_flight_requests_and_is_bounded() {
        let host = Host::new(ModulesGate::ready(), Arc::new(Reaper::default()));
        let g = host.track(MessageId::WAIT_FOR_PROCESS, 7, "c1");
        let d = host.dump(4096);
        assert!(d.contains("id=7 type=WaitForProcess container=\"c1\""), "{d}");
        drop(g);
        assert!(host.dump(4096).contains("0 request(s) in flight"));
        let _guards: Vec<_> = (0..100).map(|i| host.track(MessageId::START, i, "x")).collect();
        assert!(host.dump(600).len() <= 600 + 20);
    }
}
