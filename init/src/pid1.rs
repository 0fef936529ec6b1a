//! The PID 1 entry point: bring the utility VM from an empty initramfs to a running agent, supervise
//! it, and power off when it exits.
//!
//! This module owns the order of the boot steps, their timing and logging, and what is fatal. The
//! steps themselves live in their own modules. Order (docs/gcs-reference.md §6.1, adapted):
//!
//! Record the boot clock, early mounts ([`crate::mounts`]), `RLIMIT_NOFILE`, early kernel modules
//! (virtio, vsock), dial the port-109 log stream, fork + exec the agent, supervise it, power off.
//! The steps the bridge does not need (entropy, cgroups, `lo`, storage modules) are the agent's
//! late set-up, run once the bridge is negotiated (on one vCPU, running them beside the agent's
//! start would only take CPU from it).
//!
//! Readiness is `/init` → bridge negotiated, so only what the bridge needs comes before the agent.
//!
//! Fatal (kernel log, then power off): a failed `/dev`, `/proc` or `/sys` mount, a required early
//! module that fails or an unreadable module list, and any failure to start the agent. Everything
//! else is logged and boot carries on. `main` never returns and never panics.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

use crate::journal::Journal;
use crate::log::{Level, LogLine};
use crate::spawn::{AgentCommand, AgentStdio, SpawnError, AGENT_EXE};
use crate::{modules, mounts, poweroff, rlimit, spawn, supervisor, time, vsock};

pub use crate::spawn::{INIT_LOG_FD, INIT_LOG_FD_ENV};

/// Environment variable carrying init's start time on the boot clock (`CLOCK_BOOTTIME`, in
/// nanoseconds) to the agent.
pub const BOOTTIME_ENV: &str = "RGCS_INIT_BOOTTIME_NS";

/// Runs PID 1: boot steps, the agent, supervision, power-off.
///
/// `args` are the arguments PID 1 received after its program name; the agent is started as
/// `gcs <args…>` by re-executing `/proc/self/exe`. Must be called before the process starts any other
/// thread (no async runtime yet): PID 1 forks, and stays single-threaded.
pub fn main(args: Vec<OsString>) -> ! {
    let start = time::boottime();
    let mut log = Journal::new();
    early_mounts(&mut log);
    ensure_std_fds();
    raise_nofile(&mut log);
    early_modules(&mut log);
    connect_log_stream(&mut log);
    let pid = start_agent(&mut log, &args, start);
    supervise(&mut log, pid);
    poweroff::power_off()
}

/// `/dev`, `/proc`, `/sys`, `/run` and the rest of the early table; fatal if a required one fails.
fn early_mounts(log: &mut Journal) {
    let (res, took) = timed(|| mounts::run(Path::new("/"), mounts::EARLY_STEPS));
    match res {
        Ok(report) => {
            for failure in &report.failed {
                log.emit(warn("early mount step failed", "mounts", failure));
            }
            log.emit(
                step("early filesystems mounted", "mounts", took)
                    .field("mounted", report.count(mounts::Outcome::Mounted))
                    .field("already_mounted", report.count(mounts::Outcome::AlreadyMounted))
                    .field("linked", report.count(mounts::Outcome::Linked)),
            );
        }
        Err(e) => fatal(log, "early mount failed", "mounts", &e),
    }
}

/// `RLIMIT_NOFILE` as hcsshim's init sets it; a failure is only logged.
fn raise_nofile(log: &mut Journal) {
    let (res, took) = timed(rlimit::raise_nofile);
    match res {
        Ok(l) => log.emit(
            step("open file limit set", "rlimit", took)
                .field("soft", l.soft)
                .field("hard", l.hard)
                .field("fell_back", l.fell_back),
        ),
        Err(e) => log.emit(warn("open file limit not set", "rlimit", &e)),
    }
}

/// The modules the bridge needs (virtio-pci, vsock); fatal if a required one fails.
fn early_modules(log: &mut Journal) {
    let (res, took) = timed(|| modules::load(modules::Phase::Early));
    match res {
        Ok(report) if !report.list_found => log.emit(
            step("no module list; nothing to load", "modules", took).field("list", modules::MODULES_LIST),
        ),
        Ok(report) => {
            for skipped in &report.skipped {
                log.emit(
                    warn("optional module skipped", "modules", &skipped.failure)
                        .field("module", skipped.path.to_string_lossy()),
                );
            }
            log.emit(
                step("early modules loaded", "modules", took)
                    .field("phase", report.phase.as_str())
                    .field("loaded", report.loaded)
                    .field("already_loaded", report.already_loaded)
                    .field("skipped", report.skipped.len()),
            );
        }
        Err(e) => fatal(log, "early modules failed", "modules", &e),
    }
}

/// The host's log port (109); without it, init logs to `/dev/kmsg`.
fn connect_log_stream(log: &mut Journal) {
    let (res, took) = timed(|| vsock::connect_once(vsock::LOG_PORT));
    match res {
        Ok(sock) => {
            log.attach(sock);
            log.emit(step("log stream connected", "log_stream", took).field("port", vsock::LOG_PORT));
        }
        Err(e) => {
            log.use_kmsg();
            log.emit(
                warn("log stream unavailable; logging to /dev/kmsg", "log_stream", &e)
                    .field("port", vsock::LOG_PORT),
            );
        }
    }
}

/// Forks and execs the agent with the log socket as its stderr and a pipe that carries init's
/// own lines through it (one writer per stream); fatal on any failure. Returns its PID.
fn start_agent(log: &mut Journal, args: &[OsString], start: Duration) -> nix::unistd::Pid {
    let spawn_start = time::boottime();
    let start_ns = time::as_nanos_u64(start);
    // Block before forking so that no SIGCHLD or shutdown signal can be lost in between.
    if let Err(e) = supervisor::block_handled() {
        fatal(log, "block signals failed", "spawn", &e);
    }
    // While the agent runs it is the only writer of the log socket; init's lines reach it
    // through this pipe (see `journal`). Without a socket there is nothing to share.
    let relay = match log.socket() {
        Some(_) => pipe2(OFlag::O_CLOEXEC).ok(),
        None => None,
    };
    let agent = AgentCommand::new(AGENT_EXE, args, start_ns, relay.is_some()).and_then(|cmd| {
        let mut stdio = AgentStdio::new(log.socket())?;
        if let Some((read_end, _)) = &relay {
            stdio = stdio.with_init_log(read_end.try_clone().map_err(SpawnError::DupLogSocket)?);
        }
        let pid = spawn::spawn(&cmd, &stdio)?;
        Ok((pid, stdio.stderr_kind))
    });
    let (pid, stderr_kind) = match agent {
        Ok(started) => started,
        Err(e) => fatal(log, "start agent failed", "spawn", &e),
    };
    if let Some((read_end, write_end)) = relay {
        drop(read_end);
        // Never block PID 1 on a full pipe: a line that does not fit goes to /dev/kmsg.
        let nonblocking = fcntl(write_end.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        if nonblocking.is_ok() {
            log.relay_through(write_end);
        } else {
            log.use_kmsg();
        }
    }
    log.emit(
        LogLine::new(Level::Info, "init ready")
            .field("boottime_ns", start_ns)
            .field("agent_pid", pid.as_raw())
            .field("agent_stderr", stderr_kind)
            .field("spawn_ms", time::as_millis_f64(time::since(spawn_start)))
            .field("duration_ms", time::as_millis_f64(time::since(start))),
    );
    pid
}

/// Reaps everything until the agent exits, then says how it ended.
fn supervise(log: &mut Journal, pid: nix::unistd::Pid) {
    let supervised = supervisor::supervise(pid, &mut |line| log.emit(line));
    // The agent is gone: init writes the socket alone again.
    log.end_relay();
    match supervised {
        Ok(exit) => {
            let level = if exit.status.code() == 0 {
                Level::Info
            } else {
                Level::Error
            };
            let mut line = LogLine::new(level, "agent exited")
                .field("agent_pid", pid.as_raw())
                .field("status", exit.status.to_string())
                .field("exit_code", exit.status.code())
                .field("orphans_reaped", exit.orphans_reaped)
                .field("uptime_ms", time::as_millis_f64(time::boottime()));
            if let Some(name) = exit.status.signal_name() {
                line.set_field("signal", name);
            }
            log.emit_everywhere(line);
        }
        Err(e) => log.emit_everywhere(error("lost track of the agent", "supervise", &e)),
    }
}

/// Runs `f`, returning its result and how long it took on the boot clock.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = time::boottime();
    let out = f();
    (out, time::since(start))
}

/// An info line for a completed step: `step` and `duration_ms` fields.
fn step(msg: &str, name: &str, took: Duration) -> LogLine {
    LogLine::new(Level::Info, msg)
        .field("step", name)
        .field("duration_ms", time::as_millis_f64(took))
}

/// A line for a failed step, with the error's full cause chain in `error`.
fn failure(level: Level, msg: &str, name: &str, err: &(dyn std::error::Error + 'static)) -> LogLine {
    LogLine::new(level, msg)
        .field("step", name)
        .field("error", rgcs_protocol::error_chain(err))
}

fn warn(msg: &str, name: &str, err: &(dyn std::error::Error + 'static)) -> LogLine {
    failure(Level::Warning, msg, name, err)
}

fn error(msg: &str, name: &str, err: &(dyn std::error::Error + 'static)) -> LogLine {
    failure(Level::Error, msg, name, err)
}

/// Logs a fatal error of step `name` everywhere it can (with `fatal: true`) and powers off.
fn fatal(log: &mut Journal, msg: &str, name: &str, err: &(dyn std::error::Error + 'static)) -> ! {
    log.emit_everywhere(error(msg, name, err).field("fatal", true));
    poweroff::power_off()
}

/// Makes sure fds 0, 1 and 2 are open (on `/dev/null` if the kernel found no `/dev/console`), so that
/// no descriptor init opens later lands there by accident. Best effort.
fn ensure_std_fds() {
    for fd in 0..3 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            // open() returns the lowest free descriptor, which is `fd`. Ownership passes to the
            // process's standard-descriptor slot for good.
            if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
                let raw = null.into_raw_fd();
                if raw != fd {
                    let _ = nix::unistd::dup2(raw, fd);
                    let _ = nix::unistd::close(raw);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] Errno);

    #[test]
    fn step_lines_carry_step_and_duration() {
        let line = step("loopback up", "loopback", Duration::from_micros(1500)).to_json();
        assert!(
            line.contains("\"msg\":\"loopback up\",\"step\":\"loopback\",\"duration_ms\":1.5}"),
            "{line}"
        );
        let line = warn("x", "entropy", &Inner(Errno::ETIMEDOUT)).to_json();
        assert!(line.contains("\"level\":\"warning\""), "{line}");
        assert!(
            line.contains("\"error\":\"inner: ETIMEDOUT: Connection timed out\""),
            "{line}"
        );
    }
}
