//! Host side of guest vsock through vhost-device-vsock: a guest `connect(CID 2, port P)`
//! arrives as a Unix connection on `<prefix>_P`, where the host must already listen (else the
//! guest's connect times out after 2 s, docs/uvm-notes.md §4). Host→guest connections go to `<prefix>`
//! with a `CONNECT P\n` / `OK P\n` handshake.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

pub use rgcs_protocol::ports::{BRIDGE_PORT, ENTROPY_PORT, FIRST_STDIO_PORT, LOG_PORT};

/// Errors of vsock listeners and connections.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Binding the Unix listener failed.
    #[error("cannot listen on {path} (guest vsock port {port})")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Guest port.
        port: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting failed.
    #[error("cannot accept on {path} (guest vsock port {port})")]
    Accept {
        /// Socket path.
        path: PathBuf,
        /// Guest port.
        port: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Nobody connected in time.
    #[error("the guest did not connect to vsock port {port} ({path}) within {timeout:?}")]
    AcceptTimeout {
        /// Socket path.
        path: PathBuf,
        /// Guest port.
        port: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// A host→guest connection failed.
    #[error("cannot connect to guest vsock port {port} through {path}")]
    Connect {
        /// The backend's socket.
        path: PathBuf,
        /// Guest port.
        port: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The Unix socket path on which guest port `port` arrives.
pub fn port_path(prefix: &Path, port: u32) -> PathBuf {
    let mut p = prefix.as_os_str().to_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// A host listener for one guest vsock port; removes its socket file on drop.
#[derive(Debug)]
pub struct VsockListener {
    listener: UnixListener,
    path: PathBuf,
    port: u32,
}

impl VsockListener {
    /// Listens on `<prefix>_<port>`, replacing a stale socket file. Needs a tokio runtime.
    pub fn bind(prefix: &Path, port: u32) -> Result<Self, VsockError> {
        let path = port_path(prefix, port);
        let err = |source| VsockError::Bind {
            path: path.clone(),
            port,
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale vsock socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        Ok(Self { listener, path, port })
    }

    /// The guest port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next guest connection.
    pub async fn accept(&self) -> Result<UnixStream, VsockError> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| VsockError::Accept {
                path: self.path.clone(),
                port: self.port,
                source,
            })?;
        tracing::debug!(port = self.port, "guest connected");
        Ok(stream)
    }

    /// Waits at most `timeout` for the next guest connection.
    pub async fn accept_one(&self, timeout: Duration) -> Result<UnixStream, VsockError> {
        tokio::time::timeout(timeout, self.accept())
            .await
            .map_err(|_| VsockError::AcceptTimeout {
                path: self.path.clone(),
                port: self.port,
                timeout,
            })?
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to a guest listener on `port` through the backend socket `prefix`
/// (`CONNECT <port>\n`, answered by `OK <port>\n`; vhost-device-vsock echoes the guest port).
pub async fn connect_to_guest(prefix: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let err = |source| VsockError::Connect {
        path: prefix.to_path_buf(),
        port,
        source,
    };
    let fut = async {
        let mut stream = UnixStream::connect(prefix).await?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
        // Read the reply byte by byte so no stream data after the newline is consumed.
        let mut reply = Vec::with_capacity(24);
        while reply.last() != Some(&b'\n') {
            if reply.len() >= 64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "handshake reply too long",
                ));
            }
            reply.push(stream.read_u8().await?);
        }
        if !reply.starts_with(b"OK ") {
            let text = String::from_utf8_lossy(&reply).trim_end().to_owned();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("backend replied {text:?}"),
            ));
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")))?
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_accepts_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("vsock.sock");
        // A stale file from an earlier run is replaced.
        std::fs::write(port_path(&prefix, 7), b"").unwrap();
        let l = VsockListener::bind(&prefix, 7).unwrap();
        assert_eq!(l.path(), dir.path().join("vsock.sock_7"));
        let timeout = l.accept_one(Duration::from_millis(50)).await.unwrap_err();
        assert!(
            matches!(timeout, VsockError::AcceptTimeout { port: 7, .. }),
            "{timeout}"
        );
        let (client, server) = tokio::join!(
            UnixStream::connect(l.path()),
            l.accept_one(Duration::from_secs(5))
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let path = l.path().to_path_buf();
        drop(l);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn host_to_guest_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("vsock.sock");
        let backend = UnixListener::bind(&prefix).unwrap();
        let fake = tokio::spawn(async move {
            let (mut s, _) = backend.accept().await.unwrap();
            let mut line = vec![0u8; 16];
            let n = s.read(&mut line).await.unwrap();
            assert_eq!(&line[..n], b"CONNECT 5000\n");
            s.write_all(b"OK 5000\npayload").await.unwrap();
        });
        let mut s = connect_to_guest(&prefix, 5000, Duration::from_secs(5))
            .await
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"payload");
        fake.await.unwrap();
    }
}
