//! Containers: Create, Shutdown, GetProperties, ContainerConstraints, DeleteContainerState
//! (GCS-PROTOCOL §4.5, §4.11, §4.12, §4.14, §4.16). Processes (init start, exec, wait, signal)
//! live in `process`. This module never calls libcontainer itself: `runtime` does, in the zygote.
//!
//! * [`registry`] — the container table;
//! * [`create`] — the Create flow;
//! * [`spec`] / [`user`] — spec adjustments and user resolution (pure);
//! * [`runtime`] — the zygote and its IPC (the only libcontainer user);
//! * [`metrics`] — cgroup statistics in the `LCOWMetrics` shape.

pub mod create;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod spec;
pub mod user;

use std::sync::Arc;

use rgcs_protocol::jsonstr::JsonString;
use rgcs_protocol::message::{
    ContainerConstraints, ContainerCreate, ContainerCreateResponse, GetPropertiesRequest,
    GetPropertiesResponse, ProcessDetails, Properties, PropertyType, RequestBase,
};

use self::runtime::Request;
use crate::dispatch::Outcome;
use crate::error::GcsError;
use crate::host::Host;

/// Most `ProcessList` entries reported (keeps the reply, escaped in a string, under 64 KiB).
pub const MAX_PROCESS_LIST: usize = 2000;

/// `Create` (§4.5).
pub async fn create(host: &Arc<Host>, base: &RequestBase, req: ContainerCreate) -> Result<Outcome, GcsError> {
    let id = &base.container_id;
    let cfg = req.config().map_err(|e| GcsError::InvalidConfig {
        id: id.clone(),
        reason: e.to_string(),
    })?;
    host.containers.reserve(id)?;
    let t0 = std::time::Instant::now();
    let result = create::create(host, base, cfg).await;
    match result {
        Ok(()) => {
            tracing::info!(container_id = %id, ms = t0.elapsed().as_millis() as u64, "container created");
            Outcome::body(&ContainerCreateResponse::default())
        }
        Err(e) => {
            host.containers.remove(id);
            Err(e)
        }
    }
}

/// `ShutdownGraceful` / `ShutdownForced` for a container (§4.11): SIGTERM or SIGKILL to init.
pub async fn shutdown(host: &Arc<Host>, base: &RequestBase, forced: bool) -> Result<Outcome, GcsError> {
    let c = host.containers.get(&base.container_id)?;
    let signal = if forced { libc::SIGKILL } else { libc::SIGTERM };
    if c.init.is_reaped() {
        return Ok(Outcome::empty());
    }
    c.record_exit_signal(signal);
    let pid = nix::unistd::Pid::from_raw(c.init.pid as i32);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::try_from(signal).ok()) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(Outcome::empty()),
        Err(e) => Err(GcsError::io(format!("signal init of {:?}", c.id), e.into())),
    }
}

/// `GetProperties` (§4.12): `ProcessList` and `Statistics`; other types are ignored.
pub async fn get_properties(
    host: &Arc<Host>,
    base: &RequestBase,
    req: GetPropertiesRequest,
) -> Result<Outcome, GcsError> {
    if base.is_uvm() {
        return Err(GcsError::Unsupported("GetProperties for the UVM".into()));
    }
    let c = host.containers.get(&base.container_id)?;
    let zygote = &host.executor()?.zygote;
    let mut props = Properties::default();
    for t in &req.query.property_types {
        match t {
            PropertyType::ProcessList => {
                let v = zygote
                    .call(Request::Pids { id: c.id.clone() }, Vec::new())
                    .await?;
                let pids: Vec<u32> = serde_json::from_value(v).unwrap_or_default();
                props.process_list = pids
                    .into_iter()
                    .take(MAX_PROCESS_LIST)
                    .map(|process_id| ProcessDetails { process_id })
                    .collect();
            }
            PropertyType::Statistics => {
                let v = zygote
                    .call(Request::Stats { id: c.id.clone() }, Vec::new())
                    .await?;
                props.lcow_metrics = Some(
                    serde_json::from_value(v)
                        .map_err(|e| GcsError::Internal(format!("decode metrics: {e}")))?,
                );
            }
            other => tracing::debug!(property = %other, "ignored property type"),
        }
    }
    Outcome::body(&GetPropertiesResponse {
        properties: JsonString(props),
    })
}

/// `ModifySettings` `ContainerConstraints` (§4.14): the resources applied to the live cgroup.
pub async fn update_constraints(
    host: &Arc<Host>,
    base: &RequestBase,
    c: ContainerConstraints,
) -> Result<Outcome, GcsError> {
    let container = host.containers.get(&base.container_id)?;
    let Some(resources) = c.linux else {
        return Ok(Outcome::empty());
    };
    host.executor()?
        .zygote
        .call(
            Request::Update {
                id: container.id.clone(),
                resources: Box::new(resources),
            },
            Vec::new(),
        )
        .await?;
    Ok(Outcome::empty())
}

/// `DeleteContainerState` (§4.16): delete the libcontainer state and cgroup, the per-process
/// state and the files the guest wrote into the bundle, and forget the container. The rootfs
/// and the bundle directory (when not empty) belong to storage.
pub async fn delete_state(host: &Arc<Host>, base: &RequestBase) -> Result<Outcome, GcsError> {
    let c = host.containers.get(&base.container_id)?;
    let exec = host.executor()?;
    host.containers.remove(&c.id);
    c.mark_deleted();
    let result = exec
        .zygote
        .call(Request::Delete { id: c.id.clone() }, Vec::new())
        .await;
    drop(c.take_pending_stdio());
    let _ = std::fs::remove_dir_all(&c.proc_dir);
    for f in spec::ETC_FILES.iter().chain(&["config.json"]) {
        let _ = std::fs::remove_file(c.bundle.join(f));
    }
    let _ = std::fs::remove_dir(&c.bundle);
    result.map(|_| Outcome::empty())
}

/// At start-up: delete whatever a previous agent or a failed build left in the state root.
pub async fn sweep(host: &Arc<Host>) {
    let Ok(exec) = host.executor() else { return };
    match exec.zygote.call(Request::Sweep, Vec::new()).await {
        Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
            tracing::warn!(containers = %v, "swept leftover container state");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sweeping leftover container state failed"),
    }
    let _ = std::fs::remove_dir_all(exec.run_dir.join("procs"));
}
