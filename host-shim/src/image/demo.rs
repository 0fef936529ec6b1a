//! A small OCI image built locally from Debian's busybox-static, for the README's main job and the
//! VM tests: no registry, no download. Three layers, so that the overlay, a whiteout and an opaque
//! directory are all exercised:
//!
//! 1. base: `/bin/busybox` with its applets as symlinks, `/etc/passwd`, `/etc/group`, `/tmp`,
//!    `/etc/motd-old`, `/var/cache/old.txt`;
//! 2. change: deletes `/etc/motd-old` (whiteout), replaces `/var/cache` (opaque) with `new.txt`;
//! 3. app: `/etc/rgcs-demo` and `/hello.sh`, the default command.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

/// The busybox applets linked in the demo image's `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "true", "false", "sleep", "id", "env", "pwd", "mkdir", "rm", "touch", "stat",
    "test", "ps", "kill", "stty", "head", "tail", "grep", "wc", "dd", "sync", "hostname", "uname", "date",
    "printf", "sed", "awk", "find", "mount", "cp", "mv", "chmod", "seq", "yes", "tr", "tee", "nproc", "free",
];

/// Errors of the demo image builder.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// busybox-static is missing (`scripts/setup.sh` installs it).
    #[error("cannot read {path} (install busybox-static)")]
    Busybox {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the layout failed.
    #[error("cannot write the image layout under {path}")]
    Write {
        /// The layout directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

struct LayerTar(Builder<Vec<u8>>);

impl LayerTar {
    fn new() -> Self {
        Self(Builder::new(Vec::new()))
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.0
            .append_data(&mut header(EntryType::Directory, mode, 0), path, io::empty())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.0.append_data(
            &mut header(EntryType::Regular, mode, data.len() as u64),
            path,
            data,
        )
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.0
            .append_link(&mut header(EntryType::Symlink, 0o777, 0), path, target)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.0.into_inner()
    }
}

fn layers(busybox: &[u8], extra: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut base = LayerTar::new();
    for d in [
        "bin",
        "etc",
        "tmp",
        "var",
        "var/cache",
        "root",
        "dev",
        "proc",
        "sys",
    ] {
        base.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    base.file("bin/busybox", busybox, 0o755)?;
    for applet in APPLETS {
        base.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    base.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        0o644,
    )?;
    base.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    base.file("etc/motd-old", b"this file is deleted by the next layer\n", 0o644)?;
    base.file(
        "var/cache/old.txt",
        b"hidden by the opaque directory above\n",
        0o644,
    )?;

    let mut change = LayerTar::new();
    change.dir("etc", 0o755)?;
    change.file("etc/.wh.motd-old", b"", 0o644)?;
    change.dir("var/cache", 0o755)?;
    change.file("var/cache/.wh..wh..opq", b"", 0o644)?;
    change.file("var/cache/new.txt", b"from the change layer\n", 0o644)?;

    let mut app = LayerTar::new();
    app.file(
        "etc/rgcs-demo",
        b"rgcs demo image: busybox in three layers\n",
        0o644,
    )?;
    app.file(
        "hello.sh",
        b"#!/bin/sh\necho \"hello from rgcs: $(cat /etc/rgcs-demo)\"\necho \"kernel $(uname -r), uid $(id -u), pid $$\"\n",
        0o755,
    )?;
    let mut all = vec![base.finish()?, change.finish()?, app.finish()?];
    for i in 0..extra {
        let mut layer = LayerTar::new();
        layer.dir("layers", 0o755)?;
        layer.file(
            &format!("layers/{i:02}"),
            format!("layer {i}\n").as_bytes(),
            0o644,
        )?;
        all.push(layer.finish()?);
    }
    Ok(all)
}

fn sha(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    e.finish()
}

fn put_blob(root: &Path, data: &[u8]) -> io::Result<String> {
    let d = sha(data);
    let hex = d.trim_start_matches("sha256:");
    fs::write(root.join("blobs/sha256").join(hex), data)?;
    Ok(d)
}

fn write_layout(root: &Path, busybox: &[u8], extra: usize, cmd: &[&str]) -> io::Result<()> {
    fs::create_dir_all(root.join("blobs/sha256"))?;
    let layers = layers(busybox, extra)?;
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let mut descs = Vec::new();
    for l in &layers {
        let blob = gzip(l)?;
        let d = put_blob(root, &blob)?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": blob.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Cmd": cmd,
            "Env": ["PATH=/bin", "HOME=/root"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_digest = put_blob(root, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))?;
    let manifest_digest = put_blob(root, &manifest)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
        "platform": {"os": "linux", "architecture": "amd64"}}]});
    fs::write(root.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Writes the demo image as an OCI image layout directory at `out` (replacing what is there),
/// from the static busybox at `busybox`.
pub fn build(out: &Path, busybox: &Path) -> Result<(), DemoError> {
    build_with_layers(out, busybox, 0)
}

/// Like [`build`], with `extra` more layers on top, each adding `/layers/<NN>` (for tests of
/// images with many layers).
pub fn build_with_layers(out: &Path, busybox: &Path, extra: usize) -> Result<(), DemoError> {
    build_with_cmd(out, busybox, extra, &["/hello.sh"])
}

/// Like [`build_with_layers`], with `cmd` as the image's command (e.g. a pause image for
/// containerd's CRI: `sleep` that never ends).
pub fn build_with_cmd(out: &Path, busybox: &Path, extra: usize, cmd: &[&str]) -> Result<(), DemoError> {
    let bb = fs::read(busybox).map_err(|source| DemoError::Busybox {
        path: busybox.into(),
        source,
    })?;
    let write_err = |source| DemoError::Write {
        path: out.into(),
        source,
    };
    if out.exists() {
        fs::remove_dir_all(out).map_err(write_err)?;
    }
    write_layout(out, &bb, extra, cmd).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{import, NoProgress};

    #[test]
    fn the_demo_image_imports_with_its_whiteout_and_opaque_directory() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("demo");
        build(&layout, Path::new("/bin/busybox")).unwrap();
        let cache = dir.path().join("cache");
        let img = import(&layout, &cache, &NoProgress).unwrap();
        assert_eq!(img.layers.len(), 3);
        assert_eq!(img.config["config"]["Cmd"][0], "/hello.sh");
        // the change layer carries an overlay whiteout for /etc/motd-old
        let change = ext4_view::Ext4::load_from_path(&img.layers[1].path).unwrap();
        let wh = change.symlink_metadata("/etc/motd-old").unwrap();
        assert!(wh.file_type().is_char_dev(), "{:?}", wh.file_type());
        assert_eq!(
            change.read("/var/cache/new.txt").unwrap(),
            b"from the change layer\n"
        );
    }
}
