//! The shim's one-shot actions, run by containerd before and after a task's life: `start`
//! (find or start the shim that serves the task, print its address) and `delete` (clean up
//! after a task whose shim is gone, print a `DeleteResponse`). Both run before any async
//! runtime exists.
//!
//! containerd runs `start` with its stdout and stderr captured together and reads the address
//! from them, so `start` prints the address and nothing else, and the daemon it leaves behind
//! gets `/dev/null` for stdio (a daemon holding containerd's pipes would make `start` hang).

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use sha2::{Digest, Sha256};

use super::args::Args;
use super::{timestamp_now, ShimError};
use rgcs_client::spec::{CONTAINER_TYPE, SANDBOX_ID};

/// Where containerd's shims put their sockets (containerd's own constant, whatever its state
/// directory).
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The environment variable that tells `serve` which descriptor is its listening socket.
pub const LISTEN_FD_ENV: &str = "RGCS_SHIM_LISTEN_FD";
/// The shim's PID, in the bundle of the task that started it.
pub const PID_FILE: &str = "shim.pid";

/// The socket of the shim that serves `grouping` (a pod's sandbox ID, or a task's own ID), named
/// like containerd's own shims: the SHA-256 of `address/namespace/grouping`.
pub fn socket_path(address: &str, namespace: &str, grouping: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}/{namespace}/{grouping}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

/// Which shim serves task `id`: its pod's (a CRI workload names its sandbox), else its own.
pub fn grouping(bundle: &Path, id: &str) -> Result<String, ShimError> {
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|e| ShimError::io(format!("read {}", path.display()), e))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| ShimError::Invalid(format!("{}: {e}", path.display())))?;
    let note = |k: &str| {
        spec.pointer(&format!("/annotations/{}", k.replace('/', "~1")))
            .and_then(|v| v.as_str())
    };
    match (note(CONTAINER_TYPE), note(SANDBOX_ID)) {
        (Some("container"), Some(sid)) if !sid.is_empty() => Ok(sid.to_owned()),
        (Some("container"), _) => Err(ShimError::Invalid(format!(
            "{id}: a CRI container without the {SANDBOX_ID} annotation"
        ))),
        _ => Ok(id.to_owned()),
    }
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), ShimError> {
    let tmp = dir.join(format!(".{name}"));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, dir.join(name)))
        .map_err(|e| ShimError::io(format!("write {}/{name}", dir.display()), e))
}

/// `start`: returns the address to print.
pub fn start(args: &Args) -> Result<String, ShimError> {
    let bundle = std::env::current_dir().map_err(|e| ShimError::io("the bundle (cwd)".into(), e))?;
    let group = grouping(&bundle, &args.id)?;
    let sock = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", sock.display());
    if group != args.id {
        // A workload joins its pod's shim, which must be running.
        UnixStream::connect(&sock).map_err(|e| {
            ShimError::io(
                format!("the shim of pod {group} ({}) does not answer", sock.display()),
                e,
            )
        })?;
        write_atomic(&bundle, "address", &address)?;
        return Ok(address);
    }
    fs::create_dir_all(SOCKET_DIR).map_err(|e| ShimError::io(format!("create {SOCKET_DIR}"), e))?;
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&sock).is_ok() {
                // A shim already serves this ID (containerd retried `start`).
                write_atomic(&bundle, "address", &address)?;
                return Ok(address);
            }
            let _ = fs::remove_file(&sock);
            UnixListener::bind(&sock).map_err(|e| ShimError::io(format!("bind {}", sock.display()), e))?
        }
        Err(e) => return Err(ShimError::io(format!("bind {}", sock.display()), e)),
    };
    let spawned = spawn_daemon(args, &bundle, &sock, &listener);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_file(&sock);
            return Err(e);
        }
    };
    drop(listener);
    let written = write_atomic(&bundle, PID_FILE, &child.to_string())
        .and_then(|()| write_atomic(&bundle, "address", &address));
    if let Err(e) = written {
        // containerd will not know this daemon: it must not outlive the failed start.
        if let Ok(pid) = i32::try_from(child) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = fs::remove_file(&sock);
        return Err(e);
    }
    Ok(address)
}

fn spawn_daemon(args: &Args, bundle: &Path, sock: &Path, listener: &UnixListener) -> Result<u32, ShimError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fs::set_permissions(sock, fs::Permissions::from_mode(0o600))
        .map_err(|e| ShimError::io("chmod the shim socket".into(), e))?;
    let fd = listener.as_raw_fd();
    // Inherited by the daemon (and only by it: it sets close-on-exec again at once).
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| ShimError::io("clear FD_CLOEXEC".into(), e.into()))?;
    let exe = std::env::current_exe().map_err(|e| ShimError::io("find our own binary".into(), e))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-address",
        &args.address,
        "-id",
        &args.id,
    ])
    .args(["-publish-binary", &args.publish_binary])
    .args(args.debug.then_some("-debug"))
    .arg("serve")
    .current_dir(bundle)
    .env(LISTEN_FD_ENV, fd.to_string())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    // Out of containerd's process group: its signals are not ours.
    .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| ShimError::io("start the shim daemon".into(), e))?;
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    Ok(child.id())
}

/// `delete`: the shim of this task is gone (or going); removes what it may have left (its
/// socket, its daemon if it still runs, the rootfs mount) and returns the response to print.
pub fn delete(args: &Args) -> Result<Vec<u8>, ShimError> {
    let bundle = match &args.bundle {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir().map_err(|e| ShimError::io("the bundle (cwd)".into(), e))?,
    };
    // The daemon this task started (a pod's or a standalone task's): it exits by itself after
    // containerd's Shutdown; one that does not (hung, or containerd gave up on it) is killed.
    // Its UVM dies with it (PR_SET_PDEATHSIG).
    if let Some(pid) = fs::read_to_string(bundle.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        stop_daemon(pid, Duration::from_secs(5));
        let sock = socket_path(&args.address, &args.namespace, &args.id);
        if UnixStream::connect(&sock).is_err() {
            let _ = fs::remove_file(&sock);
        }
    }
    super::rootfs::unmount_host_rootfs(&bundle.join("rootfs"));
    let resp = DeleteResponse {
        pid: 0,
        exit_status: 128 + 9,
        exited_at: Some(timestamp_now()).into(),
        ..Default::default()
    };
    resp.write_to_bytes()
        .map_err(|e| ShimError::Invalid(format!("encode DeleteResponse: {e}")))
}

/// Waits up to `grace` for daemon `pid` to exit, then kills it. Only a process that is this
/// binary (by `/proc/PID/exe`) is signalled: the PID may have been reused.
fn stop_daemon(pid: u32, grace: Duration) {
    let ours = || {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        exe.is_some() && exe == std::env::current_exe().ok()
    };
    let deadline = Instant::now() + grace;
    while crate::sys::process::running_since(pid).is_some() && ours() {
        if Instant::now() >= deadline {
            if let Ok(p) = i32::try_from(pid) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
            // stderr is containerd's "cleanup warnings".
            eprintln!("containerd-shim-rgcs-v1: the shim (pid {pid}) did not exit within {grace:?}: killed");
            // Until it is gone its socket still accepts: wait (briefly) before judging it dead.
            let gone = Instant::now() + Duration::from_secs(2);
            while crate::sys::process::running_since(pid).is_some() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints the address (`start`) or the response (`delete`) on stdout, and nothing more.
pub fn print(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn socket_names_follow_containerd() {
        let p = socket_path("/run/containerd/containerd.sock", "default", "abc");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64);
        assert!(p.starts_with(SOCKET_DIR));
        assert_ne!(p, socket_path("/run/containerd/containerd.sock", "k8s.io", "abc"));
    }

    #[test]
    fn workloads_group_with_their_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: serde_json::Value| fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        write(serde_json::json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"}}));
        assert_eq!(grouping(dir.path(), "c1").unwrap(), "pod1");
        write(serde_json::json!({"annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "pod1"}}));
        assert_eq!(grouping(dir.path(), "pod1").unwrap(), "pod1");
        write(serde_json::json!({"process": {}}));
        assert_eq!(grouping(dir.path(), "solo").unwrap(), "solo");
        write(serde_json::json!({"annotations": {CONTAINER_TYPE: "container"}}));
        assert!(grouping(dir.path(), "c1").is_err());
        fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(grouping(dir.path(), "c1").is_err());
    }
}
