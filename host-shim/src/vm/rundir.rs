//! The per-VM run directory: sockets and logs of one UVM, with a short path because
//! `sun_path` holds 108 bytes and `<run_dir>/vsock.sock_4294967295` must still fit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Longest accepted run directory path (docs/uvm-notes.md §4).
pub const MAX_RUN_DIR_LEN: usize = 80;
/// Environment variable: when set (non-empty), the run directory is kept (its sockets are
/// still removed) so logs can be read after the VM is gone.
pub const ENV_KEEP_RUNDIR: &str = "RGCS_KEEP_RUNDIR";

/// Errors of run directory handling.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// `mkdtemp` failed.
    #[error("cannot create a run directory under {parent}")]
    Create {
        /// The parent directory.
        parent: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The path is too long for Unix sockets or contains a comma (QEMU option syntax).
    #[error("run directory {path} is unusable: longer than {MAX_RUN_DIR_LEN} bytes or contains a comma")]
    Unusable {
        /// The path.
        path: PathBuf,
    },
}

/// A run directory. A directory made by [`RunDir::create`] is removed on drop (unless
/// [`ENV_KEEP_RUNDIR`] is set); one from [`RunDir::at`] is never touched.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    owned: bool,
}

impl RunDir {
    /// Creates `<parent>/rgcs-XXXXXX` (mode 0700).
    pub fn create(parent: &Path) -> Result<Self, RunDirError> {
        let candidate = parent.join("rgcs-XXXXXX");
        Self::check(&candidate)?;
        sweep_stale(parent);
        let path = nix::unistd::mkdtemp(&candidate).map_err(|e| RunDirError::Create {
            parent: parent.into(),
            source: e.into(),
        })?;
        // Who owns it: a later run removes the directory if this process died without cleaning
        // up (SIGKILL), see `sweep_stale`.
        fs::write(path.join(OWNER_FILE), std::process::id().to_string()).map_err(|source| {
            RunDirError::Create {
                parent: parent.into(),
                source,
            }
        })?;
        Ok(Self { path, owned: true })
    }

    /// Refers to an existing directory without owning it (tests, golden argv).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            owned: false,
        }
    }

    fn check(path: &Path) -> Result<(), RunDirError> {
        let s = path.as_os_str().as_encoded_bytes();
        if s.len() > MAX_RUN_DIR_LEN || s.contains(&b',') {
            return Err(RunDirError::Unusable { path: path.into() });
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vhost-user socket QEMU connects to (created by vhost-device-vsock).
    pub fn vhost_socket(&self) -> PathBuf {
        self.path.join("vhost.sock")
    }

    /// vhost-device-vsock's `uds-path`: host→guest connections go here; guest port `P`
    /// arrives on `<prefix>_P`.
    pub fn vsock_prefix(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// The guest serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// vhost-device-vsock's stdout and stderr.
    pub fn vhost_log(&self) -> PathBuf {
        self.path.join("vhost-device-vsock.log")
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// Removes every socket in the directory, then the directory itself unless
    /// [`ENV_KEEP_RUNDIR`] is set. Only for owned directories; idempotent.
    pub fn remove(&mut self) {
        if !self.owned {
            return;
        }
        self.owned = false;
        if std::env::var_os(ENV_KEEP_RUNDIR).is_some_and(|v| !v.is_empty()) {
            remove_sockets(&self.path);
            let _ = fs::write(self.path.join(KEPT_FILE), b"");
            tracing::info!(path = %self.path.display(), "keeping the run directory ({ENV_KEEP_RUNDIR} is set)");
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the run directory");
            }
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// File in a run directory holding the owning host process's PID.
const OWNER_FILE: &str = "owner.pid";
/// Marker of a directory kept on purpose (`RGCS_KEEP_RUNDIR`): never swept.
const KEPT_FILE: &str = "kept";

/// Removes `rgcs-*` run directories under `parent` whose owner process is gone (a host killed
/// with SIGKILL cannot clean up; its QEMU and backend died with it through PDEATHSIG).
fn sweep_stale(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("rgcs-") && n.len() == 11);
        if !is_ours || !entry.file_type().is_ok_and(|t| t.is_dir()) || path.join(KEPT_FILE).exists() {
            continue;
        }
        let Some(pid) = fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid)
            .ok()
            .and_then(crate::sys::process::running_since)
            .is_none()
        {
            tracing::info!(path = %path.display(), owner = pid, "removing a stale run directory");
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn remove_sockets(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_run_dirs_of_dead_owners_are_swept_live_and_kept_ones_stay() {
        let parent = tempfile::tempdir().unwrap();
        let dead = parent.path().join("rgcs-dead00");
        let live = parent.path().join("rgcs-live00");
        let kept = parent.path().join("rgcs-kept00");
        let other = parent.path().join("unrelated");
        for d in [&dead, &live, &kept, &other] {
            std::fs::create_dir(d).unwrap();
        }
        // a pid that cannot exist (above pid_max)
        std::fs::write(dead.join(OWNER_FILE), "999999999").unwrap();
        std::fs::write(live.join(OWNER_FILE), std::process::id().to_string()).unwrap();
        std::fs::write(kept.join(OWNER_FILE), "999999999").unwrap();
        std::fs::write(kept.join(KEPT_FILE), "").unwrap();
        std::fs::write(other.join(OWNER_FILE), "999999999").unwrap();
        let rd = RunDir::create(parent.path()).unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && kept.exists() && other.exists());
        assert!(rd.path().join(OWNER_FILE).exists());
    }

    use super::*;

    #[test]
    fn creates_short_dirs_and_removes_them() {
        let parent = tempfile::tempdir_in("/tmp").unwrap();
        let mut rd = RunDir::create(parent.path()).unwrap();
        let path = rd.path().to_path_buf();
        assert!(path.is_dir());
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("rgcs-"));
        assert!(rd.vsock_prefix().as_os_str().len() + "_4294967295".len() < 108);
        fs::write(path.join("console.log"), b"x").unwrap();
        rd.remove();
        assert!(!path.exists());
        rd.remove();
    }

    #[test]
    fn rejects_long_or_comma_paths() {
        assert!(matches!(
            RunDir::create(&PathBuf::from("/tmp").join("x".repeat(80))),
            Err(RunDirError::Unusable { .. })
        ));
        assert!(matches!(
            RunDir::create(Path::new("/tmp/a,b")),
            Err(RunDirError::Unusable { .. })
        ));
    }

    #[test]
    fn borrowed_dirs_are_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        drop(RunDir::at(parent.path()));
        assert!(parent.path().is_dir());
    }
}
