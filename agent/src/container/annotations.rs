//! The annotations hcsshim applies to a workload's spec (docs/gcs-reference.md §6.6, `docs/pods.md`):
//! the size of `/dev/shm`, and the devices — every UVM device for a privileged container, else
//! the spec's own re-read from the UVM's `/dev` (the host's numbers mean nothing in the guest).

use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Mount, MountBuilder, Spec,
};

/// Annotation: the size of `/dev/shm` in KiB.
pub const SHM_SIZE_KB: &str = "io.microsoft.lcow.shm.size-kb";
/// Annotation: a privileged container (every UVM device, all device access).
pub const PRIVILEGED: &str = "io.microsoft.virtualmachine.lcow.privileged";

/// The annotations hcsshim applies to workloads: `/dev/shm` size, privileged or re-read devices.
pub fn apply_workload_annotations(spec: &mut Spec) -> Result<(), String> {
    let ann = spec.annotations().clone().unwrap_or_default();
    if let Some(v) = ann.get(SHM_SIZE_KB) {
        let kb: u64 = v
            .trim()
            .parse()
            .map_err(|e| format!("/dev/shm size must be a valid integer: {e}"))?;
        if kb == 0 {
            return Err("/dev/shm size must be non-zero".into());
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(shm_mount(v.trim())?);
        spec.set_mounts(Some(mounts));
    }
    // hcsshim: a value that does not parse is a warning and means false.
    let privileged = ann
        .get(PRIVILEGED)
        .is_some_and(|v| matches!(v.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
    if privileged {
        privileged_devices(spec)
    } else {
        reread_devices(spec)
    }
}

fn shm_mount(size_kb: &str) -> Result<Mount, String> {
    MountBuilder::default()
        .destination("/dev/shm")
        .typ("tmpfs")
        .source("shm")
        .options(
            ["nosuid", "noexec", "nodev", "mode=1777"]
                .iter()
                .map(|s| (*s).to_owned())
                .chain(std::iter::once(format!("size={size_kb}k")))
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| e.to_string())
}

/// A device node of the UVM: its type and numbers.
fn device_at(path: &Path) -> Option<(LinuxDeviceType, i64, i64, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    let t = if m.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if m.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = m.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    Some((
        t,
        i64::try_from(major).ok()?,
        i64::try_from(minor).ok()?,
        m.mode() & 0o7777,
    ))
}

fn device(
    path: &Path,
    dev: (LinuxDeviceType, i64, i64, u32),
) -> Result<libcontainer::oci_spec::runtime::LinuxDevice, String> {
    LinuxDeviceBuilder::default()
        .path(path)
        .typ(dev.0)
        .major(dev.1)
        .minor(dev.2)
        .file_mode(dev.3)
        .build()
        .map_err(|e| e.to_string())
}

/// Every device node of the UVM's `/dev` (not `pts`, `shm`, `mqueue`), all device access.
fn privileged_devices(spec: &mut Spec) -> Result<(), String> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let skip = ["pts", "shm", "mqueue", ".udev"]
                    .iter()
                    .any(|s| p == Path::new("/dev").join(s));
                if !skip && stack.len() < 64 {
                    stack.push(p);
                }
            } else if let Some(d) = device_at(&p).filter(|d| d.1 != 0 || d.2 != 0) {
                found.push(device(&p, d)?);
            }
        }
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.retain(|d| !found.iter().any(|f| f.path() == d.path()));
    devices.extend(found);
    linux.set_devices(Some(devices));
    let mut res = linux.resources().clone().unwrap_or_default();
    res.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build()
        .map_err(|e| e.to_string())?]));
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The spec's devices re-read from the UVM's `/dev` (the host's numbers mean nothing here), each
/// allowed in the device cgroup; a missing one fails the Create.
fn reread_devices(spec: &mut Spec) -> Result<(), String> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let Some(devices) = linux.devices().clone().filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut rules = res.devices().clone().unwrap_or_default();
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        let dev = device_at(d.path())
            .ok_or_else(|| format!("device {} does not exist in the UVM", d.path().display()))?;
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(dev.0)
                .major(dev.1)
                .minor(dev.2)
                .access("rwm")
                .build()
                .map_err(|e| e.to_string())?,
        );
        out.push(device(d.path(), dev)?);
    }
    linux.set_devices(Some(out));
    res.set_devices(Some(rules));
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_size_replaces_dev_shm() {
        let mut spec = Spec::default();
        let mut ann = std::collections::HashMap::new();
        ann.insert(SHM_SIZE_KB.to_owned(), "65536".to_owned());
        spec.set_annotations(Some(ann.clone()));
        apply_workload_annotations(&mut spec).unwrap();
        let shm: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert!(shm[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=65536k".to_owned()));
        for bad in ["0", "x", "-1"] {
            ann.insert(SHM_SIZE_KB.to_owned(), bad.to_owned());
            spec.set_annotations(Some(ann.clone()));
            assert!(apply_workload_annotations(&mut spec).is_err(), "{bad}");
        }
    }
}
