//! The UVM's late set-up, run in the background once the bridge is negotiated so that none of it
//! delays readiness (docs/gcs-reference.md's `/init` does these before starting gcs; with one vCPU, doing
//! them beside the agent's own start would only take CPU from it): the entropy seed from vsock
//! port 1, cgroup v2 with every controller, `lo` up, and the late kernel modules (storage: SCSI,
//! ext4, overlay, 9p, dm, pmem, virtio-net). Requests that touch storage or NICs wait on
//! [`ModulesGate`] for the modules they need ([`ModulesGate::wait_for`]): a 9p share does not
//! wait for the SCSI or NIC drivers. A failed required step is reported as an error, not a hang.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rgcs_init::{cgroups, entropy, modules, net};
use tokio::sync::watch;

/// Runs the late set-up steps in order, logging each; the error names a required step that
/// failed. `loaded` is told each module as it is in the kernel.
fn late_setup(mut loaded: impl FnMut(&str)) -> Result<(), String> {
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
    match modules::load_observed(modules::Phase::Late, |name| loaded(name)) {
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

/// Where the late set-up is: its state and the modules already in the kernel.
#[derive(Debug, Clone)]
struct Progress {
    state: LoadState,
    loaded: BTreeSet<String>,
}

/// A gate that storage requests await before they touch block devices or filesystems.
#[derive(Debug, Clone)]
pub struct ModulesGate {
    tx: Arc<watch::Sender<Progress>>,
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
            tx: Arc::new(watch::Sender::new(Progress {
                state: LoadState::Pending,
                loaded: BTreeSet::new(),
            })),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A gate that is already open (nothing to load, e.g. outside a UVM).
    pub fn ready() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Progress {
                state: LoadState::Ready,
                loaded: BTreeSet::new(),
            })),
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
            let progress = Arc::clone(&tx);
            let state = match late_setup(|name| {
                progress.send_modify(|p| {
                    p.loaded.insert(name.to_owned());
                });
            }) {
                Ok(()) => LoadState::Ready,
                Err(e) => LoadState::Failed(e),
            };
            tracing::info!(
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                ready = state == LoadState::Ready,
                "late set-up done"
            );
            tx.send_modify(|p| p.state = state);
        });
    }

    /// Waits until the whole late set-up finished; `Err` carries the failure.
    pub async fn wait(&self) -> Result<(), String> {
        self.wait_for(&[]).await
    }

    /// Waits until every module of `needs` (kernel names, e.g. `9pnet_fd`) is in the kernel, or
    /// the late set-up finished; an empty `needs` waits for all of it. `Err` carries a failure
    /// that came first.
    pub async fn wait_for(&self, needs: &[&str]) -> Result<(), String> {
        let mut rx = self.tx.subscribe();
        loop {
            {
                let p = rx.borrow_and_update();
                match &p.state {
                    LoadState::Ready => return Ok(()),
                    LoadState::Failed(e) => return Err(e.clone()),
                    LoadState::Pending => {
                        if !needs.is_empty() && needs.iter().all(|n| p.loaded.contains(*n)) {
                            return Ok(());
                        }
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err("module loader went away".to_owned());
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> LoadState {
        self.tx.borrow().state.clone()
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
        g.tx.send_modify(|p| p.state = LoadState::Failed("ext4: ENOENT".into()));
        assert_eq!(waiter.await.unwrap(), Err("ext4: ENOENT".into()));
    }

    #[tokio::test]
    async fn a_subsystem_opens_before_the_whole_list() {
        let g = ModulesGate::new();
        let nine_p = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_for(&["9p", "9pnet_fd"]).await })
        };
        let all = {
            let g = g.clone();
            tokio::spawn(async move { g.wait().await })
        };
        for m in ["9pnet", "9p"] {
            g.tx.send_modify(|p| {
                p.loaded.insert(m.to_owned());
            });
        }
        tokio::task::yield_now().await;
        assert!(!nine_p.is_finished(), "9pnet_fd is not in yet");
        g.tx.send_modify(|p| {
            p.loaded.insert("9pnet_fd".to_owned());
        });
        assert_eq!(nine_p.await.unwrap(), Ok(()));
        assert!(!all.is_finished(), "the rest is still loading");
        g.tx.send_modify(|p| p.state = LoadState::Ready);
        assert_eq!(all.await.unwrap(), Ok(()));
        // A module that is never listed (built in, or absent) is waited for until the end.
        let g = ModulesGate::new();
        let absent = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_for(&["virtio_pmem"]).await })
        };
        tokio::task::yield_now().await;
        assert!(!absent.is_finished());
        g.tx.send_modify(|p| p.state = LoadState::Ready);
        assert_eq!(absent.await.unwrap(), Ok(()));
    }
}
