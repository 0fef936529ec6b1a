//! Children that must not outlive host-shim.

use std::io;
use std::os::fd::FromRawFd;

use tokio::process::Command;

/// Makes the child of `cmd` receive SIGKILL when this process dies (`PR_SET_PDEATHSIG`), and
/// fail to start if this process already died between fork and the `prctl`.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only calls `prctl` and
    // `getppid`, which are async-signal-safe system calls, builds an `io::Error` from a raw errno
    // (no allocation), and touches no memory shared with other threads of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The start time of process `pid` (clock ticks since boot, `/proc/PID/stat` field 22) if it
/// runs: a zombie (killed, not reaped yet) does not, though `kill(pid, 0)` still succeeds on it.
/// With the start time a caller can also tell a reused PID from the process it recorded.
pub fn running_since(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Takes ownership of descriptor `raw`, inherited across `exec` from the process that started
/// this one (the containerd shim's listening socket), after checking that it is open. It is
/// made close-on-exec so that it goes no further.
pub fn adopt_inherited_fd(raw: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is stdio"),
        ));
    }
    fcntl(raw, FcntlArg::F_GETFD).map_err(io::Error::from)?;
    fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    // SAFETY: `raw` is open (F_GETFD succeeded), it is not stdio, and nothing else in this
    // process owns it: it was inherited across exec and its number came from our parent, which
    // passed it for us to take.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}
