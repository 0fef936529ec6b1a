//! A process's stdio between containerd's FIFOs and the guest's vsock streams.
//!
//! containerd (and CRI) create the FIFOs before Create or Exec and open their own ends
//! asynchronously: stdin for writing, stdout and stderr for reading. The shim's ends follow
//! containerd's own shims:
//! * stdout/stderr are opened read-write: the open never blocks, and the shim holding a reader
//!   means a write never fails with `EPIPE` while containerd's reader is not there yet. The end is
//!   closed when the guest closes the stream, which is how containerd sees EOF;
//! * stdin is opened for reading, and a second, write-only "keeper" end is held so that the
//!   reader does not see EOF merely because the client has not opened (or has reopened) its end.
//!   `CloseIO` drops the keeper: the process then gets EOF once the client's writer is closed.
//! * in terminal mode the pty's output arrives on stdout only; the stderr FIFO is not opened.
//!
//! `file://PATH` (ctr's `--log-uri`) appends to a file instead; `binary://` loggers are refused.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rgcs_client::{HostStdio, Pipes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::{AbortHandle, JoinHandle};

/// Where a process's stdio goes, as containerd named it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO or `file://` ("" = discarded).
    pub stdout: String,
    /// stderr FIFO or `file://` ("" = discarded).
    pub stderr: String,
    /// A pty: output on stdout only.
    pub terminal: bool,
}

enum Target {
    Fifo(PathBuf),
    File(PathBuf),
}

fn target(uri: &str) -> io::Result<Option<Target>> {
    if uri.is_empty() {
        return Ok(None);
    }
    let (scheme, path) = match uri.split_once("://") {
        Some((s, p)) => (s, p),
        None => ("fifo", uri),
    };
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stdio {uri:?} is not an absolute path"),
        ));
    }
    match scheme {
        "fifo" => Ok(Some(Target::Fifo(path.into()))),
        "file" => Ok(Some(Target::File(path.into()))),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("stdio {uri:?}: only FIFOs and file:// are supported (no logging binaries)"),
        )),
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

fn open_output(uri: &str) -> io::Result<Option<Writer>> {
    Ok(match target(uri)? {
        None => None,
        Some(Target::Fifo(p)) => Some(Box::new(
            pipe::OpenOptions::new().read_write(true).open_sender(&p)?,
        )),
        Some(Target::File(p)) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&p)?;
            Some(Box::new(tokio::fs::File::from_std(f)))
        }
    })
}

/// The FIFOs of one process, opened before the guest process exists.
pub struct Opened {
    stdin: Option<(pipe::Receiver, File)>,
    stdout: Option<Writer>,
    stderr: Option<Writer>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

impl Opened {
    /// Opens what `paths` names (must run inside the tokio runtime).
    pub fn open(paths: &StdioPaths) -> io::Result<Self> {
        let stdin = match target(&paths.stdin)? {
            None => None,
            Some(Target::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "stdin cannot be a file:// URI",
                ))
            }
            Some(Target::Fifo(p)) => {
                let reader = pipe::OpenOptions::new().open_receiver(&p)?;
                let keeper = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)?;
                Some((reader, keeper))
            }
        };
        let stdout = open_output(&paths.stdout)?;
        let stderr = if paths.terminal {
            None
        } else {
            open_output(&paths.stderr)?
        };
        Ok(Self {
            stdin,
            stdout,
            stderr,
        })
    }

    /// The guest pipes these FIFOs need.
    pub fn pipes(&self) -> Pipes {
        Pipes {
            stdin: self.stdin.is_some(),
            stdout: self.stdout.is_some(),
            stderr: self.stderr.is_some(),
        }
    }

    /// Starts copying between the FIFOs and the guest's streams.
    pub fn wire(self, host: HostStdio) -> Wired {
        let mut keeper = None;
        let stdin = match (self.stdin, host.stdin) {
            (Some((mut reader, k)), Some(mut guest)) => {
                keeper = Some(k);
                Some(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut reader, &mut guest).await;
                    let _ = guest.shutdown().await;
                }))
            }
            _ => None,
        };
        let out: Vec<JoinHandle<()>> = [(host.stdout, self.stdout), (host.stderr, self.stderr)]
            .into_iter()
            .filter_map(|(from, to)| Some(tokio::spawn(pump(from?, to?))))
            .collect();
        Wired {
            keeper: Mutex::new(keeper),
            aborts: out
                .iter()
                .map(JoinHandle::abort_handle)
                .chain(stdin.iter().map(JoinHandle::abort_handle))
                .collect(),
            out,
        }
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: Writer) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        tracing::debug!(error = %e, "stdio copy ended");
    }
    let _ = to.flush().await;
}

/// A running process's copiers.
#[derive(Debug)]
pub struct Wired {
    keeper: Mutex<Option<File>>,
    aborts: Vec<AbortHandle>,
    out: Vec<JoinHandle<()>>,
}

impl Wired {
    /// `CloseIO`: lets stdin end once the client closes its end.
    pub fn close_stdin(&self) {
        self.keeper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Waits (at most `limit`) for stdout and stderr to be copied to the end: the guest closes
    /// them when the process and everything that inherited them have exited.
    pub async fn drain(&mut self, limit: Duration) {
        let tasks = std::mem::take(&mut self.out);
        let all = async move {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::debug!("output still open {limit:?} after the exit (a child holds it)");
        }
    }

    /// Stops every copier (the process is deleted).
    pub fn stop(&mut self) {
        self.close_stdin();
        for a in &self.aborts {
            a.abort();
        }
    }
}

impl Drop for Wired {
    fn drop(&mut self) {
        self.stop();
    }
}
