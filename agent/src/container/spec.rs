//! What the guest changes in the host's OCI spec before handing it to libcontainer (docs/gcs-reference.md
//! §6.6, §6.7): the cgroup path, the `/etc/{hostname,hosts,resolv.conf}` files and their bind
//! mounts, the rlimit annotation, the resolved user. Seccomp profiles pass through: libcontainer
//! is built with `libseccomp` and enforces them.
//! Pure functions over `Spec`, plus the rendering of the three files.

use std::path::Path;

use libcontainer::oci_spec::runtime::{
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process, Spec, User,
};

use super::user::Resolved;

/// Annotation: the CRI container type (`sandbox` / `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation: the workload's sandbox ID.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation: `"soft;hard"` RLIMIT_CORE.
pub const RLIMIT_CORE: &str = "io.microsoft.lcow.rlimitcore";
/// Parent of every container cgroup (docs/adr/0004-executor.md: one layout, hcsshim stable).
pub const CGROUP_PARENT: &str = "/containers";
/// The files the guest writes for sandbox and standalone containers.
pub const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Which model hcsshim would pick for this spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No CRI annotations.
    Standalone,
    /// A CRI pod sandbox.
    Sandbox,
    /// A CRI workload container in this sandbox.
    Workload(String),
}

/// The container's kind, from its annotations.
pub fn kind(spec: &Spec) -> Result<Kind, String> {
    let ann = spec.annotations().clone().unwrap_or_default();
    match ann.get(CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox") => Ok(Kind::Sandbox),
        Some("container") => match ann.get(SANDBOX_ID).map(String::as_str).unwrap_or_default() {
            "" => Err(format!("unsupported {SANDBOX_ID:?}: ''")),
            sid => Ok(Kind::Workload(sid.to_owned())),
        },
        None => Ok(Kind::Standalone),
        Some(other) => Err(format!("unsupported {CONTAINER_TYPE:?}: {other:?}")),
    }
}

/// Annotation: a sandbox without a network namespace from the host is allowed (hcsshim HEAD).
pub const SKIP_POD_NETWORKING: &str = "io.microsoft.cri.skip-pod-networking";

/// `windows.network.networkNamespace`, lower-cased ("" when absent), as hcsshim keys namespaces.
pub fn network_namespace(spec: &Spec) -> String {
    spec.windows()
        .as_ref()
        .and_then(|w| w.network().as_ref())
        .and_then(|n| n.network_namespace().clone())
        .unwrap_or_default()
        .to_lowercase()
}

/// Whether the container gets a network namespace of its own (a `network` entry without a path).
pub fn owns_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == libcontainer::oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_none()
            })
        })
}

/// `io.microsoft.cri.skip-pod-networking=true` (any case).
pub fn skip_pod_networking(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SKIP_POD_NETWORKING))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The cgroup of a standalone container.
pub fn cgroup_path(id: &str) -> String {
    format!("{CGROUP_PARENT}/{id}")
}

/// `/etc/hosts` for `hostname` (hcsshim `generateEtcHostsContent`).
pub fn render_hosts(hostname: &str) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    if !hostname.is_empty() {
        out.push_str("127.0.0.1 ");
        out.push_str(hostname);
        if let Some((short, _)) = hostname.split_once('.') {
            out.push(' ');
            out.push_str(short);
        }
        out.push('\n');
    }
    out.push_str("\n::1 ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n");
    out
}

/// `resolv.conf` from DNS suffixes and servers (§6.8); empty when there is neither.
pub fn render_resolv_conf(suffixes: &[&str], servers: &[&str]) -> Result<String, String> {
    let mut search: Vec<String> = Vec::new();
    for s in suffixes.iter().map(|s| s.to_lowercase()) {
        if !s.is_empty() && !search.contains(&s) {
            search.push(s);
        }
    }
    if search.len() > 6 {
        return Err(format!(
            "{} DNS search domains, at most 6 are allowed",
            search.len()
        ));
    }
    let mut out = String::new();
    if !search.is_empty() {
        out = format!("search {}\n", search.join(" "));
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    Ok(out)
}

/// A valid hostname (hcsshim HEAD: `^[a-zA-Z0-9_\-\.]{0,255}$`).
pub fn valid_hostname(h: &str) -> bool {
    h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The spec changes of §6.6/§6.7 that need no file system: the cgroup path, the bind mounts of the
/// three `/etc` files from `files_dir` (unless the spec mounts them already), RLIMIT_CORE from
/// the annotation.
pub fn adjust(spec: &mut Spec, cgroup: &str, files_dir: Option<&Path>) -> Result<(), String> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(cgroup.into()));
    spec.set_linux(Some(linux));
    if let Some(dir) = files_dir {
        let read_only = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for f in ETC_FILES {
            let dest = format!("/etc/{f}");
            if mounts.iter().any(|m| m.destination() == Path::new(&dest)) {
                continue;
            }
            mounts.push(bind_mount(&dir.join(f), &dest, read_only)?);
        }
        spec.set_mounts(Some(mounts));
    }
    let ann = spec.annotations().clone().unwrap_or_default();
    if let Some(v) = ann.get(RLIMIT_CORE) {
        let (soft, hard) = v
            .split_once(';')
            .and_then(|(s, h)| Some((s.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
            .ok_or_else(|| format!("bad {RLIMIT_CORE} annotation {v:?}: expected \"soft;hard\""))?;
        let mut process = spec.process().clone().unwrap_or_default();
        let mut rl = process.rlimits().clone().unwrap_or_default();
        rl.retain(|r| r.typ() != PosixRlimitType::RlimitCore);
        rl.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitCore)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(|e| e.to_string())?,
        );
        process.set_rlimits(Some(rl));
        spec.set_process(Some(process));
    }
    Ok(())
}

fn bind_mount(source: &Path, dest: &str, read_only: bool) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "bind".to_owned(),
            if read_only { "ro" } else { "rw" }.to_owned(),
        ])
        .build()
        .map_err(|e| e.to_string())
}

/// Applies a resolved user to a process (and clears the name, which libcontainer ignores).
pub fn set_user(process: &mut Process, r: &Resolved) {
    let mut user = User::default();
    user.set_uid(r.uid);
    user.set_gid(r.gid);
    if !r.additional_gids.is_empty() {
        user.set_additional_gids(Some(r.additional_gids.clone()));
    }
    user.set_umask(process.user().umask());
    process.set_user(user);
}

/// The username to resolve for a process: its own, or none.
pub fn username(process: &Process) -> Option<String> {
    process.user().username().clone().filter(|u| !u.is_empty())
}

/// An exec inherits the container's rlimits when it names none (§6.7).
pub fn inherit_rlimits(exec: &mut Process, container: &Spec) {
    if exec.rlimits().as_ref().is_none_or(Vec::is_empty) {
        if let Some(p) = container.process() {
            exec.set_rlimits(p.rlimits().clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hosts_and_resolv() {
        let h = render_hosts("web.example.com");
        assert!(
            h.starts_with("127.0.0.1 localhost\n127.0.0.1 web.example.com web\n\n::1 "),
            "{h}"
        );
        assert!(h.ends_with("ff02::2 ip6-allrouters\n"));
        assert!(!render_hosts("").contains("127.0.0.1 \n"));
        assert_eq!(
            render_resolv_conf(&["A.com", "a.com", "b.org"], &["10.0.0.1", "10.0.0.2"]).unwrap(),
            "search a.com b.org\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n"
        );
        assert_eq!(render_resolv_conf(&[], &[]).unwrap(), "");
        assert!(render_resolv_conf(&["a", "b", "c", "d", "e", "f", "g"], &[]).is_err());
        assert!(valid_hostname("a-b_c.d") && !valid_hostname("a b"));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&spec("{\"ociVersion\":\"1.0\"}")), Ok(Kind::Standalone));
        let s = spec(
            r#"{"ociVersion":"1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"p1"}}"#,
        );
        assert_eq!(kind(&s), Ok(Kind::Workload("p1".into())));
        let s = spec(r#"{"ociVersion":"1.0","annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#);
        assert_eq!(kind(&s), Ok(Kind::Sandbox));
        // hcsshim: a workload without its sandbox ID, or an unknown type, is refused.
        let s =
            spec(r#"{"ociVersion":"1.0","annotations":{"io.kubernetes.cri.container-type":"container"}}"#);
        assert!(kind(&s).unwrap_err().contains("sandbox-id"));
        let s = spec(r#"{"ociVersion":"1.0","annotations":{"io.kubernetes.cri.container-type":"pod"}}"#);
        assert!(kind(&s).unwrap_err().contains("container-type"));
    }

    #[test]
    fn adjust_sets_cgroup_mounts_and_rlimit() {
        let mut s = spec(
            r#"{"ociVersion":"1.0","root":{"path":"/r","readonly":true},"process":{"cwd":"/","user":{"uid":0,"gid":0}},
                "mounts":[{"destination":"/etc/hosts","type":"bind","source":"/x","options":["bind"]}],
                "annotations":{"io.microsoft.lcow.rlimitcore":"10;20"}}"#,
        );
        adjust(&mut s, &cgroup_path("c1"), Some(Path::new("/b"))).unwrap();
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/containers/c1")));
        let mounts = s.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dests, ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]);
        assert_eq!(mounts[1].source().as_deref(), Some(Path::new("/b/hostname")));
        assert!(mounts[1].options().as_ref().unwrap().contains(&"ro".to_owned()));
        let rl = s.process().as_ref().unwrap().rlimits().clone().unwrap();
        assert_eq!((rl[0].soft(), rl[0].hard()), (10, 20));
    }

    #[test]
    fn seccomp_passes_through_to_libcontainer() {
        let mut s = spec(r#"{"ociVersion":"1.0","linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#);
        adjust(&mut s, &cgroup_path("c1"), None).unwrap();
        assert!(s.linux().as_ref().unwrap().seccomp().is_some());
    }

    #[test]
    fn exec_inherits_rlimits_and_gets_user() {
        let c = spec(
            r#"{"ociVersion":"1.0","process":{"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","soft":5,"hard":6}]}}"#,
        );
        let mut p: Process =
            serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0,"username":"bob"}}"#).unwrap();
        inherit_rlimits(&mut p, &c);
        assert_eq!(p.rlimits().as_ref().unwrap()[0].soft(), 5);
        assert_eq!(username(&p).as_deref(), Some("bob"));
        set_user(
            &mut p,
            &Resolved {
                uid: 7,
                gid: 8,
                additional_gids: vec![9],
            },
        );
        assert_eq!((p.user().uid(), p.user().gid()), (7, 8));
        assert_eq!(username(&p), None);
    }
}
