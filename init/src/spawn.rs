//! Starting the agent as PID 1's child (docs/gcs-reference.md §6.1 step 16, without vsockexec).
//!
//! This module owns the agent's command line, environment and standard descriptors, and the
//! fork + exec. Everything that can fail is prepared before the fork; the child only unblocks
//! signals, resets `SIGPIPE`, starts a new session, installs fds 0–2 and calls `execve`. If that
//! fails it logs to the kernel log and exits 127, which PID 1 then reports like any agent exit.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{dup2, execve, fork, setsid, ForkResult, Pid};

use crate::kmsg;
use crate::log::Level;
use crate::pid1::BOOTTIME_ENV;

/// The program PID 1 re-executes: its own binary.
pub(crate) const AGENT_EXE: &str = "/proc/self/exe";
/// `argv[0]` of the agent.
pub(crate) const AGENT_ARGV0: &str = "gcs";
/// The agent's `PATH`.
pub(crate) const AGENT_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
/// The agent's descriptor carrying init's log lines while it runs (see `journal`).
pub const INIT_LOG_FD: RawFd = 3;
/// Environment variable telling the agent that [`INIT_LOG_FD`] is init's log pipe.
pub const INIT_LOG_FD_ENV: &str = "RGCS_INIT_LOG_FD";

/// Exit status of a child whose `execve` failed (the shell's "command not found").
pub(crate) const EXEC_FAILED: i32 = 127;

/// Why the agent could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    /// An argument (index 0 is the program) contains a NUL byte.
    #[error("agent argument {index} contains a NUL byte")]
    NulInArgument { index: usize },
    /// A standard descriptor could not be prepared.
    #[error("open {path} for the agent's stdio")]
    OpenStdio {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// The log socket could not be duplicated for the agent's stderr.
    #[error("duplicate the log socket for the agent's stderr")]
    DupLogSocket(#[source] io::Error),
    /// `fork` failed.
    #[error("fork the agent")]
    Fork(#[source] Errno),
}

/// A fully prepared `execve` call.
#[derive(Debug)]
pub(crate) struct AgentCommand {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl AgentCommand {
    /// `exe` with `argv = [AGENT_ARGV0, args…]` and exactly the environment `PATH`,
    /// `RGCS_INIT_BOOTTIME_NS=<boottime_ns>` and, with `init_log`, `RGCS_INIT_LOG_FD=3`.
    pub(crate) fn new(
        exe: &str,
        args: &[OsString],
        boottime_ns: u64,
        init_log: bool,
    ) -> Result<Self, SpawnError> {
        let cstr = |bytes: &[u8], index| CString::new(bytes).map_err(|_| SpawnError::NulInArgument { index });
        let exe = cstr(exe.as_bytes(), 0)?;
        let mut argv = vec![cstr(AGENT_ARGV0.as_bytes(), 0)?];
        for (i, arg) in args.iter().enumerate() {
            argv.push(cstr(arg.as_bytes(), i + 1)?);
        }
        let mut envp = vec![
            cstr(format!("PATH={AGENT_PATH}").as_bytes(), 0)?,
            cstr(format!("{BOOTTIME_ENV}={boottime_ns}").as_bytes(), 0)?,
        ];
        if init_log {
            envp.push(cstr(format!("{INIT_LOG_FD_ENV}={INIT_LOG_FD}").as_bytes(), 0)?);
        }
        Ok(AgentCommand { exe, argv, envp })
    }
}

/// The descriptors that become the agent's fds 0, 1 and 2.
#[derive(Debug)]
pub(crate) struct AgentStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The read end of init's log pipe, installed as fd 3.
    init_log: Option<OwnedFd>,
    /// What stderr is, for the log: `log socket`, `/dev/console` or `/dev/null`.
    pub(crate) stderr_kind: &'static str,
}

impl AgentStdio {
    /// stdin and stdout on `/dev/null`; stderr on a duplicate of `log` if given, else `/dev/console`,
    /// else `/dev/null`.
    pub(crate) fn new(log: Option<BorrowedFd<'_>>) -> Result<Self, SpawnError> {
        let open = |path: &'static str, write: bool| {
            OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|source| SpawnError::OpenStdio { path, source })
        };
        let stdin = open("/dev/null", false)?;
        let stdout = open("/dev/null", true)?;
        let (stderr, stderr_kind) = match log.map(|fd| fd.try_clone_to_owned()) {
            Some(Ok(fd)) => (fd, "log socket"),
            Some(Err(source)) => return Err(SpawnError::DupLogSocket(source)),
            None => match open("/dev/console", true) {
                Ok(fd) => (fd, "/dev/console"),
                Err(_) => (open("/dev/null", true)?, "/dev/null"),
            },
        };
        Ok(AgentStdio {
            stdin,
            stdout,
            stderr,
            init_log: None,
            stderr_kind,
        })
    }

    /// Also gives the agent `read_end` as fd [`INIT_LOG_FD`].
    pub(crate) fn with_init_log(mut self, read_end: OwnedFd) -> Self {
        self.init_log = Some(read_end);
        self
    }

    /// Arbitrary descriptors (tests).
    #[cfg(test)]
    pub(crate) fn from_fds(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Self {
        AgentStdio {
            stdin,
            stdout,
            stderr,
            init_log: None,
            stderr_kind: "test",
        }
    }
}

/// Forks and execs the agent; returns its pid.
///
/// Must be called while the process is single-threaded (PID 1 never starts threads), so that the
/// child may run ordinary Rust code until `execve`.
pub(crate) fn spawn(cmd: &AgentCommand, stdio: &AgentStdio) -> Result<Pid, SpawnError> {
    // SAFETY: PID 1 (and each test that calls this from a forked sandbox) is single-threaded here,
    // so no lock or allocator state can be held by a thread that does not exist in the child. The
    // child runs `exec_child`, which never returns: it execs or `_exit`s.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => exec_child(cmd, stdio),
        Err(e) => Err(SpawnError::Fork(e)),
    }
}

fn exec_child(cmd: &AgentCommand, stdio: &AgentStdio) -> ! {
    let Err((what, errno)) = prepare_and_exec(cmd, stdio);
    kmsg::log(
        Level::Error,
        &format!("start agent {:?}: {what}: {errno}", cmd.exe),
    );
    // SAFETY: `_exit` ends the child without running atexit handlers or destructors that belong to
    // the parent's state; it has no preconditions.
    unsafe { libc::_exit(EXEC_FAILED) }
}

fn prepare_and_exec(cmd: &AgentCommand, stdio: &AgentStdio) -> Result<Infallible, (&'static str, Errno)> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(|e| ("unblock signals", e))?;
    // The Rust runtime ignores SIGPIPE, and an ignored disposition survives exec: give the agent (and
    // through it, every container) the default.
    // SAFETY: installing SIG_DFL registers no handler code, so no async-signal-safety requirement
    // applies.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(|e| ("reset SIGPIPE", e))?;
    setsid().map_err(|e| ("setsid", e))?;
    let mut fds = vec![
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    if let Some(log) = &stdio.init_log {
        fds.push(log.as_raw_fd());
    }
    install_stdio(&fds).map_err(|e| ("install stdio", e))?;
    execve(&cmd.exe, &cmd.argv, &cmd.envp).map_err(|e| ("execve", e))
}

/// Makes `sources[i]` the descriptor `i`, without `FD_CLOEXEC`. Every source is first duplicated
/// above the targets, so installing one target can never clobber a source still to be installed.
fn install_stdio(sources: &[RawFd]) -> Result<(), Errno> {
    let above = RawFd::try_from(sources.len()).map_err(|_| Errno::EINVAL)?;
    let mut high = Vec::with_capacity(sources.len());
    for src in sources {
        high.push(fcntl(*src, FcntlArg::F_DUPFD_CLOEXEC(above))?);
    }
    for (target, src) in (0..).zip(high) {
        // dup2 clears FD_CLOEXEC on the target; the high copies keep it and vanish at exec.
        dup2(src, target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;

    use nix::fcntl::OFlag;
    use nix::mount::{mount, MsFlags};
    use nix::sched::CloneFlags;
    use nix::unistd::pipe2;

    use super::*;
    use crate::reaper::{ExitStatus, Reaper};
    use crate::sandbox::{check, ctx, run_in_child, wait_until};

    #[test]
    fn command_line_and_environment() {
        let args = ["-v4", "-loglevel", "debug"].map(OsString::from);
        let cmd = AgentCommand::new(AGENT_EXE, &args, 123_456_789, true).expect("valid");
        assert_eq!(cmd.exe.as_bytes(), b"/proc/self/exe");
        let argv: Vec<_> = cmd.argv.iter().map(|c| c.to_str().unwrap_or("")).collect();
        assert_eq!(argv, ["gcs", "-v4", "-loglevel", "debug"]);
        let envp: Vec<_> = cmd.envp.iter().map(|c| c.to_str().unwrap_or("")).collect();
        assert_eq!(
            envp,
            [
                "PATH=/sbin:/usr/sbin:/bin:/usr/bin",
                "RGCS_INIT_BOOTTIME_NS=123456789",
                "RGCS_INIT_LOG_FD=3"
            ]
        );
        let bad = [OsString::from("ok"), OsString::from("n\0ul")];
        assert!(matches!(
            AgentCommand::new(AGENT_EXE, &bad, 0, false),
            Err(SpawnError::NulInArgument { index: 2 })
        ));
    }

    /// PID 1 starts with only fds 0–2; the test process may have inherited more without
    /// close-on-exec. Mark them so, to check that spawning itself leaks nothing.
    fn close_inherited_on_exec() -> Result<(), String> {
        let fds: Vec<RawFd> = ctx(std::fs::read_dir("/proc/self/fd"), "list fds")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            let _ = fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        }
        Ok(())
    }

    #[test]
    fn the_child_gets_exactly_what_pid1_promises() {
        run_in_child(CloneFlags::empty(), || {
            close_inherited_on_exec()?;
            // Block what PID 1 blocks, so the test proves the child unblocks it.
            ctx(crate::supervisor::block_handled(), "block")?;
            let (rd, wr) = ctx(pipe2(OFlag::O_CLOEXEC), "pipe")?;
            let null = |w: bool| {
                OpenOptions::new()
                    .read(!w)
                    .write(w)
                    .open("/dev/null")
                    .map(OwnedFd::from)
            };
            let stdio = AgentStdio::from_fds(ctx(null(false), "null")?, ctx(null(true), "null")?, wr);
            // `sleep` is exec'd directly, so its /proc entries show exactly what spawn set up.
            let cmd = ctx(
                AgentCommand::new("/bin/sleep", &[OsString::from("infinity")], 42, false),
                "command",
            )?;
            let pid = ctx(spawn(&cmd, &stdio), "spawn")?;
            drop(stdio);
            let proc_file =
                |name: &str| std::fs::read(format!("/proc/{pid}/{name}")).map_err(|e| format!("{name}: {e}"));
            wait_until(|| Ok(proc_file("cmdline")? == b"gcs\0infinity\0"))?;

            let environ = proc_file("environ")?;
            check(
                environ == b"PATH=/sbin:/usr/sbin:/bin:/usr/bin\0RGCS_INIT_BOOTTIME_NS=42\0",
                || format!("environ {:?}", String::from_utf8_lossy(&environ)),
            )?;
            let status = String::from_utf8_lossy(&proc_file("status")?).into_owned();
            let mask = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .ok_or_else(|| format!("no {key} in status"))
            };
            check(mask("SigBlk:")? == 0, || format!("blocked signals: {status}"))?;
            check(mask("SigIgn:")? & (1 << (libc::SIGPIPE - 1)) == 0, || {
                "SIGPIPE is reset to default".into()
            })?;
            let stat = String::from_utf8_lossy(&proc_file("stat")?).into_owned();
            let session = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(3));
            check(session == Some(pid.to_string().as_str()), || {
                format!("not a session leader: {stat}")
            })?;

            // `sleep` itself may briefly open files while starting (locale data); wait for it to settle.
            let mut fds: Vec<String> = Vec::new();
            let settled = wait_until(|| {
                fds = ctx(std::fs::read_dir(format!("/proc/{pid}/fd")), "fds")?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                fds.sort();
                Ok(fds == ["0", "1", "2"])
            });
            check(settled.is_ok(), || format!("open fds {fds:?}"))?;
            let link = |p: String| std::fs::read_link(&p).map_err(|e| format!("{p}: {e}"));
            check(
                link(format!("/proc/{pid}/fd/0"))? == Path::new("/dev/null"),
                || "stdin".into(),
            )?;
            check(
                link(format!("/proc/{pid}/fd/1"))? == Path::new("/dev/null"),
                || "stdout".into(),
            )?;
            let ours = link(format!("/proc/self/fd/{}", rd.as_raw_fd()))?;
            check(link(format!("/proc/{pid}/fd/2"))? == ours, || {
                "stderr is the given pipe".into()
            })?;

            ctx(nix::sys::signal::kill(pid, Signal::SIGTERM), "kill")?;
            let exit = ctx(Reaper::new(pid).wait_primary(), "wait")?;
            check(exit == ExitStatus::Signaled(libc::SIGTERM), || {
                format!("exit {exit}")
            })
        });
    }

    #[test]
    fn exec_failure_exits_127_and_reports() {
        // A private tmpfs over /dev hides /dev/kmsg, so the report falls back to the child's stderr
        // (our pipe) instead of reaching the host's kernel log.
        run_in_child(CloneFlags::CLONE_NEWNS, || {
            ctx(
                mount(
                    Some("tmpfs"),
                    "/dev",
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                ),
                "hide /dev",
            )?;
            let (rd, wr) = ctx(pipe2(OFlag::O_CLOEXEC), "pipe")?;
            let (in_rd, in_wr) = ctx(pipe2(OFlag::O_CLOEXEC), "pipe")?;
            let out = ctx(wr.try_clone(), "dup")?;
            let stdio = AgentStdio::from_fds(in_rd, out, wr);
            let cmd = ctx(AgentCommand::new("/nonexistent/gcs", &[], 0, false), "command")?;
            let pid = ctx(spawn(&cmd, &stdio), "spawn")?;
            drop((stdio, in_wr));
            let mut err = String::new();
            ctx(std::fs::File::from(rd).read_to_string(&mut err), "read")?;
            let status = ctx(Reaper::new(pid).wait_primary(), "wait")?;
            check(status == ExitStatus::Exited(EXEC_FAILED), || {
                format!("status {status}")
            })?;
            let want = "rgcs-init: error: start agent \"/nonexistent/gcs\": execve: ENOENT";
            check(err.starts_with(want), || format!("stderr: {err:?}"))
        });
    }
}
