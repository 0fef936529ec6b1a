//! Pods (docs/gcs-reference.md §6.6, `docs/pods.md`): a CRI sandbox container and the workload
//! containers that join it. The sandbox's bundle is the pod's root: it holds the `/etc` files
//! every member bind-mounts, `sandboxMounts/` and `sandboxTmpfsMounts/` (shared volumes),
//! `hugepages/` and `logs/` (tee logs). Workloads name their sandbox by annotation and may
//! reach those directories through mount sources `sandbox://`, `sandbox-tmp://` and
//! `hugepages://`, and UVM paths through `uvm://`; every rewritten source must stay inside its
//! base, lexically and through no symlink. Pod cgroups are `/pods/<sid>/<id>`, with the
//! sandbox's resources on `/pods/<sid>` for the pod as a whole (ADR-0009).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use libcontainer::oci_spec::runtime::{LinuxResources, Spec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Shared volumes of the pod (`sandbox://`), a self-bind made rshared.
pub const SANDBOX_MOUNTS: &str = "sandboxMounts";
/// tmpfs-backed shared volumes (`sandbox-tmp://`).
pub const SANDBOX_TMPFS_MOUNTS: &str = "sandboxTmpfsMounts";
/// hugetlbfs mounts (`hugepages://<size>/…`).
pub const HUGEPAGES: &str = "hugepages";
/// Tee logs (`io.microsoft.container.lcow.tee-log-path`).
pub const LOGS: &str = "logs";
/// The cgroup parent of pods.
pub const POD_CGROUP_PARENT: &str = "/pods";

/// Annotation: init's stdout and stderr are also appended to `<root>/logs/<path>`.
pub const TEE_LOG_PATH: &str = "io.microsoft.container.lcow.tee-log-path";

/// The live pods: each sandbox's root and its workloads.
#[derive(Debug, Default)]
pub struct Pods {
    inner: Mutex<HashMap<String, Pod>>,
}

#[derive(Debug)]
struct Pod {
    root: PathBuf,
    workloads: BTreeSet<String>,
}

impl Pods {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pod>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new pod for sandbox `sid` rooted at `root`.
    pub fn add(&self, sid: &str, root: &Path) -> Result<(), String> {
        let mut pods = self.lock();
        if pods.contains_key(sid) {
            return Err(format!("pod {sid} already exists"));
        }
        pods.insert(
            sid.to_owned(),
            Pod {
                root: root.to_path_buf(),
                workloads: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Forgets pod `sid` (its sandbox is gone).
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Makes `id` a workload of `sid`; the pod's root.
    pub fn join(&self, sid: &str, id: &str) -> Result<PathBuf, String> {
        let mut pods = self.lock();
        let pod = pods
            .get_mut(sid)
            .ok_or_else(|| format!("pod {sid} does not exist for workload container {id}"))?;
        if !pod.workloads.insert(id.to_owned()) {
            return Err(format!("container {id} already registered with pod {sid}"));
        }
        Ok(pod.root.clone())
    }

    /// `id` leaves `sid`.
    pub fn leave(&self, sid: &str, id: &str) {
        if let Some(p) = self.lock().get_mut(sid) {
            p.workloads.remove(id);
        }
    }

    /// The workloads of `sid` still registered.
    pub fn workloads(&self, sid: &str) -> Vec<String> {
        self.lock()
            .get(sid)
            .map(|p| p.workloads.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A container's cgroup: `/pods/<sid>/<id>` in a pod.
pub fn cgroup_path(sid: &str, id: &str) -> String {
    format!("{POD_CGROUP_PARENT}/{sid}/{id}")
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

fn errno_ctx(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

/// Bind `dir` onto itself and make it recursively shared, so mounts made under it later reach
/// every container that bind-mounted it.
fn make_rshared(dir: &Path) -> Result<(), String> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(errno_ctx(format!("bind {} onto itself", dir.display())))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno_ctx(format!("make {} rshared", dir.display())))
}

/// The sandbox's directories under its root. On failure what was made is undone.
pub fn make_dirs(root: &Path) -> Result<(), String> {
    let result = (|| {
        for d in [SANDBOX_MOUNTS, SANDBOX_TMPFS_MOUNTS, HUGEPAGES] {
            let dir = root.join(d);
            std::fs::create_dir_all(&dir).map_err(io_ctx(format!("create {}", dir.display())))?;
            if d == SANDBOX_TMPFS_MOUNTS {
                mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::empty(), None::<&str>)
                    .map_err(errno_ctx(format!("mount tmpfs on {}", dir.display())))?;
            }
            make_rshared(&dir)?;
        }
        let logs = root.join(LOGS);
        std::fs::create_dir_all(&logs).map_err(io_ctx(format!("create {}", logs.display())))?;
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777))
            .map_err(io_ctx(format!("chmod {}", logs.display())))
    })();
    if result.is_err() {
        remove_dirs(root);
    }
    result
}

/// Unmounts everything under the sandbox's directories (deepest first, detached) and removes
/// them. Errors are logged: the caller is tearing down.
pub fn remove_dirs(root: &Path) {
    let bases: Vec<PathBuf> = [SANDBOX_MOUNTS, SANDBOX_TMPFS_MOUNTS, HUGEPAGES]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = crate::storage::mount::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| bases.iter().any(|b| m.starts_with(b)))
        .collect();
    // Later mounts stack on earlier ones: undo in reverse order of appearance.
    points.reverse();
    for p in &points {
        if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL {
                tracing::warn!(path = %p.display(), error = %e, "unmount a sandbox directory");
            }
        }
    }
    for d in bases.iter().chain(std::iter::once(&root.join(LOGS))) {
        if let Err(e) = std::fs::remove_dir_all(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %d.display(), error = %e, "remove a sandbox directory");
            }
        }
    }
}

/// `base` joined with the relative path `rest`, refused when it leaves `base` lexically or
/// through a symlink that exists under `base` (hcsshim checks only a string prefix).
pub fn resolve_under(base: &Path, rest: &str, what: &str) -> Result<PathBuf, String> {
    let refuse = |why: &str| format!("mount source {what}{rest:?} {why}");
    if rest.chars().any(char::is_control) || rest.contains([',', ':']) {
        return Err(refuse("has a control character, ',' or ':'"));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(rest).components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(refuse("leaves its base directory"));
                }
            }
            Component::Prefix(_) => return Err(refuse("is not a path")),
        }
    }
    let mut out = base.to_path_buf();
    for p in parts {
        out.push(p);
        if std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(refuse("goes through a symlink"));
        }
    }
    Ok(out)
}

/// Creates `dir` (and parents) with mode 0777, as hcsshim does for volume directories.
fn mkdir_0777(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(io_ctx(format!("create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .map_err(io_ctx(format!("chmod {}", dir.display())))
}

/// The workload's mount sources rewritten against the pod's `root` (hcsshim's order:
/// `sandbox://`, `sandbox-tmp://`, `hugepages://`, `uvm://`).
pub fn rewrite_mounts(spec: &mut Spec, root: &Path) -> Result<(), String> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    for m in &mut mounts {
        if m.destination()
            .to_str()
            .is_some_and(|d| d.starts_with("blockdev://"))
        {
            return Err(format!(
                "mount destination {:?}: blockdev:// mounts are not supported by this guest",
                m.destination()
            ));
        }
        let Some(src) = m.source().as_ref().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let new = if let Some(rest) = src.strip_prefix("sandbox://") {
            let p = resolve_under(&root.join(SANDBOX_MOUNTS), rest, "sandbox://")?;
            mkdir_0777(&p)?;
            p
        } else if let Some(rest) = src.strip_prefix("sandbox-tmp://") {
            let p = resolve_under(&root.join(SANDBOX_TMPFS_MOUNTS), rest, "sandbox-tmp://")?;
            mkdir_0777(&p)?;
            p
        } else if let Some(rest) = src.strip_prefix("hugepages://") {
            hugepages(root, rest)?
        } else if let Some(rest) = src.strip_prefix("uvm://") {
            let p = resolve_under(Path::new("/"), rest, "uvm://")?;
            std::fs::metadata(&p)
                .map_err(io_ctx(format!("could not open uVM mount target {}", p.display())))?;
            p
        } else {
            continue;
        };
        m.set_source(Some(new));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// `hugepages://<size>/<rest>`: a hugetlbfs of that page size, mounted when first named.
fn hugepages(root: &Path, rest: &str) -> Result<PathBuf, String> {
    let p = resolve_under(&root.join(HUGEPAGES), rest, "hugepages://")?;
    let size = Path::new(rest)
        .components()
        .find_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| format!("hugepages://{rest} names no page size (hugepages://2M/…)"))?;
    if !p.exists() {
        mkdir_0777(&p)?;
        mount(
            Some("none"),
            &p,
            Some("hugetlbfs"),
            MsFlags::empty(),
            Some(format!("pagesize={size}").as_str()),
        )
        .map_err(errno_ctx(format!(
            "mount hugetlbfs (pagesize={size}) on {}",
            p.display()
        )))?;
    }
    Ok(p)
}

/// `<root>/logs/<path>` for the tee-log annotation, refused outside `logs/`; parents are made.
pub fn tee_log_path(spec: &Spec, root: &Path) -> Result<Option<PathBuf>, String> {
    let Some(p) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(TEE_LOG_PATH))
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let path = resolve_under(&root.join(LOGS), p, "tee-log-path ")?;
    if path == root.join(LOGS) {
        return Err(format!("log path {p:?} names the log directory itself"));
    }
    if let Some(parent) = path.parent() {
        mkdir_0777(parent)?;
    }
    Ok(Some(path))
}

/// The sandbox's resources applied to `/pods/<sid>` (cgroup v2): memory, CPU and PIDs, so the
/// pod as a whole is bounded whatever its workloads ask for.
pub fn apply_pod_resources(
    cgroup_root: &Path,
    sid: &str,
    res: Option<&LinuxResources>,
) -> Result<(), String> {
    let dir = cgroup_root
        .join(POD_CGROUP_PARENT.trim_start_matches('/'))
        .join(sid);
    let Some(res) = res else { return Ok(()) };
    let write = |file: &str, value: String| {
        let p = dir.join(file);
        std::fs::write(&p, &value).map_err(io_ctx(format!("write {value:?} to {}", p.display())))
    };
    if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0) {
        write("memory.max", limit.to_string())?;
    }
    if let Some(cpu) = res.cpu() {
        if let Some(quota) = cpu.quota().filter(|q| *q > 0) {
            let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
            write("cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            // runc's conversion of cgroup v1 shares to a v2 weight.
            let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write("cpu.weight", weight.to_string())?;
        }
    }
    if let Some(limit) = res.pids().as_ref().map(|p| p.limit()).filter(|l| *l > 0) {
        write("pids.max", limit.to_string())?;
    }
    Ok(())
}

/// Removes `/pods/<sid>` once its last member's cgroup is gone.
pub fn remove_pod_cgroup(cgroup_root: &Path, sid: &str) {
    let dir = cgroup_root
        .join(POD_CGROUP_PARENT.trim_start_matches('/'))
        .join(sid);
    if let Err(e) = std::fs::remove_dir(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(cgroup = %dir.display(), error = %e, "remove the pod cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use libcontainer::oci_spec::runtime::MountBuilder;

    use super::*;

    #[test]
    fn sources_stay_under_their_base() {
        let base = std::env::temp_dir().join(format!("rgcs-pod-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
        assert_eq!(
            resolve_under(&base, "a/b", "sandbox://").unwrap(),
            base.join("a/b")
        );
        assert_eq!(
            resolve_under(&base, "/a/./c/../b", "sandbox://").unwrap(),
            base.join("a/b")
        );
        for bad in [
            "../x",
            "a/../../x",
            "../../etc",
            "link/passwd",
            "a\nb",
            "a,b",
            "a:b",
        ] {
            assert!(resolve_under(&base, bad, "sandbox://").is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn blockdev_destinations_are_refused_clearly() {
        let mut spec = Spec::default();
        let m = MountBuilder::default()
            .destination("blockdev:///dev/xvda")
            .source("/x")
            .build()
            .unwrap();
        spec.set_mounts(Some(vec![m]));
        let e = rewrite_mounts(&mut spec, Path::new("/run/gcs/c/p")).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn pods_track_their_workloads() {
        let pods = Pods::default();
        assert!(pods.join("p", "w").unwrap_err().contains("pod p does not exist"));
        pods.add("p", Path::new("/run/gcs/c/p")).unwrap();
        assert!(pods.add("p", Path::new("/x")).is_err());
        assert_eq!(pods.join("p", "w").unwrap(), Path::new("/run/gcs/c/p"));
        assert!(pods.join("p", "w").is_err());
        assert_eq!(pods.workloads("p"), ["w"]);
        pods.leave("p", "w");
        assert!(pods.workloads("p").is_empty());
        pods.remove("p");
        assert!(pods.join("p", "w").is_err());
    }

    #[test]
    fn tee_logs_stay_in_logs() {
        let root = std::env::temp_dir().join(format!("rgcs-tee-{}", std::process::id()));
        let mut spec = Spec::default();
        let mut ann = std::collections::HashMap::new();
        for (p, ok) in [("c/init.log", true), ("../x", false), ("", true), (".", false)] {
            ann.insert(TEE_LOG_PATH.to_owned(), p.to_owned());
            spec.set_annotations(Some(ann.clone()));
            assert_eq!(tee_log_path(&spec, &root).is_ok(), ok, "{p}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
