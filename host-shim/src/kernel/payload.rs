//! Getting an ELF vmlinux out of an x86 bzImage: the boot-protocol header, the compressed
//! payload (xz with the x86 BCJ filter on Debian; gzip and zstd through the system tools), the
//! size trailer, and the on-disk cache.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

use super::{
    KernelError, ELF_MAGIC, HDR_MAGIC_OFFSET, MAX_VMLINUX_SIZE, MIN_PROTOCOL_WITH_PAYLOAD,
    PAYLOAD_LENGTH_OFFSET, PAYLOAD_OFFSET_OFFSET, PROTOCOL_VERSION_OFFSET, SETUP_SECTS_OFFSET,
};

/// The little-endian `u16` at `off`, if `data` is long enough.
pub(crate) fn le_u16(data: &[u8], off: usize) -> Option<u16> {
    data.get(off..off.checked_add(2)?)?
        .try_into()
        .ok()
        .map(u16::from_le_bytes)
}

/// The little-endian `u32` at `off`, if `data` is long enough.
pub(crate) fn le_u32(data: &[u8], off: usize) -> Option<u32> {
    data.get(off..off.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

/// The little-endian `u64` at `off`, if `data` is long enough.
pub(crate) fn le_u64(data: &[u8], off: usize) -> Option<u64> {
    data.get(off..off.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_le_bytes)
}

/// Returns an ELF vmlinux for `kernel`: the file itself when it is already ELF, else the
/// payload of the bzImage, extracted once into `cache_dir`.
pub fn extract_vmlinux(kernel: &Path, cache_dir: &Path) -> Result<PathBuf, KernelError> {
    let meta = fs::metadata(kernel).map_err(|source| KernelError::Read {
        path: kernel.into(),
        source,
    })?;
    let mut head = [0u8; 4];
    fs::File::open(kernel)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|source| KernelError::Read {
            path: kernel.into(),
            source,
        })?;
    if &head == ELF_MAGIC {
        return Ok(kernel.to_path_buf());
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let stem: String = kernel
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("kernel")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cached = cache_dir.join(format!(
        "vmlinux.{stem}.{}.{}.{:09}",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ));
    if cached.is_file() {
        tracing::debug!(path = %cached.display(), "using cached vmlinux");
        return Ok(cached);
    }
    let started = Instant::now();
    let data = read(kernel)?;
    let vmlinux = decompress_bzimage(kernel, &data)?;
    write_atomic(&cached, &vmlinux)?;
    tracing::info!(
        kernel = %kernel.display(),
        vmlinux = %cached.display(),
        bytes = vmlinux.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "extracted vmlinux"
    );
    Ok(cached)
}

/// Compression formats found in x86 bzImage payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Xz => "xz",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Detects the compression from magic bytes; `Err` names a known but unsupported format.
pub(super) fn detect(data: &[u8]) -> Result<Compression, &'static str> {
    const MAGICS: &[(&[u8], Result<Compression, &str>)] = &[
        (b"\xfd7zXZ\x00", Ok(Compression::Xz)),
        (b"\x1f\x8b", Ok(Compression::Gzip)),
        (b"\x28\xb5\x2f\xfd", Ok(Compression::Zstd)),
        (b"\x5d\x00\x00", Err("lzma")),
        (b"BZh", Err("bzip2")),
        (b"\x02\x21\x4c\x18", Err("lz4")),
        (b"\x89LZO", Err("lzo")),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| data.starts_with(m))
        .map(|(_, c)| *c)
        .unwrap_or(Err("unknown"))
}

/// Extracts the ELF payload of an x86 bzImage held in `data`.
pub(super) fn decompress_bzimage(path: &Path, data: &[u8]) -> Result<Vec<u8>, KernelError> {
    let not_kernel = || KernelError::NotAKernel { path: path.into() };
    let bad = |reason: String| KernelError::BadPayload {
        path: path.into(),
        reason,
    };
    let u16_at = |o: usize| le_u16(data, o);
    let u32_at = |o: usize| le_u32(data, o);
    if data.get(HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4) != Some(b"HdrS") {
        return Err(not_kernel());
    }
    if u16_at(PROTOCOL_VERSION_OFFSET).ok_or_else(not_kernel)? < MIN_PROTOCOL_WITH_PAYLOAD {
        return Err(not_kernel());
    }
    let setup_sects = match data.get(SETUP_SECTS_OFFSET).copied().ok_or_else(not_kernel)? {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(PAYLOAD_OFFSET_OFFSET).ok_or_else(not_kernel)? as usize;
    let length = u32_at(PAYLOAD_LENGTH_OFFSET).ok_or_else(not_kernel)? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = start
        .checked_add(length)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| {
            bad(format!(
                "payload {start}+{length} exceeds the file ({} bytes)",
                data.len()
            ))
        })?;
    // The build appends the uncompressed size as a little-endian u32 (scripts `size_append`).
    let split = payload
        .len()
        .checked_sub(4)
        .ok_or_else(|| bad("payload shorter than 4 bytes".into()))?;
    let (stream, trailer) = payload.split_at(split);
    let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if size > MAX_VMLINUX_SIZE {
        return Err(bad(format!("size trailer {size} exceeds {MAX_VMLINUX_SIZE}")));
    }
    let format = detect(stream).map_err(|format| KernelError::UnsupportedCompression {
        path: path.into(),
        format,
    })?;
    let out = decompress(path, format, stream, size as usize)?;
    if out.len() != size as usize {
        return Err(bad(format!(
            "decompressed {} bytes, trailer says {size}",
            out.len()
        )));
    }
    if !out.starts_with(ELF_MAGIC) {
        return Err(bad("decompressed payload is not an ELF file".into()));
    }
    Ok(out)
}

/// Decompresses one complete stream; `size_hint` pre-sizes the output.
pub(crate) fn decompress(
    path: &Path,
    format: Compression,
    stream: &[u8],
    size_hint: usize,
) -> Result<Vec<u8>, KernelError> {
    let err = |source| KernelError::Decompress {
        path: path.into(),
        format: format.name(),
        source,
    };
    let mut out = Vec::with_capacity(size_hint);
    match format {
        Compression::Xz => {
            lzma_rust2::XzReader::new(stream, false)
                .read_to_end(&mut out)
                .map_err(err)?;
        }
        Compression::Gzip => out = pipe_through(&["gzip", "-dc"], stream).map_err(err)?,
        Compression::Zstd => out = pipe_through(&["zstd", "-dcq"], stream).map_err(err)?,
    }
    Ok(out)
}

/// Decompresses a kernel module file by its extension (`.ko.xz`, `.ko.gz`, `.ko.zst`);
/// returns `None` for a plain `.ko`.
pub(crate) fn decompress_module(path: &Path, data: &[u8]) -> Result<Option<Vec<u8>>, KernelError> {
    let name = path.to_string_lossy();
    let format = if name.ends_with(".xz") {
        Compression::Xz
    } else if name.ends_with(".gz") {
        Compression::Gzip
    } else if name.ends_with(".zst") {
        Compression::Zstd
    } else {
        return Ok(None);
    };
    decompress(path, format, data, data.len() * 4).map(Some)
}

/// Runs `cmd`, feeding `input` on stdin from a helper thread, and returns stdout.
pub(super) fn pipe_through(cmd: &[&str], input: &[u8]) -> io::Result<Vec<u8>> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin pipe"))?;
    let output = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let output = child.wait_with_output();
        // A broken pipe from a decompressor that stopped early shows up in the exit status.
        let _ = writer.join();
        output
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{program} exited with {}",
            output.status
        )));
    }
    Ok(output.stdout)
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, KernelError> {
    fs::read(path).map_err(|source| KernelError::Read {
        path: path.into(),
        source,
    })
}

/// Writes `data` to a temporary file beside `dest` and renames it into place.
pub(crate) fn write_atomic(dest: &Path, data: &[u8]) -> Result<(), KernelError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Write { path, source }
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(werr(parent))?;
    }
    let tmp = tmp_path(dest);
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, dest));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr(dest))
}

/// A unique temporary name beside `dest` (pid plus a process-wide counter).
pub(crate) fn tmp_path(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    dest.with_file_name(name)
}
