//! The CLI's relay between the local terminal and a guest process ([`relay_terminal`]): raw
//! mode for `-t` (restored on every exit path by a guard), `SIGWINCH` forwarded as a resize, and a
//! bounded drain after exit (a guest half-close never reaches the host, docs/uvm-notes.md §9).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use rgcs_client::stdio::HostStdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::sys::term::{is_terminal, terminal_size, RawModeGuard};

/// Errors of the terminal relay.
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
/// never reaches the host, docs/uvm-notes.md §9).
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
        Some(RawModeGuard::new(stdin_fd.as_fd()).map_err(StdioError::Terminal)?)
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
