//! The host ends of a guest process's stdio (GCS-PROTOCOL §1.3, §6.9) and relays for them.
//!
//! Rules from the vhost-device-vsock backend (uvm REPORT §9): a guest half-close does not reach
//! the host, so the host keeps reading stdout and stderr until the guest *closes* them; the host
//! ends stdin with `shutdown(SHUT_WR)` (the guest reads EOF; its next write on that socket would
//! fail with `EPIPE`, which is fine since stdin is only written by the host).
//!
//! * [`HostStdio::capture`]: write a buffer to stdin, collect stdout and stderr (tests, benches).
//! * [`relay_terminal`]: the CLI's relay between the local terminal and the process, with raw
//!   mode for `-t` (restored on every exit path by a guard) and `SIGWINCH` forwarded.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

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
    /// The terminal could not be set up.
    #[error("cannot configure the local terminal")]
    Terminal(#[source] io::Error),
}

/// Reads `r` to EOF (a reset counts as EOF: the guest's close may arrive as one).
async fn read_all<R: AsyncRead + Unpin>(r: &mut R, stream: &'static str) -> Result<Vec<u8>, StdioError> {
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

/// Puts a terminal in raw mode and restores it when dropped.
#[derive(Debug)]
pub struct RawModeGuard {
    fd: i32,
    saved: nix::sys::termios::Termios,
}

impl RawModeGuard {
    /// Raw mode on `fd` (a terminal).
    pub fn new(fd: BorrowedFd<'_>) -> Result<Self, StdioError> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(fd).map_err(|e| StdioError::Terminal(e.into()))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|e| StdioError::Terminal(e.into()))?;
        Ok(Self {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: the fd is the process's stdin, which stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal on `fd` as (rows, cols), if it is one.
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointed-to, properly sized struct.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false)
}

/// Local stdin, read on a detached thread (a blocked read must not keep the process alive).
fn local_stdin() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let r = match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Ok(Vec::new()));
                    return;
                }
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let stop = r.is_err();
            if tx.blocking_send(r).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Copies a socket to a local output (stdout or stderr), flushing after each chunk.
async fn drain_to(mut s: UnixStream, mut out: impl Write, stream: &'static str) -> Result<(), StdioError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
                ) =>
            {
                return Ok(())
            }
            Err(source) => return Err(StdioError::Io { stream, source }),
        };
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(|source| StdioError::Io { stream, source })?;
    }
}

/// Relays the local terminal (or pipes) and a process's stdio until the process's outputs end
/// and `exited` resolves. With `tty`, the local stdin (if a terminal) is put in raw mode for the
/// duration, and every `SIGWINCH` calls `resize(rows, cols)` (also called once at the start).
/// After `exited`, output still buffered is drained for at most `drain` (a guest half-close
/// never reaches the host, REPORT §9).
pub async fn relay_terminal<E, R, RF>(
    stdio: HostStdio,
    tty: bool,
    exited: E,
    mut resize: R,
    drain: Duration,
) -> Result<E::Output, StdioError>
where
    E: std::future::Future,
    R: FnMut(u16, u16) -> RF,
    RF: std::future::Future<Output = ()>,
{
    let stdin_fd = io::stdin();
    let _raw = if tty && is_terminal(stdin_fd.as_fd()) {
        Some(RawModeGuard::new(stdin_fd.as_fd())?)
    } else {
        None
    };
    if tty {
        if let Some((rows, cols)) =
            terminal_size(io::stdout().as_fd()).or_else(|| terminal_size(stdin_fd.as_fd()))
        {
            resize(rows, cols).await;
        }
    }
    let HostStdio {
        stdin,
        stdout,
        stderr,
    } = stdio;
    let stdin_task = stdin.map(|mut sock| {
        tokio::spawn(async move {
            let mut rx = local_stdin();
            while let Some(chunk) = rx.recv().await {
                match chunk {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => {
                        if sock.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = sock.shutdown().await;
            // Hold the socket until aborted: the guest may still be reading.
            std::future::pending::<()>().await;
        })
    });
    let outputs = async {
        let out = async {
            match stdout {
                Some(s) => drain_to(s, io::stdout(), "stdout").await,
                None => Ok(()),
            }
        };
        let err = async {
            match stderr {
                Some(s) => drain_to(s, io::stderr(), "stderr").await,
                None => Ok(()),
            }
        };
        let (a, b) = tokio::join!(out, err);
        a.and(b)
    };
    tokio::pin!(outputs);
    tokio::pin!(exited);
    let mut winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut outputs_done: Option<Result<(), StdioError>> = None;
    let result = loop {
        tokio::select! {
            r = &mut outputs, if outputs_done.is_none() => { outputs_done = Some(r); }
            v = &mut exited => break v,
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Some((rows, cols)) = terminal_size(io::stdout().as_fd()).or_else(|| terminal_size(io::stdin().as_fd())) {
                    resize(rows, cols).await;
                }
            }
        }
    };
    if outputs_done.is_none() {
        if let Ok(r) = tokio::time::timeout(drain, &mut outputs).await {
            outputs_done = Some(r);
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    if let Some(Err(e)) = outputs_done {
        tracing::debug!(error = %e, "output relay ended with an error");
    }
    Ok(result)
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
