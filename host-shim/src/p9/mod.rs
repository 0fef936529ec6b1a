//! A 9P2000.L file server for LCOW `MappedDirectory` shares (docs/gcs-reference.md §4.14, §6.4).
//!
//! The guest dials vsock port [`PORT`] (564) once per mount and mounts with
//! `trans=fd,rfdno=N,wfdno=N,version=9p2000.L,msize=65536,aname=<ShareName>`: the server
//! accepts one connection per mount and picks the share from `Tattach`'s `aname`. Shares can be
//! added and removed while the server runs (ModifySettings Add/Remove).
//!
//! Confinement: every lookup is `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the
//! share root ([`host`]); read-only shares answer `EROFS` to every mutating request; guests
//! cannot create device nodes; messages are bounded by the negotiated msize (≤ 65536).

mod conn;
pub mod host;
mod mutate;
pub mod wire;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::vm::VsockListener;

pub use host::Root;

/// The vsock port LCOW guests dial for Plan 9 shares.
pub const PORT: u32 = rgcs_protocol::ports::PLAN9_PORT;

/// [`PORT`] as `MappedDirectory`'s `Port` (an `int32` in hcsshim's schema).
// cast: the port is 564 (checked here at compile time), which fits in an i32.
#[allow(clippy::cast_possible_wrap)]
pub const PORT_I32: i32 = {
    assert!(PORT <= 0x7fff_ffff);
    PORT as i32
};

pub(crate) type Shares = Arc<RwLock<HashMap<String, Arc<Root>>>>;

/// Errors of the 9p server.
#[derive(Debug, thiserror::Error)]
pub enum P9Error {
    /// A share directory cannot be opened.
    #[error("cannot share {dir}")]
    Share {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A connection failed.
    #[error("9p connection")]
    Io(#[from] std::io::Error),
    /// Accepting a guest connection failed.
    #[error("accepting 9p connections")]
    Accept(#[from] crate::vm::VsockError),
}

/// Counters of a server (all connections).
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted (one per guest mount).
    pub connections: AtomicU64,
    /// Successful `Tattach`es.
    pub attaches: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Payload bytes read by guests (`Rread`).
    pub bytes_read: AtomicU64,
    /// Payload bytes written by guests (`Twrite`).
    pub bytes_written: AtomicU64,
}

/// A 9P2000.L server: a set of named shares, served on any number of connections.
#[derive(Debug, Clone, Default)]
pub struct Server {
    shares: Shares,
    stats: Arc<Stats>,
}

impl Server {
    /// A server with no shares.
    pub fn new() -> Self {
        Self::default()
    }

    /// A server with `shares`: name → (host directory, read-only).
    pub fn with_shares<I, S, P>(shares: I) -> Result<Self, P9Error>
    where
        I: IntoIterator<Item = (S, (P, bool))>,
        S: Into<String>,
        P: AsRef<Path>,
    {
        let s = Self::new();
        for (name, (dir, ro)) in shares {
            s.add_share(name, dir.as_ref(), ro)?;
        }
        Ok(s)
    }

    /// Adds (or replaces) share `name` (the guest's `aname`, GCS `ShareName`).
    pub fn add_share(&self, name: impl Into<String>, dir: &Path, read_only: bool) -> Result<(), P9Error> {
        let root = Root::open(dir, read_only).map_err(|source| P9Error::Share {
            dir: dir.to_path_buf(),
            source,
        })?;
        let name = name.into();
        tracing::info!(share = %name, dir = %dir.display(), read_only, "9p share added");
        if let Ok(mut m) = self.shares.write() {
            m.insert(name, Arc::new(root));
        }
        Ok(())
    }

    /// Removes share `name`; existing mounts keep working until they disconnect.
    pub fn remove_share(&self, name: &str) -> bool {
        self.shares
            .write()
            .map(|mut m| m.remove(name).is_some())
            .unwrap_or(false)
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Serves one connection until it closes (blocking: run it on its own thread).
    pub fn serve_connection(&self, stream: StdUnixStream) -> Result<(), P9Error> {
        stream.set_nonblocking(false)?;
        let mut reader = BufReader::with_capacity(wire::MAX_MSIZE as usize, stream.try_clone()?);
        let mut writer = BufWriter::with_capacity(wire::MAX_MSIZE as usize, stream);
        let mut conn = conn::Conn::new(Arc::clone(&self.shares), Arc::clone(&self.stats));
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        while let Some(msg) = wire::read_message(&mut reader, conn.msize())? {
            let reply = conn.handle(&msg);
            wire::write_message(&mut writer, &reply)?;
            // Flush unless more requests are already buffered (pipelined by the client).
            if reader.buffer().is_empty() {
                writer.flush()?;
            }
        }
        writer.flush()?;
        Ok(())
    }

    /// Spawns a thread serving `stream`.
    pub fn spawn_connection(&self, stream: StdUnixStream) -> std::io::Result<std::thread::JoinHandle<()>> {
        let server = self.clone();
        std::thread::Builder::new().name("rgcs-9p".into()).spawn(move || {
            if let Err(e) = server.serve_connection(stream) {
                tracing::warn!(error = %e, "9p connection ended with an error");
            }
        })
    }

    /// Accepts guest connections on `listener` (the UVM's port [`PORT`]) forever, one thread
    /// per connection (= per guest mount).
    pub async fn serve(self, listener: VsockListener) -> Result<(), P9Error> {
        loop {
            let stream = listener.accept().await?;
            let std_stream = stream.into_std()?;
            self.spawn_connection(std_stream)?;
        }
    }
}

#[cfg(test)]
mod tests;
