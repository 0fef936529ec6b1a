//! The executor: the only module that calls libcontainer, and only inside the zygote, a
//! single-threaded process forked before the agent starts any thread (docs/adr/0004-executor.md).
//!
//! IPC: one `SOCK_SEQPACKET` message per request, JSON ([`Request`]) plus the stdio descriptors
//! (`SCM_RIGHTS`, in stdin, stdout, stderr order for the `true` entries of `stdio`); one reply,
//! JSON `{"Ok": value}` or `{"Err": "error chain"}`. The agent serialises requests (one mutex),
//! so the zygote needs no state: everything lives in libcontainer's state root.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::oci_spec::runtime::LinuxResources;
use libcontainer::syscall::syscall::SyscallType;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metrics;
use crate::error::GcsError;
use crate::sys::zygote::{fork_zygote, Channel, Forked};

/// One request to the zygote.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// `as_init(bundle).build()`: the init exists, blocked until `Start`. Reply: its PID.
    Create {
        /// Container ID.
        id: String,
        /// Bundle with `config.json`.
        bundle: PathBuf,
        /// Listening socket that receives the pty master (terminal containers).
        console_socket: Option<PathBuf>,
        /// Which of stdin/stdout/stderr descriptors are attached.
        stdio: [bool; 3],
    },
    /// `Container::start()`.
    Start {
        /// Container ID.
        id: String,
    },
    /// `as_tenant().with_process(process).build()`. Reply: the PID.
    Exec {
        /// Container ID.
        id: String,
        /// `process.json`.
        process: PathBuf,
        /// Listening socket for the pty master.
        console_socket: Option<PathBuf>,
        /// Which stdio descriptors are attached.
        stdio: [bool; 3],
    },
    /// `Container::kill(signal, all)`.
    Kill {
        /// Container ID.
        id: String,
        /// Signal number.
        signal: i32,
        /// Every process of the cgroup, not just init.
        all: bool,
    },
    /// `Container::delete(true)`, then the state directory, whatever is left.
    Delete {
        /// Container ID.
        id: String,
    },
    /// Every PID in the container's cgroup.
    Pids {
        /// Container ID.
        id: String,
    },
    /// Cgroup statistics as `LCOWMetrics`.
    Stats {
        /// Container ID.
        id: String,
    },
    /// Apply resources to the live cgroup.
    Update {
        /// Container ID.
        id: String,
        /// The new resources.
        resources: Box<LinuxResources>,
    },
    /// Delete every container found in the state root (left by a previous agent or a failed build).
    Sweep,
}

impl Request {
    fn op(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Start { .. } => "start",
            Self::Exec { .. } => "exec in",
            Self::Kill { .. } => "kill",
            Self::Delete { .. } => "delete",
            Self::Pids { .. } => "list processes of",
            Self::Stats { .. } => "read statistics of",
            Self::Update { .. } => "update",
            Self::Sweep => "sweep",
        }
    }

    fn id(&self) -> String {
        match self {
            Self::Create { id, .. }
            | Self::Start { id }
            | Self::Exec { id, .. }
            | Self::Kill { id, .. }
            | Self::Delete { id }
            | Self::Pids { id }
            | Self::Stats { id }
            | Self::Update { id, .. } => id.clone(),
            Self::Sweep => String::new(),
        }
    }
}

/// The agent's handle on the zygote.
#[derive(Debug)]
pub struct Zygote {
    channel: Mutex<Channel>,
    pid: Pid,
}

/// Forks the zygote (must run before any thread exists). In the zygote this never returns: it
/// serves requests until the agent goes away, then exits.
pub fn start(state_root: &Path) -> std::io::Result<Arc<Zygote>> {
    std::fs::create_dir_all(state_root)?;
    match fork_zygote()? {
        Forked::Agent { pid, channel } => Ok(Arc::new(Zygote {
            channel: Mutex::new(channel),
            pid,
        })),
        Forked::Zygote(channel) => {
            install_error_log();
            serve(&channel, state_root);
            std::process::exit(0)
        }
    }
}

impl Zygote {
    /// The zygote's PID.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Sends `req` with `fds` and waits (off the reactor) for the reply.
    pub async fn call(self: &Arc<Self>, req: Request, fds: Vec<OwnedFd>) -> Result<Value, GcsError> {
        let (op, id) = (req.op(), req.id());
        let this = Arc::clone(self);
        let fail = |message: String| GcsError::Runtime {
            op,
            id: id.clone(),
            message,
        };
        let reply = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let channel = this.channel.lock().unwrap_or_else(PoisonError::into_inner);
            let body = serde_json::to_vec(&req).map_err(std::io::Error::other)?;
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            channel.send(&body, &borrowed)?;
            drop(fds);
            match channel.recv()? {
                Some((data, _)) => Ok(data),
                None => Err(std::io::Error::other("the zygote exited")),
            }
        })
        .await
        .map_err(|e| fail(format!("zygote call task: {e}")))?
        .map_err(|e| fail(format!("zygote channel: {e}")))?;
        match serde_json::from_slice::<Result<Value, String>>(&reply) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(fail(message)),
            Err(e) => Err(fail(format!("bad zygote reply: {e}"))),
        }
    }
}

/// libcontainer's ERROR events, one line each on stderr. In the zygote that is the agent's
/// stderr; in a container's init or exec process (cloned from the zygote) it is the container's
/// own stderr once stdio is set up, so a failing `execvp` (a missing or non-executable program,
/// a `noexec` rootfs) is reported to the user rather than only as exit code 255, as runc does.
fn install_error_log() {
    use std::fmt::Write as _;
    use std::io::Write as _;

    use tracing_subscriber::layer::SubscriberExt;

    struct Fields(String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, " {value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
    }
    struct ErrorsToStderr;
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorsToStderr {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() != tracing::Level::ERROR {
                return;
            }
            let mut f = Fields(String::from("rgcs executor: error:"));
            event.record(&mut f);
            f.0.push('\n');
            let _ = std::io::stderr().write_all(f.0.as_bytes());
        }
    }
    let subscriber = tracing_subscriber::registry().with(ErrorsToStderr);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The zygote's loop.
fn serve(channel: &Channel, root: &Path) {
    loop {
        let (data, fds) = match channel.recv() {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        let reply: Result<Value, String> = match serde_json::from_slice::<Request>(&data) {
            Ok(req) => handle(root, req, fds).map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("bad request: {e}")),
        };
        let body = serde_json::to_vec(&reply)
            .unwrap_or_else(|e| format!(r#"{{"Err":"cannot encode the reply: {e}"}}"#).into_bytes());
        if channel.send(&body, &[]).is_err() {
            return;
        }
    }
}

fn builder(
    root: &Path,
    id: &str,
    console_socket: Option<&PathBuf>,
    stdio: [bool; 3],
    fds: Vec<OwnedFd>,
) -> anyhow::Result<ContainerBuilder> {
    let mut b = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(root)?
        .with_console_socket(console_socket)
        .validate_id()?;
    let mut fds = fds.into_iter();
    let expected = stdio.iter().filter(|x| **x).count();
    if fds.len() != expected {
        anyhow::bail!("expected {expected} stdio descriptors, got {}", fds.len());
    }
    for (i, present) in stdio.iter().enumerate() {
        if !present {
            continue;
        }
        let fd = fds
            .next()
            .ok_or_else(|| anyhow::anyhow!("missing stdio descriptor"))?;
        b = match i {
            0 => b.with_stdin(fd),
            1 => b.with_stdout(fd),
            _ => b.with_stderr(fd),
        };
    }
    Ok(b)
}

fn load(root: &Path, id: &str) -> anyhow::Result<Container> {
    Ok(Container::load(root.join(id))?)
}

fn cgroup_manager(root: &Path, id: &str) -> anyhow::Result<libcgroups::common::AnyCgroupManager> {
    let c = load(root, id)?;
    let cgroup_path = c.spec()?.cgroup_path;
    Ok(libcgroups::common::create_cgroup_manager(
        libcgroups::common::CgroupConfig {
            cgroup_path,
            systemd_cgroup: false,
            container_name: id.to_owned(),
        },
    )?)
}

fn handle(root: &Path, req: Request, fds: Vec<OwnedFd>) -> anyhow::Result<Value> {
    match req {
        Request::Create {
            id,
            bundle,
            console_socket,
            stdio,
        } => {
            let built = builder(root, &id, console_socket.as_ref(), stdio, fds)?
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(true)
                .as_sibling(true)
                .build();
            match built {
                Ok(c) => Ok(Value::from(c.pid().map_or(0, Pid::as_raw))),
                Err(e) => {
                    sweep_one(root, &id);
                    Err(e.into())
                }
            }
        }
        Request::Start { id } => {
            load(root, &id)?.start()?;
            Ok(Value::Null)
        }
        Request::Exec {
            id,
            process,
            console_socket,
            stdio,
        } => {
            let pid = builder(root, &id, console_socket.as_ref(), stdio, fds)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .as_sibling(true)
                .build()?;
            Ok(Value::from(pid.as_raw()))
        }
        Request::Kill { id, signal, all } => {
            let sig = nix::sys::signal::Signal::try_from(signal)?;
            let mut c = load(root, &id)?;
            if c.status() == ContainerStatus::Stopped && !all {
                return Ok(Value::Null);
            }
            c.kill(sig, all)?;
            Ok(Value::Null)
        }
        Request::Delete { id } => {
            sweep_one(root, &id);
            Ok(Value::Null)
        }
        Request::Pids { id } => {
            let pids = cgroup_manager(root, &id)?.get_all_pids()?;
            Ok(Value::from(pids.into_iter().map(Pid::as_raw).collect::<Vec<_>>()))
        }
        Request::Stats { id } => {
            let stats = cgroup_manager(root, &id)?.stats()?;
            let mut m = metrics::from_cgroup_stats(&stats);
            m.memory_oom_control = metrics::oom_control(&super::spec::cgroup_path(&id));
            Ok(serde_json::to_value(m)?)
        }
        Request::Update { id, resources } => {
            cgroup_manager(root, &id)?.apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })?;
            Ok(Value::Null)
        }
        Request::Sweep => {
            let mut swept = Vec::new();
            for entry in std::fs::read_dir(root)?.flatten() {
                if let Some(id) = entry.file_name().to_str() {
                    sweep_one(root, id);
                    swept.push(id.to_owned());
                }
            }
            Ok(Value::from(swept))
        }
    }
}

/// Deletes whatever libcontainer left for `id`: kill and delete the container if its state loads,
/// then remove the state directory in any case.
fn sweep_one(root: &Path, id: &str) {
    let dir = root.join(id);
    if let Ok(mut c) = Container::load(dir.clone()) {
        if c.status() != ContainerStatus::Stopped {
            let _ = c.kill(nix::sys::signal::Signal::SIGKILL, true);
        }
        if c.delete(true).is_err() {
            // The cgroup may still hold dying processes; one retry after they are gone.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = Container::load(dir.clone()).and_then(|mut c| c.delete(true));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
