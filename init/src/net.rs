//! Interface flags for the guest's own network stack; at boot, bringing the loopback interface up.
//!
//! This module owns the `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls on an `AF_INET` datagram socket. It does
//! not configure addresses or routes (the kernel gives `lo` 127.0.0.1 and ::1 when it comes up);
//! container networking belongs to the agent.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// The loopback interface.
pub const LOOPBACK: &str = "lo";

/// Why an interface could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The name does not fit `IFNAMSIZ` or contains a NUL byte.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// No control socket.
    #[error("open an AF_INET control socket")]
    Socket(#[source] Errno),
    /// Reading the flags failed (`ENODEV`: no such interface).
    #[error("read the flags of interface {name}")]
    GetFlags {
        /// Interface name.
        name: String,
        /// The ioctl's errno.
        #[source]
        source: Errno,
    },
    /// Setting the flags failed.
    #[error("set interface {name} up")]
    SetFlags {
        /// Interface name.
        name: String,
        /// The ioctl's errno.
        #[source]
        source: Errno,
    },
}

mod ioctl {
    nix::ioctl_readwrite_bad!(get_flags, libc::SIOCGIFFLAGS, libc::ifreq);
    nix::ioctl_write_ptr_bad!(set_flags, libc::SIOCSIFFLAGS, libc::ifreq);
}

/// Brings `lo` up. Returns whether it was down before.
pub fn loopback_up() -> Result<bool, NetError> {
    interface_up(LOOPBACK)
}

/// `IFF_UP` as the type of `ifr_flags`.
// cast: IFF_UP is 0x1, which fits in a c_short (the kernel's `ifr_flags` is a short).
#[allow(clippy::cast_possible_truncation)]
const IFF_UP: libc::c_short = libc::IFF_UP as libc::c_short;

/// Sets `IFF_UP` on the interface `name` if it is not already set. Returns whether it was down.
pub fn interface_up(name: &str) -> Result<bool, NetError> {
    let mut req = ifreq(name)?;
    let sock = control_socket()?;
    let flags = read_flags(&sock, &mut req).map_err(|source| NetError::GetFlags {
        name: name.into(),
        source,
    })?;
    let up = IFF_UP;
    if flags & up != 0 {
        return Ok(false);
    }
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: `sock` is an open socket for the duration of the call and `req` is a live, initialised
    // ifreq (NUL-terminated name, flags set above) that the kernel only reads.
    unsafe { ioctl::set_flags(sock.as_raw_fd(), &req) }.map_err(|source| NetError::SetFlags {
        name: name.into(),
        source,
    })?;
    Ok(true)
}

/// Whether `IFF_UP` is set on the interface `name`.
pub fn is_up(name: &str) -> Result<bool, NetError> {
    let mut req = ifreq(name)?;
    let sock = control_socket()?;
    let flags = read_flags(&sock, &mut req).map_err(|source| NetError::GetFlags {
        name: name.into(),
        source,
    })?;
    Ok(flags & IFF_UP != 0)
}

fn control_socket() -> Result<OwnedFd, NetError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)
}

fn read_flags(sock: &OwnedFd, req: &mut libc::ifreq) -> Result<libc::c_short, Errno> {
    // SAFETY: `sock` is open for the call; `req` is a live, exclusively borrowed ifreq with a
    // NUL-terminated name that the kernel reads and whose `ifr_ifru` it overwrites with the flags.
    unsafe { ioctl::get_flags(sock.as_raw_fd(), req) }?;
    // SAFETY: `ifru_flags` was initialised when `req` was built and SIOCGIFFLAGS has just stored the
    // interface's flags in it; every bit pattern is a valid c_short.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// An ifreq naming `name`, with the flags member initialised to zero.
fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(NetError::BadName(name.into()));
    }
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, &src) in ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    Ok(libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 },
    })
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child};

    #[test]
    fn names_are_validated() {
        for bad in ["", "0123456789abcdef", "l\0o"] {
            assert!(matches!(interface_up(bad), Err(NetError::BadName(_))), "{bad:?}");
        }
        let req = ifreq("eth0").expect("valid");
        let name: Vec<u8> = req.ifr_name[..5].iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(name, b"eth0\0");
    }

    #[test]
    fn brings_loopback_up_in_a_fresh_network_namespace() {
        run_in_child(CloneFlags::CLONE_NEWNET, || {
            check(!ctx(is_up(LOOPBACK), "is_up before")?, || {
                "lo starts down in a new netns".into()
            })?;
            check(ctx(loopback_up(), "first loopback_up")?, || {
                "first call changes lo".into()
            })?;
            check(ctx(is_up(LOOPBACK), "is_up after")?, || "lo is up".into())?;
            check(!ctx(loopback_up(), "second loopback_up")?, || {
                "second call is a no-op".into()
            })?;
            match interface_up("nosuchif0") {
                Err(NetError::GetFlags {
                    source: Errno::ENODEV,
                    ..
                }) => Ok(()),
                other => Err(format!("missing interface: {other:?}")),
            }
        });
    }
}
