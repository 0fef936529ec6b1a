//! Stdio over the host's ports (docs/gcs-reference.md §1.3, §6.9): dial the ports named in the request
//! (vsock, or `PREFIX_<port>` Unix sockets with `--stdio-unix-prefix` for tests: the naming
//! vhost-device-vsock gives guest ports on the host, so one host client serves both), and relay between them
//! and the agent's ends of the process's pipes or pty.
//!
//! * [`Prepared`] / [`Attached`]: a new container process's side of stdio, the same for an init
//!   (Create, attached at Start) and an exec: pipes, or a console socket on which libcontainer
//!   hands over the pty master;
//! * stdout/stderr end with a **full close** of the stream after the last byte (vhost-device-vsock
//!   does not pass a half-close; docs/uvm-notes.md §9).
//! * stdin EOF closes the pipe's write end, so the process sees EOF.
//! * After the process exits, [`Relays::finish`] stops the stdin copy and lets the output copies
//!   drain until EOF; if a background process keeps the pipe open and nothing moves for
//!   [`QUIET`], the relays are closed anyway (the exit must not hang on it).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rgcs_protocol::message::{ProcessParameters, VsockStdioRelaySettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::error::GcsError;
use crate::sys::fdstream::FdStream;

/// After exit, the output relays are closed once no byte moved for this long.
pub const QUIET: Duration = Duration::from_secs(2);

/// Where stdio ports are dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdioTarget {
    /// vsock CID 2 (the product).
    Vsock,
    /// `PREFIX_<port>` Unix stream sockets (tests without a VM).
    UnixPrefix(PathBuf),
}

/// The ports to dial, in stdin/stdout/stderr order: a port only when its `CreateStd*Pipe` flag is
/// set and the port is non-zero.
pub fn ports(p: &ProcessParameters, s: &VsockStdioRelaySettings) -> [Option<u32>; 3] {
    let pick = |flag: bool, port: u32| (flag && port != 0).then_some(port);
    [
        pick(p.create_std_in_pipe, s.std_in),
        pick(p.create_std_out_pipe, s.std_out),
        pick(p.create_std_err_pipe, s.std_err),
    ]
}

async fn dial(target: &StdioTarget, port: u32) -> io::Result<OwnedFd> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || match target {
        StdioTarget::Vsock => rgcs_init::vsock::connect(port),
        StdioTarget::UnixPrefix(prefix) => {
            let mut path = prefix.into_os_string();
            path.push(format!("_{port}"));
            std::os::unix::net::UnixStream::connect(path).map(OwnedFd::from)
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Dials every requested port (blocking descriptors, suitable to hand to a child).
pub async fn dial_all(
    target: &StdioTarget,
    ports: [Option<u32>; 3],
) -> Result<[Option<OwnedFd>; 3], GcsError> {
    let mut out: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, port) in ports.iter().enumerate() {
        if let Some(port) = port {
            let fd = dial(target, *port)
                .await
                .map_err(|e| GcsError::io(format!("dial stdio port {port}"), e))?;
            out[i] = Some(fd);
        }
    }
    Ok(out)
}

/// How long the console socket may take to deliver the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A new container process's stdio before the executor builds it: the child's ends to send to
/// the zygote, and what the agent keeps.
#[derive(Debug)]
pub enum Prepared {
    /// A pty: libcontainer connects to this listening console socket and sends the master.
    Tty {
        /// The listener (non-blocking, accepted on the reactor).
        listener: std::os::unix::net::UnixListener,
        /// Its path (passed to libcontainer, removed after the master arrived).
        path: PathBuf,
    },
    /// Pipes: the agent keeps stdin's write end and the read ends of stdout and stderr.
    Pipes {
        /// The agent's ends.
        agent: [OwnedFd; 3],
        /// The child's ends, for the zygote.
        child: Vec<OwnedFd>,
    },
}

/// A container process's stdio once it exists: the agent's ends, to attach to the host's ports.
#[derive(Debug)]
pub enum Attached {
    /// Pipes: stdin write end, stdout and stderr read ends.
    Pipes([OwnedFd; 3]),
    /// The pty master.
    Tty(Arc<OwnedFd>),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GcsError {
    let what = what.into();
    move |e| GcsError::io(what, e)
}

fn devnull() -> Result<OwnedFd, GcsError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(io_err("open /dev/null"))
}

impl Prepared {
    /// A pty when `terminal` (console socket at `console`), else three pipes. A stream listed in
    /// `null` gets `/dev/null` in the child instead of its pipe (execs: a pipe the host did not
    /// ask for); otherwise the agent's end of an unused pipe is simply never relayed.
    pub fn new(terminal: bool, console: &std::path::Path, null: [bool; 3]) -> Result<Self, GcsError> {
        if terminal {
            let _ = std::fs::remove_file(console);
            let listener = std::os::unix::net::UnixListener::bind(console)
                .map_err(io_err(format!("bind {}", console.display())))?;
            listener.set_nonblocking(true).map_err(io_err("console socket"))?;
            return Ok(Self::Tty {
                listener,
                path: console.to_path_buf(),
            });
        }
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| GcsError::io("create a pipe", e.into()))
        };
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut child = Vec::with_capacity(3);
        for (fd, null) in [in_r, out_w, err_w].into_iter().zip(null) {
            child.push(if null { devnull()? } else { fd });
        }
        Ok(Self::Pipes {
            agent: [in_w, out_r, err_r],
            child,
        })
    }

    /// The console socket to give libcontainer, if any.
    pub fn console_socket(&self) -> Option<PathBuf> {
        match self {
            Self::Tty { path, .. } => Some(path.clone()),
            Self::Pipes { .. } => None,
        }
    }

    /// The child's ends, for the zygote call (empty for a pty).
    pub fn take_child_fds(&mut self) -> Vec<OwnedFd> {
        match self {
            Self::Tty { .. } => Vec::new(),
            Self::Pipes { child, .. } => std::mem::take(child),
        }
    }

    /// Once the process exists: the pipes, or the pty master received on the console socket.
    pub async fn attach(self) -> Result<Attached, GcsError> {
        match self {
            Self::Pipes { agent, .. } => Ok(Attached::Pipes(agent)),
            Self::Tty { listener, path } => {
                let master = receive_master(listener).await;
                let _ = std::fs::remove_file(&path);
                master.map(|m| Attached::Tty(Arc::new(m)))
            }
        }
    }
}

/// Accepts libcontainer's connection on the console socket and receives the pty master.
async fn receive_master(l: std::os::unix::net::UnixListener) -> Result<OwnedFd, GcsError> {
    let l = tokio::net::UnixListener::from_std(l).map_err(io_err("register the console socket"))?;
    let fut = async {
        let (s, _) = l.accept().await?;
        loop {
            s.readable().await?;
            match s.try_io(tokio::io::Interest::READABLE, || {
                crate::sys::pty::recv_fd(std::os::fd::AsFd::as_fd(&s))
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    };
    tokio::time::timeout(CONSOLE_TIMEOUT, fut)
        .await
        .map_err(|_| GcsError::io("receive the pty master", io::ErrorKind::TimedOut.into()))?
        .map_err(io_err("receive the pty master"))
}

impl Attached {
    /// The relays between these ends and the host's sockets (stdin, stdout, stderr; `None` for
    /// a port the host did not ask for). With a pty, stderr is unused. The agent's end of a pipe
    /// that gets no socket is closed here, so the process sees EOF (stdin) or `EPIPE` (output).
    /// With `tee`, every output byte relayed is also appended to that file (init's tee log).
    pub fn into_relays(self, sockets: [Option<OwnedFd>; 3], tee: Option<Tee>) -> Result<Relays, GcsError> {
        let [s_in, s_out, s_err] = sockets;
        match self {
            Self::Tty(master) => Relays::tty(&master, s_in, s_out, tee),
            Self::Pipes([in_w, out_r, err_r]) => {
                let outputs = [(out_r, s_out), (err_r, s_err)]
                    .into_iter()
                    .filter_map(|(pipe, sock)| sock.map(|s| (pipe, s)))
                    .collect();
                Relays::pipes(s_in.map(|s| (s, in_w)), outputs, tee)
            }
        }
    }

    /// The pty master, for ResizeConsole.
    pub fn tty(&self) -> Option<Arc<OwnedFd>> {
        match self {
            Self::Tty(m) => Some(Arc::clone(m)),
            Self::Pipes(_) => None,
        }
    }
}

/// A file that init's output is also appended to (stdout and stderr interleaved, as hcsshim).
/// Written synchronously: it lives on the sandbox's scratch disk or tmpfs, and one write is at
/// most one relay buffer (32 KiB), so the relay task blocks for no longer than a page-cache copy.
pub type Tee = Arc<std::sync::Mutex<std::fs::File>>;

/// Opens a tee log: created 0666 if missing, appended to, never truncated.
pub fn open_tee(path: &std::path::Path) -> Result<Tee, GcsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o666)
        .open(path)
        .map_err(|e| GcsError::io(format!("open the tee log {}", path.display()), e))?;
    Ok(Arc::new(std::sync::Mutex::new(f)))
}

/// The relays of one process.
#[derive(Debug, Default)]
pub struct Relays {
    stdin: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    progress: Arc<AtomicU64>,
}

fn stream(fd: OwnedFd, what: &str) -> Result<FdStream, GcsError> {
    FdStream::new(fd).map_err(|e| GcsError::io(format!("register {what}"), e))
}

async fn copy_in(mut from: FdStream, mut to: FdStream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn copy_out(mut from: FdStream, mut to: FdStream, progress: Arc<AtomicU64>, tee: Option<Tee>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut tee = tee;
    loop {
        // A pty master reads EIO once every slave is closed: that is its EOF.
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                progress.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(t) = &tee {
                    let written = t
                        .lock()
                        .map_err(|_| io::Error::other("tee lock poisoned"))
                        .and_then(|mut f| std::io::Write::write_all(&mut *f, &buf[..n]));
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "tee log write failed; no longer teeing");
                        tee = None;
                    }
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    // Full close of the stream (dropping `to`), never a half-close.
    drop(to);
}

impl Relays {
    /// Pipe relays: `stdin` = (socket, pipe write end), `outputs` = (pipe read end, socket).
    pub fn pipes(
        stdin: Option<(OwnedFd, OwnedFd)>,
        outputs: Vec<(OwnedFd, OwnedFd)>,
        tee: Option<Tee>,
    ) -> Result<Self, GcsError> {
        let mut r = Self::default();
        if let Some((sock, pipe)) = stdin {
            let (sock, pipe) = (stream(sock, "stdin socket")?, stream(pipe, "stdin pipe")?);
            r.stdin = Some(tokio::spawn(copy_in(sock, pipe)));
        }
        for (pipe, sock) in outputs {
            let (pipe, sock) = (stream(pipe, "output pipe")?, stream(sock, "output socket")?);
            r.outputs.push(tokio::spawn(copy_out(
                pipe,
                sock,
                Arc::clone(&r.progress),
                tee.clone(),
            )));
        }
        Ok(r)
    }

    /// Pty relays: stdin socket → master, master → stdout socket (stderr is unused with a tty).
    pub fn tty(
        master: &OwnedFd,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        tee: Option<Tee>,
    ) -> Result<Self, GcsError> {
        let dup = || {
            master
                .try_clone()
                .map_err(|e| GcsError::io("duplicate the pty master", e))
        };
        let mut r = Self::default();
        if let Some(sock) = stdin {
            r.stdin = Some(tokio::spawn(copy_in(
                stream(sock, "stdin socket")?,
                stream(dup()?, "pty")?,
            )));
        }
        if let Some(sock) = stdout {
            let (m, s) = (stream(dup()?, "pty")?, stream(sock, "stdout socket")?);
            r.outputs
                .push(tokio::spawn(copy_out(m, s, Arc::clone(&r.progress), tee)));
        }
        Ok(r)
    }

    /// After the process exited: stop the stdin copy, let the outputs drain to EOF, and close
    /// them once nothing moved for [`QUIET`].
    pub async fn finish(self) {
        if let Some(h) = &self.stdin {
            h.abort();
        }
        let mut last = self.progress.load(Ordering::Relaxed);
        let mut outputs = self.outputs;
        loop {
            let pending = async {
                for h in outputs.iter_mut().filter(|h| !h.is_finished()) {
                    let _ = h.await;
                }
            };
            if tokio::time::timeout(QUIET, pending).await.is_ok() {
                return;
            }
            let now = self.progress.load(Ordering::Relaxed);
            if now == last {
                for h in &outputs {
                    h.abort();
                }
                tracing::info!("closing stdio relays held open by another process after exit");
                return;
            }
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn only_flagged_nonzero_ports_are_dialled() {
        let p = ProcessParameters {
            create_std_in_pipe: true,
            create_std_out_pipe: true,
            ..Default::default()
        };
        let s = VsockStdioRelaySettings {
            std_in: 0,
            std_out: 5,
            std_err: 6,
        };
        assert_eq!(ports(&p, &s), [None, Some(5), None]);
    }

    #[tokio::test]
    async fn output_relay_full_closes_after_eof_and_tees() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log = std::env::temp_dir().join(format!("rgcs-tee-{}.log", std::process::id()));
        std::fs::write(&log, "before\n").unwrap();
        let tee = open_tee(&log).unwrap();
        let relays = Relays::pipes(None, vec![(r, OwnedFd::from(ours))], Some(tee)).unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        drop(w);
        relays.finish().await;
        let mut got = String::new();
        std::io::Read::read_to_string(&mut &theirs, &mut got).unwrap();
        assert_eq!(got, "hello");
        // appended, never truncated
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nhello");
        std::fs::remove_file(&log).unwrap();
    }

    #[tokio::test]
    async fn a_pipe_held_open_does_not_hang_finish() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let relays = Relays::pipes(None, vec![(r, OwnedFd::from(ours))], None).unwrap();
        let t = std::time::Instant::now();
        relays.finish().await;
        assert!(t.elapsed() < QUIET * 3);
        drop(w);
    }
}
