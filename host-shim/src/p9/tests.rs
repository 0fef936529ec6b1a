//! An in-process 9P2000.L client over a socketpair against [`Server`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;

use super::wire::{t, Dec, Enc, Qid};
use super::*;

struct Client {
    s: UnixStream,
    tag: u16,
}

/// A reply: type and body, or an errno.
type Reply = Result<Vec<u8>, i32>;
/// Writes a request body.
type Body = dyn Fn(&mut Enc);

impl Client {
    fn new(server: &Server) -> Self {
        let (a, b) = UnixStream::pair().unwrap();
        server.spawn_connection(b).unwrap();
        let mut c = Self { s: a, tag: 0 };
        let mut e = Enc::new(t::VERSION, 0xffff);
        e.u32(65536).str(b"9P2000.L").unwrap();
        let r = c.raw(e).unwrap();
        let mut d = Dec::new(&r);
        assert_eq!(d.u32().unwrap(), 65536);
        assert_eq!(d.str().unwrap(), "9P2000.L");
        c
    }

    fn raw(&mut self, e: Enc) -> Reply {
        let msg = e.finish();
        let ty = msg[4];
        self.s.write_all(&msg).unwrap();
        let mut hdr = [0u8; 7];
        self.s.read_exact(&mut hdr).unwrap();
        let size = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let mut body = vec![0; size - 7];
        self.s.read_exact(&mut body).unwrap();
        assert_eq!(
            u16::from_le_bytes([hdr[5], hdr[6]]),
            u16::from_le_bytes([msg[5], msg[6]])
        );
        if hdr[4] == t::LERROR {
            return Err(i32::from_le_bytes([body[0], body[1], body[2], body[3]]));
        }
        assert_eq!(hdr[4], ty + 1);
        Ok(body)
    }

    fn call(&mut self, ty: u8, f: impl FnOnce(&mut Enc)) -> Reply {
        self.tag = self.tag.wrapping_add(1) % 0xfff0;
        let mut e = Enc::new(ty, self.tag);
        f(&mut e);
        self.raw(e)
    }

    fn attach(&mut self, fid: u32, aname: &str) -> Result<Qid, i32> {
        let r = self.call(t::ATTACH, |e| {
            e.u32(fid)
                .u32(!0)
                .str(b"root")
                .unwrap()
                .str(aname.as_bytes())
                .unwrap()
                .u32(0);
        })?;
        Ok(qid(&mut Dec::new(&r)))
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, i32> {
        let r = self.call(t::WALK, |e| {
            e.u32(fid).u32(newfid).u16(u16::try_from(names.len()).unwrap());
            for n in names {
                e.str(n.as_bytes()).unwrap();
            }
        })?;
        let mut d = Dec::new(&r);
        let n = d.u16().unwrap();
        Ok((0..n).map(|_| qid(&mut d)).collect())
    }

    fn lopen(&mut self, fid: u32, flags: i32) -> Result<Qid, i32> {
        let r = self.call(t::LOPEN, |e| {
            e.u32(fid).u32(flags.cast_unsigned());
        })?;
        Ok(qid(&mut Dec::new(&r)))
    }

    fn lcreate(&mut self, fid: u32, name: &str, mode: u32) -> Result<Qid, i32> {
        let r = self.call(t::LCREATE, |e| {
            e.u32(fid)
                .str(name.as_bytes())
                .unwrap()
                .u32(libc::O_RDWR as u32)
                .u32(mode)
                .u32(0);
        })?;
        Ok(qid(&mut Dec::new(&r)))
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, i32> {
        let r = self.call(t::READ, |e| {
            e.u32(fid).u64(offset).u32(count);
        })?;
        Ok(Dec::new(&r).data().unwrap().to_vec())
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let r = self.call(t::WRITE, |e| {
            e.u32(fid)
                .u64(offset)
                .u32(u32::try_from(data.len()).unwrap())
                .raw(data);
        })?;
        Ok(Dec::new(&r).u32().unwrap())
    }

    fn readdir(&mut self, fid: u32) -> Vec<String> {
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let r = self
                .call(t::READDIR, |e| {
                    e.u32(fid).u64(offset).u32(200);
                })
                .unwrap();
            let mut d = Dec::new(&r);
            let data = d.data().unwrap();
            if data.is_empty() {
                return names;
            }
            let mut d = Dec::new(data);
            while let Ok(_q) = d.u8() {
                d.u32().unwrap();
                d.u64().unwrap();
                offset = d.u64().unwrap();
                d.u8().unwrap();
                names.push(d.str().unwrap().to_owned());
            }
        }
    }

    fn getattr(&mut self, fid: u32) -> Result<(u32, u32, u64), i32> {
        let r = self.call(t::GETATTR, |e| {
            e.u32(fid).u64(0x7ff);
        })?;
        let mut d = Dec::new(&r);
        d.u64().unwrap();
        qid(&mut d);
        let (mode, uid) = (d.u32().unwrap(), d.u32().unwrap());
        d.u32().unwrap();
        d.u64().unwrap();
        d.u64().unwrap();
        Ok((mode, uid, d.u64().unwrap()))
    }

    fn clunk(&mut self, fid: u32) -> Result<(), i32> {
        self.call(t::CLUNK, |e| {
            e.u32(fid);
        })
        .map(drop)
    }

    fn mkdir(&mut self, fid: u32, name: &str) -> Result<Qid, i32> {
        let r = self.call(t::MKDIR, |e| {
            e.u32(fid).str(name.as_bytes()).unwrap().u32(0o750).u32(0);
        })?;
        Ok(qid(&mut Dec::new(&r)))
    }
}

fn qid(d: &mut Dec<'_>) -> Qid {
    Qid {
        ty: d.u8().unwrap(),
        version: d.u32().unwrap(),
        path: d.u64().unwrap(),
    }
}

fn setup() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let rw = tmp.path().join("rw");
    let ro = tmp.path().join("ro");
    for d in [&rw, &ro] {
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("hello.txt"), b"hello world").unwrap();
    }
    fs::write(tmp.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink("/etc", rw.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../secret", rw.join("up-link")).unwrap();
    let server = Server::with_shares([("0", (&rw, false)), ("1", (&ro, true))]).unwrap();
    (tmp, server)
}

#[test]
fn reads_writes_and_lists_a_share() {
    let (tmp, server) = setup();
    let rw = tmp.path().join("rw");
    let mut c = Client::new(&server);
    let root = c.attach(1, "0").unwrap();
    assert_eq!(root.ty, 0x80);
    assert_eq!(c.walk(1, 2, &["hello.txt"]).unwrap().len(), 1);
    c.lopen(2, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(2, 6, 100).unwrap(), b"world");
    assert_eq!(c.getattr(2).unwrap().2, 11);

    // Create, write, read back through the host.
    c.walk(1, 3, &["sub"]).unwrap();
    c.lcreate(3, "new.bin", 0o640).unwrap();
    let big = vec![7u8; 200_000];
    let mut off = 0;
    while off < big.len() {
        let n = c
            .write(3, off as u64, &big[off..(off + 60_000).min(big.len())])
            .unwrap();
        off += n as usize;
    }
    let host = rw.join("sub/new.bin");
    assert_eq!(fs::read(&host).unwrap(), big);
    assert_eq!(fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o640);
    let got = c.read(3, 0, 1 << 20).unwrap();
    assert_eq!(got.len(), 65536 - 11, "reads are bounded by msize");

    c.walk(1, 4, &[]).unwrap();
    c.mkdir(4, "d").unwrap();
    assert_eq!(fs::metadata(rw.join("d")).unwrap().mode() & 0o7777, 0o750);
    c.lopen(4, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    let mut names = c.readdir(4);
    names.sort();
    assert_eq!(names, [".", "..", "d", "etc-link", "hello.txt", "sub", "up-link"]);

    // Rename and unlink.
    c.walk(1, 6, &["sub"]).unwrap();
    c.call(t::RENAMEAT, |e| {
        e.u32(1)
            .str(b"hello.txt")
            .unwrap()
            .u32(6)
            .str(b"moved.txt")
            .unwrap();
    })
    .unwrap();
    assert!(rw.join("sub/moved.txt").exists());
    c.call(t::UNLINKAT, |e| {
        e.u32(6).str(b"moved.txt").unwrap().u32(0);
    })
    .unwrap();
    assert!(!rw.join("sub/moved.txt").exists());

    // Symlinks are created and read, never followed.
    c.call(t::SYMLINK, |e| {
        e.u32(1)
            .str(b"l")
            .unwrap()
            .str(b"/does/not/matter")
            .unwrap()
            .u32(0);
    })
    .unwrap();
    c.walk(1, 5, &["l"]).unwrap();
    let r = c.call(t::READLINK, |e| {
        e.u32(5);
    });
    assert_eq!(Dec::new(&r.unwrap()).str().unwrap(), "/does/not/matter");

    // Setattr: truncate and chmod.
    c.call(t::SETATTR, |e| {
        e.u32(3)
            .u32(0x1 | 0x8)
            .u32(0o600)
            .u32(0)
            .u32(0)
            .u64(10)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0);
    })
    .unwrap();
    let m = fs::metadata(&host).unwrap();
    assert_eq!((m.len(), m.permissions().mode() & 0o7777), (10, 0o600));
    c.call(t::STATFS, |e| {
        e.u32(1);
    })
    .unwrap();
    c.clunk(2).unwrap();
    assert_eq!(c.clunk(2), Err(libc::EBADF));
}

#[test]
fn paths_stay_inside_the_share() {
    let (_tmp, server) = setup();
    let mut c = Client::new(&server);
    let root = c.attach(1, "0").unwrap();
    // `..` at the root stays at the root.
    assert_eq!(c.walk(1, 2, &[".."]).unwrap(), [root]);
    assert_eq!(
        c.walk(1, 3, &["sub", "..", "..", ".."]).unwrap().last(),
        Some(&root)
    );
    // Symlinks are never followed by the server (inside or outside the share).
    // A walk through a symlink stops at it (partial Rwalk; the new fid is not made).
    assert_eq!(c.walk(1, 4, &["etc-link", "passwd"]).unwrap().len(), 1);
    assert_eq!(c.getattr(4).unwrap_err(), libc::EBADF);
    c.walk(1, 5, &["up-link"]).unwrap();
    assert_eq!(c.lopen(5, libc::O_RDONLY).unwrap_err(), libc::EPERM);
    // Names with slashes or empty names are refused.
    assert_eq!(c.walk(1, 6, &["sub/../../secret"]).unwrap_err(), libc::EINVAL);
    assert_eq!(c.lcreate(1, "../escape", 0o644).unwrap_err(), libc::EINVAL);
    // Guests cannot make device nodes.
    let r = c.call(t::MKNOD, |e| {
        e.u32(1)
            .str(b"sda")
            .unwrap()
            .u32(libc::S_IFBLK | 0o600)
            .u32(8)
            .u32(0)
            .u32(0);
    });
    assert_eq!(r.unwrap_err(), libc::EPERM);
    // Fifos can be made but never opened or truncated by the server (no blocking open).
    c.call(t::MKNOD, |e| {
        e.u32(1)
            .str(b"fifo")
            .unwrap()
            .u32(libc::S_IFIFO | 0o600)
            .u32(0)
            .u32(0)
            .u32(0);
    })
    .unwrap();
    c.walk(1, 7, &["fifo"]).unwrap();
    assert_eq!(c.lopen(7, libc::O_RDONLY).unwrap_err(), libc::EPERM);
    let r = c.call(t::SETATTR, |e| {
        e.u32(7)
            .u32(0x8)
            .u32(0)
            .u32(0)
            .u32(0)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0);
    });
    assert_eq!(r.unwrap_err(), libc::EINVAL);
    // Unknown shares.
    assert_eq!(c.attach(9, "nope").unwrap_err(), libc::ENOENT);
}

#[test]
fn read_only_shares_refuse_every_mutation() {
    let (tmp, server) = setup();
    let ro = tmp.path().join("ro");
    let mut c = Client::new(&server);
    c.attach(1, "1").unwrap();
    c.walk(1, 2, &["hello.txt"]).unwrap();
    assert_eq!(c.lopen(2, libc::O_RDWR).unwrap_err(), libc::EROFS);
    assert_eq!(
        c.lopen(2, libc::O_RDONLY | libc::O_TRUNC).unwrap_err(),
        libc::EROFS
    );
    c.lopen(2, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(2, 0, 5).unwrap(), b"hello");
    assert_eq!(c.write(2, 0, b"x").unwrap_err(), libc::EROFS);
    assert_eq!(c.lcreate(1, "f", 0o644).unwrap_err(), libc::EROFS);
    assert_eq!(c.mkdir(1, "d").unwrap_err(), libc::EROFS);
    let mutations: [(u8, &Body); 8] = [
        (t::SYMLINK, &|e| {
            e.u32(1).str(b"l").unwrap().str(b"x").unwrap().u32(0);
        }),
        (t::MKNOD, &|e| {
            e.u32(1)
                .str(b"p")
                .unwrap()
                .u32(libc::S_IFIFO | 0o600)
                .u32(0)
                .u32(0)
                .u32(0);
        }),
        (t::RENAMEAT, &|e| {
            e.u32(1).str(b"hello.txt").unwrap().u32(1).str(b"x").unwrap();
        }),
        (t::UNLINKAT, &|e| {
            e.u32(1).str(b"hello.txt").unwrap().u32(0);
        }),
        (t::LINK, &|e| {
            e.u32(1).u32(2).str(b"hl").unwrap();
        }),
        (t::SETATTR, &|e| {
            e.u32(2)
                .u32(1)
                .u32(0o777)
                .u32(0)
                .u32(0)
                .u64(0)
                .u64(0)
                .u64(0)
                .u64(0)
                .u64(0);
        }),
        (t::XATTRCREATE, &|e| {
            e.u32(2).str(b"user.x").unwrap().u64(1).u32(0);
        }),
        (t::REMOVE, &|e| {
            e.u32(2);
        }),
    ];
    for (ty, f) in mutations {
        assert_eq!(c.call(ty, |e| f(e)).unwrap_err(), libc::EROFS, "type {ty}");
    }
    let mut names: Vec<_> = fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["hello.txt", "sub"]);
    assert_eq!(fs::read(ro.join("hello.txt")).unwrap(), b"hello world");
}

#[test]
fn bad_input_never_panics() {
    let (_tmp, server) = setup();
    let mut c = Client::new(&server);
    // Truncated bodies, unknown types, unknown fids.
    for ty in 0..=255u8 {
        if ty == t::VERSION {
            continue;
        }
        let r = c.call(ty, |e| {
            e.u8(1);
        });
        assert!(
            r.is_err() || ty == t::FLUSH,
            "type {ty} with a 1-byte body: {r:?}"
        );
    }
    assert_eq!(c.clunk(77), Err(libc::EBADF));
    // An oversized message closes the connection rather than allocating it.
    c.s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    c.s.write_all(&[t::READ, 0, 0]).unwrap();
    let mut buf = [0u8; 1];
    // The server hangs up: EOF, or a reset when it closed with our bytes still unread.
    match c.s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "server hung up"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "server hung up: {e}"
        ),
    }
}

#[test]
fn strings_over_65535_bytes_are_refused_not_truncated() {
    let mut e = Enc::new(t::READLINK + 1, 1);
    let len = e.len();
    assert_eq!(e.str(&[b'a'; 65536]).err(), Some(wire::TooLong));
    assert_eq!(e.len(), len, "nothing written");
    e.str(&[b'a'; 65535]).unwrap();
    let msg = e.finish();
    let mut d = Dec::new(&msg[wire::HEADER..]);
    assert_eq!(d.bytes_str().unwrap().len(), 65535);
    assert_eq!(
        nix::errno::Errno::from(wire::TooLong),
        nix::errno::Errno::ENAMETOOLONG
    );
}
