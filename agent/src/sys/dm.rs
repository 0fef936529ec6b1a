//! Device-mapper through its ioctls on `/dev/mapper/control` (`linux/dm-ioctl.h`, interface
//! version 4): create a one-target `linear` device, and remove a device. Used for VPMem
//! multi-mapping (docs/gcs-reference.md §6.3); the layout follows hcsshim's `devicemapper` package.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::{major, makedev, minor, mknod, stat, Mode, SFlag};

/// `sizeof(struct dm_ioctl)`.
const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const DM_SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`, NUL included.
const DM_NAME_LEN: usize = 128;
/// Offsets in `struct dm_ioctl`.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;

const DM_VERSION: u8 = 0;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
const DM_READONLY_FLAG: u32 = 1;

const CONTROL: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn request(nr: u8) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | nr as u64
}

/// A `struct dm_ioctl` for device `name`, with room for `extra` bytes of data after it.
fn header(name: &str, extra: usize) -> io::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad device-mapper name {name:?}"),
        ));
    }
    let size = DM_IOCTL_SIZE + extra;
    let mut b = vec![0u8; size];
    for (i, v) in [4u32, 0, 0].into_iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    put_u32(&mut b, OFF_DATA_SIZE, size)?;
    put_u32(&mut b, OFF_DATA_START, DM_IOCTL_SIZE)?;
    b[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn put_u32(b: &mut [u8], off: usize, v: usize) -> io::Result<()> {
    let v =
        u32::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "dm buffer too large"))?;
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    Ok(())
}

/// A `DM_TABLE_LOAD` buffer with one `linear` target of `len` sectors over `params`.
fn linear_table(name: &str, len: u64, params: &str) -> io::Result<Vec<u8>> {
    let spec_len = (DM_SPEC_SIZE + params.len() + 1 + 7) & !7;
    let mut b = header(name, spec_len)?;
    put_u32(&mut b, OFF_TARGET_COUNT, 1)?;
    put_u32(&mut b, OFF_FLAGS, DM_READONLY_FLAG as usize)?;
    let s = DM_IOCTL_SIZE;
    b[s..s + 8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
    b[s + 8..s + 16].copy_from_slice(&len.to_ne_bytes()); // length
    put_u32(&mut b, s + 20, spec_len)?; // next
    b[s + 24..s + 24 + 6].copy_from_slice(b"linear");
    b[s + DM_SPEC_SIZE..s + DM_SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
    Ok(b)
}

fn ioctl(ctl: &File, nr: u8, buf: &mut [u8]) -> io::Result<()> {
    if buf.len() < DM_IOCTL_SIZE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "dm buffer too small"));
    }
    // SAFETY: `ctl` is an open descriptor of the device-mapper control node. `buf` is a live,
    // writable allocation of `buf.len()` bytes, at least `sizeof(struct dm_ioctl)`, whose
    // `data_size` field (set by `header`) equals `buf.len()`; the kernel reads and writes at most
    // `data_size` bytes through the pointer and keeps no reference after the call returns. The
    // request number encodes the size of `struct dm_ioctl`, which `buf` covers.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), request(nr) as _, buf.as_mut_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_control() -> io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).open(CONTROL)?;
    let mut v = header("version", 0)?;
    ioctl(&f, DM_VERSION, &mut v)?;
    Ok(f)
}

fn remove_with(ctl: &File, name: &str) -> io::Result<()> {
    let mut last = None;
    // the device can be briefly busy right after its last unmount (hcsshim retries too)
    for _ in 0..10 {
        let mut h = header(name, 0)?;
        match ioctl(ctl, DM_DEV_REMOVE, &mut h) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
}

/// Creates read-only device `name` mapping `len` sectors of `dev` from sector `start`, and its
/// node `/dev/mapper/<name>`; returns the node's path. Nothing is left behind on failure.
pub fn create_linear(name: &str, dev: &Path, start: u64, len: u64) -> io::Result<PathBuf> {
    let st = stat(dev)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a block device", dev.display()),
        ));
    }
    let params = format!("{}:{} {start}", major(st.st_rdev), minor(st.st_rdev));
    let ctl = open_control()?;
    let mut h = header(name, 0)?;
    ioctl(&ctl, DM_DEV_CREATE, &mut h)?;
    let res = (|| {
        let mut table = linear_table(name, len, &params)?;
        ioctl(&ctl, DM_TABLE_LOAD, &mut table)?;
        let mut resume = header(name, 0)?;
        ioctl(&ctl, DM_DEV_SUSPEND, &mut resume)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&h[OFF_DEV..OFF_DEV + 8]);
        let enc = u64::from_ne_bytes(raw);
        // the kernel's `huge_encode_dev`: minor low byte, 12 bits of major, the rest of minor
        let devt = makedev((enc >> 8) & 0xfff, (enc & 0xff) | ((enc >> 12) & 0xfff00));
        std::fs::create_dir_all(MAPPER_DIR)?;
        let node = Path::new(MAPPER_DIR).join(name);
        let _ = std::fs::remove_file(&node);
        mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), devt)?;
        Ok(node)
    })();
    if res.is_err() {
        let _ = remove_with(&ctl, name);
    }
    res
}

/// Removes device `name` and its node. A missing device is `ENXIO`.
pub fn remove(name: &str) -> io::Result<()> {
    let ctl = open_control()?;
    let _ = std::fs::remove_file(Path::new(MAPPER_DIR).join(name));
    remove_with(&ctl, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl) = 0xc138fd03 on x86_64 and arm64
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
    }

    #[test]
    fn table_buffer_layout() {
        let b = linear_table("dm-linear-pmem0-0-4096", 8, "259:0 16").unwrap();
        let spec_len = (40 + 8 + 1 + 7) & !7;
        assert_eq!(b.len(), 312 + spec_len);
        assert_eq!(&b[0..4], &4u32.to_ne_bytes());
        assert_eq!(&b[12..16], &u32::try_from(b.len()).unwrap().to_ne_bytes());
        assert_eq!(&b[16..20], &312u32.to_ne_bytes());
        assert_eq!(&b[20..24], &1u32.to_ne_bytes());
        assert_eq!(&b[48..48 + 22], b"dm-linear-pmem0-0-4096");
        assert_eq!(&b[312 + 8..312 + 16], &8u64.to_ne_bytes());
        assert_eq!(&b[312 + 24..312 + 30], b"linear");
        assert_eq!(&b[312 + 40..312 + 48], b"259:0 16");
        assert_eq!(b[312 + 48], 0);
        assert!(header(&"x".repeat(128), 0).is_err());
        assert!(header("a/b", 0).is_err());
    }
}
