//! Image layouts: OCI image layout directories and `docker save` archives (already unpacked
//! into a directory), turned into one plan: the config and the ordered layer blobs.
//!
//! Every file is opened beneath the layout root (`openat2(RESOLVE_BENEATH)`), so a manifest
//! naming `../../etc/shadow` or a symlink pointing out of the layout is refused by the kernel.
//! Every blob named by digest is verified (sha256) when read.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::extract::open_beneath;
use super::ImageError;

/// JSON documents larger than this are refused (manifests and configs are a few KiB).
pub const MAX_JSON: u64 = 16 << 20;

/// The media types of an image index and a docker manifest list.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One layer to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Path of the blob inside the layout.
    pub blob: String,
    /// The blob's own digest (`sha256:…`), when the layout names it (OCI, new docker).
    pub digest: Option<String>,
    /// Uncompressed digest from the config's `rootfs.diff_ids`.
    pub diff_id: Option<String>,
    /// Declared media type (docker legacy: none).
    pub media_type: Option<String>,
}

/// What to import.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The image configuration.
    pub config: Value,
    /// The config's digest.
    pub config_digest: String,
    /// Layers, bottom-most first.
    pub layers: Vec<LayerRef>,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<64 hex>` → the hex part.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Reads the plan of the layout at `root` (OCI if `oci-layout` + `index.json` exist, else
/// docker's `manifest.json`).
pub fn plan(root: &Path) -> Result<Plan, ImageError> {
    let dir = File::open(root).map_err(|source| ImageError::Io {
        what: "open the image layout",
        path: root.to_path_buf(),
        source,
    })?;
    let l = Layout { root, dir };
    if l.exists("oci-layout") && l.exists("index.json") {
        l.oci()
    } else if l.exists("manifest.json") {
        l.docker()
    } else {
        Err(ImageError::UnknownFormat(root.to_path_buf()))
    }
}

struct Layout<'a> {
    root: &'a Path,
    dir: File,
}

impl Layout<'_> {
    fn exists(&self, rel: &str) -> bool {
        open_beneath(&self.dir, rel).is_ok()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn open(&self, rel: &str) -> Result<File, ImageError> {
        open_beneath(&self.dir, rel).map_err(|source| ImageError::Io {
            what: "open (beneath the layout root)",
            path: self.path(rel),
            source,
        })
    }

    /// Reads a JSON file, verifying `digest` when given.
    fn json(&self, rel: &str, digest: Option<&str>) -> Result<Value, ImageError> {
        let mut buf = Vec::new();
        self.open(rel)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut buf)
            .map_err(|source| ImageError::Io {
                what: "read",
                path: self.path(rel),
                source,
            })?;
        if buf.len() as u64 > MAX_JSON {
            return Err(ImageError::Malformed {
                path: self.path(rel),
                why: format!("larger than {MAX_JSON} bytes"),
            });
        }
        if let Some(expected) = digest {
            let actual = format!("sha256:{}", hex(&Sha256::digest(&buf)));
            if actual != expected {
                return Err(ImageError::DigestMismatch {
                    what: rel.to_owned(),
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        serde_json::from_slice(&buf).map_err(|e| ImageError::Malformed {
            path: self.path(rel),
            why: e.to_string(),
        })
    }

    fn malformed(&self, rel: &str, why: impl Into<String>) -> ImageError {
        ImageError::Malformed {
            path: self.path(rel),
            why: why.into(),
        }
    }

    fn blob_path(&self, digest: &str) -> Result<String, ImageError> {
        let hex = sha256_hex(digest).ok_or_else(|| ImageError::UnsupportedDigest(digest.to_owned()))?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    fn oci(&self) -> Result<Plan, ImageError> {
        let index = self.json("index.json", None)?;
        let mut desc = pick_manifest(&index).ok_or_else(|| self.malformed("index.json", "no manifest"))?;
        // Follow nested indexes (multi-platform images), a few levels at most.
        for _ in 0..4 {
            let digest = desc_digest(&desc)
                .ok_or_else(|| self.malformed("index.json", "descriptor without digest"))?;
            let rel = self.blob_path(&digest)?;
            let doc = self.json(&rel, Some(&digest))?;
            let is_index = desc
                .get("mediaType")
                .and_then(Value::as_str)
                .is_some_and(|t| INDEX_TYPES.contains(&t))
                || doc.get("manifests").is_some();
            if is_index {
                desc =
                    pick_manifest(&doc).ok_or_else(|| self.malformed(&rel, "no manifest for linux/amd64"))?;
                continue;
            }
            return self.oci_manifest(&rel, &doc);
        }
        Err(self.malformed("index.json", "image indexes nested too deeply"))
    }

    fn oci_manifest(&self, rel: &str, manifest: &Value) -> Result<Plan, ImageError> {
        let config_desc = manifest
            .get("config")
            .ok_or_else(|| self.malformed(rel, "no config"))?;
        let config_digest =
            desc_digest(config_desc).ok_or_else(|| self.malformed(rel, "config without digest"))?;
        let config = self.json(&self.blob_path(&config_digest)?, Some(&config_digest))?;
        let diff_ids = diff_ids(&config);
        let descs = manifest
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed(rel, "no layers"))?;
        if !diff_ids.is_empty() && diff_ids.len() != descs.len() {
            return Err(self.malformed(rel, "layer count differs from the config's diff_ids"));
        }
        let mut layers = Vec::with_capacity(descs.len());
        for (i, d) in descs.iter().enumerate() {
            let digest = desc_digest(d).ok_or_else(|| self.malformed(rel, "layer without digest"))?;
            layers.push(LayerRef {
                blob: self.blob_path(&digest)?,
                digest: Some(digest),
                diff_id: diff_ids.get(i).cloned(),
                media_type: d.get("mediaType").and_then(Value::as_str).map(str::to_owned),
            });
        }
        Ok(Plan {
            config,
            config_digest,
            layers,
        })
    }

    fn docker(&self) -> Result<Plan, ImageError> {
        let manifest = self.json("manifest.json", None)?;
        let entry = manifest
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| self.malformed("manifest.json", "empty manifest list"))?;
        let config_rel = entry
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| self.malformed("manifest.json", "no Config"))?;
        let config_digest = digest_from_name(config_rel);
        let config = self.json(config_rel, config_digest.as_deref())?;
        let config_digest = match config_digest {
            Some(d) => d,
            None => {
                let mut buf = Vec::new();
                self.open(config_rel)?
                    .read_to_end(&mut buf)
                    .map_err(|source| ImageError::Io {
                        what: "read",
                        path: self.path(config_rel),
                        source,
                    })?;
                format!("sha256:{}", hex(&Sha256::digest(&buf)))
            }
        };
        let diff_ids = diff_ids(&config);
        let paths = entry
            .get("Layers")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("manifest.json", "no Layers"))?;
        if diff_ids.len() != paths.len() {
            return Err(self.malformed("manifest.json", "layer count differs from the config's diff_ids"));
        }
        let mut layers = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let blob = p
                .as_str()
                .ok_or_else(|| self.malformed("manifest.json", "layer path is not a string"))?;
            layers.push(LayerRef {
                blob: blob.to_owned(),
                digest: digest_from_name(blob),
                diff_id: diff_ids.get(i).cloned(),
                media_type: None,
            });
        }
        Ok(Plan {
            config,
            config_digest,
            layers,
        })
    }
}

/// `blobs/sha256/<hex>` or `<hex>.json` → `sha256:<hex>`.
fn digest_from_name(rel: &str) -> Option<String> {
    let name = Path::new(rel).file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    let d = format!("sha256:{hex}");
    sha256_hex(&d).is_some().then_some(d)
}

fn desc_digest(desc: &Value) -> Option<String> {
    desc.get("digest").and_then(Value::as_str).map(str::to_owned)
}

fn diff_ids(config: &Value) -> Vec<String> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The linux/amd64 manifest of an index, else the first one.
fn pick_manifest(index: &Value) -> Option<Value> {
    let list = index.get("manifests")?.as_array()?;
    let amd64 = list.iter().find(|m| {
        m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
            && m.pointer("/platform/architecture").and_then(Value::as_str) == Some("amd64")
    });
    amd64.or_else(|| list.first()).cloned()
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes read so far.
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (tar readers stop at the end-of-archive blocks) and returns
    /// `sha256:<hex>` and the total length.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{}", hex(&self.hasher.finalize())), self.count))
    }

    /// The wrapped reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_from_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_from_name(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_from_name(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_from_name("abc/layer.tar"), None);
        assert!(sha256_hex("sha256:ABC").is_none());
    }
}
