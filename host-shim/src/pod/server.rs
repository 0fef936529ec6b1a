//! The pod server (`rgcs pod serve`, started in the background by `rgcs pod create` and
//! `rgcs run -d`): it boots the pod's UVM, attaches its NIC, creates the sandbox (`/pause`, no
//! image), and then serves the pod's control socket until `pod rm`, SIGTERM or the UVM's end.
//! Beside the control requests of [`crate::control`] (exec, ps, stats, resize, wait, kill) it
//! answers the pod's own: run an image as a workload, stop, remove, wait for an exit, shut down.
//! Each workload's stdout and stderr go to a bounded log file the CLI reads. The pod's requests
//! are [`super::workloads`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgcs_client::{
    init_process, prepare_pause_rootfs, BridgeClient, ContainerClient, ContainerSpec, Pipes, PodRole,
    ProcessSpec, ShutdownKind, PAUSE_ROOTFS,
};
use rgcs_protocol::error_chain;
use tokio::sync::Notify;

use super::state::{now, process_start, sandbox_id, PodDir, PodPhase, PodRecord, StateDir};
use super::workloads::Pod;
use crate::control::{ControlServer, Extension};
use crate::net::{AttachedNic, Network, UvmNetwork};
use crate::rootfs::UvmStorage;
use crate::session::{BootOptions, Session, POWER_OFF_TIMEOUT};
use crate::vm::Uvm;

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
    if let Some((mut network, nic)) = net {
        if let Err(e) = network.detach(&bridge, nic).await {
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
