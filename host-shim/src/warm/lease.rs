//! The lease: one connection to a warm UVM's `lease.sock`, held by one `rgcs run` for its
//! container's life.
//!
//! 1. client → server: one [`RunRequest`] line (the imported image, the process, volumes,
//!    network);
//! 2. server → client: one control [`crate::control::Answer`] line, the init's PID with its stdio passed as
//!    `SCM_RIGHTS` descriptors (as the control socket's `start`), or `ok:false` with the reason
//!    (and `exit_code` 126/127 when the program cannot be run);
//! 3. then [`ClientLine`]s (signal, resize, done) one way and [`ServerLine`]s (exited, removed)
//!    the other.
//!
//! The server kills and removes the container and powers the UVM off when the client says `done`
//! or its connection ends, whichever comes first: a client that dies leaves nothing behind.

use std::io::Cursor;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::{Pool, WarmPhase};
use crate::control::{read_answer, stdio_from_fds};
use crate::image::ImportedImage;
use crate::net::{NetworkMode, PortMap};
use crate::run::{print_mark, InitHandle, RunError, RunOptions, Volume};
use crate::session::BootOptions;
use rgcs_client::HostStdio;

/// The longest line either side reads.
pub(crate) const MAX_LINE: u64 = 8 << 20;

/// What the lease asks the warm UVM to run: [`RunOptions`] without what only the client needs
/// (the image's path, the cache, the boot options), with the imported image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// Container ID.
    pub id: String,
    /// The image, imported by the client (its layers are in the host's cache).
    pub image: ImportedImage,
    /// Replaces the image's entrypoint and cmd when not empty.
    pub command: Vec<String>,
    /// `K=V` entries after the image's.
    pub env: Vec<String>,
    /// A terminal.
    pub tty: bool,
    /// stdin attached.
    pub interactive: bool,
    /// Host directories shared in.
    pub volumes: Vec<Volume>,
    /// The network.
    pub network: NetworkMode,
    /// Published ports.
    pub ports: Vec<PortMap>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Scratch disk size, bytes.
    pub scratch_size: u64,
}

impl RunRequest {
    /// The request for `opts` with `image` as container `id`.
    pub fn new(opts: &RunOptions, image: &ImportedImage, id: &str) -> Self {
        Self {
            id: id.to_owned(),
            image: image.clone(),
            command: opts.command.clone(),
            env: opts.env.clone(),
            tty: opts.tty,
            interactive: opts.interactive,
            volumes: opts.volumes.clone(),
            network: opts.network.clone(),
            ports: opts.ports.clone(),
            dns: opts.dns.clone(),
            hostname: opts.hostname.clone(),
            scratch_size: opts.scratch_size,
        }
    }

    /// The run's options as the server applies them.
    pub fn options(&self, boot: BootOptions) -> RunOptions {
        RunOptions {
            image: std::path::PathBuf::new(),
            command: self.command.clone(),
            env: self.env.clone(),
            tty: self.tty,
            interactive: self.interactive,
            volumes: self.volumes.clone(),
            id: Some(self.id.clone()),
            cache_dir: std::path::PathBuf::new(),
            scratch_size: self.scratch_size,
            network: self.network.clone(),
            ports: self.ports.clone(),
            dns: self.dns.clone(),
            hostname: self.hostname.clone(),
            boot,
        }
    }
}

/// The client's lines after the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientLine {
    /// Signal the init (SIGKILL when `signal` is absent).
    Signal {
        /// The signal.
        signal: Option<i32>,
    },
    /// Resize the init's terminal.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// The client has the output: remove the container and power off.
    Done,
}

/// The server's lines after the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerLine {
    /// The init exited with `exit_code`, or waiting for it failed with `error`.
    Exited {
        /// Exit code.
        exit_code: Option<u32>,
        /// Why there is none.
        error: Option<String>,
    },
    /// The container is removed; the UVM powers off.
    Removed,
}

/// Writes `value` as one JSON line.
pub(crate) async fn write_line<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    w.write_all(&text).await
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes; `None` at the end of the stream.
pub(crate) async fn read_line<R, T>(r: &mut R) -> std::io::Result<Option<T>>
where
    R: tokio::io::AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut line = String::new();
    let n = r.take(MAX_LINE).read_line(&mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long or cut short",
        ));
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A leased warm UVM running the client's container.
#[derive(Debug)]
pub struct Lease {
    /// The warm UVM's name.
    pub name: String,
    /// The init's PID in the guest.
    pub pid: u32,
    writer: Mutex<OwnedWriteHalf>,
    exit: watch::Receiver<Option<Result<u32, String>>>,
    removed: watch::Receiver<bool>,
    reader: JoinHandle<()>,
}

/// How long [`Lease::finish`] waits for the server to remove the container.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`claim`] waits for a warm UVM of the pool that is still booting.
pub const BOOTING_WAIT: Duration = Duration::from_secs(60);

/// Leases a ready warm UVM of `pool` booted as `fingerprint` for `req`, oldest first; one that
/// is gone or taken meanwhile is skipped. When none is ready but one is booting with the same
/// options, it is waited for (at most [`BOOTING_WAIT`]): it started before this run and is ready
/// sooner than a UVM this run would boot. `Ok(None)` when there is none to have. An error when a
/// warm UVM took the lease but could not start the container: that is the container's failure
/// (a bad program, a bad volume), which a cold boot would meet too.
pub async fn claim(
    pool: &Pool,
    fingerprint: &str,
    req: &RunRequest,
) -> Result<Option<(Lease, HostStdio)>, RunError> {
    let deadline = tokio::time::Instant::now() + BOOTING_WAIT;
    loop {
        let mut booting = false;
        for entry in pool.entries() {
            let Some(record) = entry.record.as_ref() else {
                // A server that has not written its record yet: a few milliseconds.
                booting = true;
                continue;
            };
            if !entry.alive || record.fingerprint != fingerprint {
                continue;
            }
            match record.phase {
                WarmPhase::Booting => booting = true,
                WarmPhase::Ready => {}
                WarmPhase::Leased | WarmPhase::Failed => continue,
            }
            if record.phase != WarmPhase::Ready {
                continue;
            }
            match try_lease(&entry.dir.lease_socket(), req).await {
                Ok(Attempt::Leased(stream, answer, fds, rest)) => {
                    let marks = answer.data.as_ref().and_then(|d| d.get("marks")).cloned();
                    if let Some(Ok(marks)) = marks.map(serde_json::from_value::<Vec<(String, f64)>>) {
                        for (phase, ms) in marks {
                            print_mark(&phase, ms);
                        }
                    }
                    let stdio = stdio_from_fds(&answer, fds).map_err(|e| RunError::Warm(e.to_string()))?;
                    let pid = answer.pid.unwrap_or(0);
                    return Ok(Some((
                        Lease::new(entry.dir.name.clone(), pid, stream, rest),
                        stdio,
                    )));
                }
                Ok(Attempt::Refused(answer)) => {
                    let reason = answer.error.unwrap_or_else(|| "unknown error".into());
                    return Err(match answer.exit_code.and_then(|c| u8::try_from(c).ok()) {
                        Some(code @ (126 | 127)) => RunError::Program {
                            code,
                            message: reason,
                        },
                        _ => RunError::Warm(reason),
                    });
                }
                Err(e) => {
                    tracing::debug!(warm = %entry.dir.name, error = %e, "warm UVM not leased; trying the next");
                }
            }
        }
        if !booting || tokio::time::Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum Attempt {
    Leased(
        UnixStream,
        crate::control::Answer,
        Vec<std::os::fd::OwnedFd>,
        Vec<u8>,
    ),
    Refused(crate::control::Answer),
}

async fn try_lease(socket: &std::path::Path, req: &RunRequest) -> std::io::Result<Attempt> {
    let mut stream = UnixStream::connect(socket).await?;
    write_line(&mut stream, req).await?;
    let (answer, fds, rest) = read_answer(&stream).await?;
    Ok(if answer.ok {
        Attempt::Leased(stream, answer, fds, rest)
    } else {
        Attempt::Refused(answer)
    })
}

impl Lease {
    fn new(name: String, pid: u32, stream: UnixStream, rest: Vec<u8>) -> Self {
        let (read, write) = stream.into_split();
        let (exit_tx, exit) = watch::channel(None);
        let (removed_tx, removed) = watch::channel(false);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(Cursor::new(rest).chain(read));
            loop {
                match read_line::<_, ServerLine>(&mut lines).await {
                    Ok(Some(ServerLine::Exited { exit_code, error })) => {
                        let r = exit_code.ok_or_else(|| error.unwrap_or_else(|| "no exit code".into()));
                        let _ = exit_tx.send(Some(r));
                    }
                    Ok(Some(ServerLine::Removed)) => {
                        let _ = removed_tx.send(true);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad line from the warm UVM's server");
                        break;
                    }
                }
            }
        });
        Self {
            name,
            pid,
            writer: Mutex::new(write),
            exit,
            removed,
            reader,
        }
    }

    async fn send(&self, line: &ClientLine) -> Result<(), RunError> {
        let mut w = self.writer.lock().await;
        write_line(&mut *w, line)
            .await
            .map_err(|e| RunError::Warm(format!("the warm UVM's server: {e}")))
    }

    /// Says `done` and waits (at most [`REMOVE_TIMEOUT`]) until the server has removed the
    /// container; the UVM then powers off on its own.
    pub async fn finish(self) -> Result<(), RunError> {
        self.send(&ClientLine::Done).await?;
        let mut removed = self.removed.clone();
        let r = tokio::time::timeout(REMOVE_TIMEOUT, removed.wait_for(|r| *r)).await;
        self.reader.abort();
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RunError::Warm(
                "the warm UVM's server ended before it had removed the container".into(),
            )),
            Err(_) => Err(RunError::Warm(format!(
                "the warm UVM did not remove the container within {REMOVE_TIMEOUT:?}"
            ))),
        }
    }
}

impl InitHandle for Lease {
    async fn wait(&self) -> Result<u32, RunError> {
        let mut exit = self.exit.clone();
        let got = exit.wait_for(Option::is_some).await.map(|v| v.clone());
        match got {
            Ok(Some(Ok(code))) => Ok(code),
            Ok(Some(Err(e))) => Err(RunError::Warm(e)),
            Ok(None) | Err(_) => Err(RunError::Warm(
                "the warm UVM's server went away before the container exited".into(),
            )),
        }
    }

    async fn signal(&self, signal: Option<i32>) -> Result<(), RunError> {
        self.send(&ClientLine::Signal { signal }).await
    }

    async fn resize(&self, rows: u16, cols: u16) {
        let _ = self.send(&ClientLine::Resize { rows, cols }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_typed_and_bounded() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut b = BufReader::new(b);
        write_line(&mut a, &ClientLine::Resize { rows: 24, cols: 80 })
            .await
            .unwrap();
        write_line(&mut a, &ClientLine::Signal { signal: None })
            .await
            .unwrap();
        assert_eq!(
            read_line::<_, ClientLine>(&mut b).await.unwrap(),
            Some(ClientLine::Resize { rows: 24, cols: 80 })
        );
        assert_eq!(
            read_line::<_, ClientLine>(&mut b).await.unwrap(),
            Some(ClientLine::Signal { signal: None })
        );
        // Not a client line.
        a.write_all(b"{\"op\":\"reboot\"}\n").await.unwrap();
        assert!(read_line::<_, ClientLine>(&mut b).await.is_err());
        // A line longer than the bound is refused, not buffered whole.
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..((MAX_LINE >> 16) + 1) {
                if a.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let err = read_line::<_, ClientLine>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        drop(b);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_answer_keeps_what_follows_it() {
        let (mut server, client) = UnixStream::pair().unwrap();
        let mut text = serde_json::to_vec(&crate::control::Answer {
            pid: Some(7),
            ..crate::control::Answer::ok()
        })
        .unwrap();
        text.push(b'\n');
        text.extend_from_slice(b"{\"op\":\"removed\"}\n");
        server.write_all(&text).await.unwrap();
        let (answer, fds, rest) = read_answer(&client).await.unwrap();
        assert_eq!((answer.pid, fds.len()), (Some(7), 0));
        let mut rest = BufReader::new(Cursor::new(rest));
        assert_eq!(
            read_line::<_, ServerLine>(&mut rest).await.unwrap(),
            Some(ServerLine::Removed)
        );
    }
}
