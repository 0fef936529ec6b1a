//! Dialling the host over `AF_VSOCK` (the guest is always the client, docs/gcs-reference.md §1.1).
//!
//! This module owns the connect-and-retry policy shared by init (log stream, entropy) and the agent
//! (bridge, stdio, 9p): a blocking `SOCK_STREAM | SOCK_CLOEXEC` connect to CID 2, retried on
//! `ETIMEDOUT` (an old kernel vsock bug, opengcs #124/#135) up to [`DIAL_ATTEMPTS`] attempts with
//! [`DIAL_RETRY_DELAY`] between them, failing at once on any other error. It does not know which port
//! means what beyond the two init dials itself.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{connect as connect_socket, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// The host's context ID (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

pub use rgcs_protocol::ports::{ENTROPY_PORT, LOG_PORT};

/// Total connect attempts before giving up on `ETIMEDOUT`.
pub const DIAL_ATTEMPTS: u32 = 10;

/// Pause between two attempts.
pub const DIAL_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a dial failed; carried inside the returned [`io::Error`] (whose kind follows the errno).
#[derive(Debug, thiserror::Error)]
#[error("connect to vsock cid {cid} port {port} (attempt {attempts} of {max})", max = DIAL_ATTEMPTS)]
pub struct DialError {
    /// The context ID dialled.
    pub cid: u32,
    /// The port dialled.
    pub port: u32,
    /// Attempts made, the failing one included.
    pub attempts: u32,
    /// The errno of the last attempt.
    #[source]
    pub errno: Errno,
}

/// Connects to the host (CID 2) on `port`, with the retry policy described in the module docs.
///
/// On failure the [`io::Error`] has the errno's kind and wraps a [`DialError`] naming CID, port and
/// attempts (`err.get_ref()` and downcast to inspect it).
pub fn connect(port: u32) -> io::Result<OwnedFd> {
    connect_to(HOST_CID, port)
}

/// One attempt, no retries: for ports the host may not serve (the log stream and the entropy
/// seed are optional in hcsshim), where ten `ETIMEDOUT` retries would cost ~21 s.
pub fn connect_once(port: u32) -> io::Result<OwnedFd> {
    dial_once(HOST_CID, port).map_err(|errno| {
        dial_error(DialError {
            cid: HOST_CID,
            port,
            attempts: 1,
            errno,
        })
    })
}

/// Like [`connect`], to any context ID.
pub fn connect_to(cid: u32, port: u32) -> io::Result<OwnedFd> {
    dial_with_retry(|| dial_once(cid, port), std::thread::sleep).map_err(|(attempts, errno)| {
        dial_error(DialError {
            cid,
            port,
            attempts,
            errno,
        })
    })
}

/// Wraps `e` in an [`io::Error`] whose kind follows its errno.
fn dial_error(e: DialError) -> io::Error {
    io::Error::new(io::Error::from(e.errno).kind(), e)
}

/// One attempt on a fresh socket: after a failed `connect` a socket's state is unspecified, so every
/// retry starts over.
fn dial_once(cid: u32, port: u32) -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect_socket(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(fd)
}

/// The retry policy, separated from the syscalls so it can be tested: calls `dial` until it succeeds,
/// fails with an error that is not retryable, or has been tried [`DIAL_ATTEMPTS`] times. Returns the
/// attempt count with the last error.
///
/// `ETIMEDOUT` is retried as specified; `EINTR` is retried too, because an interrupted blocking
/// vsock connect resets the socket and reports nothing about the host.
fn dial_with_retry<T>(
    mut dial: impl FnMut() -> Result<T, Errno>,
    mut sleep: impl FnMut(Duration),
) -> Result<T, (u32, Errno)> {
    let mut attempt = 1;
    loop {
        match dial() {
            Ok(v) => return Ok(v),
            Err(Errno::ETIMEDOUT | Errno::EINTR) if attempt < DIAL_ATTEMPTS => {
                sleep(DIAL_RETRY_DELAY);
                attempt += 1;
            }
            Err(errno) => return Err((attempt, errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn run(script: &[Result<u8, Errno>]) -> (Result<u8, (u32, Errno)>, usize, Vec<Duration>) {
        let mut calls = 0;
        let mut sleeps = Vec::new();
        let out = dial_with_retry(
            || {
                calls += 1;
                script.get(calls - 1).copied().unwrap_or(Err(Errno::ETIMEDOUT))
            },
            |d| sleeps.push(d),
        );
        (out, calls, sleeps)
    }

    #[test]
    fn succeeds_first_time_without_sleeping() {
        let (out, calls, sleeps) = run(&[Ok(7)]);
        assert_eq!(out, Ok(7));
        assert_eq!(calls, 1);
        assert!(sleeps.is_empty());
    }

    #[test]
    fn retries_timeouts_then_succeeds() {
        let (out, calls, sleeps) = run(&[
            Err(Errno::ETIMEDOUT),
            Err(Errno::EINTR),
            Err(Errno::ETIMEDOUT),
            Ok(1),
        ]);
        assert_eq!(out, Ok(1));
        assert_eq!(calls, 4);
        assert_eq!(sleeps, vec![DIAL_RETRY_DELAY; 3]);
    }

    #[test]
    fn gives_up_after_ten_attempts() {
        let (out, calls, sleeps) = run(&[]);
        assert_eq!(out, Err((DIAL_ATTEMPTS, Errno::ETIMEDOUT)));
        assert_eq!(calls, 10);
        assert_eq!(sleeps.len(), 9, "no sleep after the last attempt");
    }

    #[test]
    fn other_errors_fail_at_once() {
        for errno in [
            Errno::ECONNREFUSED,
            Errno::ENODEV,
            Errno::EAFNOSUPPORT,
            Errno::ECONNRESET,
        ] {
            let (out, calls, sleeps) = run(&[Err(Errno::ETIMEDOUT), Err(errno), Ok(1)]);
            assert_eq!(out, Err((2, errno)));
            assert_eq!(calls, 2);
            assert_eq!(sleeps.len(), 1);
        }
    }

    #[test]
    fn dial_errors_keep_kind_context_and_errno() {
        let err = dial_error(DialError {
            cid: 2,
            port: 109,
            attempts: 10,
            errno: Errno::ETIMEDOUT,
        });
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            err.to_string(),
            "connect to vsock cid 2 port 109 (attempt 10 of 10)"
        );
        let dial = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<DialError>())
            .expect("a DialError");
        assert_eq!(dial.errno, Errno::ETIMEDOUT);
        let source = err.source().expect("errno is the source");
        assert_eq!(source.to_string(), Errno::ETIMEDOUT.to_string());
        let refused = dial_error(DialError {
            cid: 2,
            port: 1,
            attempts: 1,
            errno: Errno::ECONNREFUSED,
        });
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn ports_and_cid() {
        assert_eq!((HOST_CID, ENTROPY_PORT, LOG_PORT), (2, 1, 109));
        assert_eq!(
            (DIAL_ATTEMPTS, DIAL_RETRY_DELAY),
            (10, Duration::from_millis(100))
        );
    }
}
