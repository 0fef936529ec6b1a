//! The path policy for guest paths the host sends (`MountPath`, `ContainerRootPath`, layer paths,
//! `ScratchPath`): absolute, normalised, bounded, under one of the roots the host uses, with no
//! character that could inject a mount option, and, at mount time, no symlink under the root.
//!
//! The roots are those hcsshim's host code builds paths under (`internal/guestpath`,
//! `internal/uvm`): `/run/gcs/c` (v1 bundles), `/run/gcs/pods` (v2 bundles), `/run/layers` (VPMem
//! layers), `/run/mounts` (SCSI and Plan 9 mounts), `/run/drivers` (driver disks).

use std::io;
use std::path::{Path, PathBuf};

use super::StorageError;

/// The roots of the protocol: every path the host sends lies strictly under one of them.
pub const DEFAULT_ROOTS: [&str; 5] = [
    "/run/gcs/c",
    "/run/gcs/pods",
    "/run/layers",
    "/run/mounts",
    "/run/drivers",
];

/// Longest accepted path, in bytes (the host's paths are well under 300).
pub const MAX_PATH_LEN: usize = 1024;

/// Longest accepted path component, in bytes (`NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// The spelling rules every guest path from the host obeys, wherever it points: non-empty,
/// bounded, absolute, normalised (no `.`, `..`, empty component or trailing `/`), no control
/// character and no `,` or `:` (which would change mount options). The reason when not.
pub fn spelling(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("is too long");
    }
    if !path.starts_with('/') {
        return Err("is not absolute");
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if path.contains([',', ':']) {
        return Err("contains ',' or ':', which would change the mount options");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("is not normalised (trailing '/')");
    }
    for comp in path[1..].split('/') {
        match comp {
            "" => return Err("is not normalised (empty component)"),
            "." | ".." => return Err("is not normalised ('.' or '..')"),
            c if c.len() > MAX_COMPONENT_LEN => return Err("has a component that is too long"),
            _ => {}
        }
    }
    Ok(())
}

/// Which paths the agent accepts.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    roots: Vec<PathBuf>,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_ROOTS.iter().map(PathBuf::from).collect())
    }
}

impl PathPolicy {
    /// A policy with these roots (absolute, normalised; tests use a temporary directory).
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self { roots }
    }

    /// The roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks the spelling of `path` (no file system access) and returns it as a `PathBuf`.
    pub fn check(&self, what: &'static str, path: &str) -> Result<PathBuf, StorageError> {
        let bad = |reason: &'static str| StorageError::BadPath {
            what,
            path: path.escape_debug().to_string(),
            reason,
        };
        spelling(path).map_err(bad)?;
        let p = PathBuf::from(path);
        if !self.roots.iter().any(|r| p.starts_with(r) && p != *r) {
            return Err(bad("is not under a root the protocol uses"));
        }
        Ok(p)
    }

    /// Refuses `path` when any existing component at or below its root is a symlink (a symlink
    /// could point the mount outside the roots). With `allow_final`, the last component may be
    /// one (a `BlockDev` link being removed). Stops at the first component that does not exist.
    pub fn check_no_symlinks(&self, path: &Path, allow_final: bool) -> Result<(), StorageError> {
        let Some(root) = self.roots.iter().find(|r| path.starts_with(r)) else {
            return Err(StorageError::BadPath {
                what: "path",
                path: path.display().to_string(),
                reason: "is not under a root the protocol uses",
            });
        };
        let mut cur = root.clone();
        let rest: Vec<_> = path.strip_prefix(root).unwrap_or(path).components().collect();
        let mut comps = vec![None];
        comps.extend(rest.iter().map(Some));
        let last = comps.len() - 1;
        for (i, c) in comps.into_iter().enumerate() {
            if let Some(c) = c {
                cur.push(c);
            }
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() && !(allow_final && i == last) => {
                    return Err(StorageError::SymlinkInPath {
                        path: path.display().to_string(),
                        link: cur.display().to_string(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(StorageError::Io {
                        what: "inspect",
                        path: cur.display().to_string(),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_paths_hosts_send() {
        let p = PathPolicy::default();
        for ok in [
            "/run/gcs/c/abc",
            "/run/gcs/c/abc/rootfs",
            "/run/gcs/c/abc/scratch/abc",
            "/run/gcs/pods/pod1/c1/rootfs",
            "/run/layers/p0",
            "/run/layers/p3-4096-8192",
            "/run/mounts/scsi/m1",
            "/run/mounts/scsi/0_1_0",
            "/run/mounts/plan9/3",
            "/run/drivers/gpu",
        ] {
            assert_eq!(p.check("MountPath", ok).unwrap(), PathBuf::from(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_paths() {
        let p = PathPolicy::default();
        let long = format!("/run/gcs/c/{}", "a/".repeat(600));
        let long_comp = format!("/run/gcs/c/{}", "a".repeat(256));
        for bad in [
            "",
            "run/gcs/c/x",
            "./run/gcs/c/x",
            "/run/gcs/c/../../etc",
            "/run/gcs/c/x/..",
            "/run/gcs/c/./x",
            "/run/gcs//c/x",
            "/run/gcs/c/x/",
            "/run/gcs/c/x\0y",
            "/run/gcs/c/x\ny",
            "/run/gcs/c",
            "/run/gcs/c/",
            "/run/gcsx/c",
            "/etc",
            "/",
            "/tmp/x",
            "/run/layers/a,upperdir=/etc",
            "/run/layers/a:/etc",
            long.trim_end_matches('/'),
            &long_comp,
        ] {
            assert!(p.check("MountPath", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlinks_under_a_root_are_refused() {
        let dir = std::env::temp_dir().join(format!("rgcs-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("/dev/null", root.join("real/link")).unwrap();
        let p = PathPolicy::new(vec![root.clone()]);
        assert!(p.check_no_symlinks(&root.join("real/x/y"), false).is_ok());
        assert!(p.check_no_symlinks(&root.join("evil/x"), false).is_err());
        assert!(p.check_no_symlinks(&root.join("evil"), false).is_err());
        assert!(p.check_no_symlinks(&root.join("real/link"), false).is_err());
        assert!(p.check_no_symlinks(&root.join("real/link"), true).is_ok());
        assert!(p.check_no_symlinks(&root.join("evil/link"), true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
