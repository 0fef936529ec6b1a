//! `mkfs.ext4 -d`: an extracted layer tree → an ext4 image file sized from the tree.
//!
//! Why mke2fs rather than our own ext4 writer: see `docs/adr/0005-image-layers-as-ext4.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::extract::ExtractStats;

/// The binary used (e2fsprogs ≥ 1.43 for `-d` with hard links, xattrs and device nodes).
pub const MKFS: &str = "mkfs.ext4";

/// Errors of image creation.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    /// mkfs could not be started.
    #[error("cannot run {MKFS} (install e2fsprogs)")]
    Spawn(#[source] std::io::Error),
    /// mkfs failed.
    #[error("{MKFS} failed for {image} ({status}): {stderr}")]
    Failed {
        /// The image being made.
        image: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
}

/// The image size and inode count for a tree: data + inode tables + metadata, with headroom.
pub fn size_for(stats: &ExtractStats) -> (u64, u64) {
    let inodes = stats.inodes + 64;
    let dir_blocks = stats.dirent_bytes.div_ceil(4096);
    let data = (stats.data_blocks + dir_blocks) * 4096;
    // 256-byte inodes, ~3% extent/bitmap/descriptor overhead, 8 MiB floor for the fixed parts.
    let raw = data + inodes * 256;
    let size = raw + raw / 10 + (8 << 20);
    (size.div_ceil(1 << 20) << 20, inodes)
}

/// A UUID-shaped string from the first 16 bytes of a hex digest (reproducible images).
fn uuid_from(hex: &str) -> Option<String> {
    let h = hex.get(..32)?;
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Runs `mkfs.ext4 -d tree image` (image created or truncated to the computed size).
///
/// Options: 4 KiB blocks, 256-byte inodes, no journal (layers are mounted read-only), no
/// reserved blocks, the UUID and htree seed derived from `seed_hex` (so equal layers give equal
/// images up to timestamps), default features otherwise (`metadata_csum` needs crc32c in the
/// guest: docs/uvm-notes.md pitfall 7).
pub fn make_image(
    tree: &Path,
    stats: &ExtractStats,
    image: &Path,
    seed_hex: Option<&str>,
) -> Result<u64, MkfsError> {
    let (mut size, inodes) = size_for(stats);
    // The estimate has headroom; if mke2fs still runs out of space (huge directories, many
    // xattr blocks), double the size, at most twice.
    for attempt in 0..3 {
        match run(
            mkfs_command(tree, image, size, inodes * (1 << attempt), seed_hex),
            image,
        ) {
            Err(MkfsError::Failed { stderr, .. }) if attempt < 2 && is_out_of_space(&stderr) => {
                tracing::warn!(image = %image.display(), size, "mkfs ran out of space; retrying larger");
                size *= 2;
            }
            other => return other.map(|()| size),
        }
    }
    Ok(size)
}

fn is_out_of_space(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no space left") || s.contains("could not allocate") || s.contains("inode")
}

fn mkfs_command(tree: &Path, image: &Path, size: u64, inodes: u64, seed_hex: Option<&str>) -> Command {
    let mut cmd = Command::new(MKFS);
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-I",
        "256",
        "-m",
        "0",
        "-O",
        "^has_journal",
    ])
    .arg("-N")
    .arg(inodes.to_string());
    let mut ext = String::from("lazy_itable_init=1,nodiscard");
    if let Some(uuid) = seed_hex.and_then(uuid_from) {
        cmd.arg("-U").arg(&uuid);
        ext.push_str(",hash_seed=");
        ext.push_str(&uuid);
    }
    cmd.arg("-E")
        .arg(ext)
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024));
    cmd
}

/// Creates a sparse, empty ext4 filesystem of `size` bytes (scratch disks).
pub fn make_empty(image: &Path, size: u64, journal: bool) -> Result<(), MkfsError> {
    let mut cmd = Command::new(MKFS);
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
    ]);
    if !journal {
        cmd.args(["-O", "^has_journal"]);
    }
    cmd.arg(image).arg(format!("{}k", size / 1024));
    run(cmd, image)
}

fn run(mut cmd: Command, image: &Path) -> Result<(), MkfsError> {
    tracing::debug!(?cmd, "mkfs");
    let out = cmd.output().map_err(MkfsError::Spawn)?;
    if !out.status.success() {
        return Err(MkfsError::Failed {
            image: image.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_underestimate_is_retried_larger() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("big"), vec![1u8; 20 << 20]).unwrap();
        let img = tmp.path().join("img");
        let size = make_image(&tree, &ExtractStats::default(), &img, None).unwrap();
        assert!(size >= 32 << 20, "{size}");
        let fs = ext4_view::Ext4::load_from_path(&img).unwrap();
        assert_eq!(fs.metadata("/big").unwrap().len(), 20 << 20);
    }

    #[test]
    fn sizes_grow_with_content_and_have_a_floor() {
        let empty = size_for(&ExtractStats::default());
        assert_eq!(empty.0 % (1 << 20), 0);
        assert!(empty.0 >= 8 << 20);
        let big = size_for(&ExtractStats {
            inodes: 10_000,
            data_blocks: 100_000,
            dirent_bytes: 300_000,
            file_bytes: 400_000_000,
        });
        assert!(big.0 > 100_000 * 4096 + 10_000 * 256);
        assert_eq!(big.1, 10_064);
        assert_eq!(
            uuid_from(&"ab".repeat(32)).as_deref(),
            Some("abababab-abab-abab-abab-abababababab")
        );
    }
}
