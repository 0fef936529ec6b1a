//! Test-only isolation: temporary directories and running a closure in a forked child, optionally in
//! fresh namespaces, so that privileged tests never touch the host's `/dev`, `/proc`, `/sys`, network
//! or cgroups, and so that tests which call `waitpid(-1)` only ever see their own children.
//!
//! Privileged tests require root. They fail with a clear message when not run as root; they are never
//! skipped silently.

use std::fs::File;
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, geteuid, mkdtemp, pipe2, ForkResult};

/// A directory under the system temp dir, removed (recursively) on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let template = std::env::temp_dir().join("rgcs-init-test.XXXXXX");
        TempDir(mkdtemp(&template).expect("mkdtemp"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Panics unless the tests run as root, naming the test's need.
pub(crate) fn require_root(what: &str) {
    assert!(
        geteuid().is_root(),
        "{what} requires root (a private mount/net namespace); run `cargo test -p rgcs-init` as root"
    );
}

/// Runs `f` in a forked child. With `namespaces` non-empty the child first calls `unshare` with them;
/// with `CLONE_NEWNS` it also makes every mount private so nothing propagates back to the host.
/// Panics (failing the test) if the child fails, panics or dies, with the child's message.
///
/// The child is a fork of the multi-threaded test harness, so `f` must stick to plain syscalls and
/// allocation (glibc keeps malloc usable after fork), and must not read the environment.
pub(crate) fn run_in_child(namespaces: CloneFlags, f: impl FnOnce() -> Result<(), String>) {
    if !namespaces.is_empty() {
        require_root("this test");
    }
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    // SAFETY: the child only runs `f` and the setup below (syscalls, allocation), reports through the
    // pipe and leaves with `_exit`, never returning into the test harness or running its destructors.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(rd);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| enter(namespaces).and_then(|()| f())));
            let (code, msg) = match outcome {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(msg)) => (1, msg),
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "panic".to_owned());
                    (2, format!("panicked: {msg}"))
                }
            };
            let _ = nix::unistd::write(&wr, msg.as_bytes());
            // SAFETY: `_exit` ends the forked child at once without running the parent's atexit
            // handlers or unwinding into the harness; it has no preconditions.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(
                status,
                WaitStatus::Exited(child, 0),
                "sandboxed child failed: {msg}"
            );
        }
    }
}

fn enter(namespaces: CloneFlags) -> Result<(), String> {
    if namespaces.is_empty() {
        return Ok(());
    }
    unshare(namespaces).map_err(|e| format!("unshare({namespaces:?}): {e}"))?;
    if namespaces.contains(CloneFlags::CLONE_NEWNS) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make / private: {e}"))?;
    }
    Ok(())
}

/// Turns any displayable error into the `String` error used by sandboxed closures.
pub(crate) fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Fails with `msg` unless `cond` holds (an `assert!` that reports through the child's pipe).
pub(crate) fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Polls `cond` every millisecond until it returns `Ok(true)`, for at most 10 s.
pub(crate) fn wait_until(mut cond: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("condition not met within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
