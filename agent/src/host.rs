//! State the agent keeps across bridge connections: the module gate and a record of requests in
//! flight (for DumpStacks). Containers and storage join it in later modules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rgcs_protocol::MessageId;

use crate::modules::ModulesGate;

/// Agent-wide state shared by every connection and request task.
#[derive(Debug)]
pub struct Host {
    /// Late kernel modules.
    pub modules: ModulesGate,
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
    /// New state with the given module gate.
    pub fn new(modules: ModulesGate) -> Self {
        Self {
            modules,
            started: Instant::now(),
            next_task: AtomicU64::new(0),
            inflight: Mutex::new(BTreeMap::new()),
        }
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
        let host = Host::new(ModulesGate::ready());
        let g = host.track(MessageId::WAIT_FOR_PROCESS, 7, "c1");
        let d = host.dump(4096);
        assert!(d.contains("id=7 type=WaitForProcess container=\"c1\""), "{d}");
        drop(g);
        assert!(host.dump(4096).contains("0 request(s) in flight"));
        let _guards: Vec<_> = (0..100).map(|i| host.track(MessageId::START, i, "x")).collect();
        assert!(host.dump(600).len() <= 600 + 20);
    }
}
