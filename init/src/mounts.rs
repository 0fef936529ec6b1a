//! The early filesystem table: what PID 1 mounts and links before anything else runs
//! (docs/gcs-reference.md §6.1 steps 4–9, the idea of hcsshim's `init.c` op table).
//!
//! This module owns [`EARLY_STEPS`] and the executor [`run`]. Targets are absolute paths resolved
//! under a root directory (`/` in PID 1, a scratch directory in tests). Every step is idempotent: a
//! mount whose target is already a mount point of the expected filesystem type is left alone, and a
//! link whose path already exists is kept. Cgroups are not here (see [`crate::cgroups`]).

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{self, FsType};

const NODEV_NOSUID_NOEXEC: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);
const NOSUID_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC);

/// One filesystem to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// `source` argument of mount(2) (informational for virtual filesystems).
    pub source: &'static str,
    /// Absolute mount point, relative to the root given to [`run`]. Created (mode 0755) if missing.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: Option<&'static str>,
    /// `statfs` magic of this filesystem: a target that is already a mount point with this magic
    /// counts as done.
    pub magic: FsType,
    /// Whether `EBUSY` means "already mounted" (devtmpfs when the kernel mounted it itself).
    pub busy_ok: bool,
    /// Whether failure is fatal for PID 1 (`/dev`, `/proc`, `/sys`).
    pub essential: bool,
}

/// One step of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Mount a filesystem.
    Mount(MountSpec),
    /// Create the symlink `link` (absolute, under the root) pointing at `target` (stored verbatim),
    /// unless something already exists at `link`. Never essential.
    Symlink {
        /// Where the link is created.
        link: &'static str,
        /// The link's contents.
        target: &'static str,
    },
}

impl Step {
    /// The path this step creates or mounts on.
    pub const fn path(&self) -> &'static str {
        match self {
            Step::Mount(m) => m.target,
            Step::Symlink { link, .. } => link,
        }
    }
}

const fn fs(
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    magic: FsType,
    essential: bool,
) -> Step {
    Step::Mount(MountSpec {
        source: fstype,
        target,
        fstype,
        flags,
        data,
        magic,
        busy_ok: false,
        essential,
    })
}

/// The early table, executed in order by PID 1.
pub const EARLY_STEPS: &[Step] = &[
    Step::Mount(MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        magic: statfs::TMPFS_MAGIC,
        busy_ok: true,
        essential: true,
    }),
    fs(
        "/proc",
        "proc",
        NODEV_NOSUID_NOEXEC,
        None,
        statfs::PROC_SUPER_MAGIC,
        true,
    ),
    Step::Symlink {
        link: "/dev/fd",
        target: "/proc/self/fd",
    },
    Step::Symlink {
        link: "/dev/stdin",
        target: "/proc/self/fd/0",
    },
    Step::Symlink {
        link: "/dev/stdout",
        target: "/proc/self/fd/1",
    },
    Step::Symlink {
        link: "/dev/stderr",
        target: "/proc/self/fd/2",
    },
    fs(
        "/run",
        "tmpfs",
        NODEV_NOSUID_NOEXEC,
        Some("mode=0755"),
        statfs::TMPFS_MAGIC,
        false,
    ),
    fs(
        "/tmp",
        "tmpfs",
        NODEV_NOSUID_NOEXEC,
        None,
        statfs::TMPFS_MAGIC,
        false,
    ),
    fs(
        "/dev/shm",
        "tmpfs",
        NODEV_NOSUID_NOEXEC,
        None,
        statfs::TMPFS_MAGIC,
        false,
    ),
    fs(
        "/dev/pts",
        "devpts",
        NOSUID_NOEXEC,
        Some("newinstance,ptmxmode=0666"),
        statfs::DEVPTS_SUPER_MAGIC,
        false,
    ),
    // devtmpfs provides a /dev/ptmx node (which finds the pts instance beside it); without one, a
    // link to the instance's own ptmx does the same job.
    Step::Symlink {
        link: "/dev/ptmx",
        target: "pts/ptmx",
    },
    fs(
        "/sys",
        "sysfs",
        NODEV_NOSUID_NOEXEC,
        None,
        statfs::SYSFS_MAGIC,
        true,
    ),
];

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The filesystem was mounted.
    Mounted,
    /// The target already was a mount point of this type (or the kernel said `EBUSY` where allowed).
    AlreadyMounted,
    /// The symlink was created.
    Linked,
    /// Something already existed at the link path.
    AlreadyPresent,
}

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("create mount point {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// mount(2) failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Full mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The symlink could not be created.
    #[error("create symlink {link} -> {target}")]
    Symlink {
        /// Full link path.
        link: PathBuf,
        /// Link contents.
        target: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What [`run`] did: every step's outcome in order, and the non-essential failures.
#[derive(Debug, Default)]
pub struct MountReport {
    /// `(step path, outcome)` for each step that succeeded.
    pub done: Vec<(&'static str, Outcome)>,
    /// Failures of non-essential steps (PID 1 logs them and carries on).
    pub failed: Vec<MountError>,
}

impl MountReport {
    /// How many steps ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.done.iter().filter(|(_, o)| *o == outcome).count()
    }
}

/// Executes `steps` in order under `root`. Stops at the first failure of an essential mount and
/// returns it; other failures are collected in the report.
pub fn run(root: &Path, steps: &[Step]) -> Result<MountReport, MountError> {
    let mut report = MountReport::default();
    for step in steps {
        let result = match step {
            Step::Mount(spec) => mount_one(root, spec),
            Step::Symlink { link, target } => symlink_one(root, link, target),
        };
        match result {
            Ok(outcome) => report.done.push((step.path(), outcome)),
            Err(e) if matches!(step, Step::Mount(spec) if spec.essential) => return Err(e),
            Err(e) => report.failed.push(e),
        }
    }
    Ok(report)
}

/// `root` joined with the absolute `path`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Mounts `spec` under `root` unless it is already there.
pub fn mount_one(root: &Path, spec: &MountSpec) -> Result<Outcome, MountError> {
    let target = under(root, spec.target);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&target)
        .map_err(|source| MountError::CreateDir {
            path: target.clone(),
            source,
        })?;
    if is_mount_of(&target, spec.magic) {
        return Ok(Outcome::AlreadyMounted);
    }
    match mount(
        Some(spec.source),
        &target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    ) {
        Ok(()) => Ok(Outcome::Mounted),
        Err(Errno::EBUSY) if spec.busy_ok => Ok(Outcome::AlreadyMounted),
        Err(source) => Err(MountError::Mount {
            fstype: spec.fstype,
            target,
            source,
        }),
    }
}

fn symlink_one(root: &Path, link: &str, target: &'static str) -> Result<Outcome, MountError> {
    let path = under(root, link);
    if path.symlink_metadata().is_ok() {
        return Ok(Outcome::AlreadyPresent);
    }
    match std::os::unix::fs::symlink(target, &path) {
        Ok(()) => Ok(Outcome::Linked),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Outcome::AlreadyPresent),
        Err(source) => Err(MountError::Symlink {
            link: path,
            target,
            source,
        }),
    }
}

/// Whether `path` is the root of a mount (its device differs from its parent's) whose filesystem has
/// the `statfs` magic `magic`. Any error reads as "no", so the caller goes on to mount.
pub fn is_mount_of(path: &Path, magic: FsType) -> bool {
    let Some(parent) = path.parent() else { return false };
    let (Ok(here), Ok(above)) = (path.metadata(), parent.metadata()) else {
        return false;
    };
    here.dev() != above.dev() && statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == magic)
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child, TempDir};

    #[test]
    fn table_sanity() {
        let paths: Vec<_> = EARLY_STEPS.iter().map(Step::path).collect();
        assert!(paths.iter().all(|p| p.starts_with('/')), "absolute targets");
        let mut unique = paths.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), paths.len(), "no path twice");
        let pos = |p: &str| paths.iter().position(|q| *q == p).unwrap_or(usize::MAX);
        // /dev first, /proc before links into it, each mount point's parent mounted before it.
        assert_eq!((pos("/dev"), pos("/proc")), (0, 1));
        for p in [
            "/dev/fd",
            "/dev/stdin",
            "/dev/stdout",
            "/dev/stderr",
            "/dev/shm",
            "/dev/pts",
            "/dev/ptmx",
        ] {
            assert!(pos(p) > pos("/dev") && pos(p) != usize::MAX, "{p}");
        }
        assert!(pos("/dev/ptmx") > pos("/dev/pts"));
        let essential: Vec<_> = EARLY_STEPS
            .iter()
            .filter_map(|s| match s {
                Step::Mount(m) if m.essential => Some(m.target),
                _ => None,
            })
            .collect();
        assert_eq!(essential, ["/dev", "/proc", "/sys"]);
        for step in EARLY_STEPS {
            if let Step::Mount(m) = step {
                assert!(m.flags.contains(MsFlags::MS_NOSUID), "{} is nosuid", m.target);
                assert_eq!(m.busy_ok, m.fstype == "devtmpfs", "{}", m.target);
                if m.target != "/dev" && m.target != "/dev/pts" {
                    assert!(
                        m.flags.contains(NODEV_NOSUID_NOEXEC),
                        "{} is nodev,nosuid,noexec",
                        m.target
                    );
                }
            }
        }
        assert!(EARLY_STEPS.contains(&Step::Symlink {
            link: "/dev/fd",
            target: "/proc/self/fd"
        }));
        assert_eq!(under(Path::new("/x/y"), "/dev/pts"), Path::new("/x/y/dev/pts"));
    }

    /// The real table with devtmpfs swapped for a private tmpfs: devtmpfs is one kernel-wide instance,
    /// so creating links in it would write into the host's /dev.
    fn test_table() -> Vec<Step> {
        EARLY_STEPS
            .iter()
            .map(|s| match s {
                Step::Mount(m) if m.fstype == "devtmpfs" => Step::Mount(MountSpec {
                    source: "tmpfs",
                    fstype: "tmpfs",
                    ..*m
                }),
                other => *other,
            })
            .collect()
    }

    fn mount_count(root: &Path) -> Result<usize, String> {
        let info = ctx(std::fs::read_to_string("/proc/self/mountinfo"), "read mountinfo")?;
        let prefix = root.to_string_lossy().into_owned();
        Ok(info
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&prefix)))
            .count())
    }

    #[test]
    fn table_runs_in_a_private_mount_namespace_and_is_idempotent() {
        let dir = TempDir::new();
        let root = dir.path().to_path_buf();
        run_in_child(CloneFlags::CLONE_NEWNS, move || {
            // A throwaway tmpfs as the root: nothing is created in the host's /tmp either.
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
            let table = test_table();
            let first = ctx(run(&root, &table), "first run")?;
            check(first.failed.is_empty(), || {
                format!("failures: {:?}", first.failed)
            })?;
            check(first.count(Outcome::Mounted) == 7, || {
                format!("first run: {:?}", first.done)
            })?;
            check(first.count(Outcome::Linked) == 5, || {
                format!("first run: {:?}", first.done)
            })?;

            for (path, magic) in [
                ("/proc", statfs::PROC_SUPER_MAGIC),
                ("/sys", statfs::SYSFS_MAGIC),
                ("/dev/pts", statfs::DEVPTS_SUPER_MAGIC),
                ("/run", statfs::TMPFS_MAGIC),
                ("/tmp", statfs::TMPFS_MAGIC),
                ("/dev/shm", statfs::TMPFS_MAGIC),
            ] {
                check(is_mount_of(&under(&root, path), magic), || {
                    format!("{path} is mounted")
                })?;
            }
            let link = |p: &str| std::fs::read_link(under(&root, p)).map_err(|e| format!("{p}: {e}"));
            check(link("/dev/fd")? == Path::new("/proc/self/fd"), || {
                "/dev/fd".into()
            })?;
            check(link("/dev/stderr")? == Path::new("/proc/self/fd/2"), || {
                "/dev/stderr".into()
            })?;
            check(link("/dev/ptmx")? == Path::new("pts/ptmx"), || "/dev/ptmx".into())?;
            check(under(&root, "/dev/pts/ptmx").exists(), || {
                "new devpts instance has ptmx".into()
            })?;
            check(under(&root, "/proc/self/status").exists(), || {
                "proc is usable".into()
            })?;
            let run_mode = ctx(under(&root, "/run").metadata(), "stat /run")?.mode() & 0o7777;
            check(run_mode == 0o755, || format!("/run mode {run_mode:o}"))?;

            let before = mount_count(&root)?;
            let second = ctx(run(&root, &table), "second run")?;
            check(second.failed.is_empty(), || {
                format!("failures: {:?}", second.failed)
            })?;
            check(second.count(Outcome::AlreadyMounted) == 7, || {
                format!("second: {:?}", second.done)
            })?;
            check(second.count(Outcome::AlreadyPresent) == 5, || {
                format!("second: {:?}", second.done)
            })?;
            check(mount_count(&root)? == before, || {
                "second run stacked no mounts".into()
            })
        });
    }

    #[test]
    fn essential_failures_stop_and_others_are_collected() {
        let dir = TempDir::new();
        // A regular file where a directory is needed: mkdir fails without any privilege or mount.
        std::fs::write(dir.path().join("blocked"), b"").expect("file");
        let optional = MountSpec {
            source: "tmpfs",
            target: "/blocked/run",
            fstype: "tmpfs",
            flags: MsFlags::empty(),
            data: None,
            magic: statfs::TMPFS_MAGIC,
            busy_ok: false,
            essential: false,
        };
        let steps = [
            Step::Mount(optional),
            Step::Symlink {
                link: "/blocked/fd",
                target: "/proc/self/fd",
            },
            Step::Symlink {
                link: "/fd",
                target: "/proc/self/fd",
            },
        ];
        let report = run(dir.path(), &steps).expect("nothing essential");
        assert_eq!(report.failed.len(), 2);
        assert!(matches!(report.failed[0], MountError::CreateDir { .. }));
        assert!(matches!(report.failed[1], MountError::Symlink { .. }));
        assert_eq!(report.done, vec![("/fd", Outcome::Linked)]);

        let essential = [
            Step::Mount(MountSpec {
                essential: true,
                ..optional
            }),
            steps[2],
        ];
        let err = run(dir.path(), &essential).expect_err("essential failure");
        assert!(err.to_string().starts_with("create mount point "), "{err}");
    }
}
