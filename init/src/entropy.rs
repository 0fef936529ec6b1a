//! Seeding the kernel's entropy pool from the host (vsock port 1, docs/gcs-reference.md §1.1 and §6.1 step 14).
//!
//! This module owns the bounded read of the host's seed and the `RNDADDENTROPY` ioctl. The host writes
//! a few hundred random bytes and closes; init reads until EOF (at most [`MAX_SEED_LEN`] bytes, and
//! for at most [`READ_TIMEOUT`]) and credits 8 bits of entropy per byte. Failure is not fatal to init.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::vsock;

/// Most bytes accepted from the host (the host sends 512).
pub const MAX_SEED_LEN: usize = 4096;

/// Longest wait for the host's bytes before using what arrived (a host that never closes must not
/// hang PID 1).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The device the ioctl is issued on.
pub const RANDOM_DEVICE: &str = "/dev/urandom";

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// The vsock dial failed.
    #[error("connect to the host entropy port {port}")]
    Connect {
        /// The port dialled.
        port: u32,
        /// The dial error.
        #[source]
        source: io::Error,
    },
    /// Reading the seed failed before any byte arrived.
    #[error("read the entropy seed from the host")]
    Read(#[source] io::Error),
    /// The host closed without sending anything.
    #[error("the host sent no entropy")]
    Empty,
    /// The random device could not be opened.
    #[error("open {path}", path = RANDOM_DEVICE)]
    OpenDevice(#[source] io::Error),
    /// The kernel refused the seed.
    #[error("add {len} bytes of entropy to the kernel pool")]
    AddEntropy {
        /// Seed length.
        len: usize,
        /// The ioctl's errno.
        #[source]
        source: Errno,
    },
}

/// Dials the host's entropy port, reads the seed and adds it to the kernel pool. Returns the number
/// of bytes credited.
pub fn seed_from_host() -> Result<usize, EntropyError> {
    let port = vsock::ENTROPY_PORT;
    let sock = vsock::connect_once(port).map_err(|source| EntropyError::Connect { port, source })?;
    // Best effort: without the timeout the read is still bounded in size, just not in time.
    let _ = setsockopt(
        &sock,
        ReceiveTimeout,
        &TimeVal::milliseconds(i64::try_from(READ_TIMEOUT.as_millis()).unwrap_or(i64::MAX)),
    );
    let seed = read_capped(&mut File::from(sock), MAX_SEED_LEN).map_err(EntropyError::Read)?;
    if seed.is_empty() {
        return Err(EntropyError::Empty);
    }
    let dev = OpenOptions::new()
        .write(true)
        .open(RANDOM_DEVICE)
        .map_err(EntropyError::OpenDevice)?;
    add_entropy(&dev, &seed).map_err(|source| EntropyError::AddEntropy {
        len: seed.len(),
        source,
    })?;
    Ok(seed.len())
}

/// Reads from `r` until EOF or until `cap` bytes have arrived, whichever is first. A read timeout
/// (`WouldBlock`/`TimedOut`) after some bytes ends the read with what arrived; before any byte it is
/// an error. `EINTR` is retried.
pub fn read_capped(r: &mut impl Read, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; cap];
    let mut len = 0;
    while len < cap {
        match r.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if len > 0 && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break
            }
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// `struct rand_pool_info` with room for [`MAX_SEED_LEN`] bytes: the kernel reads `entropy_count`
/// (bits to credit) and `buf_size` (bytes), then `buf_size` bytes from offset 8.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_SEED_LEN],
}

impl RandPoolInfo {
    /// Crediting 8 bits per byte, as hcsshim does: the host's bytes come from its CSPRNG.
    fn new(seed: &[u8]) -> Option<Self> {
        let len = seed.len();
        if len > MAX_SEED_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_SEED_LEN];
        buf[..len].copy_from_slice(seed);
        // len ≤ 4096, so the conversion succeeds and `8 * len` cannot overflow a c_int.
        let buf_size = libc::c_int::try_from(len).ok()?;
        Some(RandPoolInfo {
            entropy_count: buf_size * 8,
            buf_size,
            buf,
        })
    }
}

mod ioctl {
    // RNDADDENTROPY is `_IOW('R', 0x03, int[2])`: the encoded size is that of the fixed header only;
    // the kernel reads the variable-length buffer that follows it on its own.
    nix::ioctl_write_ptr_bad!(
        rnd_add_entropy,
        nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
        super::RandPoolInfo
    );
}

/// Adds `seed` (at most [`MAX_SEED_LEN`] bytes, else `EINVAL`) to the pool behind `dev` with
/// `RNDADDENTROPY`, crediting 8 bits per byte. Needs `CAP_SYS_ADMIN`.
pub fn add_entropy(dev: &impl AsFd, seed: &[u8]) -> Result<(), Errno> {
    let info = RandPoolInfo::new(seed).ok_or(Errno::EINVAL)?;
    debug_assert_eq!(size_of::<RandPoolInfo>(), 8 + MAX_SEED_LEN);
    // SAFETY: `dev` is an open descriptor borrowed for the call. `info` is a live, properly aligned
    // `#[repr(C)]` rand_pool_info whose `buf_size` (≤ MAX_SEED_LEN) never exceeds its `buf`, so the
    // kernel reads only initialised memory we own; it does not keep the pointer after the call.
    unsafe { ioctl::rnd_add_entropy(dev.as_fd().as_raw_fd(), &info) }.map(drop)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};
    use std::mem::offset_of;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::sandbox::TempDir;

    #[test]
    fn rand_pool_info_layout_and_counts() {
        assert_eq!(offset_of!(RandPoolInfo, entropy_count), 0);
        assert_eq!(offset_of!(RandPoolInfo, buf_size), 4);
        assert_eq!(offset_of!(RandPoolInfo, buf), 8);
        let info = RandPoolInfo::new(&[1, 2, 3]).expect("fits");
        assert_eq!((info.entropy_count, info.buf_size), (24, 3));
        assert_eq!(&info.buf[..4], &[1, 2, 3, 0]);
        assert!(RandPoolInfo::new(&[0; MAX_SEED_LEN]).is_some());
        assert!(RandPoolInfo::new(&[0; MAX_SEED_LEN + 1]).is_none());
    }

    #[test]
    fn ioctl_request_code() {
        assert_eq!(
            nix::request_code_write!(b'R', 0x03, size_of::<[libc::c_int; 2]>()),
            0x4008_5203
        );
    }

    #[test]
    fn read_is_capped() {
        let data = vec![7u8; 5000];
        assert_eq!(
            read_capped(&mut Cursor::new(&data), MAX_SEED_LEN)
                .expect("read")
                .len(),
            4096
        );
        assert_eq!(
            read_capped(&mut Cursor::new(&data[..512]), MAX_SEED_LEN)
                .expect("read")
                .len(),
            512
        );
        assert!(read_capped(&mut Cursor::new(&[][..]), MAX_SEED_LEN)
            .expect("read")
            .is_empty());
    }

    #[test]
    fn read_until_eof_over_a_socket() {
        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        let writer = std::thread::spawn(move || {
            for chunk in [&[1u8; 100][..], &[2u8; 412][..]] {
                host.write_all(chunk).expect("write");
            }
        });
        let seed = read_capped(&mut guest, MAX_SEED_LEN).expect("read");
        writer.join().expect("writer");
        assert_eq!(seed.len(), 512);
        assert_eq!((seed[0], seed[511]), (1, 2));
    }

    #[test]
    fn a_silent_host_times_out_with_partial_data_or_an_error() {
        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let err = read_capped(&mut guest, MAX_SEED_LEN).expect_err("nothing arrived");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        host.write_all(&[9; 10]).expect("write");
        assert_eq!(
            read_capped(&mut guest, MAX_SEED_LEN).expect("partial"),
            vec![9; 10]
        );
        drop(host);
    }

    #[test]
    fn add_entropy_reports_the_kernel_errno() {
        // A regular file has no RNDADDENTROPY: the ioctl plumbing returns ENOTTY without touching the
        // host's pool.
        let dir = TempDir::new();
        let file = File::create(dir.path().join("not-random")).expect("create");
        assert_eq!(add_entropy(&file, &[1, 2, 3]), Err(Errno::ENOTTY));
        assert_eq!(add_entropy(&file, &[0; MAX_SEED_LEN + 1]), Err(Errno::EINVAL));
    }
}
