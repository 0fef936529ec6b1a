//! Streams one layer tar into a directory, converting OCI whiteouts to overlayfs form.
//!
//! Entries are applied one at a time straight from the (decompressing, hashing) reader: a layer
//! is never held in memory. Every path is confined to the destination:
//! * absolute names and `..` components are refused ([`ExtractError::Unsafe`]);
//! * no entry may be written *through* a symlink (a parent component that is a symlink made by
//!   an earlier entry is refused), so a `link -> /etc` followed by `link/passwd` cannot escape;
//! * hard-link targets obey the same rules and must already exist in this layer.
//!
//! Whiteouts (OCI image spec, "Representing Changes"): `.wh.<name>` becomes a character device
//! 0/0 named `<name>`; `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Other
//! `.wh..wh.*` entries (aufs hard-link bookkeeping) are skipped.
//!
//! Ownership, permission bits (incl. setuid/setgid/sticky), mtimes, PAX `SCHILY.xattr.*`
//! attributes, hard links, symlinks, device nodes and fifos are kept; this needs root (we run as
//! root; see ADR 0005).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

pub use super::whiteout::{classify, sanitize, Action, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX};

/// How a tar is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// A container image layer: whiteouts, ownership, devices, xattrs.
    Layer,
    /// A `docker save` archive: only directories, regular files and symlinks, no ownership.
    Plain,
}

/// Errors of layer extraction.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The tar stream is corrupt or could not be read.
    #[error("reading tar entry in {layer}")]
    Read {
        /// Layer being read.
        layer: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An entry would write outside the layer root.
    #[error("refusing unsafe tar entry {entry:?} in {layer}: {why}")]
    Unsafe {
        /// Layer being read.
        layer: String,
        /// The entry's name.
        entry: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// Writing an entry failed.
    #[error("cannot {op} {path} (from {layer})")]
    Write {
        /// Layer being read.
        layer: String,
        /// The operation.
        op: &'static str,
        /// The destination path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Totals of one extraction, used to size the ext4 image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Inodes created (entries minus hard links, plus implicit directories).
    pub inodes: u64,
    /// 4 KiB blocks of regular-file data and long symlink targets.
    pub data_blocks: u64,
    /// Bytes of directory entries (name + 8 bytes each).
    pub dirent_bytes: u64,
    /// Regular-file bytes written.
    pub file_bytes: u64,
}

/// Streams the tar in `reader` into `dest` (an existing, empty directory).
pub fn extract<R: Read>(
    reader: R,
    dest: &Path,
    layer: &str,
    mode: ApplyMode,
) -> Result<ExtractStats, ExtractError> {
    let mut x = Extractor {
        dest,
        layer,
        mode,
        stats: ExtractStats {
            inodes: 1,
            ..Default::default()
        },
        dirs: Vec::new(),
        buf: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| x.read_err(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| x.read_err(e))?;
        x.apply(&mut entry)?;
    }
    // Directory mtimes last: creating children changed them.
    for (path, mtime) in x.dirs.iter().rev() {
        set_mtime(path, *mtime).map_err(|e| x.werr("set the mtime of", path, e))?;
    }
    Ok(x.stats)
}

/// Whether `h` (the first 512 bytes of a stream) is a tar header: its checksum field (octal, at
/// 148..156) equals the sum of the header's bytes with that field counted as spaces. An empty
/// archive (a zero block) counts as tar too.
pub fn is_tar_header(h: &[u8]) -> bool {
    if h.len() < 512 {
        return false;
    }
    let h = &h[..512];
    if h.iter().all(|&b| b == 0) {
        return true;
    }
    let field = &h[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| char::from(b))
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) })
        .sum();
    sum == want
}

/// The tar crate quotes header bytes in its errors (a text file read as a tar puts its first
/// lines there): keep the kind, escape control characters and cut the text short, so no input
/// reaches a terminal raw or at length.
fn tame(e: io::Error) -> io::Error {
    const MAX: usize = 160;
    let text = e.to_string();
    let mut out: String = text.chars().flat_map(char::escape_debug).take(MAX).collect();
    if out.len() < text.escape_debug().to_string().len() {
        out.push('…');
    }
    io::Error::new(e.kind(), out)
}

struct Extractor<'a> {
    dest: &'a Path,
    layer: &'a str,
    mode: ApplyMode,
    stats: ExtractStats,
    dirs: Vec<(PathBuf, i64)>,
    buf: Vec<u8>,
}

/// Ownership and times of an entry (PAX records override the ustar fields).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Extractor<'_> {
    fn read_err(&self, source: io::Error) -> ExtractError {
        ExtractError::Read {
            layer: self.layer.to_owned(),
            source: tame(source),
        }
    }

    fn werr(&self, op: &'static str, path: &Path, source: io::Error) -> ExtractError {
        ExtractError::Write {
            layer: self.layer.to_owned(),
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn unsafe_entry(&self, entry: &Path, why: &'static str) -> ExtractError {
        ExtractError::Unsafe {
            layer: self.layer.to_owned(),
            entry: entry.display().to_string(),
            why,
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            return Ok(());
        }
        let name = entry.path().map_err(|e| self.read_err(e))?.into_owned();
        let rel = sanitize(&name).map_err(|why| self.unsafe_entry(&name, why))?;
        let meta = self.meta(entry)?;
        let Some(rel) = rel else {
            // The layer root ("./"): take its ownership and mode.
            if kind.is_dir() && self.mode == ApplyMode::Layer {
                self.set_meta(self.dest, &meta, false)?;
                self.dirs.push((self.dest.to_path_buf(), meta.mtime));
            }
            return Ok(());
        };
        let action = match self.mode {
            ApplyMode::Layer => classify(&rel),
            ApplyMode::Plain => Action::Entry(rel),
        };
        match action {
            Action::Skip => Ok(()),
            Action::Opaque(dir) => {
                let path = self.prepare(&dir, &name, true)?;
                self.ensure_dir(&path)?;
                crate::sys::fs::set_xattr(&path, OPAQUE_XATTR, b"y")
                    .map_err(|e| self.werr("set the opaque xattr on", &path, e))
            }
            Action::Whiteout(target) => {
                let path = self.prepare(&target, &name, false)?;
                self.remove_existing(&path)?;
                mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| self.werr("create the whiteout", &path, e.into()))?;
                self.count(&path, 0);
                self.chown(&path, 0, 0)
            }
            Action::Entry(rel) => self.entry(entry, kind, &rel, &name, meta),
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        rel: &Path,
        name: &Path,
        meta: Meta,
    ) -> Result<(), ExtractError> {
        let path = self.prepare(rel, name, false)?;
        let layer_mode = self.mode == ApplyMode::Layer;
        if !meta.xattrs.is_empty() {
            self.stats.data_blocks += 1; // xattrs that do not fit in the inode take a block
        }
        if kind.is_dir() {
            self.ensure_dir(&path)?;
            self.set_meta(&path, &meta, false)?;
            self.dirs.push((path, meta.mtime));
            return Ok(());
        }
        self.remove_existing(&path)?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .map_err(|e| self.werr("create", &path, e))?;
            let n = self.copy(entry, &mut file, &path)?;
            drop(file);
            self.stats.file_bytes += n;
            self.count(&path, n.div_ceil(4096));
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| self.read_err(e))?
                .ok_or_else(|| self.unsafe_entry(name, "is a symlink without a target"))?;
            std::os::unix::fs::symlink(&target, &path)
                .map_err(|e| self.werr("create the symlink", &path, e))?;
            let len = target.as_os_str().len() as u64;
            self.count(&path, if len > 59 { 1 } else { 0 });
            self.set_meta(&path, &meta, true)?;
            return Ok(());
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| self.read_err(e))?
                .ok_or_else(|| self.unsafe_entry(name, "is a hard link without a target"))?
                .into_owned();
            let target_rel = sanitize(&target)
                .map_err(|why| self.unsafe_entry(&target, why))?
                .ok_or_else(|| self.unsafe_entry(name, "is a hard link to the layer root"))?;
            let target_path = self.prepare(&target_rel, &target, false)?;
            fs::hard_link(&target_path, &path).map_err(|e| self.werr("hard-link", &path, e))?;
            self.stats.dirent_bytes += dirent_len(&path);
            return Ok(());
        } else if !layer_mode {
            tracing::debug!(entry = %name.display(), ?kind, "skipping non-file entry in archive");
            return Ok(());
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let (flag, dev) = match () {
                () if kind.is_fifo() => (SFlag::S_IFIFO, 0),
                () => {
                    let h = entry.header();
                    let major = h.device_major().ok().flatten().unwrap_or(0);
                    let minor = h.device_minor().ok().flatten().unwrap_or(0);
                    let flag = if kind.is_character_special() {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (flag, libc::makedev(major, minor))
                }
            };
            mknod(&path, flag, Mode::from_bits_truncate(0o600), dev)
                .map_err(|e| self.werr("create the device node", &path, e.into()))?;
            self.count(&path, 0);
        } else {
            tracing::warn!(layer = self.layer, entry = %name.display(), ?kind, "skipping unsupported tar entry");
            return Ok(());
        }
        self.set_meta(&path, &meta, false)?;
        set_mtime(&path, meta.mtime).map_err(|e| self.werr("set the mtime of", &path, e))
    }

    /// Copies an entry's data with a reused 1 MiB buffer (fewer syscalls than `io::copy`).
    fn copy<R: Read>(&mut self, entry: &mut R, file: &mut File, path: &Path) -> Result<u64, ExtractError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let mut total = 0u64;
        let result = loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(self.read_err(e)),
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(self.werr("write", path, e));
            }
            total += n as u64;
        };
        self.buf = buf;
        result
    }

    fn count(&mut self, path: &Path, blocks: u64) {
        self.stats.inodes += 1;
        self.stats.data_blocks += blocks;
        self.stats.dirent_bytes += dirent_len(path);
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, ExtractError> {
        let h = entry.header();
        // A value out of range of its type is as invalid as an unparsable one: both get the
        // default (and a PAX record with one is ignored, as GNU tar does).
        let mut meta = Meta {
            uid: h.uid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            gid: h.gid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            mtime: h.mtime().ok().and_then(|v| i64::try_from(v).ok()).unwrap_or(0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.read_err(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.read_err(e))?;
                let Ok(key) = ext.key() else { continue };
                let num = || {
                    ext.value()
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                match key {
                    "uid" => meta.uid = num().and_then(|v| u32::try_from(v).ok()).unwrap_or(meta.uid),
                    "gid" => meta.gid = num().and_then(|v| u32::try_from(v).ok()).unwrap_or(meta.gid),
                    "mtime" => meta.mtime = num().unwrap_or(meta.mtime),
                    _ => {
                        if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                            meta.xattrs.push((attr.to_owned(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Joins `rel` under the root after checking that no parent is a symlink or non-directory,
    /// creating missing parents (0755, root-owned). With `is_dir_target`, `rel` itself is also
    /// checked the same way.
    fn prepare(&mut self, rel: &Path, name: &Path, is_dir_target: bool) -> Result<PathBuf, ExtractError> {
        let mut path = self.dest.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        let parents = if is_dir_target {
            comps.len()
        } else {
            comps.len().saturating_sub(1)
        };
        for c in &comps[..parents] {
            path.push(c);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(name, "goes through a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.unsafe_entry(name, "goes through a non-directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(|e| self.werr("create the directory", &path, e))?;
                    self.count(&path, 1);
                }
                Err(e) => return Err(self.werr("inspect", &path, e)),
            }
        }
        for c in &comps[parents..] {
            path.push(c);
        }
        Ok(path)
    }

    fn ensure_dir(&mut self, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => self.remove_existing(path)?,
            Err(_) => {}
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map_err(|e| self.werr("create the directory", path, e))?;
        self.count(path, 1);
        Ok(())
    }

    /// A later entry replaces an earlier one with the same name (tar semantics).
    fn remove_existing(&mut self, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| self.werr("replace", path, e)),
            Ok(_) => fs::remove_file(path).map_err(|e| self.werr("replace", path, e)),
            Err(_) => Ok(()),
        }
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), ExtractError> {
        fchownat(
            None,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.werr("chown", path, e.into()))
    }

    fn set_meta(&self, path: &Path, meta: &Meta, symlink: bool) -> Result<(), ExtractError> {
        if self.mode == ApplyMode::Plain {
            return Ok(());
        }
        self.chown(path, meta.uid, meta.gid)?;
        if !symlink {
            // After chown, which clears setuid/setgid.
            let perms = std::os::unix::fs::PermissionsExt::from_mode(meta.mode);
            fs::set_permissions(path, perms).map_err(|e| self.werr("chmod", path, e))?;
        }
        for (name, value) in &meta.xattrs {
            crate::sys::fs::set_xattr(path, name, value)
                .map_err(|e| self.werr("set an xattr on", path, e))?;
        }
        if symlink {
            set_mtime(path, meta.mtime).map_err(|e| self.werr("set the mtime of", path, e))?;
        }
        Ok(())
    }
}

fn dirent_len(path: &Path) -> u64 {
    path.file_name().map_or(0, |n| n.len() as u64) + 12
}

/// Sets atime = mtime = `mtime` without following symlinks.
fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Opens `rel` (which may contain symlinks) strictly beneath `root` (`openat2` with
/// `RESOLVE_BENEATH`): for reading manifests and blobs of an image layout.
pub fn open_beneath(root: &File, rel: &str) -> io::Result<File> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsFd;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = crate::sys::fs::open_beneath(root.as_fd(), Path::new(rel), how).map_err(io::Error::from)?;
    Ok(File::from(fd))
}
