//! Pods (`docs/pods.md`): `rgcs pod create|ls|rm` and the hidden `rgcs pod serve` that
//! `pod create` and `rgcs run -d` start in the background, one per pod. Everything is found
//! through the state directory, so any shell reaches any pod. Containers in pods:
//! [`super::workloads`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rgcs_host_shim::control::request_async;
use rgcs_host_shim::net::Network;
use rgcs_host_shim::pod::server::{serve, PodOptions};
use rgcs_host_shim::pod::state::{check_name, PodDir, PodStatus, StateDir};
use rgcs_host_shim::pod::workloads::PodRequest;

use super::{cache_dir, say};
use crate::VmArgs;

/// How long `pod create` waits for a pod to run (boot under TCG included).
const START_LIMIT: Duration = Duration::from_secs(120);

/// What a pod is created with (`pod create`, and `run -d` for its own pod).
#[derive(Args, Debug, Clone)]
pub struct PodArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Network: none, user (NAT, `-p` works) or netns:PATH.
    #[arg(long, default_value = "user", value_name = "none|user|netns:PATH")]
    pub network: String,
    /// Publish a port: `[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]`. Repeatable.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// DNS server. Repeatable.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// The pod's hostname (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Each container's scratch disk in MiB (sparse).
    #[arg(long, default_value_t = 1024)]
    pub scratch_mib: u64,
    /// Layer cache directory.
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// `rgcs pod create NAME`.
#[derive(Args, Debug)]
pub struct PodCreateArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    /// Pod name.
    pub name: String,
}

/// `rgcs pod serve` (internal: what `pod create` starts in the background).
#[derive(Args, Debug)]
pub struct PodServeArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    /// Remove the pod with its last container.
    #[arg(long)]
    pub auto_remove: bool,
    /// Pod name.
    pub name: String,
}

/// `rgcs pod serve`: runs in the foreground until the pod is removed.
pub async fn serve_cmd(state: &StateDir, a: PodServeArgs) -> Result<ExitCode> {
    let network = Network::parse(
        &a.pod.network,
        &a.pod.publish,
        &a.pod.dns,
        a.pod.hostname.as_deref(),
    )?;
    let opts = PodOptions {
        name: a.name.clone(),
        state: state.clone(),
        boot: a.pod.vm.boot_options(),
        network,
        hostname: a.pod.hostname.clone(),
        auto_remove: a.auto_remove,
        cache_dir: cache_dir(a.pod.cache.clone())?,
        scratch_size: (a.pod.scratch_mib << 20).max(rgcs_host_shim::scratch::MIN_SIZE),
        network_text: a.pod.network.clone(),
        ports_text: a.pod.publish.clone(),
    };
    serve(opts).await.with_context(|| format!("pod {}", a.name))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts `rgcs pod serve` in the background for a new pod and waits until it runs.
pub(crate) async fn start_pod(
    state: &StateDir,
    name: &str,
    pod: &PodArgs,
    auto_remove: bool,
) -> Result<PodDir> {
    check_name(name).map_err(|e| anyhow!(e))?;
    // Everything checked before anything boots.
    Network::parse(&pod.network, &pod.publish, &pod.dns, pod.hostname.as_deref())?;
    let dir = state.pod(name);
    match dir.status() {
        Some((_, PodStatus::Running | PodStatus::Starting)) => bail!("a pod named {name:?} already exists"),
        // A dead or failed pod's directory does not hold the name.
        Some(_) => dir
            .remove()
            .with_context(|| format!("cannot sweep the dead pod {name}"))?,
        None => {}
    }
    if state.name_taken(name) {
        bail!("the name {name:?} is already in use by a container");
    }
    dir.create()
        .with_context(|| format!("cannot create {}", dir.path.display()))?;
    let log = std::fs::File::create(dir.server_log()).context("cannot create the pod's server log")?;
    let mut args: Vec<OsString> = vec![
        "--state-dir".into(),
        state.path().into(),
        "pod".into(),
        "serve".into(),
    ];
    args.extend(pod.vm.to_args()?);
    args.extend(["--network".into(), pod.network.clone().into()]);
    for p in &pod.publish {
        args.extend(["-p".into(), p.into()]);
    }
    for d in &pod.dns {
        args.extend(["--dns".into(), d.into()]);
    }
    if let Some(h) = &pod.hostname {
        args.extend(["--hostname".into(), h.into()]);
    }
    args.extend(["--scratch-mib".into(), pod.scratch_mib.to_string().into()]);
    args.extend(["--cache".into(), cache_dir(pod.cache.clone())?.into()]);
    if auto_remove {
        args.push("--auto-remove".into());
    }
    args.push(name.into());
    let exe = std::env::current_exe().context("cannot find the rgcs binary")?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in this terminal is not the pod's.
            .process_group(0)
            .spawn()
            .context("cannot start the pod server")?
    };
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            let why = dir
                .record()
                .ok()
                .and_then(|r| r.error)
                .unwrap_or_else(|| tail(&dir.server_log()));
            let _ = dir.remove();
            bail!("pod {name} did not start ({status}): {why}");
        }
        if let Some((r, PodStatus::Running)) = dir.status() {
            if r.server_pid == child.id() {
                // The server runs on without us: its exit is its own business now.
                drop(child);
                return Ok(dir);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = dir.remove();
            bail!("pod {name} did not start within {START_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// `rgcs pod create NAME`.
pub async fn create(state: &StateDir, a: PodCreateArgs) -> Result<ExitCode> {
    start_pod(state, &a.name, &a.pod, false).await?;
    say(&a.name)?;
    Ok(ExitCode::SUCCESS)
}

/// `rgcs pod ls`.
pub fn ls(state: &StateDir) -> Result<ExitCode> {
    say(format!(
        "{:<24} {:<9} {:<10} {:>10}  {}",
        "POD", "STATUS", "NETWORK", "CONTAINERS", "CREATED"
    ))?;
    for p in state.pods() {
        let Some((r, status)) = p.status() else { continue };
        say(format!(
            "{:<24} {:<9} {:<10} {:>10}  {}",
            p.name,
            status.as_str(),
            r.network,
            p.containers().len(),
            ago(r.created)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ago(t: u64) -> String {
    let s = rgcs_host_shim::pod::state::now().saturating_sub(t);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        _ => format!("{} hours ago", s / 3600),
    }
}

/// A running pod's directory, or a clear error.
pub(crate) fn running(state: &StateDir, name: &str) -> Result<PodDir> {
    let dir = state.pod(name);
    match dir.status() {
        Some((_, PodStatus::Running)) => Ok(dir),
        Some((_, s)) => bail!("pod {name} is {}", s.as_str()),
        None => bail!("no such pod: {name}"),
    }
}

/// Waits for a pod's server to exit (after a shutdown request): its record gone or dead, and
/// its process no longer running.
pub(crate) async fn wait_gone(dir: &PodDir, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let server = dir.record().ok().map(|r| (r.server_pid, r.server_start));
    let running = || {
        matches!(dir.status(), Some((_, PodStatus::Running | PodStatus::Starting)))
            || server
                .is_some_and(|(pid, start)| rgcs_host_shim::pod::state::process_start(pid) == Some(start))
    };
    while running() {
        if Instant::now() > deadline {
            bail!("pod {} did not stop within {limit:?}", dir.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `rgcs pod rm [-f] NAME...`.
pub async fn rm_pods(state: &StateDir, names: Vec<String>, force: bool) -> Result<ExitCode> {
    for name in names {
        let dir = state.pod(&name);
        match dir.status() {
            None => bail!("no such pod: {name}"),
            Some((_, PodStatus::Running | PodStatus::Starting)) => {
                request_async(&dir.path, PodRequest::Shutdown { force })
                    .await
                    .with_context(|| format!("cannot remove pod {name}"))?;
                wait_gone(&dir, Duration::from_secs(120)).await?;
            }
            Some(_) => {}
        }
        dir.remove()
            .with_context(|| format!("cannot remove {}", dir.path.display()))?;
        say(&name)?;
    }
    Ok(ExitCode::SUCCESS)
}
