//! The UVM's late set-up, run in the background once the bridge is negotiated so that none of it
//! delays readiness (docs/gcs-reference.md's `/init` does these before starting gcs; with one vCPU, doing
//! them beside the agent's own start would only take CPU from it): the entropy seed from vsock
//! port 1, cgroup v2 with every controller, `lo` up, and the late kernel modules (storage: SCSI,
//! ext4, overlay, 9p, dm). Requests that create containers or touch storage wait on
//! [`ModulesGate`], which reports a failed required step as an error instead of a hang.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rgcs_init::{cgroups, entropy, modules, net};
use tokio::sync::watch;

/// Runs the late set-up steps in order, logging each; the error names a required step that failed.
fn late_setup() -> Result<(), String> {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    match entropy::seed_from_host() {
        Ok(bytes) => tracing::info!(step = "entropy", bytes, duration_ms = ms(t), "entropy seeded"),
        Err(e) => tracing::warn!(
            step = "entropy",
            error = &e as &dyn std::error::Error,
            "entropy not seeded"
        ),
    }
    let t = Instant::now();
    match cgroups::setup(Path::new("/")) {
        Ok(r) => {
            for refused in &r.refused {
                tracing::warn!(controller = %refused.name, error = %refused.error, "cgroup controller refused");
            }
            tracing::info!(
                step = "cgroups",
                version = r.version.as_str(),
                controllers = ?r.controllers,
                fallback_reason = ?r.fallback.as_ref().map(ToString::to_string),
                duration_ms = ms(t),
                "cgroups ready"
            );
        }
        Err(e) => {
            tracing::error!(
                step = "cgroups",
                error = &e as &dyn std::error::Error,
                "cgroup setup failed"
            );
            return Err(format!("cgroup setup failed: {e}"));
        }
    }
    let t = Instant::now();
    match net::loopback_up() {
        Ok(changed) => tracing::info!(step = "loopback", changed, duration_ms = ms(t), "loopback up"),
        Err(e) => tracing::warn!(
            step = "loopback",
            error = &e as &dyn std::error::Error,
            "loopback not up"
        ),
    }
    let t = Instant::now();
    match modules::load(modules::Phase::Late) {
        Ok(report) => {
            for skipped in &report.skipped {
                tracing::warn!(module = %skipped.path.display(), error = %skipped.failure, "optional module skipped");
            }
            tracing::info!(
                step = "modules",
                loaded = report.loaded,
                already_loaded = report.already_loaded,
                skipped = report.skipped.len(),
                duration_ms = ms(t),
                "late kernel modules loaded"
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(
                step = "modules",
                error = &e as &dyn std::error::Error,
                "late kernel modules failed"
            );
            Err(e.to_string())
        }
    }
}

/// State of the late module load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadState {
    /// Not started or still loading.
    Pending,
    /// All required modules are loaded.
    Ready,
    /// A required module failed; the message says which.
    Failed(String),
}

/// A gate that storage requests await before they touch block devices or filesystems.
#[derive(Debug, Clone)]
pub struct ModulesGate {
    tx: Arc<watch::Sender<LoadState>>,
    started: Arc<AtomicBool>,
}

impl Default for ModulesGate {
    fn default() -> Self {
        Self::new()
    }
}

impl ModulesGate {
    /// A gate in the `Pending` state.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(LoadState::Pending)),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A gate that is already open (nothing to load, e.g. outside a UVM).
    pub fn ready() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(LoadState::Ready)),
            started: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts the late set-up on a blocking thread, once; later calls do nothing.
    pub fn start_loading(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let tx = Arc::clone(&self.tx);
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let state = match late_setup() {
                Ok(()) => LoadState::Ready,
                Err(e) => LoadState::Failed(e),
            };
            tracing::info!(
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                ready = state == LoadState::Ready,
                "late set-up done"
            );
            tx.send_replace(state);
        });
    }

    /// Waits until the load finished; `Err` carries the failure.
    pub async fn wait(&self) -> Result<(), String> {
        let mut rx = self.tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LoadState::Ready => return Ok(()),
                LoadState::Failed(e) => return Err(e.clone()),
                LoadState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err("module loader went away".to_owned());
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> LoadState {
        self.tx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_gate_opens_at_once_and_failures_are_reported() {
        assert_eq!(ModulesGate::ready().wait().await, Ok(()));
        let g = ModulesGate::new();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.wait().await })
        };
        g.tx.send_replace(LoadState::Failed("ext4: ENOENT".into()));
        assert_eq!(waiter.await.unwrap(), Err("ext4: ENOENT".into()));
    }
}
