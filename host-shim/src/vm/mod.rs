//! The UVM launcher: QEMU (q35, PVH vmlinux, TCG or KVM) with vsock through
//! vhost-device-vsock, plus the host ends of the guest's well-known vsock ports.
//!
//! [`Uvm::start`] makes a short run directory, starts vhost-device-vsock, binds the host
//! listeners the guest dials (entropy on 1, logs on 109, the bridge on 0x40000000) *before*
//! QEMU starts, then starts QEMU. Dropping a [`Uvm`] (or [`Uvm::shutdown`]) stops QEMU
//! (SIGTERM, then SIGKILL after a grace period) and the backend, and removes the sockets and
//! the run directory (kept when `RGCS_KEEP_RUNDIR` is set). Both children carry
//! `PR_SET_PDEATHSIG(SIGKILL)`, so they also die when the host process is killed.
//!
//! This module owns process supervision and the vsock plumbing; it does not speak the bridge
//! protocol (the caller gets the accepted stream from [`Uvm::accept_bridge`]).

pub mod config;
pub mod entropy;
pub mod guest_log;
mod process;
pub mod qemu;
pub mod qmp;
pub mod rundir;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub use config::{
    nic_port, pmem_port, Accel, ConfigError, ResolvedAccel, UvmConfig, DEFAULT_NIC_SLOTS, DEFAULT_PMEM_SLOTS,
};

/// The VM's shared QMP connection.
pub type SharedQmp = Arc<Mutex<qmp::Qmp>>;
pub use guest_log::{GuestLevel, GuestLogRecord, GuestLogs};
pub use process::SpawnError;
pub use rgcs_client::vsock::{VsockError, VsockListener};
pub use rgcs_protocol::ports::{BRIDGE_PORT, ENTROPY_PORT, FIRST_STDIO_PORT, LOG_PORT};
pub use rundir::{RunDir, RunDirError};

use process::ChildProc;

/// Options of [`Uvm::start`] beyond the VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UvmOptions {
    /// Listen on the bridge port (0x40000000) for [`Uvm::accept_bridge`].
    pub serve_bridge: bool,
    /// Guest log records kept for [`GuestLogs::snapshot`].
    pub guest_log_capacity: usize,
    /// How long to wait for vhost-device-vsock's socket.
    pub vhost_ready_timeout: Duration,
    /// How long QEMU gets between SIGTERM and SIGKILL.
    pub shutdown_grace: Duration,
}

impl Default for UvmOptions {
    fn default() -> Self {
        Self {
            serve_bridge: true,
            guest_log_capacity: guest_log::DEFAULT_LOG_CAPACITY,
            vhost_ready_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Errors of the UVM launcher.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error("invalid uvm configuration")]
    Config(#[from] ConfigError),
    /// A file the VM needs is missing.
    #[error("{what} {path} does not exist")]
    Missing {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The run directory could not be made.
    #[error("cannot create the run directory")]
    RunDir(#[from] RunDirError),
    /// A child could not be started.
    #[error("cannot start a uvm process")]
    Spawn(#[from] SpawnError),
    /// vhost-device-vsock did not create its socket.
    #[error("vhost-device-vsock did not create {socket} within {timeout:?} (exit: {status:?}; see {log})")]
    VhostNotReady {
        /// The expected socket.
        socket: PathBuf,
        /// The wait.
        timeout: Duration,
        /// Its exit status if it died.
        status: Option<ExitStatus>,
        /// Its log.
        log: PathBuf,
    },
    /// A vsock listener failed.
    #[error("uvm vsock")]
    Vsock(#[from] VsockError),
    /// The bridge port is not served (`UvmOptions::serve_bridge` was false).
    #[error("the bridge port is not served by this uvm")]
    BridgeNotServed,
    /// QEMU exited while we waited for the guest.
    #[error("qemu exited ({status:?}) before the guest connected to port {port}; see {log} and {console}")]
    QemuExited {
        /// The port waited on.
        port: u32,
        /// QEMU's exit status.
        status: Option<ExitStatus>,
        /// QEMU's log.
        log: PathBuf,
        /// The serial console log.
        console: PathBuf,
    },
    /// QEMU did not exit in time.
    #[error("qemu did not exit within {0:?}")]
    WaitTimeout(Duration),
    /// The vsock backend died: the guest lost its bridge, logs and stdio, so the VM was stopped.
    #[error("vhost-device-vsock exited ({status:?}): the guest lost vsock and the utility VM was stopped; see {log}")]
    BackendDied {
        /// Its exit status.
        status: Option<ExitStatus>,
        /// Its log.
        log: PathBuf,
    },
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running utility VM. Fields drop in order: QEMU first, then the backend, the listeners and
/// tasks, and the run directory last.
#[derive(Debug)]
pub struct Uvm {
    qemu: ChildProc,
    vhost: ChildProc,
    bridge: Option<Mutex<VsockListener>>,
    /// Held only to abort the entropy and log servers on drop.
    _tasks: Vec<AbortOnDrop>,
    pmem_slots: u32,
    guest_logs: GuestLogs,
    entropy_delivered: Arc<AtomicUsize>,
    backend_exit: Arc<std::sync::OnceLock<Option<ExitStatus>>>,
    /// The one QMP connection (QEMU serves one client at a time), shared by storage and networks.
    qmp: tokio::sync::OnceCell<SharedQmp>,
    nic_slots: u32,
    accel: ResolvedAccel,
    spawned_at: Instant,
    vsock_prefix: PathBuf,
    console_log: PathBuf,
    qemu_log: PathBuf,
    qmp_socket: PathBuf,
    run_dir: RunDir,
}

impl Uvm {
    /// Starts a UVM. Must run inside a tokio runtime, on a thread that outlives the VM (see
    /// `PR_SET_PDEATHSIG` in the module docs).
    pub async fn start(cfg: &UvmConfig, opts: &UvmOptions) -> Result<Self, VmError> {
        cfg.validate()?;
        for (what, path) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd)] {
            if !path.is_file() {
                return Err(VmError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        let accel = cfg.accel.resolve();
        let run_dir = RunDir::create(&cfg.run_dir_parent)?;
        let vhost = start_vhost_device_vsock(cfg, &run_dir, opts.vhost_ready_timeout).await?;

        // The guest dials these as soon as it boots: listen before QEMU starts.
        let prefix = run_dir.vsock_prefix();
        let entropy_listener = VsockListener::bind(&prefix, ENTROPY_PORT)?;
        let log_listener = VsockListener::bind(&prefix, LOG_PORT)?;
        let bridge = if opts.serve_bridge {
            Some(Mutex::new(VsockListener::bind(&prefix, BRIDGE_PORT)?))
        } else {
            None
        };
        let guest_logs = GuestLogs::new(opts.guest_log_capacity);
        let entropy_delivered = Arc::new(AtomicUsize::new(0));
        let _tasks = vec![
            AbortOnDrop(tokio::spawn(entropy::serve(
                entropy_listener,
                Arc::clone(&entropy_delivered),
            ))),
            AbortOnDrop(tokio::spawn(guest_logs.clone().serve(log_listener))),
        ];

        let argv = qemu::qemu_argv(cfg, accel, &run_dir);
        tracing::info!(
            run_dir = %run_dir.path().display(),
            accel = ?accel,
            qemu = %cfg.qemu_bin.display(),
            cmdline = %qemu::kernel_cmdline(cfg, accel),
            "starting uvm"
        );
        let mut cmd = Command::new(&cfg.qemu_bin);
        cmd.args(&argv);
        let spawned_at = Instant::now();
        let qemu = process::spawn("qemu", &mut cmd, &run_dir.qemu_log(), opts.shutdown_grace)?;
        let backend_exit = Arc::new(std::sync::OnceLock::new());
        let mut _tasks = _tasks;
        _tasks.push(AbortOnDrop(tokio::spawn(watch_backend(
            vhost.watcher(),
            qemu.watcher(),
            Arc::clone(&backend_exit),
            run_dir.vhost_log(),
        ))));
        Ok(Self {
            qemu,
            vhost,
            bridge,
            _tasks,
            guest_logs,
            entropy_delivered,
            backend_exit,
            qmp: tokio::sync::OnceCell::new(),
            nic_slots: cfg.nic_slots,
            accel,
            pmem_slots: cfg.pmem_slots,
            spawned_at,
            vsock_prefix: prefix,
            console_log: run_dir.console_log(),
            qemu_log: run_dir.qemu_log(),
            qmp_socket: run_dir.qmp_socket(),
            run_dir,
        })
    }

    /// Accepts the guest's bridge connection (port 0x40000000). Fails early if QEMU exits.
    /// Can be called again to accept a re-dial.
    pub async fn accept_bridge(&self, timeout: Duration) -> Result<UnixStream, VmError> {
        let listener = self.bridge.as_ref().ok_or(VmError::BridgeNotServed)?.lock().await;
        self.accept_or_exit(&listener, timeout).await
    }

    /// Listens on a guest port (stdio ports are allocated by the caller from
    /// [`FIRST_STDIO_PORT`] up). Listen before telling the guest to dial.
    pub fn listen(&self, port: u32) -> Result<VsockListener, VmError> {
        Ok(VsockListener::bind(&self.vsock_prefix, port)?)
    }

    /// Accepts one connection on `listener`, failing early if QEMU exits meanwhile (or the vsock
    /// backend died, which stops QEMU).
    pub async fn accept_or_exit(
        &self,
        listener: &VsockListener,
        timeout: Duration,
    ) -> Result<UnixStream, VmError> {
        tokio::select! {
            r = listener.accept_one(timeout) => Ok(r?),
            status = self.qemu.wait() => Err(match self.backend_exit.get() {
                Some(status) => VmError::BackendDied {
                    status: *status,
                    log: self.run_dir.vhost_log(),
                },
                None => VmError::QemuExited {
                    port: listener.port(),
                    status,
                    log: self.qemu_log.clone(),
                    console: self.console_log.clone(),
                },
            }),
        }
    }

    /// `Some(status)` once vhost-device-vsock died under a running VM (which was then stopped).
    pub fn vsock_backend_exit(&self) -> Option<Option<ExitStatus>> {
        self.backend_exit.get().copied()
    }

    /// The vhost-device-vsock process id.
    pub fn vsock_backend_pid(&self) -> u32 {
        self.vhost.pid()
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub async fn wait(&self, timeout: Duration) -> Result<ExitStatus, VmError> {
        match tokio::time::timeout(timeout, self.qemu.wait()).await {
            Ok(Some(status)) => Ok(status),
            Ok(None) | Err(_) => Err(VmError::WaitTimeout(timeout)),
        }
    }

    /// virtio-pmem slots (PCIe root ports `vm::pmem_port(0..n)`) this VM was started with.
    pub fn pmem_slots(&self) -> u32 {
        self.pmem_slots
    }

    /// QEMU's exit status if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.qemu.exit_status()
    }

    /// Stops QEMU (SIGTERM, SIGKILL after the grace period) and vhost-device-vsock, then
    /// removes the run directory. Returns QEMU's exit status.
    pub async fn shutdown(self) -> Option<ExitStatus> {
        let status = self.qemu.stop().await;
        self.vhost.stop().await;
        tracing::info!(status = ?status, uptime = ?self.spawned_at.elapsed(), "uvm stopped");
        status
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// `<run_dir>/vsock.sock`: guest port `P` arrives on `<prefix>_P`; host→guest
    /// connections go to the prefix itself (see [`rgcs_client::vsock::connect_to_guest`]).
    pub fn vsock_prefix(&self) -> &Path {
        &self.vsock_prefix
    }

    /// The guest serial console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// QEMU's stdout/stderr log.
    pub fn qemu_log(&self) -> &Path {
        &self.qemu_log
    }

    /// The VM's QMP connection, opened on first use and shared by every user (QEMU serves one
    /// QMP client at a time).
    pub async fn qmp(&self) -> Result<SharedQmp, qmp::QmpError> {
        self.qmp
            .get_or_try_init(|| async {
                let q = qmp::Qmp::connect(&self.qmp_socket).await?;
                Ok(Arc::new(Mutex::new(q)))
            })
            .await
            .cloned()
    }

    /// PCIe root ports for NIC hot-plug (`vm::nic_port(0..n)`).
    pub fn nic_slots(&self) -> u32 {
        self.nic_slots
    }

    /// The QMP socket (for hot-plugging disks).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// Guest log records: subscribe or snapshot.
    pub fn guest_logs(&self) -> GuestLogs {
        self.guest_logs.clone()
    }

    /// Whether the entropy seed was delivered to the guest.
    pub fn entropy_delivered(&self) -> bool {
        self.entropy_delivered.load(Ordering::Acquire) > 0
    }

    /// When QEMU was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The accelerator in use.
    pub fn accel(&self) -> ResolvedAccel {
        self.accel
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid()
    }

    /// Resolves when QEMU exits, without holding the VM (for a watcher task).
    pub fn qemu_exited(&self) -> impl std::future::Future<Output = Option<ExitStatus>> + Send + 'static {
        let mut watch = self.qemu.watcher();
        async move { watch.exited().await }
    }
}

/// The guest's vsock exists only while vhost-device-vsock runs: if it dies first, report it once
/// and stop QEMU (a VM without its bridge can only be torn down).
async fn watch_backend(
    mut vhost: process::ChildWatch,
    mut qemu: process::ChildWatch,
    exit: Arc<std::sync::OnceLock<Option<ExitStatus>>>,
    log: PathBuf,
) {
    tokio::select! {
        status = vhost.exited() => {
            let _ = exit.set(status);
            tracing::error!(?status, log = %log.display(), "vhost-device-vsock exited: the guest lost vsock; stopping the utility VM");
            qemu.terminate();
        }
        _ = qemu.exited() => {}
    }
}

/// Starts vhost-device-vsock for `cfg.guest_cid` and waits for its vhost-user socket.
async fn start_vhost_device_vsock(
    cfg: &UvmConfig,
    run_dir: &RunDir,
    timeout: Duration,
) -> Result<ChildProc, VmError> {
    let socket = run_dir.vhost_socket();
    let mut vm_arg = std::ffi::OsString::from(format!("guest-cid={},socket=", cfg.guest_cid));
    vm_arg.push(&socket);
    vm_arg.push(",uds-path=");
    vm_arg.push(run_dir.vsock_prefix());
    let mut cmd = Command::new(&cfg.vhost_device_vsock_bin);
    cmd.arg("--vm").arg(vm_arg);
    let log = run_dir.vhost_log();
    let child = process::spawn("vhost-device-vsock", &mut cmd, &log, Duration::from_millis(500))?;
    let deadline = Instant::now() + timeout;
    loop {
        if socket.exists() {
            return Ok(child);
        }
        let status = child.exit_status();
        if status.is_some() || Instant::now() >= deadline {
            return Err(VmError::VhostNotReady {
                socket,
                timeout,
                status,
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests;
