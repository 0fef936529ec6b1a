//! Children that must not outlive host-shim.

use std::io;

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
