//! The cgroup hierarchy at `/sys/fs/cgroup` (docs/gcs-reference.md §6.1 step 11).
//!
//! This module owns choosing and mounting cgroup v2 or v1. By default it mounts `cgroup2`, requires
//! `cgroup.controllers`, and enables every listed controller in the root's `cgroup.subtree_control`
//! one at a time (a controller that refuses is reported, not fatal). The kernel command-line token
//! [`FORCE_V1_PARAM`], a failed v2 mount or a missing `cgroup.controllers` selects v1 instead: a tmpfs
//! on `/sys/fs/cgroup` and one `cgroup` mount per enabled controller in `/proc/cgroups`, with
//! `cpu,cpuacct` and `net_cls,net_prio` co-mounted (plus per-name symlinks) as systemd does.
//!
//! It does not create the agent's own cgroups; that is the agent's job.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs;

use crate::mounts::{is_mount_of, under};

/// The cgroup mount point.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Kernel command-line token that forces cgroup v1.
pub const FORCE_V1_PARAM: &str = "rgcs.cgroup=v1";

/// Controller pairs co-mounted in v1 when both are enabled and not yet bound elsewhere.
pub const V1_COMOUNTS: [[&str; 2]; 2] = [["cpu", "cpuacct"], ["net_cls", "net_prio"]];

const FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// The active cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// `"v1"` or `"v2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// Why v1 was chosen.
#[derive(Debug)]
pub enum FallbackReason {
    /// The kernel command line asked for it.
    Forced,
    /// Mounting `cgroup2` failed.
    V2Mount(Errno),
    /// `cgroup2` mounted but had no readable `cgroup.controllers`.
    NoControllers(io::Error),
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FallbackReason::Forced => write!(f, "{FORCE_V1_PARAM} on the kernel command line"),
            FallbackReason::V2Mount(e) => write!(f, "cgroup2 mount failed: {e}"),
            FallbackReason::NoControllers(e) => write!(f, "cgroup2 has no readable cgroup.controllers: {e}"),
        }
    }
}

/// A controller that could not be enabled (v2) or mounted (v1).
#[derive(Debug)]
pub struct RefusedController {
    /// Controller name (v1: the co-mounted group, e.g. `cpu,cpuacct`).
    pub name: String,
    /// The error.
    pub error: io::Error,
}

/// What [`setup`] did.
#[derive(Debug)]
pub struct CgroupReport {
    /// The version now mounted.
    pub version: CgroupVersion,
    /// Controllers enabled (v2) or hierarchies mounted (v1), in order.
    pub controllers: Vec<String>,
    /// Controllers that refused; the rest carried on.
    pub refused: Vec<RefusedController>,
    /// Why v1 is in use (`None` for v2).
    pub fallback: Option<FallbackReason>,
}

/// Why no cgroup hierarchy could be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The v1 tmpfs could not be mounted.
    #[error("mount tmpfs on {CGROUP_ROOT} for cgroup v1")]
    V1Tmpfs(#[source] Errno),
    /// The v1 controller table could not be read.
    #[error("read /proc/cgroups")]
    ProcCgroups(#[source] io::Error),
}

/// Sets up cgroups under `root` (`/` in PID 1), reading `proc/cmdline` and `proc/cgroups` there.
pub fn setup(root: &Path) -> Result<CgroupReport, CgroupError> {
    let cmdline = fs::read_to_string(under(root, "/proc/cmdline")).unwrap_or_default();
    let reason = if wants_v1(&cmdline) {
        FallbackReason::Forced
    } else {
        match mount_v2(root) {
            Ok(controllers) => {
                let control = under(root, CGROUP_ROOT).join("cgroup.subtree_control");
                let (enabled, refused) = enable_controllers(&controllers, |c| write_control(&control, c));
                return Ok(CgroupReport {
                    version: CgroupVersion::V2,
                    controllers: enabled,
                    refused,
                    fallback: None,
                });
            }
            Err(reason) => reason,
        }
    };
    setup_v1(root, reason)
}

/// Whether the kernel command line forces v1. Only kernel parameters count: tokens after `--` are
/// init's arguments.
pub fn wants_v1(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .take_while(|t| *t != "--")
        .any(|t| t == FORCE_V1_PARAM)
}

/// Mounts `cgroup2` on the cgroup root (unless already there) and returns the listed controllers.
/// On a missing `cgroup.controllers` the mount is undone so v1 can take the mount point.
fn mount_v2(root: &Path) -> Result<Vec<String>, FallbackReason> {
    let target = under(root, CGROUP_ROOT);
    if !is_mount_of(&target, statfs::CGROUP2_SUPER_MAGIC) {
        mount(Some("cgroup2"), &target, Some("cgroup2"), FLAGS, None::<&str>)
            .map_err(FallbackReason::V2Mount)?;
    }
    match fs::read_to_string(target.join("cgroup.controllers")) {
        Ok(text) => Ok(text.split_whitespace().map(str::to_owned).collect()),
        Err(e) => {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            Err(FallbackReason::NoControllers(e))
        }
    }
}

/// Enables each controller with `write("+name")`, one at a time, so that one refusal (for example a
/// controller with threaded-mode constraints) does not block the others.
pub fn enable_controllers(
    controllers: &[String],
    mut write: impl FnMut(&str) -> io::Result<()>,
) -> (Vec<String>, Vec<RefusedController>) {
    let mut enabled = Vec::new();
    let mut refused = Vec::new();
    for name in controllers {
        match write(&format!("+{name}")) {
            Ok(()) => enabled.push(name.clone()),
            Err(error) => refused.push(RefusedController {
                name: name.clone(),
                error,
            }),
        }
    }
    (enabled, refused)
}

fn write_control(file: &Path, command: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(file)?
        .write_all(command.as_bytes())
}

/// One row of `/proc/cgroups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Controller name.
    pub name: String,
    /// v1 hierarchy id (0: not mounted in v1).
    pub hierarchy: u32,
    /// Whether the controller is enabled.
    pub enabled: bool,
}

/// Parses `/proc/cgroups` (`#subsys_name hierarchy num_cgroups enabled`). Malformed rows are skipped.
pub fn parse_proc_cgroups(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [name, hierarchy, _num, enabled] = f.as_slice() else {
                return None;
            };
            Some(ProcCgroup {
                name: (*name).to_owned(),
                hierarchy: hierarchy.parse().ok()?,
                enabled: *enabled == "1",
            })
        })
        .collect()
}

/// One v1 hierarchy to mount at `/sys/fs/cgroup/<dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    /// Directory name and mount option: the controllers joined with `,`.
    pub dir: String,
    /// The controllers; when more than one, each also gets a symlink `<name> -> <dir>`.
    pub controllers: Vec<String>,
}

/// Groups the enabled controllers into v1 hierarchies. Controllers already bound to a v1 hierarchy
/// (non-zero id) must be mounted with exactly their hierarchy's set, so they are grouped by id; unbound
/// ones are co-mounted per [`V1_COMOUNTS`] when both halves are present, otherwise mounted alone.
/// Order follows `/proc/cgroups`.
pub fn plan_v1(table: &[ProcCgroup]) -> Vec<V1Mount> {
    let enabled: Vec<&ProcCgroup> = table.iter().filter(|c| c.enabled).collect();
    let mut plan: Vec<V1Mount> = Vec::new();
    let mut placed = vec![false; enabled.len()];
    for i in 0..enabled.len() {
        if placed[i] {
            continue;
        }
        let c = enabled[i];
        let partner = |other: &ProcCgroup| {
            if c.hierarchy != 0 {
                other.hierarchy == c.hierarchy
            } else {
                other.hierarchy == 0
                    && V1_COMOUNTS
                        .iter()
                        .any(|pair| pair.contains(&c.name.as_str()) && pair.contains(&other.name.as_str()))
            }
        };
        let mut group = vec![c.name.clone()];
        placed[i] = true;
        for j in i + 1..enabled.len() {
            if !placed[j] && partner(enabled[j]) {
                group.push(enabled[j].name.clone());
                placed[j] = true;
            }
        }
        plan.push(V1Mount {
            dir: group.join(","),
            controllers: group,
        });
    }
    plan
}

fn setup_v1(root: &Path, reason: FallbackReason) -> Result<CgroupReport, CgroupError> {
    let base = under(root, CGROUP_ROOT);
    if !is_mount_of(&base, statfs::TMPFS_MAGIC) {
        mount(Some("tmpfs"), &base, Some("tmpfs"), FLAGS, Some("mode=0755")).map_err(CgroupError::V1Tmpfs)?;
    }
    let table = fs::read_to_string(under(root, "/proc/cgroups")).map_err(CgroupError::ProcCgroups)?;
    let mut report = CgroupReport {
        version: CgroupVersion::V1,
        controllers: Vec::new(),
        refused: Vec::new(),
        fallback: Some(reason),
    };
    for hierarchy in plan_v1(&parse_proc_cgroups(&table)) {
        match mount_v1(&base, &hierarchy) {
            Ok(()) => report.controllers.push(hierarchy.dir),
            Err(error) => report.refused.push(RefusedController {
                name: hierarchy.dir,
                error,
            }),
        }
    }
    Ok(report)
}

fn mount_v1(base: &Path, hierarchy: &V1Mount) -> io::Result<()> {
    let dir = base.join(&hierarchy.dir);
    fs::create_dir_all(&dir)?;
    if !is_mount_of(&dir, statfs::CGROUP_SUPER_MAGIC) {
        mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            FLAGS,
            Some(hierarchy.dir.as_str()),
        )?;
    }
    link_comounts(base, hierarchy)
}

/// For a co-mounted hierarchy, links each controller's conventional path to it
/// (`cpu -> cpu,cpuacct`); existing entries are kept.
fn link_comounts(base: &Path, hierarchy: &V1Mount) -> io::Result<()> {
    if hierarchy.controllers.len() < 2 {
        return Ok(());
    }
    for name in &hierarchy.controllers {
        match std::os::unix::fs::symlink(&hierarchy.dir, base.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child, TempDir};

    #[test]
    fn cmdline_switch() {
        assert!(wants_v1("console=ttyS0 rgcs.cgroup=v1 quiet"));
        assert!(!wants_v1("console=ttyS0 rgcs.cgroup=v2 quiet"));
        assert!(!wants_v1("rgcs.cgroup=v1x"));
        assert!(
            !wants_v1("panic=-1 -- rgcs.cgroup=v1"),
            "init arguments do not count"
        );
        assert!(!wants_v1(""));
    }

    #[test]
    fn enables_one_at_a_time_and_continues_past_refusals() {
        let controllers: Vec<String> = ["cpuset", "cpu", "io", "memory", "pids"].map(String::from).into();
        let mut writes = Vec::new();
        let (enabled, refused) = enable_controllers(&controllers, |cmd| {
            writes.push(cmd.to_owned());
            if cmd == "+io" {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                Ok(())
            }
        });
        assert_eq!(writes, ["+cpuset", "+cpu", "+io", "+memory", "+pids"]);
        assert_eq!(enabled, ["cpuset", "cpu", "memory", "pids"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].name, "io");
    }

    const PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t1\t1
cpu\t0\t1\t1
cpuacct\t0\t1\t1
blkio\t0\t1\t1
memory\t0\t1\t0
net_cls\t3\t1\t1
net_prio\t3\t1\t1
perf_event\t0\t1\t1
broken line
";

    #[test]
    fn proc_cgroups_parsing_and_v1_plan() {
        let table = parse_proc_cgroups(PROC_CGROUPS);
        assert_eq!(table.len(), 8, "malformed rows skipped");
        assert_eq!(
            table[4],
            ProcCgroup {
                name: "memory".into(),
                hierarchy: 0,
                enabled: false
            }
        );
        let plan: Vec<_> = plan_v1(&table).into_iter().map(|m| m.dir).collect();
        assert_eq!(
            plan,
            ["cpuset", "cpu,cpuacct", "blkio", "net_cls,net_prio", "perf_event"]
        );

        // Already-bound controllers keep their hierarchy's exact set; a lone half is mounted alone.
        let table = parse_proc_cgroups("cpuacct 0 1 1\ncpu 5 1 1\nnet_prio 5 1 1\nnet_cls 0 1 1\n");
        let plan = plan_v1(&table);
        let dirs: Vec<_> = plan.iter().map(|m| m.dir.as_str()).collect();
        assert_eq!(dirs, ["cpuacct", "cpu,net_prio", "net_cls"]);
        assert_eq!(plan[1].controllers, ["cpu", "net_prio"]);
    }

    #[test]
    fn v1_symlinks_for_comounts() {
        let dir = TempDir::new();
        let pair = V1Mount {
            dir: "cpu,cpuacct".into(),
            controllers: vec!["cpu".into(), "cpuacct".into()],
        };
        link_comounts(dir.path(), &pair).expect("links");
        link_comounts(dir.path(), &pair).expect("idempotent");
        assert_eq!(
            std::fs::read_link(dir.path().join("cpu")).expect("link"),
            Path::new("cpu,cpuacct")
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("cpuacct")).expect("link"),
            Path::new("cpu,cpuacct")
        );
        let alone = V1Mount {
            dir: "pids".into(),
            controllers: vec!["pids".into()],
        };
        link_comounts(dir.path(), &alone).expect("no links");
        assert!(
            dir.path().join("pids").symlink_metadata().is_err(),
            "a lone controller gets no link"
        );
        let err = link_comounts(&dir.path().join("missing"), &pair).expect_err("no base dir");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn cgroup2_mounts_in_a_private_namespace() {
        // Mounting cgroup2 only reads the hierarchy (cgroup.controllers); nothing is enabled or
        // written, so the host's cgroups are untouched.
        let dir = TempDir::new();
        let root = dir.path().to_path_buf();
        run_in_child(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP, move || {
            ctx(
                mount(
                    Some("tmpfs"),
                    &root,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                ),
                "root tmpfs",
            )?;
            ctx(fs::create_dir_all(under(&root, CGROUP_ROOT)), "mkdir")?;
            let controllers = mount_v2(&root).map_err(|r| format!("mount_v2: {r}"))?;
            let target = under(&root, CGROUP_ROOT);
            check(is_mount_of(&target, statfs::CGROUP2_SUPER_MAGIC), || {
                "cgroup2 mounted".into()
            })?;
            let again = mount_v2(&root).map_err(|r| format!("second mount_v2: {r}"))?;
            check(again == controllers, || "idempotent".into())?;
            let mounts = ctx(fs::read_to_string("/proc/self/mountinfo"), "mountinfo")?;
            let n = mounts
                .lines()
                .filter(|l| l.contains(&*target.to_string_lossy()))
                .count();
            check(n == 1, || format!("{n} cgroup2 mounts stacked"))
        });
    }
}
