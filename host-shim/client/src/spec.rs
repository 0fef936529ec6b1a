//! What the host sends to create a container and to start processes in it, built the way
//! hcsshim's host builds it (docs/gcs-reference.md §4.5, §4.7).
//!
//! [`ContainerSpec`] produces the `ContainerConfig` of a standalone container: schema 2.1,
//! `OciBundlePath` `/run/gcs/c/<id>`, `ScratchDirPath` `/run/gcs/c/<id>/scratch/<id>`, and an
//! OCI runtime spec whose `root.path` is a directory that already exists in the UVM. The §4.5
//! host adjustments are applied: `hooks` null, `linux.cgroupsPath` cleared, the device, pids,
//! block-I/O, hugepage and network resources cleared, a CPU period of 0 made 100000 and a quota of
//! 0 made −1, of `windows` only the network namespace (and devices) kept.
//!
//! [`ProcessSpec`] is the process of a container (its init, inside the spec) or of an exec
//! (`OciProcess`); [`uvm_process`] is a process run directly in the UVM (null container ID).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxMemory, LinuxResources, Process, Root, Spec, User};
use rgcs_protocol::message::{ContainerConfig, ProcessParameters, SchemaVersion};

/// The `PATH` every container process gets unless the caller sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of spec building.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `--user` was neither `uid[:gid]` nor a user name.
    #[error("invalid user {0:?}: expected uid[:gid] or a user name")]
    BadUser(String),
    /// An environment entry had no `=`.
    #[error("invalid environment entry {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// The process has no arguments.
    #[error("container {0}: the process needs at least one argument")]
    NoArgs(String),
    /// The container ID cannot be a path component.
    #[error("invalid container id {0:?}: use letters, digits, '-', '_' and '.'")]
    BadId(String),
}

/// Who a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// Numeric IDs.
    Id {
        /// User ID.
        uid: u32,
        /// Group ID.
        gid: u32,
    },
    /// A name resolved by the guest through the container's `/etc/passwd` (`user.username`).
    Name(String),
}

impl UserSpec {
    /// Parses `uid`, `uid:gid` (numeric) or a user name.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadUser(s.to_owned());
        if s.is_empty() {
            return Err(bad());
        }
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        match u.parse::<u32>() {
            Ok(uid) => {
                let gid = match g {
                    Some(g) => g.parse::<u32>().map_err(|_| bad())?,
                    None => uid,
                };
                Ok(Self::Id { uid, gid })
            }
            Err(_) if g.is_none() && !s.contains(char::is_whitespace) => Ok(Self::Name(s.to_owned())),
            Err(_) => Err(bad()),
        }
    }
}

/// A container process: the init (inside the spec) or an exec (`OciProcess`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<String>,
    /// Extra environment (`PATH` defaults to [`DEFAULT_PATH`]).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User; root when `None`.
    pub user: Option<UserSpec>,
    /// Allocate a pty.
    pub tty: bool,
    /// `[height, width]` of the pty.
    pub console_size: Option<(u16, u16)>,
}

impl ProcessSpec {
    /// A process running `args` as root in `/`.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: None,
            tty: false,
            console_size: None,
        }
    }

    /// Adds (or replaces) an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Adds a `KEY=VALUE` entry.
    pub fn env_entry(self, entry: &str) -> Result<Self, SpecError> {
        let (k, v) = entry
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| SpecError::BadEnv(entry.to_owned()))?;
        Ok(self.env(k, v))
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Sets the user.
    pub fn user(mut self, user: UserSpec) -> Self {
        self.user = Some(user);
        self
    }

    /// Asks for a pty.
    pub fn tty(mut self, tty: bool) -> Self {
        self.tty = tty;
        self
    }

    /// The environment as `K=V` entries, `PATH` first (default) and `TERM=xterm` for a tty.
    pub fn env_entries(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.env.len() + 2);
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            out.push(format!("PATH={DEFAULT_PATH}"));
        }
        if self.tty && !self.env.iter().any(|(k, _)| k == "TERM") {
            out.push("TERM=xterm".to_owned());
        }
        out.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        out
    }

    /// The OCI `process` object (what hcsshim sends as `OciProcess` for an exec).
    pub fn to_oci(&self) -> Process {
        let mut p = Process::default();
        p.set_args(Some(self.args.clone()));
        p.set_env(Some(self.env_entries()));
        p.set_cwd(PathBuf::from(&self.cwd));
        p.set_terminal(Some(self.tty));
        let mut user = User::default();
        match &self.user {
            Some(UserSpec::Id { uid, gid }) => {
                user.set_uid(*uid);
                user.set_gid(*gid);
            }
            Some(UserSpec::Name(name)) => {
                user.set_username(Some(name.clone()));
            }
            None => {}
        }
        p.set_user(user);
        p.set_capabilities(Some(default_capabilities()));
        if let Some((h, w)) = self.console_size {
            let b = oci_spec::runtime::BoxBuilder::default()
                .height(u64::from(h))
                .width(u64::from(w))
                .build()
                .ok();
            p.set_console_size(b);
        }
        p
    }
}

/// containerd's (and Docker's) default capability set, which is what hcsshim's host receives from
/// containerd in a spec: bounding, effective and permitted; none inheritable or ambient.
pub const DEFAULT_CAPABILITIES: &[oci_spec::runtime::Capability] = {
    use oci_spec::runtime::Capability as C;
    &[
        C::Chown,
        C::DacOverride,
        C::Fsetid,
        C::Fowner,
        C::Mknod,
        C::NetRaw,
        C::Setgid,
        C::Setuid,
        C::Setfcap,
        C::Setpcap,
        C::NetBindService,
        C::SysChroot,
        C::Kill,
        C::AuditWrite,
    ]
};

fn default_capabilities() -> oci_spec::runtime::LinuxCapabilities {
    let set: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let mut caps = oci_spec::runtime::LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

/// A standalone container as hcsshim's host would describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container ID.
    pub id: String,
    /// Root filesystem: a directory that exists in the UVM.
    pub rootfs: String,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// The init process.
    pub process: ProcessSpec,
    /// `linux.resources.memory.limit`, bytes.
    pub memory_limit: Option<u64>,
    /// Hostname inside the container (a UTS namespace is always created); the ID (cut to 63
    /// characters) when `None`, as Docker does.
    pub hostname: Option<String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// `windows.network.networkNamespace`: the namespace whose NICs the guest moves into the
    /// container (§6.8). hcsshim's host always sends one, and a guest that follows hcsshim gives
    /// each namespace to one container only, so it defaults to the container's own ID.
    pub network_namespace: Option<String>,
    /// The bundle directory in the guest; [`bundle_path`] of the ID when `None`.
    pub bundle: Option<String>,
    /// The container's place in a pod (`None`: standalone).
    pub pod: Option<PodRole>,
    /// Bind mounts (sources are UVM paths, or `sandbox://…`, `uvm://…` for pod workloads).
    pub mounts: Vec<BindMount>,
}

/// A container's place in a pod, as containerd's CRI plugin marks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// The pod's sandbox: its namespaces are the pod's.
    Sandbox,
    /// A workload that joins the sandbox's network, IPC and UTS namespaces (and PID with
    /// `share_pid`) by `/proc/<sandbox_pid>/ns/…` paths, which the guest resolves in the UVM.
    Workload {
        /// The sandbox's container ID.
        sandbox_id: String,
        /// The sandbox init's PID in the UVM.
        sandbox_pid: u32,
        /// Share the sandbox's PID namespace too (CRI `NamespaceMode::POD`).
        share_pid: bool,
    },
}

/// Annotation: the CRI container type (`sandbox` / `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation: a workload's (or the sandbox's own) sandbox ID.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Source in the UVM (or a pod source scheme).
    pub source: String,
    /// Absolute path in the container.
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
}

/// The guest bundle directory of a container (v1 shim layout).
pub fn bundle_path(id: &str) -> String {
    format!("/run/gcs/c/{id}")
}

/// Checks that `id` is safe as a path component (hcsshim accepts any string; we refuse what
/// would escape `/run/gcs/c`).
pub fn check_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadId(id.to_owned()))
    }
}

impl ContainerSpec {
    /// A container `id` over the UVM directory `rootfs`, running `process`.
    pub fn new(id: impl Into<String>, rootfs: impl Into<String>, process: ProcessSpec) -> Self {
        let id = id.into();
        Self {
            id: id.clone(),
            rootfs: rootfs.into(),
            readonly_rootfs: false,
            process,
            memory_limit: None,
            hostname: None,
            annotations: BTreeMap::new(),
            network_namespace: Some(id_ns(&id)),
            bundle: None,
            pod: None,
            mounts: Vec::new(),
        }
    }

    /// Sets a memory limit in bytes.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The OCI runtime spec with the §4.5 host adjustments applied.
    pub fn oci_spec(&self) -> Result<Spec, SpecError> {
        check_id(&self.id)?;
        if self.process.args.is_empty() {
            return Err(SpecError::NoArgs(self.id.clone()));
        }
        let mut spec = Spec::default();
        let mut root = Root::default();
        root.set_path(PathBuf::from(&self.rootfs));
        root.set_readonly(Some(self.readonly_rootfs));
        spec.set_root(Some(root));
        spec.set_process(Some(self.process.to_oci()));
        let mut annotations: HashMap<String, String> = self
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let hostname = self
            .hostname
            .clone()
            .unwrap_or_else(|| self.id.chars().take(63).collect());
        match &self.pod {
            None => {
                spec.set_hostname(Some(hostname));
            }
            Some(PodRole::Sandbox) => {
                spec.set_hostname(Some(hostname));
                annotations.insert(CONTAINER_TYPE.into(), "sandbox".into());
                annotations.insert(SANDBOX_ID.into(), self.id.clone());
            }
            Some(PodRole::Workload {
                sandbox_id,
                sandbox_pid,
                share_pid,
            }) => {
                // A workload lives in the sandbox's UTS namespace: it names no hostname.
                spec.set_hostname(None);
                annotations.insert(CONTAINER_TYPE.into(), "container".into());
                annotations.insert(SANDBOX_ID.into(), sandbox_id.clone());
                join_namespaces(&mut spec, *sandbox_pid, *share_pid);
            }
        }
        spec.set_annotations(Some(annotations));
        if !self.mounts.is_empty() {
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            for m in &self.mounts {
                let mut mount = oci_spec::runtime::Mount::default();
                mount.set_destination(PathBuf::from(&m.destination));
                mount.set_typ(Some("bind".into()));
                mount.set_source(Some(PathBuf::from(&m.source)));
                mount.set_options(Some(vec![
                    "rbind".into(),
                    if m.read_only { "ro" } else { "rw" }.into(),
                ]));
                mounts.push(mount);
            }
            spec.set_mounts(Some(mounts));
        }
        if let Some(linux) = spec.linux_mut() {
            let mut resources = linux.resources().clone().unwrap_or_default();
            if let Some(limit) = self.memory_limit {
                let mut mem = LinuxMemory::default();
                mem.set_limit(Some(i64::try_from(limit).unwrap_or(i64::MAX)));
                resources.set_memory(Some(mem));
            }
            linux.set_resources(Some(resources));
        }
        adjust_like_hcsshim(&mut spec);
        if let Some(ns) = &self.network_namespace {
            set_network_namespace(&mut spec, ns);
        }
        Ok(spec)
    }

    /// The `ContainerConfig` of the Create request.
    pub fn config(&self) -> Result<ContainerConfig, SpecError> {
        let bundle = self.bundle.clone().unwrap_or_else(|| bundle_path(&self.id));
        Ok(ContainerConfig {
            schema_version: SchemaVersion::V2_1,
            oci_specification: Some(self.oci_spec()?),
            scratch_dir_path: format!("{bundle}/scratch/{}", self.id),
            oci_bundle_path: bundle,
        })
    }
}

/// Points the network, IPC and UTS namespaces (and PID with `share_pid`) at the sandbox init's,
/// as containerd's CRI plugin does with the sandbox task's PID.
pub fn join_namespaces(spec: &mut Spec, sandbox_pid: u32, share_pid: bool) {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let Some(linux) = spec.linux_mut() else { return };
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    for n in &mut ns {
        let name = match n.typ() {
            T::Network => "net",
            T::Ipc => "ipc",
            T::Uts => "uts",
            T::Pid if share_pid => "pid",
            _ => continue,
        };
        n.set_path(Some(PathBuf::from(format!("/proc/{sandbox_pid}/ns/{name}"))));
    }
    linux.set_namespaces(Some(ns));
}

/// The network namespace of a container that has its own (a standalone container): its ID.
fn id_ns(id: &str) -> String {
    id.to_owned()
}

/// Sets `windows.network.networkNamespace` (§6.8: the namespace whose NICs the guest moves into
/// the container), replacing the rest of `windows`.
pub fn set_network_namespace(spec: &mut Spec, ns: &str) {
    let mut network = oci_spec::runtime::WindowsNetwork::default();
    network.set_network_namespace(Some(ns.to_owned()));
    let mut windows = oci_spec::runtime::Windows::default();
    windows.set_network(Some(network));
    spec.set_windows(Some(windows));
}

/// The §4.5 adjustments hcsshim's host makes before sending a spec: hooks dropped, of
/// `windows` only the network namespace and devices kept.
pub fn adjust_like_hcsshim(spec: &mut Spec) {
    spec.set_hooks(None);
    let kept = spec.windows().as_ref().and_then(|w| {
        let mut k = oci_spec::runtime::Windows::default();
        k.set_network(w.network().clone());
        k.set_devices(w.devices().clone());
        (k.network().is_some() || k.devices().is_some()).then_some(k)
    });
    spec.set_windows(kept);
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(None);
        if let Some(resources) = linux.resources().clone() {
            linux.set_resources(Some(adjust_resources(resources)));
        }
    }
}

/// The resource adjustments of §4.5 (also applied to `ContainerConstraints` updates).
pub fn adjust_resources(mut r: LinuxResources) -> LinuxResources {
    r.set_devices(None);
    r.set_pids(None);
    r.set_block_io(None);
    r.set_hugepage_limits(None);
    r.set_network(None);
    if let Some(mut cpu) = r.cpu().clone() {
        if cpu.period() == Some(0) {
            cpu.set_period(Some(100_000));
        }
        if cpu.quota() == Some(0) {
            cpu.set_quota(Some(-1));
        }
        r.set_cpu(Some(cpu));
    }
    r
}

/// Which pipes a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pipes {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr (never used with a tty).
    pub stderr: bool,
}

impl Pipes {
    /// All three.
    pub const ALL: Self = Self {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    /// None.
    pub const NONE: Self = Self {
        stdin: false,
        stdout: false,
        stderr: false,
    };
    /// Output only (stdout and stderr).
    pub const OUTPUT: Self = Self {
        stdin: false,
        stdout: true,
        stderr: true,
    };
}

/// `ProcessParameters` of a container's init: flags only, no `OciProcess`.
pub fn init_process(pipes: Pipes) -> ProcessParameters {
    ProcessParameters {
        create_std_in_pipe: pipes.stdin,
        create_std_out_pipe: pipes.stdout,
        create_std_err_pipe: pipes.stderr,
        ..ProcessParameters::default()
    }
}

/// `ProcessParameters` of an exec in a container (`OciProcess` present). A tty exec gets no
/// stderr pipe.
pub fn exec_process(process: &ProcessSpec, pipes: Pipes) -> ProcessParameters {
    ProcessParameters {
        create_std_in_pipe: pipes.stdin,
        create_std_out_pipe: pipes.stdout,
        create_std_err_pipe: pipes.stderr && !process.tty,
        oci_process: Some(process.to_oci()),
        ..ProcessParameters::default()
    }
}

/// `ProcessParameters` of a process run directly in the UVM (send it with the null container
/// ID): `CommandArgs`, `WorkingDirectory` `/`, `Environment` with `PATH`, as hcsshim sends it.
pub fn uvm_process<S: Into<String>>(args: impl IntoIterator<Item = S>, pipes: Pipes) -> ProcessParameters {
    let mut environment = BTreeMap::new();
    environment.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    ProcessParameters {
        command_args: args.into_iter().map(Into::into).collect(),
        working_directory: "/".into(),
        environment,
        create_std_in_pipe: pipes.stdin,
        create_std_out_pipe: pipes.stdout,
        create_std_err_pipe: pipes.stderr,
        ..ProcessParameters::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(
            UserSpec::parse("1000:100").unwrap(),
            UserSpec::Id { uid: 1000, gid: 100 }
        );
        assert_eq!(UserSpec::parse("7").unwrap(), UserSpec::Id { uid: 7, gid: 7 });
        assert_eq!(
            UserSpec::parse("nobody").unwrap(),
            UserSpec::Name("nobody".into())
        );
        assert!(UserSpec::parse("1:x").is_err());
        assert!(UserSpec::parse("a:b").is_err());
        assert!(UserSpec::parse("").is_err());
    }

    #[test]
    fn pod_roles_set_cri_annotations_and_join_the_sandbox() {
        let mut sb = ContainerSpec::new("pod1", "/r", ProcessSpec::new(["/pause"]));
        sb.pod = Some(PodRole::Sandbox);
        let spec = sb.oci_spec().unwrap();
        let ann = spec.annotations().clone().unwrap();
        assert_eq!(ann[CONTAINER_TYPE], "sandbox");
        assert_eq!(ann[SANDBOX_ID], "pod1");
        assert_eq!(spec.hostname().as_deref(), Some("pod1"));

        let mut w = ContainerSpec::new("w1", "/r", ProcessSpec::new(["/bin/sh"]));
        w.pod = Some(PodRole::Workload {
            sandbox_id: "pod1".into(),
            sandbox_pid: 42,
            share_pid: false,
        });
        w.mounts.push(BindMount {
            source: "sandbox://data".into(),
            destination: "/data".into(),
            read_only: false,
        });
        let spec = w.oci_spec().unwrap();
        let ann = spec.annotations().clone().unwrap();
        assert_eq!(ann[CONTAINER_TYPE], "container");
        assert_eq!(ann[SANDBOX_ID], "pod1");
        assert_eq!(spec.hostname(), &None);
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let path = |t| ns.iter().find(|n| n.typ() == t).and_then(|n| n.path().clone());
        use oci_spec::runtime::LinuxNamespaceType as T;
        assert_eq!(path(T::Network), Some(PathBuf::from("/proc/42/ns/net")));
        assert_eq!(path(T::Ipc), Some(PathBuf::from("/proc/42/ns/ipc")));
        assert_eq!(path(T::Uts), Some(PathBuf::from("/proc/42/ns/uts")));
        assert_eq!(path(T::Pid), None);
        assert_eq!(path(T::Mount), None);
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/data"))
            .unwrap();
        assert_eq!(
            m.source().as_deref(),
            Some(std::path::Path::new("sandbox://data"))
        );
    }

    #[test]
    fn config_is_what_hcsshim_sends() {
        let p = ProcessSpec::new(["sh", "-c", "echo hi"])
            .env_entry("A=b=c")
            .unwrap()
            .cwd("/tmp")
            .user(UserSpec::Name("guest".into()));
        let c = ContainerSpec::new("c1", "/run/rootfs/bb", p)
            .memory_limit(64 << 20)
            .config()
            .unwrap();
        assert_eq!(c.schema_version, SchemaVersion::V2_1);
        assert_eq!(c.oci_bundle_path, "/run/gcs/c/c1");
        assert_eq!(c.scratch_dir_path, "/run/gcs/c/c1/scratch/c1");
        let json = serde_json::to_value(&c).unwrap();
        let spec = &json["OciSpecification"];
        assert_eq!(spec["root"]["path"], "/run/rootfs/bb");
        assert_eq!(spec["hostname"], "c1");
        assert_eq!(spec["process"]["args"][2], "echo hi");
        assert_eq!(spec["process"]["cwd"], "/tmp");
        assert_eq!(spec["process"]["user"]["username"], "guest");
        assert_eq!(spec["process"]["env"][0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!(spec["process"]["env"][1], "A=b=c");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert!(spec.get("hooks").is_none_or(serde_json::Value::is_null));
        assert!(spec["linux"].get("cgroupsPath").is_none());
        assert!(spec["linux"]["resources"].get("devices").is_none());
        // hcsshim's host keeps the network namespace (issue 13: dropping it made a guest that
        // follows hcsshim refuse the second container); each container gets its own.
        assert_eq!(
            spec["windows"],
            serde_json::json!({"network": {"networkNamespace": "c1"}})
        );
        let other = ContainerSpec::new("c2", "/r", ProcessSpec::new(["true"]))
            .config()
            .unwrap();
        let other = serde_json::to_value(&other).unwrap();
        assert_eq!(
            other["OciSpecification"]["windows"]["network"]["networkNamespace"],
            "c2"
        );
        // The request body round-trips through the protocol types.
        let body = rgcs_protocol::message::ContainerCreate {
            container_config: Some(rgcs_protocol::JsonString(c.clone())),
            supported_versions: None,
        };
        let text = serde_json::to_string(&body).unwrap();
        let back: rgcs_protocol::message::ContainerCreate = rgcs_protocol::gojson::from_str(&text).unwrap();
        assert_eq!(back.config().unwrap(), &c);
    }

    #[test]
    fn ids_and_args_are_checked() {
        assert!(ContainerSpec::new("../x", "/r", ProcessSpec::new(["true"]))
            .config()
            .is_err());
        assert!(
            ContainerSpec::new("x", "/r", ProcessSpec::new(Vec::<String>::new()))
                .config()
                .is_err()
        );
        assert!(ProcessSpec::new(["x"]).env_entry("=v").is_err());
    }

    #[test]
    fn cpu_zeroes_are_fixed() {
        let mut cpu = oci_spec::runtime::LinuxCpu::default();
        cpu.set_period(Some(0));
        cpu.set_quota(Some(0));
        let mut r = LinuxResources::default();
        r.set_cpu(Some(cpu));
        let r = adjust_resources(r);
        let cpu = r.cpu().clone().unwrap();
        assert_eq!((cpu.period(), cpu.quota()), (Some(100_000), Some(-1)));
    }

    #[test]
    fn process_parameters_shapes() {
        let init = serde_json::to_string(&init_process(Pipes::ALL)).unwrap();
        assert_eq!(
            init,
            r#"{"CreateStdInPipe":true,"CreateStdOutPipe":true,"CreateStdErrPipe":true}"#
        );
        let mut tty = ProcessSpec::new(["sh"]).tty(true);
        tty.console_size = Some((40, 100));
        let exec = exec_process(&tty, Pipes::ALL);
        assert!(!exec.create_std_err_pipe);
        let json = serde_json::to_value(exec.oci_process.unwrap()).unwrap();
        assert_eq!(
            json["consoleSize"],
            serde_json::json!({"height": 40, "width": 100})
        );
        assert_eq!(json["terminal"], true);
        assert!(json["env"].as_array().unwrap().contains(&"TERM=xterm".into()));
        let uvm = uvm_process(["ls", "/"], Pipes::OUTPUT);
        assert_eq!(uvm.command_args, ["ls", "/"]);
        assert_eq!(uvm.environment["PATH"], DEFAULT_PATH);
    }
}
