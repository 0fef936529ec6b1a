//! The mutating 9P2000.L requests. Each one checks the share is writable first
//! ([`Conn::fid_rw`]) and acts on one validated name relative to an `O_PATH` parent descriptor.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;

use super::conn::{chmod_fd, chown_fd, io_errno, is_symlink, open_regular, Conn, Fid, Res};
use super::host::{proc_fd, qid, stat_fd, valid_name, Root};
use super::wire::{Dec, Enc, NOFID};

/// `Tsetattr` valid bits.
mod setattr {
    pub const MODE: u32 = 0x1;
    pub const UID: u32 = 0x2;
    pub const GID: u32 = 0x4;
    pub const SIZE: u32 = 0x8;
    pub const ATIME: u32 = 0x10;
    pub const MTIME: u32 = 0x20;
    pub const ATIME_SET: u32 = 0x80;
    pub const MTIME_SET: u32 = 0x100;
}

impl Conn {
    pub(super) fn setattr(&mut self, d: &mut Dec<'_>) -> Res {
        let f = self.fid_rw(d.u32()?)?;
        let (valid, mode, uid, gid, size) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u64()?);
        let (a_s, a_ns, m_s, m_ns) = (d.u64()?, d.u64()?, d.u64()?, d.u64()?);
        let fd = f.root.path_fd(&f.path)?;
        let st = stat_fd(fd.as_raw_fd())?;
        let link = is_symlink(&st);
        if valid & setattr::MODE != 0 && !link {
            chmod_fd(&fd, mode)?;
        }
        if valid & (setattr::UID | setattr::GID) != 0 {
            let u = if valid & setattr::UID != 0 { uid } else { NOFID };
            let g = if valid & setattr::GID != 0 { gid } else { NOFID };
            chown_fd(&fd, u, g)?;
        }
        if valid & setattr::SIZE != 0 {
            if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
                return Err(Errno::EINVAL);
            }
            let w = open_regular(&f.root, &f.path, OFlag::O_WRONLY)?;
            w.set_len(size).map_err(io_errno)?;
        }
        if valid & (setattr::ATIME | setattr::MTIME) != 0 && !link {
            let ts = |on: u32, set: u32, s: u64, ns: u64| {
                if valid & on == 0 {
                    TimeSpec::UTIME_OMIT
                } else if valid & set != 0 {
                    // The client sends the signed seconds' bits (pre-1970 times are negative).
                    TimeSpec::new(s.cast_signed(), ns.cast_signed())
                } else {
                    TimeSpec::UTIME_NOW
                }
            };
            let at = ts(setattr::ATIME, setattr::ATIME_SET, a_s, a_ns);
            let mt = ts(setattr::MTIME, setattr::MTIME_SET, m_s, m_ns);
            nix::sys::stat::utimensat(
                None,
                &proc_fd(fd.as_raw_fd()),
                &at,
                &mt,
                UtimensatFlags::FollowSymlink,
            )?;
        }
        Ok(())
    }

    /// Stats a new entry, sets its exact mode (no umask) and the caller's ownership.
    fn finish_new(f: &Fid, path: &Path, mode: Option<u32>, gid: u32, e: &mut Enc) -> Res {
        let fd = f.root.path_fd(path)?;
        if let Some(mode) = mode {
            chmod_fd(&fd, mode)?;
        }
        chown_fd(&fd, f.uid, gid)?;
        e.qid(&qid(&stat_fd(fd.as_raw_fd())?));
        Ok(())
    }

    pub(super) fn mkdir(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let fid = d.u32()?;
        let (name, mode, gid) = (d.bytes_str()?, d.u32()?, d.u32()?);
        let f = self.fid_rw(fid)?;
        let name = valid_name(name)?;
        let parent = f.root.dir_fd(&f.path)?;
        nix::sys::stat::mkdirat(
            Some(parent.as_raw_fd()),
            name,
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        Self::finish_new(f, &f.path.join(name), Some(mode), gid, e)
    }

    pub(super) fn symlink(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let fid = d.u32()?;
        let (name, target, gid) = (d.bytes_str()?, d.bytes_str()?, d.u32()?);
        let f = self.fid_rw(fid)?;
        let name = valid_name(name)?;
        if target.is_empty() || target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        let parent = f.root.dir_fd(&f.path)?;
        nix::unistd::symlinkat(
            std::ffi::OsStr::from_bytes(target),
            Some(parent.as_raw_fd()),
            name,
        )?;
        Self::finish_new(f, &f.path.join(name), None, gid, e)
    }

    pub(super) fn mknod(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let fid = d.u32()?;
        let (name, mode, _major, _minor, gid) = (d.bytes_str()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?);
        let f = self.fid_rw(fid)?;
        let name = valid_name(name)?;
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        // Device nodes made by a guest would be host device nodes: refused.
        if ![SFlag::S_IFIFO, SFlag::S_IFSOCK, SFlag::S_IFREG].contains(&kind) {
            return Err(Errno::EPERM);
        }
        let parent = f.root.dir_fd(&f.path)?;
        nix::sys::stat::mknodat(
            Some(parent.as_raw_fd()),
            name,
            kind,
            Mode::from_bits_truncate(mode & 0o7777),
            0,
        )?;
        Self::finish_new(f, &f.path.join(name), Some(mode), gid, e)
    }

    pub(super) fn link(&mut self, d: &mut Dec<'_>) -> Res {
        let (dfid, fid, name) = (d.u32()?, d.u32()?, d.bytes_str()?);
        let dir = self.fid_rw(dfid)?;
        let src = self.fid(fid)?;
        if !Arc::ptr_eq(&dir.root, &src.root) {
            return Err(Errno::EXDEV);
        }
        let name = valid_name(name)?;
        let (sparent, sname) = src.root.parent_of(&src.path)?;
        let dparent = dir.root.dir_fd(&dir.path)?;
        nix::unistd::linkat(
            Some(sparent.as_raw_fd()),
            sname,
            Some(dparent.as_raw_fd()),
            name,
            AtFlags::empty(),
        )
    }

    /// Renames `old` to `new` under `root` and re-points every fid below `old`.
    fn do_rename(&mut self, root: &Arc<Root>, old: &Path, new: &Path) -> Res {
        let (op, oname) = root.parent_of(old)?;
        let (np, nname) = root.parent_of(new)?;
        nix::fcntl::renameat(Some(op.as_raw_fd()), oname, Some(np.as_raw_fd()), nname)?;
        for f in self.fids.values_mut() {
            if Arc::ptr_eq(&f.root, root) {
                if let Ok(rest) = f.path.strip_prefix(old) {
                    f.path = new.join(rest);
                }
            }
        }
        Ok(())
    }

    pub(super) fn rename(&mut self, d: &mut Dec<'_>) -> Res {
        let (fid, dfid, name) = (d.u32()?, d.u32()?, d.bytes_str()?);
        let src = self.fid_rw(fid)?;
        let dir = self.fid(dfid)?;
        if !Arc::ptr_eq(&dir.root, &src.root) {
            return Err(Errno::EXDEV);
        }
        let (root, old, new) = (
            Arc::clone(&src.root),
            src.path.clone(),
            dir.path.join(valid_name(name)?),
        );
        self.do_rename(&root, &old, &new)
    }

    pub(super) fn renameat(&mut self, d: &mut Dec<'_>) -> Res {
        let (ofid, oname, nfid, nname) = (d.u32()?, d.bytes_str()?, d.u32()?, d.bytes_str()?);
        let od = self.fid_rw(ofid)?;
        let nd = self.fid(nfid)?;
        if !Arc::ptr_eq(&od.root, &nd.root) {
            return Err(Errno::EXDEV);
        }
        let root = Arc::clone(&od.root);
        let old = od.path.join(valid_name(oname)?);
        let new = nd.path.join(valid_name(nname)?);
        self.do_rename(&root, &old, &new)
    }

    pub(super) fn unlinkat(&mut self, d: &mut Dec<'_>) -> Res {
        let (fid, name, flags) = (d.u32()?, d.bytes_str()?, d.u32()?);
        let f = self.fid_rw(fid)?;
        let name = valid_name(name)?;
        let parent = f.root.dir_fd(&f.path)?;
        let how = if flags.cast_signed() & libc::AT_REMOVEDIR != 0 {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, how)
    }

    pub(super) fn remove(&mut self, d: &mut Dec<'_>) -> Res {
        // The fid is clunked whatever happens.
        let f = self.fids.remove(&d.u32()?).ok_or(Errno::EBADF)?;
        if f.root.read_only {
            return Err(Errno::EROFS);
        }
        let st = f.root.stat(&f.path)?;
        let (parent, name) = f.root.parent_of(&f.path)?;
        let how = if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, how)
    }
}
