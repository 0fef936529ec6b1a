//! Long-lived pods in docker's habits (`docs/pods.md`): `rgcs pod create|ls|rm`, `rgcs run -d`,
//! `rgcs run --pod P`, `rgcs ps`, `rgcs logs [-f]`, `rgcs stop`, and the container commands
//! (`exec`, `rm`, `kill`, `stats`, `top`) routed to the pod that holds the container. Each pod is
//! served by a background `rgcs pod serve` process; everything is found through the state
//! directory, so any shell reaches any pod.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rgcs_host_shim::control::request_async;
use rgcs_host_shim::net::Network;
use rgcs_host_shim::pod::server::{serve, PodOptions, PodRequest};
use rgcs_host_shim::pod::state::{check_name, PodDir, PodStatus, StateDir};

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

fn cache_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    given
        .or_else(rgcs_host_shim::image::default_cache_dir)
        .ok_or_else(|| anyhow!("no cache directory: pass --cache DIR"))
}

/// Prints a line; a closed stdout (`| head`) is not an error.
fn say(line: impl std::fmt::Display) -> Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
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
async fn start_pod(state: &StateDir, name: &str, pod: &PodArgs, auto_remove: bool) -> Result<PodDir> {
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

fn ago(t: u64) -> String {
    let s = rgcs_host_shim::pod::state::now().saturating_sub(t);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        _ => format!("{} hours ago", s / 3600),
    }
}

/// A running pod's directory, or a clear error.
fn running(state: &StateDir, name: &str) -> Result<PodDir> {
    let dir = state.pod(name);
    match dir.status() {
        Some((_, PodStatus::Running)) => Ok(dir),
        Some((_, s)) => bail!("pod {name} is {}", s.as_str()),
        None => bail!("no such pod: {name}"),
    }
}

/// Waits for a pod's server to exit (after a shutdown request): its record gone or dead, and
/// its process no longer running.
async fn wait_gone(dir: &PodDir, limit: Duration) -> Result<()> {
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
        // docker's codes: the program cannot be found (127) or run (126).
        let code = if text.contains("not found in $PATH") {
            127
        } else if text.contains("does not have correct permissions") {
            126
        } else {
            125
        };
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

/// `rgcs bench pod`: what a pod costs and what it saves, timed end to end through the CLI as a
/// user runs it (each step a separate `rgcs` process, own state directory):
/// `run -d` (a new pod: boot, sandbox, image, container) and `run -d --pod P` (the pod up: image
/// and container only) until the command returns with the container running; `rm -f` of each.
pub async fn bench(
    vm: &VmArgs,
    runs: usize,
    image: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<ExitCode> {
    use rgcs_host_shim::bench::{table, write_json, Row, Summary};
    struct Work(PathBuf);
    impl Work {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Work {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let work = Work(std::env::temp_dir().join(format!("rgcs-podbench-{}", std::process::id())));
    std::fs::create_dir_all(work.path())?;
    let image = match image {
        Some(i) => i,
        None => {
            let p = work.path().join("image");
            rgcs_host_shim::image::demo::build(&p, Path::new("/bin/busybox"))?;
            p
        }
    };
    let exe = std::env::current_exe()?;
    let mut vm_args = vm.to_args()?;
    vm_args.extend(["--cache".into(), work.path().join("cache").into()]);
    let state = work.path().join("state");
    let rgcs = |args: Vec<OsString>| {
        let (exe, state) = (exe.clone(), state.clone());
        async move {
            let t = Instant::now();
            let out = tokio::process::Command::new(&exe)
                .arg("--state-dir")
                .arg(&state)
                .args(&args)
                .output()
                .await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!("rgcs {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok::<f64, anyhow::Error>(ms)
        }
    };
    let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let img: OsString = image.clone().into();
    // A warm-up: the image's layers are imported once into the cache, as for any later run.
    let mut warm = os(&["run", "-d", "--network", "none", "--name", "warm"]);
    warm.extend(vm_args.iter().cloned());
    warm.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
    rgcs(warm).await?;
    rgcs(os(&["rm", "-f", "warm"])).await?;
    let (mut new_pod, mut rm_pod) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("b{i}");
        let mut a = os(&["run", "-d", "--network", "none", "--name", &name]);
        a.extend(vm_args.iter().cloned());
        a.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
        new_pod.push(rgcs(a).await?);
        rm_pod.push(rgcs(os(&["rm", "-f", &name])).await?);
    }
    let mut create = os(&["pod", "create", "--network", "none"]);
    create.extend(vm_args.iter().cloned());
    create.push("pb".into());
    let pod_create = rgcs(create).await?;
    let (mut in_pod, mut rm_in_pod) = (Vec::new(), Vec::new());
    let result = async {
        for i in 0..runs {
            let name = format!("w{i}");
            let mut a = os(&["run", "-d", "--pod", "pb", "--name", &name, "--cache"]);
            a.push(work.path().join("cache").into());
            a.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
            in_pod.push(rgcs(a).await?);
            rm_in_pod.push(rgcs(os(&["rm", "-f", &name])).await?);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = rgcs(os(&["pod", "rm", "-f", "pb"])).await;
    result?;
    let row = |metric: &str, samples: Vec<f64>| -> Result<Row> {
        Ok(Row {
            metric: metric.to_owned(),
            summary: Summary::of(&samples).ok_or_else(|| anyhow!("no samples for {metric}"))?,
            samples,
        })
    };
    let rows = vec![
        row("run -d (new pod) -> running", new_pod)?,
        row("rm -f (its pod goes too)", rm_pod)?,
        row("run -d --pod P -> running", in_pod)?,
        row("rm -f (in a pod)", rm_in_pod)?,
        row("pod create (once)", vec![pod_create])?,
    ];
    let ratio = rows[2].summary.median / rows[0].summary.median;
    print!(
        "{}",
        table(
            &format!(
                "pod benchmark: n={runs}, through the CLI, {} MiB, {} vCPU",
                vm.memory_mib(),
                vm.cpus()
            ),
            &rows
        )
    );
    println!("run -d --pod / run -d (median): {ratio:.3}  (what an existing pod saves)");
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            benchmark: &'static str,
            runs: usize,
            rows: &'a [Row],
            ratio_in_pod_to_new_pod: f64,
        }
        write_json(
            &path,
            &Report {
                benchmark: "pod",
                runs,
                rows: &rows,
                ratio_in_pod_to_new_pod: ratio,
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs images`: the images in the layer cache.
pub fn images(cache: Option<PathBuf>) -> Result<ExitCode> {
    let cache = cache_dir(cache)?;
    say(format!(
        "{:<14} {:<40} {:>6} {:>10}  {}",
        "IMAGE ID", "SOURCE", "LAYERS", "SIZE", "IMPORTED"
    ))?;
    for r in rgcs_host_shim::image::index::list(&cache) {
        let id = r.id.strip_prefix("sha256:").unwrap_or(&r.id);
        say(format!(
            "{:<14} {:<40} {:>6} {:>7} MB  {}",
            id.chars().take(12).collect::<String>(),
            r.source.display(),
            r.layers.len(),
            r.size / 1_000_000,
            ago(r.imported)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs rmi IMAGE...`: an image and the layers no other image uses; refused while a container
/// of a live pod was made from it (as docker refuses).
pub fn rmi(state: &StateDir, cache: Option<PathBuf>, names: Vec<String>) -> Result<ExitCode> {
    use rgcs_host_shim::image::index;
    let cache = cache_dir(cache)?;
    for name in names {
        let rec = index::find(&cache, &name).map_err(|e| anyhow!(e))?;
        let users: Vec<String> = state
            .pods()
            .into_iter()
            .filter(|p| matches!(p.status(), Some((_, PodStatus::Running | PodStatus::Starting))))
            .flat_map(|p| p.containers())
            .filter(|c| Path::new(&c.image) == rec.source)
            .map(|c| c.id)
            .collect();
        if !users.is_empty() {
            bail!("image {name} is used by containers {users:?}: remove them first");
        }
        let removed = index::remove(&cache, &rec).with_context(|| format!("cannot remove image {name}"))?;
        say(format!("Deleted: {} ({} layer disks)", rec.id, removed.len()))?;
    }
    Ok(ExitCode::SUCCESS)
}
