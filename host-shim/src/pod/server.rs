//! The pod server (`rgcs pod serve`, started in the background by `rgcs pod create` and
//! `rgcs run -d`): it boots the pod's UVM, attaches its NIC, creates the sandbox (`/pause`, no
//! image), and then serves the pod's control socket until `pod rm`, SIGTERM or the UVM's end.
//! Beside the control requests of [`crate::control`] (exec, ps, stats, resize, wait, kill) it
//! answers the pod's own: run an image as a workload, stop, remove, wait for an exit, shut down.
//! Each workload's stdout and stderr go to a bounded log file the CLI reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgcs_client::{
    init_process, prepare_pause_rootfs, BridgeClient, ContainerClient, ContainerSpec, Pipes, PodRole,
    ProcessSpec, ShutdownKind, PAUSE_ROOTFS,
};
use rgcs_protocol::error_chain;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};

use super::state::{now, process_start, sandbox_id, ContainerRecord, PodDir, PodPhase, PodRecord, StateDir};
use crate::control::{Answer, ControlServer, Extension, Handled};
use crate::image::{self, NoProgress};
use crate::net::{AttachedNic, Network, UvmNetwork};
use crate::rootfs::{add_binds, ContainerRootfs, UvmStorage};
use crate::session::{BootOptions, Session, POWER_OFF_TIMEOUT};
use crate::vm::Uvm;

/// A container's log is rotated once it passes this size (one previous file is kept).
pub const MAX_LOG: u64 = 8 << 20;

/// What a pod is made with.
#[derive(Debug, Clone)]
pub struct PodOptions {
    /// Pod name (the sandbox's container ID).
    pub name: String,
    /// The state directory.
    pub state: StateDir,
    /// The UVM.
    pub boot: BootOptions,
    /// The pod's network.
    pub network: Network,
    /// The pod's hostname (the name when `None`).
    pub hostname: Option<String>,
    /// Removed with its last container (`rgcs run -d`).
    pub auto_remove: bool,
    /// The image cache.
    pub cache_dir: PathBuf,
    /// Each workload's scratch disk, bytes.
    pub scratch_size: u64,
    /// The network as given, for the record.
    pub network_text: String,
    /// The ports as given, for the record.
    pub ports_text: Vec<String>,
}

/// A pod request (beside the control socket's own).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PodRequest {
    /// Runs an image as a workload, detached; answers its init PID.
    RunImage {
        /// Container ID.
        id: String,
        /// Image path (OCI layout or archive) on the host.
        image: String,
        /// Replaces the image's entrypoint and cmd when not empty.
        #[serde(default)]
        command: Vec<String>,
        /// `K=V` entries after the image's.
        #[serde(default)]
        env: Vec<String>,
    },
    /// SIGTERM, then SIGKILL after `timeout_secs`; answers the exit code.
    Stop {
        /// Container ID.
        id: String,
        /// Grace period.
        timeout_secs: u64,
    },
    /// Deletes a container (a running one only with `force`, which kills it first).
    Remove {
        /// Container ID.
        id: String,
        /// Kill it if it runs.
        force: bool,
    },
    /// Answers when the container's init has exited, with its code.
    WaitExit {
        /// Container ID.
        id: String,
    },
    /// Stops every container and the UVM, and removes the pod.
    Shutdown {
        /// Also when containers run.
        force: bool,
    },
}

const POD_OPS: [&str; 5] = ["run_image", "stop", "remove", "wait_exit", "shutdown"];

/// A workload the server runs.
#[derive(Debug)]
struct Live {
    rootfs: Option<ContainerRootfs>,
    pid: u32,
    exit: watch::Receiver<Option<u32>>,
}

/// The pod's side of the control socket.
struct Pod {
    name: String,
    dir: PodDir,
    client: Arc<ContainerClient>,
    bridge: Arc<BridgeClient>,
    uvm: Arc<Uvm>,
    storage: tokio::sync::Mutex<UvmStorage>,
    sandbox_pid: u32,
    auto_remove: bool,
    cache_dir: PathBuf,
    scratch_size: u64,
    containers: Mutex<HashMap<String, Live>>,
    shutdown: Notify,
}

/// Errors of the pod server's start.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The UVM did not boot.
    #[error("the pod's utility VM did not boot")]
    Boot(#[from] crate::session::SessionError),
    /// A step of the start failed.
    #[error("{0}")]
    Step(String),
    /// The state directory failed.
    #[error("pod state {0}")]
    State(String, #[source] std::io::Error),
}

fn step<E: std::error::Error>(what: &str) -> impl FnOnce(E) -> PodError + '_ {
    move |e| PodError::Step(format!("{what}: {}", error_chain(&e)))
}

/// Runs the pod until it is removed or its UVM ends. Writes the pod's record as it goes: a start
/// that fails is recorded with its reason (the CLI that started the server shows it).
pub async fn serve(opts: PodOptions) -> Result<(), PodError> {
    let dir = opts.state.pod(&opts.name);
    dir.create()
        .map_err(|e| PodError::State(format!("create {}", dir.path.display()), e))?;
    let pid = std::process::id();
    let mut record = PodRecord {
        name: opts.name.clone(),
        server_pid: pid,
        server_start: process_start(pid).unwrap_or(0),
        created: now(),
        phase: PodPhase::Starting,
        error: None,
        auto_remove: opts.auto_remove,
        network: opts.network_text.clone(),
        ports: opts.ports_text.clone(),
        sandbox_pid: None,
    };
    let write = |r: &PodRecord| {
        dir.write_record(r)
            .map_err(|e| PodError::State("write pod.json".into(), e))
    };
    write(&record)?;
    let session = match Session::boot(&opts.boot).await {
        Ok(s) => s,
        Err(e) => {
            record.phase = PodPhase::Failed;
            record.error = Some(error_chain(&e));
            write(&record)?;
            return Err(e.into());
        }
    };
    let Session { uvm, bridge, .. } = session;
    let uvm = Arc::new(uvm);
    let bridge = Arc::new(bridge);
    let client = Arc::new(ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix()));
    let mut net = None;
    let started = start_sandbox(&opts, &uvm, &bridge, &client, &mut net).await;
    let result = match started {
        Ok(sandbox_pid) => {
            record.phase = PodPhase::Running;
            record.sandbox_pid = Some(sandbox_pid);
            write(&record)?;
            tracing::info!(pod = %opts.name, sandbox_pid, "pod running");
            run_pod(&opts, dir.clone(), &uvm, &bridge, &client, sandbox_pid).await
        }
        Err(e) => {
            record.phase = PodPhase::Failed;
            record.error = Some(e.to_string());
            write(&record)?;
            Err(e)
        }
    };
    // The sandbox, the NIC, then the UVM.
    let sid = sandbox_id(&opts.name);
    let _ = client.shutdown_container(&sid, ShutdownKind::Forced).await;
    let _ = client.delete_container_state(&sid).await;
    if let Some((mut n, nic)) = net {
        let nic: AttachedNic = nic;
        let n: &mut UvmNetwork = &mut n;
        if let Err(e) = n.detach(&bridge, nic).await {
            tracing::warn!(error = %error_chain(&e), "detach the pod's NIC");
        }
    }
    let _ = bridge.shutdown_uvm(true).await;
    let _ = uvm.wait(POWER_OFF_TIMEOUT).await;
    match Arc::try_unwrap(uvm) {
        Ok(uvm) => {
            uvm.shutdown().await;
        }
        Err(_) => tracing::warn!("the UVM is still referenced; it stops when the server exits"),
    }
    if result.is_ok() {
        let _ = dir.remove();
    }
    result
}

/// Prepares `/pause`, attaches the NIC to the pod's namespace and creates and starts the sandbox.
async fn start_sandbox(
    opts: &PodOptions,
    uvm: &Uvm,
    bridge: &BridgeClient,
    client: &ContainerClient,
    net: &mut Option<(UvmNetwork, AttachedNic)>,
) -> Result<u32, PodError> {
    prepare_pause_rootfs(client)
        .await
        .map_err(step("prepare /pause"))?;
    let mut network = UvmNetwork::new(uvm).await.map_err(step("QMP"))?;
    let nic = network
        .attach(
            bridge,
            &opts.name,
            &opts.network.mode,
            &opts.network.ports,
            &opts.network.dns,
        )
        .await
        .map_err(step("attach the pod's network"))?;
    let has_nic = nic.is_some();
    if let Some(nic) = nic {
        *net = Some((network, nic));
    }
    let sid = sandbox_id(&opts.name);
    let mut spec = ContainerSpec::new(&sid, PAUSE_ROOTFS, ProcessSpec::new(["/pause"]));
    spec.pod = Some(PodRole::Sandbox);
    spec.readonly_rootfs = true;
    spec.hostname = Some(opts.hostname.clone().unwrap_or_else(|| opts.name.clone()));
    // The NIC was added for the namespace named after the pod.
    spec.network_namespace = Some(opts.name.clone());
    if !has_nic {
        spec.annotations
            .insert("io.microsoft.cri.skip-pod-networking".into(), "true".into());
    }
    let config = spec.config().map_err(step("sandbox spec"))?;
    client
        .create_container(&sid, config)
        .await
        .map_err(step("create the sandbox"))?;
    client.start(&sid).await.map_err(step("start the sandbox"))?;
    let (pid, _stdio) = client
        .execute_process(&sid, init_process(Pipes::NONE))
        .await
        .map_err(step("start /pause"))?;
    Ok(pid)
}

/// Serves the control socket until shutdown; then removes every workload.
async fn run_pod(
    opts: &PodOptions,
    dir: PodDir,
    uvm: &Arc<Uvm>,
    bridge: &Arc<BridgeClient>,
    client: &Arc<ContainerClient>,
    sandbox_pid: u32,
) -> Result<(), PodError> {
    let storage = UvmStorage::new(uvm).await.map_err(step("QMP"))?;
    let pod = Arc::new(Pod {
        name: opts.name.clone(),
        dir: dir.clone(),
        client: Arc::clone(client),
        bridge: Arc::clone(bridge),
        uvm: Arc::clone(uvm),
        storage: tokio::sync::Mutex::new(storage),
        sandbox_pid,
        auto_remove: opts.auto_remove,
        cache_dir: opts.cache_dir.clone(),
        scratch_size: opts.scratch_size,
        containers: Mutex::new(HashMap::new()),
        shutdown: Notify::new(),
    });
    let server = Arc::new(
        ControlServer::new(Arc::clone(client), &dir.path)
            .with_extension(Arc::clone(&pod) as Arc<dyn Extension>),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve().await {
            tracing::error!(error = %error_chain(&e), "control socket failed");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(step("SIGTERM handler"))?;
    let ended = tokio::select! {
        () = pod.shutdown.notified() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        status = uvm.wait(Duration::from_secs(365 * 24 * 3600)) => {
            Err(PodError::Step(format!("the pod's UVM ended: {status:?}")))
        }
    };
    task.abort();
    let _ = task.await;
    let ids: Vec<String> = pod.lock().keys().cloned().collect();
    for id in ids {
        if let Err(e) = pod.remove(&id, true).await {
            tracing::warn!(container = %id, error = %e, "remove at pod shutdown");
        }
    }
    ended
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.name)
            .field("sandbox_pid", &self.sandbox_pid)
            .finish_non_exhaustive()
    }
}

impl Extension for Pod {
    fn handle<'a>(&'a self, line: &'a str) -> Option<Handled<'a>> {
        let op = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let op = op.get("op")?.as_str()?;
        if !POD_OPS.contains(&op) {
            return None;
        }
        Some(Box::pin(async move {
            let req = match serde_json::from_str::<PodRequest>(line) {
                Ok(r) => r,
                Err(e) => return (Answer::err(format!("bad request: {e}")), Vec::new()),
            };
            match self.request(req).await {
                Ok(a) => (a, Vec::new()),
                Err(e) => (Answer::err(e), Vec::new()),
            }
        }))
    }
}

fn with_pid(pid: u32) -> Answer {
    Answer {
        pid: Some(pid),
        ..Answer::ok()
    }
}

fn with_code(code: u32) -> Answer {
    Answer {
        exit_code: Some(code),
        ..Answer::ok()
    }
}

impl Pod {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn request(&self, req: PodRequest) -> Result<Answer, String> {
        match req {
            PodRequest::RunImage {
                id,
                image,
                command,
                env,
            } => self.run_image(&id, &image, &command, &env).await.map(with_pid),
            PodRequest::Stop { id, timeout_secs } => self.stop(&id, timeout_secs).await.map(with_code),
            PodRequest::Remove { id, force } => {
                self.remove(&id, force).await?;
                if self.auto_remove && self.lock().is_empty() {
                    self.shutdown.notify_one();
                }
                Ok(Answer::ok())
            }
            PodRequest::WaitExit { id } => self.wait_exit(&id).await.map(with_code),
            PodRequest::Shutdown { force } => {
                let running: Vec<String> = self
                    .lock()
                    .iter()
                    .filter(|(_, l)| l.exit.borrow().is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                if !running.is_empty() && !force {
                    return Err(format!(
                        "pod {} has running containers {running:?}: stop them or use -f",
                        self.name
                    ));
                }
                self.shutdown.notify_one();
                Ok(Answer::ok())
            }
        }
    }

    fn exit_of(&self, id: &str) -> Result<watch::Receiver<Option<u32>>, String> {
        self.lock()
            .get(id)
            .map(|l| l.exit.clone())
            .ok_or_else(|| format!("no such container: {id}"))
    }

    async fn wait_exit(&self, id: &str) -> Result<u32, String> {
        let mut rx = self.exit_of(id)?;
        let code = *rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the container's waiter stopped".to_owned())?;
        code.ok_or_else(|| "no exit code".to_owned())
    }

    async fn run_image(
        &self,
        id: &str,
        image_path: &str,
        command: &[String],
        env: &[String],
    ) -> Result<u32, String> {
        super::state::check_name(id)?;
        if self.lock().contains_key(id) {
            return Err(format!("the container name {id:?} is already in use"));
        }
        let path = PathBuf::from(image_path);
        let cache = self.cache_dir.clone();
        let image = tokio::task::spawn_blocking(move || image::import(&path, &cache, &NoProgress))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot import the image {image_path}: {}", error_chain(&e)))?;
        if image.layers.len() > crate::run::MAX_LAYERS {
            return Err(format!("the image has {} layers", image.layers.len()));
        }
        let process =
            crate::run::image_process(&image.config, command, env, false).map_err(|e| error_chain(&e))?;
        let root = self
            .storage
            .lock()
            .await
            .mount(&self.uvm, &self.bridge, &image, id, self.scratch_size, &[])
            .await
            .map_err(|e| error_chain(&e))?;
        match self.create_workload(id, &root, process.clone()).await {
            Ok((pid, stdio)) => {
                let (tx, rx) = watch::channel(None);
                self.lock().insert(
                    id.to_owned(),
                    Live {
                        rootfs: Some(root),
                        pid,
                        exit: rx,
                    },
                );
                let record = ContainerRecord {
                    id: id.to_owned(),
                    pod: self.name.clone(),
                    image: image_path.to_owned(),
                    command: process.args.clone(),
                    created: now(),
                    pid: Some(pid),
                    exit_code: None,
                };
                let _ = self.dir.write_container(&record);
                let log = spawn_log(self.dir.log_path(id), stdio);
                let client = Arc::clone(&self.client);
                let dir = self.dir.clone();
                let cid = id.to_owned();
                tokio::spawn(async move {
                    let code = client.wait_for_process(&cid, pid, None).await.unwrap_or(255);
                    // The output is complete before the exit shows.
                    let _ = log.await;
                    let mut record = record;
                    record.exit_code = Some(code);
                    let _ = dir.write_container(&record);
                    let _ = tx.send(Some(code));
                });
                Ok(pid)
            }
            Err(e) => {
                self.storage.lock().await.unmount(&self.bridge, root).await;
                Err(e)
            }
        }
    }

    /// Create, start and the init with stdout and stderr for the log.
    async fn create_workload(
        &self,
        id: &str,
        root: &ContainerRootfs,
        process: ProcessSpec,
    ) -> Result<(u32, rgcs_client::HostStdio), String> {
        let mut spec = ContainerSpec::new(id, root.rootfs.clone(), process);
        spec.pod = Some(PodRole::Workload {
            sandbox_id: sandbox_id(&self.name),
            sandbox_pid: self.sandbox_pid,
            share_pid: false,
        });
        spec.network_namespace = Some(self.name.clone());
        let mut config = spec.config().map_err(|e| e.to_string())?;
        if let Some(oci) = config.oci_specification.as_mut() {
            add_binds(oci, &root.binds);
        }
        self.client
            .create_container(id, config)
            .await
            .map_err(|e| crate::run::program_error(&e).map_or_else(|| error_chain(&e), |p| p.to_string()))?;
        let started = async {
            self.client.start(id).await?;
            self.client
                .execute_process(
                    id,
                    init_process(Pipes {
                        stdin: false,
                        stdout: true,
                        stderr: true,
                    }),
                )
                .await
        }
        .await;
        match started {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = self.client.delete_container_state(id).await;
                Err(error_chain(&e))
            }
        }
    }

    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<u32, String> {
        let pid = self
            .lock()
            .get(id)
            .map(|l| l.pid)
            .ok_or_else(|| format!("no such container: {id}"))?;
        let mut rx = self.exit_of(id)?;
        if let Some(code) = *rx.borrow() {
            return Ok(code);
        }
        let _ = self.client.signal_process(id, pid, Some(libc::SIGTERM)).await;
        let exited = tokio::time::timeout(Duration::from_secs(timeout_secs), rx.wait_for(Option::is_some))
            .await
            .is_ok();
        if !exited {
            let _ = self.client.shutdown_container(id, ShutdownKind::Forced).await;
        }
        self.wait_exit(id).await
    }

    async fn remove(&self, id: &str, force: bool) -> Result<(), String> {
        let mut rx = self.exit_of(id)?;
        if rx.borrow().is_none() {
            if !force {
                return Err(format!(
                    "you cannot remove a running container {id}: stop it first, or use -f"
                ));
            }
            let _ = self.client.shutdown_container(id, ShutdownKind::Forced).await;
            let waited = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
                .await
                .is_ok();
            if !waited {
                tracing::warn!(container = %id, "no exit within 30 s of SIGKILL");
            }
        }
        let live = self.lock().remove(id);
        self.client
            .delete_container_state(id)
            .await
            .map_err(|e| error_chain(&e))?;
        if let Some(root) = live.and_then(|l| l.rootfs) {
            self.storage.lock().await.unmount(&self.bridge, root).await;
        }
        self.dir.remove_container(id);
        Ok(())
    }
}

/// Copies a workload's stdout and stderr into its log file (interleaved as they come), rotating
/// at [`MAX_LOG`]; ends when both streams end.
fn spawn_log(path: PathBuf, stdio: rgcs_client::HostStdio) -> tokio::task::JoinHandle<()> {
    let log = Arc::new(Mutex::new(BoundedLog::open(path)));
    let copy = |s: Option<tokio::net::UnixStream>, log: Arc<Mutex<BoundedLog>>| async move {
        let Some(mut s) = s else { return };
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Ok(mut l) = log.lock() {
                        l.write(&buf[..n]);
                    }
                }
            }
        }
    };
    let (a, b) = (copy(stdio.stdout, Arc::clone(&log)), copy(stdio.stderr, log));
    tokio::spawn(async move {
        tokio::join!(a, b);
    })
}

/// An append-only log with one rotation.
struct BoundedLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
}

impl BoundedLog {
    fn open(path: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Self { path, file, size }
    }

    fn write(&mut self, data: &[u8]) {
        use std::io::Write;
        if self.size + data.len() as u64 > MAX_LOG {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            *self = Self::open(self.path.clone());
        }
        if let Some(f) = &mut self.file {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_once_past_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.log");
        let mut log = BoundedLog::open(path.clone());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            log.write(&chunk);
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(path.with_extension("log.1")).unwrap().len();
        assert!(cur <= MAX_LOG && old <= MAX_LOG, "{cur} {old}");
        assert_eq!((cur + old) % (1 << 20), 0);
    }
}
