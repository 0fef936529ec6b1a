//! The images in a layer cache (`rgcs images`, `rgcs rmi`): each import records the image's ID
//! (its config digest), where it came from and its layers in `<cache>/index/<id>.json`. Layer
//! disks are shared by digest between images; `remove` deletes an image's record and the layer
//! disks no other recorded image uses.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{layout, ImportedImage, CACHE_VERSION};

/// One imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest (`sha256:…`): the image ID.
    pub id: String,
    /// The path it was imported from.
    pub source: PathBuf,
    /// Layer digests (the cache keys), bottom-most first.
    pub layers: Vec<String>,
    /// Total size of its layer disks, bytes (apparent).
    pub size: u64,
    /// Import time, seconds since the epoch.
    pub imported: u64,
}

fn index_dir(cache: &Path) -> PathBuf {
    cache.join("index")
}

fn record_path(cache: &Path, id: &str) -> Option<PathBuf> {
    layout::sha256_hex(id).map(|hex| index_dir(cache).join(format!("{hex}.json")))
}

/// Records `image`, imported from `source`, in the cache's index.
pub fn record(cache: &Path, source: &Path, image: &ImportedImage) -> io::Result<()> {
    let Some(path) = record_path(cache, &image.config_digest) else {
        return Ok(());
    };
    std::fs::create_dir_all(index_dir(cache))?;
    let rec = ImageRecord {
        id: image.config_digest.clone(),
        source: std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()),
        layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
        size: image.layers.iter().map(|l| l.size).sum(),
        imported: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

/// Every recorded image, newest first.
pub fn list(cache: &Path) -> Vec<ImageRecord> {
    let mut out: Vec<ImageRecord> = std::fs::read_dir(index_dir(cache))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a: &ImageRecord, b| b.imported.cmp(&a.imported).then(a.id.cmp(&b.id)));
    out
}

/// The image `what` names: an ID or a unique prefix of its hex (12 characters suffice), or the
/// path it was imported from.
pub fn find(cache: &Path, what: &str) -> Result<ImageRecord, String> {
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    let path = std::fs::canonicalize(what).ok();
    let hits: Vec<ImageRecord> = list(cache)
        .into_iter()
        .filter(|r| {
            let rhex = r.id.strip_prefix("sha256:").unwrap_or(&r.id);
            (hex.len() >= 4 && rhex.starts_with(hex)) || path.as_deref() == Some(r.source.as_path())
        })
        .collect();
    let mut hits = hits.into_iter();
    match (hits.next(), hits.next()) {
        (Some(r), None) => Ok(r),
        (None, _) => Err(format!("no such image: {what}")),
        (Some(_), Some(_)) => Err(format!("{what} names more than one image: give more of the ID")),
    }
}

/// Removes `image`'s record and the layer disks no other recorded image uses; the digests of
/// the removed disks.
pub fn remove(cache: &Path, image: &ImageRecord) -> io::Result<Vec<String>> {
    if let Some(p) = record_path(cache, &image.id) {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let kept: HashSet<String> = list(cache).into_iter().flat_map(|r| r.layers).collect();
    let mut removed = Vec::new();
    for digest in &image.layers {
        if kept.contains(digest) {
            continue;
        }
        let Some(hex) = layout::sha256_hex(digest) else {
            continue;
        };
        let disk = cache.join(CACHE_VERSION).join(format!("{hex}.img"));
        match std::fs::remove_file(&disk) {
            Ok(()) => removed.push(digest.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_share_layers_and_rmi_keeps_what_others_use() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        super::super::demo::build(&a, Path::new("/bin/busybox")).unwrap();
        super::super::demo::build_with_layers(&b, Path::new("/bin/busybox"), 1).unwrap();
        let cache = tmp.path().join("cache");
        let ia = super::super::import(&a, &cache, &super::super::NoProgress).unwrap();
        let ib = super::super::import(&b, &cache, &super::super::NoProgress).unwrap();
        let images = list(&cache);
        assert_eq!(images.len(), 2);
        let ra = find(&cache, &ia.config_digest).unwrap();
        assert_eq!(find(&cache, a.to_str().unwrap()).unwrap(), ra);
        assert!(find(&cache, "sha256:ffffffffffff").is_err());
        // a's layers are all b's too: removing a deletes no disk.
        assert!(remove(&cache, &ra).unwrap().is_empty());
        assert!(ia.layers.iter().all(|l| l.path.exists()));
        // b goes with every layer.
        let rb = find(&cache, &ib.config_digest).unwrap();
        assert_eq!(remove(&cache, &rb).unwrap().len(), ib.layers.len());
        assert!(ib.layers.iter().all(|l| !l.path.exists()));
        assert!(list(&cache).is_empty());
    }
}
