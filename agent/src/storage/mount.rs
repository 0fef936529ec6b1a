//! Mount bookkeeping: the [`Sys`] boundary to the kernel (mount, unmount, mkfs, vsock, dm), the
//! table of what the agent mounted with reference counts, and the unmount-until-nothing-is-stacked
//! rule of hcsshim's `storage.UnmountPath`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::StorageError;

/// Most unmounts of one path on Remove (stacked mounts), as hcsshim.
pub const MAX_UNMOUNTS: usize = 5;

/// The kernel side effects of storage requests. [`RealSys`] performs them; tests use a fake.
pub trait Sys: Send + Sync + Debug {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// `umount2(target, 0)`.
    fn umount(&self, target: &Path) -> Result<(), Errno>;
    /// Mount points at or under `path`, deepest last (from `/proc/self/mountinfo`).
    fn mounts_under(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Formats `dev` as ext4.
    fn mkfs_ext4(&self, dev: &Path) -> io::Result<()>;
    /// A connected vsock stream to the host on `port`, with 64 KiB socket buffers.
    fn dial_host(&self, port: u32) -> io::Result<OwnedFd>;
    /// Creates dm-linear device `name` over `len` sectors of `dev` from sector `start`; returns
    /// the path of its node.
    fn dm_linear_create(&self, name: &str, dev: &Path, start: u64, len: u64) -> io::Result<PathBuf>;
    /// Removes dm device `name` and its node.
    fn dm_remove(&self, name: &str) -> io::Result<()>;
}

/// The real kernel. Helper programs (`mkfs.ext4`) are waited for through the agent's reaper when
/// there is one (the agent); a process without one (tests) waits for them itself.
#[derive(Debug, Default)]
pub struct RealSys {
    /// The agent's one reaper.
    pub reaper: Option<std::sync::Arc<crate::reaper::Reaper>>,
}

/// How long `mkfs.ext4` may take (a 20 GiB scratch disk under TCG takes a few seconds).
const MKFS_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

impl Sys for RealSys {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::umount2(target, MntFlags::empty())
    }

    fn mounts_under(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(parse_mountinfo(&text)
            .into_iter()
            .filter(|m| m.starts_with(path))
            .collect())
    }

    fn mkfs_ext4(&self, dev: &Path) -> io::Result<()> {
        // The initrd carries Debian's mkfs.ext4 with its libraries (scripts/build.sh); fail
        // clearly on an image without one.
        let tool = [
            "/sbin/mkfs.ext4",
            "/usr/sbin/mkfs.ext4",
            "/bin/mkfs.ext4",
            "/usr/bin/mkfs.ext4",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "mkfs.ext4 is not available in this guest image",
            )
        })?;
        let dev_arg = dev.to_string_lossy();
        let what = format!("{tool} {}", dev.display());
        match &self.reaper {
            Some(reaper) => crate::process::tool::run(
                reaper,
                Path::new(tool),
                &["-q", "-F", &dev_arg],
                &["PATH=/sbin:/usr/sbin:/bin:/usr/bin"],
                MKFS_LIMIT,
            )?
            .check(&what),
            // A process without the agent's reaper (the storage tests): its own wait races
            // nothing.
            None => {
                let out = std::process::Command::new(tool)
                    .args(["-q", "-F", &dev_arg])
                    .stdin(std::process::Stdio::null())
                    .output()?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "{what} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )))
                }
            }
        }
    }

    fn dial_host(&self, port: u32) -> io::Result<OwnedFd> {
        use nix::sys::socket::{setsockopt, sockopt};
        let fd = rgcs_init::vsock::connect(port)?;
        setsockopt(&fd, sockopt::RcvBuf, &super::plan9::SOCKET_BUFFER)?;
        setsockopt(&fd, sockopt::SndBuf, &super::plan9::SOCKET_BUFFER)?;
        Ok(fd)
    }

    fn dm_linear_create(&self, name: &str, dev: &Path, start: u64, len: u64) -> io::Result<PathBuf> {
        crate::sys::dm::create_linear(name, dev, start, len)
    }

    fn dm_remove(&self, name: &str) -> io::Result<()> {
        crate::sys::dm::remove(name)
    }
}

/// Mount points in `/proc/self/mountinfo` text, in mount order (octal escapes decoded).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v =
                u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `target` until the kernel says it is not a mount point (`EINVAL`), at most
/// [`MAX_UNMOUNTS`] times; a missing target is success. Fails if something is still mounted at
/// or under `target` afterwards.
pub fn unmount_stacked(sys: &dyn Sys, target: &Path) -> Result<(), StorageError> {
    for _ in 0..MAX_UNMOUNTS {
        match sys.umount(target) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => {
                return Err(StorageError::Unmount {
                    target: target.display().to_string(),
                    source: e,
                })
            }
        }
    }
    let left = sys.mounts_under(target).map_err(|e| StorageError::Io {
        what: "list mounts under",
        path: target.display().to_string(),
        source: e,
    })?;
    if let Some(m) = left.first() {
        return Err(StorageError::StillMounted {
            target: target.display().to_string(),
            mount: m.display().to_string(),
        });
    }
    Ok(())
}

/// Removes `path` after its mounts are gone: a symlink or file is unlinked, a directory removed
/// with its contents (nothing is mounted under it, [`unmount_stacked`] checked). Missing is fine.
pub fn remove_path(path: &Path) -> Result<(), StorageError> {
    let res = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::Io {
            what: "remove",
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// What the agent mounted at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What is mounted, for matching a repeated Add (`scsi 0:1p0 ro`, `pmem 3`, `overlay …`).
    pub source: String,
    /// How to tear it down.
    pub kind: Kind,
    /// Host Adds not yet matched by a Remove.
    pub refs: u32,
    /// Overlays mounted on top that use this path as a layer.
    pub users: u32,
}

/// The teardown a mount needs beyond unmounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A mount with nothing else to undo.
    Plain,
    /// A `BlockDev` symlink (no mount).
    Symlink,
    /// A mount over a dm device to remove afterwards.
    Dm(String),
    /// An overlay, holding a use of each layer path that the table tracks.
    Overlay(Vec<PathBuf>),
}

/// What [`MountTable::release`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// The agent has no record of this path (mounted before a restart, or never).
    Untracked,
    /// Other Adds or overlays still hold it: leave it mounted.
    Held,
    /// The last holder is gone: tear it down.
    Teardown(Entry),
}

/// The mounts the agent made, keyed by mount path.
#[derive(Debug, Default)]
pub struct MountTable {
    entries: BTreeMap<PathBuf, Entry>,
}

impl MountTable {
    /// The entry at `path`.
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The tracked paths.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.entries.keys()
    }

    /// Number of tracked paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A repeated Add of the same `source` at `path` takes another reference and returns true;
    /// a different source there is an error; false means the caller must mount, then [`insert`].
    ///
    /// [`insert`]: MountTable::insert
    pub fn share(&mut self, path: &Path, source: &str) -> Result<bool, StorageError> {
        match self.entries.get_mut(path) {
            None => Ok(false),
            Some(e) if e.source == source => {
                e.refs += 1;
                Ok(true)
            }
            Some(e) => Err(StorageError::InUse {
                path: path.display().to_string(),
                by: e.source.clone(),
            }),
        }
    }

    /// Records a new mount at `path` with one reference; an overlay takes a use of each layer the
    /// table tracks.
    pub fn insert(&mut self, path: PathBuf, source: String, kind: Kind) {
        if let Kind::Overlay(layers) = &kind {
            for l in layers {
                if let Some(e) = self.entries.get_mut(l) {
                    e.users += 1;
                }
            }
        }
        self.entries.insert(
            path,
            Entry {
                source,
                kind,
                refs: 1,
                users: 0,
            },
        );
    }

    /// Drops one host reference to `path`.
    pub fn release(&mut self, path: &Path) -> Release {
        let Some(e) = self.entries.get_mut(path) else {
            return Release::Untracked;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 || e.users > 0 {
            return Release::Held;
        }
        match self.entries.remove(path) {
            Some(e) => Release::Teardown(e),
            None => Release::Untracked,
        }
    }

    /// Forgets a torn-down overlay's layer uses; returns the layers whose last holder it was
    /// (their host Remove already came), to unmount now, in order.
    pub fn drop_uses(&mut self, layers: &[PathBuf]) -> Vec<(PathBuf, Entry)> {
        let mut free = Vec::new();
        for l in layers {
            let done = match self.entries.get_mut(l) {
                Some(e) => {
                    e.users = e.users.saturating_sub(1);
                    e.users == 0 && e.refs == 0
                }
                None => false,
            };
            if done {
                if let Some(e) = self.entries.remove(l) {
                    free.push((l.clone(), e));
                }
            }
        }
        free
    }

    /// Puts back an entry whose teardown failed, so a retry finds it.
    pub fn restore(&mut self, path: PathBuf, mut entry: Entry) {
        entry.refs = entry.refs.max(1);
        self.entries.insert(path, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let text = "22 1 0:21 / /run rw,nosuid - tmpfs tmpfs rw\n\
                    23 22 0:22 / /run/a\\040b rw - ext4 /dev/sda rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![PathBuf::from("/run"), PathBuf::from("/run/a b")]
        );
    }

    #[test]
    fn shared_layer_is_torn_down_once_by_the_last_holder() {
        let mut t = MountTable::default();
        let layer = PathBuf::from("/run/layers/p0");
        t.insert(layer.clone(), "pmem 0".into(), Kind::Plain);
        assert!(t.share(&layer, "pmem 0").unwrap());
        assert!(t.share(&layer, "pmem 1").is_err());
        t.insert("/a".into(), "overlay".into(), Kind::Overlay(vec![layer.clone()]));
        t.insert("/b".into(), "overlay".into(), Kind::Overlay(vec![layer.clone()]));
        assert_eq!(t.get(&layer).unwrap().users, 2);
        assert_eq!(t.release(&layer), Release::Held);
        assert_eq!(t.release(&layer), Release::Held); // overlays still use it
        assert!(matches!(t.release(Path::new("/a")), Release::Teardown(_)));
        assert!(t.drop_uses(std::slice::from_ref(&layer)).is_empty());
        assert!(matches!(t.release(Path::new("/b")), Release::Teardown(_)));
        let free = t.drop_uses(std::slice::from_ref(&layer));
        assert_eq!(free.len(), 1);
        assert_eq!(free[0].0, layer);
        assert!(t.is_empty());
        assert_eq!(t.release(&layer), Release::Untracked);
    }
}
