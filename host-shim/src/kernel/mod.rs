//! Guest kernel discovery and ELF `vmlinux` extraction.
//!
//! The UVM boots the uncompressed ELF `vmlinux` through QEMU's PVH entry point: under TCG
//! that skips about 6 s of in-guest xz decompression (docs/uvm-notes.md §2.2). This module finds the
//! newest Debian kernel (`/boot/vmlinuz-<release>` with a matching `/lib/modules/<release>`),
//! honours the `RGCS_KERNEL` / `RGCS_KERNEL_RELEASE` overrides, and extracts the ELF payload of
//! a bzImage once into a cache directory (keyed by the bzImage's name, size and mtime; written
//! to a temporary file and renamed into place).
//!
//! Decompression: xz (what Debian uses) is decoded in-process by the pure-Rust `lzma-rust2`
//! crate, which implements the x86 BCJ filter the kernel's xz stream needs (`lzma-rs` does
//! not). gzip and zstd payloads are rare on x86 distributions and are piped through the
//! system `gzip -dc` / `zstd -dc`.
//!
//! This module only reads kernels and writes into the cache; it never touches `/boot`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod payload;

pub use payload::extract_vmlinux;
use payload::read;
pub(crate) use payload::{decompress_module, le_u16, le_u32, le_u64, tmp_path};

/// Environment variable: a bzImage or ELF vmlinux to boot instead of the newest `/boot` kernel.
pub const ENV_KERNEL: &str = "RGCS_KERNEL";
/// Environment variable: the kernel release (the `/lib/modules/<release>` name).
pub const ENV_KERNEL_RELEASE: &str = "RGCS_KERNEL_RELEASE";
/// Environment variable: the cache directory for extracted kernels.
pub const ENV_CACHE_DIR: &str = "RGCS_CACHE_DIR";

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the `HdrS` signature in an x86 bzImage (Documentation/arch/x86/boot.rst).
const HDR_MAGIC_OFFSET: usize = 0x202;
const SETUP_SECTS_OFFSET: usize = 0x1f1;
const KERNEL_VERSION_OFFSET: usize = 0x20e;
const PROTOCOL_VERSION_OFFSET: usize = 0x206;
const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
/// `payload_offset`/`payload_length` exist from boot protocol 2.08 on.
const MIN_PROTOCOL_WITH_PAYLOAD: u16 = 0x0208;
/// Upper bound for an uncompressed kernel, so a corrupt size trailer cannot make us allocate
/// an absurd buffer.
const MAX_VMLINUX_SIZE: u32 = 1 << 30;

/// What the UVM needs from a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// Kernel release, the directory name under `/lib/modules`.
    pub release: String,
    /// Uncompressed ELF vmlinux, bootable through QEMU's PVH entry.
    pub vmlinux: PathBuf,
    /// `/lib/modules/<release>` (may be absent for a kernel without modules).
    pub modules_dir: PathBuf,
}

/// Errors of kernel discovery and extraction.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No `vmlinuz-<release>` with a matching modules directory.
    #[error("no kernel found: no {boot_dir}/vmlinuz-<release> with a matching {modules_root}/<release>")]
    NotFound {
        /// Directory searched for `vmlinuz-*`.
        boot_dir: PathBuf,
        /// Directory searched for module trees.
        modules_root: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is neither an ELF file nor an x86 bzImage with a payload.
    #[error("{path} is neither an ELF vmlinux nor an x86 bzImage (boot protocol >= 2.08)")]
    NotAKernel {
        /// The path.
        path: PathBuf,
    },
    /// The bzImage payload is malformed.
    #[error("malformed payload in {path}: {reason}")]
    BadPayload {
        /// The bzImage.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The payload uses a compression we do not decode.
    #[error("unsupported {format} payload in {path} (supported: xz, gzip, zstd)")]
    UnsupportedCompression {
        /// The bzImage.
        path: PathBuf,
        /// The detected format.
        format: &'static str,
    },
    /// Decompressing failed.
    #[error("cannot decompress the {format} payload of {path}")]
    Decompress {
        /// The compressed file.
        path: PathBuf,
        /// The format.
        format: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The release could not be derived from the kernel file.
    #[error("cannot tell the kernel release of {path}: set RGCS_KERNEL_RELEASE")]
    UnknownRelease {
        /// The kernel file.
        path: PathBuf,
    },
    /// Writing the cache failed.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No cache directory could be derived from the environment.
    #[error("no cache directory: set RGCS_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

/// Where to look for a kernel. [`KernelSearch::from_env`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSearch {
    /// Explicit kernel (bzImage or ELF); `None` means the newest in `boot_dir`.
    pub kernel: Option<PathBuf>,
    /// Explicit release; `None` derives it from the file name or the bzImage header.
    pub release: Option<String>,
    /// Directory holding `vmlinuz-<release>` (default `/boot`).
    pub boot_dir: PathBuf,
    /// Directory holding `<release>/modules.dep` (default `/lib/modules`).
    pub modules_root: PathBuf,
    /// Where extracted vmlinux files are cached.
    pub cache_dir: PathBuf,
}

impl KernelSearch {
    /// Defaults plus `RGCS_KERNEL`, `RGCS_KERNEL_RELEASE` and the cache directory of
    /// [`default_cache_dir`].
    pub fn from_env() -> Result<Self, KernelError> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Ok(Self {
            kernel: non_empty(ENV_KERNEL).map(PathBuf::from),
            release: non_empty(ENV_KERNEL_RELEASE).map(|v| v.to_string_lossy().into_owned()),
            boot_dir: PathBuf::from("/boot"),
            modules_root: PathBuf::from("/lib/modules"),
            cache_dir: default_cache_dir()?,
        })
    }
}

/// Finds the kernel from the environment ([`KernelSearch::from_env`]) and extracts its vmlinux.
///
/// Blocking: the first extraction takes about a second (release build; ~2.4 s unoptimised), a
/// cache hit microseconds. From async code, call it through `tokio::task::spawn_blocking`.
pub fn locate() -> Result<KernelArtifacts, KernelError> {
    locate_with(&KernelSearch::from_env()?)
}

/// Finds the kernel described by `search` and extracts its vmlinux into `search.cache_dir`.
pub fn locate_with(search: &KernelSearch) -> Result<KernelArtifacts, KernelError> {
    let (kernel, release) = match &search.kernel {
        Some(path) => {
            let release = match &search.release {
                Some(r) => r.clone(),
                None => release_of(path)?,
            };
            (path.clone(), release)
        }
        None => match &search.release {
            Some(r) => (search.boot_dir.join(format!("vmlinuz-{r}")), r.clone()),
            None => {
                let r = newest_release(&search.boot_dir, &search.modules_root)?;
                (search.boot_dir.join(format!("vmlinuz-{r}")), r)
            }
        },
    };
    let modules_dir = search.modules_root.join(&release);
    if !modules_dir.is_dir() {
        tracing::warn!(path = %modules_dir.display(), "kernel modules directory is missing");
    }
    let vmlinux = extract_vmlinux(&kernel, &search.cache_dir)?;
    Ok(KernelArtifacts {
        release,
        vmlinux,
        modules_dir,
    })
}

/// The cache directory: `$RGCS_CACHE_DIR`, else `<cargo target dir>/rgcs` (from
/// `$CARGO_TARGET_DIR` or a `target` ancestor of the running executable), else
/// `$XDG_CACHE_HOME/rgcs`, else `$HOME/.cache/rgcs`.
pub fn default_cache_dir() -> Result<PathBuf, KernelError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(ENV_CACHE_DIR) {
        return Ok(dir);
    }
    if let Some(dir) = var("CARGO_TARGET_DIR") {
        return Ok(dir.join("rgcs"));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe
            .ancestors()
            .find(|a| a.file_name() == Some(OsStr::new("target")))
        {
            return Ok(target.join("rgcs"));
        }
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("rgcs"));
    }
    var("HOME")
        .map(|h| h.join(".cache").join("rgcs"))
        .ok_or(KernelError::NoCacheDir)
}

/// The newest release that has both `<boot_dir>/vmlinuz-<release>` and
/// `<modules_root>/<release>/modules.dep`, compared as version strings (`6.1.0-56` > `6.1.0-9`).
pub fn newest_release(boot_dir: &Path, modules_root: &Path) -> Result<String, KernelError> {
    let entries = fs::read_dir(boot_dir).map_err(|source| KernelError::Read {
        path: boot_dir.into(),
        source,
    })?;
    let mut best: Option<String> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
            continue;
        };
        if release.is_empty() || !modules_root.join(release).join("modules.dep").is_file() {
            continue;
        }
        if best
            .as_deref()
            .is_none_or(|b| compare_versions(release, b).is_gt())
        {
            best = Some(release.to_owned());
        }
    }
    best.ok_or_else(|| KernelError::NotFound {
        boot_dir: boot_dir.into(),
        modules_root: modules_root.into(),
    })
}

/// Compares version strings chunk by chunk: runs of digits numerically, the rest bytewise.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The release of a kernel file: from a `vmlinuz-<r>`/`vmlinux-<r>` file name, else from the
/// bzImage header's version string.
fn release_of(path: &Path) -> Result<String, KernelError> {
    let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
    for prefix in ["vmlinuz-", "vmlinux-"] {
        if let Some(r) = name.strip_prefix(prefix).filter(|r| !r.is_empty()) {
            return Ok(r.to_owned());
        }
    }
    let data = read(path)?;
    version_string(&data)
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .ok_or_else(|| KernelError::UnknownRelease { path: path.into() })
}

/// The NUL-terminated version string a bzImage points to from its setup header.
fn version_string(data: &[u8]) -> Option<&str> {
    if data.get(HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes(
        data.get(KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2)?
            .try_into()
            .ok()?,
    );
    let start = usize::from(ptr) + 0x200;
    let tail = data.get(start..)?;
    let end = tail.iter().take(256).position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..end]).ok()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Instant;

    use super::payload::*;
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(compare_versions("6.10.0-1-amd64", "6.9.0-1-amd64"), Greater);
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-56-amd64"), Equal);
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-56-cloud-amd64"), Less);
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b"\xfd7zXZ\x00rest"), Ok(Compression::Xz));
        assert_eq!(detect(b"\x1f\x8b\x08"), Ok(Compression::Gzip));
        assert_eq!(detect(b"\x28\xb5\x2f\xfd"), Ok(Compression::Zstd));
        assert_eq!(detect(b"BZh9"), Err("bzip2"));
        assert_eq!(detect(b"????"), Err("unknown"));
    }

    /// A minimal bzImage: setup header fields plus a compressed "ELF" payload and size trailer.
    fn fake_bzimage(payload: &[u8], uncompressed_len: u32) -> Vec<u8> {
        let setup_sects = 1u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        img[SETUP_SECTS_OFFSET] = setup_sects;
        img[HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        img[PROTOCOL_VERSION_OFFSET..PROTOCOL_VERSION_OFFSET + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        // version string at 0x300 (pointer is relative to 0x200)
        img[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + 22].copy_from_slice(b"9.9.9-test (me) #1 SMP");
        let offset = 16u32;
        let length = u32::try_from(payload.len() + 4).unwrap();
        img[PAYLOAD_OFFSET_OFFSET..PAYLOAD_OFFSET_OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
        img[PAYLOAD_LENGTH_OFFSET..PAYLOAD_LENGTH_OFFSET + 4].copy_from_slice(&length.to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&uncompressed_len.to_le_bytes());
        img.extend_from_slice(b"trailing setup data");
        img
    }

    fn fake_elf() -> Vec<u8> {
        let mut elf = ELF_MAGIC.to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        elf
    }

    #[test]
    fn extracts_gzip_payload_once_and_caches_it() {
        let dir = tempfile::tempdir().unwrap();
        let elf = fake_elf();
        let gz = pipe_through(&["gzip", "-c"], &elf).unwrap();
        let kernel = dir.path().join("bzImage");
        fs::write(&kernel, fake_bzimage(&gz, u32::try_from(elf.len()).unwrap())).unwrap();
        let cache = dir.path().join("cache");

        let out = extract_vmlinux(&kernel, &cache).unwrap();
        assert!(out.starts_with(&cache));
        assert_eq!(fs::read(&out).unwrap(), elf);
        // Second call: served from the cache (same path, nothing re-written).
        let before = fs::metadata(&out).unwrap().modified().unwrap();
        assert_eq!(extract_vmlinux(&kernel, &cache).unwrap(), out);
        assert_eq!(fs::metadata(&out).unwrap().modified().unwrap(), before);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
        assert_eq!(release_of(&kernel).unwrap(), "9.9.9-test");
    }

    #[test]
    fn rejects_a_wrong_size_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let elf = fake_elf();
        let gz = pipe_through(&["gzip", "-c"], &elf).unwrap();
        let kernel = dir.path().join("bzImage");
        fs::write(&kernel, fake_bzimage(&gz, 12)).unwrap();
        let err = extract_vmlinux(&kernel, &dir.path().join("c")).unwrap_err();
        assert!(matches!(err, KernelError::BadPayload { .. }), "{err}");
    }

    #[test]
    fn elf_input_is_returned_as_is_and_junk_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("vmlinux-1.2.3");
        fs::write(&elf, fake_elf()).unwrap();
        assert_eq!(extract_vmlinux(&elf, dir.path()).unwrap(), elf);
        assert_eq!(release_of(&elf).unwrap(), "1.2.3");
        let junk = dir.path().join("junk");
        fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(matches!(
            extract_vmlinux(&junk, dir.path()),
            Err(KernelError::NotAKernel { .. })
        ));
    }

    #[test]
    fn newest_release_needs_modules() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, mods) = (dir.path().join("boot"), dir.path().join("modules"));
        for r in ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-99-amd64"] {
            fs::create_dir_all(&boot).unwrap();
            fs::write(boot.join(format!("vmlinuz-{r}")), b"x").unwrap();
        }
        for r in ["6.1.0-9-amd64", "6.1.0-56-amd64"] {
            fs::create_dir_all(mods.join(r)).unwrap();
            fs::write(mods.join(r).join("modules.dep"), b"").unwrap();
        }
        assert_eq!(newest_release(&boot, &mods).unwrap(), "6.1.0-56-amd64");
        fs::remove_dir_all(&mods).unwrap();
        assert!(matches!(
            newest_release(&boot, &mods),
            Err(KernelError::NotFound { .. })
        ));
    }

    /// Against the installed Debian kernel (scripts/setup.sh installs it): xz + BCJ payload.
    #[test]
    fn extracts_the_installed_debian_kernel() {
        let release = newest_release(Path::new("/boot"), Path::new("/lib/modules")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let search = KernelSearch {
            kernel: None,
            release: None,
            boot_dir: "/boot".into(),
            modules_root: "/lib/modules".into(),
            cache_dir: dir.path().into(),
        };
        let started = Instant::now();
        let art = locate_with(&search).unwrap();
        eprintln!("extracted {} in {:?}", art.vmlinux.display(), started.elapsed());
        assert_eq!(art.release, release);
        assert_eq!(art.modules_dir, Path::new("/lib/modules").join(&release));
        let mut head = [0u8; 4];
        fs::File::open(&art.vmlinux)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, ELF_MAGIC);
        let bz = fs::read(format!("/boot/vmlinuz-{release}")).unwrap();
        assert_eq!(
            version_string(&bz).and_then(|v| v.split_whitespace().next()),
            Some(release.as_str())
        );
    }
}
