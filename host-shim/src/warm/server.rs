//! A warm UVM's server (`rgcs pool serve`, started by [`super::Pool::refill`]): it boots and
//! negotiates the UVM, records it ready, takes one lease on `lease.sock` (then removes the socket,
//! so nobody else can), runs the lease's container with the same steps as a cold `rgcs run`
//! ([`crate::run::start_container`]), and powers the UVM off after it. SIGTERM (`rgcs pool stop`)
//! or the UVM's end stops it at any point; whatever ran is removed first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rgcs_client::{BridgeClient, ContainerClient};
use rgcs_protocol::error_chain;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::lease::{read_line, write_line, ClientLine, RunRequest, ServerLine};
use super::{fingerprint, Pool, WarmPhase, WarmRecord};
use crate::control::{stdio_answer, write_answer, Answer};
use crate::pod::state::{now, process_start, StateDir};
use crate::run::{image_process, start_container, RunError};
use crate::session::{BootOptions, Session, POWER_OFF_TIMEOUT};
use crate::vm::Uvm;

/// What a warm UVM is made with.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// Its name (a directory under the pool's).
    pub name: String,
    /// The state directory.
    pub state: StateDir,
    /// The UVM.
    pub boot: BootOptions,
}

/// Errors of a warm UVM's server.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The UVM did not boot.
    #[error("the warm UVM did not boot")]
    Boot(#[from] crate::session::SessionError),
    /// The state directory failed.
    #[error("warm UVM state: {0}")]
    State(String, #[source] std::io::Error),
}

/// How long a killed container's init gets to be reported exited before its state is deleted.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A UVM's whole life is far shorter.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Boots, waits for a lease (or SIGTERM, or the UVM's end), serves it, powers off and removes
/// the warm UVM's directory.
pub async fn serve(opts: WarmOptions) -> Result<(), WarmError> {
    let pool = Pool::new(&opts.state);
    let dir = pool.warm(&opts.name);
    let state_err = |what: &str| {
        let what = what.to_owned();
        move |e| WarmError::State(what, e)
    };
    std::fs::create_dir_all(&dir.path).map_err(state_err("create its directory"))?;
    let pid = std::process::id();
    let mut record = WarmRecord {
        server_pid: pid,
        server_start: process_start(pid).unwrap_or(0),
        created: now(),
        boot_ms: None,
        fingerprint: fingerprint(&opts.boot),
        phase: WarmPhase::Booting,
        error: None,
    };
    dir.write_record(&record).map_err(state_err("write warm.json"))?;
    let mut term = signal(SignalKind::terminate()).map_err(state_err("SIGTERM handler"))?;
    let started = Instant::now();
    let booted = tokio::select! {
        b = Session::boot(&opts.boot) => b.map(Some),
        _ = term.recv() => Ok(None),
    };
    let session = match booted {
        Ok(Some(s)) => s,
        Ok(None) => {
            let _ = dir.remove();
            return Ok(());
        }
        Err(e) => {
            record.phase = WarmPhase::Failed;
            record.error = Some(error_chain(&e));
            dir.write_record(&record).map_err(state_err("write warm.json"))?;
            return Err(e.into());
        }
    };
    let Session { uvm, bridge, .. } = session;
    let bridge = Arc::new(bridge);
    let client = ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix());
    wait_late_modules(&client).await;
    let socket = dir.lease_socket();
    let listener = UnixListener::bind(&socket).map_err(state_err("bind lease.sock"));
    let served = match listener {
        Ok(listener) => {
            record.phase = WarmPhase::Ready;
            record.boot_ms = u64::try_from(started.elapsed().as_millis()).ok();
            let ready = dir.write_record(&record).map_err(state_err("write warm.json"));
            tracing::info!(name = %opts.name, boot_ms = ?record.boot_ms, "warm UVM ready");
            let leased = match ready {
                Ok(()) => tokio::select! {
                    a = listener.accept() => a.ok().map(|(s, _)| s),
                    _ = term.recv() => None,
                    status = uvm.wait(FOREVER) => {
                        tracing::warn!(?status, "the warm UVM ended before a lease");
                        None
                    }
                },
                Err(_) => None,
            };
            // One lease: nobody else gets this UVM.
            drop(listener);
            let _ = std::fs::remove_file(&socket);
            if let Some(stream) = leased {
                record.phase = WarmPhase::Leased;
                let _ = dir.write_record(&record);
                tracing::info!(name = %opts.name, "leased");
                serve_lease(stream, &uvm, &bridge, &client, &opts.boot, &mut term).await;
            }
            ready
        }
        Err(e) => Err(e),
    };
    let _ = bridge.shutdown_uvm(true).await;
    if uvm.wait(POWER_OFF_TIMEOUT).await.is_err() {
        tracing::warn!("the warm UVM did not power off in time; stopping it");
    }
    uvm.shutdown().await;
    let _ = dir.remove();
    served
}

/// Runs the lease's container: the answer with its stdio, then signals and resizes until the
/// client is done or gone, then the container is killed if it still runs and removed.
async fn serve_lease(
    mut stream: UnixStream,
    uvm: &Uvm,
    bridge: &BridgeClient,
    client: &ContainerClient,
    boot: &BootOptions,
    term: &mut Signal,
) {
    let req = {
        let mut reader = BufReader::new(&mut stream);
        read_line::<_, RunRequest>(&mut reader).await
    };
    let req = match req {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let _ = write_answer(
                &mut stream,
                &Answer::err(format!("bad lease request: {e}")),
                Vec::new(),
            )
            .await;
            return;
        }
    };
    let opts = req.options(boot.clone());
    let started = async {
        let process = image_process(&req.image.config, &req.command, &req.env, req.tty)?;
        start_container(uvm, bridge, client, &opts, &req.image, process, &req.id).await
    }
    .await;
    let (started, stdio) = match started {
        Ok(s) => s,
        Err(e) => {
            let mut answer = Answer::err(refusal(&e));
            if let RunError::Program { code, .. } = &e {
                answer.exit_code = Some(u32::from(*code));
            }
            let _ = write_answer(&mut stream, &answer, Vec::new()).await;
            return;
        }
    };
    let (id, pid) = (started.id.clone(), started.pid);
    let sent = match stdio_answer(pid, req.tty, stdio) {
        Ok((mut answer, fds)) => {
            // The start's phases, for the run's marks (`rgcs bench run`).
            answer.data = Some(serde_json::json!({ "marks": started.marks }));
            write_answer(&mut stream, &answer, fds)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    let mut exited = false;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot answer the lease");
    } else {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let wait = client.wait_for_process(&id, pid, None);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                w = &mut wait, if !exited => {
                    exited = true;
                    let line = match w {
                        Ok(code) => ServerLine::Exited { exit_code: Some(code), error: None },
                        Err(e) => ServerLine::Exited { exit_code: None, error: Some(error_chain(&e)) },
                    };
                    let _ = write_line(&mut write, &line).await;
                }
                line = read_line::<_, ClientLine>(&mut lines) => match line {
                    Ok(Some(ClientLine::Signal { signal })) => {
                        if let Err(e) = client.signal_process(&id, pid, signal).await {
                            tracing::warn!(error = %error_chain(&e), "signal");
                        }
                    }
                    Ok(Some(ClientLine::Resize { rows, cols })) => {
                        let _ = client.resize_console(&id, pid, rows, cols).await;
                    }
                    Ok(Some(ClientLine::Done) | None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad lease line; ending the lease");
                        break;
                    }
                },
                _ = term.recv() => break,
                status = uvm.wait(FOREVER) => {
                    tracing::warn!(?status, "the warm UVM ended under its container");
                    break;
                }
            }
        }
        if !exited {
            let _ = client.signal_process(&id, pid, None).await;
            let _ = tokio::time::timeout(KILL_WAIT, &mut wait).await;
        }
        started.remove(bridge, client).await;
        let _ = write_line(&mut write, &ServerLine::Removed).await;
        return;
    }
    let _ = client.signal_process(&id, pid, None).await;
    started.remove(bridge, client).await;
}

/// How long a booted agent gets to load its late kernel modules.
const MODULES_LIMIT: Duration = Duration::from_secs(30);

/// Waits until the agent has loaded its late kernel modules (its DumpStacks summary says
/// `late modules: Ready`, agent/src/host.rs): a UVM is warm only once a container's first storage
/// request no longer waits for them (under TCG they take ~1 s after negotiation). A failure or
/// timeout is logged; the lease's requests then report it as they would in a cold UVM.
async fn wait_late_modules(client: &ContainerClient) {
    let deadline = Instant::now() + MODULES_LIMIT;
    loop {
        match client.dump_stacks().await {
            Ok(text) if text.contains("late modules: Ready") => return,
            Ok(text) if text.contains("late modules: Failed") => {
                tracing::warn!(summary = %text.lines().next().unwrap_or(""), "late modules failed");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot ask the agent for its modules");
                return;
            }
        }
        if Instant::now() > deadline {
            tracing::warn!("late modules not loaded within {MODULES_LIMIT:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reason a lease's container could not start, for the client to print.
fn refusal(e: &RunError) -> String {
    match e {
        RunError::Program { message, .. } => message.clone(),
        _ => error_chain(e),
    }
}
