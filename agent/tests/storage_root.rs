//! Storage against the real kernel: loop-device-backed ext4 images stand in for SCSI and VPMem
//! disks (a fake sysfs tree points `<host>:0:0:<lun>` at them), mounted under the protocol's real
//! roots. Each test re-runs itself under `unshare --mount --propagation private` with a tmpfs on
//! `/run`, so nothing it mounts is visible outside, and checks that it leaves no mount, loop
//! device or directory behind. Requires root; without it the tests fail (no silent skip).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rgcs_agent::storage::mount::{parse_mountinfo, RealSys};
use rgcs_agent::storage::{Storage, StorageConfig};
use rgcs_protocol::message::RequestType::{Add, Remove};
use rgcs_protocol::message::{
    CombinedLayers, Layer, MappedVirtualDisk, Resource, VpMemDevice, VpMemMappingInfo,
};

const CHILD_ENV: &str = "RGCS_STORAGE_ROOT_TEST";

/// Runs `body` in a child process in a private mount namespace with a fresh tmpfs on `/run`.
fn in_namespace(name: &str, body: fn()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        nix::mount::mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0755"),
        )
        .expect("tmpfs on /run");
        // Mounts the host had under `/run` (say `/run/netns/*`) stay listed beneath the tmpfs:
        // they are the baseline, not something this test left behind.
        let _ = BASELINE.set(all_mounts_under("/run"));
        body();
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "storage root tests need root (loop devices, mount namespaces)"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the child did not run the test:\n{text}"
    );
}

/// A temporary directory outside `/run`, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rgcs-storage-root-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loop device over a sparse image, detached on drop.
struct Loop {
    dev: PathBuf,
    image: PathBuf,
}

impl Loop {
    fn new(image: PathBuf, mib: u64, ext4_with: Option<(&str, &str)>) -> Self {
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        if let Some((file, text)) = ext4_with {
            let src = image.with_extension("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join(file), text).unwrap();
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&src)
                .arg(&image)
                .status()
                .unwrap();
            assert!(st.success(), "mkfs.ext4");
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self { dev, image }
    }

    fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Loop {
    /// Detaches the device and checks that it is gone (nothing holds it any more).
    fn detach(self) {
        let image = self.image.clone();
        drop(self);
        // The kernel releases a detached loop device asynchronously (autoclear runs when the
        // last opener closes): wait for it, with a deadline, instead of sampling once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let out = loop {
            let out = Command::new("losetup").arg("-j").arg(&image).output().unwrap();
            if out.stdout.is_empty() || std::time::Instant::now() >= deadline {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            out.stdout.is_empty(),
            "loop device left: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // a device still mounted (a failed test) is detached when the namespace goes away
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A fake sysfs with one virtio-scsi controller (host 7) whose LUNs are the given loop devices,
/// and a `/dev`-like directory with `pmem<N>` links to loop devices.
fn fake_sysfs(t: &Temp, luns: &[(u8, &Loop)], pmems: &[(u32, &Loop)]) -> StorageConfig {
    let sys = t.0.join("sys");
    let host = sys.join("devices/pci0000:00/0000:00:04.0/virtio2/host7/scsi_host/host7");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("proc_name"), "virtio_scsi\n").unwrap();
    std::fs::create_dir_all(sys.join("class/scsi_host")).unwrap();
    std::os::unix::fs::symlink(&host, sys.join("class/scsi_host/host7")).unwrap();
    for (lun, l) in luns {
        std::fs::create_dir_all(sys.join(format!("bus/scsi/devices/7:0:0:{lun}/block/{}", l.name())))
            .unwrap();
    }
    let dev = t.0.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    for (n, l) in pmems {
        std::os::unix::fs::symlink(&l.dev, dev.join(format!("pmem{n}"))).unwrap();
    }
    // SCSI nodes are looked up as <dev>/<name>: link the loop nodes too
    for (_, l) in luns {
        std::os::unix::fs::symlink(&l.dev, dev.join(l.name())).unwrap();
    }
    StorageConfig {
        sysfs: sys,
        dev,
        device_timeout: Duration::from_secs(2),
        ..StorageConfig::default()
    }
}

/// Mounts under `/run` that existed before the test mounted its tmpfs there.
static BASELINE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Mounts under `p` that this test made (the host's own, hidden below the tmpfs, are ignored).
fn mounts_under(p: &str) -> Vec<PathBuf> {
    let baseline = BASELINE.get().map(Vec::as_slice).unwrap_or_default();
    all_mounts_under(p)
        .into_iter()
        .filter(|m| !baseline.contains(m))
        .collect()
}

fn all_mounts_under(p: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.starts_with(p) && m != Path::new(p))
        .collect()
}

fn mount_options(p: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find(|l| l.split(' ').nth(4) == Some(p))
        .unwrap_or_else(|| panic!("{p} is not mounted"))
        .to_owned()
}

fn disk(path: &str, lun: u8, read_only: bool) -> MappedVirtualDisk {
    MappedVirtualDisk {
        mount_path: path.into(),
        lun,
        read_only,
        options: if read_only { vec!["ro".into()] } else { vec![] },
        ..MappedVirtualDisk::default()
    }
}

fn overlay(root: &str, layers: &[&str], scratch: &str) -> Resource {
    Resource::CombinedLayers(CombinedLayers {
        container_id: "c1".into(),
        container_root_path: root.into(),
        layers: layers
            .iter()
            .map(|p| Layer {
                path: (*p).into(),
                ..Layer::default()
            })
            .collect(),
        scratch_path: scratch.into(),
    })
}

fn disks_layers_and_overlays_body() {
    let t = Temp::new("main");
    let layer = Loop::new(t.0.join("layer.img"), 16, Some(("hello", "from the layer\n")));
    let scratch = Loop::new(t.0.join("scratch.img"), 32, None);
    let pmem = Loop::new(t.0.join("pmem.img"), 16, Some(("p", "pmem layer\n")));
    let cfg = fake_sysfs(&t, &[(1, &layer), (2, &scratch)], &[(0, &pmem)]);
    let s = Storage::new(Arc::new(RealSys::default()), cfg);

    for cycle in 0..20 {
        // read-only layer on SCSI, with noload
        let m1 = "/run/mounts/scsi/m1";
        s.apply(&Add, &Resource::MappedVirtualDisk(disk(m1, 1, true)))
            .unwrap();
        let opts = mount_options(m1);
        assert!(opts.contains(" ro,") || opts.contains(" ro "), "{opts}");
        assert_eq!(
            std::fs::read_to_string(format!("{m1}/hello")).unwrap(),
            "from the layer\n"
        );
        assert!(std::fs::write(format!("{m1}/x"), "x").is_err());
        // VPMem layer, read-only ext4
        let p0 = "/run/layers/p0";
        s.apply(
            &Add,
            &Resource::VpMemDevice(VpMemDevice {
                device_number: 0,
                mount_path: p0.into(),
                ..VpMemDevice::default()
            }),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{p0}/p")).unwrap(),
            "pmem layer\n"
        );
        // scratch: formatted on first use (EnsureFilesystem), read-write
        let bundle = "/run/gcs/c/c1";
        let mut sd = disk(bundle, 2, false);
        sd.ensure_filesystem = true;
        sd.filesystem = "ext4".into();
        s.apply(&Add, &Resource::MappedVirtualDisk(sd.clone())).unwrap();
        if cycle > 0 {
            // the scratch kept its content across cycles: it was not re-formatted
            assert_eq!(std::fs::read_to_string(format!("{bundle}/marker")).unwrap(), "1");
        }
        std::fs::write(format!("{bundle}/marker"), "1").unwrap();
        // overlay with scratch: entry 0 is top-most
        let rootfs = "/run/gcs/c/c1/rootfs";
        let sp = "/run/gcs/c/c1/scratch/c1";
        s.apply(&Add, &overlay(rootfs, &[p0, m1], sp)).unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{rootfs}/hello")).unwrap(),
            "from the layer\n"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{rootfs}/p")).unwrap(),
            "pmem layer\n"
        );
        std::fs::write(format!("{rootfs}/new"), "w").unwrap();
        assert!(Path::new(&format!("{sp}/upper/new")).exists());
        // a second container sharing the SCSI layer, read-only overlay without scratch
        let rootfs2 = "/run/gcs/c/c2/rootfs";
        s.apply(&Add, &overlay(rootfs2, &[m1, p0], "")).unwrap();
        assert!(std::fs::write(format!("{rootfs2}/x"), "x").is_err());
        // the host removes the layer while c2 still uses it: it stays until c2's overlay goes
        s.apply(&Remove, &overlay(rootfs, &[], "")).unwrap();
        s.apply(&Remove, &Resource::MappedVirtualDisk(disk(m1, 1, true)))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{rootfs2}/hello")).unwrap(),
            "from the layer\n"
        );
        s.apply(&Remove, &overlay(rootfs2, &[], "")).unwrap();
        assert!(!Path::new(m1).exists());
        s.apply(&Remove, &Resource::MappedVirtualDisk(sd)).unwrap();
        s.apply(
            &Remove,
            &Resource::VpMemDevice(VpMemDevice {
                mount_path: p0.into(),
                ..VpMemDevice::default()
            }),
        )
        .unwrap();
        assert!(
            mounts_under("/run").is_empty(),
            "cycle {cycle}: {:?}",
            mounts_under("/run")
        );
        assert!(s.tracked().is_empty());
        assert!(!Path::new(bundle).exists() && !Path::new(p0).exists());
    }

    // VPMem multi-mapping: without device-mapper on this kernel the request fails cleanly
    let mapped = "/run/layers/p0-0-4096";
    let r = Resource::VpMemDevice(VpMemDevice {
        device_number: 0,
        mount_path: mapped.into(),
        mapping_info: Some(VpMemMappingInfo {
            device_offset_in_bytes: 0,
            device_size_in_bytes: 16 << 20,
        }),
        verity_info: None,
    });
    if Path::new("/dev/mapper/control").exists() {
        s.apply(&Add, &r).unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{mapped}/p")).unwrap(),
            "pmem layer\n"
        );
        s.apply(&Remove, &r).unwrap();
        assert!(!Path::new("/dev/mapper/dm-linear-pmem0-0-16777216").exists());
    } else {
        let e = s.apply(&Add, &r).unwrap_err();
        assert!(e.to_string().contains("dm-linear"), "{e}");
    }
    assert!(mounts_under("/run").is_empty());
    assert!(!Path::new(mapped).exists());
    drop(s);
    for l in [layer, scratch, pmem] {
        l.detach();
    }
}

#[test]
fn disks_layers_and_overlays_leave_nothing_behind() {
    in_namespace(
        "disks_layers_and_overlays_leave_nothing_behind",
        disks_layers_and_overlays_body,
    );
}

fn hostile_body() {
    let t = Temp::new("hostile");
    let layer = Loop::new(t.0.join("layer.img"), 16, Some(("hello", "x\n")));
    let cfg = fake_sysfs(&t, &[(1, &layer)], &[(0, &layer)]);
    let s = Storage::new(Arc::new(RealSys::default()), cfg);
    let victim = t.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::create_dir_all("/run/gcs/c").unwrap();
    std::os::unix::fs::symlink(&victim, "/run/gcs/c/evil").unwrap();
    std::fs::create_dir_all("/run/layers").unwrap();
    std::os::unix::fs::symlink(&victim, "/run/layers/p9").unwrap();
    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let hostile = [
        "run/gcs/c/x",
        "/run/gcs/c/../../etc",
        "/run/gcs/c/x/../../../etc",
        "/run/gcs//c/x",
        "/run/gcs/c/x\0y",
        "/etc/rgcs-hostile",
        "/tmp/rgcs-hostile",
        "/run/gcs/c",
        "/run/gcs/c/evil",
        "/run/gcs/c/evil/rootfs",
        "/run/layers/p9",
    ];
    let long = format!("/run/gcs/c/{}", "d/".repeat(700));
    for h in hostile.iter().copied().chain([long.trim_end_matches('/')]) {
        let reqs = [
            Resource::MappedVirtualDisk(disk(h, 1, true)),
            Resource::VpMemDevice(VpMemDevice {
                mount_path: h.into(),
                ..VpMemDevice::default()
            }),
            overlay(h, &["/run/layers/p0"], ""),
            overlay("/run/gcs/c/ok/rootfs", &[h], ""),
            overlay("/run/gcs/c/ok/rootfs", &["/run/layers/p0"], h),
        ];
        for r in &reqs {
            assert!(s.apply(&Add, r).is_err(), "{h:?} accepted");
        }
    }
    assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap(), before);
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    assert!(!Path::new("/etc/rgcs-hostile").exists() && !Path::new("/tmp/rgcs-hostile").exists());
    assert!(!Path::new("/run/gcs/c/ok").exists());
    assert!(s.tracked().is_empty());
    layer.detach();
}

#[test]
fn hostile_paths_are_refused_with_nothing_mounted() {
    in_namespace("hostile_paths_are_refused_with_nothing_mounted", hostile_body);
}
