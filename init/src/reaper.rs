//! The one reaper: PID 1's `waitpid(-1)` loop (STYLE rule 12, docs/gcs-reference.md §6.1 step 17).
//!
//! This module owns collecting every child's exit status, the agent's and every orphan's re-parented
//! to PID 1, and recognising when the primary child (the agent) has exited. It does not decide what
//! happens then; [`crate::pid1`] logs the status and powers off. Nothing else in the process may call
//! `waitpid(-1)`.

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal (this number) killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signo) => 128 + signo,
        }
    }

    /// The status of a terminated child, or `None` for stop/continue/ptrace events and "still alive".
    pub fn from_wait(status: WaitStatus) -> Option<(Pid, ExitStatus)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, ExitStatus::Exited(code))),
            WaitStatus::Signaled(pid, signal, _core) => Some((pid, ExitStatus::Signaled(signal as i32))),
            _ => None,
        }
    }

    /// The signal's name (`SIGKILL`) when signalled and known.
    pub fn signal_name(self) -> Option<&'static str> {
        match self {
            ExitStatus::Signaled(signo) => Signal::try_from(signo).ok().map(Signal::as_str),
            ExitStatus::Exited(_) => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.signal_name()) {
            (ExitStatus::Exited(code), _) => write!(f, "exited with code {code}"),
            (ExitStatus::Signaled(signo), Some(name)) => write!(f, "killed by signal {signo} ({name})"),
            (ExitStatus::Signaled(signo), None) => write!(f, "killed by signal {signo}"),
        }
    }
}

/// Why reaping failed.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// `waitpid` failed unexpectedly.
    #[error("wait for child processes")]
    Wait(#[source] Errno),
    /// No children are left but the primary's status was never seen (someone else reaped it).
    #[error("primary child {0} is gone without an exit status")]
    PrimaryLost(Pid),
}

/// Reaps every child of this process and reports the primary child's exit.
#[derive(Debug)]
pub struct Reaper {
    primary: Pid,
    others: u64,
}

impl Reaper {
    /// A reaper watching for `primary`.
    pub fn new(primary: Pid) -> Self {
        Reaper { primary, others: 0 }
    }

    /// The primary child's pid.
    pub fn primary(&self) -> Pid {
        self.primary
    }

    /// How many other children (orphans included) have been reaped so far.
    pub fn others_reaped(&self) -> u64 {
        self.others
    }

    /// Reaps every child that has already terminated, without blocking (for each `SIGCHLD`; signals
    /// coalesce, so one may stand for many exits). Returns the primary's status if it was among them.
    pub fn reap_pending(&mut self) -> Result<Option<ExitStatus>, ReapError> {
        let mut primary = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) => return Ok(primary),
                Ok(status) => {
                    if let Some(st) = self.record(status) {
                        primary = Some(st);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) if primary.is_some() => return Ok(primary),
                Err(Errno::ECHILD) => return Err(ReapError::PrimaryLost(self.primary)),
                Err(e) => return Err(ReapError::Wait(e)),
            }
        }
    }

    /// Blocks, reaping every child, until the primary exits; then also reaps whatever else has already
    /// terminated, and returns the primary's status.
    pub fn wait_primary(&mut self) -> Result<ExitStatus, ReapError> {
        loop {
            match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Ok(status) => {
                    if let Some(st) = self.record(status) {
                        // Drain zombies that are already there; the primary is gone, so ECHILD is fine.
                        let _ = self.reap_pending();
                        return Ok(st);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => return Err(ReapError::PrimaryLost(self.primary)),
                Err(e) => return Err(ReapError::Wait(e)),
            }
        }
    }

    /// Counts one wait result; returns the status if it is the primary's termination.
    fn record(&mut self, status: WaitStatus) -> Option<ExitStatus> {
        let (pid, st) = ExitStatus::from_wait(status)?;
        if pid == self.primary {
            Some(st)
        } else {
            self.others += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::sched::CloneFlags;
    use nix::sys::prctl::set_child_subreaper;
    use nix::sys::signal::{kill, raise};
    use nix::unistd::{close, fork, pause, pipe, read, ForkResult};

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child, wait_until};

    #[test]
    fn exit_status_mapping() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            ExitStatus::from_wait(WaitStatus::Exited(pid, 3)),
            Some((pid, ExitStatus::Exited(3)))
        );
        let killed = ExitStatus::from_wait(WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!(killed, Some((pid, ExitStatus::Signaled(9))));
        assert_eq!(
            ExitStatus::from_wait(WaitStatus::Stopped(pid, Signal::SIGSTOP)),
            None
        );
        assert_eq!(ExitStatus::from_wait(WaitStatus::Continued(pid)), None);
        assert_eq!(ExitStatus::from_wait(WaitStatus::StillAlive), None);
        assert_eq!(ExitStatus::Exited(0).code(), 0);
        assert_eq!(ExitStatus::Exited(255).code(), 255);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(
            ExitStatus::Signaled(15).to_string(),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(ExitStatus::Signaled(99).to_string(), "killed by signal 99");
        assert_eq!(ExitStatus::Exited(1).to_string(), "exited with code 1");
        assert_eq!(ExitStatus::Exited(1).signal_name(), None);
    }

    /// Forks a child that runs `body` and then `_exit(code)`.
    fn spawn(body: impl FnOnce(), code: i32) -> Result<Pid, String> {
        // SAFETY: called inside a sandboxed (single-threaded) child; the grandchild only runs `body`
        // (plain syscalls) and leaves with `_exit`.
        match ctx(unsafe { fork() }, "fork")? {
            ForkResult::Child => {
                body();
                // SAFETY: `_exit` has no preconditions and never returns into the harness.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(child),
        }
    }

    #[test]
    fn reaps_everyone_including_orphans_and_then_the_primary() {
        run_in_child(CloneFlags::empty(), || {
            ctx(set_child_subreaper(true), "subreaper")?;
            let (go_rd, go_wr) = ctx(pipe(), "pipe")?;
            // Two plain children, one killed by a signal, and an orphan: a child that forks a
            // grandchild and exits, leaving the grandchild to be re-parented to us.
            spawn(|| {}, 3)?;
            spawn(|| {}, 0)?;
            spawn(
                || {
                    let _ = raise(Signal::SIGKILL);
                },
                0,
            )?;
            spawn(
                || {
                    // SAFETY: single-threaded process; the grandchild just exits.
                    if let Ok(ForkResult::Child) = unsafe { fork() } {
                        // SAFETY: `_exit` has no preconditions.
                        unsafe { libc::_exit(0) }
                    }
                },
                0,
            )?;
            // The primary waits for EOF on `go`: it closes its inherited write end first.
            let primary = spawn(
                || {
                    let _ = close(go_wr.as_raw_fd());
                    let mut b = [0u8; 1];
                    while matches!(read(go_rd.as_raw_fd(), &mut b), Ok(n) if n > 0) {}
                },
                7,
            )?;
            drop(go_rd);
            let mut reaper = Reaper::new(primary);
            wait_until(|| match reaper.reap_pending() {
                Ok(None) => Ok(reaper.others_reaped() == 5),
                other => Err(format!("primary must still run: {other:?}")),
            })?;
            drop(go_wr);
            let status = ctx(reaper.wait_primary(), "wait_primary")?;
            check(status == ExitStatus::Exited(7), || format!("primary: {status}"))?;
            check(reaper.others_reaped() == 5, || "no extra children".into())?;
            match reaper.wait_primary() {
                Err(ReapError::PrimaryLost(p)) if p == primary => Ok(()),
                other => Err(format!("nothing left: {other:?}")),
            }
        });
    }

    #[test]
    fn reap_pending_sees_a_signalled_primary() {
        run_in_child(CloneFlags::empty(), || {
            let primary = spawn(pause, 0)?;
            let mut reaper = Reaper::new(primary);
            check(reaper.reap_pending().ok() == Some(None), || {
                "still running".into()
            })?;
            ctx(kill(primary, Signal::SIGTERM), "kill")?;
            let mut status = None;
            wait_until(|| {
                status = ctx(reaper.reap_pending(), "reap_pending")?;
                Ok(status.is_some())
            })?;
            check(status == Some(ExitStatus::Signaled(15)), || {
                format!("status {status:?}")
            })
        });
    }
}
