//! A booted UVM with a negotiated bridge: what the CLI, the benchmarks and the tests start from.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rgcs_protocol::message::GcsCapabilities;

use crate::kernel::{self, KernelError};
use crate::vm::{Accel, Uvm, UvmConfig, UvmOptions, VmError};
use rgcs_client::bridge::{BridgeClient, ClientError};

/// How long the guest gets from QEMU spawn to dialling the bridge (TCG boots take ~4 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a powered-off guest gets to make QEMU exit.
pub const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable naming the initrd to boot (set by `scripts/test.sh`; the CLI reads it too).
pub const ENV_INITRD: &str = "RGCS_INITRD";

/// The initrd named by [`ENV_INITRD`]; the error says how to build one.
pub fn initrd_from_env() -> Result<PathBuf, String> {
    let path = std::env::var_os(ENV_INITRD).map(PathBuf::from).ok_or_else(|| {
        format!("{ENV_INITRD} is not set: run `bash scripts/test.sh`, or `bash scripts/build.sh` and export {ENV_INITRD}=$PWD/out/initrd.img")
    })?;
    if !path.is_file() {
        return Err(format!(
            "{ENV_INITRD}={} does not exist: run `bash scripts/build.sh`",
            path.display()
        ));
    }
    Ok(path)
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The initrd built by `rgcs initrd build`.
    pub initrd: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Agent log level (passed on the kernel command line after ` -- `).
    pub log_level: String,
    /// More agent flags (after the log level), e.g. `--bridge-stall-ms 2000` in tests.
    pub agent_args: Vec<String>,
}

impl BootOptions {
    /// Defaults for `initrd`: 512 MiB, 1 vCPU, automatic accelerator, `info` logs.
    pub fn new(initrd: impl Into<PathBuf>) -> Self {
        Self {
            initrd: initrd.into(),
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Auto,
            log_level: "info".into(),
            agent_args: Vec::new(),
        }
    }

    /// The UVM configuration these options describe, with the located kernel.
    pub fn uvm_config(&self) -> Result<UvmConfig, SessionError> {
        let kernel = kernel::locate()?;
        let mut cfg = UvmConfig::new(kernel.vmlinux, self.initrd.clone());
        cfg.memory_mib = self.memory_mib;
        cfg.cpus = self.cpus;
        cfg.accel = self.accel;
        cfg.agent_args = vec!["--log-level".into(), self.log_level.clone()];
        cfg.agent_args.extend(self.agent_args.iter().cloned());
        Ok(cfg)
    }
}

/// Boot timings of one session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootTimings {
    /// Host clock: QEMU spawned → NegotiateProtocol answered.
    pub spawn_to_negotiated: Duration,
    /// Guest `CLOCK_BOOTTIME` when `/init` started, in ms.
    pub guest_init_ms: f64,
    /// Guest `CLOCK_BOOTTIME` when the agent negotiated, in ms.
    pub guest_ready_ms: f64,
}

impl BootTimings {
    /// The part we own: `/init` start → bridge negotiated, in ms.
    pub fn init_to_ready_ms(&self) -> f64 {
        self.guest_ready_ms - self.guest_init_ms
    }
}

/// Errors of a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No usable kernel.
    #[error("cannot find the guest kernel")]
    Kernel(#[from] KernelError),
    /// The VM did not start or died.
    #[error("the utility VM failed")]
    Vm(#[from] VmError),
    /// The bridge failed.
    #[error("the bridge failed")]
    Bridge(#[from] ClientError),
    /// The guest never logged its readiness record.
    #[error("the guest did not log \"bridge negotiated\" within {0:?}")]
    NoReadyRecord(Duration),
    /// QEMU did not exit after the guest was told to power off.
    #[error("the utility VM did not power off within {0:?}")]
    NoPowerOff(Duration),
}

/// A running UVM and its negotiated bridge.
#[derive(Debug)]
pub struct Session {
    /// The VM (QEMU, vhost-device-vsock, listeners, run dir).
    pub uvm: Uvm,
    /// The negotiated bridge.
    pub bridge: BridgeClient,
    /// What the guest announced.
    pub capabilities: GcsCapabilities,
    /// How long the boot took.
    pub timings: BootTimings,
}

impl Session {
    /// Boots a UVM, accepts the agent's bridge connection and negotiates protocol v4.
    pub async fn boot(opts: &BootOptions) -> Result<Self, SessionError> {
        let cfg = opts.uvm_config()?;
        let uvm = Uvm::start(&cfg, &UvmOptions::default()).await?;
        let stream = uvm.accept_bridge(BOOT_TIMEOUT).await?;
        let bridge = BridgeClient::new(stream);
        let negotiated = bridge.negotiate().await?;
        let spawn_to_negotiated = uvm.spawned_at().elapsed();
        let logs = uvm.guest_logs();
        let ready = logs
            .wait_for(Duration::from_secs(10), |r| r.msg == "bridge negotiated")
            .await
            .ok_or(SessionError::NoReadyRecord(Duration::from_secs(10)))?;
        let ns = |k: &str| {
            ready
                .fields
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0) as f64
                / 1e6
        };
        let timings = BootTimings {
            spawn_to_negotiated,
            guest_init_ms: ns("init_boottime_ns"),
            guest_ready_ms: ns("boottime_ns"),
        };
        Ok(Self {
            uvm,
            bridge,
            capabilities: negotiated.capabilities,
            timings,
        })
    }

    /// Asks the guest to power off and waits for QEMU to exit; then tears everything down.
    pub async fn power_off(self) -> Result<ExitStatus, SessionError> {
        let started = Instant::now();
        self.bridge.shutdown_uvm(true).await?;
        let status = match self.uvm.wait(POWER_OFF_TIMEOUT).await {
            Ok(s) => s,
            Err(_) => {
                self.uvm.shutdown().await;
                return Err(SessionError::NoPowerOff(POWER_OFF_TIMEOUT));
            }
        };
        tracing::debug!(elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), %status, "guest powered off");
        self.uvm.shutdown().await;
        Ok(status)
    }
}
