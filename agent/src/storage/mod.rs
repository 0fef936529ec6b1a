//! UVM-level ModifySettings (docs/gcs-reference.md §4.13, §4.14, §6.2–§6.5): SCSI disks, VPMem layers,
//! Plan 9 shares and overlay root file systems, mounted under the roots of [`paths`] and recorded
//! with reference counts in a [`mount::MountTable`].
//!
//! Every kernel side effect goes through [`mount::Sys`]; sysfs and `/dev` are read at configurable
//! roots, so the logic runs without root in tests. This module owns no container state and never
//! calls the container runtime.

pub mod devmapper;
pub mod mount;
pub mod overlay;
pub mod paths;
pub mod plan9;
pub mod pmem;
pub mod scsi;

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;
use rgcs_protocol::message::{ModifySettingsRequest, RequestBase, RequestType, Resource};

use self::mount::{Kind, MountTable, Release, Sys};
use self::paths::PathPolicy;
use crate::error::GcsError;
use crate::host::Host;
use crate::outcome::Outcome;

/// How long a SCSI disk may take to appear (hcsshim's 5 s mount deadline).
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a storage request failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A path from the host breaks the path policy.
    #[error("{what} {path:?} {reason}")]
    BadPath {
        /// Which field.
        what: &'static str,
        /// The path as sent (escaped).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A component of a path is a symlink.
    #[error("{path:?} goes through the symlink {link:?}")]
    SymlinkInPath {
        /// The requested path.
        path: String,
        /// The symlink found.
        link: String,
    },
    /// A settings field has a value the agent cannot use.
    #[error("invalid {field}: {reason}")]
    BadSetting {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The resource does not support the request type.
    #[error("RequestType {request_type:?} is not supported for ResourceType {resource}")]
    RequestType {
        /// `ResourceType`.
        resource: String,
        /// `RequestType`.
        request_type: String,
    },
    /// The feature is not supported by this guest.
    #[error("{0} is not supported by this guest")]
    NotSupported(String),
    /// The storage kernel modules failed to load.
    #[error("storage kernel modules are not available: {0}")]
    Modules(String),
    /// The SCSI disk did not appear in time.
    #[error("SCSI controller {controller} LUN {lun} partition {partition} did not appear in time")]
    DeviceTimeout {
        /// Controller index.
        controller: u8,
        /// LUN.
        lun: u8,
        /// Partition (0: whole disk).
        partition: u64,
    },
    /// The VPMem device did not appear in time (it is hot-plugged just before the request).
    #[error("{0} did not appear in time")]
    PmemTimeout(String),
    /// Another mount already uses the path.
    #[error("{path} is already in use by {by}")]
    InUse {
        /// The path.
        path: String,
        /// What is mounted there.
        by: String,
    },
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `mount(2)` failed.
    #[error("cannot mount {source_desc} on {target}")]
    Mount {
        /// What was mounted.
        source_desc: String,
        /// Where.
        target: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `umount2(2)` failed.
    #[error("cannot unmount {target}")]
    Unmount {
        /// Where.
        target: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Something is still mounted after the unmounts.
    #[error("{mount} is still mounted after unmounting {target}")]
    StillMounted {
        /// The path being removed.
        target: String,
        /// The mount left.
        mount: String,
    },
}

/// Where the agent finds the kernel's views and which paths it accepts.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The path policy.
    pub policy: PathPolicy,
    /// sysfs mount point.
    pub sysfs: PathBuf,
    /// devtmpfs mount point.
    pub dev: PathBuf,
    /// SCSI device deadline.
    pub device_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            policy: PathPolicy::default(),
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            device_timeout: DEVICE_TIMEOUT,
        }
    }
}

/// The agent's storage state: one lock serialises storage requests (they are rare and each is a
/// handful of syscalls, plus at most one device wait).
#[derive(Debug)]
pub struct Storage {
    sys: Arc<dyn Sys>,
    cfg: StorageConfig,
    table: Mutex<MountTable>,
}

impl Default for Storage {
    fn default() -> Self {
        Self::new(Arc::new(mount::RealSys::default()), StorageConfig::default())
    }
}

/// `ModifySettings` aimed at the UVM (§4.13, §4.14).
pub async fn modify(
    host: &Arc<Host>,
    base: &RequestBase,
    req: ModifySettingsRequest,
) -> Result<Outcome, GcsError> {
    let req = req.request;
    match &req.resource {
        Resource::ContainerConstraints(_) => {
            return Err(GcsError::ContainerNotFound(base.container_id.clone()))
        }
        Resource::MappedVirtualDisk(_)
        | Resource::ScsiDevice(_)
        | Resource::MappedDirectory(_)
        | Resource::VpMemDevice(_)
        | Resource::CombinedLayers(_) => {}
        other => {
            return Err(GcsError::Unsupported(format!(
                "ResourceType {:?}",
                other.resource_type()
            )))
        }
    }
    check_request_type(&req.request_type, &req.resource)?;
    host.modules
        .wait_for(modules_for(&req.resource))
        .await
        .map_err(StorageError::Modules)?;
    let storage = Arc::clone(&host.storage);
    let (resource, request_type) = (req.resource.resource_type().to_owned(), req.request_type.clone());
    tokio::task::spawn_blocking(move || storage.apply(&req.request_type, &req.resource))
        .await
        .map_err(|e| GcsError::Internal(format!("storage task failed: {e}")))??;
    tracing::info!(%resource, %request_type, "storage request applied");
    Ok(Outcome::empty())
}

/// `Add`/`Remove` for the storage resources, `Remove` only for `SCSIDevice`.
/// The kernel modules a storage request needs (empty: the whole late list). A module the
/// kernel has built in (or lacks) is never reported loaded: its requests wait for the whole list.
fn modules_for(resource: &Resource) -> &'static [&'static str] {
    match resource {
        Resource::MappedDirectory(_) => &["9p", "9pnet_fd"],
        Resource::CombinedLayers(_) => &["overlay"],
        Resource::MappedVirtualDisk(_) | Resource::ScsiDevice(_) => &["virtio_scsi", "sd_mod", "ext4"],
        Resource::VpMemDevice(_) => &["virtio_pmem", "nd_pmem", "dm_mod", "ext4"],
        _ => &[],
    }
}

fn check_request_type(rt: &RequestType, resource: &Resource) -> Result<(), StorageError> {
    let ok = match resource {
        Resource::ScsiDevice(_) => *rt == RequestType::Remove,
        _ => matches!(rt, RequestType::Add | RequestType::Remove),
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::RequestType {
            resource: resource.resource_type().to_owned(),
            request_type: rt.as_str().to_owned(),
        })
    }
}

impl Storage {
    /// Storage over `sys` with `cfg`.
    pub fn new(sys: Arc<dyn Sys>, cfg: StorageConfig) -> Self {
        Self {
            sys,
            cfg,
            table: Mutex::new(MountTable::default()),
        }
    }

    /// Applies one request (blocking: call from a blocking thread).
    pub fn apply(&self, rt: &RequestType, resource: &Resource) -> Result<(), StorageError> {
        check_request_type(rt, resource)?;
        let add = *rt == RequestType::Add;
        match resource {
            Resource::MappedVirtualDisk(d) if add => self.add_disk(d),
            Resource::MappedVirtualDisk(d) => self.remove_disk(d),
            Resource::ScsiDevice(d) => self.locator_do(|l| l.unplug(d.controller, d.lun)),
            Resource::VpMemDevice(d) if add => self.add_pmem(d),
            Resource::VpMemDevice(d) => self.remove_pmem(d),
            Resource::MappedDirectory(d) if add => self.add_plan9(d),
            Resource::MappedDirectory(d) => self.remove_plan9(d),
            Resource::CombinedLayers(c) if add => self.add_overlay(c),
            Resource::CombinedLayers(c) => self.remove_overlay(c),
            other => Err(StorageError::NotSupported(format!(
                "ResourceType {:?}",
                other.resource_type()
            ))),
        }
    }

    /// Paths the agent has mounted (or linked), sorted.
    pub fn tracked(&self) -> Vec<PathBuf> {
        let t = self.lock();
        let mut v: Vec<PathBuf> = t.paths().cloned().collect();
        v.sort();
        v
    }

    fn lock(&self) -> MutexGuard<'_, MountTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn locator_do<T>(&self, f: impl FnOnce(&scsi::Locator<'_>) -> T) -> T {
        let resolver = scsi::resolver(&self.cfg.sysfs);
        f(&scsi::Locator {
            sysfs: &self.cfg.sysfs,
            dev: &self.cfg.dev,
            resolver: resolver.as_ref(),
        })
    }

    /// Checks for symlinks, creates `path` (and parents) with `mode`, checks again. Returns
    /// whether `path` itself was created, for cleanup on failure.
    fn prepare_dir(&self, path: &Path, mode: u32) -> Result<bool, StorageError> {
        self.cfg.policy.check_no_symlinks(path, false)?;
        let existed = path.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| StorageError::Io {
                what: "create",
                path: path.display().to_string(),
                source: e,
            })?;
        self.cfg.policy.check_no_symlinks(path, false)?;
        Ok(!existed)
    }

    /// Removes a directory this request created (best effort, after a failure).
    fn undo_dir(created: bool, path: &Path) {
        if created {
            let _ = std::fs::remove_dir(path);
        }
    }

    fn mount_at(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), StorageError> {
        self.sys
            .mount(Some(source), target, Some(fstype), flags, data)
            .map_err(|e| StorageError::Mount {
                source_desc: format!("{} ({fstype})", source.display()),
                target: target.display().to_string(),
                source: e,
            })
    }

    /// Drops one reference to the mount at `path` and tears it down when it was the last;
    /// `untracked` is the teardown for a path the table does not know. Missing is success.
    fn remove_mount(&self, path: &Path, untracked: Kind) -> Result<(), StorageError> {
        self.cfg.policy.check_no_symlinks(path, true)?;
        let mut table = self.lock();
        match table.release(path) {
            Release::Held => Ok(()),
            Release::Untracked => self.teardown(&mut table, path, &untracked),
            Release::Teardown(e) => {
                let res = self.teardown(&mut table, path, &e.kind);
                if res.is_err() {
                    table.restore(path.to_owned(), e);
                }
                res
            }
        }
    }

    fn teardown(&self, table: &mut MountTable, path: &Path, kind: &Kind) -> Result<(), StorageError> {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            // a BlockDev link: never unmount through it
            mount::remove_path(path)?;
        } else if *kind != Kind::Symlink {
            mount::unmount_stacked(self.sys.as_ref(), path)?;
            mount::remove_path(path)?;
        }
        match kind {
            Kind::Dm(name) => {
                if let Err(e) = self.sys.dm_remove(name) {
                    if e.raw_os_error() != Some(libc::ENXIO) && e.kind() != io::ErrorKind::NotFound {
                        return Err(StorageError::Io {
                            what: "remove the device-mapper device",
                            path: name.clone(),
                            source: e,
                        });
                    }
                }
            }
            Kind::Overlay(layers) => {
                for (layer, entry) in table.drop_uses(layers) {
                    tracing::info!(layer = %layer.display(), "unmounting a layer whose last overlay is gone");
                    if let Err(e) = self.teardown(table, &layer, &entry.kind) {
                        table.restore(layer, entry);
                        return Err(e);
                    }
                }
            }
            Kind::Plain | Kind::Symlink => {}
        }
        Ok(())
    }
}

/// The propagation changes among mount `options` (other options are ignored, as in hcsshim).
pub fn propagation_flags(options: &[String]) -> Vec<MsFlags> {
    options
        .iter()
        .filter_map(|o| {
            Some(match o.as_str() {
                "private" => MsFlags::MS_PRIVATE,
                "shared" => MsFlags::MS_SHARED,
                "slave" => MsFlags::MS_SLAVE,
                "unbindable" => MsFlags::MS_UNBINDABLE,
                "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
                _ => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
