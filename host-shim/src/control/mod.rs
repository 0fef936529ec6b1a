//! The local control socket of a served UVM (`rgcs uvm boot --serve-dir DIR`).
//!
//! The bridge has one client, the process that booted the UVM; other `rgcs` invocations reach it
//! through `DIR/control.sock`. Each connection carries one request: a JSON object on one line. The
//! answer is one JSON line, `{"ok":true,...}` or `{"ok":false,"error":"..."}`. For `start` and
//! `exec` the process's stdio sockets (the accepted guest vsock connections) travel with the
//! answer as `SCM_RIGHTS` file descriptors, in the order stdin, stdout, stderr (those named in
//! `"stdio"`), so the CLI relays them itself and the server holds no stdio.
//!
//! The server issues one `WaitForProcess` per process it starts (hcsshim does the same; the
//! container's notification depends on it) and keeps the exit code for `wait` requests.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgcs_client::spec::{exec_process, init_process, ContainerSpec, Pipes, ProcessSpec, UserSpec};
use rgcs_client::stdio::HostStdio;
use rgcs_client::uvm::{prepare_busybox_rootfs, BUSYBOX_ROOTFS};
use rgcs_client::{ContainerClient, ShutdownKind};
use rgcs_protocol::error_chain;
use rgcs_protocol::message::PropertyType;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Writes `answer` as one JSON line with `fds` passed along (`SCM_RIGHTS`) on its first bytes.
pub(crate) async fn write_answer(
    stream: &mut UnixStream,
    answer: &Answer,
    fds: Vec<OwnedFd>,
) -> io::Result<()> {
    let mut text = serde_json::to_vec(answer).map_err(io::Error::other)?;
    text.push(b'\n');
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let sent = loop {
        stream.writable().await?;
        let r = stream.try_io(Interest::WRITABLE, || {
            crate::sys::scm::send_with_fds(stream.as_fd(), &text, &borrowed)
        });
        match r {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    stream.write_all(&text[sent..]).await?;
    drop(fds);
    Ok(())
}

/// Reads one answer line and the descriptors passed with it. Bytes the peer sent after the line
/// are returned too (the next lines of a conversation).
pub(crate) async fn read_answer(stream: &UnixStream) -> io::Result<(Answer, Vec<OwnedFd>, Vec<u8>)> {
    let mut got = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = got.iter().position(|&b| b == b'\n') {
            break i;
        }
        if got.len() > MAX_ANSWER {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer too long"));
        }
        stream.readable().await?;
        let r = stream.try_io(Interest::READABLE, || {
            crate::sys::scm::recv_with_fds(stream.as_fd(), &mut buf)
        });
        match r {
            Ok((0, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed without answering",
                ))
            }
            Ok((n, got_fds)) => {
                fds.extend(got_fds);
                got.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let rest = got.split_off(end + 1);
    let answer = serde_json::from_slice(&got).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((answer, fds, rest))
}

/// The longest answer line read.
const MAX_ANSWER: usize = 1 << 20;

/// A `start`/`exec` answer: the PID, and the process's stdio as descriptors (in the order stdin,
/// stdout, stderr; `"stdio"` says which are present).
pub(crate) fn stdio_answer(pid: u32, tty: bool, stdio: HostStdio) -> Result<(Answer, Vec<OwnedFd>), String> {
    let mut fds = Vec::new();
    let mut which = [false; 3];
    for (i, s) in [stdio.stdin, stdio.stdout, stdio.stderr].into_iter().enumerate() {
        if let Some(s) = s {
            let std = s.into_std().map_err(|e| e.to_string())?;
            fds.push(OwnedFd::from(std));
            which[i] = true;
        }
    }
    Ok((
        Answer {
            pid: Some(pid),
            tty,
            stdio: Some(which),
            ..Answer::ok()
        },
        fds,
    ))
}

/// The control socket's file name inside the serve directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be bound.
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    /// The server could not be reached.
    #[error("cannot reach the served uvm at {path} (is `rgcs uvm boot --serve-dir` running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The exchange failed.
    #[error("control socket {0}")]
    Io(PathBuf, #[source] io::Error),
    /// The answer was not understood.
    #[error("bad answer from the control socket: {0}")]
    BadAnswer(String),
    /// The server reported an error.
    #[error("{0}")]
    Remote(String),
}

/// A process description in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessArgs {
    /// argv.
    pub args: Vec<String>,
    /// `K=V` entries.
    pub env: Vec<String>,
    /// `uid[:gid]` or a name.
    pub user: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Allocate a pty.
    pub tty: bool,
    /// Attach stdin.
    pub stdin: bool,
    /// Initial pty size `[rows, cols]` (the OCI `consoleSize`), so the process never sees 0×0.
    pub console_size: Option<[u16; 2]>,
}

impl ProcessArgs {
    fn to_spec(&self) -> Result<ProcessSpec, String> {
        let mut p = ProcessSpec::new(self.args.clone()).tty(self.tty);
        for e in &self.env {
            p = p.env_entry(e).map_err(|e| e.to_string())?;
        }
        if let Some(u) = &self.user {
            p = p.user(UserSpec::parse(u).map_err(|e| e.to_string())?);
        }
        if let Some(c) = &self.cwd {
            p = p.cwd(c.clone());
        }
        if self.tty {
            p.console_size = self.console_size.map(|[h, w]| (h, w));
        }
        Ok(p)
    }
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container (Create + Start).
    Create {
        /// ID.
        id: String,
        /// Root filesystem in the UVM; the busybox one when absent.
        rootfs: Option<String>,
        /// The init process.
        process: ProcessArgs,
        /// Memory limit, MiB.
        memory_mib: Option<u64>,
    },
    /// Start the init process (ExecuteProcess without `OciProcess`).
    Start {
        /// ID.
        id: String,
        /// Attach stdin.
        stdin: bool,
    },
    /// Exec a process.
    Exec {
        /// ID.
        id: String,
        /// The process.
        process: ProcessArgs,
    },
    /// Wait for a process the server started.
    Wait {
        /// ID.
        id: String,
        /// PID.
        pid: u32,
    },
    /// Resize a pty.
    Resize {
        /// ID.
        id: String,
        /// PID.
        pid: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Signal a process (the init when `pid` is absent); SIGKILL when `signal` is absent.
    Kill {
        /// ID.
        id: String,
        /// PID.
        pid: Option<u32>,
        /// Signal number.
        signal: Option<i32>,
    },
    /// ProcessList.
    Ps {
        /// ID.
        id: String,
    },
    /// Statistics.
    Stats {
        /// ID.
        id: String,
    },
    /// DeleteContainerState (after a forced shutdown with `force`).
    Rm {
        /// ID.
        id: String,
        /// Kill a running init first.
        force: bool,
    },
    /// DumpStacks.
    Stacks,
}

/// A control answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answer {
    /// Success.
    pub ok: bool,
    /// Error text when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A process ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Whether the process has a pty.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Which stdio fds follow: `[stdin, stdout, stderr]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdio: Option<[bool; 3]>,
    /// An exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    /// Other data (process list, statistics, stacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }
    pub fn err(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Self::default()
        }
    }
}

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{request, request_async, stdio_from_fds};
pub use server::{ControlServer, Extension, Handled};
