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
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use rgcs_protocol::message::PropertyType;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::client::{ContainerClient, ShutdownKind};
use super::spec::{exec_process, init_process, ContainerSpec, Pipes, ProcessSpec, UserSpec};
use super::uvm::{prepare_busybox_rootfs, BUSYBOX_ROOTFS};
use crate::stdio::HostStdio;

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
    fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }
    fn err(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Self::default()
        }
    }
}

/// Renders an error and its sources on one line (`a: b: c`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

type Exit = Option<Result<u32, String>>;

#[derive(Debug, Default)]
struct ServerState {
    /// Container → (init PID once started, init has a tty).
    containers: HashMap<String, (Option<u32>, bool)>,
    /// (container, PID) → exit code once known.
    exits: HashMap<(String, u32), watch::Receiver<Exit>>,
    /// Whether the busybox rootfs exists.
    rootfs_ready: bool,
}

/// The control server of one UVM.
#[derive(Debug)]
pub struct ControlServer {
    client: Arc<ContainerClient>,
    state: Arc<Mutex<ServerState>>,
    socket: PathBuf,
}

impl ControlServer {
    /// A server for `client`, listening at `dir/control.sock`.
    pub fn new(client: Arc<ContainerClient>, dir: &Path) -> Self {
        Self {
            client,
            state: Arc::new(Mutex::new(ServerState::default())),
            socket: dir.join(CONTROL_SOCKET),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until the task is dropped; removes the socket file then.
    pub async fn serve(self: Arc<Self>) -> Result<(), ControlError> {
        let _ = std::fs::remove_file(&self.socket);
        let listener =
            UnixListener::bind(&self.socket).map_err(|e| ControlError::Bind(self.socket.clone(), e))?;
        struct Unlink(PathBuf);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _unlink = Unlink(self.socket.clone());
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| ControlError::Io(self.socket.clone(), e))?;
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::debug!(error = %chain(&e), "control connection failed");
                }
            });
        }
    }

    async fn connection(&self, stream: UnixStream) -> Result<(), ControlError> {
        let io_err = |e| ControlError::Io(self.socket.clone(), e);
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(io_err)?;
        let mut stream = reader.into_inner();
        let (answer, fds) = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::debug!(request = ?req, "control request");
                self.handle(req).await
            }
            Err(e) => (Answer::err(format!("bad request: {e}")), Vec::new()),
        };
        let mut text = serde_json::to_vec(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
        text.push(b'\n');
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let sent = loop {
            stream.writable().await.map_err(io_err)?;
            let r = stream.try_io(Interest::WRITABLE, || {
                let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
                    Vec::new()
                } else {
                    vec![ControlMessage::ScmRights(&raw)]
                };
                sendmsg::<UnixAddr>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&text)],
                    &cmsgs,
                    MsgFlags::empty(),
                    None,
                )
                .map_err(io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err(e)),
            }
        };
        stream.write_all(&text[sent..]).await.map_err(io_err)?;
        drop(fds);
        Ok(())
    }

    async fn handle(&self, req: Request) -> (Answer, Vec<OwnedFd>) {
        match self.handle_inner(req).await {
            Ok(r) => r,
            Err(e) => (Answer::err(e), Vec::new()),
        }
    }

    fn track(&self, id: &str, pid: u32) {
        let (tx, rx) = watch::channel(None);
        if let Ok(mut s) = self.state.lock() {
            s.exits.insert((id.to_owned(), pid), rx);
        }
        let client = Arc::clone(&self.client);
        let id = id.to_owned();
        tokio::spawn(async move {
            let r = client
                .wait_for_process(&id, pid, None)
                .await
                .map_err(|e| chain(&e));
            let _ = tx.send(Some(r));
        });
    }

    fn stdio_answer(pid: u32, tty: bool, stdio: HostStdio) -> Result<(Answer, Vec<OwnedFd>), String> {
        let mut fds = Vec::new();
        let mut which = [false; 3];
        for (i, s) in [stdio.stdin, stdio.stdout, stdio.stderr].into_iter().enumerate() {
            if let Some(s) = s {
                let std = s.into_std().map_err(|e| e.to_string())?;
                // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor.
                fds.push(unsafe { OwnedFd::from_raw_fd(std.into_raw_fd()) });
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

    async fn handle_inner(&self, req: Request) -> Result<(Answer, Vec<OwnedFd>), String> {
        let c = &self.client;
        let e = |e: super::ContainerError| chain(&e);
        match req {
            Request::Create {
                id,
                rootfs,
                process,
                memory_mib,
            } => {
                let rootfs = match rootfs {
                    Some(r) => r,
                    None => {
                        let ready = self.state.lock().map(|s| s.rootfs_ready).unwrap_or(false);
                        if !ready {
                            prepare_busybox_rootfs(c, BUSYBOX_ROOTFS)
                                .await
                                .map_err(|e| format!("cannot prepare the busybox rootfs: {}", chain(&e)))?;
                            if let Ok(mut s) = self.state.lock() {
                                s.rootfs_ready = true;
                            }
                        }
                        BUSYBOX_ROOTFS.to_owned()
                    }
                };
                let mut spec = ContainerSpec::new(id.clone(), rootfs, process.to_spec()?);
                if let Some(mib) = memory_mib {
                    spec = spec.memory_limit(mib << 20);
                }
                let config = spec.config().map_err(|e| e.to_string())?;
                c.create_container(&id, config).await.map_err(e)?;
                c.start(&id).await.map_err(e)?;
                if let Ok(mut s) = self.state.lock() {
                    s.containers.insert(id, (None, process.tty));
                }
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Start { id, stdin } => {
                let tty = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.containers.get(&id).map(|c| c.1))
                    .unwrap_or(false);
                let pipes = Pipes {
                    stdin,
                    stdout: true,
                    stderr: !tty,
                };
                let (pid, stdio) = c.execute_process(&id, init_process(pipes)).await.map_err(e)?;
                self.track(&id, pid);
                if let Ok(mut s) = self.state.lock() {
                    s.containers.entry(id).or_insert((None, tty)).0 = Some(pid);
                }
                Self::stdio_answer(pid, tty, stdio)
            }
            Request::Exec { id, process } => {
                let spec = process.to_spec()?;
                let pipes = Pipes {
                    stdin: process.stdin,
                    stdout: true,
                    stderr: true,
                };
                let (pid, stdio) = c
                    .execute_process(&id, exec_process(&spec, pipes))
                    .await
                    .map_err(e)?;
                self.track(&id, pid);
                Self::stdio_answer(pid, process.tty, stdio)
            }
            Request::Wait { id, pid } => {
                let rx = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.exits.get(&(id.clone(), pid)).cloned());
                let code = match rx {
                    Some(mut rx) => {
                        let v = rx
                            .wait_for(Option::is_some)
                            .await
                            .map_err(|_| "the waiter stopped".to_owned())?
                            .clone();
                        v.unwrap_or_else(|| Err("no exit code".into()))?
                    }
                    None => c.wait_for_process(&id, pid, None).await.map_err(e)?,
                };
                Ok((
                    Answer {
                        exit_code: Some(code),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Resize { id, pid, rows, cols } => {
                c.resize_console(&id, pid, rows, cols).await.map_err(e)?;
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Kill { id, pid, signal } => {
                let pid = match pid {
                    Some(p) => p,
                    None => self
                        .state
                        .lock()
                        .ok()
                        .and_then(|s| s.containers.get(&id).and_then(|c| c.0))
                        .ok_or_else(|| {
                            format!(
                                "container {id} has no started init process known to this server; give a PID"
                            )
                        })?,
                };
                c.signal_process(&id, pid, signal).await.map_err(e)?;
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Ps { id } => {
                let p = c
                    .get_properties(&id, &[PropertyType::ProcessList])
                    .await
                    .map_err(e)?;
                let pids: Vec<u32> = p.process_list.iter().map(|d| d.process_id).collect();
                Ok((
                    Answer {
                        data: Some(serde_json::json!(pids)),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Stats { id } => {
                let p = c
                    .get_properties(&id, &[PropertyType::Statistics])
                    .await
                    .map_err(e)?;
                let data = serde_json::to_value(&p.lcow_metrics).map_err(|e| e.to_string())?;
                Ok((
                    Answer {
                        data: Some(data),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Rm { id, force } => {
                let init = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.containers.get(&id).and_then(|c| c.0));
                if force {
                    if let Err(err) = c.shutdown_container(&id, ShutdownKind::Forced).await {
                        tracing::debug!(error = %chain(&err), "forced shutdown before rm");
                    }
                    let rx =
                        init.and_then(|pid| self.state.lock().ok()?.exits.get(&(id.clone(), pid)).cloned());
                    if let Some(mut rx) = rx {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some)).await;
                    }
                }
                c.delete_container_state(&id).await.map_err(e)?;
                if let Ok(mut s) = self.state.lock() {
                    s.containers.remove(&id);
                    s.exits.retain(|(cid, _), _| *cid != id);
                }
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Stacks => {
                let s = c.dump_stacks().await.map_err(e)?;
                Ok((
                    Answer {
                        data: Some(serde_json::Value::String(s)),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
        }
    }
}

/// Sends one request to the server in `dir` and returns its answer and any passed descriptors.
/// Blocking: call it from a blocking context (or `spawn_blocking`).
pub fn request(dir: &Path, req: &Request) -> Result<(Answer, Vec<OwnedFd>), ControlError> {
    let path = dir.join(CONTROL_SOCKET);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ControlError::Connect {
            path: path.clone(),
            source,
        })?;
    let io_err = |e| ControlError::Io(path.clone(), e);
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut got = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !got.ends_with(b"\n") {
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err(e.into()))?;
        for c in msg.cmsgs().map_err(|e| io_err(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS hands this process new descriptors that nothing else owns.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(ControlError::BadAnswer(
                "the server closed without answering".into(),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let answer: Answer = serde_json::from_slice(&got).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    if !answer.ok {
        return Err(ControlError::Remote(
            answer.error.unwrap_or_else(|| "unknown error".into()),
        ));
    }
    Ok((answer, fds))
}

/// [`request`] from async code.
pub async fn request_async(dir: &Path, req: Request) -> Result<(Answer, Vec<OwnedFd>), ControlError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || request(&dir, &req))
        .await
        .map_err(|e| ControlError::BadAnswer(format!("request task failed: {e}")))?
}

/// Turns the descriptors of a `start`/`exec` answer back into [`HostStdio`]. Needs a runtime.
pub fn stdio_from_fds(answer: &Answer, fds: Vec<OwnedFd>) -> Result<HostStdio, ControlError> {
    let which = answer.stdio.unwrap_or([false; 3]);
    let mut fds = fds.into_iter();
    let mut take = |wanted: bool| -> Result<Option<UnixStream>, ControlError> {
        if !wanted {
            return Ok(None);
        }
        let fd = fds
            .next()
            .ok_or_else(|| ControlError::BadAnswer("missing stdio descriptor".into()))?;
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)
            .map_err(|e| ControlError::Io(PathBuf::from("stdio"), e))?;
        UnixStream::from_std(std)
            .map(Some)
            .map_err(|e| ControlError::Io(PathBuf::from("stdio"), e))
    };
    Ok(HostStdio {
        stdin: take(which[0])?,
        stdout: take(which[1])?,
        stderr: take(which[2])?,
    })
}
