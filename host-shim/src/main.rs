//! `rgcs`: the host CLI. Parses arguments, calls the library (through `cli/`), prints the error
//! chain once.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rgcs_host_shim::session::BootOptions;
use rgcs_host_shim::vm::Accel;

#[derive(Parser)]
#[command(
    name = "rgcs",
    version,
    about = "rgcs host shim: build, boot and drive Linux utility VMs and their containers"
)]
struct Cli {
    /// Log filter for host-side (and re-emitted guest) logs, e.g. `info` or `rgcs_host_shim=debug`.
    #[arg(long, global = true, env = "RGCS_LOG", default_value = "warn")]
    log: String,
    /// The serve directory of a running `rgcs uvm boot --serve-dir DIR` (container commands).
    #[arg(long, global = true, env = "RGCS_UVM", value_name = "DIR")]
    uvm: Option<PathBuf>,
    /// The state directory pods and their containers are found in (default /run/rgcs).
    #[arg(long, global = true, env = "RGCS_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Initrd images.
    Initrd {
        #[command(subcommand)]
        command: InitrdCommand,
    },
    /// Utility VMs.
    Uvm {
        #[command(subcommand)]
        command: UvmCommand,
    },
    /// Benchmarks: print a table, write JSON.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run an OCI image: in a fresh UVM, attached, exiting with its code; or with -d in a pod of
    /// its own left running (or with --pod in an existing pod).
    Run(cli::image::RunArgs),
    /// Pods: UVMs that keep running, with a sandbox and containers from images.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// The warm pool: UVMs booted ahead of time, each used by one `rgcs run` instead of a boot.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// List the images in the layer cache.
    Images {
        /// Layer cache directory.
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Remove images (by ID prefix or source path) and the layers no other image uses.
    Rmi {
        /// Layer cache directory.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print a container's output (-f: follow it until the container exits).
    Logs {
        /// Follow.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Container.
        id: String,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Seconds before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// OCI images: import to ext4 layer disks, or build the busybox demo image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Create a container (Create + Start; the init runs on `start`).
    Create(cli::containers::CreateArgs),
    /// Run a container's init process attached; exit with its exit code.
    Start {
        /// Attach the local stdin.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Container ID.
        id: String,
    },
    /// Run a process in a container attached; exit with its exit code.
    Exec(cli::containers::ProcessOpts),
    /// List running containers (-a: all); with a container ID, its processes (UVM PIDs).
    Ps {
        /// Also exited containers and those of dead pods.
        #[arg(short = 'a', long)]
        all: bool,
        /// Container ID.
        id: Option<String>,
    },
    /// Print a container's statistics (JSON).
    Stats {
        /// Container ID.
        id: String,
    },
    /// Signal a container's init (or PID).
    Kill(cli::containers::KillArgs),
    /// Remove containers (-f: kill a running one first).
    Rm {
        /// Kill a running init first.
        #[arg(short = 'f', long)]
        force: bool,
        /// Container IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print the guest agent's DumpStacks text.
    Stacks,
}

/// What the CLI-driven benchmarks (`bench run`, `bench pod`) take.
#[derive(Args)]
pub(crate) struct ImageBenchArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Samples.
    #[arg(short = 'n', long, default_value_t = 10)]
    runs: usize,
    /// The image (default: the busybox demo image, built in a temporary directory).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PodCommand {
    /// Create a pod (its UVM and sandbox) and leave it running.
    Create(cli::pod::PodCreateArgs),
    /// List pods.
    Ls,
    /// Remove pods (-f: with running containers).
    Rm {
        /// Also when containers run.
        #[arg(short = 'f', long)]
        force: bool,
        /// Pod names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Serve a pod in the foreground (what `pod create` starts in the background).
    #[command(hide = true)]
    Serve(cli::pod::PodServeArgs),
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Keep N warm UVMs ready (booted with these options) and wait until they are.
    Start(cli::pool::PoolStartArgs),
    /// List the warm UVMs.
    Ls,
    /// Stop refilling and power off the warm UVMs not in use.
    Stop,
    /// Serve one warm UVM in the foreground (what the pool starts in the background).
    #[command(hide = true)]
    Serve(cli::pool::PoolServeArgs),
}

#[derive(Subcommand)]
enum InitrdCommand {
    /// Build a newc initrd (no root needed): /init = the static agent, kernel modules, module list.
    Build {
        /// The static `gcs` binary.
        #[arg(long, default_value = "out/gcs")]
        agent: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// A static busybox to install as /bin/busybox with a link per applet (/bin/sh, …): the
        /// UVM's shell and tools, and the source of the containers' busybox rootfs.
        #[arg(long)]
        busybox: Option<PathBuf>,
        /// A dynamically linked binary to install at its own path with its `ldd` libraries
        /// (mkfs.ext4 for EnsureFilesystem; runc and crun for the benchmark). Repeatable.
        #[arg(long = "tool")]
        tools: Vec<PathBuf>,
        /// A host file to install at the same path (e.g. /etc/mke2fs.conf). Repeatable.
        #[arg(long = "file")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Convert an OCI layout or `docker save` tar into cached ext4 layer images.
    Import {
        /// OCI image layout directory, OCI tar or `docker save` tar.
        path: PathBuf,
        /// Layer cache directory.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the busybox demo image (3 layers) as an OCI layout.
    Demo {
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// The static busybox.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

#[derive(Subcommand)]
enum UvmCommand {
    /// Boot a UVM with the rgcs agent as PID 1.
    Boot(BootArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct VmArgs {
    /// The initrd (from `rgcs initrd build`).
    #[arg(long, env = "RGCS_INITRD", default_value = "out/initrd.img")]
    initrd: PathBuf,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Accelerator: KVM is used only where /dev/kvm is hardware KVM.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Agent log level (trace, debug, info, warning, error).
    #[arg(long, default_value = "info")]
    guest_log_level: String,
}

#[derive(Args)]
struct BootArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Boot, negotiate, print the capabilities as JSON, power off, exit 0.
    #[arg(long, conflicts_with_all = ["no_bridge", "serve_dir"])]
    check: bool,
    /// Do not serve the bridge port: leave it to another host program.
    #[arg(long, requires = "vsock_dir", conflicts_with = "serve_dir")]
    no_bridge: bool,
    /// Directory in which the VM's run directory (and its vsock Unix sockets) is created.
    #[arg(long)]
    vsock_dir: Option<PathBuf>,
    /// Keep the VM and serve container commands on DIR/control.sock (`rgcs --uvm DIR …`).
    #[arg(long, value_name = "DIR")]
    serve_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Boot N UVMs: QEMU spawn -> negotiated, and the guest's /init -> negotiated.
    Boot {
        #[command(flatten)]
        vm: VmArgs,
        /// Number of boots.
        #[arg(short = 'n', long, default_value_t = 5)]
        runs: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Image import against mkfs.ext4 -d, and 9p against a scratch disk in one UVM.
    Storage {
        #[command(flatten)]
        vm: VmArgs,
        /// The image to import (default: the busybox demo image).
        #[arg(long)]
        image: Option<PathBuf>,
        /// MiB written and read in the UVM.
        #[arg(long, default_value_t = 64)]
        mib: u64,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// N container lifecycles in one UVM, with a census of fds, threads, RSS, mounts, cgroups,
    /// processes and state before and after; fails if anything leaked.
    Soak {
        #[command(flatten)]
        vm: VmArgs,
        /// Cycles.
        #[arg(short = 'n', long, default_value_t = 1000)]
        runs: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TCP throughput and round trips host <-> guest for each NIC backend (user, netns), with the
    /// server as a UVM process and then in a container on the same NIC.
    Net {
        #[command(flatten)]
        vm: VmArgs,
        /// MiB per throughput round.
        #[arg(long, default_value_t = 32)]
        mib: u64,
        /// Throughput rounds per path.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// 1-byte round trips per path.
        #[arg(long, default_value_t = 500)]
        pings: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The agent's RSS idle and with N running containers, and the UVM's memory in use.
    Memory {
        #[command(flatten)]
        vm: VmArgs,
        /// Running containers in the loaded reading.
        #[arg(short = 'n', long, default_value_t = 50)]
        containers: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// containerd with rgcs and with runc in the same run: `ctr run --rm true`, and a CRI pod
    /// (RunPodSandbox + CreateContainer + StartContainer), as ratios, with rgcs's phases.
    Containerd {
        /// Samples per scenario and runtime.
        #[arg(short = 'n', long, default_value_t = 10)]
        runs: usize,
        /// The directory holding containerd-shim-rgcs-v1 (default: beside this binary).
        #[arg(long)]
        shim_dir: Option<PathBuf>,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// `rgcs run` end to end (cold): to the first output byte and to exit, with a phase breakdown.
    Run(ImageBenchArgs),
    /// Pods through the CLI: `run -d` (new pod) and `run -d --pod P` to running, and `rm -f`.
    Pod(ImageBenchArgs),
    /// Container lifecycle and exec through rgcs, runc and crun in one UVM (use the bench initrd).
    Containers {
        #[command(flatten)]
        vm: VmArgs,
        /// Samples per row.
        #[arg(short = 'n', long, default_value_t = 50)]
        runs: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl VmArgs {
    /// Guest RAM in MiB.
    pub(crate) fn memory_mib(&self) -> u32 {
        self.memory
    }

    /// vCPUs.
    pub(crate) fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The same options as arguments, for a process started with them (the initrd made absolute).
    pub(crate) fn to_args(&self) -> Result<Vec<std::ffi::OsString>> {
        let initrd = std::fs::canonicalize(&self.initrd)
            .with_context(|| format!("cannot find the initrd {}", self.initrd.display()))?;
        let accel = match self.accel {
            AccelArg::Auto => "auto",
            AccelArg::Kvm => "kvm",
            AccelArg::Tcg => "tcg",
        };
        Ok(vec![
            "--initrd".into(),
            initrd.into(),
            "--memory".into(),
            self.memory.to_string().into(),
            "--cpus".into(),
            self.cpus.to_string().into(),
            "--accel".into(),
            accel.into(),
            "--guest-log-level".into(),
            self.guest_log_level.clone().into(),
        ])
    }

    pub(crate) fn boot_options(&self) -> BootOptions {
        let mut o = BootOptions::new(&self.initrd);
        o.memory_mib = self.memory;
        o.cpus = self.cpus;
        o.accel = match self.accel {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        };
        o.log_level = self.guest_log_level.clone();
        o
    }
}

/// docker's exit code for an error of the CLI itself (not of the container) in `run`.
const RUN_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let run = std::env::args().skip(1).any(|a| a == "run");
            return match e.use_stderr() {
                false => ExitCode::SUCCESS,
                true if run => ExitCode::from(RUN_ERROR),
                true => ExitCode::from(2),
            };
        }
    };
    let failure = match cli.command {
        Command::Run(_) => ExitCode::from(RUN_ERROR),
        _ => ExitCode::FAILURE,
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rgcs: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rgcs: {e:#}");
            failure
        }
    };
    // Do not wait for blocking tasks (a read of the local stdin may never end).
    runtime.shutdown_background();
    code
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let uvm = cli.uvm.as_deref();
    let state = rgcs_host_shim::pod::state::StateDir::new(cli.state_dir.clone());
    match cli.command {
        Command::Initrd {
            command:
                InitrdCommand::Build {
                    agent,
                    output,
                    busybox,
                    tools,
                    files,
                },
        } => cli::initrd::build(agent, output, busybox.as_deref(), &tools, &files),
        Command::Uvm {
            command: UvmCommand::Boot(args),
        } => cli::uvm::boot(args).await,
        Command::Bench { command } => cli::bench::run(command).await,
        Command::Run(a) => cli::image::run(&state, a).await,
        Command::Pod { command } => match command {
            PodCommand::Create(a) => cli::pod::create(&state, a).await,
            PodCommand::Ls => cli::pod::ls(&state),
            PodCommand::Rm { force, names } => cli::pod::rm_pods(&state, names, force).await,
            PodCommand::Serve(a) => cli::pod::serve_cmd(&state, a).await,
        },
        Command::Pool { command } => match command {
            PoolCommand::Start(a) => cli::pool::start(&state, a).await,
            PoolCommand::Ls => cli::pool::ls(&state),
            PoolCommand::Stop => cli::pool::stop(&state).await,
            PoolCommand::Serve(a) => cli::pool::serve_cmd(&state, a).await,
        },
        Command::Images { cache } => cli::image::images(cache),
        Command::Rmi { cache, images } => cli::image::rmi(&state, cache, images),
        Command::Logs { follow, id } => cli::workloads::logs(&state, &id, follow).await,
        Command::Stop { time, ids } => cli::workloads::stop(&state, ids, time).await,
        Command::Image {
            command: ImageCommand::Import { path, cache, json },
        } => cli::image::import(path, cache, json).await,
        Command::Image {
            command: ImageCommand::Demo { output, busybox },
        } => cli::image::demo(output, busybox),
        Command::Create(a) => cli::containers::create(uvm, a).await,
        Command::Start { interactive, id } => cli::containers::start(uvm, id, interactive).await,
        Command::Exec(p) => {
            let dir = cli::workloads::control_dir(uvm, &state, &p.id)?;
            cli::containers::exec(Some(&dir), p).await
        }
        Command::Ps { all, id: None } if uvm.is_none() => cli::workloads::ps(&state, all),
        Command::Ps { id, .. } => {
            let id = id.context("give a container ID (with --uvm), or none to list containers")?;
            let dir = cli::workloads::control_dir(uvm, &state, &id)?;
            cli::containers::ps(Some(&dir), id).await
        }
        Command::Stats { id } => {
            let dir = cli::workloads::control_dir(uvm, &state, &id)?;
            cli::containers::stats(Some(&dir), id).await
        }
        Command::Kill(mut k) => {
            let dir = cli::workloads::control_dir(uvm, &state, &k.id)?;
            if uvm.is_none() && k.pid.is_none() {
                k.pid = cli::workloads::init_pid(&state, &k.id);
            }
            cli::containers::kill(Some(&dir), k).await
        }
        Command::Rm { force, ids } => match uvm {
            Some(_) => {
                for id in ids {
                    cli::containers::rm(uvm, id, force).await?;
                }
                Ok(ExitCode::SUCCESS)
            }
            None => cli::workloads::rm_containers(&state, ids, force).await,
        },
        Command::Stacks => cli::containers::stacks(uvm).await,
    }
}

/// Fails with a readable message for a zero sample count.
fn check_runs(runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("-n must be at least 1");
    }
    Ok(())
}
