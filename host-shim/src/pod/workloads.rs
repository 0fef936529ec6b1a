//! The pod's own requests on its control socket (beside [`crate::control`]'s exec, ps, stats,
//! resize, wait, kill): run an image as a workload (imported, layers attached and shared by
//! digest, scratch and overlay, output to its log), stop, remove, wait for an exit, shut down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgcs_client::{
    init_process, BridgeClient, ContainerClient, ContainerSpec, Pipes, PodRole, ProcessSpec, ShutdownKind,
};
use rgcs_protocol::error_chain;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::state::{now, sandbox_id, ContainerRecord, PodDir};
use crate::control::{Answer, Extension, Handled};
use crate::image::{self, NoProgress};
use crate::rootfs::{add_binds, ContainerRootfs, UvmStorage};
use crate::vm::Uvm;

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
pub(super) struct Live {
    rootfs: Option<ContainerRootfs>,
    pid: u32,
    exit: watch::Receiver<Option<u32>>,
}

/// The pod's side of the control socket.
pub(super) struct Pod {
    pub(super) name: String,
    pub(super) dir: PodDir,
    pub(super) client: Arc<ContainerClient>,
    pub(super) bridge: Arc<BridgeClient>,
    pub(super) uvm: Arc<Uvm>,
    pub(super) storage: tokio::sync::Mutex<UvmStorage>,
    pub(super) sandbox_pid: u32,
    pub(super) auto_remove: bool,
    pub(super) cache_dir: PathBuf,
    pub(super) scratch_size: u64,
    pub(super) containers: Mutex<HashMap<String, Live>>,
    pub(super) shutdown: Notify,
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
        // Parsed once: the op decides whose request it is, the same value is then decoded.
        let value = serde_json::from_str::<serde_json::Value>(line).ok()?;
        if !POD_OPS.contains(&value.get("op")?.as_str()?) {
            return None;
        }
        Some(Box::pin(async move {
            let req = match serde_json::from_value::<PodRequest>(value) {
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
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
                let log = super::log::spawn_log(self.dir.log_path(id), stdio);
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

    pub(super) async fn remove(&self, id: &str, force: bool) -> Result<(), String> {
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
