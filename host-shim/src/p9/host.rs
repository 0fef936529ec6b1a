//! Host file operations confined to a share root.
//!
//! Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no `..`, no
//! absolute path and no symlink (inside or outside the share) is ever followed by the server;
//! the guest resolves symlinks itself (it reads them with Treadlink). Mutations act on a
//! single name relative to an `O_PATH` descriptor of the parent directory (`mkdirat`,
//! `unlinkat`, `renameat`, …), which never follow a trailing symlink either.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, SFlag};

use super::wire::Qid;

/// A share root: an `O_PATH` directory descriptor.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// The host directory.
    pub dir: PathBuf,
    /// Whether every mutating operation answers EROFS.
    pub read_only: bool,
}

/// `.` for the root itself, else the relative path.
fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

impl Root {
    /// Opens `dir` as a share root.
    pub fn open(dir: &Path, read_only: bool) -> std::io::Result<Self> {
        let f = File::open(dir)?;
        if !f.metadata()?.is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
        }
        Ok(Self {
            fd: OwnedFd::from(f),
            dir: dir.to_path_buf(),
            read_only,
        })
    }

    /// Opens `rel` beneath the root with `flags` (`O_CLOEXEC | O_NOFOLLOW` are added).
    pub fn open_at(&self, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(nix::sys::stat::Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        crate::sys::fs::open_beneath(self.fd.as_fd(), rel_or_dot(rel), how)
    }

    /// An `O_PATH` descriptor of `rel` itself (a symlink stays a symlink).
    pub fn path_fd(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        self.open_at(rel, OFlag::O_PATH, 0)
    }

    /// An `O_PATH` descriptor of the directory `rel`.
    pub fn dir_fd(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        self.open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
    }

    /// `lstat` of `rel`.
    pub fn stat(&self, rel: &Path) -> Result<FileStat, Errno> {
        stat_fd(self.path_fd(rel)?.as_raw_fd())
    }

    /// The parent's `O_PATH` descriptor and the final name of `rel` (not the root).
    pub fn parent_of<'p>(&self, rel: &'p Path) -> Result<(OwnedFd, &'p OsStr), Errno> {
        let name = rel.file_name().ok_or(Errno::EBUSY)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir_fd(parent)?, name))
    }

    /// The share root's descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub fn stat_fd(fd: RawFd) -> Result<FileStat, Errno> {
    fstatat(
        Some(fd),
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// The qid of a stat.
pub fn qid(st: &FileStat) -> Qid {
    let fmt = st.st_mode & SFlag::S_IFMT.bits();
    let ty = if fmt == SFlag::S_IFDIR.bits() {
        0x80
    } else if fmt == SFlag::S_IFLNK.bits() {
        0x02
    } else {
        0
    };
    Qid {
        ty,
        version: 0,
        path: st.st_ino,
    }
}

/// A name the guest may create or look up: one component, no NUL, not `.`/`..`.
pub fn valid_name(name: &[u8]) -> Result<&OsStr, Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(OsStr::from_bytes(name))
}

/// `/proc/self/fd/<fd>`: operates on the inode an `O_PATH` descriptor refers to.
pub fn proc_fd(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// `(name, d_type, qid)` of every entry of directory `dir` (including `.` and `..`).
pub fn list_dir(dir: &OwnedFd) -> Result<Vec<(Vec<u8>, u8, Qid)>, Errno> {
    let dup = dir
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    // `Dir` owns the duplicate from here on (and closes it if fdopendir fails).
    let mut d = nix::dir::Dir::from_fd(dup.into_raw_fd())?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes().to_vec();
        let Ok(st) = fstatat(
            Some(dir.as_raw_fd()),
            entry.file_name(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue; // raced with a removal
        };
        // The file type's 4 bits are the dirent type (DT_REG = S_IFREG >> 12, ...), so this fits.
        let dtype = u8::try_from((st.st_mode & SFlag::S_IFMT.bits()) >> 12).unwrap_or(libc::DT_UNKNOWN);
        out.push((name, dtype, qid(&st)));
    }
    Ok(out)
}
