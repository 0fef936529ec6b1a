//! Late kernel modules (storage: SCSI, ext4, overlay, 9p, dm) load in the background once the
//! bridge is up, so they do not delay readiness. Requests that need them wait on [`ModulesGate`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

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

    /// Starts loading the late modules on a blocking thread, once; later calls do nothing.
    pub fn start_loading(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let tx = Arc::clone(&self.tx);
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let state = match rgcs_init::modules::load(rgcs_init::modules::Phase::Late) {
                Ok(report) => {
                    tracing::info!(
                        elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                        report = ?report,
                        "late kernel modules loaded"
                    );
                    LoadState::Ready
                }
                Err(e) => {
                    tracing::error!(error = &e as &dyn std::error::Error, "late kernel modules failed");
                    LoadState::Failed(e.to_string())
                }
            };
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
