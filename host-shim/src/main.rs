//! `rgcs`: the host CLI. Parses arguments, calls the library, prints the error chain once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rgcs_host_shim::bench;
use rgcs_host_shim::initrd::{self, InitrdSpec};
use rgcs_host_shim::kernel;
use rgcs_host_shim::session::{BootOptions, Session};
use rgcs_host_shim::vm::{Accel, Uvm, UvmOptions, BRIDGE_PORT};

#[derive(Parser)]
#[command(
    name = "rgcs",
    version,
    about = "rgcs host shim: build, boot and drive Linux utility VMs"
)]
struct Cli {
    /// Log filter for host-side (and re-emitted guest) logs, e.g. `info` or `rgcs_host_shim=debug`.
    #[arg(long, global = true, env = "RGCS_LOG", default_value = "warn")]
    log: String,
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
    },
}

#[derive(Subcommand)]
enum UvmCommand {
    /// Boot a UVM with the rgcs agent as PID 1.
    Boot(BootArgs),
}

#[derive(Args)]
struct VmArgs {
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
    #[arg(long, conflicts_with = "no_bridge")]
    check: bool,
    /// Do not serve the bridge port: leave it to another host program.
    #[arg(long, requires = "vsock_dir")]
    no_bridge: bool,
    /// Directory in which the VM's run directory (and its vsock Unix sockets) is created.
    #[arg(long)]
    vsock_dir: Option<PathBuf>,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl VmArgs {
    fn boot_options(&self) -> BootOptions {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rgcs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Initrd {
            command: InitrdCommand::Build { agent, output },
        } => {
            let kernel = kernel::locate().context("cannot find the guest kernel")?;
            let report = initrd::build(&InitrdSpec::new(agent, &output, &kernel))
                .context("cannot build the initrd")?;
            eprintln!(
                "initrd: {} ({} KiB, kernel {}, {} modules)",
                report.output.display(),
                report.size / 1024,
                kernel.release,
                report.modules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Uvm {
            command: UvmCommand::Boot(args),
        } => boot(args).await,
        Command::Bench {
            command: BenchCommand::Boot { vm, runs, json },
        } => {
            if runs == 0 {
                bail!("-n must be at least 1");
            }
            let report = bench::boot(&vm.boot_options(), runs)
                .await
                .context("boot benchmark failed")?;
            let title = format!(
                "boot benchmark: {} boots, accel {}, {} MiB, {} vCPU",
                runs, report.accel, report.memory_mib, report.cpus
            );
            print!("{}", bench::table(&title, &report.rows));
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn boot(args: BootArgs) -> Result<ExitCode> {
    let opts = args.vm.boot_options();
    if args.check {
        let session = Session::boot(&opts).await.context("boot failed")?;
        let caps = serde_json::to_string_pretty(&session.capabilities)?;
        println!("{caps}");
        eprintln!(
            "uvm: negotiated protocol v4 {:.0} ms after QEMU spawn; guest /init -> ready {:.1} ms",
            session.timings.spawn_to_negotiated.as_secs_f64() * 1e3,
            session.timings.init_to_ready_ms()
        );
        let status = session.power_off().await.context("power-off failed")?;
        if !status.success() {
            bail!("QEMU exited with {status} after power-off");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = opts.uvm_config()?;
    if let Some(dir) = &args.vsock_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        cfg.run_dir_parent = dir.clone();
    }
    let uvm_opts = UvmOptions {
        serve_bridge: !args.no_bridge,
        ..UvmOptions::default()
    };
    let uvm = Uvm::start(&cfg, &uvm_opts)
        .await
        .context("cannot start the utility VM")?;
    println!("vsock prefix: {}", uvm.vsock_prefix().display());
    // Held until the VM stops: dropping it would close the bridge.
    let _bridge = if args.no_bridge {
        println!(
            "bridge: guest port {BRIDGE_PORT} arrives at {}_{BRIDGE_PORT}; listen there",
            uvm.vsock_prefix().display()
        );
        None
    } else {
        let stream = uvm.accept_bridge(rgcs_host_shim::session::BOOT_TIMEOUT).await?;
        let bridge = rgcs_host_shim::bridge::BridgeClient::new(stream);
        let caps = bridge.negotiate().await?;
        println!("{}", serde_json::to_string(&caps.capabilities)?);
        Some(bridge)
    };
    println!("running; Ctrl-C stops the VM and cleans up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = wait_term() => {}
        status = uvm.wait(FOREVER) => {
            eprintln!("uvm: QEMU exited: {status:?}");
        }
    }
    uvm.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// "Until interrupted": a year.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

async fn wait_term() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
