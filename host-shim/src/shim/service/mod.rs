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

mod lifecycle;
mod process;

use crate::session::BootOptions;
use crate::shim::events::Publisher;
use crate::shim::io::{Opened, StdioPaths};
use crate::shim::spec::{self as shimspec, Kind};
use crate::shim::task::{Phase, Proc, Task};
use crate::shim::vm::Vm;
use crate::shim::{metrics, rootfs, ShimError};

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
