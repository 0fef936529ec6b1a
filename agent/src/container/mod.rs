//! Containers: Create, Shutdown, GetProperties, ContainerConstraints, DeleteContainerState
//! (docs/gcs-reference.md §4.5, §4.11, §4.12, §4.14, §4.16). Processes (init start, exec, wait, signal)
//! live in `process`. This module never calls libcontainer itself: `runtime` does, in the zygote.
//!
//! * [`registry`] — the container table;
//! * [`create`](mod@create) — the Create flow;
//! * [`spec`] / [`user`] — spec adjustments and user resolution (pure);
//! * [`runtime`] — the zygote and its IPC (the only libcontainer user);
//! * [`metrics`] — cgroup statistics in the `LCOWMetrics` shape;
//! * [`pod`] — sandboxes, workloads and their pod (directories, mount sources, cgroups);
//! * [`annotations`] — the workload annotations (`/dev/shm` size, privileged, devices).

pub mod annotations;
pub mod create;
pub mod metrics;
pub mod pod;
pub mod registry;
pub mod runtime;
pub mod spec;
pub mod user;

use std::sync::Arc;

use rgcs_protocol::jsonstr::JsonString;
use rgcs_protocol::message::{
    ContainerConstraints, ContainerCreate, ContainerCreateResponse, GetPropertiesRequest,
    GetPropertiesResponse, ModifySettingsRequest, ProcessDetails, Properties, PropertyType, RequestBase,
    Resource,
};

use self::registry::Container;
use crate::error::GcsError;
use crate::host::Host;
use crate::outcome::Outcome;

/// Most `ProcessList` entries reported (keeps the reply, escaped in a string, under 64 KiB).
pub const MAX_PROCESS_LIST: usize = 2000;

/// `Create` (§4.5).
pub async fn create(host: &Arc<Host>, base: &RequestBase, req: ContainerCreate) -> Result<Outcome, GcsError> {
    let id = &base.container_id;
    let cfg = req.config().map_err(|e| GcsError::InvalidConfig {
        id: id.clone(),
        reason: e.to_string(),
    })?;
    check_id(id)?;
    host.containers.reserve(id)?;
    let t0 = std::time::Instant::now();
    let result = create::create(host, base, cfg).await;
    match result {
        Ok(()) => {
            tracing::info!(container_id = %id, ms = crate::logging::millis(t0.elapsed()), "container created");
            Outcome::body(&ContainerCreateResponse::default())
        }
        Err(e) => {
            host.containers.remove(id);
            Err(e)
        }
    }
}

/// Longest container ID accepted (CRI's are 64 hex digits, hcsshim's GUIDs 36 characters).
pub const MAX_ID_LEN: usize = 256;

/// A container ID names directories (`<run>/procs/<id>`, the libcontainer state): it must be a
/// single harmless path component. hcsshim's guest passes IDs to runc, which refuses the same.
fn check_id(id: &str) -> Result<(), GcsError> {
    let bad = |reason: &'static str| GcsError::InvalidId {
        id: id.escape_debug().to_string(),
        reason,
    };
    if id.is_empty() || id == rgcs_protocol::message::UVM_CONTAINER_ID {
        return Err(bad("is empty or the UVM's"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("is too long"));
    }
    if id == "." || id == ".." || id.contains('/') {
        return Err(bad("is not a single path component"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+@:".contains(&b))
    {
        return Err(bad("has a character other than letters, digits and -_.+@:"));
    }
    Ok(())
}

/// `ShutdownGraceful` / `ShutdownForced` for a container (§4.11): SIGTERM or SIGKILL to init.
pub async fn shutdown(host: &Arc<Host>, base: &RequestBase, forced: bool) -> Result<Outcome, GcsError> {
    let c = host.containers.get(&base.container_id)?;
    let signal = if forced { libc::SIGKILL } else { libc::SIGTERM };
    if c.init.is_reaped() {
        return Ok(Outcome::empty());
    }
    match c.init.signal(signal) {
        Ok(()) => {
            c.record_exit_signal(signal);
            Ok(Outcome::empty())
        }
        Err(nix::errno::Errno::ESRCH) => Ok(Outcome::empty()),
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
                props.process_list = zygote
                    .pids(&c.id)
                    .await?
                    .into_iter()
                    .take(MAX_PROCESS_LIST)
                    .map(|pid| ProcessDetails {
                        process_id: pid.get(),
                    })
                    .collect();
            }
            PropertyType::Statistics => {
                props.lcow_metrics = Some(zygote.stats(&c.id).await?);
            }
            other => tracing::debug!(property = %other, "ignored property type"),
        }
    }
    Outcome::body(&GetPropertiesResponse {
        properties: JsonString(props),
    })
}

/// `ModifySettings` with a container's ID (§4.13): the container must exist (`0xC037010E`
/// otherwise, as hcsshim looks it up first), and only `ContainerConstraints` is accepted.
pub async fn modify(
    host: &Arc<Host>,
    base: &RequestBase,
    req: ModifySettingsRequest,
) -> Result<Outcome, GcsError> {
    let container = host.containers.get(&base.container_id)?;
    match req.request.resource {
        Resource::ContainerConstraints(c) => update_constraints(host, &container, *c).await,
        other => Err(GcsError::Unsupported(format!(
            "ResourceType {:?} for containers",
            other.resource_type()
        ))),
    }
}

/// `ContainerConstraints` (§4.14): the resources applied to the live cgroup.
async fn update_constraints(
    host: &Arc<Host>,
    container: &Container,
    c: ContainerConstraints,
) -> Result<Outcome, GcsError> {
    let Some(resources) = c.linux else {
        return Ok(Outcome::empty());
    };
    host.executor()?.zygote.update(&container.id, resources).await?;
    Ok(Outcome::empty())
}

/// `DeleteContainerState` (§4.16): delete the libcontainer state and cgroup, the per-process
/// state and the files the guest wrote into the bundle, and forget the container. The rootfs
/// and the bundle directory (when not empty) belong to storage.
pub async fn delete_state(host: &Arc<Host>, base: &RequestBase) -> Result<Outcome, GcsError> {
    let c = host.containers.get(&base.container_id)?;
    let exec = host.executor()?;
    // A sandbox goes after its workloads (hcsshim lets it go first and its workloads lose their
    // volumes and `/etc` files underneath them; we refuse instead, see docs/pods.md).
    if c.sandbox_id.as_deref() == Some(c.id.as_str()) {
        let left = host.pods.workloads(&c.id);
        if !left.is_empty() {
            return Err(GcsError::Pod {
                id: c.id.clone(),
                reason: format!("the sandbox still has workload containers {left:?}: delete them first"),
            });
        }
    }
    host.containers.remove(&c.id);
    c.mark_deleted();
    host.networks.detach(&c.id).await;
    let result = exec.zygote.delete(&c.id).await;
    drop(c.take_pending_stdio());
    let _ = std::fs::remove_dir_all(&c.proc_dir);
    for f in spec::ETC_FILES.iter().chain(&["config.json"]) {
        let _ = std::fs::remove_file(c.bundle.join(f));
    }
    match c.sandbox_id.as_deref() {
        Some(sid) if sid == c.id => {
            pod::remove_dirs(&c.bundle);
            pod::remove_pod_cgroup(std::path::Path::new(create::CGROUP_ROOT), sid);
            host.pods.remove(sid);
        }
        Some(sid) => host.pods.leave(sid, &c.id),
        None => {}
    }
    let _ = std::fs::remove_dir(&c.bundle);
    drop(c);
    crate::sys::heap::trim();
    result.map(|_| Outcome::empty())
}

/// At start-up: delete whatever a previous agent or a failed build left in the state root.
pub async fn sweep(host: &Arc<Host>) {
    let Ok(exec) = host.executor() else { return };
    match exec.zygote.sweep().await {
        Ok(ids) if !ids.is_empty() => {
            tracing::warn!(containers = ?ids, "swept leftover container state");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sweeping leftover container state failed"),
    }
    let _ = std::fs::remove_dir_all(exec.run_dir.join("procs"));
}
