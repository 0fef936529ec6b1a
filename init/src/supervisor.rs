//! PID 1's signal handling while the agent runs.
//!
//! This module owns the blocked signal set and the signalfd loop: `SIGCHLD` reaps every exited child
//! (through [`crate::reaper`]); `SIGTERM`, `SIGINT` and `SIGPWR` are forwarded to the agent as
//! `SIGTERM` (an orderly shutdown request); `SIGHUP` is ignored. The loop ends when the agent exits.
//! The signals are blocked *before* the agent is forked, so none is lost in between; the agent's
//! child side unblocks them (see [`crate::spawn`]).

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::log::{Level, LogLine};
use crate::reaper::{ExitStatus, ReapError, Reaper};

/// The signals PID 1 handles through its signalfd.
pub(crate) const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGPWR,
    Signal::SIGHUP,
];

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in HANDLED {
        set.add(sig);
    }
    set
}

/// Blocks [`HANDLED`] in the calling thread (PID 1's only thread).
pub(crate) fn block_handled() -> Result<(), Errno> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)
}

/// How the agent ended, and what else was reaped meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentExit {
    /// The agent's status.
    pub(crate) status: ExitStatus,
    /// Other children (orphans) reaped while it ran.
    pub(crate) orphans_reaped: u64,
}

/// Runs until `agent` exits, logging signal handling through `log`.
///
/// Requires [`block_handled`] to have been called before `agent` was forked. If the signalfd cannot
/// be created or read, it logs the error and falls back to a blocking reap loop (no forwarding).
pub(crate) fn supervise(agent: Pid, log: &mut impl FnMut(LogLine)) -> Result<AgentExit, ReapError> {
    let mut reaper = Reaper::new(agent);
    let done = |status, reaper: &Reaper| AgentExit {
        status,
        orphans_reaped: reaper.others_reaped(),
    };
    let sfd = match SignalFd::with_flags(&handled_set(), SfdFlags::SFD_CLOEXEC) {
        Ok(sfd) => sfd,
        Err(e) => {
            log(LogLine::new(
                Level::Error,
                "signalfd unavailable; reaping without signal forwarding",
            )
            .field("error", e.to_string()));
            let status = reaper.wait_primary()?;
            return Ok(done(status, &reaper));
        }
    };
    // The agent may have exited before the signalfd existed; its SIGCHLD is pending either way, but
    // reaping first costs nothing.
    if let Some(status) = reaper.reap_pending()? {
        return Ok(done(status, &reaper));
    }
    loop {
        let info = match sfd.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => {
                log(LogLine::new(
                    Level::Error,
                    "signalfd read failed; reaping without signal forwarding",
                )
                .field("error", e.to_string()));
                let status = reaper.wait_primary()?;
                return Ok(done(status, &reaper));
            }
        };
        let signal = i32::try_from(info.ssi_signo)
            .ok()
            .and_then(|n| Signal::try_from(n).ok());
        match signal {
            Some(Signal::SIGCHLD) => {
                if let Some(status) = reaper.reap_pending()? {
                    return Ok(done(status, &reaper));
                }
            }
            Some(sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR)) => {
                let line = LogLine::new(Level::Info, "forwarding SIGTERM to the agent")
                    .field("signal", sig.as_str())
                    .field("sender_pid", info.ssi_pid)
                    .field("agent_pid", agent.as_raw());
                // ESRCH: the agent is already a zombie; its SIGCHLD is on the way.
                let line = match kill(agent, Signal::SIGTERM) {
                    Ok(()) | Err(Errno::ESRCH) => line,
                    Err(e) => line.field("error", e.to_string()),
                };
                log(line);
            }
            other => log(LogLine::new(Level::Debug, "ignoring signal")
                .field("signal", other.map_or("unknown", Signal::as_str))
                .field("signo", info.ssi_signo)),
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;
    use nix::sys::signal::raise;
    use nix::unistd::{fork, pause, ForkResult};

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child};

    /// Forks an "agent" that unblocks its signals and runs `body`, then exits with `code`.
    fn agent(body: fn(), code: i32) -> Result<Pid, String> {
        // SAFETY: called in a single-threaded sandboxed child; the grandchild only makes syscalls and
        // leaves with `_exit`.
        match ctx(unsafe { fork() }, "fork")? {
            ForkResult::Child => {
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
                body();
                // SAFETY: `_exit` has no preconditions.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(child),
        }
    }

    #[test]
    fn returns_the_agents_own_exit() {
        run_in_child(CloneFlags::empty(), || {
            ctx(block_handled(), "block")?;
            let pid = agent(|| {}, 3)?;
            let mut lines = Vec::new();
            let exit = ctx(supervise(pid, &mut |l| lines.push(l)), "supervise")?;
            check(exit.status == ExitStatus::Exited(3), || format!("{exit:?}"))?;
            check(lines.is_empty(), || format!("unexpected logs: {lines:?}"))
        });
    }

    #[test]
    fn shutdown_signals_are_forwarded_and_sighup_ignored() {
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
            run_in_child(CloneFlags::empty(), move || {
                ctx(block_handled(), "block")?;
                let pid = agent(pause, 0)?;
                // Both arrive while blocked and wait in the signalfd, in signal-number order.
                ctx(raise(Signal::SIGHUP), "raise SIGHUP")?;
                ctx(raise(sig), "raise")?;
                let mut lines = Vec::new();
                let exit = ctx(supervise(pid, &mut |l| lines.push(l)), "supervise")?;
                check(exit.status == ExitStatus::Signaled(libc::SIGTERM), || {
                    format!("{exit:?}")
                })?;
                check(exit.status.code() == 143, || "128 + SIGTERM".into())?;
                let msgs: Vec<_> = lines.iter().map(|l| (l.msg().to_owned(), l.to_json())).collect();
                check(msgs.len() == 2, || format!("{msgs:?}"))?;
                check(
                    msgs[0].0 == "ignoring signal" && msgs[0].1.contains("\"signal\":\"SIGHUP\""),
                    || format!("{msgs:?}"),
                )?;
                let want = format!("\"signal\":\"{}\"", sig.as_str());
                check(
                    msgs[1].0 == "forwarding SIGTERM to the agent" && msgs[1].1.contains(&want),
                    || format!("{msgs:?}"),
                )
            });
        }
    }
}
