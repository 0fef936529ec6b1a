//! Scratch disks: sparse files holding an empty ext4 filesystem, hot-plugged read-write as a
//! container's scratch (`MappedVirtualDisk` with `EnsureFilesystem`, docs/gcs-reference.md §4.14).
//!
//! The file is sparse: a 10 GiB scratch costs only the few MiB of metadata mke2fs writes
//! (lazy inode-table and journal init; the guest kernel finishes those lazily).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::image::mkfs::{self, MkfsError};

/// The default scratch size (the LCOW default is 20 GB; ours is smaller: TCG guests).
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// The smallest scratch disk we make (ext4 with a journal needs a few MiB).
pub const MIN_SIZE: u64 = 16 << 20;

/// Errors of scratch creation.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// Size out of range.
    #[error("scratch size {size} bytes is below the minimum of {MIN_SIZE} bytes")]
    TooSmall {
        /// The requested size.
        size: u64,
    },
    /// The file could not be created.
    #[error("cannot create scratch disk {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mkfs failed.
    #[error("cannot format scratch disk")]
    Mkfs(#[from] MkfsError),
}

/// Creates `path` (which must not exist) as a sparse `size`-byte file with an empty ext4
/// filesystem (with a journal: scratch is written). `size` is rounded down to 4 KiB.
pub fn create(path: &Path, size: u64) -> Result<(), ScratchError> {
    let size = size & !4095;
    if size < MIN_SIZE {
        return Err(ScratchError::TooSmall { size });
    }
    let err = |source| ScratchError::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err)?;
    file.set_len(size).map_err(err)?;
    drop(file);
    if let Err(e) = mkfs::make_empty(path, size, true) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    tracing::debug!(path = %path.display(), size, "scratch disk created");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn creates_a_sparse_ext4_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("scratch.img");
        create(&path, 1 << 30).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 1 << 30);
        assert!(
            m.blocks() * 512 < 64 << 20,
            "sparse: {} bytes allocated",
            m.blocks() * 512
        );
        let fs = ext4_view::Ext4::load_from_path(&path).unwrap();
        assert!(fs.exists("/lost+found").unwrap());
        assert!(
            matches!(create(&path, 1 << 30), Err(ScratchError::Create { .. })),
            "never overwrites"
        );
        assert!(matches!(
            create(&tmp.path().join("x"), 4096),
            Err(ScratchError::TooSmall { .. })
        ));
    }
}
