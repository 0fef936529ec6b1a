//! One 9P2000.L connection (one guest mount): the fid table and the request handlers.
//!
//! Requests are answered in order (the Linux client pipelines them by tag; answering in order
//! is allowed). Any failure becomes `Rlerror errno`; malformed bodies are `EINVAL`; no input
//! can make a handler panic.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::host::{list_dir, proc_fd, qid, stat_fd, valid_name, Root};
use super::wire::{self, t, Dec, Enc, Short, TooLong, IO_HEADER, MAX_MSIZE, MIN_MSIZE, NOFID};
use super::{Shares, Stats};
use std::sync::atomic::Ordering;

impl From<Short> for Errno {
    fn from(_: Short) -> Self {
        Errno::EINVAL
    }
}

impl From<TooLong> for Errno {
    fn from(_: TooLong) -> Self {
        Errno::ENAMETOOLONG
    }
}

pub(super) type Res = Result<(), Errno>;

/// What an open fid refers to.
#[derive(Debug)]
pub(super) enum Open {
    None,
    File(File),
    Dir {
        fd: OwnedFd,
        entries: Option<Vec<(Vec<u8>, u8, wire::Qid)>>,
    },
    Xattr,
}

#[derive(Debug)]
pub(super) struct Fid {
    pub(super) root: Arc<Root>,
    pub(super) path: PathBuf,
    pub(super) uid: u32,
    pub(super) open: Open,
}

/// One connection's state.
pub(crate) struct Conn {
    shares: Shares,
    stats: Arc<Stats>,
    msize: u32,
    pub(super) fids: HashMap<u32, Fid>,
}

const V9FS_MAGIC: u32 = 0x0102_1997;
const MAX_WALK: u16 = 16;
/// `P9_LOCK_TYPE_UNLCK` of Rgetlock (the same value as Linux's `F_UNLCK`).
const P9_LOCK_TYPE_UNLCK: u8 = 2;

pub(super) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn ids(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    let u = (uid != NOFID).then(|| Uid::from_raw(uid));
    let g = (gid != NOFID).then(|| Gid::from_raw(gid));
    (u, g)
}

/// chown through an `O_PATH` descriptor (the inode itself, never a symlink's target).
pub(super) fn chown_fd(fd: &OwnedFd, uid: u32, gid: u32) -> Res {
    let (u, g) = ids(uid, gid);
    nix::unistd::fchownat(Some(fd.as_raw_fd()), "", u, g, AtFlags::AT_EMPTY_PATH)
}

/// chmod through an `O_PATH` descriptor of a non-symlink.
pub(super) fn chmod_fd(fd: &OwnedFd, mode: u32) -> Res {
    nix::sys::stat::fchmodat(
        None,
        &proc_fd(fd.as_raw_fd()),
        Mode::from_bits_truncate(mode & 0o7777),
        FchmodatFlags::FollowSymlink,
    )
}

/// Opens a regular file without ever blocking (a fifo swapped in after the type check would
/// block `open`): `O_NONBLOCK`, then the type is checked again on the descriptor.
pub(super) fn open_regular(root: &Root, path: &Path, flags: OFlag) -> Result<File, Errno> {
    let fd = root.open_at(path, flags | OFlag::O_NONBLOCK, 0)?;
    let st = stat_fd(fd.as_raw_fd())?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(Errno::EPERM);
    }
    Ok(File::from(fd))
}

pub(super) fn is_symlink(st: &nix::sys::stat::FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits()
}

impl Conn {
    pub(crate) fn new(shares: Shares, stats: Arc<Stats>) -> Self {
        Self {
            shares,
            stats,
            msize: MAX_MSIZE,
            fids: HashMap::new(),
        }
    }

    /// The negotiated msize (the largest message either side may send).
    pub(crate) fn msize(&self) -> u32 {
        self.msize
    }

    /// Answers one message (at least a header long).
    pub(crate) fn handle(&mut self, msg: &[u8]) -> Vec<u8> {
        let ty = msg[4];
        let tag = u16::from_le_bytes([msg[5], msg[6]]);
        let mut d = Dec::new(&msg[wire::HEADER..]);
        let mut e = Enc::new(ty.wrapping_add(1), tag);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match self.dispatch(ty, &mut d, &mut e) {
            Ok(()) => e.finish(),
            Err(errno) => {
                tracing::trace!(ty, ?errno, "9p error");
                wire::lerror(tag, errno as i32)
            }
        }
    }

    fn dispatch(&mut self, ty: u8, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        match ty {
            t::VERSION => self.version(d, e),
            t::ATTACH => self.attach(d, e),
            t::WALK => self.walk(d, e),
            t::CLUNK => self.fids.remove(&d.u32()?).map(drop).ok_or(Errno::EBADF),
            t::FLUSH => d.u16().map(drop).map_err(Errno::from),
            t::GETATTR => self.getattr(d, e),
            t::SETATTR => self.setattr(d),
            t::LOPEN => self.lopen(d, e),
            t::LCREATE => self.lcreate(d, e),
            t::READ => self.read(d, e),
            t::WRITE => self.write(d, e),
            t::READDIR => self.readdir(d, e),
            t::MKDIR => self.mkdir(d, e),
            t::SYMLINK => self.symlink(d, e),
            t::MKNOD => self.mknod(d, e),
            t::READLINK => self.readlink(d, e),
            t::LINK => self.link(d),
            t::RENAME => self.rename(d),
            t::RENAMEAT => self.renameat(d),
            t::UNLINKAT => self.unlinkat(d),
            t::REMOVE => self.remove(d),
            t::FSYNC => self.fsync(d),
            t::STATFS => self.statfs(d, e),
            t::XATTRWALK => self.xattrwalk(d, e),
            t::XATTRCREATE => {
                let f = self.fid(d.u32()?)?;
                Err(if f.root.read_only {
                    Errno::EROFS
                } else {
                    Errno::EOPNOTSUPP
                })
            }
            t::LOCK => {
                self.fid(d.u32()?)?;
                e.u8(0); // P9_LOCK_SUCCESS: advisory locks are the guest's business
                Ok(())
            }
            t::GETLOCK => {
                self.fid(d.u32()?)?;
                let (_ty, start, len, pid, client) = (d.u8()?, d.u64()?, d.u64()?, d.u32()?, d.bytes_str()?);
                e.u8(P9_LOCK_TYPE_UNLCK)
                    .u64(start)
                    .u64(len)
                    .u32(pid)
                    .str(client)?;
                Ok(())
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    pub(super) fn fid(&self, fid: u32) -> Result<&Fid, Errno> {
        self.fids.get(&fid).ok_or(Errno::EBADF)
    }

    /// The fid, or EROFS on a read-only share.
    pub(super) fn fid_rw(&self, fid: u32) -> Result<&Fid, Errno> {
        let f = self.fid(fid)?;
        if f.root.read_only {
            return Err(Errno::EROFS);
        }
        Ok(f)
    }

    fn version(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let msize = d.u32()?;
        let version = d.str()?;
        if msize < MIN_MSIZE {
            return Err(Errno::EINVAL);
        }
        self.fids.clear();
        self.msize = msize.min(MAX_MSIZE);
        let v = if version.starts_with(wire::VERSION) {
            wire::VERSION
        } else {
            "unknown"
        };
        e.u32(self.msize).str(v.as_bytes())?;
        Ok(())
    }

    fn attach(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, _afid, _uname, aname, n_uname) = (d.u32()?, d.u32()?, d.bytes_str()?, d.str()?, d.u32()?);
        if self.fids.contains_key(&fid) {
            return Err(Errno::EBADF);
        }
        let root = self
            .shares
            .read()
            .map_err(|_| Errno::EIO)?
            .get(aname)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        let st = root.stat(Path::new(""))?;
        e.qid(&qid(&st));
        tracing::debug!(share = aname, dir = %root.dir.display(), read_only = root.read_only, "9p attach");
        let uid = if n_uname == NOFID { 0 } else { n_uname };
        self.fids.insert(
            fid,
            Fid {
                root,
                path: PathBuf::new(),
                uid,
                open: Open::None,
            },
        );
        self.stats.attaches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn walk(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, newfid, n) = (d.u32()?, d.u32()?, d.u16()?);
        if n > MAX_WALK {
            return Err(Errno::EINVAL);
        }
        let src = self.fid(fid)?;
        if newfid != fid && self.fids.contains_key(&newfid) {
            return Err(Errno::EBADF);
        }
        let (root, uid) = (Arc::clone(&src.root), src.uid);
        let mut path = src.path.clone();
        let mut qids = Vec::with_capacity(n as usize);
        for i in 0..n {
            let name = d.bytes_str()?;
            if name == b".." {
                path.pop(); // clamped at the share root
            } else {
                path.push(valid_name(name)?);
            }
            match root.stat(&path) {
                Ok(st) => qids.push(qid(&st)),
                Err(err) if i == 0 => return Err(err),
                Err(_) => break,
            }
        }
        // At most `n` qids were pushed, and `n` is a u16.
        e.u16(u16::try_from(qids.len()).map_err(|_| Errno::EINVAL)?);
        for q in &qids {
            e.qid(q);
        }
        if qids.len() == n as usize {
            self.fids.insert(
                newfid,
                Fid {
                    root,
                    path,
                    uid,
                    open: Open::None,
                },
            );
        }
        Ok(())
    }

    fn getattr(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let f = self.fid(d.u32()?)?;
        let _mask = d.u64()?;
        let st = f.root.stat(&f.path)?;
        e.u64(0x7ff).qid(&qid(&st)); // P9_GETATTR_BASIC
        e.u32(st.st_mode).u32(st.st_uid).u32(st.st_gid).u64(st.st_nlink);
        // The wire fields are u64 carrying the kernel's signed values bit for bit: sizes and
        // nanoseconds are never negative, and the client reads the seconds back as signed (so
        // pre-1970 times survive).
        e.u64(st.st_rdev)
            .u64(st.st_size.cast_unsigned())
            .u64(st.st_blksize.cast_unsigned())
            .u64(st.st_blocks.cast_unsigned());
        e.u64(st.st_atime.cast_unsigned())
            .u64(st.st_atime_nsec.cast_unsigned());
        e.u64(st.st_mtime.cast_unsigned())
            .u64(st.st_mtime_nsec.cast_unsigned());
        e.u64(st.st_ctime.cast_unsigned())
            .u64(st.st_ctime_nsec.cast_unsigned());
        e.u64(0).u64(0).u64(0).u64(0); // btime, gen, data_version
        Ok(())
    }

    /// Linux open flags from the wire, restricted to what a share may use.
    fn open_flags(flags: u32, read_only: bool) -> Result<OFlag, Errno> {
        let bits = flags.cast_signed(); // the wire's u32 carries the Linux open flags' bits
        let acc = bits & libc::O_ACCMODE;
        let trunc = bits & libc::O_TRUNC != 0;
        if read_only && (acc != libc::O_RDONLY || trunc) {
            return Err(Errno::EROFS);
        }
        let keep = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
        Ok(OFlag::from_bits_truncate(bits & keep) | OFlag::O_NOCTTY)
    }

    fn lopen(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, flags) = (d.u32()?, d.u32()?);
        let f = self.fids.get_mut(&fid).ok_or(Errno::EBADF)?;
        if !matches!(f.open, Open::None) {
            return Err(Errno::EBADF);
        }
        let oflags = Self::open_flags(flags, f.root.read_only)?;
        let st = f.root.stat(&f.path)?;
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        f.open = if fmt == SFlag::S_IFDIR.bits() {
            Open::Dir {
                fd: f.root.open_at(&f.path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?,
                entries: None,
            }
        } else if fmt == SFlag::S_IFREG.bits() {
            Open::File(open_regular(&f.root, &f.path, oflags)?)
        } else {
            // Devices, fifos and sockets are handled by the guest kernel itself; never open
            // host special files on the guest's behalf.
            return Err(Errno::EPERM);
        };
        e.qid(&qid(&st)).u32(0);
        Ok(())
    }

    fn lcreate(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let fid = d.u32()?;
        let (name, flags, mode, gid) = (d.bytes_str()?, d.u32()?, d.u32()?, d.u32()?);
        let f = self.fid_rw(fid)?;
        let path = f.path.join(valid_name(name)?);
        let oflags = Self::open_flags(flags, false)?;
        let excl = flags.cast_signed() & libc::O_EXCL != 0;
        let file = match f
            .root
            .open_at(&path, oflags | OFlag::O_CREAT | OFlag::O_EXCL, mode & 0o7777)
        {
            Ok(fd) => {
                let file = File::from(fd);
                nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode & 0o7777))?;
                let (u, g) = ids(f.uid, gid);
                nix::unistd::fchown(file.as_raw_fd(), u, g)?;
                file
            }
            Err(Errno::EEXIST) if !excl => File::from(f.root.open_at(&path, oflags, 0)?),
            Err(err) => return Err(err),
        };
        let st = stat_fd(file.as_raw_fd())?;
        e.qid(&qid(&st)).u32(0);
        if let Some(f) = self.fids.get_mut(&fid) {
            f.path = path;
            f.open = Open::File(file);
        }
        Ok(())
    }

    fn read(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, offset, count) = (d.u32()?, d.u64()?, d.u32()?);
        let Open::File(file) = &self.fid(fid)?.open else {
            return Err(Errno::EBADF);
        };
        let count = count.min(self.msize - IO_HEADER) as usize;
        let mut buf = vec![0; count];
        let n = loop {
            match file.read_at(&mut buf, offset) {
                Ok(n) => break n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_errno(err)),
            }
        };
        // n ≤ count, a u32.
        e.u32(u32::try_from(n).map_err(|_| Errno::EIO)?).raw(&buf[..n]);
        self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, offset, data) = (d.u32()?, d.u64()?, d.data()?);
        let f = self.fid_rw(fid)?;
        let Open::File(file) = &f.open else {
            return Err(Errno::EBADF);
        };
        let n = file.write_at(data, offset).map_err(io_errno)?;
        self.stats.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        // n ≤ data.len(), whose count[4] was a u32.
        e.u32(u32::try_from(n).map_err(|_| Errno::EIO)?);
        Ok(())
    }

    fn readdir(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, offset, count) = (d.u32()?, d.u64()?, d.u32()?);
        let limit = count.min(self.msize - IO_HEADER) as usize;
        let f = self.fids.get_mut(&fid).ok_or(Errno::EBADF)?;
        let Open::Dir { fd, entries } = &mut f.open else {
            return Err(Errno::ENOTDIR);
        };
        if offset == 0 || entries.is_none() {
            *entries = Some(list_dir(fd)?);
        }
        let mut data = Vec::with_capacity(limit);
        // An offset beyond usize is beyond the last entry: the listing is over.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, dtype, q)) in entries.iter().flatten().enumerate().skip(skip) {
            let len = 13 + 8 + 1 + 2 + name.len();
            if data.len() + len > limit {
                break;
            }
            let mut ent = Enc::new(0, 0);
            ent.qid(q).u64(i as u64 + 1).u8(*dtype).str(name)?;
            data.extend_from_slice(&ent.finish()[wire::HEADER..]);
        }
        // data.len() ≤ limit, a u32.
        e.u32(u32::try_from(data.len()).map_err(|_| Errno::EIO)?)
            .raw(&data);
        Ok(())
    }

    fn readlink(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let f = self.fid(d.u32()?)?;
        let (parent, name) = f.root.parent_of(&f.path)?;
        let target = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), name)?;
        e.str(target.as_bytes())?;
        Ok(())
    }

    fn fsync(&mut self, d: &mut Dec<'_>) -> Res {
        let (fid, datasync) = (d.u32()?, d.u32()?);
        if let Open::File(file) = &self.fid(fid)?.open {
            if datasync != 0 {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(io_errno)?;
        }
        Ok(())
    }

    fn statfs(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let f = self.fid(d.u32()?)?;
        let fd = f.root.path_fd(Path::new(""))?;
        let s = nix::sys::statvfs::fstatvfs(fd.as_fd())?;
        e.u32(V9FS_MAGIC)
            .u32(u32::try_from(s.block_size()).unwrap_or(u32::MAX))
            .u64(s.blocks())
            .u64(s.blocks_free())
            .u64(s.blocks_available());
        e.u64(s.files())
            .u64(s.files_free())
            .u64(s.filesystem_id())
            .u32(u32::try_from(s.name_max()).unwrap_or(u32::MAX));
        Ok(())
    }

    fn xattrwalk(&mut self, d: &mut Dec<'_>, e: &mut Enc) -> Res {
        let (fid, newfid, name) = (d.u32()?, d.u32()?, d.bytes_str()?);
        let f = self.fid(fid)?;
        if !name.is_empty() {
            return Err(Errno::ENODATA);
        }
        // Listing: no extended attributes are exported.
        let x = Fid {
            root: Arc::clone(&f.root),
            path: f.path.clone(),
            uid: f.uid,
            open: Open::Xattr,
        };
        if newfid != fid && self.fids.contains_key(&newfid) {
            return Err(Errno::EBADF);
        }
        self.fids.insert(newfid, x);
        e.u64(0);
        Ok(())
    }
}
