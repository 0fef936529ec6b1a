//! File-system calls std does not offer: `openat2` confined beneath a directory, `lsetxattr`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OpenHow};

/// `openat2(dir, rel, how)`, owning the result.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, how: OpenHow) -> Result<OwnedFd, Errno> {
    let fd = openat2(dir.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it, so it is wrapped once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lsetxattr(path, name, value)` (does not follow a final symlink).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: both strings are NUL-terminated and live across the call; `value` is a valid
    // buffer of `value.len()` bytes that the kernel only reads.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
