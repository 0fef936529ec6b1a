//! The UVM initrd: a reproducible, uncompressed newc archive built without root.
//!
//! Layout:
//! * `/init`: the static agent binary (mode 0755); `/bin/gcs` is a symlink to it.
//! * the directories in [`BASE_DIRS`] and a `/dev/console` character node (5,1), so PID 1 has
//!   stdio before it mounts devtmpfs;
//! * kernel modules under `/lib/modules/<release>/<path as in modules.dep>` (compressed
//!   `.ko.xz`/`.ko.gz`/`.ko.zst` are unpacked to `.ko`, since the guest uses plain
//!   `finit_module`), listed in load order in [`MODULE_LIST_PATH`];
//! * optional extra entries ([`ExtraEntry`]).
//!
//! The module list format, parsed by the guest init, is one module per line:
//! `<early|late> <required|optional> <absolute path inside the initrd>`; lines starting with
//! `#` are comments. Early modules (virtio PCI transport, vsock) load before the bridge
//! connects; late ones afterwards, in the background.
//!
//! Compression is deliberately not offered: docs/uvm-notes.md §2.2 measured no gain under TCG.

pub mod cpio;
pub mod modules;
pub mod tools;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

pub use modules::{
    ModuleError, ModuleIndex, ModulePlan, ModuleRequest, Need, Phase, PlannedModule, SkippedModule,
};

use crate::kernel::{self, KernelArtifacts, KernelError};

/// Where the guest finds its module list.
pub const MODULE_LIST_PATH: &str = "/etc/rgcs/modules";
/// Directories every initrd has.
pub const BASE_DIRS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib/modules",
];

/// Modules loaded before the bridge: the virtio PCI transport and virtio vsock (dependencies
/// such as `virtio`, `virtio_ring` and `vsock` are added from `modules.dep`).
pub const DEFAULT_EARLY_MODULES: &[ModuleRequest] = &[
    ModuleRequest::required("virtio_pci"),
    ModuleRequest::required("vmw_vsock_virtio_transport"),
];

/// Modules loaded after the bridge: SCSI disks, ext4 (with crc32c, which ext4 only names as a
/// soft dependency), overlayfs, 9p over a vsock fd (`9pnet_fd`, LCOW's `trans=fd`),
/// device-mapper, and pmem when the tree has it. Built-ins (per `modules.builtin`) are skipped.
///
/// The order is the order the agent's storage requests can proceed in (it waits per subsystem):
/// 9p first (five small modules; a containerd task's rootfs share is its first request), then
/// SCSI + ext4 (`rgcs run`'s scratch disk), overlay, pmem, and the NIC driver last.
pub const DEFAULT_LATE_MODULES: &[ModuleRequest] = &[
    ModuleRequest::required("9p"),
    ModuleRequest::required("9pnet_fd"),
    ModuleRequest::required("virtio_scsi"),
    ModuleRequest::required("sd_mod"),
    ModuleRequest::required("crc32c_generic"),
    ModuleRequest::optional("crc32c-intel"),
    ModuleRequest::required("ext4"),
    ModuleRequest::required("overlay"),
    ModuleRequest::required("dm-mod"),
    ModuleRequest::if_present("virtio_pmem"),
    ModuleRequest::if_present("nd_pmem"),
    // NICs (hot-plugged virtio-net; `failover`/`net_failover` come from modules.dep), and tc's
    // parts are not needed in the guest.
    ModuleRequest::required("virtio_net"),
];

/// Where the guest's DHCP client finds its event script (the agent's `DHCP_SCRIPT`).
pub const DHCP_SCRIPT_PATH: &str = "/usr/share/rgcs/udhcpc.script";

/// busybox `udhcpc`'s event script: addresses, MTU and default routes with busybox `ip`; DNS is
/// not touched (the agent writes `resolv.conf` from the adapter, as hcsshim's guest does).
pub const DHCP_SCRIPT: &str = include_str!("udhcpc.script");

impl ExtraEntry {
    /// Where the entry goes in the initrd.
    pub fn dest(&self) -> &str {
        match self {
            Self::File { dest, .. }
            | Self::Contents { dest, .. }
            | Self::Symlink { dest, .. }
            | Self::Dir { dest, .. } => dest,
        }
    }

    /// The DHCP event script (needs busybox's `sh` and `ip` in the initrd).
    pub fn dhcp_script() -> Self {
        Self::Contents {
            dest: DHCP_SCRIPT_PATH.to_owned(),
            data: DHCP_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        }
    }
}

/// An extra entry to put into the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraEntry {
    /// A host file copied to `dest` (absolute path inside the initrd) with `mode` (e.g. 0o755).
    File {
        /// Host file.
        source: PathBuf,
        /// Absolute path inside the initrd.
        dest: String,
        /// Permission bits.
        mode: u32,
    },
    /// A file with the given contents at `dest`.
    Contents {
        /// Absolute path inside the initrd.
        dest: String,
        /// The bytes.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symlink at `dest` pointing to `target`.
    Symlink {
        /// Absolute path inside the initrd.
        dest: String,
        /// Link target.
        target: String,
    },
    /// A directory.
    Dir {
        /// Absolute path inside the initrd.
        dest: String,
        /// Permission bits.
        mode: u32,
    },
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdSpec {
    /// The static agent binary, installed as `/init`.
    pub agent: PathBuf,
    /// Output file (written atomically).
    pub output: PathBuf,
    /// Kernel release: modules go under `/lib/modules/<release>/`.
    pub kernel_release: String,
    /// The module tree (`/lib/modules/<release>`).
    pub modules_dir: PathBuf,
    /// Modules loaded before the bridge.
    pub early_modules: Vec<ModuleRequest>,
    /// Modules loaded after the bridge.
    pub late_modules: Vec<ModuleRequest>,
    /// Extra files, links and directories.
    pub extras: Vec<ExtraEntry>,
}

impl InitrdSpec {
    /// The default module sets for `kernel`'s release and module tree.
    pub fn new(agent: impl Into<PathBuf>, output: impl Into<PathBuf>, kernel: &KernelArtifacts) -> Self {
        Self {
            agent: agent.into(),
            output: output.into(),
            kernel_release: kernel.release.clone(),
            modules_dir: kernel.modules_dir.clone(),
            early_modules: DEFAULT_EARLY_MODULES.to_vec(),
            late_modules: DEFAULT_LATE_MODULES.to_vec(),
            extras: Vec::new(),
        }
    }
}

/// One module as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModule {
    /// Normalised name.
    pub name: String,
    /// Load phase.
    pub phase: Phase,
    /// Whether a load failure is fatal for the guest.
    pub required: bool,
    /// Source file on the host.
    pub host_path: PathBuf,
    /// Absolute path inside the initrd.
    pub initrd_path: String,
}

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdReport {
    /// The written initrd.
    pub output: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Modules in load order.
    pub modules: Vec<InstalledModule>,
    /// Requested modules that were skipped.
    pub skipped: Vec<SkippedModule>,
    /// The text of [`MODULE_LIST_PATH`].
    pub module_list: String,
}

/// Errors of the initrd builder.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A host file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The agent is a dynamically linked ELF (it has a `PT_INTERP`); PID 1 would not start.
    #[error("agent {path} is dynamically linked; build it with -C target-feature=+crt-static")]
    AgentNotStatic {
        /// The agent binary.
        path: PathBuf,
    },
    /// Two entries claim the same path, or a path is malformed.
    #[error("initrd entry {path}: {reason}")]
    BadEntry {
        /// Path inside the initrd.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Module resolution failed.
    #[error("cannot resolve kernel modules")]
    Modules(#[from] ModuleError),
    /// A compressed module could not be unpacked.
    #[error("cannot unpack a kernel module")]
    Unpack(#[source] KernelError),
    /// Writing the archive failed.
    #[error("cannot write {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A node of the archive tree, keyed by its path without the leading `/`.
#[derive(Debug)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    CharDev(u32, u32, u32),
}

/// Builds the initrd described by `spec`.
pub fn build(spec: &InitrdSpec) -> Result<InitrdReport, InitrdError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| InitrdError::Read {
            path: path.into(),
            source,
        })
    };
    let mut tree: BTreeMap<PathBuf, Node> = BTreeMap::new();
    for dir in BASE_DIRS {
        insert(&mut tree, dir, Node::Dir(0o755))?;
    }
    insert(&mut tree, "/dev/console", Node::CharDev(0o600, 5, 1))?;

    let agent = read(&spec.agent)?;
    if is_dynamic_elf(&agent) {
        return Err(InitrdError::AgentNotStatic {
            path: spec.agent.clone(),
        });
    }
    insert(&mut tree, "/init", Node::File(0o755, agent))?;
    insert(&mut tree, "/bin/gcs", Node::Symlink("/init".into()))?;

    // A kernel without modules (everything built in) needs no module tree.
    let plan = if spec.early_modules.is_empty() && spec.late_modules.is_empty() {
        ModulePlan::default()
    } else {
        ModuleIndex::load(&spec.modules_dir)?.plan(&spec.early_modules, &spec.late_modules)?
    };
    let mut installed = Vec::with_capacity(plan.modules.len());
    for m in &plan.modules {
        let host_path = spec.modules_dir.join(&m.rel_path);
        let raw = read(&host_path)?;
        let (data, rel) = match kernel::decompress_module(&host_path, &raw).map_err(InitrdError::Unpack)? {
            Some(plain) => (
                plain,
                format!(
                    "{}.ko",
                    m.rel_path
                        .split_once(".ko")
                        .map_or(m.rel_path.as_str(), |(s, _)| s)
                ),
            ),
            None => (raw, m.rel_path.clone()),
        };
        let initrd_path = format!("/lib/modules/{}/{rel}", spec.kernel_release);
        if initrd_path.contains(char::is_whitespace) {
            return Err(InitrdError::BadEntry {
                path: initrd_path,
                reason: "whitespace in a module path",
            });
        }
        insert(&mut tree, &initrd_path, Node::File(0o644, data))?;
        installed.push(InstalledModule {
            name: m.name.clone(),
            phase: m.phase,
            required: m.required,
            host_path,
            initrd_path,
        });
    }
    let module_list = render_module_list(&spec.kernel_release, &installed);
    insert(
        &mut tree,
        MODULE_LIST_PATH,
        Node::File(0o644, module_list.clone().into_bytes()),
    )?;

    for extra in &spec.extras {
        match extra {
            ExtraEntry::File { source, dest, mode } => {
                insert(&mut tree, dest, Node::File(*mode, read(source)?))?
            }
            ExtraEntry::Contents { dest, data, mode } => {
                insert(&mut tree, dest, Node::File(*mode, data.clone()))?
            }
            ExtraEntry::Symlink { dest, target } => insert(&mut tree, dest, Node::Symlink(target.clone()))?,
            ExtraEntry::Dir { dest, mode } => insert(&mut tree, dest, Node::Dir(*mode))?,
        }
    }

    let size = write_archive(&spec.output, &tree)?;
    for s in &plan.skipped {
        tracing::debug!(module = %s.name, reason = s.reason, "module not put into the initrd");
    }
    tracing::info!(output = %spec.output.display(), size, modules = installed.len(), "built initrd");
    Ok(InitrdReport {
        output: spec.output.clone(),
        size,
        modules: installed,
        skipped: plan.skipped,
        module_list,
    })
}

/// The `/etc/rgcs/modules` text for `modules` (already in load order).
pub fn render_module_list(release: &str, modules: &[InstalledModule]) -> String {
    let mut out = format!(
        "# rgcs kernel modules for {release}, in load order\n# <early|late> <required|optional> <path>\n"
    );
    for m in modules {
        let need = if m.required { "required" } else { "optional" };
        out.push_str(&format!("{} {need} {}\n", m.phase.as_str(), m.initrd_path));
    }
    out
}

/// Adds `node` at `path`, creating missing parent directories (mode 0755). A directory may be
/// declared twice; anything else twice is an error.
fn insert(tree: &mut BTreeMap<PathBuf, Node>, path: &str, node: Node) -> Result<(), InitrdError> {
    let bad = |reason| InitrdError::BadEntry {
        path: path.to_owned(),
        reason,
    };
    let rel = path
        .strip_prefix('/')
        .ok_or_else(|| bad("path must be absolute"))?;
    let rel = Path::new(rel);
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad("path must not be empty or contain `.`/`..`"));
    }
    if rel.to_str().is_none() {
        return Err(bad("path is not UTF-8"));
    }
    for parent in rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
        match tree.get(parent) {
            None => {
                tree.insert(parent.to_path_buf(), Node::Dir(0o755));
            }
            Some(Node::Dir(_)) => {}
            Some(_) => return Err(bad("a parent is not a directory")),
        }
    }
    match (tree.get(rel), &node) {
        (None, _) => {
            tree.insert(rel.to_path_buf(), node);
        }
        (Some(Node::Dir(_)), Node::Dir(_)) => {
            tree.insert(rel.to_path_buf(), node);
        }
        (Some(_), _) => return Err(bad("declared twice")),
    }
    Ok(())
}

/// Writes the tree (parents before children, sorted) to a temporary file and renames it over
/// `output`. Returns the archive size.
fn write_archive(output: &Path, tree: &BTreeMap<PathBuf, Node>) -> Result<u64, InitrdError> {
    let werr = |source| InitrdError::Write {
        path: output.to_path_buf(),
        source,
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(werr)?;
    }
    let tmp = kernel::tmp_path(output);
    let result = (|| -> io::Result<u64> {
        let file = fs::File::create(&tmp)?;
        let mut w = cpio::NewcWriter::new(BufWriter::new(file));
        for (path, node) in tree {
            // `insert` only admits UTF-8 paths.
            let name = path.to_string_lossy();
            match node {
                Node::Dir(mode) => w.dir(&name, *mode)?,
                Node::File(mode, data) => w.file(&name, *mode, data)?,
                Node::Symlink(target) => w.symlink(&name, target)?,
                Node::CharDev(mode, major, minor) => w.char_dev(&name, *mode, *major, *minor)?,
            }
        }
        let (buf, size) = w.finish()?;
        let file = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, output)?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// Whether `data` is a 64-bit little-endian ELF with a `PT_INTERP` program header.
fn is_dynamic_elf(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if !data.starts_with(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return false;
    }
    let u16_at = |o: usize| kernel::le_u16(data, o);
    let u32_at = |o: usize| kernel::le_u32(data, o);
    let u64_at = |o: usize| kernel::le_u64(data, o);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i * usize::from(phentsize)))
            .and_then(u32_at)
            == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests;
