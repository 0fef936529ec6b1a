//! The agent's one and only reaper (docs/libcontainer-notes.md §2.1 pitfall 5).
//!
//! Container inits and exec processes are the agent's children (libcontainer's `as_sibling` in the
//! zygote), and so are processes run in the UVM itself, libcontainer's intermediates and orphans
//! re-parented to the agent (it is a child subreaper). One task answers SIGCHLD by draining
//! `waitpid(-1, WNOHANG | __WALL)` and hands each exit to whoever watches that PID.
//!
//! * An exit that arrives before anyone watches it (a fast `true` exits before `build()` returns)
//!   is kept as *unclaimed* with the time it was reaped; a later [`Reaper::watch`] whose process
//!   was spawned before that time takes it. The spawn time guards against PID reuse: an old
//!   unclaimed exit never satisfies a newer process with the same PID.
//! * Unclaimed exits (libcontainer intermediates, orphans) are pruned after [`UNCLAIMED_TTL`] and
//!   capped at [`UNCLAIMED_MAX`] entries, so memory is bounded.
//! * Nothing else in the agent may wait for children: no `std::process::Child::wait`, no
//!   `tokio::process` (its own SIGCHLD reaping would steal statuses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
pub use rgcs_init::reaper::ExitStatus;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::sys::pid::ProcessId;

/// How long an exit nobody claimed is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// At most this many unclaimed exits are kept (oldest dropped first).
pub const UNCLAIMED_MAX: usize = 4096;

#[derive(Debug, Default)]
struct State {
    watchers: HashMap<i32, Vec<(Instant, oneshot::Sender<ExitStatus>)>>,
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
    reaped_total: u64,
}

/// Routes child exits to their watchers.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
}

/// A future-like handle to one process's exit.
#[derive(Debug)]
pub struct ExitWatch(oneshot::Receiver<ExitStatus>);

impl ExitWatch {
    /// Waits for the exit. `None` only if the reaper itself went away.
    pub async fn wait(self) -> Option<ExitStatus> {
        self.0.await.ok()
    }

    /// Waits for the exit from a blocking context (not the runtime's thread), at most `limit`;
    /// `None` when it did not come in time.
    pub fn wait_blocking(mut self, limit: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.0.try_recv() {
                Ok(s) => return Some(s),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) if std::time::Instant::now() >= deadline => {
                    return None
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
            }
        }
    }
}

impl Reaper {
    /// Creates the reaper, makes the agent a child subreaper and starts the SIGCHLD task. Must be
    /// called inside the tokio runtime, before the first child is spawned.
    pub fn start() -> std::io::Result<Arc<Self>> {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans go to PID 1");
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Watches `pid`, a child spawned at (or just after) `spawned_at`. If it already exited after
    /// that instant, the watch resolves at once.
    pub fn watch(&self, pid: ProcessId, spawned_at: Instant) -> ExitWatch {
        let pid = pid.raw();
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.unclaimed.remove(&pid) {
            Some((status, reaped_at)) if reaped_at >= spawned_at => {
                let _ = tx.send(status);
            }
            stale => {
                if let Some(entry) = stale {
                    // an older process with the same pid: not ours, keep it for its owner
                    st.unclaimed.insert(pid, entry);
                }
                st.watchers.entry(pid).or_default().push((spawned_at, tx));
            }
        }
        ExitWatch(rx)
    }

    /// Reaps every exited child now (also called on each SIGCHLD).
    pub fn reap_all(&self) {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return;
                }
                Ok(ws) => {
                    if let Some((pid, status)) = ExitStatus::from_wait(ws) {
                        self.deliver(pid.as_raw(), status, Instant::now());
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: i32, status: ExitStatus, reaped_at: Instant) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.reaped_total += 1;
        match st.watchers.remove(&pid) {
            Some(watchers) => {
                for (_, tx) in watchers {
                    let _ = tx.send(status);
                }
            }
            None => {
                st.unclaimed.insert(pid, (status, reaped_at));
                prune(&mut st.unclaimed, reaped_at);
            }
        }
    }

    /// (watched PIDs, unclaimed exits, total reaped), for DumpStacks and leak tests.
    pub fn counts(&self) -> (usize, usize, u64) {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (st.watchers.len(), st.unclaimed.len(), st.reaped_total)
    }
}

fn prune(unclaimed: &mut HashMap<i32, (ExitStatus, Instant)>, now: Instant) {
    unclaimed.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
    while unclaimed.len() > UNCLAIMED_MAX {
        let oldest = unclaimed
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(pid, _)| *pid);
        match oldest {
            Some(pid) => {
                unclaimed.remove(&pid);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_exits_are_kept_and_pid_reuse_is_guarded() {
        let r = Reaper::default();
        let t0 = Instant::now();
        r.deliver(100, ExitStatus::Exited(3), Instant::now());
        // a process spawned before the reap claims it
        assert_eq!(
            r.watch(ProcessId::new(100).unwrap(), t0).wait().await,
            Some(ExitStatus::Exited(3))
        );
        // an exit reaped before a newer process with the same pid was spawned is not its exit
        r.deliver(200, ExitStatus::Exited(1), Instant::now());
        let later = Instant::now() + Duration::from_millis(1);
        let w = r.watch(ProcessId::new(200).unwrap(), later);
        r.deliver(200, ExitStatus::Signaled(9), later + Duration::from_millis(1));
        assert_eq!(w.wait().await, Some(ExitStatus::Signaled(9)));
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }

    #[tokio::test]
    async fn several_watchers_all_get_the_exit() {
        let r = Reaper::default();
        let t0 = Instant::now();
        let a = r.watch(ProcessId::new(7).unwrap(), t0);
        let b = r.watch(ProcessId::new(7).unwrap(), t0);
        r.deliver(7, ExitStatus::Exited(0), Instant::now());
        assert_eq!(a.wait().await, Some(ExitStatus::Exited(0)));
        assert_eq!(b.wait().await, Some(ExitStatus::Exited(0)));
        assert_eq!(r.counts(), (0, 0, 1));
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let mut m = HashMap::new();
        let now = Instant::now();
        let max = i32::try_from(UNCLAIMED_MAX).unwrap();
        for pid in 0..(max + 10) {
            m.insert(pid, (ExitStatus::Exited(0), now));
        }
        prune(&mut m, now);
        assert_eq!(m.len(), UNCLAIMED_MAX);
        prune(&mut m, now + UNCLAIMED_TTL);
        assert!(m.is_empty());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the reaper under test is what waits for it
    async fn reaps_real_children() {
        let r = Reaper::start().unwrap();
        let t0 = Instant::now();
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let w = r.watch(ProcessId::new(child.id().into()).unwrap(), t0);
        let status = tokio::time::timeout(Duration::from_secs(10), w.wait())
            .await
            .unwrap();
        assert_eq!(status, Some(ExitStatus::Exited(7)));
    }
}
