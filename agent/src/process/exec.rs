//! Container processes: starting init (ExecuteProcess without `OciProcess`) and exec'ing extra
//! processes (with it), §4.7, §6.7. Both attach their stdio the same way
//! ([`stdio::Prepared`] / [`stdio::Attached`]): an init's at Create, an exec's here.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use libcontainer::oci_spec::runtime::Process;
use rgcs_protocol::message::ExecuteProcessRequest;

use super::stdio::{self, Prepared, Relays};
use super::table::{exit_code, ProcessEntry};
use crate::container::registry::{Container, State};
use crate::container::{spec, user};
use crate::error::GcsError;
use crate::host::{Executor, Host};
use crate::reaper::ExitStatus;

/// The host's stdio ports named in `req`, dialled (before the reply, as hcsshim's guest does).
async fn dial(
    exec: &Executor,
    req: &ExecuteProcessRequest,
) -> Result<[Option<std::os::fd::OwnedFd>; 3], GcsError> {
    stdio::dial_all(
        &exec.stdio,
        stdio::ports(
            &req.settings.process_parameters,
            &req.settings.vsock_stdio_relay_settings,
        ),
    )
    .await
}

/// Starts init: dial the host's ports, attach them to the pipes or pty made at Create, then start.
pub async fn start_init(
    host: &Arc<Host>,
    c: &Arc<Container>,
    req: &ExecuteProcessRequest,
) -> Result<u32, GcsError> {
    let exec = host.executor()?;
    if let Err(state) = c.transition(State::Created, State::Running) {
        return Err(GcsError::InvalidState {
            id: c.id.clone(),
            state: state.name(),
        });
    }
    let sockets = match dial(exec, req).await {
        Ok(s) => s,
        Err(e) => {
            let _ = c.transition(State::Running, State::Created);
            return Err(e);
        }
    };
    let tee = match &c.tee_log {
        Some(path) => Some(crate::process::stdio::open_tee(path)?),
        None => None,
    };
    let relays = match c.take_pending_stdio() {
        Some(attached) => attached.into_relays(sockets, tee)?,
        None => Relays::default(),
    };
    c.set_init_relays(relays);
    exec.zygote.start(&c.id).await?;
    Ok(c.init.pid)
}

/// The process to exec: the username resolved (its own, else the container's), rlimits inherited.
fn exec_process(c: &Container, mut p: Process) -> Result<Process, GcsError> {
    match spec::username(&p) {
        Some(name) => {
            let r = user::resolve_in_rootfs(&c.rootfs, &name).map_err(|e| GcsError::InvalidConfig {
                id: c.id.clone(),
                reason: e.to_string(),
            })?;
            spec::set_user(&mut p, &r);
        }
        None => {
            if let Some(r) = &c.user {
                if p.user().uid() == 0 && p.user().gid() == 0 {
                    spec::set_user(&mut p, r);
                }
            }
        }
    }
    spec::inherit_rlimits(&mut p, &c.spec);
    Ok(p)
}

/// Execs an extra process in a running container.
pub async fn exec_in(
    host: &Arc<Host>,
    c: &Arc<Container>,
    req: &ExecuteProcessRequest,
    process: Process,
) -> Result<u32, GcsError> {
    let state = c.state();
    if state != State::Running {
        return Err(GcsError::InvalidState {
            id: c.id.clone(),
            state: state.name(),
        });
    }
    let process = exec_process(c, process)?;
    let dir = c.next_proc_dir();
    std::fs::create_dir_all(&dir).map_err(|e| GcsError::io(format!("create {}", dir.display()), e))?;
    let result = exec_with_dir(host, c, req, process, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The exec itself, with a per-process directory for `process.json` and the console socket.
async fn exec_with_dir(
    host: &Arc<Host>,
    c: &Arc<Container>,
    req: &ExecuteProcessRequest,
    process: Process,
    dir: &Path,
) -> Result<u32, GcsError> {
    let exec = host.executor()?;
    let json =
        serde_json::to_vec(&process).map_err(|e| GcsError::Internal(format!("encode process.json: {e}")))?;
    let process_json = dir.join("process.json");
    std::fs::write(&process_json, json).map_err(|e| GcsError::io("write process.json", e))?;
    let sockets = dial(exec, req).await?;
    // A pipe the host did not ask for is /dev/null in the process.
    let unused = sockets.each_ref().map(Option::is_none);
    let terminal = process.terminal().unwrap_or(false);
    let mut prepared = Prepared::new(terminal, &dir.join("console.sock"), unused)?;
    let spawned_at = Instant::now();
    let t0 = Instant::now();
    let pid = exec
        .zygote
        .exec(
            &c.id,
            &process_json,
            prepared.console_socket(),
            prepared.take_child_fds(),
        )
        .await?;
    tracing::info!(container_id = %c.id, pid = pid.get(), ms = crate::logging::millis(t0.elapsed()), "exec started");
    let watch = host.reaper.watch(pid, spawned_at);
    let attached = match prepared.attach().await {
        Ok(a) => a,
        Err(e) => {
            // The process runs but cannot be attached: do not leave it behind.
            let _ = pid.signal(libc::SIGKILL);
            return Err(e);
        }
    };
    let entry = ProcessEntry::new(pid);
    if let Some(master) = attached.tty() {
        entry.set_tty(master);
    }
    let relays = attached.into_relays(sockets, None)?;
    c.processes.insert(Arc::clone(&entry));
    tokio::spawn(async move {
        let status = watch.wait().await.unwrap_or(ExitStatus::Exited(255));
        entry.mark_reaped();
        relays.finish().await;
        entry.publish(exit_code(status));
    });
    Ok(pid.get())
}
