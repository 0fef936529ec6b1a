//! tap devices: `/dev/net/tun` + `TUNSETIFF`. The device is created in the network namespace of
//! the calling thread, and lives as long as its descriptor (or until deleted).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Opens a new tap device named `name` (at most 15 bytes), without packet information and with
/// virtio-net headers, as QEMU's `-netdev tap,fd=` expects. Returns its descriptor.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad tap name {name:?}"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).unwrap_or(0);
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes on Linux: a 16-byte name, then a union
    // whose first member here is the 16-bit flags) from the pointer, which points at a live
    // 40-byte buffer laid out that way; the descriptor is an open /dev/net/tun.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}
