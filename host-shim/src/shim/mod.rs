//! `containerd-shim-rgcs-v1`: the containerd shim v2 (runtime type `io.containerd.rgcs.v1`) that
//! runs containerd's tasks in rgcs UVMs. One shim, and one UVM, per pod (a CRI sandbox and its
//! containers) or per task without CRI annotations. See `docs/containerd.md` and ADR-0011.
//!
//! * [`args`] — containerd's command line;
//! * [`start`] — the `start` and `delete` actions;
//! * [`service`] — the `containerd.task.v2.Task` service (over ttrpc): task life, processes;
//! * [`task`] — a task's processes and their exits;
//! * [`vm`] — the UVM, its NIC and shares;
//! * [`spec`] — containerd's OCI spec made fit for the guest;
//! * [`rootfs`] — the snapshotter's mounts on the host;
//! * [`io`] — stdio FIFOs;
//! * [`events`] — events to containerd;
//! * [`metrics`] — Stats.

pub mod args;
pub mod events;
pub mod io;
pub mod metrics;
pub mod rootfs;
pub mod service;
pub mod spec;
pub mod start;
pub mod task;
pub mod vm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::{self, asynchronous::transport::Listener, asynchronous::Server, Code};
use rgcs_client::ContainerError;
use rgcs_protocol::error_chain;

use crate::session::{BootOptions, ENV_INITRD};

/// Where the shim looks for the initrd when `RGCS_INITRD` is not in containerd's environment.
pub const DEFAULT_INITRD: &str = "/usr/local/lib/rgcs/initrd.img";
/// The shim's log filter (`info` by default; containerd's `-debug` makes it `debug`).
pub const ENV_LOG: &str = "RGCS_SHIM_LOG";
/// Guest RAM of the shim's UVMs, MiB (default 512).
pub const ENV_MEMORY: &str = "RGCS_SHIM_MEMORY_MIB";

/// The shim's errors, each with the ttrpc code containerd maps to its own error kinds.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such task or process.
    #[error("{0}: not found")]
    NotFound(String),
    /// Already there.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// Not in a state that allows this.
    #[error("{0}")]
    Precondition(String),
    /// Not something rgcs does.
    #[error("{0}: not implemented by rgcs")]
    Unimplemented(String),
    /// The guest or the UVM failed.
    #[error("{0}")]
    Guest(String),
    /// A host system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    /// An I/O error while doing `what`.
    pub fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }

    /// A guest request's error, with the guest's own message.
    pub fn from_guest(e: &ContainerError) -> Self {
        Self::Guest(error_chain(e))
    }

    /// The ttrpc code.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::INVALID_ARGUMENT,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::Precondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::Guest(_) | Self::Io { .. } => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), error_chain(&e)))
    }
}

/// Now, as a protobuf timestamp.
pub fn timestamp_now() -> Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let parsed = args::Args::parse(std::env::args().skip(1));
    let a = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-rgcs-v1: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match a.action {
        args::Action::Version => {
            println!(
                "containerd-shim-rgcs-v1 {} (runtime io.containerd.rgcs.v1, task API v2)",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        args::Action::Start => start::start(&a).and_then(|addr| {
            start::print(addr.as_bytes()).map_err(|e| ShimError::io("print the address".into(), e))
        }),
        args::Action::Delete => start::delete(&a)
            .and_then(|out| start::print(&out).map_err(|e| ShimError::io("print the response".into(), e))),
        args::Action::Serve => serve(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-rgcs-v1 {:?}: {}", a.action, error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Sends our stderr (tracing's output) into the bundle's `log` FIFO, which containerd copies into
/// its own log.
fn log_to_containerd(debug: bool) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    {
        if nix::unistd::dup2(f.as_raw_fd(), 2).is_ok() {
            // Blocking again: a slow containerd slows our logging, it does not lose it.
            let _ = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_WRONLY));
        }
    }
    let filter = std::env::var(ENV_LOG).unwrap_or_else(|_| if debug { "debug" } else { "info" }.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

fn boot_options() -> BootOptions {
    let initrd = std::env::var_os(ENV_INITRD).map_or_else(|| PathBuf::from(DEFAULT_INITRD), PathBuf::from);
    let mut opts = BootOptions::new(initrd);
    if let Some(mib) = std::env::var(ENV_MEMORY).ok().and_then(|m| m.parse().ok()) {
        opts.memory_mib = mib;
    }
    opts
}

/// The daemon: serves the task API on the socket `start` bound, until Shutdown.
fn serve(a: &args::Args) -> Result<(), ShimError> {
    log_to_containerd(a.debug);
    let fd: i32 = std::env::var(start::LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ShimError::Invalid(format!(
                "{} is not set: `serve` is started by `start`",
                start::LISTEN_FD_ENV
            ))
        })?;
    let sock = start::socket_path(&a.address, &a.namespace, &a.id);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ShimError::io("start the runtime".into(), e))?;
    let result = runtime.block_on(async {
        let owned = crate::sys::process::adopt_inherited_fd(fd)
            .map_err(|e| ShimError::io("the listening socket".into(), e))?;
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        let listener =
            Listener::try_from(std_listener).map_err(|e| ShimError::io("the listening socket".into(), e))?;
        let events = events::Publisher::start(
            std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            a.namespace.clone(),
        );
        let shim = Arc::new(service::Shim::new(events, boot_options()));
        let exit = Arc::clone(&shim.exit);
        let task = create_task(Arc::new(service::Service(Arc::clone(&shim))));
        let mut server = Server::new().add_listener(listener).register_service(task);
        server
            .start()
            .await
            .map_err(|e| ShimError::Guest(format!("ttrpc server: {e}")))?;
        tracing::info!(id = %a.id, pid = std::process::id(), "shim serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| ShimError::io("SIGTERM handler".into(), e))?;
        tokio::select! {
            () = exit.notified() => {}
            _ = term.recv() => tracing::info!("SIGTERM"),
        }
        // Let the Shutdown reply go out; remove what is left (which also ends pending Waits),
        // then stop serving.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // No new connections from here on (and nothing left behind if `delete` has to kill us
        // while the server drains).
        let _ = std::fs::remove_file(&sock);
        shim.stop_all().await;
        let _ = server.shutdown().await;
        Ok(())
    });
    let _ = std::fs::remove_file(&sock);
    tracing::info!("shim exiting");
    result
}
