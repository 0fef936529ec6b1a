//! The zygote's side of the executor: a single-threaded process that owns every libcontainer
//! call (docs/adr/0004-executor.md). It is forked from the agent before any thread exists, or, to
//! replace one that died or hung, started again from the agent's own binary (`gcs --zygote
//! STATE_ROOT`, the channel on its stdin). It keeps no state: everything lives in
//! libcontainer's state root.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;

use super::wire::{Answer, Reply, Request};
use super::workload::Workload;
use crate::container::metrics;
use crate::sys::pid::ProcessId;
use crate::sys::zygote::Channel;

/// Runs a zygote on `channel` until the agent goes away, then exits. Never returns.
pub fn run(channel: &Channel, state_root: &Path) -> ! {
    install_error_log();
    serve(channel, state_root);
    std::process::exit(0)
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

/// The zygote's loop: one request, one answer.
fn serve(channel: &Channel, root: &Path) {
    loop {
        let (data, fds) = match channel.recv() {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        let answer: Answer = match serde_json::from_slice::<Request>(&data) {
            Ok(req) => handle(root, req, fds).map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("bad request: {e}")),
        };
        let body = serde_json::to_vec(&answer)
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
        .with_executor(Workload)
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

fn handle(root: &Path, req: Request, fds: Vec<OwnedFd>) -> anyhow::Result<Reply> {
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
            match built.map(|c| c.pid()) {
                Ok(Some(pid)) => Ok(Reply::Pid(ProcessId::from(pid))),
                Ok(None) => {
                    sweep_one(root, &id);
                    anyhow::bail!("libcontainer built the container without an init PID")
                }
                Err(e) => {
                    sweep_one(root, &id);
                    Err(e.into())
                }
            }
        }
        Request::Start { id } => {
            load(root, &id)?.start()?;
            Ok(Reply::Done)
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
            Ok(Reply::Pid(ProcessId::from(pid)))
        }
        Request::Kill { id, signal, all } => {
            let sig = nix::sys::signal::Signal::try_from(signal)?;
            let mut c = load(root, &id)?;
            if c.status() == ContainerStatus::Stopped && !all {
                return Ok(Reply::Done);
            }
            c.kill(sig, all)?;
            Ok(Reply::Done)
        }
        Request::Delete { id } => {
            sweep_one(root, &id);
            Ok(Reply::Done)
        }
        Request::Pids { id } => {
            let pids = cgroup_manager(root, &id)?.get_all_pids()?;
            Ok(Reply::Pids(pids.into_iter().map(ProcessId::from).collect()))
        }
        Request::Stats { id } => {
            let stats = cgroup_manager(root, &id)?.stats()?;
            let mut m = metrics::from_cgroup_stats(&stats);
            m.memory_oom_control = metrics::oom_control(&crate::container::spec::cgroup_path(&id));
            Ok(Reply::Stats(Box::new(m)))
        }
        Request::Update { id, resources } => {
            cgroup_manager(root, &id)?.apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })?;
            Ok(Reply::Done)
        }
        Request::Sweep => {
            let mut swept = Vec::new();
            for entry in std::fs::read_dir(root)?.flatten() {
                if let Some(id) = entry.file_name().to_str() {
                    sweep_one(root, id);
                    swept.push(id.to_owned());
                }
            }
            Ok(Reply::Swept(swept))
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
