//! `rgcs run`, `rgcs image import|demo` and `rgcs bench storage`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rgcs_client::ContainerClient;
use rgcs_host_shim::image::{self, demo, Progress, TerminalProgress};
use rgcs_host_shim::net::Network;
use rgcs_host_shim::run::{self, RunOptions, Volume};
use rgcs_host_shim::session::{Session, POWER_OFF_TIMEOUT};
use rgcs_host_shim::{bench, scratch};

use super::pod::{ago, PodArgs};
use super::workloads::{self, PodRun};
use super::{cache_dir, say};
use crate::VmArgs;
use rgcs_host_shim::pod::state::{PodStatus, StateDir};
use rgcs_host_shim::warm::Pool;

/// `rgcs run [-v HOSTDIR:CTRDIR[:ro]]... [-t] [-i] [-e K=V]... IMAGE [-- CMD...]`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Share a host directory: HOSTDIR:CTRDIR, read-only with a :ro suffix (Plan 9 over vsock). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOSTDIR:CTRDIR[:ro]")]
    volumes: Vec<String>,
    /// Allocate a terminal (and attach stdin).
    #[arg(short = 't', long)]
    tty: bool,
    /// Attach the local stdin.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Environment entry K=V. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Container ID.
    #[arg(long)]
    name: Option<String>,
    /// Network: none (only lo), user (NAT through QEMU's user-mode network) or netns:PATH (the
    /// veth a CNI plugin put into the namespace at PATH).
    #[arg(long, default_value = "user", value_name = "none|user|netns:PATH")]
    network: String,
    /// Publish a container port on the host (user network): `[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]`. Repeatable.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]"
    )]
    publish: Vec<String>,
    /// DNS server for the container's resolv.conf (replaces the network's). Repeatable.
    #[arg(long, value_name = "IP")]
    dns: Vec<String>,
    /// Hostname (default: the container ID).
    #[arg(long)]
    hostname: Option<String>,
    /// Scratch disk size in MiB (sparse).
    #[arg(long, default_value_t = 1024)]
    scratch_mib: u64,
    /// Layer cache directory.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// OCI image layout directory, OCI tar or `docker save` tar.
    image: PathBuf,
    /// Command (replaces the image's entrypoint and cmd).
    #[arg(last = true)]
    command: Vec<String>,
    /// Detached: in a pod of its own that keeps running; prints the container's name.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Run in this existing pod (attached unless -d).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,
    /// Boot a UVM for this container even when the warm pool (`rgcs pool start`) has one ready.
    #[arg(long, conflicts_with_all = ["detach", "pod"])]
    cold: bool,
}

/// `rgcs run`: exits with the container's exit code.
pub async fn run(state: &StateDir, a: RunArgs) -> Result<ExitCode> {
    if a.detach || a.pod.is_some() {
        return run_in_pod(state, a).await;
    }
    let volumes = a
        .volumes
        .iter()
        .map(|v| Volume::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let network = Network::parse(&a.network, &a.publish, &a.dns, a.hostname.as_deref())?;
    let opts = RunOptions {
        network: network.mode,
        ports: network.ports,
        dns: network.dns,
        hostname: a.hostname,
        image: a.image,
        command: a.command,
        env: a.env,
        tty: a.tty,
        interactive: a.interactive,
        volumes,
        id: a.name,
        cache_dir: cache_dir(a.cache)?,
        scratch_size: (a.scratch_mib << 20).max(scratch::MIN_SIZE),
        boot: a.vm.boot_options(),
    };
    let pool = (!a.cold).then(|| Pool::new(state));
    match run::run(opts, pool.as_ref()).await {
        Ok(code) => Ok(ExitCode::from(u8::try_from(code & 0xFF).unwrap_or(1))),
        Err(e @ run::RunError::Program { .. }) => {
            eprintln!("rgcs: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
        Err(e) => Err(e).context("run failed"),
    }
}

/// `rgcs run -d` and `rgcs run --pod`.
async fn run_in_pod(state: &StateDir, a: RunArgs) -> Result<ExitCode> {
    if !a.volumes.is_empty() || a.tty || a.interactive {
        bail!("-v, -t and -i are not supported with -d or --pod yet (use `rgcs exec -it` into it)");
    }
    if a.pod.is_some()
        && (a.network != "user" || !a.publish.is_empty() || !a.dns.is_empty() || a.hostname.is_some())
    {
        bail!("--network, -p, --dns and --hostname belong to the pod: give them to `rgcs pod create`");
    }
    let pod_args = PodArgs {
        vm: a.vm,
        network: a.network,
        publish: a.publish,
        dns: a.dns,
        hostname: a.hostname,
        scratch_mib: a.scratch_mib,
        cache: a.cache,
    };
    workloads::run(
        state,
        PodRun {
            pod: a.pod,
            name: a.name,
            detach: a.detach,
            pod_args,
            image: a.image,
            command: a.command,
            env: a.env,
        },
    )
    .await
}

/// `rgcs image import PATH`: one cached ext4 image per layer; prints them (or JSON).
pub async fn import(path: PathBuf, cache: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let cache = cache_dir(cache)?;
    let shown = path.clone();
    let img = tokio::task::spawn_blocking(move || {
        let progress = TerminalProgress::new();
        image::import(&path, &cache, &progress as &dyn Progress)
    })
    .await?
    .with_context(|| format!("cannot import {}", shown.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&img)?);
    } else {
        for l in &img.layers {
            println!(
                "{}  {}  {} KiB{}",
                l.digest,
                l.path.display(),
                l.size / 1024,
                if l.cached { "  (cached)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs image demo -o DIR`: the busybox demo image as an OCI layout.
pub fn demo(output: PathBuf, busybox: PathBuf) -> Result<ExitCode> {
    demo::build(&output, &busybox).context("cannot build the demo image")?;
    eprintln!(
        "image: {} (OCI layout, 3 layers, cmd /hello.sh)",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `rgcs bench storage`: image import against `mkfs.ext4 -d`, and 9p against a scratch disk in
/// one UVM.
pub async fn bench_storage(
    vm: VmArgs,
    image_path: Option<PathBuf>,
    mib: u64,
    json: Option<PathBuf>,
) -> Result<ExitCode> {
    let work = tempfile_dir()?;
    let image_path = match image_path {
        Some(p) => p,
        None => {
            let p = work.join("demo-image");
            demo::build(&p, std::path::Path::new("/bin/busybox"))?;
            p
        }
    };
    let (img, w) = (image_path.clone(), work.clone());
    let import = tokio::task::spawn_blocking(move || image::bench_import(&img, &w)).await??;
    let Session { uvm, bridge, .. } = Session::boot(&vm.boot_options()).await.context("boot failed")?;
    let bridge = Arc::new(bridge);
    let client = ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix());
    let in_uvm = bench::storage::storage_in_uvm(&uvm, &bridge, &client, &work, mib).await;
    let _ = bridge.shutdown_uvm(true).await;
    let _ = uvm.wait(POWER_OFF_TIMEOUT).await;
    uvm.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    let in_uvm = in_uvm.context("storage benchmark in the UVM failed")?;
    println!(
        "storage benchmark ({} MiB in the UVM; import of {})",
        mib,
        image_path.display()
    );
    println!("{:<44} {:>10}", "metric", "MB/s");
    for (name, v) in [
        ("image import, ours (extract + mkfs.ext4 -d)", import.ours_mb_s),
        ("mkfs.ext4 -d alone, same trees", import.mkfs_mb_s),
        ("9p write (guest dd, host p9 server)", in_uvm.p9_write_mb_s),
        ("9p read", in_uvm.p9_read_mb_s),
        ("scratch disk write (virtio-scsi ext4)", in_uvm.scsi_write_mb_s),
        ("scratch disk read", in_uvm.scsi_read_mb_s),
    ] {
        println!("{name:<44} {v:>10.1}");
    }
    println!(
        "ratios: import / mkfs.ext4 -d = {:.2}; 9p write / scratch write = {:.2}; 9p read / scratch read = {:.2}",
        import.ratio,
        in_uvm.p9_write_mb_s / in_uvm.scsi_write_mb_s,
        in_uvm.p9_read_mb_s / in_uvm.scsi_read_mb_s
    );
    if let Some(path) = json {
        bench::write_json(
            &path,
            &serde_json::json!({"benchmark": "storage", "import": import, "uvm": in_uvm, "mib": mib}),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("rgcs-bench-storage-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
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
