//! Plan 9 shares (docs/gcs-reference.md §6.4): 9P2000.L over a vsock connection to the host's server
//! (port 564), mounted with `trans=fd`; the kernel keeps its own reference to the socket, so the
//! agent closes its descriptor after the mount.

use std::os::fd::{AsRawFd, RawFd};

use nix::mount::MsFlags;
use rgcs_protocol::message::MappedDirectory;

use super::mount::Kind;
use super::{Storage, StorageError};

/// `msize` and the socket buffer sizes (hcsshim's `packetPayloadBytes`).
pub const SOCKET_BUFFER: usize = 65536;

/// Longest accepted `ShareName`.
pub const MAX_SHARE_NAME: usize = 255;

/// The mount data for a 9p share over descriptor `fd`.
pub fn mount_data(fd: RawFd, share: &str, read_only: bool) -> String {
    let mut data = format!("trans=fd,rfdno={fd},wfdno={fd},msize={SOCKET_BUFFER},version=9p2000.L");
    if read_only {
        data.push_str(",noload");
    }
    if !share.is_empty() {
        data.push_str(",aname=");
        data.push_str(share);
    }
    data
}

/// Checks `ShareName`: it goes into the mount data, so no `,` and no control characters.
pub fn check_share_name(share: &str) -> Result<(), StorageError> {
    let bad = |reason: &str| StorageError::BadSetting {
        field: "ShareName",
        reason: reason.to_owned(),
    };
    if share.len() > MAX_SHARE_NAME {
        return Err(bad("too long"));
    }
    if share.contains(',') || share.chars().any(char::is_control) {
        return Err(bad("contains ',' or a control character"));
    }
    Ok(())
}

impl Storage {
    pub(super) fn add_plan9(&self, d: &MappedDirectory) -> Result<(), StorageError> {
        let path = self.cfg.policy.check("MountPath", &d.mount_path)?;
        check_share_name(&d.share_name)?;
        let port = u32::try_from(d.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| StorageError::BadSetting {
                field: "Port",
                reason: format!("{} is not a vsock port", d.port),
            })?;
        let id = format!(
            "9p {port} {:?} {}",
            d.share_name,
            if d.read_only { "ro" } else { "rw" }
        );
        let mut table = self.lock();
        if table.share(&path, &id)? {
            return Ok(());
        }
        let created = self.prepare_dir(&path, 0o700)?;
        let fd = match self.sys.dial_host(port) {
            Ok(fd) => fd,
            Err(e) => {
                Self::undo_dir(created, &path);
                return Err(StorageError::Io {
                    what: "connect to the Plan 9 server for",
                    path: path.display().to_string(),
                    source: e,
                });
            }
        };
        let data = mount_data(fd.as_raw_fd(), &d.share_name, d.read_only);
        let flags = if d.read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        let res = self.mount_at(&path, &path, "9p", flags, Some(&data));
        drop(fd); // the kernel holds its own reference
        if let Err(e) = res {
            Self::undo_dir(created, &path);
            return Err(e);
        }
        table.insert(path, id, Kind::Plain);
        Ok(())
    }

    pub(super) fn remove_plan9(&self, d: &MappedDirectory) -> Result<(), StorageError> {
        let path = self.cfg.policy.check("MountPath", &d.mount_path)?;
        self.remove_mount(&path, Kind::Plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_data_matches_hcsshim_plus_the_dialect() {
        assert_eq!(
            mount_data(7, "3", true),
            "trans=fd,rfdno=7,wfdno=7,msize=65536,version=9p2000.L,noload,aname=3"
        );
        assert_eq!(
            mount_data(9, "", false),
            "trans=fd,rfdno=9,wfdno=9,msize=65536,version=9p2000.L"
        );
        assert!(check_share_name("0").is_ok());
        assert!(check_share_name("a,trans=tcp").is_err());
        assert!(check_share_name("a\nb").is_err());
        assert!(check_share_name(&"x".repeat(300)).is_err());
    }
}
