//! The entropy seed (vsock port 1): for each guest connection, write [`ENTROPY_BYTES`] random
//! bytes from the host's `/dev/urandom`, then close. The guest init feeds them to its kernel
//! with `RNDADDENTROPY`.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use rgcs_client::vsock::VsockListener;

/// Bytes sent per connection (as hcsshim does).
pub const ENTROPY_BYTES: usize = 512;

/// Serves the entropy port; `delivered` counts completed deliveries.
pub(crate) async fn serve(listener: VsockListener, delivered: Arc<AtomicUsize>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "entropy listener failed");
                return;
            }
        };
        let mut seed = [0u8; ENTROPY_BYTES];
        // /dev/urandom never blocks once the host has booted; 512 bytes are instant.
        if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)) {
            tracing::error!(error = %e, "cannot read /dev/urandom for the guest entropy seed");
            continue;
        }
        match stream.write_all(&seed).await {
            Ok(()) => {
                let _ = stream.shutdown().await;
                delivered.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(bytes = ENTROPY_BYTES, "delivered the guest entropy seed");
            }
            Err(e) => tracing::warn!(error = %e, "cannot send the guest entropy seed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn sends_512_bytes_then_closes() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("vsock.sock");
        let listener = VsockListener::bind(&prefix, 1).unwrap();
        let path = listener.path().to_path_buf();
        let delivered = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&delivered)));
        let mut s = UnixStream::connect(&path).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), ENTROPY_BYTES);
        assert!(got.iter().any(|&b| b != 0));
        // The counter is bumped right after the close the client just observed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while delivered.load(Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        task.abort();
    }
}
