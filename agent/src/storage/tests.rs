//! Storage logic against a fake kernel ([`FakeSys`]) and a fake sysfs/dev tree in a temporary
//! directory: no root needed.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rgcs_protocol::message::{
    CombinedLayers, Layer, MappedDirectory, MappedVirtualDisk, ModificationRequest, ScsiDevice, VpMemDevice,
    VpMemMappingInfo,
};
use rgcs_protocol::HResult;

use super::*;
use crate::modules::ModulesGate;
use crate::reaper::Reaper;

/// A kernel that records calls and keeps a stack of mounts per target.
#[derive(Debug, Default)]
struct FakeSys {
    log: Mutex<Vec<String>>,
    stacks: Mutex<BTreeMap<PathBuf, Vec<String>>>,
    fail_mount: Mutex<Option<Errno>>,
}

impl FakeSys {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn mounted(&self) -> Vec<PathBuf> {
        let st = self.stacks.lock().unwrap();
        st.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Sys for FakeSys {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        if let Some(e) = *self.fail_mount.lock().unwrap() {
            return Err(e);
        }
        let flags = format!("{flags:?}");
        let line = format!(
            "mount {} {} {} {} {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display(),
            fstype.unwrap_or("-"),
            flags.trim_start_matches("MsFlags(").trim_end_matches(')'),
            data.unwrap_or("-")
        );
        self.push(line.clone());
        if source.is_some() {
            self.stacks
                .lock()
                .unwrap()
                .entry(target.to_owned())
                .or_default()
                .push(line);
        }
        Ok(())
    }
    fn umount(&self, target: &Path) -> Result<(), Errno> {
        let mut st = self.stacks.lock().unwrap();
        match st.get_mut(target).and_then(Vec::pop) {
            Some(_) => {
                self.push(format!("umount {}", target.display()));
                Ok(())
            }
            None => Err(Errno::EINVAL),
        }
    }
    fn mounts_under(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .mounted()
            .into_iter()
            .filter(|m| m.starts_with(path))
            .collect())
    }
    fn mkfs_ext4(&self, dev: &Path) -> io::Result<()> {
        self.push(format!("mkfs {}", dev.display()));
        let mut head = vec![0u8; 2048];
        head[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        std::fs::write(dev, head)
    }
    fn dial_host(&self, port: u32) -> io::Result<OwnedFd> {
        self.push(format!("dial {port}"));
        Ok(std::fs::File::open("/dev/null")?.into())
    }
    fn dm_linear_create(&self, name: &str, dev: &Path, start: u64, len: u64) -> io::Result<PathBuf> {
        self.push(format!("dm create {name} {} {start} {len}", dev.display()));
        Ok(PathBuf::from("/dev/mapper").join(name))
    }
    fn dm_remove(&self, name: &str) -> io::Result<()> {
        self.push(format!("dm remove {name}"));
        Ok(())
    }
}

/// A temporary tree: `root/` (the only path root), `sys/`, `dev/`.
struct Env {
    dir: PathBuf,
    storage: Storage,
    sys: Arc<FakeSys>,
}

impl Env {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rgcs-storage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["root", "sys/class/scsi_host", "dev"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // pmem0..3 are present (as a hot-plugged device's node would be); pmem9 never appears.
        for n in 0..4 {
            std::fs::write(dir.join(format!("dev/pmem{n}")), b"").unwrap();
        }
        let sys = Arc::new(FakeSys::default());
        let cfg = StorageConfig {
            policy: PathPolicy::new(vec![dir.join("root")]),
            sysfs: dir.join("sys"),
            dev: dir.join("dev"),
            device_timeout: Duration::from_millis(50),
        };
        let storage = Storage::new(Arc::clone(&sys) as Arc<dyn Sys>, cfg);
        Self { dir, storage, sys }
    }
    fn p(&self, rel: &str) -> String {
        self.dir.join("root").join(rel).display().to_string()
    }
    /// A virtio-scsi controller 0 = host 2 with `sdb` at LUN 1 holding `head`.
    fn scsi_disk(&self, head: &[u8]) {
        let hostdir = self
            .dir
            .join("sys/devices/pci0000:00/0000:00:03.0/virtio1/host2/scsi_host/host2");
        std::fs::create_dir_all(&hostdir).unwrap();
        std::fs::write(hostdir.join("proc_name"), "virtio_scsi\n").unwrap();
        std::os::unix::fs::symlink(&hostdir, self.dir.join("sys/class/scsi_host/host2")).unwrap();
        std::fs::create_dir_all(self.dir.join("sys/bus/scsi/devices/2:0:0:1/block/sdb")).unwrap();
        std::fs::write(self.dir.join("dev/sdb"), head).unwrap();
    }
    fn apply(&self, rt: RequestType, r: Resource) -> Result<(), StorageError> {
        self.storage.apply(&rt, &r)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ext4_head() -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    h
}

fn pmem(n: u32, path: &str) -> Resource {
    Resource::VpMemDevice(VpMemDevice {
        device_number: n,
        mount_path: path.into(),
        ..VpMemDevice::default()
    })
}

fn layers(root: &str, paths: &[&str], scratch: &str) -> Resource {
    Resource::CombinedLayers(CombinedLayers {
        container_id: "c".into(),
        container_root_path: root.into(),
        layers: paths
            .iter()
            .map(|p| Layer {
                path: (*p).into(),
                ..Layer::default()
            })
            .collect(),
        scratch_path: scratch.into(),
    })
}

#[test]
fn a_layer_shared_by_two_overlays_is_unmounted_once_last() {
    let e = Env::new("share");
    let (p0, p1) = (e.p("layers/p0"), e.p("layers/p1"));
    e.apply(RequestType::Add, pmem(0, &p0)).unwrap();
    e.apply(RequestType::Add, pmem(1, &p1)).unwrap();
    let (a, b) = (e.p("c/a/rootfs"), e.p("c/b/rootfs"));
    e.apply(RequestType::Add, layers(&a, &[&p1, &p0], &e.p("c/a/scratch")))
        .unwrap();
    e.apply(RequestType::Add, layers(&b, &[&p0], "")).unwrap();
    // the host removes the shared layer while container b still runs: it stays mounted
    e.apply(RequestType::Remove, pmem(0, &p0)).unwrap();
    e.apply(RequestType::Remove, layers(&a, &[], "")).unwrap();
    e.apply(RequestType::Remove, pmem(1, &p1)).unwrap();
    assert!(e.sys.mounted().contains(&PathBuf::from(&p0)));
    e.apply(RequestType::Remove, layers(&b, &[], "")).unwrap();
    let umounts: Vec<String> = e
        .sys
        .log()
        .into_iter()
        .filter(|l| l.starts_with("umount"))
        .collect();
    assert_eq!(
        umounts,
        [
            format!("umount {a}"),
            format!("umount {p1}"),
            format!("umount {b}"),
            format!("umount {p0}")
        ]
    );
    assert!(e.sys.mounted().is_empty());
    assert!(e.storage.tracked().is_empty());
    assert!(!Path::new(&p0).exists() && !Path::new(&a).exists());
    let log = e.sys.log();
    let mounts: Vec<&String> = log.iter().filter(|l| l.contains("overlay")).collect();
    assert!(mounts[0].ends_with(&format!(
        "lowerdir={p1}:{p0},upperdir={}/upper,workdir={}/work",
        e.p("c/a/scratch"),
        e.p("c/a/scratch")
    )));
    assert!(mounts[1].contains("MS_RDONLY") && mounts[1].ends_with(&format!("lowerdir={p0}")));
    assert!(Path::new(&e.p("c/a/scratch/upper")).is_dir());
}

#[test]
fn repeated_adds_are_counted_and_conflicts_refused() {
    let e = Env::new("repeat");
    let p0 = e.p("layers/p0");
    e.apply(RequestType::Add, pmem(0, &p0)).unwrap();
    e.apply(RequestType::Add, pmem(0, &p0)).unwrap();
    assert!(matches!(
        e.apply(RequestType::Add, pmem(5, &p0)),
        Err(StorageError::InUse { .. })
    ));
    e.apply(RequestType::Remove, pmem(0, &p0)).unwrap();
    assert_eq!(e.sys.mounted().len(), 1);
    e.apply(RequestType::Remove, pmem(0, &p0)).unwrap();
    assert!(e.sys.mounted().is_empty());
    assert_eq!(e.sys.log().iter().filter(|l| l.starts_with("mount")).count(), 1);
}

#[test]
fn remove_unmounts_stacked_mounts_and_missing_is_success() {
    let e = Env::new("stacked");
    let m = e.p("mounts/m1");
    std::fs::create_dir_all(&m).unwrap();
    for _ in 0..3 {
        e.sys
            .mount(
                Some(Path::new("/dev/x")),
                Path::new(&m),
                Some("ext4"),
                MsFlags::empty(),
                None,
            )
            .unwrap();
    }
    let disk = |path: &str| {
        Resource::MappedVirtualDisk(MappedVirtualDisk {
            mount_path: path.into(),
            ..MappedVirtualDisk::default()
        })
    };
    e.apply(RequestType::Remove, disk(&m)).unwrap(); // untracked: unmounted until EINVAL
    assert!(e.sys.mounted().is_empty());
    assert!(!Path::new(&m).exists());
    e.apply(RequestType::Remove, disk(&m)).unwrap(); // already gone: success
    e.apply(RequestType::Remove, disk("")).unwrap();
    // more than MAX_UNMOUNTS stacked: an error, and the directory stays
    std::fs::create_dir_all(&m).unwrap();
    for _ in 0..7 {
        e.sys
            .mount(
                Some(Path::new("/dev/x")),
                Path::new(&m),
                Some("ext4"),
                MsFlags::empty(),
                None,
            )
            .unwrap();
    }
    assert!(matches!(
        e.apply(RequestType::Remove, disk(&m)),
        Err(StorageError::StillMounted { .. })
    ));
    assert!(Path::new(&m).exists());
}

#[test]
fn scsi_disk_read_only_ensure_filesystem_blockdev_and_options() {
    let e = Env::new("scsi");
    e.scsi_disk(&ext4_head());
    let m = e.p("mounts/scsi/m1");
    let disk = MappedVirtualDisk {
        mount_path: m.clone(),
        lun: 1,
        read_only: true,
        options: vec!["ro".into(), "rshared".into()],
        ..MappedVirtualDisk::default()
    };
    e.apply(RequestType::Add, Resource::MappedVirtualDisk(disk.clone()))
        .unwrap();
    let dev = e.dir.join("dev/sdb");
    let log = e.sys.log();
    assert_eq!(
        log[0],
        format!("mount {} {m} ext4 MS_RDONLY noload", dev.display())
    );
    assert_eq!(log[1], format!("mount - {m} - MS_REC | MS_SHARED -"));
    e.apply(RequestType::Remove, Resource::MappedVirtualDisk(disk))
        .unwrap();
    assert!(e.sys.mounted().is_empty() && !Path::new(&m).exists());

    // scratch: no signature → formatted, then mounted read-write
    std::fs::write(&dev, vec![0u8; 4096]).unwrap();
    let scratch = MappedVirtualDisk {
        mount_path: e.p("c/cid"),
        lun: 1,
        ensure_filesystem: true,
        filesystem: "ext4".into(),
        ..MappedVirtualDisk::default()
    };
    e.apply(RequestType::Add, Resource::MappedVirtualDisk(scratch.clone()))
        .unwrap();
    assert!(e.sys.log().contains(&format!("mkfs {}", dev.display())));
    // already ext4: not formatted again
    let n = e.sys.log().len();
    e.apply(RequestType::Remove, Resource::MappedVirtualDisk(scratch.clone()))
        .unwrap();
    e.apply(RequestType::Add, Resource::MappedVirtualDisk(scratch.clone()))
        .unwrap();
    assert!(!e.sys.log()[n..].iter().any(|l| l.starts_with("mkfs")));
    e.apply(RequestType::Remove, Resource::MappedVirtualDisk(scratch))
        .unwrap();

    let xfs = MappedVirtualDisk {
        mount_path: e.p("c/x"),
        lun: 1,
        filesystem: "xfs".into(),
        ..MappedVirtualDisk::default()
    };
    assert!(matches!(
        e.apply(RequestType::Add, Resource::MappedVirtualDisk(xfs)),
        Err(StorageError::NotSupported(_))
    ));

    // BlockDev: a symlink, no mount; Remove unlinks it
    let link = e.p("mounts/blk/b1");
    let bd = MappedVirtualDisk {
        mount_path: link.clone(),
        lun: 1,
        block_dev: true,
        ..MappedVirtualDisk::default()
    };
    let mounts_before = e.sys.log().len();
    e.apply(RequestType::Add, Resource::MappedVirtualDisk(bd.clone()))
        .unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), dev);
    e.apply(RequestType::Remove, Resource::MappedVirtualDisk(bd))
        .unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err());
    assert_eq!(e.sys.log().len(), mounts_before);

    // a LUN that never appears: the deadline, not forever
    let missing = MappedVirtualDisk {
        mount_path: e.p("mounts/scsi/m9"),
        lun: 9,
        ..MappedVirtualDisk::default()
    };
    assert!(matches!(
        e.apply(RequestType::Add, Resource::MappedVirtualDisk(missing)),
        Err(StorageError::DeviceTimeout { lun: 9, .. })
    ));
    assert!(!Path::new(&e.p("mounts/scsi/m9")).exists());

    // SCSIDevice Remove: guest unplug, missing is success
    std::fs::write(e.dir.join("sys/bus/scsi/devices/2:0:0:1/delete"), "").unwrap();
    e.apply(
        RequestType::Remove,
        Resource::ScsiDevice(ScsiDevice {
            controller: 0,
            lun: 1,
        }),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(e.dir.join("sys/bus/scsi/devices/2:0:0:1/delete")).unwrap(),
        "1\n"
    );
    e.apply(
        RequestType::Remove,
        Resource::ScsiDevice(ScsiDevice {
            controller: 1,
            lun: 4,
        }),
    )
    .unwrap();
}

#[test]
fn hostile_paths_mount_nothing_and_create_nothing() {
    let e = Env::new("hostile");
    std::fs::create_dir_all(e.dir.join("root/c")).unwrap();
    std::os::unix::fs::symlink("/etc", e.dir.join("root/c/evil")).unwrap();
    let root = e.dir.join("root").display().to_string();
    let hostile = [
        "relative/x".to_owned(),
        format!("{root}/c/../../../etc"),
        format!("{root}//c/x"),
        format!("{root}/c/x\0"),
        "/etc/x".to_owned(),
        format!("{root}/c/evil/x"),
        format!("{root}/c/{}", "a".repeat(300)),
        format!("{root}/c/{}", "a/".repeat(600).trim_end_matches('/')),
    ];
    for h in &hostile {
        let reqs = [
            pmem(0, h),
            layers(h, &[&e.p("layers/p0")], ""),
            layers(&e.p("c/ok/rootfs"), &[h], ""),
            layers(&e.p("c/ok/rootfs"), &[&e.p("layers/p0")], h),
            Resource::MappedDirectory(MappedDirectory {
                mount_path: h.clone(),
                port: 564,
                share_name: "0".into(),
                read_only: true,
            }),
        ];
        for r in reqs {
            assert!(
                e.apply(RequestType::Add, r.clone()).is_err(),
                "{h:?} accepted in {r:?}"
            );
        }
        // Remove refuses the same paths (it would unmount and delete through them)
        assert!(e.apply(RequestType::Remove, pmem(0, h)).is_err(), "{h:?} removed");
    }
    assert!(e.sys.log().is_empty(), "{:?}", e.sys.log());
    assert!(!e.dir.join("root/c/ok").exists());
    assert!(!Path::new("/etc/x").exists());
    // option injection through the share name
    let share = Resource::MappedDirectory(MappedDirectory {
        mount_path: e.p("mounts/plan9/0"),
        port: 564,
        share_name: "0,trans=tcp".into(),
        read_only: false,
    });
    assert!(e.apply(RequestType::Add, share).is_err());
    assert!(e.sys.log().is_empty());
}

#[test]
fn plan9_dials_the_port_and_mounts_over_the_fd() {
    let e = Env::new("p9");
    let m = e.p("c/cid/mounts/m0");
    let d = MappedDirectory {
        mount_path: m.clone(),
        port: 564,
        share_name: "3".into(),
        read_only: true,
    };
    e.apply(RequestType::Add, Resource::MappedDirectory(d.clone()))
        .unwrap();
    let log = e.sys.log();
    assert_eq!(log[0], "dial 564");
    assert!(
        log[1].starts_with(&format!("mount {m} {m} 9p MS_RDONLY trans=fd,rfdno=")),
        "{}",
        log[1]
    );
    assert!(log[1].ends_with(",msize=65536,version=9p2000.L,noload,aname=3"));
    e.apply(RequestType::Remove, Resource::MappedDirectory(d.clone()))
        .unwrap();
    assert!(!Path::new(&m).exists());
    e.apply(RequestType::Remove, Resource::MappedDirectory(d))
        .unwrap();
}

#[test]
fn a_pmem_device_that_never_appears_times_out_with_nothing_mounted() {
    let e = Env::new("pmem-missing");
    let m = e.p("layers/p9");
    let r = Resource::VpMemDevice(VpMemDevice {
        device_number: 9,
        mount_path: m.clone(),
        ..VpMemDevice::default()
    });
    let err = e.apply(RequestType::Add, r).unwrap_err();
    assert!(
        matches!(err, StorageError::PmemTimeout(ref d) if d.ends_with("pmem9")),
        "{err:?}"
    );
    assert!(!std::path::Path::new(&m).exists(), "nothing created");
}

#[test]
fn pmem_mapping_goes_through_dm_linear_and_failures_clean_up() {
    let e = Env::new("dm");
    let m = e.p("layers/p2-4096-8192");
    let r = Resource::VpMemDevice(VpMemDevice {
        device_number: 2,
        mount_path: m.clone(),
        mapping_info: Some(VpMemMappingInfo {
            device_offset_in_bytes: 4096,
            device_size_in_bytes: 8192,
        }),
        verity_info: None,
    });
    e.apply(RequestType::Add, r.clone()).unwrap();
    let log = e.sys.log();
    assert_eq!(
        log[0],
        format!(
            "dm create dm-linear-pmem2-4096-8192 {} 8 16",
            e.dir.join("dev/pmem2").display()
        )
    );
    assert_eq!(
        log[1],
        format!("mount /dev/mapper/dm-linear-pmem2-4096-8192 {m} ext4 MS_RDONLY noload")
    );
    e.apply(RequestType::Remove, r.clone()).unwrap();
    assert_eq!(e.sys.log()[3], "dm remove dm-linear-pmem2-4096-8192");
    // a failed mount removes the dm device and the directory it created
    *e.sys.fail_mount.lock().unwrap() = Some(Errno::EINVAL);
    assert!(matches!(
        e.apply(RequestType::Add, r),
        Err(StorageError::Mount { .. })
    ));
    assert_eq!(e.sys.log().last().unwrap(), "dm remove dm-linear-pmem2-4096-8192");
    assert!(!Path::new(&m).exists());
    assert!(e.storage.tracked().is_empty());
}

#[test]
fn request_types_are_checked() {
    let e = Env::new("rt");
    let scsi = Resource::ScsiDevice(ScsiDevice::default());
    assert!(matches!(
        e.apply(RequestType::Add, scsi),
        Err(StorageError::RequestType { .. })
    ));
    assert!(matches!(
        e.apply(RequestType::Update, pmem(0, &e.p("layers/p0"))),
        Err(StorageError::RequestType { .. })
    ));
    assert!(e.sys.log().is_empty());
}

#[tokio::test]
async fn modify_maps_errors_to_hresults() {
    let host = Arc::new(Host::new(ModulesGate::ready(), Arc::new(Reaper::default())));
    let uvm = RequestBase::new(rgcs_protocol::message::UVM_CONTAINER_ID);
    let run = |rt: RequestType, r: Resource| {
        let host = Arc::clone(&host);
        let uvm = uvm.clone();
        async move {
            modify(
                &host,
                &uvm,
                ModifySettingsRequest {
                    request: ModificationRequest::new(rt, r),
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.hresult())
        }
    };
    let constraints = Resource::ContainerConstraints(Box::default());
    assert_eq!(
        run(RequestType::Update, constraints).await,
        Err(HResult::SYSTEM_NOT_FOUND)
    );
    let net = Resource::Network(rgcs_protocol::message::NetworkAdapter::default());
    assert_eq!(run(RequestType::Add, net).await, Err(HResult::FAIL));
    let windows = Resource::Unsupported {
        resource_type: "HvSocket".into(),
        settings: serde_json::Value::Null,
    };
    assert_eq!(run(RequestType::Add, windows).await, Err(HResult::FAIL));
    let scsi = Resource::ScsiDevice(ScsiDevice::default());
    assert_eq!(run(RequestType::Add, scsi).await, Err(HResult::FAIL));
    // a hostile path through the real handler: refused before any mount
    let bad = pmem(0, "/run/layers/../../etc");
    assert_eq!(run(RequestType::Add, bad).await, Err(HResult::FAIL));
    // a missing mount on the real kernel: Remove of an absent path is success
    let gone = pmem(0, "/run/layers/rgcs-test-never-mounted");
    assert_eq!(run(RequestType::Remove, gone).await, Ok(()));
}
