//! Support shared by the agent's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

use std::path::PathBuf;

/// A scratch directory removed on drop (`.0` is its path).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/rgcs-<tag>-<pid>-<nanos>`.
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("rgcs-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes (no blind sleeps in tests).
pub async fn wait_until<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A busybox root filesystem at `root`: `/bin/busybox` plus one symlink per applet, `/etc/passwd`
/// and `/etc/group` (root and alice).
pub fn busybox_rootfs(root: &std::path::Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/alice"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n",
    )
    .unwrap();
}
