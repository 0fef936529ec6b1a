//! The bridge: dial the host, serve the connection, dial again when it drops.
//!
//! The guest is always the client (docs/gcs-reference.md §1.1). Like hcsshim HEAD, a dropped bridge is
//! re-dialled every 100 ms and the protocol must be negotiated again on the new connection.

pub mod conn;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::config::{BridgeTarget, Config};
use crate::host::Host;
use crate::sys::fdstream::FdStream;

/// Pause between dials after the bridge dropped or a dial failed.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);

/// Why the bridge loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The host asked for the VM to power off.
    PowerOff,
    /// The bridge dropped and re-dialling is off (`--no-redial`).
    Disconnected,
}

/// Dials and serves until the host asks for power-off (or, with `--no-redial`, until the first
/// connection ends).
pub async fn run(cfg: &Config, host: Arc<Host>) -> Exit {
    let mut connections = 0u64;
    loop {
        let stream = match dial(&cfg.bridge).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, target_addr = ?cfg.bridge, "bridge dial failed");
                if !cfg.redial {
                    return Exit::Disconnected;
                }
                tokio::time::sleep(REDIAL_PAUSE).await;
                continue;
            }
        };
        connections += 1;
        tracing::info!(connection = connections, "bridge connected");
        let gate = host.modules.clone();
        let late_modules = cfg.late_modules;
        let on_negotiated = move || {
            let now = rgcs_init::time::boottime();
            let init = std::env::var("RGCS_INIT_BOOTTIME_NS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            let now_ns = rgcs_init::time::as_nanos_u64(now);
            tracing::info!(
                boottime_ns = now_ns,
                init_boottime_ns = init.unwrap_or(0),
                init_to_ready_ms = init
                    .map(|i| now_ns.saturating_sub(i) as f64 / 1e6)
                    .unwrap_or(-1.0),
                "bridge negotiated"
            );
            if late_modules {
                gate.start_loading();
            }
        };
        let ended = match stream {
            Stream::Unix(s) => conn::serve(s, Arc::clone(&host), cfg.bridge_stall, on_negotiated).await,
            Stream::Fd(s) => conn::serve(s, Arc::clone(&host), cfg.bridge_stall, on_negotiated).await,
        };
        match ended {
            Ok(conn::Ended::PowerOff) => return Exit::PowerOff,
            Ok(conn::Ended::Disconnected) => tracing::warn!("bridge disconnected"),
            Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "bridge failed"),
        }
        if !cfg.redial {
            return Exit::Disconnected;
        }
        tokio::time::sleep(REDIAL_PAUSE).await;
    }
}

enum Stream {
    Unix(UnixStream),
    Fd(FdStream),
}

async fn dial(target: &BridgeTarget) -> std::io::Result<Stream> {
    match target {
        BridgeTarget::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        BridgeTarget::Vsock { port } => {
            let port = *port;
            // The connect is blocking (with hcsshim's ETIMEDOUT retries): keep it off the reactor.
            let fd = tokio::task::spawn_blocking(move || rgcs_init::vsock::connect(port))
                .await
                .map_err(std::io::Error::other)??;
            Ok(Stream::Fd(FdStream::new(fd)?))
        }
    }
}
