//! The host ends of a guest process's stdio (§1.3, §6.9), and capturing them.
//!
//! Rules from the vhost-device-vsock backend (docs/uvm-notes.md §9): a guest half-close does not
//! reach the host, so the host keeps reading stdout and stderr until the guest *closes* them; the
//! host ends stdin with `shutdown(SHUT_WR)` (the guest reads EOF; its next write on that socket
//! would fail with `EPIPE`, which is fine since stdin is only written by the host).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The host ends of a process's pipes; `None` for a pipe that was not requested.
#[derive(Debug, Default)]
pub struct HostStdio {
    /// stdin (host writes).
    pub stdin: Option<UnixStream>,
    /// stdout (host reads).
    pub stdout: Option<UnixStream>,
    /// stderr (host reads).
    pub stderr: Option<UnixStream>,
}

/// What a process wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    /// stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr bytes.
    pub stderr: Vec<u8>,
}

impl Captured {
    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Errors of stdio relays.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A socket read or write failed.
    #[error("process {stream} relay failed")]
    Io {
        /// `stdin`, `stdout` or `stderr`.
        stream: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Reads `r` to EOF (a reset counts as EOF: the guest's close may arrive as one).
pub async fn read_all<R: AsyncRead + Unpin>(r: &mut R, stream: &'static str) -> Result<Vec<u8>, StdioError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
                ) =>
            {
                return Ok(out)
            }
            Err(source) => return Err(StdioError::Io { stream, source }),
        }
    }
}

impl HostStdio {
    /// Writes `input` to stdin (if it was requested) then ends it with `shutdown(Write)`, while
    /// reading stdout and stderr to EOF. Ends when both outputs reached EOF.
    pub async fn capture(self, input: &[u8]) -> Result<Captured, StdioError> {
        let Self {
            stdin,
            stdout,
            stderr,
        } = self;
        let feed = async move {
            if let Some(mut s) = stdin {
                if let Err(source) = s.write_all(input).await {
                    // The process may exit without reading its input.
                    if source.kind() != io::ErrorKind::BrokenPipe {
                        return Err(StdioError::Io {
                            stream: "stdin",
                            source,
                        });
                    }
                }
                let _ = s.shutdown().await;
                // Keep the socket open until the outputs end: closing it early is harmless on
                // Hyper-V but races the guest's reads here.
                return Ok(Some(s));
            }
            Ok(None)
        };
        let out = async move {
            match stdout {
                Some(mut s) => read_all(&mut s, "stdout").await,
                None => Ok(Vec::new()),
            }
        };
        let err = async move {
            match stderr {
                Some(mut s) => read_all(&mut s, "stderr").await,
                None => Ok(Vec::new()),
            }
        };
        let (kept, stdout, stderr) = tokio::join!(feed, out, err);
        drop(kept?);
        Ok(Captured {
            stdout: stdout?,
            stderr: stderr?,
        })
    }

    /// Like [`HostStdio::capture`], but gives up reading after `limit` (returns what arrived).
    pub async fn capture_for(self, input: &[u8], limit: Duration) -> Result<Option<Captured>, StdioError> {
        match tokio::time::timeout(limit, self.capture(input)).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn capture_feeds_stdin_and_reads_outputs() {
        let (host_in, mut guest_in) = UnixStream::pair().unwrap();
        let (host_out, mut guest_out) = UnixStream::pair().unwrap();
        let (host_err, guest_err) = UnixStream::pair().unwrap();
        // A fake `cat`: echoes stdin to stdout until EOF, then closes both outputs.
        let guest = tokio::spawn(async move {
            let mut buf = Vec::new();
            guest_in.read_to_end(&mut buf).await.unwrap();
            guest_out.write_all(&buf).await.unwrap();
            drop(guest_out);
            drop(guest_err);
        });
        let stdio = HostStdio {
            stdin: Some(host_in),
            stdout: Some(host_out),
            stderr: Some(host_err),
        };
        let c = stdio.capture(b"hello\n").await.unwrap();
        assert_eq!(c.stdout_text(), "hello\n");
        assert!(c.stderr.is_empty());
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn capture_for_gives_up() {
        let (host_out, _guest_out) = UnixStream::pair().unwrap();
        let stdio = HostStdio {
            stdout: Some(host_out),
            ..HostStdio::default()
        };
        let r = stdio.capture_for(b"", Duration::from_millis(50)).await.unwrap();
        assert!(r.is_none());
    }
}
