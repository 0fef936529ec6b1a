//! VM tier through containerd (issue 11, `docs/containerd.md`): a containerd 1.6 started by the
//! test with its own config, root and state directories (and stopped after), the demo image
//! imported with `ctr image import`, and `containerd-shim-rgcs-v1` (this build) on its PATH.
//! `ctr run --rm` with output and exit code, `-t` with the window size, stdin to EOF, `exec`,
//! `ps`, `metrics`, `kill`, two tasks at once; then faults: the UVM killed under a running task
//! (containerd sees the exit), the shim killed (containerd cleans up through `delete`). After
//! each step nothing is left: no QEMU, shim, socket, mount or bundle.
//! Needs `RGCS_INITRD` (set by `scripts/test.sh`) and containerd (`scripts/setup.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rgcs_host_shim::bench::ctrd::{text, Containerd, Netns, RUNTIME};

/// The tests count QEMU processes: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const IMAGE: &str = "docker.io/rgcs/demo:latest";

/// Shim sockets that existed before the tests (another containerd's).
static SOCKETS_BEFORE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn shim_sockets() -> Vec<String> {
    std::fs::read_dir("/run/containerd/s")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn start(netns: Option<&str>) -> Containerd {
    SOCKETS_BEFORE.get_or_init(shim_sockets);
    let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-rgcs-v1"));
    let initrd = rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut c = Containerd::start(netns, shim.parent().unwrap(), &initrd).unwrap();
    c.verbose = true;
    c
}

trait Steps {
    fn must(&self, args: &[&str]) -> String;
    fn run(&self, id: &str, script: &str) -> (Option<i32>, String);
    fn wait_status(&self, id: &str, status: &str, limit: Duration);
    fn assert_clean(&self);
}

impl Steps for Containerd {
    fn must(&self, args: &[&str]) -> String {
        self.ok(args).unwrap()
    }

    /// `ctr run --rm` of the demo image with a shell command; (code, stdout).
    fn run(&self, id: &str, script: &str) -> (Option<i32>, String) {
        let out = self
            .ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, id, "sh", "-c", script])
            .unwrap();
        (out.status.code(), text(&out.stdout))
    }

    fn wait_status(&self, id: &str, status: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let tasks = self.tasks().unwrap();
            if tasks.iter().any(|(i, _, s)| i == id && s == status)
                || (status == "GONE" && !tasks.iter().any(|(i, _, _)| i == id))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not {status} within {limit:?}: {tasks:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Nothing of any task is left: no QEMU or shim, no mount under containerd's directory, no
    /// bundle, no shim socket.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let qemus = processes("qemu-system");
            let shims = processes("containerd-shim-rgcs-v1");
            let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(&self.dir.path().display().to_string()))
                .map(str::to_owned)
                .collect();
            let bundles: Vec<String> = ["default", "k8s.io"]
                .iter()
                .flat_map(|ns| self.bundles(ns))
                .collect();
            let before = SOCKETS_BEFORE.get().cloned().unwrap_or_default();
            let sockets: Vec<String> = shim_sockets()
                .into_iter()
                .filter(|s| !before.contains(s))
                .collect();
            if qemus.is_empty()
                && shims.is_empty()
                && mounts.is_empty()
                && bundles.is_empty()
                && sockets.is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: qemu {qemus:?} shims {shims:?} mounts {mounts:?} bundles {bundles:?} sockets {sockets:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// PIDs of processes whose command line mentions `needle` (ours: run by this test's containerd).
fn processes(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if text(&cmd).contains(needle) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn ctr_runs_tasks_in_rgcs_uvms() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = start(None);
    c.import("default", IMAGE, 0).unwrap();
    let mut events = Command::new("ctr")
        .arg("-a")
        .arg(c.sock())
        .arg("events")
        .stdout(std::fs::File::create(c.dir.path().join("events.txt")).unwrap())
        .spawn()
        .unwrap();

    // Output and the exit code through `ctr run --rm`.
    let (code, out) = c.run(
        "t1",
        "echo hello from rgcs; cat /etc/rgcs-demo; echo to-stderr >&2; exit 3",
    );
    assert_eq!(code, Some(3));
    assert_eq!(out, "hello from rgcs\nrgcs demo image: busybox in three layers\n");
    assert!(
        c.log().contains("shim serving"),
        "the shim's log reaches containerd's:\n{}",
        c.log()
    );
    c.assert_clean();

    // A terminal, sized by the client.
    let cmd = format!(
        "stty rows 30 cols 100; ctr -a {} run -t --rm --runtime {RUNTIME} {IMAGE} t2 sh -c 'tty; stty size; exit 5'",
        c.sock().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{shown}");
    assert!(
        shown.contains("/dev/pts/0") && shown.contains("30 100"),
        "{shown:?}"
    );
    c.assert_clean();

    // stdin to EOF: it arrives after the task started (ctr sends CloseIO at its stdin's EOF).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(sleep 12; printf 'line one\\nline two\\n') | ctr -a {} run --rm --runtime {RUNTIME} {IMAGE} t3 sh -c 'wc -l; echo done'",
            c.sock().display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "stdin's EOF did not reach the task");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["2", "done"]
    );
    c.assert_clean();

    // Two long-running tasks at once, each in its own UVM; exec, ps, metrics, kill.
    for id in ["t4", "t5"] {
        c.must(&["run", "-d", "--runtime", RUNTIME, IMAGE, id, "sleep", "1000"]);
    }
    let tasks = c.tasks().unwrap();
    assert_eq!(
        tasks.iter().filter(|(_, _, s)| s == "RUNNING").count(),
        2,
        "{tasks:?}"
    );
    assert_eq!(processes("qemu-system").len(), 2);
    let pids: Vec<u32> = tasks.iter().map(|t| t.1).collect();
    assert_ne!(pids[0], pids[1], "each task reports its own UVM's QEMU");
    let out = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t4",
            "sh",
            "-c",
            "echo in-exec; ls /proc | grep -c '^[0-9]'; exit 4",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stdout).starts_with("in-exec\n"),
        "{}",
        text(&out.stdout)
    );
    let ps = c.must(&["task", "ps", "t4"]);
    assert_eq!(
        ps.lines().count(),
        2,
        "one process (sleep) after the exec ended: {ps}"
    );
    let metrics = c.must(&["task", "metrics", "t4"]);
    let usage = metrics
        .lines()
        .find(|l| l.starts_with("memory.usage_in_bytes"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .expect("memory usage");
    assert!(usage > 0, "{metrics}");
    assert!(metrics.contains("pids.current             1"), "{metrics}");
    // What the container writes is in containerd's snapshot at once (the host's overlay under
    // the bundle), though the guest caches its root.
    c.must(&[
        "task",
        "exec",
        "--exec-id",
        "w1",
        "t4",
        "sh",
        "-c",
        "echo written-in-guest > /marker",
    ]);
    let marker = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/default/t4/rootfs/marker");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "written-in-guest\n");
    // Pause is refused clearly, not hung.
    let out = c.ctr(&["task", "pause", "t4"]).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not implemented"),
        "{}",
        text(&out.stderr)
    );
    // sleep as PID 1 ignores SIGTERM, as under runc; SIGKILL to all ends it.
    c.must(&["task", "kill", "t5"]);
    std::thread::sleep(Duration::from_secs(2));
    c.wait_status("t5", "RUNNING", Duration::from_secs(1));
    for id in ["t4", "t5"] {
        c.must(&["task", "kill", "-a", "-s", "KILL", id]);
        c.wait_status(id, "STOPPED", Duration::from_secs(30));
        c.must(&["task", "rm", id]);
        c.must(&["container", "rm", id]);
    }
    c.assert_clean();

    // A process killed by the container's memory limit: containerd gets TaskOOM, the task lives on.
    // (The events of the steps above are in the same stream: exec-added, exec-started.)
    let seen = || std::fs::read_to_string(c.dir.path().join("events.txt")).unwrap_or_default();
    c.must(&[
        "run",
        "-d",
        "--memory-limit",
        "33554432",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t6",
        "sh",
        "-c",
        "head -c 200000000 /dev/zero | tail > /dev/null; sleep 1000",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen()
        .lines()
        .any(|l| l.contains("/tasks/oom") && l.contains("t6"))
    {
        assert!(
            Instant::now() < deadline,
            "no TaskOOM for t6 in containerd's events:\n{}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    c.wait_status("t6", "RUNNING", Duration::from_secs(1));
    c.must(&["task", "kill", "-a", "-s", "KILL", "t6"]);
    c.wait_status("t6", "STOPPED", Duration::from_secs(30));
    c.must(&["task", "rm", "t6"]);
    c.must(&["container", "rm", "t6"]);
    let _ = events.kill();
    let _ = events.wait();
    let all = seen();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/tasks/exec-added",
        "/tasks/exec-started",
    ] {
        assert!(all.contains(topic), "no {topic} event:\n{all}");
    }
    c.assert_clean();

    // An exec into a task that does not exist fails clearly.
    let out = c
        .ctr(&["task", "exec", "--exec-id", "e2", "nope", "true"])
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

#[test]
fn containerd_sees_uvm_and_shim_deaths() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = start(None);
    c.import("default", IMAGE, 0).unwrap();

    // The UVM killed under a running task: containerd sees the task stop.
    c.must(&["run", "-d", "--runtime", RUNTIME, IMAGE, "f1", "sleep", "1000"]);
    let (_, qemu, _) = c.tasks().unwrap().into_iter().find(|t| t.0 == "f1").unwrap();
    assert!(text(&std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap()).contains("qemu-system"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(qemu).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_status("f1", "STOPPED", Duration::from_secs(30));
    c.must(&["task", "rm", "f1"]);
    c.must(&["container", "rm", "f1"]);
    c.assert_clean();

    // The shim killed: containerd runs `delete`, the task goes, its UVM dies with the shim.
    c.must(&["run", "-d", "--runtime", RUNTIME, IMAGE, "f2", "sleep", "1000"]);
    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/default/f2");
    let shim: i32 = std::fs::read_to_string(bundle.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_status("f2", "GONE", Duration::from_secs(30));
    c.must(&["container", "rm", "f2"]);
    c.assert_clean();
    assert!(c.log().contains("cleaning up dead shim"), "{}", c.log());
}

#[test]
fn cri_runs_a_pod_in_one_rgcs_uvm() {
    use rgcs_host_shim::cri::{ContainerConfig, CriClient, PodConfig};
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ns = Netns::new(&format!("rgcs-cri-{}", std::process::id())).unwrap();
    let c = start(Some(&ns.0));
    c.import_pause().unwrap();
    c.import("k8s.io", "docker.io/rgcs/demo:latest", 0).unwrap();
    c.import("k8s.io", "docker.io/rgcs/demo2:latest", 1).unwrap();
    let logs = c.dir.path().join("pod-logs");
    let links_before = ns.links();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cri = CriClient::connect(&c.sock()).await.unwrap();
        let (name, _) = cri.version().await.unwrap();
        assert_eq!(name, "containerd");
        let pod = PodConfig {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            hostname: "web".into(),
            log_directory: logs.display().to_string(),
        };
        let pod_id = cri.run_pod_sandbox(&pod, "rgcs").await.unwrap();
        let ip = cri.pod_ip(&pod_id).await.unwrap();
        assert!(ip.starts_with("10.233.0."), "pod IP {ip:?}");
        assert_eq!(processes("qemu-system").len(), 1);

        let web = ContainerConfig {
            name: "web".into(),
            image: "rgcs/demo:latest".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo hello-log; exec busybox httpd -f -p 8080 -h /etc".into(),
            ],
            log_path: "web.log".into(),
            ..Default::default()
        };
        let other = ContainerConfig {
            name: "other".into(),
            image: "rgcs/demo2:latest".into(),
            command: vec!["sh".into(), "-c".into(), "ls /layers; sleep 1000".into()],
            log_path: "other.log".into(),
            ..Default::default()
        };
        let web_id = cri.create_container(&pod_id, &pod, &web).await.unwrap();
        let other_id = cri.create_container(&pod_id, &pod, &other).await.unwrap();
        cri.start_container(&web_id).await.unwrap();
        cri.start_container(&other_id).await.unwrap();
        assert_eq!(processes("qemu-system").len(), 1, "one UVM per pod");

        let r = cri
            .exec_sync(&web_id, &["sh", "-c", "echo out; echo err >&2; exit 7"], 30)
            .await
            .unwrap();
        assert_eq!(
            (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
            (&b"out\n"[..], &b"err\n"[..], 7)
        );
        // The pod's containers share its network: the second reaches the first on localhost.
        let r = cri
            .exec_sync(
                &other_id,
                &["busybox", "wget", "-qO-", "http://127.0.0.1:8080/rgcs-demo"],
                30,
            )
            .await
            .unwrap();
        assert_eq!(
            text(&r.stdout),
            "rgcs demo image: busybox in three layers\n",
            "{}",
            text(&r.stderr)
        );
        // UpdateContainerResources reaches the container's cgroup in the guest.
        cri.update_memory_limit(&other_id, 100 << 20).await.unwrap();
        let metrics = c.must(&["-n", "k8s.io", "task", "metrics", &other_id]);
        assert!(
            metrics.contains("memory.limit_in_bytes    104857600"),
            "{metrics}"
        );
        let stats = cri.container_stats(&web_id).await.unwrap();
        assert!(stats.working_set > 0 && stats.cpu_ns > 0, "{stats:?}");
        // The CRI log file, written by containerd from the FIFOs.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let web_log = std::fs::read_to_string(logs.join("web.log")).unwrap_or_default();
            let other_log = std::fs::read_to_string(logs.join("other.log")).unwrap_or_default();
            if web_log.contains(" stdout F hello-log") && other_log.contains(" stdout F 00") {
                break;
            }
            assert!(Instant::now() < deadline, "CRI logs: {web_log:?} {other_log:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The pod IP from the test's namespace, through CNI's bridge and the UVM's NIC.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "busybox",
                "wget",
                "-qO-",
                &format!("http://{ip}:8080/rgcs-demo"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            "rgcs demo image: busybox in three layers\n",
            "{}",
            text(&out.stderr)
        );

        cri.stop_pod_sandbox(&pod_id).await.unwrap();
        let (state, _) = cri.container_status(&web_id).await.unwrap();
        assert_eq!(state, 2, "exited after StopPodSandbox");
        cri.remove_pod_sandbox(&pod_id).await.unwrap();
        assert!(
            cri.container_status(&web_id).await.is_err(),
            "removed with the pod"
        );
    });
    c.assert_clean();
    let links = ns.links();
    assert!(
        links.iter().all(|l| links_before.contains(l) || l == "rgcs0"),
        "the pod's veth went with it: {links:?}"
    );
}
