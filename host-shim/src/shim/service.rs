//! The `containerd.task.v2.Task` service: one shim per pod (or standalone task), dispatching on
//! the task ID each request carries. Create boots the UVM for a sandbox or standalone task and
//! creates the container in the guest; Start runs its init; Exec/Start run execs; the guest's
//! WaitForProcess answer is the exit, published as TaskExit once the output is drained.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::Task as TaskService;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, asynchronous::TtrpcContext};
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use rgcs_client::spec::bundle_path;
use rgcs_client::{
    init_process, prepare_pause_rootfs, ContainerSpec, Pipes, PodRole, ProcessSpec, ShutdownKind,
    PAUSE_ROOTFS,
};
use rgcs_protocol::error_chain;
use rgcs_protocol::message::{ContainerConfig, ProcessParameters, PropertyType, SchemaVersion};
use tokio::sync::Notify;

use super::events::Publisher;
use super::io::{Opened, StdioPaths};
use super::spec::{self as shimspec, Kind};
use super::task::{Phase, Proc, Task};
use super::vm::Vm;
use super::{metrics, rootfs, ShimError};
use crate::session::BootOptions;

/// How long after an exit the output may still flow before the exit is reported.
const DRAIN: Duration = Duration::from_secs(2);
/// How often a running container's OOM-kill count is read.
const OOM_POLL: Duration = Duration::from_secs(2);

/// The shim's state.
pub struct Shim {
    events: Publisher,
    boot: BootOptions,
    vm: tokio::sync::Mutex<Option<Arc<Vm>>>,
    tasks: Arc<Mutex<HashMap<String, Arc<Task>>>>,
    /// Running sandboxes and workload Creates in flight.
    pods: Mutex<Pods>,
    /// Notified when the shim should exit.
    pub exit: Arc<Notify>,
}

/// The pod bookkeeping a workload's Create and the sandbox's Delete check under one lock.
#[derive(Debug, Default)]
struct Pods {
    /// Sandbox init guest PIDs by sandbox ID.
    sandboxes: HashMap<String, u32>,
    /// Workload Creates in flight (the sandbox cannot go meanwhile).
    creating: usize,
}

/// Counts a workload Create in flight until dropped.
struct Creating<'a>(&'a Mutex<Pods>);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        let mut p = lock(self.0);
        p.creating = p.creating.saturating_sub(1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Reply<T> = ttrpc::Result<T>;

impl Shim {
    /// A shim with no task yet.
    pub fn new(events: Publisher, boot: BootOptions) -> Self {
        Self {
            events,
            boot,
            vm: tokio::sync::Mutex::new(None),
            tasks: Arc::new(Mutex::new(HashMap::new())),
            pods: Mutex::new(Pods::default()),
            exit: Arc::new(Notify::new()),
        }
    }

    fn task(&self, id: &str) -> Result<Arc<Task>, ShimError> {
        lock(&self.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))
    }

    fn proc(&self, id: &str, exec_id: &str) -> Result<(Arc<Task>, Arc<Proc>), ShimError> {
        let t = self.task(id)?;
        let p = t
            .process(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("process {exec_id} of task {id}")))?;
        Ok((t, p))
    }

    async fn vm(&self) -> Result<Arc<Vm>, ShimError> {
        self.vm
            .lock()
            .await
            .clone()
            .ok_or_else(|| ShimError::Precondition("the pod's UVM is not running".into()))
    }

    /// The PID containerd sees: QEMU's.
    async fn host_pid(&self) -> u32 {
        self.vm.lock().await.as_ref().map_or(0, |v| v.pid())
    }

    async fn create(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
        rgcs_client::spec::check_id(&req.id).map_err(|e| ShimError::Invalid(e.to_string()))?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restore from a checkpoint".into()));
        }
        if lock(&self.tasks).contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("task {}", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| ShimError::Invalid(format!("{}/config.json: {e}", req.bundle)))?;
        let kind = shimspec::kind(&spec);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // The UVM: booted by a sandbox or standalone task, joined by workloads.
        let began = std::time::Instant::now();
        let mut creating = None;
        let (vm, booted) = match &kind {
            Kind::Workload { sandbox } => {
                {
                    let mut pods = lock(&self.pods);
                    if !pods.sandboxes.contains_key(sandbox) {
                        return Err(ShimError::Precondition(format!(
                            "sandbox {sandbox} is not running"
                        )));
                    }
                    pods.creating += 1;
                }
                creating = Some(Creating(&self.pods));
                (self.vm().await?, false)
            }
            Kind::Sandbox | Kind::Standalone => {
                let mut slot = self.vm.lock().await;
                if slot.is_some() {
                    return Err(ShimError::Precondition(format!(
                        "this shim already runs a UVM; task {} needs its own shim",
                        req.id
                    )));
                }
                let vm = Arc::new(Vm::boot(&self.boot, &shimspec::net_plan(&spec), &req.id).await?);
                *slot = Some(Arc::clone(&vm));
                drop(slot);
                self.watch_vm(Arc::clone(&vm));
                (vm, true)
            }
        };
        let boot_ms = if booted { began.elapsed().as_millis() } else { 0 };
        let made = self.create_in_guest(&vm, req, &bundle, spec, &kind, &stdio).await;
        match made {
            Ok((task, rootfs_ms, create_ms)) => {
                tracing::info!(task = %req.id, boot_ms, rootfs_ms, create_ms, "task created");
                lock(&self.tasks).insert(req.id.clone(), Arc::new(task));
                drop(creating);
                let pid = vm.pid();
                self.events
                    .publish(
                        topics::TASK_CREATE_EVENT_TOPIC,
                        &TaskCreate {
                            container_id: req.id.clone(),
                            bundle: req.bundle.clone(),
                            rootfs: req.rootfs.clone(),
                            io: MessageField::some(TaskIO {
                                stdin: req.stdin.clone(),
                                stdout: req.stdout.clone(),
                                stderr: req.stderr.clone(),
                                terminal: req.terminal,
                                ..Default::default()
                            }),
                            checkpoint: req.checkpoint.clone(),
                            pid,
                            ..Default::default()
                        },
                    )
                    .await;
                Ok(pid)
            }
            Err(e) => {
                if booted {
                    self.vm.lock().await.take();
                    power_off(vm).await;
                }
                Err(e)
            }
        }
    }

    async fn create_in_guest(
        &self,
        vm: &Arc<Vm>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        mut spec: Spec,
        kind: &Kind,
        stdio: &StdioPaths,
    ) -> Result<(Task, u128, u128), ShimError> {
        let began = std::time::Instant::now();
        let id = req.id.as_str();
        let mut task = Task {
            id: id.to_owned(),
            bundle: bundle.to_path_buf(),
            kind: kind.clone(),
            init: Proc::new("", stdio.clone(), None),
            execs: Mutex::new(HashMap::new()),
            shares: tokio::sync::Mutex::new(Vec::new()),
            host_rootfs: None,
            rootfs_mounts: req.rootfs.clone(),
        };
        let config = if *kind == Kind::Sandbox {
            // The pod's sandbox runs rgcs's own pause; the pause image is not needed in the UVM.
            prepare_pause_rootfs(&vm.client)
                .await
                .map_err(|e| ShimError::Guest(format!("prepare /pause: {}", error_chain(&e))))?;
            let mut s = ContainerSpec::new(id, PAUSE_ROOTFS, ProcessSpec::new(["/pause"]));
            s.pod = Some(PodRole::Sandbox);
            s.readonly_rootfs = true;
            s.hostname = spec.hostname().clone();
            s.network_namespace = Some(id.to_owned());
            if !vm.has_nic().await {
                s.annotations
                    .insert("io.microsoft.cri.skip-pod-networking".into(), "true".into());
            }
            s.config().map_err(|e| ShimError::Invalid(e.to_string()))?
        } else {
            let (sandbox_pid, ns) = match kind {
                Kind::Workload { sandbox } => {
                    (lock(&self.pods).sandboxes.get(sandbox).copied(), sandbox.clone())
                }
                _ => (None, id.to_owned()),
            };
            let guest_bundle = bundle_path(id);
            let guest_root = format!("{guest_bundle}/rootfs");
            let host_root = bundle.join("rootfs");
            let binds = shimspec::adapt(&mut spec, &guest_root, stdio.terminal, sandbox_pid, &ns)?;
            rootfs::mount_host_rootfs(&req.rootfs, &host_root)?;
            task.host_rootfs = Some(host_root.clone());
            let shared = self
                .share_all(vm, &task, &mut spec, &host_root, &guest_root, &binds)
                .await;
            if let Err(e) = shared {
                self.release(vm, &task).await;
                return Err(e);
            }
            ContainerConfig {
                schema_version: SchemaVersion::V2_1,
                oci_specification: Some(spec),
                scratch_dir_path: format!("{guest_bundle}/scratch/{id}"),
                oci_bundle_path: guest_bundle,
            }
        };
        let rootfs_ms = began.elapsed().as_millis();
        if let Err(e) = vm.client.create_container(id, config).await {
            self.release(vm, &task).await;
            return Err(ShimError::from_guest(&e));
        }
        Ok((task, rootfs_ms, began.elapsed().as_millis() - rootfs_ms))
    }

    async fn share_all(
        &self,
        vm: &Vm,
        task: &Task,
        spec: &mut Spec,
        host_root: &Path,
        guest_root: &str,
        binds: &[shimspec::HostBind],
    ) -> Result<(), ShimError> {
        let mut storage = vm.storage.lock().await;
        let mut shares = task.shares.lock().await;
        let err = |e: crate::rootfs::RootfsError| ShimError::Guest(error_chain(&e));
        shares.push(
            storage
                .share_dir(&vm.uvm, &vm.bridge, host_root, guest_root, false)
                .await
                .map_err(err)?,
        );
        for (i, b) in binds.iter().enumerate() {
            let mount = format!("{}/mounts/m{i}", bundle_path(&task.id));
            shares.push(
                storage
                    .share_dir(&vm.uvm, &vm.bridge, &b.dir, &mount, b.read_only)
                    .await
                    .map_err(err)?,
            );
            shimspec::set_bind_source(spec, b, &mount);
        }
        Ok(())
    }

    /// Undoes shares and the host rootfs mount (guest container already gone or never made).
    async fn release(&self, vm: &Vm, task: &Task) {
        let shares: Vec<_> = task.shares.lock().await.drain(..).collect();
        if !shares.is_empty() {
            let mut storage = vm.storage.lock().await;
            for s in shares.iter().rev() {
                storage.unshare_dir(&vm.bridge, s).await;
            }
        }
        if let Some(root) = &task.host_rootfs {
            rootfs::unmount_host_rootfs(root);
        }
    }

    /// When QEMU exits on its own, every process of every task has exited.
    fn watch_vm(&self, vm: Arc<Vm>) {
        let exited = vm.uvm.qemu_exited();
        drop(vm);
        let events = self.events.clone();
        let tasks = Arc::clone(&self.tasks);
        tokio::spawn(async move {
            let status = exited.await;
            let all: Vec<Arc<Task>> = lock(&tasks).values().cloned().collect();
            if all.is_empty() {
                return;
            }
            tracing::error!(?status, "the UVM exited under its tasks");
            for t in all {
                for p in t.live() {
                    if p.set_exited(128 + 9) {
                        publish_exit(&events, &t.id, &p, 0).await;
                    }
                }
            }
        });
    }

    /// Removes every task and powers the UVM off (Shutdown with `now`, SIGTERM).
    pub async fn stop_all(&self) {
        let tasks: Vec<Arc<Task>> = lock(&self.tasks).drain().map(|(_, t)| t).collect();
        let vm = self.vm.lock().await.take();
        for t in &tasks {
            for p in lock(&t.execs).values() {
                p.stop_io();
            }
            t.init.stop_io();
            match &vm {
                Some(vm) => self.release(vm, t).await,
                None => {
                    if let Some(root) = &t.host_rootfs {
                        rootfs::unmount_host_rootfs(root);
                    }
                }
            }
        }
        if let Some(vm) = vm {
            power_off(vm).await;
        }
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let (task, proc) = self.proc(id, exec_id)?;
        if !proc.begin_start() {
            return Err(ShimError::Precondition(format!(
                "process {id}/{exec_id} was started already"
            )));
        }
        match self.start_guest(&task, &proc, id, exec_id).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                proc.start_failed();
                Err(e)
            }
        }
    }

    async fn start_guest(
        &self,
        task: &Task,
        proc: &Arc<Proc>,
        id: &str,
        exec_id: &str,
    ) -> Result<u32, ShimError> {
        let vm = self.vm().await?;
        let began = std::time::Instant::now();
        let opened =
            Opened::open(&proc.stdio).map_err(|e| ShimError::io("open the stdio FIFOs".into(), e))?;
        let pipes = opened.pipes();
        let params = match &proc.spec {
            None => {
                vm.client.start(id).await.map_err(|e| ShimError::from_guest(&e))?;
                init_process(pipes)
            }
            Some(p) => exec_params(p, pipes),
        };
        let (guest_pid, host) = vm
            .client
            .execute_process(id, params)
            .await
            .map_err(|e| ShimError::from_guest(&e))?;
        proc.set_wired(opened.wire(host));
        proc.set_running(guest_pid);
        tracing::info!(task = %id, exec = %exec_id, start_ms = began.elapsed().as_millis(), "task started");
        let pid = vm.pid();
        if exec_id.is_empty() {
            if task.kind == Kind::Sandbox {
                lock(&self.pods).sandboxes.insert(id.to_owned(), guest_pid);
            }
            self.events
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    &TaskStart {
                        container_id: id.to_owned(),
                        pid,
                        ..Default::default()
                    },
                )
                .await;
            if task.kind != Kind::Sandbox {
                tokio::spawn(watch_oom(
                    Arc::clone(&vm),
                    self.events.clone(),
                    id.to_owned(),
                    Arc::clone(proc),
                ));
            }
        } else {
            self.events
                .publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    &TaskExecStarted {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        pid,
                        ..Default::default()
                    },
                )
                .await;
        }
        // The waiter: the guest's answer is the exit; the output is drained before it is told.
        let events = self.events.clone();
        let id = id.to_owned();
        let proc = Arc::clone(proc);
        tokio::spawn(async move {
            let waited = vm.client.wait_for_process(&id, guest_pid, None).await;
            proc.set_exited_in_guest();
            drop(vm);
            let code = match waited {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(task = %id, exec = %proc.exec_id, error = %error_chain(&e), "wait failed; reporting 255");
                    255
                }
            };
            let wired = lock(&proc.wired).take();
            if let Some(mut w) = wired {
                w.drain(DRAIN).await;
                *lock(&proc.wired) = Some(w);
            }
            if proc.set_exited(code) {
                publish_exit(&events, &id, &proc, pid).await;
            }
        });
        Ok(pid)
    }

    async fn kill(&self, req: &api::KillRequest) -> Result<(), ShimError> {
        let (task, proc) = self.proc(&req.id, &req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ShimError::Invalid(format!("signal {}", req.signal)))?;
        let finished = || ShimError::NotFound(format!("process {}/{} already finished", req.id, req.exec_id));
        let init_all = req.all && req.exec_id.is_empty();
        match proc.phase() {
            Phase::Starting => Err(ShimError::Precondition(format!(
                "process {}/{} is being started",
                req.id, req.exec_id
            ))),
            Phase::Created => {
                // Never started: nothing runs in the guest; the process ends as if signalled.
                if proc.set_exited(128 + signal.unsigned_abs()) {
                    publish_exit(&self.events, &req.id, &proc, self.host_pid().await).await;
                }
                Ok(())
            }
            Phase::Stopped if init_all && !task.live().is_empty() => {
                // The init is gone but execs live on: `all` reaches them.
                let vm = self.vm().await?;
                for p in task.live() {
                    if let Phase::Running(pid) = p.phase() {
                        let _ = vm.client.signal_process(&req.id, pid, Some(signal)).await;
                    }
                }
                Ok(())
            }
            Phase::Stopped => Err(finished()),
            Phase::Running(_) if proc.gone() && !init_all => Err(finished()),
            Phase::Running(pid) => {
                let vm = self.vm().await?;
                if init_all && signal == libc::SIGKILL && task.kind != Kind::Sandbox {
                    // Every process of the container: the guest's forced shutdown.
                    return match vm.client.shutdown_container(&req.id, ShutdownKind::Forced).await {
                        Ok(()) => Ok(()),
                        Err(_) if proc.gone() => Err(finished()),
                        Err(e) => Err(ShimError::from_guest(&e)),
                    };
                }
                if init_all {
                    let props = vm
                        .client
                        .get_properties(&req.id, &[PropertyType::ProcessList])
                        .await;
                    for p in props.map(|p| p.process_list).unwrap_or_default() {
                        if p.process_id != pid {
                            let _ = vm
                                .client
                                .signal_process(&req.id, p.process_id, Some(signal))
                                .await;
                        }
                    }
                }
                match vm.client.signal_process(&req.id, pid, Some(signal)).await {
                    Ok(()) => Ok(()),
                    Err(_) if proc.gone() => Err(finished()),
                    Err(e) => Err(ShimError::from_guest(&e)),
                }
            }
        }
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let (task, proc) = self.proc(id, exec_id)?;
        match proc.phase() {
            Phase::Running(_) | Phase::Starting => {
                return Err(ShimError::Precondition(format!(
                    "process {id}/{exec_id} is running: kill it first"
                )))
            }
            // Never started: it ends now (a Wait on it returns).
            Phase::Created => {
                proc.set_exited(128 + 9);
            }
            Phase::Stopped => {}
        }
        let pid = self.host_pid().await;
        let exit = proc.exit();
        let resp = api::DeleteResponse {
            pid,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.as_ref().map(|e| e.at.clone()).into(),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            proc.stop_io();
            task.remove_exec(exec_id);
            return Ok(resp);
        }
        if task.kind == Kind::Sandbox {
            // Under the pods lock: no workload Create may start once the sandbox is going.
            let mut pods = lock(&self.pods);
            let others: Vec<String> = lock(&self.tasks).keys().filter(|k| *k != id).cloned().collect();
            if !others.is_empty() || pods.creating > 0 {
                return Err(ShimError::Precondition(format!(
                    "sandbox {id} still has containers {others:?} ({} being created)",
                    pods.creating
                )));
            }
            pods.sandboxes.remove(id);
        }
        let live = task.live();
        if !live.is_empty() {
            // Execs outliving their init (a shared PID namespace): the container goes with them.
            if let Some(vm) = self.vm.lock().await.clone() {
                let _ = vm.client.shutdown_container(id, ShutdownKind::Forced).await;
            }
            for p in live {
                if p.set_exited(128 + 9) {
                    publish_exit(&self.events, id, &p, pid).await;
                }
            }
        }
        for p in lock(&task.execs).drain().map(|(_, p)| p) {
            p.stop_io();
        }
        proc.stop_io();
        if let Some(vm) = self.vm.lock().await.clone() {
            if let Err(e) = vm.client.delete_container_state(id).await {
                tracing::warn!(task = %id, error = %error_chain(&e), "guest delete");
            }
            self.release(&vm, &task).await;
        } else if let Some(root) = &task.host_rootfs {
            rootfs::unmount_host_rootfs(root);
        }
        lock(&self.tasks).remove(id);
        if !matches!(task.kind, Kind::Workload { .. }) {
            if let Some(vm) = self.vm.lock().await.take() {
                power_off(vm).await;
            }
        }
        self.events
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                &TaskDelete {
                    container_id: id.to_owned(),
                    pid,
                    exit_status: resp.exit_status,
                    exited_at: resp.exited_at.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(resp)
    }

    async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        let (task, proc) = self.proc(id, exec_id)?;
        let status = match proc.phase() {
            Phase::Created | Phase::Starting => Status::CREATED,
            Phase::Running(_) => Status::RUNNING,
            Phase::Stopped => Status::STOPPED,
        };
        let exit = proc.exit();
        Ok(api::StateResponse {
            id: id.to_owned(),
            bundle: task.bundle.display().to_string(),
            pid: self.host_pid().await,
            status: status.into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        })
    }

    async fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::Invalid("an exec needs an ID".into()));
        }
        if !matches!(task.init.phase(), Phase::Running(_)) {
            return Err(ShimError::Precondition(format!("task {} is not running", req.id)));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::Invalid("an exec needs a process spec".into()))?;
        let mut process: Process = serde_json::from_slice(&spec.value)
            .map_err(|e| ShimError::Invalid(format!("exec process spec: {e}")))?;
        process.set_terminal(Some(req.terminal));
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if !task.add_exec(Proc::new(&req.exec_id, stdio, Some(process))) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} of task {}",
                req.exec_id, req.id
            )));
        }
        self.events
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                &TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(())
    }

    async fn resize(&self, req: &api::ResizePtyRequest) -> Result<(), ShimError> {
        let (_, proc) = self.proc(&req.id, &req.exec_id)?;
        let Phase::Running(pid) = proc.phase() else {
            return Err(ShimError::Precondition("the process is not running".into()));
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.vm()
            .await?
            .client
            .resize_console(&req.id, pid, clamp(req.height), clamp(req.width))
            .await
            .map_err(|e| ShimError::from_guest(&e))
    }

    async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>, ShimError> {
        self.task(id)?;
        let props = self
            .vm()
            .await?
            .client
            .get_properties(id, &[PropertyType::ProcessList])
            .await
            .map_err(|e| ShimError::from_guest(&e))?;
        Ok(props
            .process_list
            .iter()
            .map(|p| ProcessInfo {
                pid: p.process_id,
                ..Default::default()
            })
            .collect())
    }

    async fn stats(&self, id: &str) -> Result<Any, ShimError> {
        self.task(id)?;
        let props = self
            .vm()
            .await?
            .client
            .get_properties(id, &[PropertyType::Statistics])
            .await
            .map_err(|e| ShimError::from_guest(&e))?;
        let m = metrics::to_proto(&props.lcow_metrics.unwrap_or_default());
        Ok(Any {
            type_url: metrics::TYPE_URL.to_owned(),
            value: m
                .write_to_bytes()
                .map_err(|e| ShimError::Invalid(format!("encode metrics: {e}")))?,
            ..Default::default()
        })
    }

    async fn update(&self, req: &api::UpdateTaskRequest) -> Result<(), ShimError> {
        self.task(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::Invalid("an update needs resources".into()))?;
        let r: LinuxResources = serde_json::from_slice(&resources.value)
            .map_err(|e| ShimError::Invalid(format!("resources: {e}")))?;
        self.vm()
            .await?
            .client
            .update_constraints(&req.id, r)
            .await
            .map_err(|e| ShimError::from_guest(&e))
    }
}

/// `ProcessParameters` of an exec from containerd's process spec.
fn exec_params(p: &Process, pipes: Pipes) -> ProcessParameters {
    let tty = p.terminal().unwrap_or(false);
    ProcessParameters {
        create_std_in_pipe: pipes.stdin,
        create_std_out_pipe: pipes.stdout,
        create_std_err_pipe: pipes.stderr && !tty,
        oci_process: Some(p.clone()),
        ..ProcessParameters::default()
    }
}

async fn publish_exit(events: &Publisher, id: &str, proc: &Proc, pid: u32) {
    let Some(exit) = proc.exit() else { return };
    let ev = TaskExit {
        container_id: id.to_owned(),
        id: if proc.exec_id.is_empty() {
            id.to_owned()
        } else {
            proc.exec_id.clone()
        },
        pid,
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    };
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, &ev).await;
}

/// Publishes TaskOOM whenever the container's OOM-kill count rises, while its init runs.
async fn watch_oom(vm: Arc<Vm>, events: Publisher, id: String, init: Arc<Proc>) {
    let mut seen = 0;
    loop {
        let count = vm
            .client
            .get_properties(&id, &[PropertyType::Statistics])
            .await
            .ok()
            .and_then(|p| p.lcow_metrics)
            .and_then(|m| m.memory_oom_control)
            .map_or(0, |o| o.oom_kill);
        if count > seen {
            seen = count;
            events
                .publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    &TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
        tokio::select! {
            _ = init.wait() => return,
            () = tokio::time::sleep(OOM_POLL) => {}
        }
    }
}

/// Halts the VM (which ends every request holding it), then powers it off once nothing holds
/// it any more.
async fn power_off(vm: Arc<Vm>) {
    vm.halt().await;
    let mut vm = vm;
    for _ in 0..100 {
        match Arc::try_unwrap(vm) {
            Ok(v) => return v.power_off().await,
            Err(v) => vm = v,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!("the UVM is still in use 5 s after it halted; killing QEMU");
    if let Ok(pid) = i32::try_from(vm.pid()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs a request that changes state in a task of its own: ttrpc drops a handler whose deadline
/// passes or whose connection closes, and a half-done Create, Start or Delete would leave the
/// VM, mounts or guest processes without a record.
async fn spawned<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, ShimError>> + Send + 'static,
) -> Result<T, ShimError> {
    tokio::spawn(f)
        .await
        .map_err(|e| ShimError::Guest(format!("the request's task failed: {e}")))?
}

fn unimplemented<T>(what: &str) -> Reply<T> {
    Err(ShimError::Unimplemented(what.to_owned()).into())
}

/// The service containerd talks to.
pub struct Service(pub Arc<Shim>);

#[async_trait]
impl TaskService for Service {
    async fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> Reply<api::StateResponse> {
        Ok(self.0.state(&req.id, &req.exec_id).await?)
    }

    async fn create(&self, _: &TtrpcContext, req: api::CreateTaskRequest) -> Reply<api::CreateTaskResponse> {
        tracing::info!(task = %req.id, bundle = %req.bundle, terminal = req.terminal, "create");
        let shim = Arc::clone(&self.0);
        let id = req.id.clone();
        let pid = spawned(async move { shim.create(&req).await })
            .await
            .inspect_err(|e| tracing::error!(task = %id, error = %e, "create failed"))?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> Reply<api::StartResponse> {
        let shim = Arc::clone(&self.0);
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let pid = spawned(async move { shim.start(&req.id, &req.exec_id).await })
            .await
            .inspect_err(|e| tracing::error!(task = %id, exec = %exec_id, error = %e, "start failed"))?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: api::DeleteRequest) -> Reply<api::DeleteResponse> {
        let shim = Arc::clone(&self.0);
        Ok(spawned(async move { shim.delete(&req.id, &req.exec_id).await }).await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> Reply<api::PidsResponse> {
        Ok(api::PidsResponse {
            processes: self.0.pids(&req.id).await?,
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, _: api::PauseRequest) -> Reply<api::Empty> {
        unimplemented("pause")
    }

    async fn resume(&self, _: &TtrpcContext, _: api::ResumeRequest) -> Reply<api::Empty> {
        unimplemented("resume")
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> Reply<api::Empty> {
        unimplemented("checkpoint")
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> Reply<api::Empty> {
        self.0.kill(&req).await?;
        Ok(api::Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> Reply<api::Empty> {
        self.0.exec(&req).await?;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> Reply<api::Empty> {
        self.0.resize(&req).await?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> Reply<api::Empty> {
        let (_, p) = self.0.proc(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> Reply<api::Empty> {
        self.0.update(&req).await?;
        Ok(api::Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> Reply<api::WaitResponse> {
        let (_, p) = self.0.proc(&req.id, &req.exec_id)?;
        let exit = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> Reply<api::StatsResponse> {
        Ok(api::StatsResponse {
            stats: MessageField::some(self.0.stats(&req.id).await?),
            ..Default::default()
        })
    }

    async fn connect(&self, _: &TtrpcContext, req: api::ConnectRequest) -> Reply<api::ConnectResponse> {
        self.0.task(&req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.0.host_pid().await,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> Reply<api::Empty> {
        let empty = lock(&self.0.tasks).is_empty();
        tracing::info!(task = %req.id, now = req.now, empty, "shutdown");
        if empty || req.now {
            self.0.exit.notify_one();
        }
        Ok(api::Empty::new())
    }
}
