//! In-process tier for the executor: the real `gcs` binary on this host as root (no VM), bridged
//! over a Unix socket and driven by the same host client the CLI and the VM tests use
//! (`rgcs_client::ContainerClient`); stdio "ports" are Unix sockets `PREFIX_<port>` the agent
//! dials (`--stdio-unix-prefix`, the naming vhost-device-vsock gives guest ports). Containers run
//! a busybox rootfs built at test time through the embedded libcontainer (the host's cgroup
//! layout).
//!
//! Requires root: fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::oci_spec::runtime::{ProcessBuilder, Spec, UserBuilder};
use rgcs_client::{BridgeClient, ContainerClient, ContainerError};
use rgcs_protocol::message::{
    ContainerConfig, ContainerNotification, Empty, NotificationType, ProcessParameters, PropertyType,
    SchemaVersion, UVM_CONTAINER_ID,
};
use rgcs_protocol::{HResult, MessageId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;

use common::TempDir;

const STEP: Duration = Duration::from_secs(20);

struct Agent {
    /// The typed client (containers, processes, stdio ports, notifications).
    cc: ContainerClient,
    /// The same bridge, for raw calls.
    client: Arc<BridgeClient>,
    child: tokio::process::Child,
    dir: TempDir,
    /// Notifications consumed by `notification()`.
    seen: AtomicUsize,
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container tier needs root (run `cargo test` as root); it does not skip silently"
    );
}

/// The HRESULT of a failed call (a wait timeout is `0xC0370109`, as on the wire).
fn hresult(e: &ContainerError) -> HResult {
    match e {
        ContainerError::WaitTimeout { .. } => HResult::TIMEOUT,
        other => other.hresult().unwrap_or_else(|| panic!("no HRESULT in {other}")),
    }
}

/// A busybox rootfs under `dir`.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    common::busybox_rootfs(&root);
    root
}

impl Agent {
    async fn start(tag: &str) -> Self {
        Self::start_opts(tag, Opts::default()).await
    }

    async fn start_with(tag: &str, cgroup2: bool) -> Self {
        Self::start_opts(
            tag,
            Opts {
                cgroup2,
                ..Opts::default()
            },
        )
        .await
    }

    /// With `cgroup2`, the agent runs in a private mount namespace with a cgroup2 file system on
    /// `/sys/fs/cgroup` (the UVM's layout), as docs/libcontainer-notes.md row 5 did. With `uts_hostname`, in
    /// a UTS namespace of its own with that hostname (a fresh UVM kernel says `(none)`).
    async fn start_opts(tag: &str, opts: Opts) -> Self {
        require_root();
        let dir = TempDir::new(tag);
        let sock = dir.0.join("bridge.sock");
        let prefix = dir.0.join("vsock.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let mut setup = Vec::new();
        let mut unshare = Vec::new();
        if opts.cgroup2 {
            unshare.extend(["--mount", "--propagation", "private"]);
            setup.push("mount -t cgroup2 none /sys/fs/cgroup".to_owned());
        }
        if let Some(h) = &opts.uts_hostname {
            unshare.push("--uts");
            // (`hostname(1)` refuses names like `(none)`; the kernel takes any)
            setup.push(format!("printf %s '{h}' > /proc/sys/kernel/hostname"));
        }
        let mut cmd = if setup.is_empty() {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_gcs"))
        } else {
            let mut c = tokio::process::Command::new("unshare");
            c.args(&unshare)
                .args(["--", "sh", "-c"])
                .arg(format!("{} && exec \"$0\" \"$@\"", setup.join(" && ")))
                .arg(env!("CARGO_BIN_EXE_gcs"));
            c
        };
        let child = cmd
            .arg("--bridge")
            .arg(format!("unix:{}", sock.display()))
            .arg("--run-dir")
            .arg(dir.0.join("run"))
            .arg("--stdio-unix-prefix")
            .arg(&prefix)
            .args(["--log-level", "warning", "--no-redial"])
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stream, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
        let client = Arc::new(BridgeClient::new(stream));
        client.negotiate().await.unwrap();
        let cc = ContainerClient::new(Arc::clone(&client), prefix);
        Self {
            cc,
            client,
            child,
            dir,
            seen: AtomicUsize::new(0),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    fn spec(&self, bundle: &Path, args: &[&str], terminal: bool) -> Spec {
        let mut spec = Spec::default();
        let mut root = spec.root().clone().unwrap();
        root.set_path(bundle.join("rootfs"));
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let process = ProcessBuilder::default()
            .args(args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .env(vec!["PATH=/bin".to_owned(), "FOO=bar".to_owned()])
            .cwd("/")
            .terminal(terminal)
            .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
            .build()
            .unwrap();
        let mut p = spec.process().clone().unwrap();
        p.set_args(process.args().clone());
        p.set_env(process.env().clone());
        p.set_terminal(Some(terminal));
        spec.set_process(Some(p));
        spec.set_hostname(Some("ctr-host".into()));
        spec
    }

    async fn create_with(&self, id: &str, mut spec: Spec, bundle: &Path) -> Result<(), HResult> {
        // Each container has a network namespace of its own, as hcsshim's host sends it.
        if spec.windows().is_none() {
            let mut net = libcontainer::oci_spec::runtime::WindowsNetwork::default();
            net.set_network_namespace(Some(id.to_owned()));
            let mut w = libcontainer::oci_spec::runtime::Windows::default();
            w.set_network(Some(net));
            spec.set_windows(Some(w));
        }
        let config = ContainerConfig {
            schema_version: SchemaVersion::V2_1,
            oci_bundle_path: bundle.display().to_string(),
            oci_specification: Some(spec),
            scratch_dir_path: String::new(),
        };
        self.cc.create_container(id, config).await.map_err(|e| {
            eprintln!("create {id}: {}", rgcs_protocol::error_chain(&e));
            hresult(&e)
        })
    }

    /// A fresh bundle with a busybox rootfs, created with `args` (init not started).
    async fn create(&self, id: &str, args: &[&str], terminal: bool) -> PathBuf {
        self.create_edit(id, args, terminal, |_| {}).await
    }

    async fn create_edit(
        &self,
        id: &str,
        args: &[&str],
        terminal: bool,
        edit: impl FnOnce(&mut Spec),
    ) -> PathBuf {
        self.create_timed(id, args, terminal, edit).await.0
    }

    /// Like `create_edit`; also returns how long the Create request alone took.
    async fn create_timed(
        &self,
        id: &str,
        args: &[&str],
        terminal: bool,
        edit: impl FnOnce(&mut Spec),
    ) -> (PathBuf, Duration) {
        let bundle = self.dir.0.join("bundles").join(id);
        rootfs(&bundle);
        let mut spec = self.spec(&bundle, args, terminal);
        edit(&mut spec);
        let t0 = Instant::now();
        self.create_with(id, spec, &bundle).await.unwrap();
        (bundle, t0.elapsed())
    }

    /// ExecuteProcess with the given stdio pipes; returns the PID and the host ends (the client
    /// listens on the ports before the request, and the agent dials them before it answers).
    async fn execute(
        &self,
        cid: &str,
        mut params: ProcessParameters,
        pipes: [bool; 3],
    ) -> Result<(u32, Io), HResult> {
        params.create_std_in_pipe = pipes[0];
        params.create_std_out_pipe = pipes[1];
        params.create_std_err_pipe = pipes[2];
        let (pid, stdio) = self
            .cc
            .execute_process(cid, params)
            .await
            .map_err(|e| hresult(&e))?;
        Ok((
            pid,
            Io {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
            },
        ))
    }

    async fn start_init(&self, cid: &str, pipes: [bool; 3]) -> (u32, Io) {
        self.execute(cid, ProcessParameters::default(), pipes)
            .await
            .unwrap()
    }

    async fn exec(
        &self,
        cid: &str,
        args: &[&str],
        pipes: [bool; 3],
        edit: impl FnOnce(&mut libcontainer::oci_spec::runtime::Process),
    ) -> (u32, Io) {
        let mut p = libcontainer::oci_spec::runtime::Process::default();
        p.set_args(Some(args.iter().map(|s| (*s).to_owned()).collect()));
        p.set_env(Some(vec!["PATH=/bin".to_owned()]));
        p.set_terminal(Some(false));
        edit(&mut p);
        let params = ProcessParameters {
            oci_process: Some(p),
            ..Default::default()
        };
        self.execute(cid, params, pipes).await.unwrap()
    }

    /// WaitForProcess with the wire's timeout (`INFINITE` waits forever).
    async fn wait(&self, cid: &str, pid: u32, timeout_ms: u32) -> Result<u32, HResult> {
        let limit = (timeout_ms != INFINITE).then(|| Duration::from_millis(timeout_ms.into()));
        timeout(STEP * 2, self.cc.wait_for_process(cid, pid, limit))
            .await
            .expect("wait hung")
            .map_err(|e| hresult(&e))
    }

    async fn signal(&self, cid: &str, pid: u32, signal: i32) -> Result<(), HResult> {
        self.cc
            .signal_process(cid, pid, (signal != 0).then_some(signal))
            .await
            .map_err(|e| hresult(&e))
    }

    async fn delete(&self, cid: &str) {
        self.cc.delete_container_state(cid).await.unwrap();
    }

    /// The next notification of the bridge (in arrival order).
    async fn notification(&self) -> ContainerNotification {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        self.cc.wait_nth_notification(n, STEP).await.unwrap()
    }

    /// No notification beyond those consumed arrives within 300 ms.
    async fn no_notification(&self) {
        let n = self.seen.load(Ordering::Relaxed) + 1;
        assert!(
            self.cc
                .wait_nth_notification(n, Duration::from_millis(300))
                .await
                .is_err(),
            "an unexpected notification"
        );
    }
}

/// How to start the agent.
#[derive(Default)]
struct Opts {
    cgroup2: bool,
    uts_hostname: Option<String>,
    extra_args: Vec<String>,
}

struct Io {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

async fn read_to_end(s: Option<UnixStream>, what: &str) -> String {
    let mut out = Vec::new();
    if let Some(mut s) = s {
        timeout(STEP, s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("{what} never closed"))
            .unwrap();
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Io {
    /// stdout as a stream, for reading part of it while the process runs.
    fn stdout_stream(&mut self) -> &mut UnixStream {
        self.stdout.as_mut().expect("stdout was requested")
    }

    async fn output(self) -> (String, String) {
        drop(self.stdin);
        tokio::join!(
            read_to_end(self.stdout, "stdout"),
            read_to_end(self.stderr, "stderr")
        )
    }
}

const INFINITE: u32 = u32::MAX;

#[tokio::test]
async fn init_stdio_exit_codes_and_one_notification() {
    let a = Agent::start("init").await;
    // echo
    let (_, created) = a
        .create_timed(
            "echo1",
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            |_| {},
        )
        .await;
    let t1 = Instant::now();
    let (pid, io) = a.start_init("echo1", [false, true, true]).await;
    let started = t1.elapsed();
    let (out, err) = io.output().await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(a.wait("echo1", pid, INFINITE).await, Ok(3));
    // the record is gone after the delivered wait
    assert_eq!(a.wait("echo1", pid, 0).await, Err(HResult::NOT_FOUND));
    let n = a.notification().await;
    assert_eq!(
        (n.container_id.as_str(), n.notification_type),
        ("echo1", NotificationType::UnexpectedExit)
    );
    a.no_notification().await;
    a.delete("echo1").await;
    eprintln!("MEASURE create {created:?} start {started:?}");

    // true, with no stdio at all
    a.create("true1", &["true"], false).await;
    let (pid, io) = a.start_init("true1", [false, false, false]).await;
    io.output().await;
    assert_eq!(a.wait("true1", pid, INFINITE).await, Ok(0));
    assert_eq!(a.notification().await.container_id, "true1");
    a.delete("true1").await;

    // cat echoing stdin; stdin EOF ends it
    a.create("cat1", &["cat"], false).await;
    let (pid, mut io) = a.start_init("cat1", [true, true, true]).await;
    io.stdin
        .as_mut()
        .unwrap()
        .write_all(b"ping\npong\n")
        .await
        .unwrap();
    let (out, _) = io.output().await;
    assert_eq!(out, "ping\npong\n");
    assert_eq!(a.wait("cat1", pid, INFINITE).await, Ok(0));
    a.notification().await;
    a.delete("cat1").await;
}

#[tokio::test]
async fn signals_shutdown_and_notification_types() {
    let a = Agent::start("sig").await;
    // SIGKILL through SignalProcess without options: 137, ForcedExit
    a.create("k1", &["sleep", "100"], false).await;
    let (pid, io) = a.start_init("k1", [false, true, true]).await;
    assert_eq!(a.wait("k1", pid, 100).await, Err(HResult::TIMEOUT));
    a.signal("k1", pid, 0).await.unwrap();
    io.output().await;
    assert_eq!(a.wait("k1", pid, INFINITE).await, Ok(137));
    assert_eq!(
        a.notification().await.notification_type,
        NotificationType::ForcedExit
    );
    assert_eq!(a.signal("k1", pid, 9).await, Err(HResult::NOT_FOUND));
    a.delete("k1").await;

    // SIGTERM through ShutdownGraceful: GracefulExit
    // (a PID-namespace init ignores signals it has no handler for, as with runc: trap it)
    a.create(
        "t1",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        false,
    )
    .await;
    let (pid, io) = a.start_init("t1", [false, true, false]).await;
    // until the trap is installed, SIGTERM is ignored: repeat the shutdown until init exits
    let mut code = None;
    for _ in 0..100 {
        a.client
            .call::<_, Empty>(MessageId::SHUTDOWN_GRACEFUL, "t1", &Empty {})
            .await
            .unwrap();
        match a.wait("t1", pid, 100).await {
            Ok(c) => {
                code = Some(c);
                break;
            }
            Err(e) => assert_eq!(e, HResult::TIMEOUT),
        }
    }
    let code = code.expect("init never exited after ShutdownGraceful");
    assert_eq!(io.output().await.0, "ready\n");
    assert_eq!(code, 143);
    assert_eq!(
        a.notification().await.notification_type,
        NotificationType::GracefulExit
    );
    a.delete("t1").await;

    // unknown container and unknown pid
    assert_eq!(a.wait("nope", 1, 0).await, Err(HResult::SYSTEM_NOT_FOUND));
    a.create("u1", &["sleep", "100"], false).await;
    let (pid, io) = a.start_init("u1", [false, false, false]).await;
    assert_eq!(a.wait("u1", 999_999, 0).await, Err(HResult::NOT_FOUND));
    a.client
        .call::<_, Empty>(MessageId::SHUTDOWN_FORCED, "u1", &Empty {})
        .await
        .unwrap();
    io.output().await;
    assert_eq!(a.wait("u1", pid, INFINITE).await, Ok(137));
    assert_eq!(
        a.notification().await.notification_type,
        NotificationType::ForcedExit
    );
    // Create with an existing ID
    assert_eq!(
        a.create_with(
            "u1",
            a.spec(&a.dir.0.join("bundles/u1"), &["true"], false),
            &a.dir.0.join("bundles/u1")
        )
        .await,
        Err(HResult::SYSTEM_ALREADY_EXISTS)
    );
    a.delete("u1").await;
}

#[tokio::test]
async fn exec_stdio_user_cwd_env_tty_and_process_list() {
    let a = Agent::start("exec").await;
    a.create_edit("e1", &["sleep", "100"], false, |s| {
        let mut p = s.process().clone().unwrap();
        p.set_cwd("/work/dir".into());
        s.set_process(Some(p));
    })
    .await;
    let (init, _io) = a.start_init("e1", [false, false, false]).await;

    let t0 = Instant::now();
    let (pid, io) = a
        .exec(
            "e1",
            &[
                "sh",
                "-c",
                "pwd; echo $FOO; id -u; id -g; hostname; cat /etc/hostname; grep -c ctr-host /etc/hosts; ulimit -n",
            ],
            [false, true, true],
            |p| {
                p.set_cwd("/work/dir".into());
                p.set_env(Some(vec!["PATH=/bin".into(), "FOO=exec-env".into()]));
            },
        )
        .await;
    let exec_ms = t0.elapsed();
    let (out, err) = io.output().await;
    // cwd created, env exact, the hostname/hosts bind mounts, rlimits inherited from the spec
    assert_eq!(
        out, "/work/dir\nexec-env\n0\n0\nctr-host\nctr-host\n1\n1024\n",
        "stderr: {err}"
    );
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(0));
    eprintln!("MEASURE exec {exec_ms:?}");

    // exit code 3 from an exec; stdin relayed
    let (pid, mut io) = a
        .exec(
            "e1",
            &["sh", "-c", "read x; echo got $x; exit 3"],
            [true, true, false],
            |_| {},
        )
        .await;
    io.stdin.as_mut().unwrap().write_all(b"hello\n").await.unwrap();
    let (out, _) = io.output().await;
    assert_eq!(out, "got hello\n");
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(3));

    // user by name (resolved in the rootfs) and by uid:gid
    let (pid, io) = a
        .exec(
            "e1",
            &["sh", "-c", "id -u; id -g; id -G"],
            [false, true, false],
            |p| {
                let mut u = p.user().clone();
                u.set_username(Some("alice".into()));
                p.set_user(u);
            },
        )
        .await;
    let (out, _) = io.output().await;
    assert_eq!(out, "1000\n1000\n1000 10\n");
    a.wait("e1", pid, INFINITE).await.unwrap();
    let (pid, io) = a
        .exec("e1", &["sh", "-c", "id -u; id -g"], [false, true, false], |p| {
            let mut u = p.user().clone();
            u.set_username(Some("4242:4343".into()));
            p.set_user(u);
        })
        .await;
    assert_eq!(io.output().await.0, "4242\n4343\n");
    a.wait("e1", pid, INFINITE).await.unwrap();

    // SIGTERM to an exec: 143
    let (pid, io) = a
        .exec("e1", &["sleep", "100"], [false, true, false], |_| {})
        .await;
    a.signal("e1", pid, 15).await.unwrap();
    io.output().await;
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(143));

    // a background child keeping stdout open does not hang the exec's exit
    let t = Instant::now();
    let (pid, io) = a
        .exec(
            "e1",
            &["sh", "-c", "sleep 30 & echo bg"],
            [false, true, false],
            |_| {},
        )
        .await;
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(0));
    assert_eq!(io.output().await.0, "bg\n");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // tty exec with a resize seen inside
    let (pid, mut io) = a
        .exec("e1", &["sh"], [true, true, false], |p| {
            p.set_terminal(Some(true));
        })
        .await;
    a.cc.resize_console("e1", pid, 37, 111).await.unwrap();
    io.stdin
        .as_mut()
        .unwrap()
        .write_all(b"stty size; exit 5\n")
        .await
        .unwrap();
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(5));
    let (out, _) = io.output().await;
    assert!(out.contains("37 111"), "{out:?}");

    // tty exec that exits on its own while the host keeps stdin open: output and EOF arrive
    let (pid, mut io) = a
        .exec(
            "e1",
            &["sh", "-c", "echo hi-t; exit 5"],
            [true, true, false],
            |p| {
                p.set_terminal(Some(true));
            },
        )
        .await;
    let stdin_kept = io.stdin.take();
    assert_eq!(a.wait("e1", pid, INFINITE).await, Ok(5));
    let out = read_to_end(io.stdout.take(), "tty stdout").await;
    assert_eq!(out, "hi-t\r\n");
    drop(stdin_kept);

    // process list: init plus a running exec
    let (pid, _io2) = a
        .exec("e1", &["sleep", "100"], [false, false, false], |_| {})
        .await;
    let props =
        a.cc.get_properties("e1", &[PropertyType::ProcessList])
            .await
            .unwrap();
    let pids: Vec<u32> = props.process_list.iter().map(|p| p.process_id).collect();
    assert!(
        pids.contains(&init) && pids.contains(&pid),
        "{pids:?} (init {init}, exec {pid})"
    );

    // Statistics (LCOWMetrics) and ContainerConstraints on the live cgroup
    let props =
        a.cc.get_properties("e1", &[PropertyType::Statistics])
            .await
            .unwrap();
    let m = props.lcow_metrics.expect("LCOWMetrics");
    assert!(m.pids.as_ref().unwrap().current >= 2, "{m:?}");
    assert!(
        m.memory.as_ref().unwrap().usage.as_ref().unwrap().usage > 0,
        "{m:?}"
    );
    let update: serde_json::Value = serde_json::json!({
        "Request": {"ResourceType": "ContainerConstraints", "RequestType": "Update",
                     "Settings": {"Linux": {"memory": {"limit": 64 * 1024 * 1024}}}}
    });
    a.client
        .call::<_, Empty>(MessageId::MODIFY_SETTINGS, "e1", &update)
        .await
        .unwrap();
    let limit = cgroup_value("memory", "e1", "memory.limit_in_bytes");
    assert_eq!(limit.trim(), (64 * 1024 * 1024).to_string());

    a.signal("e1", init, 9).await.unwrap();
    assert_eq!(a.wait("e1", init, INFINITE).await, Ok(137));
    assert_eq!(
        a.notification().await.notification_type,
        NotificationType::ForcedExit
    );
    a.delete("e1").await;
}

#[tokio::test]
async fn seccomp_profile_is_enforced() {
    let a = Agent::start("seccomp").await;
    a.create_edit("s1", &["sh", "-c", "mkdir /tmp/x; echo rc=$?"], false, |s| {
        let mut linux = s.linux().clone().unwrap();
        let profile = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        linux.set_seccomp(Some(serde_json::from_value(profile).unwrap()));
        s.set_linux(Some(linux));
    })
    .await;
    let (pid, io) = a.start_init("s1", [false, true, true]).await;
    let (out, err) = io.output().await;
    assert_eq!(out, "rc=1\n", "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(a.wait("s1", pid, INFINITE).await, Ok(0));
    a.notification().await;
    a.delete("s1").await;
}

#[tokio::test]
async fn forked_child_outliving_init_and_creating_state() {
    let a = Agent::start("fork").await;
    // a wait while the Create is still running answers 0x80370105
    let bundle = a.dir.0.join("bundles").join("c0");
    rootfs(&bundle);
    let spec = a.spec(&bundle, &["true"], false);
    let (created, waited) = tokio::join!(a.create_with("c0", spec, &bundle), async {
        tokio::task::yield_now().await;
        a.wait("c0", 1, 0).await
    });
    created.unwrap();
    assert_eq!(waited, Err(HResult::INVALID_STATE));
    let (pid, io) = a.start_init("c0", [false, false, false]).await;
    io.output().await;
    assert_eq!(a.wait("c0", pid, INFINITE).await, Ok(0));
    a.notification().await;
    a.delete("c0").await;

    // a failed build leaves nothing behind: the same ID can be created again
    let bundle = a.dir.0.join("bundles").join("bad1");
    rootfs(&bundle);
    let spec = a.spec(&bundle, &["/no/such/program"], false);
    assert_eq!(a.create_with("bad1", spec, &bundle).await, Err(HResult::FAIL));
    assert!(
        !a.dir.0.join("run/runtime/bad1").exists(),
        "libcontainer state left after a failed build"
    );
    assert!(cgroup_leftovers(a.pid(), "bad1").is_empty());
    assert_eq!(a.wait("bad1", 1, 0).await, Err(HResult::SYSTEM_NOT_FOUND));
    a.create("bad1", &["true"], false).await;
    a.delete("bad1").await;

    a.create("f1", &["sh", "-c", "sleep 100 & echo started"], false)
        .await;
    let (pid, io) = a.start_init("f1", [false, true, false]).await;
    let t = Instant::now();
    assert_eq!(a.wait("f1", pid, INFINITE).await, Ok(0));
    assert_eq!(io.output().await.0, "started\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    a.notification().await;
    a.delete("f1").await;
    a.no_notification().await;
}

#[tokio::test]
async fn uvm_processes_exact_env_and_pty() {
    let a = Agent::start("uvm").await;
    let mut env = BTreeMap::new();
    env.insert("ONLY".to_owned(), "this".to_owned());
    let params = ProcessParameters {
        command_line: "sh -c 'env; exit 4'".into(),
        environment: env.clone(),
        working_directory: "/tmp".into(),
        ..Default::default()
    };
    let (pid, io) = a
        .execute(UVM_CONTAINER_ID, params, [false, true, false])
        .await
        .unwrap();
    let (out, _) = io.output().await;
    let mut lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with('_'))
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, ["ONLY=this"], "{out}");
    assert_eq!(a.wait(UVM_CONTAINER_ID, pid, INFINITE).await, Ok(4));

    // a pty: session leader with a controlling tty, resize seen, signals work
    let params = ProcessParameters {
        command_args: vec!["sh".into()],
        environment: env,
        emulate_console: true,
        console_size: vec![20, 70],
        ..Default::default()
    };
    let (pid, mut io) = a
        .execute(UVM_CONTAINER_ID, params, [true, true, false])
        .await
        .unwrap();
    a.cc.resize_console(UVM_CONTAINER_ID, pid, 40, 120).await.unwrap();
    io.stdin
        .as_mut()
        .unwrap()
        .write_all(b"stty size; tty; exec sleep 100\n")
        .await
        .unwrap();
    // read until both answers are in, then kill it
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("/dev/pts/") {
        let mut b = [0u8; 256];
        let n = timeout(STEP, io.stdout_stream().read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "pty output ended early: {out:?}");
        out.extend_from_slice(&b[..n]);
    }
    a.signal(UVM_CONTAINER_ID, pid, 9).await.unwrap();
    assert_eq!(a.wait(UVM_CONTAINER_ID, pid, INFINITE).await, Ok(u32::MAX));
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("40 120") && out.contains("/dev/pts/"), "{out:?}");
}

/// A cgroup file of a container, on the v1 (hybrid) layout of this host or on v2.
fn cgroup_value(ctrl: &str, id: &str, file: &str) -> String {
    let v1 = Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join("containers")
        .join(id)
        .join(file);
    std::fs::read_to_string(&v1).unwrap_or_else(|e| panic!("{}: {e}", v1.display()))
}

/// Container cgroups named `prefix*` that exist, as the agent (process `agent`) sees the cgroup
/// file system: the v2 unified tree, or every v1 controller (this host is v1, the UVM is v2).
fn cgroup_leftovers(agent: u32, prefix: &str) -> Vec<String> {
    let root = PathBuf::from(format!("/proc/{agent}/root/sys/fs/cgroup"));
    let v2 = root.join("cgroup.controllers").exists();
    let dirs: Vec<(String, PathBuf)> = if v2 {
        vec![("unified".to_owned(), root.join("containers"))]
    } else {
        ["memory", "pids", "cpu", "freezer", "devices", "blkio", "cpuset"]
            .iter()
            .map(|c| ((*c).to_owned(), root.join(c).join("containers")))
            .collect()
    };
    assert!(
        dirs.iter().any(|(_, d)| d.exists()),
        "no container cgroup parent under {} to look at",
        root.display()
    );
    let mut left = Vec::new();
    for (ctrl, dir) in dirs {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) {
                    left.push(format!("{ctrl}/{name}"));
                }
            }
        }
    }
    left
}

fn mounts_under(dir: &Path) -> usize {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .count()
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let ppid: u32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if ppid == pid {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn fifty_cycles_leave_nothing_behind() {
    let a = Agent::start("leak").await;
    // warm-up cycle so lazily opened descriptors are counted in the baseline
    let prefix = format!("lk{}x", std::process::id());
    let cycle = |i: usize| {
        let id = format!("{prefix}{i}");
        let a = &a;
        async move {
            // libcontainer writes the caller's oom_score_adj for this: the zygote's, never ours
            let (_, c) = a
                .create_timed(&id, &["sh", "-c", "echo hi"], false, |s| {
                    let mut p = s.process().clone().unwrap();
                    p.set_oom_score_adj(Some(500));
                    s.set_process(Some(p));
                })
                .await;
            let t1 = Instant::now();
            let (pid, io) = a.start_init(&id, [true, true, true]).await;
            let s = t1.elapsed();
            assert_eq!(io.output().await.0, "hi\n");
            assert_eq!(a.wait(&id, pid, INFINITE).await, Ok(0));
            assert_eq!(a.notification().await.container_id, id);
            let t2 = Instant::now();
            a.delete(&id).await;
            (c, s, t2.elapsed())
        }
    };
    let oom_before = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", a.pid())).unwrap();
    let cwd_before = std::fs::read_link(format!("/proc/{}/cwd", a.pid())).unwrap();
    cycle(0).await;
    let fds = a.fd_count();
    let children = children_of(a.pid()).len();
    let mut creates = Vec::new();
    let mut starts = Vec::new();
    let mut deletes = Vec::new();
    for i in 1..=50 {
        let (c, s, d) = cycle(i).await;
        creates.push(c);
        starts.push(s);
        deletes.push(d);
    }
    creates.sort();
    starts.sort();
    deletes.sort();
    eprintln!(
        "MEASURE 50 cycles: create p50 {:?} p90 {:?}; start p50 {:?}; delete p50 {:?}",
        creates[25], creates[45], starts[25], deletes[25]
    );
    // the reaper may still be collecting the last intermediates: wait, bounded
    common::wait_until(STEP, || {
        (a.fd_count() == fds && children_of(a.pid()).len() == children).then_some(())
    })
    .await;
    assert_eq!(a.fd_count(), fds, "agent descriptors leaked");
    let oom_after = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", a.pid())).unwrap();
    assert_eq!(oom_after, oom_before, "the agent's OOM score changed");
    let cwd_after = std::fs::read_link(format!("/proc/{}/cwd", a.pid())).unwrap();
    assert_eq!(cwd_after, cwd_before, "the agent's cwd changed");
    assert_eq!(
        children_of(a.pid()).len(),
        children,
        "processes left behind (only the zygote may stay)"
    );
    assert_eq!(
        cgroup_leftovers(a.pid(), &prefix),
        Vec::<String>::new(),
        "cgroups left behind"
    );
    assert_eq!(mounts_under(&a.dir.0), 0, "mounts left behind");
    let runtime: Vec<_> = std::fs::read_dir(a.dir.0.join("run/runtime"))
        .unwrap()
        .flatten()
        .collect();
    assert!(runtime.is_empty(), "libcontainer state left: {runtime:?}");
    let procs: Vec<_> = std::fs::read_dir(a.dir.0.join("run/procs"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(procs.is_empty(), "per-process state left: {procs:?}");
}

#[tokio::test]
async fn cgroup_v2_lifecycle_leaves_nothing_behind() {
    let a = Agent::start_with("v2", true).await;
    for i in 0..3 {
        let id = format!("v2c{}x{i}", std::process::id());
        a.create(&id, &["sleep", "100"], false).await;
        let (init, _io) = a.start_init(&id, [false, false, false]).await;
        let (pid, io) = a
            .exec(
                &id,
                &["sh", "-c", "sleep 0.3; echo x"],
                [false, true, false],
                |_| {},
            )
            .await;
        // seen from the root cgroup namespace, init and exec sit in the v2 leaf
        for p in [init, pid] {
            let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
            assert!(cg.lines().any(|l| l == format!("0::/containers/{id}")), "{cg}");
        }
        assert_eq!(io.output().await.0, "x\n");
        assert_eq!(a.wait(&id, pid, INFINITE).await, Ok(0));
        a.signal(&id, init, 9).await.unwrap();
        assert_eq!(a.wait(&id, init, INFINITE).await, Ok(137));
        a.notification().await;
        a.delete(&id).await;
        // the agent's view of /sys/fs/cgroup is its own cgroup2 mount: look through its root
        assert_eq!(
            cgroup_leftovers(a.pid(), &id),
            Vec::<String>::new(),
            "v2 cgroup left behind"
        );
    }
}

/// Issue 13: a Create whose spec has no hostname (`ctr run`'s default) in a UVM whose kernel
/// hostname is still `(none)` succeeds, and the files carry that name as it is, as hcsshim's guest
/// writes `os.Hostname()` unchecked (it checks only a hostname the spec sets).
#[tokio::test]
async fn no_spec_hostname_takes_the_uvm_hostname_unchecked() {
    let a = Agent::start_opts(
        "hostname",
        Opts {
            uts_hostname: Some("(none)".into()),
            ..Opts::default()
        },
    )
    .await;
    let bundle = a
        .create_edit("h1", &["cat", "/etc/hostname"], false, |s| {
            s.set_hostname(None);
        })
        .await;
    assert_eq!(
        std::fs::read_to_string(bundle.join("hostname")).unwrap(),
        "(none)\n"
    );
    let hosts = std::fs::read_to_string(bundle.join("hosts")).unwrap();
    assert!(
        hosts.starts_with("127.0.0.1 localhost\n127.0.0.1 (none)\n"),
        "{hosts}"
    );
    let (pid, io) = a.start_init("h1", [false, true, true]).await;
    assert_eq!(io.output().await.0, "(none)\n");
    assert_eq!(a.wait("h1", pid, INFINITE).await, Ok(0));
    a.delete("h1").await;
    // A hostname the spec sets is still checked (hcsshim HEAD's pattern).
    let bundle = a.dir.0.join("bundles/h2");
    rootfs(&bundle);
    let mut spec = a.spec(&bundle, &["true"], false);
    spec.set_hostname(Some("bad host".into()));
    assert_eq!(
        a.create_with("h2", spec, &bundle).await,
        Err(HResult::INVALID_JSON)
    );
}

/// Issue 13: `process.consoleSize` is applied before a tty process runs, for the init and for
/// every exec (runc's init sizes the pty before exec; before the fix an init always saw 0x0 and
/// an exec did now and then).
#[tokio::test]
async fn console_size_is_set_before_a_tty_process_runs() {
    let a = Agent::start("ttysize").await;
    a.create_edit("t1", &["sh", "-c", "stty size; exec sleep 100"], true, |s| {
        let mut p = s.process().clone().unwrap();
        p.set_console_size(Some(
            libcontainer::oci_spec::runtime::BoxBuilder::default()
                .height(33u64)
                .width(101u64)
                .build()
                .unwrap(),
        ));
        s.set_process(Some(p));
    })
    .await;
    let (init, mut io) = a.start_init("t1", [false, true, false]).await;
    let mut first = Vec::new();
    while !first.ends_with(b"\n") {
        let mut b = [0u8; 64];
        let n = timeout(STEP, io.stdout_stream().read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "init output ended early: {first:?}");
        first.extend_from_slice(&b[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&first).trim(), "33 101");
    // Execs: many in a row, each must see its size from its first instruction.
    for i in 0..25u64 {
        let (pid, io) = a
            .exec("t1", &["stty", "size"], [false, true, false], |p| {
                p.set_terminal(Some(true));
                p.set_console_size(Some(
                    libcontainer::oci_spec::runtime::BoxBuilder::default()
                        .height(20 + i)
                        .width(70u64)
                        .build()
                        .unwrap(),
                ));
            })
            .await;
        assert_eq!(a.wait("t1", pid, INFINITE).await, Ok(0));
        assert_eq!(io.output().await.0.trim(), format!("{} 70", 20 + i), "exec {i}");
    }
    a.signal("t1", init, 9).await.unwrap();
    assert_eq!(a.wait("t1", init, INFINITE).await, Ok(137));
    drop(io);
    a.delete("t1").await;
}

/// Issue 13: the notification type follows the *last* shutdown signal delivered to init, as
/// hcsshim's guest records it: ShutdownGraceful (ignored by init), then ShutdownForced, is
/// `ForcedExit`.
#[tokio::test]
async fn the_last_shutdown_signal_decides_the_notification_type() {
    let a = Agent::start("exittype").await;
    a.create(
        "g1",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        false,
    )
    .await;
    let (pid, mut io) = a.start_init("g1", [false, true, false]).await;
    let mut ready = [0u8; 6];
    timeout(STEP, io.stdout_stream().read_exact(&mut ready))
        .await
        .unwrap()
        .unwrap();
    a.client
        .call::<_, Empty>(MessageId::SHUTDOWN_GRACEFUL, "g1", &Empty {})
        .await
        .unwrap();
    assert_eq!(
        a.wait("g1", pid, 300).await,
        Err(HResult::TIMEOUT),
        "TERM is ignored"
    );
    a.client
        .call::<_, Empty>(MessageId::SHUTDOWN_FORCED, "g1", &Empty {})
        .await
        .unwrap();
    assert_eq!(a.wait("g1", pid, INFINITE).await, Ok(137));
    assert_eq!(
        a.notification().await.notification_type,
        NotificationType::ForcedExit
    );
    a.delete("g1").await;
}

/// Issue 13: docker's exit codes for a program that cannot run. A missing program fails the
/// Create (the executor checks it first) with a message naming it; one that exists but cannot be
/// executed exits 126 with the reason on stderr.
#[tokio::test]
async fn programs_that_cannot_run_get_clear_errors_and_docker_codes() {
    let a = Agent::start("execfail").await;
    let bundle = a.dir.0.join("bundles/m1");
    rootfs(&bundle);
    let spec = a.spec(&bundle, &["no-such-program"], false);
    let config = ContainerConfig {
        schema_version: SchemaVersion::V2_1,
        oci_bundle_path: bundle.display().to_string(),
        oci_specification: Some(spec),
        scratch_dir_path: String::new(),
    };
    let e = a.cc.create_container("m1", config).await.unwrap_err();
    let text = rgcs_protocol::error_chain(&e);
    assert!(text.contains("'no-such-program' not found"), "{text}");
    // an executable file that is not a program: ENOEXEC at execve
    let bundle = a.create("x1", &["sleep", "100"], false).await;
    std::fs::write(bundle.join("rootfs/bin/garbage"), b"\x00\x01\x02\x03").unwrap();
    std::fs::set_permissions(
        bundle.join("rootfs/bin/garbage"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (init, _io) = a.start_init("x1", [false, false, false]).await;
    let (pid, io) = a.exec("x1", &["/bin/garbage"], [false, true, true], |_| {}).await;
    assert_eq!(a.wait("x1", pid, INFINITE).await, Ok(126));
    let (_, err) = io.output().await;
    assert!(err.contains("exec format error"), "{err:?}");
    a.signal("x1", init, 9).await.unwrap();
    assert_eq!(a.wait("x1", init, INFINITE).await, Ok(137));
    a.delete("x1").await;
}

/// Issue 13: a hung executor call answers 0xC0370109 within the deadline and the zygote is
/// replaced; a zygote killed from outside is reported and replaced; nothing of the failed create
/// is left, and the next container works.
#[tokio::test]
async fn a_hung_or_dead_executor_is_replaced() {
    let a = Agent::start_opts(
        "zygote",
        Opts {
            extra_args: vec!["--executor-deadline-ms".into(), "1500".into()],
            ..Opts::default()
        },
    )
    .await;
    let first_zygote = children_of(a.pid()).into_iter().min().unwrap();
    // A createRuntime hook runs in the zygote: one that sleeps hangs the Create.
    let bundle = a.dir.0.join("bundles/hang");
    rootfs(&bundle);
    let mut spec = a.spec(&bundle, &["true"], false);
    let hooks: libcontainer::oci_spec::runtime::Hooks = serde_json::from_value(serde_json::json!({
        "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "3"]}]
    }))
    .unwrap();
    spec.set_hooks(Some(hooks));
    let t0 = Instant::now();
    assert_eq!(a.create_with("hang", spec, &bundle).await, Err(HResult::TIMEOUT));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        !std::path::Path::new(&format!("/proc/{first_zygote}")).exists()
            || std::fs::read_to_string(format!("/proc/{first_zygote}/stat"))
                .unwrap()
                .contains(") Z"),
        "the hung zygote was killed"
    );
    // The next container runs on a new zygote.
    a.create("after1", &["echo", "ok"], false).await;
    let (pid, io) = a.start_init("after1", [false, true, false]).await;
    assert_eq!(io.output().await.0, "ok\n");
    assert_eq!(a.wait("after1", pid, INFINITE).await, Ok(0));
    a.delete("after1").await;
    assert!(
        !a.dir.0.join("run/runtime/hang").exists(),
        "the hung create's state is gone"
    );
    // Kill the zygote from outside: the next call fails clearly, the one after works.
    let zygote = children_of(a.pid())
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("--zygote")))
        .expect("a replacement zygote runs as `gcs --zygote`");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(zygote).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let bundle = a.dir.0.join("bundles/dead");
    rootfs(&bundle);
    let e = a
        .create_with("dead", a.spec(&bundle, &["true"], false), &bundle)
        .await
        .unwrap_err();
    assert_eq!(e, HResult::FAIL);
    a.create("after2", &["echo", "ok"], false).await;
    let (pid, io) = a.start_init("after2", [false, true, false]).await;
    assert_eq!(io.output().await.0, "ok\n");
    assert_eq!(a.wait("after2", pid, INFINITE).await, Ok(0));
    a.delete("after2").await;
}
