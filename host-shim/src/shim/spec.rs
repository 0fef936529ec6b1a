//! containerd's OCI spec (`<bundle>/config.json`) made into what the guest runs, the way
//! hcsshim's host prepares a spec for its guest (docs/gcs-reference.md §4.5) plus what a spec
//! written for the host needs inside a UVM:
//! * the root is the Plan 9 share of the host rootfs (or the pause root of a sandbox);
//! * namespace *paths* name host namespaces (CRI points workloads at `/proc/<pid>/ns/…` of the
//!   pid we report): they are dropped, and a workload joins its sandbox's namespaces in the UVM
//!   by the sandbox init's guest PID;
//! * bind mounts of host paths become Plan 9 shares (a file's parent directory is shared and the
//!   file bound from it); CRI's `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` binds are
//!   dropped because the guest writes those for the pod from its NICs (§6.8), and the
//!   sandbox's `/dev/shm` bind becomes a tmpfs;
//! * hooks, AppArmor and SELinux labels (host facilities) are dropped.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use rgcs_client::spec::{
    adjust_like_hcsshim, join_namespaces, set_network_namespace, CONTAINER_TYPE, SANDBOX_ID,
};

use super::ShimError;

/// A task's place, from CRI's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A pod's sandbox: boots the UVM.
    Sandbox,
    /// A container of pod `sandbox`.
    Workload {
        /// The sandbox's task ID.
        sandbox: String,
    },
    /// No CRI annotations: a UVM of its own.
    Standalone,
}

/// The task's kind.
pub fn kind(spec: &Spec) -> Kind {
    let note = |k: &str| spec.annotations().as_ref().and_then(|a| a.get(k)).cloned();
    match note(CONTAINER_TYPE).as_deref() {
        Some("sandbox") => Kind::Sandbox,
        Some("container") => Kind::Workload {
            sandbox: note(SANDBOX_ID).unwrap_or_default(),
        },
        _ => Kind::Standalone,
    }
}

/// How the task's network is to be made, from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetPlan {
    /// No network namespace entry: the host's network, which in a UVM means a NAT'd NIC.
    HostLike,
    /// A new, empty namespace: `lo` only.
    Empty,
    /// The namespace at this path (CNI's, for a CRI sandbox).
    Netns(PathBuf),
}

/// The network the spec asks for.
pub fn net_plan(spec: &Spec) -> NetPlan {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| n.iter().find(|n| n.typ() == LinuxNamespaceType::Network).cloned());
    match ns {
        None => NetPlan::HostLike,
        Some(n) => match n.path() {
            Some(p) if !p.as_os_str().is_empty() => NetPlan::Netns(p.clone()),
            _ => NetPlan::Empty,
        },
    }
}

/// A host path a bind mount needs in the UVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The index of the mount in the spec.
    pub index: usize,
    /// The host directory to share.
    pub dir: PathBuf,
    /// The file in it to bind (a file bind), or `None` (the directory itself).
    pub file: Option<String>,
    /// Read-only.
    pub read_only: bool,
}

const GUEST_WRITTEN: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Adapts a workload's or standalone task's spec (see the module docs). `rootfs` is the guest
/// path of its root, `sandbox_pid` the sandbox init's guest PID for a workload, `network_ns`
/// the guest network namespace ID its NICs were added under. Returns the host binds whose
/// sources [`set_bind_source`] must fill in.
pub fn adapt(
    spec: &mut Spec,
    rootfs: &str,
    terminal: bool,
    sandbox_pid: Option<u32>,
    network_ns: &str,
) -> Result<Vec<HostBind>, ShimError> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from(rootfs));
    spec.set_root(Some(root));
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| ShimError::Invalid("the spec has no process".into()))?;
    process.set_terminal(Some(terminal));
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    spec.set_process(Some(process));
    // PID namespace shared with the sandbox (CRI NamespaceMode POD) when containerd pointed it
    // at another process's.
    let mut share_pid = false;
    if let Some(linux) = spec.linux_mut() {
        linux.set_mount_label(None);
        if let Some(mut ns) = linux.namespaces().clone() {
            for n in &mut ns {
                if n.path().is_some() {
                    share_pid |= n.typ() == LinuxNamespaceType::Pid;
                    n.set_path(None);
                }
            }
            if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network) {
                // "Host" networking: the container gets a namespace of its own, with the NIC.
                let mut n = oci_spec::runtime::LinuxNamespace::default();
                n.set_typ(LinuxNamespaceType::Network);
                ns.push(n);
            }
            linux.set_namespaces(Some(ns));
        }
    }
    if let Some(pid) = sandbox_pid {
        join_namespaces(spec, pid, share_pid);
        spec.set_hostname(None);
    }
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        let host_source = m.source().as_ref().filter(|s| s.is_absolute()).cloned();
        if !is_bind(&m) {
            mounts.push(m);
            continue;
        }
        let Some(source) = host_source else {
            mounts.push(m);
            continue;
        };
        if GUEST_WRITTEN.contains(&dest.as_str()) {
            continue;
        }
        if dest == "/dev/shm" {
            let mut shm = Mount::default();
            shm.set_destination(PathBuf::from("/dev/shm"));
            shm.set_typ(Some("tmpfs".into()));
            shm.set_source(Some(PathBuf::from("shm")));
            shm.set_options(Some(
                ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                    .map(String::from)
                    .to_vec(),
            ));
            mounts.push(shm);
            continue;
        }
        let meta = std::fs::metadata(&source)
            .map_err(|e| ShimError::io(format!("bind mount source {}", source.display()), e))?;
        let read_only = m.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "ro"));
        let (dir, file) = if meta.is_dir() {
            (source.clone(), None)
        } else {
            let parent = source.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| ShimError::Invalid(format!("bind mount source {}", source.display())))?;
            (parent, Some(name))
        };
        binds.push(HostBind {
            index: mounts.len(),
            dir,
            file,
            read_only,
        });
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    adjust_like_hcsshim(spec);
    set_network_namespace(spec, network_ns);
    Ok(binds)
}

/// Points bind `b`'s mount at the guest directory its host directory was shared at.
pub fn set_bind_source(spec: &mut Spec, b: &HostBind, guest_dir: &str) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if let Some(m) = mounts.get_mut(b.index) {
        let source = match &b.file {
            Some(f) => format!("{guest_dir}/{f}"),
            None => guest_dir.to_owned(),
        };
        m.set_source(Some(PathBuf::from(source)));
    }
    spec.set_mounts(Some(mounts));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cri_workload(dir: &Path) -> Spec {
        let file = dir.join("termination-log");
        std::fs::write(&file, "").unwrap();
        let v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "cri-containerd.apparmor.d"},
            "hostname": "h",
            "annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"},
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind", "rw"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": dir, "options": ["rbind", "ro"]},
                {"destination": "/dev/termination-log", "type": "bind", "source": file, "options": ["rbind", "rw"]}
            ],
            "linux": {
                "cgroupsPath": "/kubepods/x",
                "namespaces": [
                    {"type": "pid", "path": "/proc/42/ns/pid"},
                    {"type": "network", "path": "/proc/42/ns/net"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "uts", "path": "/proc/42/ns/uts"},
                    {"type": "mount"}
                ]
            }
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_cri_workload_is_made_fit_for_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = cri_workload(dir.path());
        assert_eq!(
            kind(&spec),
            Kind::Workload {
                sandbox: "pod1".into()
            }
        );
        let binds = adapt(&mut spec, "/run/gcs/c/c1/rootfs", false, Some(7), "pod1").unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/gcs/c/c1/rootfs")
        );
        assert!(spec.hooks().is_none());
        assert!(spec.hostname().is_none());
        assert!(spec.process().as_ref().unwrap().apparmor_profile().is_none());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.cgroups_path().is_none());
        let paths: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.path().as_ref().map(|p| p.display().to_string()))
            .collect();
        assert_eq!(
            paths,
            [
                Some("/proc/7/ns/pid".into()),
                Some("/proc/7/ns/net".into()),
                Some("/proc/7/ns/ipc".into()),
                Some("/proc/7/ns/uts".into()),
                None
            ]
        );
        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dests, ["/proc", "/dev/shm", "/data", "/dev/termination-log"]);
        assert_eq!(mounts[1].typ().as_deref(), Some("tmpfs"));
        assert_eq!(binds.len(), 2);
        assert_eq!(
            (binds[0].index, binds[0].read_only, binds[0].file.clone()),
            (2, true, None)
        );
        assert_eq!(binds[1].file.as_deref(), Some("termination-log"));
        set_bind_source(&mut spec, &binds[1], "/run/gcs/c/c1/mounts/m1");
        assert_eq!(
            spec.mounts().as_ref().unwrap()[3].source().as_ref().unwrap(),
            Path::new("/run/gcs/c/c1/mounts/m1/termination-log")
        );
        let ns = spec.windows().as_ref().unwrap().network().as_ref().unwrap();
        assert_eq!(ns.network_namespace().as_deref(), Some("pod1"));
    }

    #[test]
    fn networks_follow_the_spec() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "network"}]}
        }))
        .unwrap();
        assert_eq!(net_plan(&spec), NetPlan::Empty);
        assert_eq!(kind(&spec), Kind::Standalone);
        let l = spec.linux_mut().as_mut().unwrap();
        l.set_namespaces(Some(vec![]));
        assert_eq!(net_plan(&spec), NetPlan::HostLike);
        adapt(&mut spec, "/r", true, None, "solo").unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
        let missing = serde_json::json!({"ociVersion": "1.0.2", "mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/rgcs", "options": ["rbind"]}], "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
        let mut spec: Spec = serde_json::from_value(missing).unwrap();
        assert!(adapt(&mut spec, "/r", false, None, "x").is_err());
    }
}
