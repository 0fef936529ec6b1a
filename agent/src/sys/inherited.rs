//! Descriptors the agent inherits from PID 1 by number (not by `std`'s stdio): init's log pipe.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Takes ownership of inherited descriptor `fd` if it is open, and marks it close-on-exec so no
/// container or UVM process inherits it. Call once, before anything else could use the number.
pub fn take(fd: RawFd) -> Option<OwnedFd> {
    if fd < 3 {
        return None;
    }
    // Checks that the number is an open descriptor before anything claims it.
    fcntl(fd, FcntlArg::F_GETFD).ok()?;
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: `fd` is open (F_GETFD succeeded) and was handed to this process by PID 1 for the
    // agent's exclusive use; nothing else in the agent refers to it, and callers take it once, so
    // the `OwnedFd` is its only owner and closes it exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
