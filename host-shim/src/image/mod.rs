//! `rgcs image import`: an OCI image layout (directory or tar) or a `docker save` tar → one
//! ext4 image per layer, content-addressed by the layer's uncompressed digest (diff_id) and
//! cached under `<cache>/ext4-v1/<hex>.img`.
//!
//! Per layer: blob → (progress) → sha256 of the blob → gunzip if gzip → sha256 of the tar
//! (the diff_id) → streamed extraction with overlayfs whiteouts ([`extract`]) into a temporary
//! tree beside the cache → `mkfs.ext4 -d` ([`mkfs`]) → rename into the cache. Both digests are
//! checked against the manifest and the config before the image is published; a mismatch
//! leaves nothing behind. Layers already in the cache are not read at all.

pub mod demo;
pub mod extract;
pub mod index;
pub mod layout;
pub mod mkfs;
pub mod pipe;
pub mod progress;
pub mod whiteout;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;

pub use extract::{ApplyMode, ExtractError, ExtractStats};
pub use layout::{LayerRef, Plan};
pub use mkfs::MkfsError;
pub use progress::{NoProgress, Progress, TerminalProgress};

/// The cache subdirectory; bump when the conversion changes so old images are not reused.
pub const CACHE_VERSION: &str = "ext4-v1";

/// Errors of image import.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be opened or read.
    #[error("cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Neither an OCI layout nor a docker-save archive.
    #[error("{0} is neither an OCI image layout (oci-layout + index.json) nor a docker save archive (manifest.json)")]
    UnknownFormat(PathBuf),
    /// A manifest or config is malformed.
    #[error("malformed {path}: {why}")]
    Malformed {
        /// The document.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The path is neither a directory nor a (gzipped) tar archive.
    #[error("{0} is not an image: expected an OCI layout directory, an OCI tar or a docker-save tar")]
    NotAnImage(PathBuf),
    /// A digest algorithm other than sha256.
    #[error("unsupported digest {0} (only sha256)")]
    UnsupportedDigest(String),
    /// A blob does not hash to its digest.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was hashed.
        what: String,
        /// The declared digest.
        expected: String,
        /// The computed digest.
        actual: String,
    },
    /// A layer compression we cannot read.
    #[error("layer {digest} uses an unsupported compression ({what}); only gzip and uncompressed tars are supported")]
    UnsupportedCompression {
        /// The layer.
        digest: String,
        /// The media type or magic.
        what: String,
    },
    /// Extraction failed (includes refused path traversal).
    #[error("cannot extract layer {digest}")]
    Extract {
        /// The layer.
        digest: String,
        /// Cause.
        #[source]
        source: ExtractError,
    },
    /// mkfs failed.
    #[error("cannot build the ext4 image of layer {digest}")]
    Mkfs {
        /// The layer.
        digest: String,
        /// Cause.
        #[source]
        source: MkfsError,
    },
}

/// One layer as an ext4 image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDisk {
    /// The layer's uncompressed digest (diff_id, `sha256:…`): the cache key.
    pub digest: String,
    /// The blob's digest as named by the manifest (compressed for OCI gzip layers).
    pub blob_digest: Option<String>,
    /// The ext4 image in the cache.
    pub path: PathBuf,
    /// The image's (apparent, sparse) size in bytes.
    pub size: u64,
    /// Whether it was already cached.
    pub cached: bool,
}

/// The result of an import.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImportedImage {
    /// Layers, bottom-most first (overlay `lowerdir` wants them reversed).
    pub layers: Vec<LayerDisk>,
    /// The image configuration (OCI/docker config JSON).
    pub config: Value,
    /// The config's digest (the image ID).
    pub config_digest: String,
}

/// The default image cache: `<rgcs cache dir>/images` (see [`crate::kernel::default_cache_dir`]).
pub fn default_cache_dir() -> Option<PathBuf> {
    crate::kernel::default_cache_dir().ok().map(|d| d.join("images"))
}

/// Imports the image at `path` (OCI layout directory, OCI tar or docker-save tar) into
/// `cache_dir`. Blocking; run it on a blocking thread from async code.
pub fn import(path: &Path, cache_dir: &Path, progress: &dyn Progress) -> Result<ImportedImage, ImageError> {
    let started = Instant::now();
    let layers_dir = cache_dir.join(CACHE_VERSION);
    let tmp_dir = cache_dir.join("tmp");
    for d in [&layers_dir, &tmp_dir] {
        fs::create_dir_all(d).map_err(|source| ImageError::Io {
            what: "create the cache directory",
            path: d.clone(),
            source,
        })?;
    }
    let unpacked;
    let root = if path.is_dir() {
        path
    } else {
        unpacked = TempPath::new(&tmp_dir, "archive");
        unpack_archive(path, unpacked.path())?;
        unpacked.path()
    };
    let plan = layout::plan(root)?;
    let mut todo = Vec::new();
    let mut total = 0;
    for l in &plan.layers {
        let key = cache_key(l)?;
        let image = layers_dir.join(format!("{key}.img"));
        if !image.exists() {
            total += fs::metadata(root.join(&l.blob)).map(|m| m.len()).unwrap_or(0);
        }
        todo.push((l, key, image));
    }
    progress.start(todo.len(), total);
    let mut layers = Vec::with_capacity(todo.len());
    for (i, (l, key, image)) in todo.into_iter().enumerate() {
        let digest = format!("sha256:{key}");
        let cached = image.exists();
        progress.layer(i, &digest, cached);
        if !cached {
            import_layer(root, l, &image, &tmp_dir, progress)?;
        }
        let size = fs::metadata(&image)
            .map(|m| m.len())
            .map_err(|source| ImageError::Io {
                what: "stat",
                path: image.clone(),
                source,
            })?;
        layers.push(LayerDisk {
            digest,
            blob_digest: l.digest.clone(),
            path: image,
            size,
            cached,
        });
    }
    progress.finish();
    let imported = ImportedImage {
        layers,
        config: plan.config,
        config_digest: plan.config_digest,
    };
    if let Err(e) = index::record(cache_dir, path, &imported) {
        tracing::warn!(error = %e, "cannot record the image in the cache's index");
    }
    tracing::info!(image = %path.display(), layers = imported.layers.len(), elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "image imported");
    Ok(imported)
}

/// The cache key (hex) of a layer: its diff_id, else its blob digest.
fn cache_key(l: &LayerRef) -> Result<String, ImageError> {
    let d = l
        .diff_id
        .as_ref()
        .or(l.digest.as_ref())
        .ok_or_else(|| ImageError::Malformed {
            path: PathBuf::from(&l.blob),
            why: "layer has neither a diff_id nor a digest".into(),
        })?;
    layout::sha256_hex(d)
        .map(str::to_owned)
        .ok_or_else(|| ImageError::UnsupportedDigest(d.clone()))
}

/// Result of converting one layer (for benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct LayerStats {
    /// Extraction totals.
    pub extract: ExtractStats,
    /// Seconds spent reading, hashing and extracting.
    pub extract_secs: f64,
    /// Seconds spent in mkfs.
    pub mkfs_secs: f64,
}

/// Converts one layer blob into `image` (atomically: temp file + rename).
pub fn import_layer(
    root: &Path,
    l: &LayerRef,
    image: &Path,
    tmp_dir: &Path,
    progress: &dyn Progress,
) -> Result<LayerStats, ImageError> {
    let key = cache_key(l)?;
    let digest = l.diff_id.clone().unwrap_or_else(|| format!("sha256:{key}"));
    let tree = TempPath::new(tmp_dir, "tree");
    let t0 = Instant::now();
    let extract = extract_layer(root, l, tree.path(), &digest, progress)?;
    let t1 = Instant::now();
    let tmp_image = TempPath::new(tmp_dir, "img");
    mkfs::make_image(tree.path(), &extract, tmp_image.path(), Some(&key)).map_err(|source| {
        ImageError::Mkfs {
            digest: digest.clone(),
            source,
        }
    })?;
    let t2 = Instant::now();
    fs::rename(tmp_image.path(), image).map_err(|source| ImageError::Io {
        what: "publish the layer image",
        path: image.to_path_buf(),
        source,
    })?;
    tracing::info!(layer = %digest, bytes = extract.file_bytes, extract_ms = u64::try_from((t1 - t0).as_millis()).unwrap_or(u64::MAX), mkfs_ms = u64::try_from((t2 - t1).as_millis()).unwrap_or(u64::MAX), "layer converted");
    Ok(LayerStats {
        extract,
        extract_secs: (t1 - t0).as_secs_f64(),
        mkfs_secs: (t2 - t1).as_secs_f64(),
    })
}

/// Streams a layer blob into `tree` (created), verifying the blob digest and the diff_id.
pub fn extract_layer(
    root: &Path,
    l: &LayerRef,
    tree: &Path,
    digest: &str,
    progress: &dyn Progress,
) -> Result<ExtractStats, ImageError> {
    if let Some(mt) = l.media_type.as_deref().filter(|t| t.contains("zstd")) {
        return Err(ImageError::UnsupportedCompression {
            digest: digest.to_owned(),
            what: mt.to_owned(),
        });
    }
    let io_err = |what, source| ImageError::Io {
        what,
        path: root.join(&l.blob),
        source,
    };
    let dir = File::open(root).map_err(|e| io_err("open the layout", e))?;
    let file = extract::open_beneath(&dir, &l.blob).map_err(|e| io_err("open the layer blob", e))?;
    fs::create_dir(tree).map_err(|source| ImageError::Io {
        what: "create",
        path: tree.to_path_buf(),
        source,
    })?;
    let counted = progress::ProgressReader {
        inner: file,
        progress,
    };
    let mut blob = layout::HashingReader::new(BufReader::with_capacity(256 << 10, counted));
    // Peek (not consume) the magic: the bytes stay buffered and are hashed when read.
    let magic = blob
        .get_mut()
        .fill_buf()
        .map_err(|e| io_err("read the layer blob", e))?;
    let gzip = magic.starts_with(&[0x1f, 0x8b]);
    if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::UnsupportedCompression {
            digest: digest.to_owned(),
            what: "zstd".into(),
        });
    }
    let result = pipe::run(blob, gzip, |r| {
        extract::extract(r, tree, digest, ApplyMode::Layer)
    });
    let (stats, pipe::Digests { blob, tar: diff }) = result.map_err(|e| match e {
        pipe::PipeError::Read(e) => io_err("read the layer blob", e),
        pipe::PipeError::Consume(source) => ImageError::Extract {
            digest: digest.to_owned(),
            source,
        },
    })?;
    for (what, expected, actual) in [("blob", &l.digest, blob), ("diff_id", &l.diff_id, diff)] {
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer {} ({what})", l.blob),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(stats)
}

/// Unpacks an image archive (plain or gzip tar) into `dest` (created): regular files, dirs and
/// symlinks only, with the same path-traversal checks as layers.
fn unpack_archive(path: &Path, dest: &Path) -> Result<(), ImageError> {
    let io_err = |what, source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| io_err("open the image archive", e))?;
    fs::create_dir(dest).map_err(|e| io_err("unpack", e))?;
    let mut buf = BufReader::with_capacity(256 << 10, file);
    let gzip = buf
        .fill_buf()
        .map_err(|e| io_err("read", e))?
        .starts_with(&[0x1f, 0x8b]);
    let mut src: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else {
        Box::new(buf)
    };
    // The first header must be a tar header (valid checksum), or this is not an image at all:
    // say so rather than quote whatever file it is.
    let mut head = Vec::with_capacity(512);
    (&mut src)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| io_err("read", e))?;
    if !extract::is_tar_header(&head) {
        return Err(ImageError::NotAnImage(path.to_path_buf()));
    }
    let src = std::io::Cursor::new(head).chain(src);
    let name = path.display().to_string();
    extract::extract(src, dest, &name, ApplyMode::Plain)
        .map_err(|source| ImageError::Extract { digest: name, source })?;
    Ok(())
}

/// A temporary path (file or directory) under `dir`, removed on drop.
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    /// A fresh, not yet existing path under `dir`.
    pub fn new(dir: &Path, kind: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(dir.join(format!("{kind}-{}-{n}", std::process::id())))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = match fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&self.0),
            Ok(_) => fs::remove_file(&self.0),
            Err(_) => Ok(()),
        };
    }
}

/// Measured import throughput against bare `mkfs.ext4 -d` of the same trees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ImportBench {
    /// Layers converted.
    pub layers: usize,
    /// Uncompressed regular-file bytes in all layers.
    pub bytes: u64,
    /// Our full import (read, sha256 ×2, gunzip, extract, mkfs), seconds.
    pub ours_secs: f64,
    /// Of which streaming extraction (read, hash, gunzip, write the tree), seconds.
    pub ours_extract_secs: f64,
    /// Of which `mkfs.ext4 -d`, seconds.
    pub ours_mkfs_secs: f64,
    /// `mkfs.ext4 -d` alone on the already extracted trees (a second, separate run), seconds.
    pub mkfs_secs: f64,
    /// `bytes` / `ours_secs` in MB/s.
    pub ours_mb_s: f64,
    /// `bytes` / `mkfs_secs` in MB/s.
    pub mkfs_mb_s: f64,
    /// `ours_mb_s / mkfs_mb_s` (< 1 by construction: ours includes an mkfs).
    pub ratio: f64,
}

/// Benchmarks importing the image at `image` (uncached, in a scratch cache under `work`)
/// against `mkfs.ext4 -d` of the same extracted layer trees.
pub fn bench_import(image: &Path, work: &Path) -> Result<ImportBench, ImageError> {
    let cache = TempPath::new(work, "bench-cache");
    let tmp = cache.path().join("tmp");
    fs::create_dir_all(&tmp).map_err(|source| ImageError::Io {
        what: "create",
        path: tmp.clone(),
        source,
    })?;
    let unpacked;
    let root = if image.is_dir() {
        image
    } else {
        unpacked = TempPath::new(&tmp, "archive");
        unpack_archive(image, unpacked.path())?;
        unpacked.path()
    };
    let plan = layout::plan(root)?;
    let mut b = ImportBench {
        layers: plan.layers.len(),
        bytes: 0,
        ours_secs: 0.0,
        ours_extract_secs: 0.0,
        ours_mkfs_secs: 0.0,
        mkfs_secs: 0.0,
        ours_mb_s: 0.0,
        mkfs_mb_s: 0.0,
        ratio: 0.0,
    };
    for l in &plan.layers {
        let out = TempPath::new(&tmp, "out");
        let t = Instant::now();
        let s = import_layer(root, l, out.path(), &tmp, &NoProgress)?;
        b.ours_secs += t.elapsed().as_secs_f64();
        b.ours_extract_secs += s.extract_secs;
        b.ours_mkfs_secs += s.mkfs_secs;
        b.bytes += s.extract.file_bytes;
        drop(out);
        // Baseline: the same tree again (untimed), then mkfs.ext4 -d alone.
        let tree = TempPath::new(&tmp, "tree");
        let stats = extract_layer(root, l, tree.path(), &l.blob, &NoProgress)?;
        let img = TempPath::new(&tmp, "img");
        let t = Instant::now();
        mkfs::make_image(tree.path(), &stats, img.path(), None).map_err(|source| ImageError::Mkfs {
            digest: l.blob.clone(),
            source,
        })?;
        b.mkfs_secs += t.elapsed().as_secs_f64();
    }
    let mb = b.bytes as f64 / 1e6;
    b.ours_mb_s = mb / b.ours_secs.max(1e-9);
    b.mkfs_mb_s = mb / b.mkfs_secs.max(1e-9);
    b.ratio = b.ours_mb_s / b.mkfs_mb_s;
    Ok(b)
}

#[cfg(test)]
mod tests;
