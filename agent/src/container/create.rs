//! Create (docs/gcs-reference.md §4.5, §6.6): adjust the spec, write the bundle, build the container in
//! the zygote (init blocked until Start), and watch init's exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use rgcs_protocol::message::{ContainerConfig, ContainerNotification, RequestBase};

use super::pod;
use super::registry::{Container, NewContainer};
use super::spec::{self, Kind};
use super::user;
use crate::error::GcsError;
use crate::host::{Executor, Host};
use crate::process::stdio::{Attached, Prepared};
use crate::process::table::ProcessEntry;
use crate::reaper::ExitStatus;
use crate::sys::pid::ProcessId;

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

/// The hostname the container's files name: the spec's, checked as hcsshim HEAD checks it, or
/// else the UVM's own as it is (hcsshim takes `os.Hostname()` unchecked, so a UVM whose kernel
/// still says `(none)` is fine).
fn hostname(spec: &Spec, id: &str) -> Result<String, GcsError> {
    match spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        Some(h) if spec::valid_hostname(h) => Ok(h.to_owned()),
        Some(h) => Err(invalid(
            id,
            format!("hostname {h:?} invalid: must match ^[a-zA-Z0-9_\\-\\.]{{0,255}}$"),
        )),
        None => Ok(nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()),
    }
}

/// Writes `hostname`, `hosts` and `resolv.conf` (from the DNS of the namespace's NICs) into
/// `dir` (sandbox and standalone containers).
fn write_etc_files(
    dir: &Path,
    spec: &Spec,
    id: &str,
    dns: &(Vec<String>, Vec<String>),
) -> Result<(), GcsError> {
    let hostname = hostname(spec, id)?;
    let search: Vec<&str> = dns.0.iter().map(String::as_str).collect();
    let servers: Vec<&str> = dns.1.iter().map(String::as_str).collect();
    let resolv = spec::render_resolv_conf(&search, &servers).map_err(|e| invalid(id, e))?;
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

/// The bundle path obeys the guest path spelling rules, and no existing component is a symlink:
/// the agent writes `config.json` and the `/etc` files there, so `..` or a link must not take it
/// elsewhere in the UVM. (hcsshim's guest trusts the path; its hosts send `/run/gcs/c/<id>`.)
fn check_bundle(path: &str) -> Result<(), GcsError> {
    let bad = |reason: &'static str| GcsError::InvalidPath {
        what: "OciBundlePath",
        path: path.escape_debug().to_string(),
        reason,
    };
    crate::storage::paths::spelling(path).map_err(bad)?;
    let mut cur = PathBuf::from("/");
    for comp in Path::new(path).components().skip(1) {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(bad("goes through a symlink")),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A container's place in the pod model: where its cgroup goes, which directory its `/etc`
/// files come from, and what Create must undo if it fails.
#[derive(Debug)]
enum Membership {
    /// No pod: cgroup `/containers/<id>`, files in its own bundle.
    Standalone,
    /// The sandbox of pod `<id>`, rooted at its bundle.
    Sandbox,
    /// A workload of pod `sid`, rooted at `root` (the sandbox's bundle).
    Workload {
        /// The sandbox's ID.
        sid: String,
        /// The pod's root.
        root: PathBuf,
    },
}

impl Membership {
    /// Joins the pod model: a sandbox registers its pod and makes its directories; a workload
    /// is checked (hcsshim: no hostname of its own) and joins a pod that must exist.
    fn enter(host: &Host, kind: &Kind, id: &str, bundle: &Path, spec: &Spec) -> Result<Self, GcsError> {
        let refuse = |reason: String| GcsError::Pod {
            id: id.to_owned(),
            reason,
        };
        match kind {
            Kind::Standalone => Ok(Self::Standalone),
            Kind::Sandbox => {
                host.pods.add(id, bundle).map_err(refuse)?;
                if let Err(e) = pod::make_dirs(bundle) {
                    host.pods.remove(id);
                    return Err(refuse(e));
                }
                Ok(Self::Sandbox)
            }
            Kind::Workload(sid) => {
                if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
                    return Err(refuse(format!(
                        "workload container must not change hostname: {h}"
                    )));
                }
                let root = host.pods.join(sid, id).map_err(refuse)?;
                Ok(Self::Workload {
                    sid: sid.clone(),
                    root,
                })
            }
        }
    }

    /// The container's cgroup.
    fn cgroup(&self, id: &str) -> String {
        match self {
            Self::Standalone => spec::cgroup_path(id),
            Self::Sandbox => pod::cgroup_path(id, id),
            Self::Workload { sid, .. } => pod::cgroup_path(sid, id),
        }
    }

    /// Where tee logs go (`<root>/logs/`).
    fn root<'a>(&'a self, bundle: &'a Path) -> &'a Path {
        match self {
            Self::Standalone | Self::Sandbox => bundle,
            Self::Workload { root, .. } => root,
        }
    }

    /// Undoes [`Membership::enter`] after a failed Create.
    fn undo(&self, host: &Host, id: &str, bundle: &Path) {
        match self {
            Self::Standalone => {}
            Self::Sandbox => {
                pod::remove_dirs(bundle);
                pod::remove_pod_cgroup(Path::new(CGROUP_ROOT), id);
                host.pods.remove(id);
            }
            Self::Workload { sid, .. } => host.pods.leave(sid, id),
        }
    }
}

/// Where the UVM's cgroup file system is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The whole Create, after the ID was reserved.
pub async fn create(host: &Arc<Host>, base: &RequestBase, cfg: &ContainerConfig) -> Result<(), GcsError> {
    let id = base.container_id.as_str();
    let spec = cfg
        .oci_specification
        .clone()
        .ok_or_else(|| invalid(id, "OciSpecification is missing"))?;
    let bundle = PathBuf::from(&cfg.oci_bundle_path);
    if !bundle.is_absolute() {
        return Err(invalid(id, format!("OciBundlePath {bundle:?} is not absolute")));
    }
    check_bundle(&cfg.oci_bundle_path)?;
    let kind = spec::kind(&spec).map_err(|reason| GcsError::Pod {
        id: id.to_owned(),
        reason,
    })?;
    let net = network_plan(host, &spec, &kind).await?;
    let member = Membership::enter(host, &kind, id, &bundle, &spec)?;
    let result = create_member(host, base, spec, &bundle, &member, net).await;
    if result.is_err() {
        member.undo(host, id, &bundle);
    }
    result
}

/// Create for a container whose place in the pod model is settled.
async fn create_member(
    host: &Arc<Host>,
    base: &RequestBase,
    mut spec: Spec,
    bundle: &Path,
    member: &Membership,
    net: Option<NetworkPlan>,
) -> Result<(), GcsError> {
    let exec = host.executor()?.clone();
    let id = base.container_id.as_str();
    std::fs::create_dir_all(bundle).map_err(io(format!("create {}", bundle.display())))?;
    let pod_err = |reason: String| GcsError::Pod {
        id: id.to_owned(),
        reason,
    };
    // The `/etc` files: written by sandboxes and standalone containers, bind-mounted by
    // standalone containers and workloads (hcsshim mounts none into the sandbox itself).
    let files_dir = match member {
        Membership::Standalone | Membership::Sandbox => {
            let dns = match &net {
                Some(n) => host.networks.dns(&n.ns).await,
                None => Default::default(),
            };
            write_etc_files(bundle, &spec, id, &dns)?;
            matches!(member, Membership::Standalone).then(|| bundle.to_path_buf())
        }
        Membership::Workload { root, .. } => {
            pod::rewrite_mounts(&mut spec, root).map_err(pod_err)?;
            super::annotations::apply_workload_annotations(&mut spec).map_err(pod_err)?;
            Some(root.clone())
        }
    };
    let tee = pod::tee_log_path(&spec, member.root(bundle)).map_err(pod_err)?;
    spec::adjust(&mut spec, &member.cgroup(id), files_dir.as_deref()).map_err(|e| invalid(id, e))?;
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
    let built = build(&exec, id, bundle, &proc_dir, terminal).await;
    let (pid, spawned_at, stdio) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&proc_dir);
            return Err(e);
        }
    };
    let watch = host.reaper.watch(pid, spawned_at);
    if let Err(e) = after_build(host, id, member, &spec, net.as_ref(), pid).await {
        if let Err(d) = exec.zygote.delete(id).await {
            tracing::warn!(container_id = %id, error = %d, "cleaning up after a failed create");
        }
        let _ = std::fs::remove_dir_all(&proc_dir);
        return Err(e);
    }
    let c = Container::new(NewContainer {
        id: id.to_owned(),
        activity_id: base.activity_id.clone(),
        bundle: bundle.to_path_buf(),
        rootfs,
        owns_pid_ns: owns_pid_ns(&spec),
        sandbox_id: match member {
            Membership::Standalone => None,
            Membership::Sandbox => Some(id.to_owned()),
            Membership::Workload { sid, .. } => Some(sid.clone()),
        },
        tee_log: tee,
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

/// What follows the executor's create: the pod's resources on `/pods/<sid>` (a sandbox), then
/// the NICs moved into the init's namespace before Create answers (§6.6 step 4).
async fn after_build(
    host: &Host,
    id: &str,
    member: &Membership,
    spec: &Spec,
    net: Option<&NetworkPlan>,
    pid: ProcessId,
) -> Result<(), GcsError> {
    if matches!(member, Membership::Sandbox) {
        let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        pod::apply_pod_resources(Path::new(CGROUP_ROOT), id, res).map_err(|reason| GcsError::Pod {
            id: id.to_owned(),
            reason,
        })?;
    }
    if let Some(n) = net {
        host.networks
            .attach(&n.ns, n.create, id, pid, n.own_netns)
            .await?;
    }
    Ok(())
}

/// A sandbox's or standalone container's network namespace.
struct NetworkPlan {
    /// The namespace ID, lower-cased.
    ns: String,
    /// Create it if the host never added a NIC for it (standalone, or a sandbox with
    /// `skip-pod-networking`).
    create: bool,
    /// The container has a network namespace of its own (not one it joins by path).
    own_netns: bool,
}

/// What Create does about networking: a sandbox needs its namespace to exist already (the host
/// adds its NICs first; `0x80070490` otherwise, unless `io.microsoft.cri.skip-pod-networking`),
/// a standalone container gets or creates its own, a workload joins its sandbox's by path.
async fn network_plan(host: &Host, spec: &Spec, kind: &Kind) -> Result<Option<NetworkPlan>, GcsError> {
    let ns = spec::network_namespace(spec);
    let own_netns = spec::owns_netns(spec);
    match kind {
        Kind::Workload(_) => Ok(None),
        Kind::Standalone => Ok(Some(NetworkPlan {
            ns,
            create: true,
            own_netns,
        })),
        Kind::Sandbox => {
            let skip = spec::skip_pod_networking(spec);
            if !skip && !host.networks.exists(&ns).await {
                return Err(crate::network::NetworkError::NamespaceNotFound(ns).into());
            }
            Ok(Some(NetworkPlan {
                ns,
                create: skip,
                own_netns,
            }))
        }
    }
}

/// The executor's part of Create: the init exists (blocked until Start) with its stdio attached.
/// On failure nothing is left: the zygote sweeps a build that failed, and a container whose pty
/// never arrived (or whose zygote died midway) is deleted here.
async fn build(
    exec: &Executor,
    id: &str,
    bundle: &Path,
    proc_dir: &Path,
    terminal: bool,
) -> Result<(ProcessId, Instant, Attached), GcsError> {
    let mut prepared = Prepared::new(terminal, &proc_dir.join("init-console.sock"), [false; 3])?;
    let spawned_at = Instant::now();
    let created = exec
        .zygote
        .create(id, bundle, prepared.console_socket(), prepared.take_child_fds())
        .await;
    let attached = match created {
        Ok(pid) => prepared.attach().await.map(|a| (pid, a)),
        Err(e) => Err(e),
    };
    match attached {
        Ok((pid, a)) => Ok((pid, spawned_at, a)),
        Err(e) => {
            if let Err(d) = exec.zygote.delete(id).await {
                tracing::warn!(container_id = %id, error = %d, "cleaning up a failed create");
            }
            Err(e)
        }
    }
}

/// Init's exit: emulate `runc kill --all` without a PID namespace of its own, drain the relays,
/// publish the exit code, then send the one notification once a wait delivered it.
async fn watch_init(host: Arc<Host>, exec: Executor, c: Arc<Container>, watch: crate::reaper::ExitWatch) {
    let status = watch.wait().await.unwrap_or(ExitStatus::Exited(255));
    c.init.mark_reaped();
    c.set_exited();
    tracing::info!(container_id = %c.id, pid = c.init.pid, %status, "container init exited");
    if !c.owns_pid_ns {
        if let Err(e) = exec.zygote.kill(&c.id, libc::SIGKILL, true).await {
            tracing::warn!(container_id = %c.id, error = %e, "kill --all after init exit");
        }
    }
    if let Some(relays) = c.take_init_relays() {
        relays.finish().await;
    }
    c.init.publish(crate::process::table::exit_code(status));
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
