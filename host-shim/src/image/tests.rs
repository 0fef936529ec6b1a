//! Import tests: OCI layouts and docker-save tars built at test time from `/bin/busybox`, read
//! back with `ext4-view` (and `debugfs` for xattrs, device numbers and link counts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use ext4_view::Ext4;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use super::*;

const LONG_TARGET: &str = "../../usr/share/some/very/long/path/that/does/not/fit/in/the/inode/itself/target";

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer tar under construction.
struct Layer(Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(Builder::new(Vec::new()))
    }
    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(EntryType::Directory, mode, 0, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = header(kind, 0o777, 0, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn dev(mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o666, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        let key = format!("SCHILY.xattr.{name}");
        self.0.append_pax_extensions([(key.as_str(), value)]).unwrap();
        self
    }
    /// An entry with a raw (unchecked) name.
    fn raw(mut self, name: &str, kind: EntryType, data: &[u8]) -> Self {
        let mut h = header(kind, 0o644, 0, 0, data.len() as u64);
        let n = &mut h.as_gnu_mut().unwrap().name;
        n[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn raw_link(mut self, name: &str, kind: EntryType, target: &str) -> Self {
        let mut h = header(kind, 0o777, 0, 0, 0);
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", layout::hex(&Sha256::digest(data)))
}

fn busybox() -> Vec<u8> {
    fs::read("/bin/busybox").expect("/bin/busybox (busybox-static, scripts/setup.sh)")
}

/// Three layers: a base from busybox, a change layer with a whiteout and an opaque dir, and a
/// layer with ownership, a long symlink and a user xattr.
fn layers() -> Vec<Vec<u8>> {
    let bb = busybox();
    let base = Layer::new()
        .dir("./", 0o755)
        .dir("bin", 0o755)
        .file("bin/busybox", &bb, 0o755, 0, 0)
        .link(EntryType::Link, "bin/sh", "bin/busybox")
        .link(EntryType::Symlink, "bin/ls", "busybox")
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644, 0, 0)
        .file("etc/shadow", b"root:*:1::::::\n", 0o640, 0, 42)
        .file("var/cache/old.txt", b"old", 0o644, 0, 0)
        .dev(EntryType::Char, "dev/null", 1, 3)
        .dev(EntryType::Block, "dev/sda", 8, 0)
        .dev(EntryType::Fifo, "run/fifo", 0, 0)
        .file("usr/bin/sudo", b"#!/bin/sh\n", 0o4755, 0, 0)
        .finish();
    let change = Layer::new()
        .file("etc/.wh.shadow", b"", 0o644, 0, 0)
        .dir("var/cache", 0o700)
        .file("var/cache/.wh..wh..opq", b"", 0o644, 0, 0)
        .file("var/cache/new.txt", b"new", 0o644, 0, 0)
        .file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
            0,
            0,
        )
        .finish();
    let user = Layer::new()
        .dir("home/user", 0o700)
        .xattr("user.rgcs", b"v1")
        .file("home/user/notes", b"secret", 0o600, 1000, 1000)
        .link(EntryType::Symlink, "home/user/long", LONG_TARGET)
        .finish();
    vec![base, change, user]
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn put_blob(root: &Path, data: &[u8]) -> String {
    let d = sha(data);
    fs::write(
        root.join("blobs/sha256").join(layout::sha256_hex(&d).unwrap()),
        data,
    )
    .unwrap();
    d
}

/// Writes an OCI layout (layers 0 and 2 gzip, 1 plain) into `root`; returns the diff_ids.
pub fn write_oci(root: &Path, layers: &[Vec<u8>]) -> Vec<String> {
    fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let mut descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (blob, mt) = if i % 2 == 0 {
            (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let d = put_blob(root, &blob);
        descs.push(json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let cfg = config(&diff_ids);
    let cfg_d = put_blob(root, &cfg);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg.len()},
        "layers": descs,
    }))
    .unwrap();
    let m_d = put_blob(root, &manifest);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_d, "size": manifest.len(),
        "platform": {"os": "linux", "architecture": "amd64"}}]});
    fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    diff_ids
}

/// Writes a legacy `docker save` tar to `path`.
pub fn write_docker_save(path: &Path, layers: &[Vec<u8>]) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let cfg = config(&diff_ids);
    let cfg_name = format!("{}.json", layout::sha256_hex(&sha(&cfg)).unwrap());
    let mut b = Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = header(EntryType::Regular, 0o644, 0, 0, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{:064x}/layer.tar", i + 1);
        add(&format!("{:064x}/VERSION", i + 1), b"1.0");
        add(&name, l);
        names.push(name);
    }
    add(&cfg_name, &cfg);
    let manifest = json!([{"Config": cfg_name, "RepoTags": ["rgcs/test:latest"], "Layers": names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.finish().unwrap();
}

fn debugfs(img: &Path, req: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(req)
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_layers(imported: &ImportedImage) {
    let bb = busybox();
    let l0 = &imported.layers[0].path;
    let fs0 = Ext4::load_from_path(l0).unwrap();
    assert_eq!(fs0.read("/bin/busybox").unwrap(), bb);
    assert_eq!(fs0.read("/bin/sh").unwrap(), bb);
    let m = fs0.metadata("/bin/busybox").unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 0, 0));
    assert!(
        debugfs(l0, "stat /bin/busybox").contains("Links: 2"),
        "hard link kept"
    );
    assert_eq!(fs0.read_link("/bin/ls").unwrap().to_str().unwrap(), "busybox");
    let sh = fs0.metadata("/etc/shadow").unwrap();
    assert_eq!((sh.mode() & 0o7777, sh.uid(), sh.gid()), (0o640, 0, 42));
    assert_eq!(fs0.metadata("/usr/bin/sudo").unwrap().mode() & 0o7777, 0o4755);
    assert!(fs0
        .symlink_metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_dev());
    assert!(fs0
        .symlink_metadata("/dev/sda")
        .unwrap()
        .file_type()
        .is_block_dev());
    assert!(fs0.symlink_metadata("/run/fifo").unwrap().file_type().is_fifo());
    let null = debugfs(l0, "stat /dev/null");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let root = fs0.metadata("/").unwrap();
    assert_eq!((root.mode() & 0o7777, root.uid()), (0o755, 0));
    assert_eq!(
        fs0.metadata("/bin/busybox").unwrap().modified().seconds(),
        1_700_000_000
    );

    let l1 = &imported.layers[1].path;
    let fs1 = Ext4::load_from_path(l1).unwrap();
    let wh = fs1.symlink_metadata("/etc/shadow").unwrap();
    assert!(wh.file_type().is_char_dev());
    assert_eq!(wh.mode() & 0o7777, 0);
    assert!(debugfs(l1, "stat /etc/shadow").contains("Device major/minor number: 00:00"));
    assert!(!fs1.exists("/etc/.wh.shadow").unwrap());
    assert!(!fs1.exists("/var/cache/.wh..wh..opq").unwrap());
    assert_eq!(fs1.read("/var/cache/new.txt").unwrap(), b"new");
    assert_eq!(fs1.metadata("/var/cache").unwrap().mode() & 0o7777, 0o700);
    let opq = debugfs(l1, "ea_list /var/cache");
    assert!(
        opq.contains("trusted.overlay.opaque") && opq.contains("\"y\""),
        "{opq}"
    );

    let l2 = &imported.layers[2].path;
    let fs2 = Ext4::load_from_path(l2).unwrap();
    let n = fs2.metadata("/home/user/notes").unwrap();
    assert_eq!((n.mode() & 0o7777, n.uid(), n.gid()), (0o600, 1000, 1000));
    assert_eq!(fs2.read("/home/user/notes").unwrap(), b"secret");
    let long = fs2.read_link("/home/user/long").unwrap();
    assert_eq!(long.to_str().unwrap(), LONG_TARGET);
    let xa = debugfs(l2, "ea_list /home/user/notes");
    assert!(xa.contains("user.rgcs") && xa.contains("\"v1\""), "{xa}");
}

#[test]
fn imports_an_oci_layout_and_caches_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layout_dir = tmp.path().join("oci");
    let diff_ids = write_oci(&layout_dir, &layers());
    let cache = tmp.path().join("cache");
    let imported = import(&layout_dir, &cache, &NoProgress).unwrap();
    assert_eq!(imported.layers.len(), 3);
    let got: Vec<_> = imported.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(got, diff_ids);
    assert!(imported
        .layers
        .iter()
        .all(|l| !l.cached && l.path.starts_with(&cache)));
    assert_eq!(imported.config.pointer("/config/Cmd/0").unwrap(), "/bin/sh");
    check_layers(&imported);
    // No temporary trees or images are left behind.
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);

    let again = import(&layout_dir, &cache, &NoProgress).unwrap();
    assert!(again.layers.iter().all(|l| l.cached));
    assert_eq!(again.layers[0].path, imported.layers[0].path);
}

#[test]
fn imports_a_docker_save_tar_to_the_same_cache_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let ls = layers();
    let archive = tmp.path().join("image.tar");
    write_docker_save(&archive, &ls);
    let imported = import(&archive, &tmp.path().join("cache"), &NoProgress).unwrap();
    check_layers(&imported);
    let oci = tmp.path().join("oci");
    let diff_ids = write_oci(&oci, &ls);
    let got: Vec<_> = imported.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(got, diff_ids, "docker-save and OCI share cache keys");
    let again = import(&oci, &tmp.path().join("cache"), &NoProgress).unwrap();
    assert!(again.layers.iter().all(|l| l.cached));
}

#[test]
fn imports_an_oci_layout_packed_in_a_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("oci");
    let diff_ids = write_oci(&dir, &layers());
    let archive = tmp.path().join("oci.tar");
    let mut b = Builder::new(fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &dir).unwrap();
    b.finish().unwrap();
    drop(b);
    let imported = import(&archive, &tmp.path().join("cache"), &NoProgress).unwrap();
    let got: Vec<_> = imported.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(got, diff_ids);
    check_layers(&imported);
}

fn import_single(layer: Vec<u8>) -> Result<ImportedImage, ImageError> {
    let tmp = tempfile::tempdir().unwrap();
    write_oci(&tmp.path().join("oci"), &[layer]);
    import(&tmp.path().join("oci"), &tmp.path().join("cache"), &NoProgress)
}

fn assert_unsafe(r: Result<ImportedImage, ImageError>, what: &str) {
    match r {
        Err(ImageError::Extract {
            source: ExtractError::Unsafe { why, .. },
            ..
        }) => assert!(why.contains(what), "{why}"),
        other => panic!("expected an unsafe-entry error about {what}, got {other:?}"),
    }
}

#[test]
fn hostile_tars_are_refused() {
    assert_unsafe(
        import_single(Layer::new().raw("../x", EntryType::Regular, b"x").finish()),
        "..",
    );
    assert_unsafe(
        import_single(Layer::new().raw("a/../../x", EntryType::Regular, b"x").finish()),
        "..",
    );
    assert_unsafe(
        import_single(Layer::new().raw("/etc/x", EntryType::Regular, b"x").finish()),
        "absolute",
    );
    let through_symlink = Layer::new()
        .link(EntryType::Symlink, "evil", "/tmp")
        .raw("evil/pwned", EntryType::Regular, b"x")
        .finish();
    assert_unsafe(import_single(through_symlink), "symlink");
    let dir_symlink = Layer::new()
        .link(EntryType::Symlink, "d", "../../..")
        .raw("d/.wh..wh..opq", EntryType::Regular, b"")
        .finish();
    assert_unsafe(import_single(dir_symlink), "symlink");
    let hardlink_out = Layer::new()
        .raw_link("h", EntryType::Link, "../../etc/passwd")
        .finish();
    assert_unsafe(import_single(hardlink_out), "..");
    let hardlink_via_symlink = Layer::new()
        .link(EntryType::Symlink, "s", "/etc")
        .raw_link("h", EntryType::Link, "s/passwd")
        .finish();
    assert_unsafe(import_single(hardlink_via_symlink), "symlink");
    assert!(!Path::new("/tmp/pwned").exists());
}

#[test]
fn corrupt_blobs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("oci");
    let layer = Layer::new().file("a", b"hello", 0o644, 0, 0).finish();
    write_oci(&root, std::slice::from_ref(&layer));
    // Replace the (gzip) layer blob's content, keeping its name.
    let name = layout::sha256_hex(&sha(&gzip(&layer))).unwrap().to_owned();
    let other = gzip(&Layer::new().file("a", b"HELLO", 0o644, 0, 0).finish());
    fs::write(root.join("blobs/sha256").join(&name), other).unwrap();
    let cache = tmp.path().join("cache");
    match import(&root, &cache, &NoProgress) {
        Err(ImageError::DigestMismatch { what, .. }) => assert!(what.contains(&name), "{what}"),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(fs::read_dir(cache.join(CACHE_VERSION)).unwrap().count(), 0);
}

#[test]
fn bench_import_reports_both_rates() {
    let tmp = tempfile::tempdir().unwrap();
    write_oci(&tmp.path().join("oci"), &layers());
    let b = bench_import(&tmp.path().join("oci"), tmp.path()).unwrap();
    assert!(
        b.bytes > 1_000_000 && b.ours_mb_s > 0.0 && b.mkfs_mb_s > 0.0,
        "{b:?}"
    );
}

#[test]
fn truncated_gzip_is_a_read_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("oci");
    let layer = Layer::new().file("bin/busybox", &busybox(), 0o755, 0, 0).finish();
    write_oci(&root, std::slice::from_ref(&layer));
    let gz = gzip(&layer);
    let name = layout::sha256_hex(&sha(&gz)).unwrap().to_owned();
    fs::write(root.join("blobs/sha256").join(&name), &gz[..gz.len() / 2]).unwrap();
    let cache = tmp.path().join("cache");
    let err = import(&root, &cache, &NoProgress).unwrap_err();
    assert!(
        matches!(err, ImageError::Io { .. } | ImageError::Extract { .. }),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(cache.join(CACHE_VERSION)).unwrap().count(), 0);
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
}

/// `rgcs run /etc/passwd` used to print the file inside its error: a file that is not a tar is
/// now "not an image", and no byte of it appears in the message.
#[test]
fn a_file_that_is_not_an_archive_is_not_an_image_and_is_not_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "root:x:0:0:secret-line:/root:/bin/bash\n\u{1b}[2J".repeat(40);
    for (name, bytes) in [
        ("passwd", secret.clone().into_bytes()),
        ("passwd.gz", gzip(secret.as_bytes())),
        ("short", b"abc".to_vec()),
    ] {
        let f = tmp.path().join(name);
        std::fs::write(&f, &bytes).unwrap();
        let e = import(&f, &tmp.path().join("cache"), &NoProgress).unwrap_err();
        let text = rgcs_protocol::error_chain(&e);
        assert!(matches!(e, ImageError::NotAnImage(_)), "{name}: {text}");
        assert!(
            !text.contains("secret-line") && !text.contains('\u{1b}'),
            "{name}: {text}"
        );
    }
    // A real (empty) tar still reads as one.
    let empty = Builder::new(Vec::new()).into_inner().unwrap();
    assert!(extract::is_tar_header(&empty));
    assert!(extract::is_tar_header(&layers()[0]));
}
