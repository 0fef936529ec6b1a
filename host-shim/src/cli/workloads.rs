//! Containers in pods, in docker's habits (`docs/pods.md`): `rgcs run -d`, `rgcs run --pod P`,
//! `rgcs ps`, `rgcs logs [-f]`, `rgcs stop`, `rgcs rm`, and the container commands (`exec`,
//! `kill`, `stats`, `ps C`) routed to the pod that holds the container.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rgcs_host_shim::control::request_async;
use rgcs_host_shim::pod::state::{check_name, PodDir, PodStatus, StateDir};
use rgcs_host_shim::pod::workloads::PodRequest;

use super::pod::{ago, running, start_pod, wait_gone, PodArgs};
use super::say;

/// `rgcs run -d` / `rgcs run --pod P`: what to run and where.
#[derive(Debug)]
pub struct PodRun {
    /// The pod to join (`--pod`); a new pod named after the container otherwise.
    pub pod: Option<String>,
    /// Container name.
    pub name: Option<String>,
    /// Print the ID and return (`-d`), else follow its output to its exit.
    pub detach: bool,
    /// A new pod's settings.
    pub pod_args: PodArgs,
    /// The image.
    pub image: PathBuf,
    /// Replaces the image's entrypoint and cmd.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<String>,
}

/// `rgcs run -d` / `rgcs run --pod P`: an image as a workload of a (new or given) pod.
pub async fn run(state: &StateDir, r: PodRun) -> Result<ExitCode> {
    let PodRun {
        pod: pod_name,
        name,
        detach,
        pod_args: pod,
        image,
        command,
        env,
    } = r;
    let pod = &pod;
    let id = name.unwrap_or_else(random_name);
    check_name(&id).map_err(|e| anyhow!(e))?;
    if state.name_taken(&id) {
        bail!("the container name {id:?} is already in use");
    }
    let image = std::fs::canonicalize(&image)
        .with_context(|| format!("cannot find the image {}", image.display()))?;
    let (dir, own) = match &pod_name {
        Some(p) => (running(state, p)?, false),
        None => (start_pod(state, &id, pod, true).await?, true),
    };
    let req = PodRequest::RunImage {
        id: id.clone(),
        image: image.display().to_string(),
        command,
        env,
    };
    if let Err(e) = request_async(&dir.path, req).await {
        if own {
            let _ = request_async(&dir.path, PodRequest::Shutdown { force: true }).await;
            let _ = wait_gone(&dir, Duration::from_secs(60)).await;
            let _ = dir.remove();
        }
        let text = rgcs_protocol::error_chain(&e);
        // docker's codes: the program cannot be found (127) or run (126), else rgcs's own (125).
        let code = rgcs_host_shim::run::program_exit_code(&text).unwrap_or(125);
        eprintln!("rgcs: cannot run {id}: {text}");
        return Ok(ExitCode::from(code));
    }
    if detach {
        say(&id)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Attached in an existing pod: its output as it comes, then its exit code.
    let code = follow(&dir, &id, true).await?;
    Ok(ExitCode::from(u8::try_from(code & 0xFF).unwrap_or(1)))
}

fn random_name() -> String {
    let mut b = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    format!(
        "rgcs-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// The pod that holds container `id`.
fn pod_of(state: &StateDir, id: &str) -> Result<PodDir> {
    state
        .find_container(id)
        .ok_or_else(|| anyhow!("no such container: {id}"))
}

/// The control directory for container `id`: `--uvm DIR` when given, else its pod's.
pub fn control_dir(uvm: Option<&Path>, state: &StateDir, id: &str) -> Result<PathBuf> {
    match uvm {
        Some(d) => Ok(d.to_path_buf()),
        None => pod_of(state, id).map(|p| p.path),
    }
}

/// The init PID of a pod container, from its record.
pub fn init_pid(state: &StateDir, id: &str) -> Option<u32> {
    state.find_container(id)?.container(id).ok()?.pid
}

/// `rgcs ps [-a]`: containers of every pod (`-a`: exited ones and dead pods too).
pub fn ps(state: &StateDir, all: bool) -> Result<ExitCode> {
    say(format!(
        "{:<20} {:<16} {:<28} {:<22} {:<16} {}",
        "CONTAINER", "POD", "IMAGE", "COMMAND", "CREATED", "STATUS"
    ))?;
    for p in state.pods() {
        let Some((_, pod_status)) = p.status() else {
            continue;
        };
        for c in p.containers() {
            let status = match (pod_status, c.exit_code) {
                (PodStatus::Running, None) => "Up".to_owned(),
                (PodStatus::Running, Some(code)) => format!("Exited ({code})"),
                (s, _) => format!("Dead (pod {})", s.as_str()),
            };
            if !all && status != "Up" {
                continue;
            }
            let image = Path::new(&c.image)
                .file_name()
                .map_or(c.image.clone(), |n| n.to_string_lossy().into_owned());
            let mut command = c.command.join(" ");
            if command.len() > 20 {
                command = format!("{}…", command.chars().take(19).collect::<String>());
            }
            say(format!(
                "{:<20} {:<16} {:<28} {:<22} {:<16} {}",
                c.id,
                p.name,
                image,
                format!("\"{command}\""),
                ago(c.created),
                status
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a container's log from `offset`; the new offset.
fn print_from(path: &Path, offset: u64) -> Result<u64> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(offset);
    };
    let len = f.metadata()?.len();
    // Rotated underneath us: start the new file from its beginning.
    let offset = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(offset + buf.len() as u64)
}

/// Prints the log and, while the container runs, what it adds; its exit code when it exited.
async fn follow(dir: &PodDir, id: &str, wait: bool) -> Result<u32> {
    let path = dir.log_path(id);
    let mut offset = print_from(&path, 0)?;
    loop {
        let exited = dir.container(id).ok().and_then(|c| c.exit_code);
        let alive = matches!(dir.status(), Some((_, PodStatus::Running)));
        offset = print_from(&path, offset)?;
        if let Some(code) = exited {
            return Ok(code);
        }
        if !alive {
            bail!("the pod of {id} is gone");
        }
        if !wait {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `rgcs logs [-f] C`.
pub async fn logs(state: &StateDir, id: &str, follow_: bool) -> Result<ExitCode> {
    let dir = pod_of(state, id)?;
    if follow_ {
        follow(&dir, id, true).await?;
    } else {
        let old = dir.log_path(id).with_extension("log.1");
        print_from(&old, 0)?;
        print_from(&dir.log_path(id), 0)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs stop [-t SECS] C...`.
pub async fn stop(state: &StateDir, ids: Vec<String>, timeout: u64) -> Result<ExitCode> {
    for id in ids {
        let dir = pod_of(state, &id)?;
        request_async(
            &dir.path,
            PodRequest::Stop {
                id: id.clone(),
                timeout_secs: timeout,
            },
        )
        .await
        .with_context(|| format!("cannot stop {id}"))?;
        say(&id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs rm [-f] C...` for pod containers: the container goes (with its pod when `run -d` made
/// the pod for it).
pub async fn rm_containers(state: &StateDir, ids: Vec<String>, force: bool) -> Result<ExitCode> {
    for id in ids {
        let dir = pod_of(state, &id)?;
        match dir.status() {
            Some((r, PodStatus::Running)) => {
                request_async(
                    &dir.path,
                    PodRequest::Remove {
                        id: id.clone(),
                        force,
                    },
                )
                .await
                .with_context(|| format!("cannot remove {id}"))?;
                if r.auto_remove {
                    wait_gone(&dir, Duration::from_secs(120)).await?;
                    let _ = dir.remove();
                }
            }
            // A dead pod's containers are records only: forget them (and the pod with its last).
            _ => {
                dir.remove_container(&id);
                if dir.containers().is_empty() {
                    let _ = dir.remove();
                }
            }
        }
        say(&id)?;
    }
    Ok(ExitCode::SUCCESS)
}
