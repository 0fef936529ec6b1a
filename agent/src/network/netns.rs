//! Running code inside another network namespace: a dedicated thread enters it (`setns` changes
//! only the calling thread's namespace) and ends with the work, so no thread of the agent ever
//! goes back to its pool inside a container's namespace. Netlink sockets and child processes
//! created on that thread belong to the namespace.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside the network namespace at `ns` (e.g. `/proc/<pid>/ns/net`).
pub fn run_in<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let target = File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&target, CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("network namespace worker panicked")))
    })
}

/// The network namespace of process `pid`.
pub fn of_pid(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{pid}/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_in_the_target_namespace_and_the_caller_stays() {
        assert!(nix::unistd::geteuid().is_root(), "needs root; does not skip");
        let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        // A namespace kept alive by a sleeping child of its own.
        let mut child = std::process::Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .unwrap();
        let path = of_pid(child.id());
        let mut seen = None;
        for _ in 0..100 {
            let l = std::fs::read_link(&path).ok();
            if l.is_some() && l.as_ref() != Some(&mine) {
                seen = l;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let theirs = seen.expect("unshare created a namespace");
        let inside = run_in(&path, || std::fs::read_link("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(inside, theirs);
        assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), mine);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
