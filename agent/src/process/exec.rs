//! Container processes: starting init (ExecuteProcess without `OciProcess`) and exec'ing extra
//! processes (with it), GCS-PROTOCOL §4.7, §6.7.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use libcontainer::oci_spec::runtime::Process;
use rgcs_protocol::message::{ExecuteProcessRequest, ProcessParameters};

use super::stdio::{self, Relays};
use super::table::ProcessEntry;
use crate::container::create::{console_listener, pipes, receive_master};
use crate::container::registry::{Container, InitStdio, State};
use crate::container::runtime::Request;
use crate::container::{spec, user};
use crate::error::GcsError;
use crate::host::Host;
use crate::reaper::ExitStatus;

/// Starts init: dial the host's ports, attach them to the pipes or pty made at Create, then start.
pub async fn start_init(
    host: &Arc<Host>,
    c: &Arc<Container>,
    req: &ExecuteProcessRequest,
) -> Result<u32, GcsError> {
    let exec = host.executor()?;
    let params: &ProcessParameters = &req.settings.process_parameters;
    if let Err(state) = c.transition(State::Created, State::Running) {
        return Err(GcsError::InvalidState {
            id: c.id.clone(),
            state: state.name(),
        });
    }
    let socks = stdio::dial_all(
        &exec.stdio,
        stdio::ports(params, &req.settings.vsock_stdio_relay_settings),
    )
    .await;
    let [s_in, s_out, s_err] = match socks {
        Ok(s) => s,
        Err(e) => {
            let _ = c.transition(State::Running, State::Created);
            return Err(e);
        }
    };
    let relays = match c.take_pending_stdio() {
        Some(InitStdio::Pipes([in_w, out_r, err_r])) => {
            let outputs = [(out_r, s_out), (err_r, s_err)]
                .into_iter()
                .filter_map(|(pipe, sock)| sock.map(|s| (pipe, s)))
                .collect();
            Relays::pipes(s_in.map(|s| (s, in_w)), outputs)?
        }
        Some(InitStdio::Tty(master)) => Relays::tty(&master, s_in, s_out)?,
        None => Relays::default(),
    };
    c.set_init_relays(relays);
    exec.zygote
        .call(Request::Start { id: c.id.clone() }, Vec::new())
        .await?;
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

fn devnull() -> Result<OwnedFd, GcsError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| GcsError::io("open /dev/null", e))
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
    let params = &req.settings.process_parameters;
    let process = exec_process(c, process)?;
    let terminal = process.terminal().unwrap_or(false);
    let console_size = process
        .console_size()
        .map(|s| (s.height() as u16, s.width() as u16));
    let dir = c.next_proc_dir();
    std::fs::create_dir_all(&dir).map_err(|e| GcsError::io(format!("create {}", dir.display()), e))?;
    let result = exec_with_dir(host, c, req, params, process, terminal, console_size, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn exec_with_dir(
    host: &Arc<Host>,
    c: &Arc<Container>,
    req: &ExecuteProcessRequest,
    params: &ProcessParameters,
    process: Process,
    terminal: bool,
    console_size: Option<(u16, u16)>,
    dir: &std::path::Path,
) -> Result<u32, GcsError> {
    let exec = host.executor()?;
    let json =
        serde_json::to_vec(&process).map_err(|e| GcsError::Internal(format!("encode process.json: {e}")))?;
    let process_json = dir.join("process.json");
    std::fs::write(&process_json, json).map_err(|e| GcsError::io("write process.json", e))?;
    let [s_in, s_out, s_err] = stdio::dial_all(
        &exec.stdio,
        stdio::ports(params, &req.settings.vsock_stdio_relay_settings),
    )
    .await?;
    let console = dir.join("console.sock");
    let (listener, child_fds, agent_ends) = if terminal {
        (Some(console_listener(&console)?), Vec::new(), None)
    } else {
        let ([in_w, out_r, err_r], [in_r, out_w, err_w]) = pipes()?;
        let child = vec![
            if s_in.is_some() { in_r } else { devnull()? },
            if s_out.is_some() { out_w } else { devnull()? },
            if s_err.is_some() { err_w } else { devnull()? },
        ];
        (None, child, Some([in_w, out_r, err_r]))
    };
    let spawned_at = Instant::now();
    let t0 = Instant::now();
    let v = exec
        .zygote
        .call(
            Request::Exec {
                id: c.id.clone(),
                process: process_json,
                console_socket: terminal.then(|| console.clone()),
                stdio: [!terminal; 3],
            },
            child_fds,
        )
        .await?;
    let pid = v.as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    tracing::info!(container_id = %c.id, pid, ms = t0.elapsed().as_millis() as u64, "exec started");
    let watch = host.reaper.watch(pid as i32, spawned_at);
    let entry = ProcessEntry::new(pid);
    let relays = match (listener, agent_ends) {
        (Some(l), _) => {
            let master = match receive_master(l).await {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    // the process runs but cannot be attached: do not leave it behind
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Err(e);
                }
            };
            if let Some((rows, cols)) = console_size {
                let _ = crate::sys::pty::set_size(std::os::fd::AsFd::as_fd(&*master), rows, cols);
            }
            entry.set_tty(Arc::clone(&master));
            Relays::tty(&master, s_in, s_out)?
        }
        (None, Some([in_w, out_r, err_r])) => {
            let outputs = [(out_r, s_out), (err_r, s_err)]
                .into_iter()
                .filter_map(|(pipe, sock)| sock.map(|s| (pipe, s)))
                .collect();
            Relays::pipes(s_in.map(|s| (s, in_w)), outputs)?
        }
        (None, None) => Relays::default(),
    };
    c.processes.insert(Arc::clone(&entry));
    tokio::spawn(async move {
        let status = watch.wait().await.unwrap_or(ExitStatus::Exited(255));
        entry.mark_reaped();
        relays.finish().await;
        entry.publish(status.code() as u32);
    });
    Ok(pid)
}
