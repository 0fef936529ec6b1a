//! VM tier, `rgcs run`'s exit codes in docker's habits: the container's own code; 127 when the
//! program does not exist, 126 when it cannot be executed (both with the reason, not 125); 125
//! for rgcs's own failures, and a file that is not an image is named, never quoted.
//! Needs `RGCS_INITRD` (set by `scripts/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::Command;

fn rgcs(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rgcs"));
    c.env(
        "RGCS_INITRD",
        rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}")),
    )
    .arg("run")
    .arg("--network")
    .arg("none")
    .arg("--cache")
    .arg(cache);
    c
}

#[test]
fn run_exits_with_the_containers_code_or_dockers() {
    let work = tempfile::Builder::new()
        .prefix("rgcs-cliexit")
        .tempdir_in("/tmp")
        .unwrap();
    let image = work.path().join("image");
    rgcs_host_shim::image::demo::build(&image, Path::new("/bin/busybox")).unwrap();
    let cache = work.path().join("cache");
    for (args, code, says) in [
        (&["--", "sh", "-c", "exit 3"][..], 3, ""),
        (&["--", "no-such-program"], 127, "'no-such-program' not found"),
        (&["--", "/etc/passwd"], 126, "does not have correct permissions"),
    ] {
        let out = rgcs(&cache).arg(&image).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Not an image: 125, named, and none of the file's bytes in the message.
    let out = rgcs(&cache).arg("/etc/passwd").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("/etc/passwd is not an image"), "{stderr}");
    assert!(!stderr.contains("root:"), "{stderr}");
}
