//! The task's root filesystem on the host: containerd's snapshotter hands the shim mounts
//! (overlay `lowerdir`s + `upperdir`, or a bind of a single directory) to mount at
//! `<bundle>/rootfs`, as every runc-style shim does. rgcs shares that directory into the UVM
//! over Plan 9 (ADR-0011), so what the container writes lands in the snapshot's upper directory
//! and containerd's view of the rootfs (diff, commit, `ctr snapshot`) stays right.

use std::path::Path;

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::ShimError;

/// Longest mount data the kernel takes (a page); longer overlay options need containerd's
/// relative-path trick, which we do not do (an image would need dozens of layers).
const MAX_DATA: usize = 4095;

fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "remount" => (true, MsFlags::MS_REMOUNT),
        _ => return None,
    })
}

/// `(flags, data)` of a mount's options.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts containerd's `mounts` at `target`, in order. On failure what was mounted is undone.
pub fn mount_host_rootfs(mounts: &[Mount], target: &Path) -> Result<(), ShimError> {
    if mounts.is_empty() {
        return Err(ShimError::Invalid(
            "the task has no rootfs mounts (rgcs needs the snapshotter's)".into(),
        ));
    }
    std::fs::create_dir_all(target).map_err(|e| ShimError::io(format!("create {}", target.display()), e))?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        if data.len() > MAX_DATA {
            unmount_host_rootfs(target);
            return Err(ShimError::Invalid(format!(
                "the rootfs mount options are {} bytes (at most {MAX_DATA}): too many layers",
                data.len()
            )));
        }
        let bind = flags.contains(MsFlags::MS_BIND) || m.type_ == "bind";
        let fstype = (!bind).then_some(m.type_.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        let res = mount(
            Some(m.source.as_str()),
            target,
            fstype,
            flags | if bind { MsFlags::MS_BIND } else { MsFlags::empty() },
            data,
        );
        if let Err(e) = res {
            if i > 0 {
                unmount_host_rootfs(target);
            }
            return Err(ShimError::io(
                format!("mount {} ({}) at {}", m.source, m.type_, target.display()),
                e.into(),
            ));
        }
        if bind && flags.contains(MsFlags::MS_RDONLY) {
            // A bind mount takes "ro" only on a remount.
            let _ = mount(
                None::<&str>,
                target,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                None::<&str>,
            );
        }
    }
    Ok(())
}

/// Unmounts everything at `target` (detached, so a busy mount goes once unused). Nothing
/// mounted is not an error.
pub fn unmount_host_rootfs(target: &Path) {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "unmount the rootfs");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = |v: &[&str]| parse_options(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let (f, d) = o(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]);
        assert!(f.is_empty());
        assert_eq!(d, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
        let (f, d) = o(&["rbind", "ro", "nosuid"]);
        assert_eq!(
            f,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert!(d.is_empty());
        let (f, _) = o(&["ro", "rw"]);
        assert!(f.is_empty());
    }
}
