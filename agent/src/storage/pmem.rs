//! VPMem layers (docs/gcs-reference.md §6.3): `/dev/pmem<N>`, always read-only ext4 (`MS_RDONLY`,
//! `noload`), through a dm-linear device when `MappingInfo` packs several layers in one device.

use std::time::Instant;

use nix::mount::MsFlags;
use rgcs_protocol::message::VpMemDevice;

use super::mount::Kind;
use super::{devmapper, Storage, StorageError};

impl Storage {
    pub(super) fn add_pmem(&self, d: &VpMemDevice) -> Result<(), StorageError> {
        let path = self.cfg.policy.check("MountPath", &d.mount_path)?;
        let dev = self.cfg.dev.join(format!("pmem{}", d.device_number));
        let sectors = d
            .mapping_info
            .as_ref()
            .map(devmapper::linear_sectors)
            .transpose()?;
        let id = match &d.mapping_info {
            Some(m) => format!(
                "pmem {} {}+{}",
                d.device_number, m.device_offset_in_bytes, m.device_size_in_bytes
            ),
            None => format!("pmem {}", d.device_number),
        };
        let mut table = self.lock();
        if table.share(&path, &id)? {
            return Ok(());
        }
        // A hot-plugged device's node appears asynchronously (virtio-pmem on QEMU; on Hyper-V
        // the host also adds the device just before the request): wait for it, bounded.
        let deadline = Instant::now() + self.cfg.device_timeout;
        while !dev.exists() {
            if Instant::now() >= deadline {
                return Err(StorageError::PmemTimeout(dev.display().to_string()));
            }
            std::thread::sleep(super::scsi::POLL);
        }
        let created = self.prepare_dir(&path, 0o700)?;
        let (source, kind) = match (&d.mapping_info, sectors) {
            (Some(m), Some((start, len))) => {
                let name = devmapper::linear_name(d.device_number, m);
                match self.sys.dm_linear_create(&name, &dev, start, len) {
                    Ok(node) => (node, Kind::Dm(name)),
                    Err(e) => {
                        Self::undo_dir(created, &path);
                        return Err(StorageError::Io {
                            what: "create the dm-linear device over",
                            path: dev.display().to_string(),
                            source: e,
                        });
                    }
                }
            }
            _ => (dev, Kind::Plain),
        };
        if let Err(e) = self.mount_at(&source, &path, "ext4", MsFlags::MS_RDONLY, Some("noload")) {
            if let Kind::Dm(name) = &kind {
                let _ = self.sys.dm_remove(name);
            }
            Self::undo_dir(created, &path);
            return Err(e);
        }
        table.insert(path, id, kind);
        Ok(())
    }

    pub(super) fn remove_pmem(&self, d: &VpMemDevice) -> Result<(), StorageError> {
        let path = self.cfg.policy.check("MountPath", &d.mount_path)?;
        let untracked = match &d.mapping_info {
            Some(m) => Kind::Dm(devmapper::linear_name(d.device_number, m)),
            None => Kind::Plain,
        };
        self.remove_mount(&path, untracked)
    }
}
