//! The executor: the only module that calls libcontainer, and only inside the zygote, a
//! single-threaded process the agent talks to over a `SOCK_SEQPACKET` channel
//! (docs/adr/0004-executor.md).
//!
//! * [`wire`] — the requests and their typed replies;
//! * [`zygote`] — the zygote's side (libcontainer);
//! * [`workload`] — the last step inside a container process (pty size, exec exit codes).
//!
//! The agent's side, [`Zygote`], serialises calls (one exchange at a time on the channel) and
//! puts a deadline on each: a call that does not finish in time answers `0xC0370109` and the
//! zygote is killed. A zygote that died, or was killed that way, is reported and replaced by a
//! new one started from the agent's own binary at the next call; what it held dies with it (the
//! descriptors it was sent), and the libcontainer state of a create it did not finish is swept
//! by the caller.

pub mod wire;
pub mod workload;
pub mod zygote;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libcontainer::oci_spec::runtime::LinuxResources;
use rgcs_protocol::message::Metrics;

pub use self::wire::{Reply, Request};
use crate::error::GcsError;
use crate::sys::pid::ProcessId;
use crate::sys::zygote::{fork_zygote, spawn_zygote, Channel, Forked};

/// Default deadline of one executor call (a create under TCG takes ~0.1 s).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// A live zygote: its channel and PID.
#[derive(Debug)]
struct Live {
    channel: Arc<Channel>,
    pid: ProcessId,
}

/// The agent's handle on the zygote.
#[derive(Debug)]
pub struct Zygote {
    live: tokio::sync::Mutex<Option<Live>>,
    state_root: PathBuf,
    deadline: Duration,
    first_pid: ProcessId,
}

/// Forks the zygote (must run before any thread exists). In the zygote this never returns: it
/// serves requests until the agent goes away, then exits.
pub fn start(state_root: &Path, deadline: Duration) -> std::io::Result<Arc<Zygote>> {
    std::fs::create_dir_all(state_root)?;
    match fork_zygote()? {
        Forked::Agent { pid, channel } => {
            let pid = ProcessId::from(pid);
            Ok(Arc::new(Zygote {
                live: tokio::sync::Mutex::new(Some(Live {
                    channel: Arc::new(channel),
                    pid,
                })),
                state_root: state_root.to_path_buf(),
                deadline,
                first_pid: pid,
            }))
        }
        Forked::Zygote(channel) => zygote::run(&channel, state_root),
    }
}

/// The entry point of a replacement zygote (`gcs --zygote STATE_ROOT`). Never returns.
pub fn zygote_main(state_root: &Path) -> ! {
    match crate::sys::zygote::channel_from_stdin() {
        Ok(channel) => zygote::run(&channel, state_root),
        Err(e) => {
            eprintln!("gcs --zygote: no channel on stdin: {e}");
            std::process::exit(2)
        }
    }
}

/// What a failed exchange means for the zygote.
enum Failure {
    /// The zygote answered with an error: it is fine.
    Answered(String),
    /// The channel broke or the zygote died: replace it.
    Died(String),
    /// No answer within the deadline: kill and replace it.
    Hung,
}

impl Zygote {
    /// The PID of the zygote forked at start.
    pub fn pid(&self) -> i32 {
        self.first_pid.raw()
    }

    /// The current zygote, starting a new one if the last one died.
    fn live<'a>(&self, slot: &'a mut Option<Live>) -> Result<&'a Live, GcsError> {
        if slot.is_none() {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
            let (pid, channel) = spawn_zygote(&exe, &self.state_root)
                .map_err(|e| GcsError::io("start a new executor zygote", e))?;
            let pid = ProcessId::from(pid);
            tracing::warn!(pid = pid.get(), "started a new executor zygote");
            *slot = Some(Live {
                channel: Arc::new(channel),
                pid,
            });
        }
        slot.as_ref()
            .ok_or_else(|| GcsError::Internal("no executor zygote".into()))
    }

    /// Sends `req` with `fds` and waits, off the reactor and at most the deadline, for the reply.
    pub async fn call(&self, req: Request, fds: Vec<OwnedFd>) -> Result<Reply, GcsError> {
        let (op, id) = (req.op(), req.id().to_owned());
        let mut slot = self.live.lock().await;
        let live = self.live(&mut slot)?;
        let (channel, pid) = (Arc::clone(&live.channel), live.pid);
        let body = serde_json::to_vec(&req).map_err(|e| GcsError::Internal(format!("encode {op}: {e}")))?;
        let exchange = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            channel.send(&body, &borrowed).map_err(|e| format!("send: {e}"))?;
            drop(fds);
            match channel.recv() {
                Ok(Some((data, _))) => Ok(data),
                Ok(None) => Err("the zygote exited".into()),
                Err(e) => Err(format!("receive: {e}")),
            }
        });
        let failure = match tokio::time::timeout(self.deadline, exchange).await {
            Err(_) => Failure::Hung,
            Ok(Err(join)) => Failure::Died(format!("executor task: {join}")),
            Ok(Ok(Err(why))) => Failure::Died(why),
            Ok(Ok(Ok(data))) => match serde_json::from_slice::<wire::Answer>(&data) {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(message)) => Failure::Answered(message),
                Err(e) => Failure::Died(format!("bad reply: {e}")),
            },
        };
        match failure {
            Failure::Answered(message) => Err(GcsError::Runtime { op, id, message }),
            Failure::Died(why) => {
                tracing::error!(pid = pid.get(), %op, container_id = %id, %why, "executor zygote died");
                let _ = pid.signal(libc::SIGKILL);
                *slot = None;
                Err(GcsError::Runtime {
                    op,
                    id,
                    message: format!("the executor died ({why}); a new one starts with the next request"),
                })
            }
            Failure::Hung => {
                tracing::error!(pid = pid.get(), %op, container_id = %id, deadline = ?self.deadline, "executor call hung; killing the zygote");
                let _ = pid.signal(libc::SIGKILL);
                *slot = None;
                Err(GcsError::ExecutorTimeout {
                    op,
                    id,
                    after: self.deadline,
                })
            }
        }
    }

    /// A reply of the wrong kind: a bug on one side of the channel.
    fn unexpected(op: &str, reply: &Reply) -> GcsError {
        GcsError::Internal(format!("the executor answered {op} with {reply:?}"))
    }

    /// Builds a container (init blocked until [`Zygote::start`]); its init's PID.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        console_socket: Option<PathBuf>,
        fds: Vec<OwnedFd>,
    ) -> Result<ProcessId, GcsError> {
        let stdio = [console_socket.is_none(); 3];
        let req = Request::Create {
            id: id.to_owned(),
            bundle: bundle.to_path_buf(),
            console_socket,
            stdio,
        };
        match self.call(req, fds).await? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(Self::unexpected("create", &other)),
        }
    }

    /// Starts a created container's init.
    pub async fn start(&self, id: &str) -> Result<(), GcsError> {
        self.done(Request::Start { id: id.to_owned() }).await
    }

    /// Execs `process` (a `process.json`) in a running container; its PID.
    pub async fn exec(
        &self,
        id: &str,
        process: &Path,
        console_socket: Option<PathBuf>,
        fds: Vec<OwnedFd>,
    ) -> Result<ProcessId, GcsError> {
        let stdio = [console_socket.is_none(); 3];
        let req = Request::Exec {
            id: id.to_owned(),
            process: process.to_path_buf(),
            console_socket,
            stdio,
        };
        match self.call(req, fds).await? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(Self::unexpected("exec", &other)),
        }
    }

    /// Signals the init (or, with `all`, every process of the cgroup).
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), GcsError> {
        self.done(Request::Kill {
            id: id.to_owned(),
            signal,
            all,
        })
        .await
    }

    /// Deletes the container's libcontainer state and cgroup, killing what is left.
    pub async fn delete(&self, id: &str) -> Result<(), GcsError> {
        self.done(Request::Delete { id: id.to_owned() }).await
    }

    /// Applies `resources` to the live cgroup.
    pub async fn update(&self, id: &str, resources: LinuxResources) -> Result<(), GcsError> {
        self.done(Request::Update {
            id: id.to_owned(),
            resources: Box::new(resources),
        })
        .await
    }

    /// Every PID in the container's cgroup.
    pub async fn pids(&self, id: &str) -> Result<Vec<ProcessId>, GcsError> {
        match self.call(Request::Pids { id: id.to_owned() }, Vec::new()).await? {
            Reply::Pids(p) => Ok(p),
            other => Err(Self::unexpected("pids", &other)),
        }
    }

    /// The container's cgroup statistics.
    pub async fn stats(&self, id: &str) -> Result<Metrics, GcsError> {
        match self
            .call(Request::Stats { id: id.to_owned() }, Vec::new())
            .await?
        {
            Reply::Stats(m) => Ok(*m),
            other => Err(Self::unexpected("stats", &other)),
        }
    }

    /// Deletes every container in the state root; their IDs.
    pub async fn sweep(&self) -> Result<Vec<String>, GcsError> {
        match self.call(Request::Sweep, Vec::new()).await? {
            Reply::Swept(ids) => Ok(ids),
            other => Err(Self::unexpected("sweep", &other)),
        }
    }

    async fn done(&self, req: Request) -> Result<(), GcsError> {
        let op = req.op();
        match self.call(req, Vec::new()).await? {
            Reply::Done => Ok(()),
            other => Err(Self::unexpected(op, &other)),
        }
    }
}
