//! Processes: ExecuteProcess, WaitForProcess, SignalProcess, ResizeConsole (docs/gcs-reference.md
//! §4.7–§4.10), for containers and for the UVM itself (null container ID). Unlike hcsshim, Signal
//! and Resize also work for UVM processes.
//!
//! * [`table`] — process records and the wait rules;
//! * [`stdio`] — dialling the host's ports and the relays;
//! * [`exec`] — container init start and exec;
//! * [`uvm`] — processes in the UVM.

pub mod exec;
pub mod stdio;
pub mod table;
pub mod tool;
pub mod uvm;

use std::sync::Arc;

use rgcs_protocol::message::{
    ExecuteProcessRequest, ExecuteProcessResponse, RequestBase, ResizeConsoleRequest, SignalProcessRequest,
    WaitForProcessRequest, WaitForProcessResponse,
};

use self::table::{ProcessEntry, WaitError};
use crate::container::registry::Container;
use crate::error::GcsError;
use crate::host::Host;
use crate::outcome::Outcome;

/// `ExecuteProcess` (§4.7).
pub async fn execute(
    host: &Arc<Host>,
    base: &RequestBase,
    req: ExecuteProcessRequest,
) -> Result<Outcome, GcsError> {
    let t0 = std::time::Instant::now();
    let params = &req.settings.process_parameters;
    let pid = if base.is_uvm() || params.create_in_utility_vm {
        uvm::execute(host, &req).await?
    } else {
        let c = host.containers.get(&base.container_id)?;
        match params.oci_process.clone() {
            None => exec::start_init(host, &c, &req).await?,
            Some(p) => exec::exec_in(host, &c, &req, p).await?,
        }
    };
    tracing::info!(container_id = %base.container_id, pid, ms = crate::logging::millis(t0.elapsed()), "process started");
    Outcome::body(&ExecuteProcessResponse { process_id: pid })
}

enum Owner {
    Uvm,
    Container(Arc<Container>),
}

fn owner(host: &Host, base: &RequestBase) -> Result<Owner, GcsError> {
    if base.is_uvm() {
        Ok(Owner::Uvm)
    } else {
        host.containers.get(&base.container_id).map(Owner::Container)
    }
}

fn find(host: &Host, owner: &Owner, pid: u32) -> Result<Arc<ProcessEntry>, GcsError> {
    let entry = match owner {
        Owner::Uvm => host.uvm_processes.get(pid),
        Owner::Container(c) => c.processes.get(pid),
    };
    entry.ok_or(GcsError::ProcessNotFound(pid))
}

/// `WaitForProcess` (§4.8).
pub async fn wait(
    host: &Arc<Host>,
    base: &RequestBase,
    req: WaitForProcessRequest,
) -> Result<Outcome, GcsError> {
    let owner = owner(host, base)?;
    let table = match &owner {
        Owner::Uvm => &host.uvm_processes,
        Owner::Container(c) => &c.processes,
    };
    match table.wait(req.process_id, req.timeout()).await {
        Ok(exit_code) => Outcome::body(&WaitForProcessResponse { exit_code }),
        Err(WaitError::NotFound) => Err(GcsError::ProcessNotFound(req.process_id)),
        Err(WaitError::Timeout) => Err(GcsError::WaitTimeout(req.process_id)),
    }
}

/// `SignalProcess` (§4.9): any signal (SIGKILL when none), to container and UVM processes.
pub async fn signal(
    host: &Arc<Host>,
    base: &RequestBase,
    req: SignalProcessRequest,
) -> Result<Outcome, GcsError> {
    let owner = owner(host, base)?;
    let entry = find(host, &owner, req.process_id)?;
    if entry.is_reaped() {
        return Err(GcsError::ProcessNotFound(req.process_id));
    }
    let signal = req.signal();
    let sig = nix::sys::signal::Signal::try_from(signal)
        .map_err(|_| GcsError::Unsupported(format!("signal {signal}")))?;
    match entry.signal(sig as i32) {
        Ok(()) => {
            if let Owner::Container(c) = &owner {
                if c.init.pid == req.process_id {
                    c.record_exit_signal(signal);
                }
            }
            Ok(Outcome::empty())
        }
        Err(nix::errno::Errno::ESRCH) => Err(GcsError::ProcessNotFound(req.process_id)),
        Err(e) => Err(GcsError::io(
            format!("signal process {}", req.process_id),
            e.into(),
        )),
    }
}

/// `ResizeConsole` (§4.10), for container and UVM processes.
pub async fn resize(
    host: &Arc<Host>,
    base: &RequestBase,
    req: ResizeConsoleRequest,
) -> Result<Outcome, GcsError> {
    let owner = owner(host, base)?;
    let entry = find(host, &owner, req.process_id)?;
    match entry.resize(req.height, req.width) {
        Ok(true) => Ok(Outcome::empty()),
        Ok(false) => Err(GcsError::Unsupported(format!(
            "process {} has no tty",
            req.process_id
        ))),
        Err(e) => Err(GcsError::io(
            format!("resize the tty of process {}", req.process_id),
            e,
        )),
    }
}
