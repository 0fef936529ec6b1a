//! Create (GCS-PROTOCOL §4.5, §6.6): adjust the spec, write the bundle, build the container in
//! the zygote (init blocked until Start), and watch init's exit.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use rgcs_protocol::message::{ContainerConfig, ContainerNotification, RequestBase};

use super::registry::{Container, InitStdio, NewContainer};
use super::runtime::Request;
use super::spec::{self, Kind};
use super::user;
use crate::error::GcsError;
use crate::host::{Executor, Host};
use crate::process::table::ProcessEntry;
use crate::reaper::ExitStatus;

/// How long the console socket may take to deliver the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GcsError {
    let what = what.into();
    move |e| GcsError::io(what, e)
}

fn invalid(id: &str, reason: impl Into<String>) -> GcsError {
    GcsError::InvalidConfig {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

/// Writes `hostname`, `hosts` and `resolv.conf` into `dir` (sandbox and standalone containers).
fn write_etc_files(dir: &Path, spec: &Spec, id: &str) -> Result<(), GcsError> {
    let hostname = match spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_owned(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    if !spec::valid_hostname(&hostname) {
        return Err(invalid(id, format!("invalid hostname {hostname:?}")));
    }
    let resolv = spec::render_resolv_conf(&[], &[]).map_err(|e| invalid(id, e))?;
    for (name, text) in [
        ("hostname", format!("{hostname}\n")),
        ("hosts", spec::render_hosts(&hostname)),
        ("resolv.conf", resolv),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
    }
    Ok(())
}

/// Whether the container gets a new PID namespace (no `pid` entry or one with a path: no).
fn owns_pid_ns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        })
}

/// A listening console socket at `path`, ready to be accepted on the reactor.
pub fn console_listener(path: &Path) -> Result<std::os::unix::net::UnixListener, GcsError> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(io(format!("bind {}", path.display())))?;
    l.set_nonblocking(true).map_err(io("console socket"))?;
    Ok(l)
}

/// Accepts libcontainer's connection on the console socket and receives the pty master.
pub async fn receive_master(l: std::os::unix::net::UnixListener) -> Result<OwnedFd, GcsError> {
    let l = tokio::net::UnixListener::from_std(l).map_err(io("register the console socket"))?;
    let fut = async {
        let (s, _) = l.accept().await?;
        loop {
            s.readable().await?;
            match s.try_io(tokio::io::Interest::READABLE, || {
                crate::sys::pty::recv_fd(s.as_fd())
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    };
    tokio::time::timeout(CONSOLE_TIMEOUT, fut)
        .await
        .map_err(|_| GcsError::io("receive the pty master", std::io::ErrorKind::TimedOut.into()))?
        .map_err(io("receive the pty master"))
}

/// Three pipes; returns (the agent's ends: stdin w, stdout r, stderr r; the child's ends).
pub fn pipes() -> Result<([OwnedFd; 3], [OwnedFd; 3]), GcsError> {
    let p = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| GcsError::io("create a pipe", e.into()))
    };
    let (in_r, in_w) = p()?;
    let (out_r, out_w) = p()?;
    let (err_r, err_w) = p()?;
    Ok(([in_w, out_r, err_r], [in_r, out_w, err_w]))
}

/// The whole Create, after the ID was reserved.
pub async fn create(host: &Arc<Host>, base: &RequestBase, cfg: &ContainerConfig) -> Result<(), GcsError> {
    let exec = host.executor()?.clone();
    let id = base.container_id.as_str();
    let mut spec = cfg
        .oci_specification
        .clone()
        .ok_or_else(|| invalid(id, "OciSpecification is missing"))?;
    let bundle = PathBuf::from(&cfg.oci_bundle_path);
    if !bundle.is_absolute() {
        return Err(invalid(id, format!("OciBundlePath {bundle:?} is not absolute")));
    }
    std::fs::create_dir_all(&bundle).map_err(io(format!("create {}", bundle.display())))?;
    let files_dir = match spec::kind(&spec) {
        Kind::Standalone | Kind::Sandbox => {
            write_etc_files(&bundle, &spec, id)?;
            Some(bundle.clone())
        }
        Kind::Workload(sid) => host.containers.get(&sid).ok().map(|s| s.bundle.clone()),
    };
    spec::adjust(&mut spec, id, files_dir.as_deref()).map_err(|e| invalid(id, e))?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| invalid(id, "the spec has no process"))?;
    let resolved = match spec::username(&process) {
        Some(name) => {
            let r = user::resolve_in_rootfs(&rootfs, &name).map_err(|e| invalid(id, e.to_string()))?;
            spec::set_user(&mut process, &r);
            Some(r)
        }
        None => None,
    };
    let cwd = process.cwd().clone();
    if cwd != Path::new("/") {
        let dir = rootfs.join(cwd.strip_prefix("/").unwrap_or(&cwd));
        std::fs::create_dir_all(&dir)
            .map_err(io(format!("create the working directory {}", dir.display())))?;
    }
    let terminal = process.terminal().unwrap_or(false);
    spec.set_process(Some(process));
    let config =
        serde_json::to_vec(&spec).map_err(|e| GcsError::Internal(format!("encode config.json: {e}")))?;
    std::fs::write(bundle.join("config.json"), config).map_err(io("write config.json"))?;

    let proc_dir = exec.run_dir.join("procs").join(id);
    std::fs::create_dir_all(&proc_dir).map_err(io(format!("create {}", proc_dir.display())))?;
    let console_path = proc_dir.join("init-console.sock");
    let (listener, agent_ends, child_ends) = if terminal {
        (Some(console_listener(&console_path)?), None, Vec::new())
    } else {
        let (agent, child) = pipes()?;
        (None, Some(agent), Vec::from(child))
    };
    let spawned_at = Instant::now();
    let reply = exec
        .zygote
        .call(
            Request::Create {
                id: id.to_owned(),
                bundle: bundle.clone(),
                console_socket: terminal.then(|| console_path.clone()),
                stdio: [!terminal; 3],
            },
            child_ends,
        )
        .await;
    let pid = match reply {
        Ok(v) => v.as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&proc_dir);
            return Err(e);
        }
    };
    let watch = host.reaper.watch(pid as i32, spawned_at);
    let stdio = match (listener, agent_ends) {
        (Some(l), _) => {
            let master = receive_master(l).await;
            let _ = std::fs::remove_file(&console_path);
            match master {
                Ok(m) => InitStdio::Tty(Arc::new(m)),
                Err(e) => {
                    let _ = exec
                        .zygote
                        .call(Request::Delete { id: id.to_owned() }, Vec::new())
                        .await;
                    return Err(e);
                }
            }
        }
        (None, Some(ends)) => InitStdio::Pipes(ends),
        (None, None) => return Err(GcsError::Internal("no stdio for init".into())),
    };
    let c = Container::new(NewContainer {
        id: id.to_owned(),
        activity_id: base.activity_id.clone(),
        bundle,
        rootfs,
        owns_pid_ns: owns_pid_ns(&spec),
        spec,
        user: resolved,
        proc_dir,
        init_pid: pid,
        stdio,
    });
    host.containers.publish(Arc::clone(&c));
    tokio::spawn(watch_init(Arc::clone(host), exec, c, watch));
    Ok(())
}

/// Init's exit: emulate `runc kill --all` without a PID namespace of its own, drain the relays,
/// publish the exit code, then send the one notification once a wait delivered it.
async fn watch_init(host: Arc<Host>, exec: Executor, c: Arc<Container>, watch: crate::reaper::ExitWatch) {
    let status = watch.wait().await.unwrap_or(ExitStatus::Exited(255));
    c.init.mark_reaped();
    c.set_exited();
    tracing::info!(container_id = %c.id, pid = c.init.pid, %status, "container init exited");
    if !c.owns_pid_ns {
        let req = Request::Kill {
            id: c.id.clone(),
            signal: libc::SIGKILL,
            all: true,
        };
        if let Err(e) = exec.zygote.call(req, Vec::new()).await {
            tracing::warn!(container_id = %c.id, error = %e, "kill --all after init exit");
        }
    }
    if let Some(relays) = c.take_init_relays() {
        relays.finish().await;
    }
    c.init.publish(status.code() as u32);
    let entry: Arc<ProcessEntry> = Arc::clone(&c.init);
    tokio::select! {
        () = entry.delivered() => {
            host.notify(ContainerNotification {
                container_id: c.id.clone(),
                activity_id: c.activity_id.clone(),
                notification_type: c.exit_type(),
                ..ContainerNotification::default()
            });
        }
        () = c.deleted() => {}
    }
}
