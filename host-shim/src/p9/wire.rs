//! 9P2000.L wire format: message numbers, a bounds-checked decoder and an encoder.
//!
//! Every message is `size[4] type[1] tag[2] body`, little-endian; strings are `len[2] bytes`.

use std::io::{self, Read, Write};

/// The dialect we speak.
pub const VERSION: &str = "9P2000.L";
/// The largest msize we negotiate (the GCS guest asks for 65536).
pub const MAX_MSIZE: u32 = 65536;
/// The smallest msize we accept.
pub const MIN_MSIZE: u32 = 4096;
/// `size[4] type[1] tag[2]`.
pub const HEADER: usize = 7;
/// Header plus the `count[4]` of Rread/Rreaddir.
pub const IO_HEADER: u32 = 11;
/// "No fid".
pub const NOFID: u32 = !0;

/// Message types (T = request; R = T + 1).
#[allow(missing_docs)]
pub mod t {
    pub const LERROR: u8 = 7;
    pub const STATFS: u8 = 8;
    pub const LOPEN: u8 = 12;
    pub const LCREATE: u8 = 14;
    pub const SYMLINK: u8 = 16;
    pub const MKNOD: u8 = 18;
    pub const RENAME: u8 = 20;
    pub const READLINK: u8 = 22;
    pub const GETATTR: u8 = 24;
    pub const SETATTR: u8 = 26;
    pub const XATTRWALK: u8 = 30;
    pub const XATTRCREATE: u8 = 32;
    pub const READDIR: u8 = 40;
    pub const FSYNC: u8 = 50;
    pub const LOCK: u8 = 52;
    pub const GETLOCK: u8 = 54;
    pub const LINK: u8 = 70;
    pub const MKDIR: u8 = 72;
    pub const RENAMEAT: u8 = 74;
    pub const UNLINKAT: u8 = 76;
    pub const VERSION: u8 = 100;
    pub const AUTH: u8 = 102;
    pub const ATTACH: u8 = 104;
    pub const FLUSH: u8 = 108;
    pub const WALK: u8 = 110;
    pub const READ: u8 = 116;
    pub const WRITE: u8 = 118;
    pub const CLUNK: u8 = 120;
    pub const REMOVE: u8 = 122;
}

/// A qid: `type[1] version[4] path[8]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Qid {
    /// `QTDIR` 0x80, `QTSYMLINK` 0x02, `QTFILE` 0.
    pub ty: u8,
    /// Version (we use 0: no caching contract).
    pub version: u32,
    /// Unique per file (inode number).
    pub path: u64,
}

/// A decoding error: the message is shorter than its fields or a string is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short;

/// An encoding error: a string longer than a 9P string can hold (65535 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// A bounds-checked reader over a message body.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    /// Decodes `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.buf.len() < n {
            return Err(Short);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Short> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Short> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Short> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A string's bytes.
    pub fn bytes_str(&mut self) -> Result<&'a [u8], Short> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// A UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, Short> {
        std::str::from_utf8(self.bytes_str()?).map_err(|_| Short)
    }

    /// `count[4] data[count]`.
    pub fn data(&mut self) -> Result<&'a [u8], Short> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// A message encoder; [`Enc::finish`] fills in the size.
#[derive(Debug)]
pub struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    /// Starts message `ty` with `tag`.
    pub fn new(ty: u8, tag: u16) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0, 0, 0, 0, ty]);
        buf.extend_from_slice(&tag.to_le_bytes());
        Self { buf }
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a string, or fails (writing nothing) if it is longer than 65535 bytes: its
    /// `len[2]` could not hold the length, and a truncated name or path would be a wrong one.
    pub fn str(&mut self, s: &[u8]) -> Result<&mut Self, TooLong> {
        let len = u16::try_from(s.len()).map_err(|_| TooLong)?;
        self.u16(len);
        self.buf.extend_from_slice(s);
        Ok(self)
    }

    /// Appends a qid.
    pub fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Current length (header included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether only the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER
    }

    /// The finished message.
    ///
    /// Replies are bounded by the negotiated msize (at most [`MAX_MSIZE`]), so the length always
    /// fits `size[4]`; were it ever over 4 GiB, `size` saturates at `u32::MAX`, which every peer
    /// rejects as over its msize, rather than wrapping to a plausible, wrong length.
    pub fn finish(mut self) -> Vec<u8> {
        let n = u32::try_from(self.buf.len()).unwrap_or(u32::MAX).to_le_bytes();
        self.buf[..4].copy_from_slice(&n);
        self.buf
    }
}

/// `Rlerror` for `tag`.
pub fn lerror(tag: u16, errno: i32) -> Vec<u8> {
    let mut e = Enc::new(t::LERROR, tag);
    e.u32(errno.cast_unsigned()); // the wire's ecode[4] carries the errno's bits
    e.finish()
}

/// Reads one message (`size` bytes, header included) of at most `max` bytes.
/// `Ok(None)` at a clean end of stream.
pub fn read_message(r: &mut impl Read, max: u32) -> io::Result<Option<Vec<u8>>> {
    let mut size = [0u8; 4];
    match r.read_exact(&mut size) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let size = u32::from_le_bytes(size);
    if (size as usize) < HEADER || size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("9p message of {size} bytes (limit {max})"),
        ));
    }
    let mut msg = vec![0; size as usize];
    msg[..4].copy_from_slice(&size.to_le_bytes());
    r.read_exact(&mut msg[4..])?;
    Ok(Some(msg))
}

/// Writes one finished message.
pub fn write_message(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    w.write_all(msg)
}
