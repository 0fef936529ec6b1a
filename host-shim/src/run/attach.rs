//! An init attached to this terminal: its stdio relayed, SIGINT/SIGTERM/SIGHUP and window sizes
//! forwarded, its exit code returned; through this process's bridge or a warm UVM's lease.

use std::time::Duration;

use super::{mark, RunError};
use crate::stdio::relay_terminal;
use rgcs_client::{ContainerClient, HostStdio};

/// What `rgcs run` needs of a running init besides its stdio: its exit, signals and terminal
/// resizes; through this process's bridge ([`LocalInit`]) or a warm UVM's server.
pub trait InitHandle: Sync {
    /// The init's exit code, once it has exited.
    fn wait(&self) -> impl std::future::Future<Output = Result<u32, RunError>> + Send;
    /// Sends `signal` (SIGKILL when `None`).
    fn signal(&self, signal: Option<i32>) -> impl std::future::Future<Output = Result<(), RunError>> + Send;
    /// Resizes the init's terminal.
    fn resize(&self, rows: u16, cols: u16) -> impl std::future::Future<Output = ()> + Send;
}

/// An init reached through this process's own bridge.
#[derive(Debug)]
pub struct LocalInit<'a> {
    /// The UVM's container client.
    pub client: &'a ContainerClient,
    /// Container ID.
    pub id: &'a str,
    /// The init's PID.
    pub pid: u32,
}

impl InitHandle for LocalInit<'_> {
    async fn wait(&self) -> Result<u32, RunError> {
        Ok(self.client.wait_for_process(self.id, self.pid, None).await?)
    }
    async fn signal(&self, signal: Option<i32>) -> Result<(), RunError> {
        Ok(self.client.signal_process(self.id, self.pid, signal).await?)
    }
    async fn resize(&self, rows: u16, cols: u16) {
        let _ = self.client.resize_console(self.id, self.pid, rows, cols).await;
    }
}

/// Relays this terminal and the init's stdio until the init exits (forwarding SIGINT, SIGTERM,
/// SIGHUP and window sizes) and returns its exit code.
pub async fn attach_init(init: &impl InitHandle, stdio: HostStdio, tty: bool) -> Result<i32, RunError> {
    let waited = async {
        tokio::select! {
            w = init.wait() => w,
            never = proxy_signals(init) => match never {},
        }
    };
    let resize = |rows: u16, cols: u16| init.resize(rows, cols);
    let code = relay_terminal(stdio, tty, waited, resize, Duration::from_secs(2)).await??;
    mark("exited");
    Ok(i32::try_from(code).unwrap_or(i32::MAX))
}

/// How long a container has after a forwarded SIGINT/SIGTERM/SIGHUP before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Forwards SIGINT, SIGTERM and SIGHUP to the container's init (docker's sig-proxy). An init that
/// ignores them (a container's PID 1 without handlers does) is killed when another arrives or
/// [`STOP_GRACE`] after the first, as `docker stop` would. Never returns.
async fn proxy_signals(init: &impl InitHandle) -> std::convert::Infallible {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
    ];
    let mut streams: Vec<_> = kinds
        .iter()
        .filter_map(|(k, n)| signal(*k).ok().map(|s| (s, *n)))
        .collect();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = futures_select(&mut streams);
        let got = match deadline {
            Some(d) => tokio::time::timeout_at(d, next).await.ok(),
            None => Some(next.await),
        };
        let kill = deadline.is_some();
        let signo = got.unwrap_or(libc::SIGKILL);
        let sent = if kill { None } else { Some(signo) };
        tracing::info!(signal = signo, kill, "forwarding a signal to the container");
        if let Err(e) = init.signal(sent).await {
            tracing::warn!(error = %e, "cannot signal the container");
        }
        if kill {
            std::future::pending::<()>().await;
        }
        deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
    }
}

/// The number of the first of `streams` to deliver a signal.
async fn futures_select(streams: &mut [(tokio::signal::unix::Signal, i32)]) -> i32 {
    if streams.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (s, n) in streams.iter_mut() {
            if s.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
