//! A rootless, reproducible writer (and a bounded reader) for the newc ("070701") cpio format
//! that the kernel's initramfs unpacker understands.
//!
//! Reproducible: every entry has mtime 0, uid/gid 0, and inode numbers assigned sequentially
//! from [`FIRST_INODE`] in write order. Device nodes are written straight into the archive, so
//! no `mknod` and no root is needed.

use std::io::{self, Write};

/// Magic of the newc format without checksums.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Name of the end-of-archive entry.
pub const TRAILER: &str = "TRAILER!!!";
/// Inode number of the first entry.
pub const FIRST_INODE: u32 = 1000;
/// Header length: magic plus 13 eight-digit hex fields.
pub const HEADER_LEN: usize = 6 + 13 * 8;
/// Longest entry name the reader accepts (Linux `PATH_MAX`).
pub const MAX_NAME_LEN: usize = 4096;

/// File type bits (`S_IFMT`) and the types we write.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// Writes newc entries to `W`. Call [`NewcWriter::finish`] to append the trailer.
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: FIRST_INODE,
        }
    }

    /// A directory (`perm` is the permission bits, e.g. `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node `major:minor`.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Appends the trailer, pads the archive to 512 bytes, and returns the writer and the
    /// archive length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        self.pad(512)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let invalid =
            |m: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("cpio entry {name:?}: {m}"));
        if name.is_empty() || name.len() >= MAX_NAME_LEN || name.contains('\0') || name.starts_with('/') {
            return Err(invalid("name must be relative, non-empty, without NUL"));
        }
        let size = u32::try_from(data.len()).map_err(|_| invalid("larger than 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        let name_len = u32::try_from(name.len() + 1).map_err(|_| invalid("name too long"))?;
        let fields: [u32; 13] = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0];
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.put(&header)?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad(4)?;
        self.put(data)?;
        self.pad(4)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, align: u64) -> io::Result<()> {
        const ZEROS: [u8; 512] = [0; 512];
        // n < align (4 or 512), so the conversion cannot fail.
        let n = usize::try_from((align - self.written % align) % align).map_err(io::Error::other)?;
        self.put(&ZEROS[..n])
    }
}

/// One entry read back by [`read_newc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path inside the archive (relative).
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device major/minor for device nodes.
    pub rdev: (u32, u32),
    /// File contents or symlink target.
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer. Every length is checked against the input, so
/// malformed input gives an error, never a panic.
pub fn read_newc(mut input: &[u8]) -> io::Result<Vec<CpioEntry>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let total = input.len();
    let mut entries = Vec::new();
    loop {
        let offset = total - input.len();
        if input.len() < HEADER_LEN || &input[..6] != NEWC_MAGIC {
            return Err(bad(format!("no newc header at offset {offset}")));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&input[6 + i * 8..14 + i * 8])
                .map_err(|_| bad(format!("non-ASCII header at offset {offset}")))?;
            *f = u32::from_str_radix(hex, 16)
                .map_err(|_| bad(format!("bad hex {hex:?} at offset {offset}")))?;
        }
        let [ino, mode, uid, gid, _nlink, mtime, size, _, _, rmaj, rmin, name_len, _check] = fields;
        let name_len = name_len as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(bad(format!(
                "name length {name_len} out of range at offset {offset}"
            )));
        }
        let name_end = HEADER_LEN + name_len;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + size as usize;
        let next = data_end.div_ceil(4) * 4;
        if input.len() < data_end {
            return Err(bad(format!("entry at offset {offset} runs past the end")));
        }
        let name = std::str::from_utf8(&input[HEADER_LEN..name_end - 1])
            .map_err(|_| bad(format!("non-UTF-8 name at offset {offset}")))?
            .to_owned();
        if name == TRAILER {
            return Ok(entries);
        }
        let data = input[data_start..data_end].to_vec();
        entries.push(CpioEntry {
            name,
            ino,
            mode,
            mtime,
            uid,
            gid,
            rdev: (rmaj, rmin),
            data,
        });
        input = &input[next.min(input.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.symlink("gcs", "/init").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let (out, len) = w.finish().unwrap();
        assert_eq!(usize::try_from(len).unwrap(), out.len());
        out
    }

    #[test]
    fn round_trips_through_our_reader() {
        let archive = sample();
        assert_eq!(archive.len() % 512, 0);
        let entries = read_newc(&archive).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "gcs", "empty"]);
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[2].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[2].mode, S_IFREG | 0o755);
        assert_eq!(entries[3].mode & S_IFMT, S_IFLNK);
        assert_eq!(entries[3].data, b"/init");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.mtime, e.uid, e.gid), (0, 0, 0));
            assert_eq!(e.ino, FIRST_INODE + u32::try_from(i).unwrap());
        }
        // Reproducible: the same input gives the same bytes.
        assert_eq!(sample(), archive);
    }

    #[test]
    fn the_system_cpio_agrees_when_present() {
        let archive = sample();
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed: checked with our own reader only");
            return;
        };
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<_> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("crw-------")
                && lines[1].contains("5,")
                && lines[1].ends_with(" dev/console")
        );
        assert!(lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"));
        assert!(lines[3].starts_with("lrwxrwxrwx") && lines[3].ends_with(" gcs -> /init"));
    }

    #[test]
    fn rejects_bad_names_and_truncated_input() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.file("/abs", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
        let archive = sample();
        for cut in [0, 5, HEADER_LEN + 2, 200, archive.len() / 2] {
            assert!(read_newc(&archive[..cut]).is_err(), "cut at {cut}");
        }
        let mut corrupt = archive.clone();
        corrupt[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"FFFFFFFF");
        assert!(read_newc(&corrupt).is_err());
    }
}
