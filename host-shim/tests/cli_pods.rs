//! VM tier, pods from the CLI (issue 10, `docs/pods.md`): every step is a separate `rgcs`
//! process sharing one state directory, as shells would. A pod with a published port, a server
//! from one image and a client from another image reaching it over `localhost`; logs, exec, ps,
//! stop, rm; `run -d` with its own pod; a pod server killed with SIGKILL takes its QEMU with it,
//! is shown dead and does not block the name; nothing is left at the end.
//! Traffic goes only to 127.0.0.1. Needs `RGCS_INITRD` (set by `scripts/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Env {
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Env {
    fn rgcs(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_rgcs"))
            .env(
                "RGCS_INITRD",
                rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}")),
            )
            .env("RGCS_STATE_DIR", self.state.path())
            .args(args)
            .output()
            .unwrap();
        eprintln!(
            "rgcs {args:?} -> {:?}\n  stdout {:?}\n  stderr {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `rgcs args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.rgcs(args);
        assert!(
            out.status.success(),
            "rgcs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cache(&self) -> &str {
        self.cache.path().to_str().unwrap()
    }

    fn pod_dirs(&self) -> usize {
        std::fs::read_dir(self.state.path().join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn server_pid(&self, pod: &str) -> u32 {
        let text =
            std::fs::read_to_string(self.state.path().join("pods").join(pod).join("pod.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        u32::try_from(v["server_pid"].as_u64().unwrap()).unwrap()
    }
}

/// The children of `pid` (from `/proc`, so no procps is needed).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, r)| r.split(' ').nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// The UVM run directories (`$TMPDIR/rgcs-XXXXXX`) whose owner is `pid`.
fn run_dirs_of(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p.join("owner.pid")).is_ok_and(|o| o.trim() == pid.to_string()))
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

#[test]
fn pods_from_the_cli_in_separate_processes() {
    let env = Env {
        state: tempfile::Builder::new()
            .prefix("rgcs-state")
            .tempdir_in("/tmp")
            .unwrap(),
        cache: tempfile::Builder::new()
            .prefix("rgcs-cache")
            .tempdir_in("/tmp")
            .unwrap(),
    };
    let images = tempfile::Builder::new()
        .prefix("rgcs-imgs")
        .tempdir_in("/tmp")
        .unwrap();
    let (img_a, img_b) = (images.path().join("a"), images.path().join("b"));
    rgcs_host_shim::image::demo::build(&img_a, Path::new("/bin/busybox")).unwrap();
    // A different image (two more layers, another config) sharing the base layers by digest.
    rgcs_host_shim::image::demo::build_with_layers(&img_b, Path::new("/bin/busybox"), 2).unwrap();
    let (a, b) = (img_a.to_str().unwrap(), img_b.to_str().unwrap());
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");

    // A pod, a server from image A, a client from image B in the same pod.
    let out = env.ok(&[
        "pod",
        "create",
        "--cache",
        env.cache(),
        "-p",
        &publish,
        "--hostname",
        "podhost",
        "p1",
    ]);
    assert_eq!(out.trim(), "p1");
    let out = env.ok(&[
        "run",
        "-d",
        "--pod",
        "p1",
        "--name",
        "srv",
        a,
        "--",
        "sh",
        "-c",
        "echo served-by-srv > /tmp/index.html; echo srv-started; exec httpd -f -p 8080 -h /tmp",
    ]);
    assert_eq!(out.trim(), "srv");
    // Attached in the pod: the client's output here and its exit code.
    let mut page = String::new();
    for _ in 0..50 {
        let out = env.rgcs(&[
            "run",
            "--pod",
            "p1",
            "--name",
            "cli",
            b,
            "--",
            "sh",
            "-c",
            "hostname; wget -q -O - http://127.0.0.1:8080/index.html",
        ]);
        if out.status.success() {
            page = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        // httpd may not listen yet: the client's record goes, and it is tried again.
        env.ok(&["rm", "cli"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(page, "podhost\nserved-by-srv\n", "the client's output");
    // The published port reaches the server from the host.
    let body = http_get(port, "/index.html").unwrap();
    assert!(body.contains("served-by-srv"), "{body}");
    // Logs, exec, ps.
    let logs = env.ok(&["logs", "srv"]);
    assert!(logs.contains("srv-started"), "{logs}");
    assert_eq!(
        env.ok(&["exec", "srv", "--", "cat", "/etc/hostname"]),
        "podhost\n"
    );
    let exec = env.rgcs(&["exec", "srv", "--", "sh", "-c", "exit 7"]);
    assert_eq!(exec.status.code(), Some(7));
    let ps = env.ok(&["ps"]);
    assert!(ps.contains("srv") && !ps.contains("cli "), "{ps}");
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("cli") && ps.contains("Exited (0)"), "{ps}");
    // Refusals: a taken name, a running container without -f, an unknown pod.
    assert_eq!(
        env.rgcs(&["run", "-d", "--pod", "p1", "--name", "srv", a])
            .status
            .code(),
        Some(125)
    );
    assert!(!env.rgcs(&["rm", "srv"]).status.success());
    assert_eq!(
        env.rgcs(&["run", "-d", "--pod", "nope", a]).status.code(),
        Some(125)
    );
    assert!(
        !env.rgcs(&["pod", "rm", "p1"]).status.success(),
        "a pod with running containers needs -f"
    );
    // Both images are in the cache; one in use cannot be removed.
    let images = env.ok(&["images", "--cache", env.cache()]);
    assert_eq!(images.lines().count(), 3, "{images}");
    assert!(
        !env.rgcs(&["rmi", "--cache", env.cache(), a]).status.success(),
        "rmi of an image in use"
    );
    // stop (httpd as PID 1 dies of SIGTERM: 143), rm, pod rm.
    env.ok(&["stop", "-t", "5", "srv"]);
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (143)") || ps.contains("Exited (137)"), "{ps}");
    env.ok(&["rm", "srv", "cli"]);
    let server = env.server_pid("p1");
    let kids = children(server);
    assert!(!kids.is_empty(), "the pod server runs QEMU and the vsock backend");
    env.ok(&["pod", "rm", "p1"]);
    assert!(
        !alive(server) && kids.iter().all(|k| !alive(*k)),
        "pod rm left processes"
    );
    assert_eq!(env.pod_dirs(), 0);

    // run -d: a pod of its own; the pod server killed with SIGKILL takes its QEMU with it.
    let run_k = || {
        let args = [
            "run",
            "-d",
            "--network",
            "none",
            "--cache",
            env.cache(),
            "--name",
            "k",
            a,
            "--",
            "sleep",
            "1000",
        ];
        env.ok(&args)
    };
    let out = run_k();
    assert_eq!(out.trim(), "k");
    let server = env.server_pid("k");
    let kids = children(server);
    assert!(!kids.is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while kids.iter().any(|k| alive(*k)) || alive(server) {
        assert!(
            Instant::now() < deadline,
            "QEMU or vhost-device-vsock outlived the killed pod server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Dead"), "{ps}");
    let pods = env.ok(&["pod", "ls"]);
    assert!(pods.contains("dead"), "{pods}");
    // The name is free again, and the next boot sweeps the killed server's run directory.
    let stale = run_dirs_of(server);
    assert!(
        !stale.is_empty(),
        "the killed server's run directory is there until swept"
    );
    run_k();
    assert!(
        stale.iter().all(|d| !d.exists()),
        "stale run directories {stale:?}"
    );
    let server = env.server_pid("k");
    env.ok(&["rm", "-f", "k"]);
    assert!(!alive(server), "rm of run -d's container takes its pod down");
    assert_eq!(env.pod_dirs(), 0, "nothing left in the state directory");
    // rmi: both images and every layer disk go.
    env.ok(&["rmi", "--cache", env.cache(), a, b]);
    assert_eq!(env.ok(&["images", "--cache", env.cache()]).lines().count(), 1);
    let disks = std::fs::read_dir(env.cache.path().join("ext4-v1"))
        .unwrap()
        .count();
    assert_eq!(disks, 0, "layer disks left in the cache");
}
