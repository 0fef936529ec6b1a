//! rgcs-agent: the guest compute service. It serves hcsshim's GCS bridge protocol v4 over vsock
//! from inside a Linux utility VM.
//!
//! * [`config`] — command-line flags (hcsshim's, plus ours);
//! * [`bridge`] — dial, negotiate, serve, re-dial;
//! * [`dispatch`] — one arm per request type (frame → dispatch → domain → executor);
//! * [`outcome`] — what a handler returns to the connection;
//! * [`host`] — agent-wide state;
//! * [`modules`] — the background load of storage kernel modules;
//! * [`logging`] — logrus-style JSON lines for the host's log port;
//! * [`sys`] — the only place with raw file descriptors and `unsafe` (denied everywhere else).

#![deny(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod container;
pub mod dispatch;
pub mod error;
pub mod host;
pub mod logging;
pub mod modules;
pub mod network;
pub mod outcome;
pub mod pause;
pub mod process;
pub mod reaper;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;

use std::sync::Arc;

/// Runs the agent (not PID 1) until the host asks for power-off or, with `--no-redial`, the bridge
/// drops. Returns the process exit code.
pub fn run(cfg: config::Config) -> i32 {
    sys::heap::limit_arenas(1);
    // The zygote must be forked while this process still has one thread: before logging (which
    // starts a thread) and before the runtime. In the zygote, `start` never returns.
    let zygote = container::runtime::start(&cfg.run_dir.join("runtime"), cfg.executor_deadline);
    logging::install(logging::level_filter(&cfg.log_level));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "cannot start the async runtime"
            );
            return 1;
        }
    };
    let in_uvm = matches!(cfg.bridge, config::BridgeTarget::Vsock { .. });
    let gate = if in_uvm && cfg.late_modules {
        modules::ModulesGate::new()
    } else {
        modules::ModulesGate::ready()
    };
    tracing::info!(pid = std::process::id(), bridge = ?cfg.bridge, "rgcs agent starting");
    let exit = runtime.block_on(async {
        let reaper = match reaper::Reaper::start() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "cannot start the reaper");
                return bridge::Exit::Disconnected;
            }
        };
        let mut host = host::Host::new(gate, reaper);
        match zygote {
            Ok(zygote) => {
                tracing::info!(pid = zygote.pid(), "executor zygote started");
                let stdio = match &cfg.stdio_unix_prefix {
                    Some(prefix) => process::stdio::StdioTarget::UnixPrefix(prefix.clone()),
                    None => process::stdio::StdioTarget::Vsock,
                };
                host = host.with_executor(host::Executor {
                    zygote,
                    run_dir: cfg.run_dir.clone(),
                    stdio,
                });
            }
            Err(e) => tracing::error!(
                error = &e as &dyn std::error::Error,
                "cannot start the executor zygote; containers and processes are unavailable"
            ),
        }
        let host = Arc::new(host);
        container::sweep(&host).await;
        bridge::run(&cfg, host).await
    });
    tracing::info!(?exit, "rgcs agent exiting");
    // Do not wait for blocking work still running (a late module load, a hung mount): the host
    // asked for the VM to go away, and PID 1 syncs and powers off once we are gone.
    runtime.shutdown_background();
    match exit {
        bridge::Exit::PowerOff | bridge::Exit::Disconnected => 0,
    }
}
