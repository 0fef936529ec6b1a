//! Helper programs the agent runs for itself (`mkfs.ext4` for EnsureFilesystem; `udhcpc` for
//! networking): started like UVM processes (`sys::spawn`, safe from the multi-threaded agent),
//! their exit collected by the one reaper (never `waitpid` here, which would race it), their
//! output captured and bounded, and killed when they overrun their time.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::reaper::{ExitStatus, Reaper};
use crate::sys::pid::ProcessId;
use crate::sys::spawn::{spawn, Spawn};

/// Most output kept from a helper (its tail is what explains a failure).
const MAX_OUTPUT: usize = 16 * 1024;

/// How a helper ended.
#[derive(Debug)]
pub struct ToolOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// stdout and stderr, interleaved, at most 16 KiB (the end).
    pub output: String,
}

impl ToolOutput {
    /// `Ok` on exit code 0, else an error naming `what` with the output.
    pub fn check(self, what: &str) -> io::Result<()> {
        match self.status {
            ExitStatus::Exited(0) => Ok(()),
            s => Err(io::Error::other(format!(
                "{what} failed ({s}): {}",
                self.output.trim()
            ))),
        }
    }
}

/// Runs `program` with `args` and `env` to completion, at most `limit` (then SIGKILL). Blocking:
/// call it from a blocking context.
pub fn run(
    reaper: &Reaper,
    program: &Path,
    args: &[&str],
    env: &[&str],
    limit: Duration,
) -> io::Result<ToolOutput> {
    let cstr = |s: &[u8]| std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let mut argv = vec![cstr(program.as_os_str().as_encoded_bytes())?];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let envp = env
        .iter()
        .map(|e| cstr(e.as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let w2 = w.try_clone()?;
    let spawned_at = Instant::now();
    let pid = spawn(Spawn {
        program: cstr(program.as_os_str().as_encoded_bytes())?,
        argv,
        envp,
        cwd: None,
        stdio: [None, Some(w), Some(w2)],
        controlling_tty: false,
    })?;
    let pid = ProcessId::from(pid);
    let watch = reaper.watch(pid, spawned_at);
    let output = read_bounded(r);
    let status = match watch.wait_blocking(limit.saturating_sub(spawned_at.elapsed())) {
        Some(s) => s,
        None => {
            let _ = pid.signal(libc::SIGKILL);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {limit:?}", program.display()),
            ));
        }
    };
    Ok(ToolOutput { status, output })
}

/// Reads a pipe to EOF, keeping the last [`MAX_OUTPUT`] bytes.
fn read_bounded(r: OwnedFd) -> String {
    let mut f = std::fs::File::from(r);
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_OUTPUT {
                    kept.drain(..kept.len() - MAX_OUTPUT);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
