//! VM tier, the warm pool from the CLI (issue 12, `docs/warm-start.md`): `rgcs run` in a UVM
//! booted ahead of time behaves as in a cold one. Two warm runs read different random bytes and
//! boot IDs, see the host's time, exit with their container's code, relay stdin and a volume, and
//! see nothing of each other; each warm UVM is used once and is gone after its run, and the pool
//! refills; a terminal is sized through the lease; a run whose boot options differ boots cold; a client killed with SIGKILL takes its
//! container and UVM with it; `pool stop` leaves no server, QEMU or directory behind.
//! No network traffic (`--network none`). Needs `RGCS_INITRD` (set by `scripts/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Env {
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
    image: PathBuf,
    _images: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .unwrap()
        };
        let images = dir("rgcs-imgs");
        let image = images.path().join("demo");
        rgcs_host_shim::image::demo::build(&image, Path::new("/bin/busybox")).unwrap();
        Self {
            state: dir("rgcs-state"),
            cache: dir("rgcs-cache"),
            image,
            _images: images,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rgcs"));
        c.env(
            "RGCS_INITRD",
            rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}")),
        )
        .env("RGCS_STATE_DIR", self.state.path())
        .env("RGCS_RUN_MARKS", "1")
        .args(args);
        c
    }

    fn rgcs(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        eprintln!(
            "rgcs {args:?} -> {:?}\n  stdout {:?}\n  stderr {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `run --network none --cache C [extra…] IMAGE -- CMD…`.
    fn run_argv<'a>(&'a self, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            "--network",
            "none",
            "--cache",
            self.cache.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend([self.image.to_str().unwrap(), "--"]);
        args.extend_from_slice(cmd);
        args
    }

    /// `rgcs run … IMAGE -- sh -c SCRIPT` with `extra` options first.
    fn run(&self, extra: &[&str], script: &str) -> Run {
        Run::of(self.rgcs(&self.run_argv(extra, &["sh", "-c", script])))
    }

    fn pool(&self) -> rgcs_host_shim::warm::Pool {
        rgcs_host_shim::warm::Pool::new(&rgcs_host_shim::pod::state::StateDir::new(Some(
            self.state.path().to_path_buf(),
        )))
    }

    /// (name, server PID) of the warm UVMs in `phase`.
    fn warm(&self, phase: rgcs_host_shim::warm::WarmPhase) -> Vec<(String, u32)> {
        self.pool()
            .entries()
            .into_iter()
            .filter(|e| e.alive)
            .filter_map(|e| {
                let r = e.record?;
                (r.phase == phase).then_some((e.dir.name, r.server_pid))
            })
            .collect()
    }

    fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.warm(rgcs_host_shim::warm::WarmPhase::Ready).len() < n {
            assert!(Instant::now() < deadline, "the pool did not refill to {n}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    warm: bool,
}

impl Run {
    fn of(out: Output) -> Self {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warm = stderr.lines().any(|l| l.starts_with("rgcs-mark leased "));
        let booted = stderr.lines().any(|l| l.starts_with("rgcs-mark booted "));
        assert!(warm != booted, "a run is either warm or cold: {stderr}");
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            warm,
        }
    }
}

/// Runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// Every descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &(c, pp) in &parents {
            if pp == p {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

fn wait_dead(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "{what} still runs: {pids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unix_now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

const PROBE: &str = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
     cat /proc/sys/kernel/random/boot_id; date +%s; ls /tmp; echo mine > /tmp/left-by-$1; exit 7";

#[test]
fn warm_runs_behave_like_cold_ones() {
    let env = Env::new();
    let out = env.rgcs(&["pool", "start", "--size", "2"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pool: 2 warm UVM(s) ready"
    );
    let first = env.warm(rgcs_host_shim::warm::WarmPhase::Ready);
    assert_eq!(first.len(), 2);
    let tree: Vec<u32> = first
        .iter()
        .flat_map(|(_, pid)| std::iter::once(*pid).chain(descendants(*pid)))
        .collect();
    assert!(
        tree.len() >= 6,
        "each server has QEMU and vhost-device-vsock: {tree:?}"
    );
    // Idle a while: a warm UVM's clock must keep the host's time.
    std::thread::sleep(Duration::from_secs(3));

    // Two warm runs, one after the other (one lease each).
    let mut probes = Vec::new();
    for who in ["a", "b"] {
        let before = unix_now();
        let r = env.run(&[], &PROBE.replace("$1", who));
        let after = unix_now();
        assert!(r.warm, "run {who} should lease a warm UVM");
        assert_eq!(r.code, Some(7), "the container's exit code");
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0].len(), 32, "16 random bytes in hex: {lines:?}");
        let guest_time: i64 = lines[2].parse().unwrap();
        assert!(
            (before - 2..=after + 2).contains(&guest_time),
            "guest time {guest_time} outside the host's [{before}, {after}] ± 2 s"
        );
        assert!(
            !r.stdout.contains("left-by-"),
            "a fresh UVM sees no other container's files: {lines:?}"
        );
        probes.push((lines[0].to_owned(), lines[1].to_owned()));
    }
    assert_ne!(
        probes[0].0, probes[1].0,
        "two warm UVMs read different random bytes"
    );
    assert_ne!(probes[0].1, probes[1].1, "two warm UVMs have different boot IDs");
    // Both first UVMs were used once and are gone with their QEMU and vhost-device-vsock.
    wait_dead(&tree, "a leased UVM's server or its children");
    for (name, _) in &first {
        assert!(
            !env.pool().warm(name).path.exists(),
            "{name}'s directory is removed"
        );
    }

    // The pool refills; stdin and a read-only volume work in a warm UVM as in a cold one.
    env.wait_ready(1);
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("f"), "from the host\n").unwrap();
    let volume = format!("{}:/h:ro", vol.path().display());
    let mut child = env
        .command(&env.run_argv(
            &["-i", "-v", &volume],
            &[
                "sh",
                "-c",
                "cat /h/f; cat; touch /h/g 2>/dev/null || echo read-only",
            ],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"typed in\n").unwrap();
    let r = Run::of(child.wait_with_output().unwrap());
    assert!(r.warm);
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout, "from the host\ntyped in\nread-only\n");

    // A terminal through a warm UVM, sized by the client (resize lines on the lease).
    env.wait_ready(1);
    let cmd = format!(
        "stty rows 30 cols 100; {} run -t --network none --cache {} {} -- sh -c 'tty; stty size; exit 5'",
        env!("CARGO_BIN_EXE_rgcs"),
        env.cache.path().display(),
        env.image.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env(
            "RGCS_INITRD",
            rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}")),
        )
        .env("RGCS_STATE_DIR", env.state.path())
        .env("RGCS_RUN_MARKS", "1")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{shown}");
    assert!(shown.contains("rgcs-mark leased"), "a warm run: {shown:?}");
    assert!(
        shown.contains("/dev/pts/0") && shown.contains("30 100"),
        "{shown:?}"
    );

    // Other boot options: not this pool's UVMs, a cold boot.
    let r = env.run(&["--memory", "384"], "echo cold");
    assert!(!r.warm, "a run with other boot options boots its own UVM");
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "cold\n"));
    // A program that does not exist: docker's 127, from a warm UVM too (which is used up).
    env.wait_ready(1);
    let (_, oldest) = env.warm(rgcs_host_shim::warm::WarmPhase::Ready)[0].clone();
    let oldest_tree: Vec<u32> = std::iter::once(oldest).chain(descendants(oldest)).collect();
    let out = env.rgcs(&env.run_argv(&[], &["no-such-program"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    wait_dead(&oldest_tree, "the warm UVM that refused the program");

    // A client killed with SIGKILL: its container and warm UVM go too.
    env.wait_ready(1);
    let mut client = env
        .command(&env.run_argv(&[], &["sh", "-c", "echo up; sleep 600"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    std::io::Read::read_exact(client.stdout.as_mut().unwrap(), &mut up).unwrap();
    assert_eq!(&up, b"up\n");
    let leased = env.warm(rgcs_host_shim::warm::WarmPhase::Leased);
    assert_eq!(leased.len(), 1, "one warm UVM leased: {leased:?}");
    let (name, server) = leased[0].clone();
    let server_tree: Vec<u32> = std::iter::once(server).chain(descendants(server)).collect();
    client.kill().unwrap();
    client.wait().unwrap();
    wait_dead(&server_tree, "the killed client's warm UVM");
    assert!(!env.pool().warm(&name).path.exists());

    // pool stop: every server, QEMU and directory gone.
    env.wait_ready(1);
    let servers: Vec<u32> = env
        .pool()
        .entries()
        .into_iter()
        .filter_map(|e| e.record.map(|r| r.server_pid))
        .collect();
    let all: Vec<u32> = servers
        .iter()
        .flat_map(|&p| std::iter::once(p).chain(descendants(p)))
        .collect();
    let out = env.rgcs(&["pool", "stop"]);
    assert!(out.status.success());
    wait_dead(&all, "a pool server or its children after pool stop");
    let left: Vec<_> = std::fs::read_dir(env.pool().path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "pool.lock")
        .collect();
    assert!(left.is_empty(), "left in the pool directory: {left:?}");
    // Without a pool, runs boot cold.
    let r = env.run(&[], "echo no pool");
    assert!(!r.warm);
    assert_eq!(r.stdout, "no pool\n");
}
