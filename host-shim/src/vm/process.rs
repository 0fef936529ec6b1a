//! Supervised child processes (QEMU, vhost-device-vsock): spawned with
//! `PR_SET_PDEATHSIG(SIGKILL)` so they die with the host process, reaped by one task per child
//! that publishes the exit status, and stopped with SIGTERM then SIGKILL after a grace period.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stop waits after SIGKILL for the reaper before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Poll interval of the blocking stop used from `Drop`.
const POLL: Duration = Duration::from_millis(10);

/// A running child, reaped by a background task.
#[derive(Debug)]
pub(crate) struct ChildProc {
    name: &'static str,
    pid: Pid,
    exit: watch::Receiver<Option<ExitStatus>>,
    reaper: JoinHandle<()>,
    grace: Duration,
}

/// Spawns `cmd` with stdin from /dev/null, stdout and stderr appended to `log`, in its own
/// process group (a terminal's Ctrl-C reaches only us; we stop the child in order), and with
/// `PR_SET_PDEATHSIG(SIGKILL)`.
///
/// The death signal is tied to the *thread* that spawns the child: call this from a thread
/// that lives as long as the VM (a runtime worker or the `block_on` thread, not
/// `spawn_blocking`).
pub(crate) fn spawn(
    name: &'static str,
    cmd: &mut Command,
    log: &std::path::Path,
    grace: Duration,
) -> Result<ChildProc, SpawnError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| SpawnError::Log {
            path: log.into(),
            source,
        })?;
    let log_err = log_file.try_clone().map_err(|source| SpawnError::Log {
        path: log.into(),
        source,
    })?;
    cmd.stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(true);
    crate::sys::process::die_with_parent(cmd);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn { name, source })?;
    let raw_pid = child.id().ok_or(SpawnError::NoPid { name })?;
    let pid = Pid::from_raw(i32::try_from(raw_pid).map_err(|_| SpawnError::NoPid { name })?);
    let (tx, exit) = watch::channel(None);
    let reaper = tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => {
                tracing::debug!(child = name, %status, "child exited");
                tx.send_replace(Some(status));
            }
            Err(e) => tracing::warn!(child = name, error = %e, "cannot wait for child"),
        }
    });
    tracing::debug!(child = name, pid = raw_pid, "spawned");
    Ok(ChildProc {
        name,
        pid,
        exit,
        reaper,
        grace,
    })
}

/// Errors of spawning a child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The log file could not be opened.
    #[error("cannot open log file {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `fork`/`exec` failed.
    #[error("cannot start {name}")]
    Spawn {
        /// Which child.
        name: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The child has no pid (it exited and was reaped at once).
    #[error("{name} has no pid after spawning")]
    NoPid {
        /// Which child.
        name: &'static str,
    },
}

/// A handle on a child's exit that a background task can hold (the child stays owned by its
/// [`ChildProc`]).
#[derive(Debug, Clone)]
pub(crate) struct ChildWatch {
    name: &'static str,
    pid: Pid,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl ChildWatch {
    /// Resolves with the exit status once the child exited (`None` if its reaper failed).
    pub(crate) async fn exited(&mut self) -> Option<ExitStatus> {
        self.exit.wait_for(Option::is_some).await.ok().and_then(|s| *s)
    }

    /// SIGTERM unless it already exited (and was reaped: the pid cannot have been reused).
    pub(crate) fn terminate(&self) {
        if self.exit.borrow().is_none() {
            if let Err(e) = kill(self.pid, Signal::SIGTERM) {
                tracing::debug!(child = self.name, error = %e, "kill failed");
            }
        }
    }
}

impl ChildProc {
    /// A watch on this child's exit for another task.
    pub(crate) fn watcher(&self) -> ChildWatch {
        ChildWatch {
            name: self.name,
            pid: self.pid,
            exit: self.exit.clone(),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// The exit status, once the child has exited.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the exit (`None` if the reaper failed).
    pub(crate) async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        let status = rx.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        status
    }

    /// Sends `sig` unless the child has already been reaped. Until the reaper publishes the
    /// status the pid is at worst a zombie of ours, so it cannot have been reused.
    fn signal(&self, sig: Signal) {
        if self.exit_status().is_none() && !self.reaper.is_finished() {
            if let Err(e) = kill(self.pid, sig) {
                tracing::debug!(child = self.name, signal = %sig, error = %e, "kill failed");
            }
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL.
    pub(crate) async fn stop(&self) -> Option<ExitStatus> {
        if let Some(s) = self.exit_status() {
            return Some(s);
        }
        self.signal(Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(self.grace, self.wait()).await {
            return status;
        }
        tracing::warn!(child = self.name, grace = ?self.grace, "child ignored SIGTERM; sending SIGKILL");
        self.signal(Signal::SIGKILL);
        tokio::time::timeout(KILL_WAIT, self.wait()).await.ok().flatten()
    }

    /// Like [`ChildProc::stop`] without an async context (for `Drop`): polls whether the
    /// process is gone (reaped, or a zombie awaiting the reaper).
    fn stop_blocking(&self) {
        if self.exit_status().is_some() || self.reaper.is_finished() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.exit_status().is_some() || self.is_dead() {
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!(child = self.name, "child ignored SIGTERM; sending SIGKILL");
        self.signal(Signal::SIGKILL);
    }

    /// The process no longer runs: it is gone or a zombie (state `Z` in `/proc/<pid>/stat`).
    fn is_dead(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop_blocking();
        // The reaper's Child has kill_on_drop: aborting it is the last resort.
        if self.exit_status().is_none() && !self.is_dead() {
            self.reaper.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_with_sigterm_and_reports_the_status() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = spawn("sleep", &mut cmd, &log, Duration::from_secs(5)).unwrap();
        assert!(child.exit_status().is_none());
        let status = child.stop().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(child.exit_status(), Some(status));
    }

    #[tokio::test]
    async fn ignoring_sigterm_gets_sigkill_and_output_goes_to_the_log() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]);
        let child = spawn("sh", &mut cmd, &log, Duration::from_millis(300)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&log).unwrap_or_default() != "ready\n" {
            assert!(Instant::now() < deadline, "child never started");
            tokio::time::sleep(POLL).await;
        }
        let status = child.stop().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn drop_kills_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = spawn("sleep", &mut cmd, &dir.path().join("log"), Duration::from_secs(5)).unwrap();
        let pid = child.pid;
        drop(child);
        // Gone or a zombie waiting for tokio's orphan reaper.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'),
            "{stat}"
        );
    }
}
