//! SCSI disks: wire controller index → Linux SCSI host through a [`ControllerResolver`] (Hyper-V
//! VMBus controllers, or virtio-scsi PCI controllers on KVM hosts), waiting for
//! `<host>:0:0:<lun>` with a deadline, guest-side unplug, and file system detection.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use rgcs_protocol::message::MappedVirtualDisk;

use super::mount::{self, Kind};
use super::{propagation_flags, Storage, StorageError};

/// VMBus instance GUIDs of the 4 SCSI controllers HCS adds (docs/gcs-reference.md §6.2).
pub const HYPERV_CONTROLLERS: [&str; 4] = [
    "df6d0690-79e5-55b6-a5ec-c1e2f77f580a",
    "0110f83b-de10-5172-a266-78bca56bf50a",
    "b5d2d8d4-3a75-51bf-945b-3444dc6b8579",
    "305891a9-b251-5dfe-91a2-c25d9212275b",
];

/// How often sysfs is polled while waiting for a device.
pub const POLL: Duration = Duration::from_millis(10);

/// Maps a wire controller index to a Linux SCSI host number.
pub trait ControllerResolver: Send + Sync + Debug {
    /// The host number of `controller`, or `None` while it is not (yet) visible.
    fn scsi_host(&self, controller: u8) -> io::Result<Option<u32>>;
}

/// Hyper-V: `/sys/bus/vmbus/devices/<controller guid>/host<N>`.
#[derive(Debug, Clone)]
pub struct HyperV {
    sysfs: PathBuf,
}

impl HyperV {
    /// A resolver reading the sysfs mounted at `sysfs`.
    pub fn new(sysfs: impl Into<PathBuf>) -> Self {
        Self { sysfs: sysfs.into() }
    }
}

impl ControllerResolver for HyperV {
    fn scsi_host(&self, controller: u8) -> io::Result<Option<u32>> {
        let Some(guid) = HYPERV_CONTROLLERS.get(usize::from(controller)) else {
            return Ok(None);
        };
        let dir = self.sysfs.join("bus/vmbus/devices").join(guid);
        Ok(list(&dir)?.iter().find_map(|n| host_number(n)))
    }
}

/// virtio-scsi: controller `i` is the `i`-th `virtio_scsi` SCSI host in PCI address order
/// (`/sys/class/scsi_host/host<N>/proc_name`, resolved to its device path).
#[derive(Debug, Clone)]
pub struct VirtioScsi {
    sysfs: PathBuf,
}

impl VirtioScsi {
    /// A resolver reading the sysfs mounted at `sysfs`.
    pub fn new(sysfs: impl Into<PathBuf>) -> Self {
        Self { sysfs: sysfs.into() }
    }

    /// `(sort key, host number)` of every virtio-scsi host, sorted.
    fn hosts(&self) -> io::Result<Vec<(String, u32)>> {
        let class = self.sysfs.join("class/scsi_host");
        let mut out = Vec::new();
        for name in list(&class)? {
            let Some(n) = host_number(&name) else { continue };
            let entry = class.join(&name);
            match std::fs::read_to_string(entry.join("proc_name")) {
                Ok(p) if p.trim() == "virtio_scsi" => {}
                _ => continue,
            }
            let real = std::fs::canonicalize(&entry).unwrap_or(entry);
            out.push((pci_key(&real).unwrap_or_else(|| format!("~{n:010}")), n));
        }
        out.sort();
        Ok(out)
    }
}

impl ControllerResolver for VirtioScsi {
    fn scsi_host(&self, controller: u8) -> io::Result<Option<u32>> {
        Ok(self.hosts()?.get(usize::from(controller)).map(|h| h.1))
    }
}

/// The resolver for this VM: Hyper-V when a VMBus exists, virtio-scsi otherwise.
pub fn resolver(sysfs: &Path) -> Box<dyn ControllerResolver> {
    if sysfs.join("bus/vmbus/devices").is_dir() {
        Box::new(HyperV::new(sysfs))
    } else {
        Box::new(VirtioScsi::new(sysfs))
    }
}

/// The last PCI address (`dddd:bb:dd.f`) in a device path, as a sort key (fixed-width hex, so
/// string order is address order); parent bridges sort first.
fn pci_key(path: &Path) -> Option<String> {
    let addrs: Vec<String> = path
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .filter(|c| is_pci_address(c))
        .map(str::to_owned)
        .collect();
    (!addrs.is_empty()).then(|| addrs.join("/"))
}

fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn host_number(name: &str) -> Option<u32> {
    name.strip_prefix("host")?.parse().ok()
}

/// Entry names of `dir`; a missing directory is empty.
fn list(dir: &Path) -> io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Where SCSI and block devices are found.
#[derive(Debug, Clone)]
pub struct Locator<'a> {
    /// sysfs mount point (`/sys`).
    pub sysfs: &'a Path,
    /// devtmpfs mount point (`/dev`).
    pub dev: &'a Path,
    /// Controller index → host number.
    pub resolver: &'a dyn ControllerResolver,
}

impl Locator<'_> {
    /// `/sys/bus/scsi/devices/<host>:0:0:<lun>` of `controller`, if the controller is visible.
    pub fn scsi_dir(&self, controller: u8, lun: u8) -> io::Result<Option<PathBuf>> {
        Ok(self
            .resolver
            .scsi_host(controller)?
            .map(|h| self.sysfs.join(format!("bus/scsi/devices/{h}:0:0:{lun}"))))
    }

    /// Waits (polling every 10 ms, until `deadline`) for the disk at `controller`/`lun`, its
    /// `partition` (0: the whole disk) and its openable `/dev` node; returns the node's path.
    pub fn wait_device(
        &self,
        controller: u8,
        lun: u8,
        partition: u64,
        deadline: Instant,
    ) -> Result<PathBuf, StorageError> {
        let io_err = |path: &Path, e| StorageError::Io {
            what: "look up the SCSI device",
            path: path.display().to_string(),
            source: e,
        };
        loop {
            if let Some(dev) = self
                .try_device(controller, lun, partition)
                .map_err(|e| io_err(self.sysfs, e))?
            {
                match std::fs::File::open(&dev) {
                    Ok(_) => return Ok(dev),
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {}
                    Err(e) => return Err(io_err(&dev, e)),
                }
            }
            if Instant::now() >= deadline {
                return Err(StorageError::DeviceTimeout {
                    controller,
                    lun,
                    partition,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn try_device(&self, controller: u8, lun: u8, partition: u64) -> io::Result<Option<PathBuf>> {
        let Some(dir) = self.scsi_dir(controller, lun)? else {
            return Ok(None);
        };
        let names = list(&dir.join("block"))?;
        let name = match names.as_slice() {
            [] => return Ok(None),
            [one] => one,
            _ => {
                return Err(io::Error::other(format!(
                    "more than one block device under {}",
                    dir.display()
                )))
            }
        };
        if partition == 0 {
            return Ok(Some(self.dev.join(name)));
        }
        let part = format!("{name}{partition}");
        if dir.join("block").join(name).join(&part).exists() {
            Ok(Some(self.dev.join(part)))
        } else {
            Ok(None)
        }
    }

    /// Guest-side unplug: writes `1` to the device's sysfs `delete`. A missing device is success.
    pub fn unplug(&self, controller: u8, lun: u8) -> Result<(), StorageError> {
        let Some(dir) = self.scsi_dir(controller, lun).map_err(|e| StorageError::Io {
            what: "look up the SCSI controller",
            path: self.sysfs.display().to_string(),
            source: e,
        })?
        else {
            return Ok(());
        };
        let path = dir.join("delete");
        let res = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| io::Write::write_all(&mut f, b"1\n"));
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io {
                what: "unplug",
                path: path.display().to_string(),
                source: e,
            }),
        }
    }
}

/// Offset of the ext2/3/4 superblock magic (superblock at 1024, `s_magic` at 56).
pub const EXT4_MAGIC_OFFSET: usize = 1080;

/// A file system signature found on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// ext2/3/4 (`0xEF53`).
    Ext4,
    /// XFS (`XFSB`).
    Xfs,
}

/// The file system signature in the first 2 KiB of a device, if any.
pub fn detect_fs(head: &[u8]) -> Option<FsType> {
    if head.get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2) == Some(&[0x53, 0xEF]) {
        Some(FsType::Ext4)
    } else if head.get(..4) == Some(b"XFSB") {
        Some(FsType::Xfs)
    } else {
        None
    }
}

/// Reads the head of `dev` and detects its file system.
pub fn probe(dev: &Path) -> io::Result<Option<FsType>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(2048);
    std::fs::File::open(dev)?.take(2048).read_to_end(&mut head)?;
    Ok(detect_fs(&head))
}

impl Storage {
    pub(super) fn add_disk(&self, d: &MappedVirtualDisk) -> Result<(), StorageError> {
        if d.encrypted {
            return Err(StorageError::NotSupported(
                "Encrypted MappedVirtualDisk (dm-crypt)".into(),
            ));
        }
        if !matches!(d.filesystem.as_str(), "" | "ext4") {
            return Err(StorageError::NotSupported(format!(
                "Filesystem {:?}",
                d.filesystem
            )));
        }
        if d.ensure_filesystem && d.read_only {
            return Err(StorageError::BadSetting {
                field: "EnsureFilesystem",
                reason: "a read-only disk cannot be formatted".into(),
            });
        }
        let path = (!d.mount_path.is_empty())
            .then(|| self.cfg.policy.check("MountPath", &d.mount_path))
            .transpose()?;
        let deadline = Instant::now() + self.cfg.device_timeout;
        let dev = self.locator_do(|l| l.wait_device(d.controller, d.lun, d.partition, deadline))?;
        let Some(path) = path else {
            return Ok(()); // attach only
        };
        let id = format!(
            "scsi {}:{} p{} {}{}",
            d.controller,
            d.lun,
            d.partition,
            if d.read_only { "ro" } else { "rw" },
            if d.block_dev { " blockdev" } else { "" }
        );
        let mut table = self.lock();
        if table.share(&path, &id)? {
            return Ok(());
        }
        if d.block_dev {
            if let Some(parent) = path.parent() {
                self.prepare_dir(parent, 0o700)?;
            }
            self.cfg.policy.check_no_symlinks(&path, false)?;
            std::os::unix::fs::symlink(&dev, &path).map_err(|e| StorageError::Io {
                what: "create the symlink",
                path: path.display().to_string(),
                source: e,
            })?;
            table.insert(path, id, Kind::Symlink);
            return Ok(());
        }
        let detected = probe(&dev).map_err(|e| StorageError::Io {
            what: "read the superblock of",
            path: dev.display().to_string(),
            source: e,
        })?;
        match detected {
            Some(FsType::Ext4) => {}
            _ if d.ensure_filesystem => self.sys.mkfs_ext4(&dev).map_err(|e| StorageError::Io {
                what: "format (mkfs.ext4)",
                path: dev.display().to_string(),
                source: e,
            })?,
            Some(FsType::Xfs) => return Err(StorageError::NotSupported(format!("xfs on {}", dev.display()))),
            None => {} // mount reports the error
        }
        let created = self.prepare_dir(&path, 0o700)?;
        let (flags, data) = if d.read_only {
            (MsFlags::MS_RDONLY, Some("noload"))
        } else {
            (MsFlags::empty(), None)
        };
        let res = self.mount_at(&dev, &path, "ext4", flags, data).and_then(|()| {
            for pg in propagation_flags(&d.options) {
                if let Err(e) = self.sys.mount(None, &path, None, pg, None) {
                    let _ = mount::unmount_stacked(self.sys.as_ref(), &path);
                    return Err(StorageError::Mount {
                        source_desc: format!("propagation {pg:?}"),
                        target: path.display().to_string(),
                        source: e,
                    });
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            Self::undo_dir(created, &path);
            return Err(e);
        }
        table.insert(path, id, Kind::Plain);
        Ok(())
    }

    pub(super) fn remove_disk(&self, d: &MappedVirtualDisk) -> Result<(), StorageError> {
        if d.mount_path.is_empty() {
            return Ok(());
        }
        let path = self.cfg.policy.check("MountPath", &d.mount_path)?;
        self.remove_mount(&path, Kind::Plain)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Tree(PathBuf);
    impl Tree {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("rgcs-scsi-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn mk(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(&p).unwrap();
            p
        }
        fn file(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn hyperv_maps_controller_guids_to_hosts() {
        let t = Tree::new("hv");
        t.mk(&format!("sys/bus/vmbus/devices/{}/host3", HYPERV_CONTROLLERS[0]));
        t.mk(&format!("sys/bus/vmbus/devices/{}/host0", HYPERV_CONTROLLERS[1]));
        let sys = t.0.join("sys");
        let r = resolver(&sys);
        assert_eq!(r.scsi_host(0).unwrap(), Some(3));
        assert_eq!(r.scsi_host(1).unwrap(), Some(0));
        assert_eq!(r.scsi_host(2).unwrap(), None);
        assert_eq!(r.scsi_host(9).unwrap(), None);
    }

    fn virtio_host(t: &Tree, pci: &str, virtio: u32, host: u32, proc_name: &str) {
        let dev = format!("sys/devices/pci0000:00/{pci}/virtio{virtio}/host{host}/scsi_host/host{host}");
        t.mk(&dev);
        t.file(&format!("{dev}/proc_name"), &format!("{proc_name}\n"));
        t.mk("sys/class/scsi_host");
        symlink(
            format!("../../devices/pci0000:00/{pci}/virtio{virtio}/host{host}/scsi_host/host{host}"),
            t.0.join(format!("sys/class/scsi_host/host{host}")),
        )
        .unwrap();
    }

    #[test]
    fn virtio_scsi_orders_controllers_by_pci_address_and_waits_for_luns() {
        let t = Tree::new("virtio");
        // probe order differs from PCI order; an ata host is ignored
        virtio_host(&t, "0000:00:0a.0", 4, 0, "virtio_scsi");
        virtio_host(&t, "0000:00:03.0", 1, 2, "virtio_scsi");
        virtio_host(&t, "0000:00:1f.2", 0, 1, "ahci");
        let sys = t.0.join("sys");
        let r = resolver(&sys);
        assert_eq!(r.scsi_host(0).unwrap(), Some(2));
        assert_eq!(r.scsi_host(1).unwrap(), Some(0));
        assert_eq!(r.scsi_host(2).unwrap(), None);

        let dev = t.mk("dev");
        let loc = Locator {
            sysfs: &sys,
            dev: &dev,
            resolver: r.as_ref(),
        };
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            loc.wait_device(0, 1, 0, soon),
            Err(StorageError::DeviceTimeout { lun: 1, .. })
        ));
        t.mk("sys/bus/scsi/devices/2:0:0:1/block/sdb/sdb2");
        // the node is missing: still waiting
        assert!(loc
            .wait_device(0, 1, 0, Instant::now() + Duration::from_millis(30))
            .is_err());
        t.file("dev/sdb", "");
        t.file("dev/sdb2", "");
        assert_eq!(loc.wait_device(0, 1, 0, soon).unwrap(), dev.join("sdb"));
        assert_eq!(
            loc.wait_device(0, 1, 2, Instant::now() + Duration::from_secs(1))
                .unwrap(),
            dev.join("sdb2")
        );
        assert!(loc
            .wait_device(0, 1, 3, Instant::now() + Duration::from_millis(30))
            .is_err());
        t.mk("sys/bus/scsi/devices/2:0:0:1/block/sdc");
        assert!(matches!(
            loc.wait_device(0, 1, 0, soon),
            Err(StorageError::Io { .. })
        ));

        // unplug writes "1" to delete; a missing device is success
        t.file("sys/bus/scsi/devices/2:0:0:1/delete", "");
        loc.unplug(0, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(sys.join("bus/scsi/devices/2:0:0:1/delete")).unwrap(),
            "1\n"
        );
        loc.unplug(0, 7).unwrap();
        loc.unplug(3, 0).unwrap();
    }

    #[test]
    fn superblock_magic_is_detected() {
        let mut head = vec![0u8; 2048];
        assert_eq!(detect_fs(&head), None);
        assert_eq!(detect_fs(&head[..100]), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(detect_fs(&head), Some(FsType::Ext4));
        assert_eq!(detect_fs(&head[..1081]), None);
        let mut xfs = vec![0u8; 512];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect_fs(&xfs), Some(FsType::Xfs));
        assert!(is_pci_address("0000:00:03.0"));
        assert!(!is_pci_address("virtio1"));
    }
}
