//! The host end of the GCS bridge: requests correlated by ID (IDs start at 0, as hcsshim's), a
//! stream of container notifications, and typed methods.
//!
//! Like hcsshim's `internal/gcs` bridge, a frame over 64 KiB, a response with an unknown ID or a
//! broken stream is fatal for the connection: every outstanding request fails with
//! [`ClientError::Disconnected`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rgcs_protocol::frame::{Frame, FrameDecoder, MAX_GUEST_TO_HOST};
use rgcs_protocol::io::{read_frame, write_frame};
use rgcs_protocol::message::{
    decode_response, encode_request, ContainerNotification, Empty, NegotiateProtocolRequest,
    NegotiateProtocolResponse, RequestBase, ResponseBase, PROTOCOL_VERSION, UVM_CONTAINER_ID,
};
use rgcs_protocol::msgid::Kind;
use rgcs_protocol::{gojson, HResult, MessageId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Errors of bridge calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The guest answered with a failure HRESULT.
    #[error("guest RPC failure {result}: {message}")]
    Guest {
        /// The HRESULT.
        result: HResult,
        /// `ErrorMessage`.
        message: String,
    },
    /// The connection is gone (closed, broken, or torn down after a protocol violation).
    #[error("the bridge is disconnected: {0}")]
    Disconnected(String),
    /// The request could not be encoded.
    #[error("cannot encode the request")]
    Encode(#[from] rgcs_protocol::message::EncodeError),
    /// The response body did not decode.
    #[error("cannot decode the {what} response")]
    Decode {
        /// Which response.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: gojson::Error,
    },
}

impl ClientError {
    /// The guest's HRESULT, if the guest answered.
    pub fn hresult(&self) -> Option<HResult> {
        match self {
            Self::Guest { result, .. } => Some(*result),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Frame>>>>>;

/// A bridge client over any byte stream (the hybrid-vsock Unix socket, or a test pipe).
#[derive(Debug)]
pub struct BridgeClient {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    notifications: tokio::sync::Mutex<mpsc::UnboundedReceiver<ContainerNotification>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for BridgeClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl BridgeClient {
    /// Starts the reader and writer tasks over `stream`.
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
        let (note_tx, note_rx) = mpsc::unbounded_channel();
        let (reader_done_tx, mut reader_done) = oneshot::channel::<()>();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let writer = tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = out_rx.recv() => frame,
                    // The reader stopped, so the connection is over: dropping `wr` closes it.
                    _ = &mut reader_done => None,
                };
                let Some(frame) = frame else { return };
                if let Err(e) = write_frame(&mut wr, &frame).await {
                    tracing::warn!(error = %e, "bridge write failed");
                    return;
                }
            }
        });
        let pending_rd = Arc::clone(&pending);
        let reader = tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(MAX_GUEST_TO_HOST);
            let why = loop {
                let frame = match read_frame(&mut rd, &mut decoder).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break "the guest closed the bridge".to_owned(),
                    Err(e) => break format!("bridge read failed: {}", rgcs_protocol::ErrorChain(&e)),
                };
                match frame.message.kind() {
                    Kind::Notification => match gojson::from_slice::<ContainerNotification>(&frame.payload) {
                        Ok(n) => {
                            let _ = note_tx.send(n);
                        }
                        // hcsshim decodes the type as a free string: an unknown one is not fatal.
                        Err(e) => tracing::warn!(error = %e, "undecodable notification from the guest"),
                    },
                    Kind::Response => {
                        let waiter = pending_rd
                            .lock()
                            .ok()
                            .and_then(|mut p| p.as_mut()?.remove(&frame.id));
                        match waiter {
                            Some(w) => {
                                let _ = w.send(frame);
                            }
                            None => break format!("response with unknown id {}", frame.id),
                        }
                    }
                    _ => break format!("unexpected message type {} from the guest", frame.message),
                }
            };
            tracing::debug!(reason = %why, "bridge reader stopped");
            // Dropping the senders fails every outstanding request.
            if let Ok(mut p) = pending_rd.lock() {
                p.take();
            }
            let _ = reader_done_tx.send(());
        });
        Self {
            out,
            pending,
            next_id: AtomicU64::new(0),
            notifications: tokio::sync::Mutex::new(note_rx),
            reader,
            writer,
        }
    }

    /// Sends a request and waits for its response frame (whatever its `Result`).
    pub async fn call_raw<B: Serialize>(
        &self,
        message: MessageId,
        base: &RequestBase,
        body: &B,
    ) -> Result<Frame, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = encode_request(message, id, base, body)?;
        self.call_frame(id, bytes).await
    }

    /// Sends `payload` exactly as given (no JSON encoding, no base) as a request of type
    /// `message`, and waits for the response frame. For conformance and hostile-input tests.
    pub async fn call_bytes(&self, message: MessageId, payload: &[u8]) -> Result<Frame, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = rgcs_protocol::encode_frame(message, id, payload, u32::MAX)
            .map_err(|e| ClientError::Encode(e.into()))?;
        self.call_frame(id, bytes).await
    }

    /// Like [`BridgeClient::call_bytes`] with a request ID of the caller's choosing (which must
    /// not be in flight already). For conformance tests of ID handling.
    pub async fn call_bytes_as(
        &self,
        id: u64,
        message: MessageId,
        payload: &[u8],
    ) -> Result<Frame, ClientError> {
        let bytes = rgcs_protocol::encode_frame(message, id, payload, u32::MAX)
            .map_err(|e| ClientError::Encode(e.into()))?;
        self.call_frame(id, bytes).await
    }

    /// Writes `bytes` to the stream as they are (any header, any size), expecting no answer.
    /// For hostile-input tests: the guest may answer, drop the connection, or wait.
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.out
            .send(bytes)
            .await
            .map_err(|_| ClientError::Disconnected("the bridge writer stopped".into()))
    }

    /// Registers `id`, sends the encoded frame and waits for the response with that ID.
    async fn call_frame(&self, id: u64, bytes: Vec<u8>) -> Result<Frame, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| ClientError::Disconnected("poisoned".into()))?;
            match p.as_mut() {
                Some(map) if map.contains_key(&id) => {
                    return Err(ClientError::Disconnected(format!(
                        "request id {id} is already in flight"
                    )))
                }
                Some(map) => map.insert(id, tx),
                None => return Err(ClientError::Disconnected("the bridge is closed".into())),
            };
        }
        if self.out.send(bytes).await.is_err() {
            return Err(ClientError::Disconnected("the bridge writer stopped".into()));
        }
        rx.await
            .map_err(|_| ClientError::Disconnected("no response before the bridge closed".into()))
    }

    /// Sends a request and decodes a successful response body; a failure HRESULT is an error.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        message: MessageId,
        container_id: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let frame = self
            .call_raw(message, &RequestBase::new(container_id), body)
            .await?;
        decode_checked(message.name().unwrap_or("unknown"), &frame.payload)
    }

    /// Sends a request without waiting for an answer (Shutdown on the UVM: the VM powers off first).
    pub async fn send_only<B: Serialize>(
        &self,
        message: MessageId,
        container_id: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = encode_request(message, id, &RequestBase::new(container_id), body)?;
        // Register the id with a receiver nobody awaits: an answer, if one comes, is accepted
        // and dropped instead of being taken for a response with an unknown id.
        let (tx, _ignored) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            if let Some(map) = p.as_mut() {
                map.insert(id, tx);
            }
        }
        self.out
            .send(bytes)
            .await
            .map_err(|_| ClientError::Disconnected("the bridge writer stopped".into()))
    }

    /// NegotiateProtocol for version 4 (the first message on every connection).
    pub async fn negotiate(&self) -> Result<NegotiateProtocolResponse, ClientError> {
        let body = NegotiateProtocolRequest {
            minimum_version: PROTOCOL_VERSION,
            maximum_version: PROTOCOL_VERSION,
        };
        let frame = self
            .call_raw(MessageId::NEGOTIATE_PROTOCOL, &RequestBase::new(""), &body)
            .await?;
        let resp: NegotiateProtocolResponse = decode_checked("NegotiateProtocol", &frame.payload)?;
        // hcsshim treats an empty RuntimeOsType as Windows and would then drive a Linux guest wrongly.
        if !resp.capabilities.runtime_os_type.eq_ignore_ascii_case("linux") {
            return Err(ClientError::Disconnected(format!(
                "guest runtime OS type is {:?}, not Linux",
                resp.capabilities.runtime_os_type
            )));
        }
        if resp.version != PROTOCOL_VERSION {
            return Err(ClientError::Disconnected(format!(
                "guest chose protocol version {}",
                resp.version
            )));
        }
        Ok(resp)
    }

    /// DumpStacks: the guest's readable summary of what it is doing.
    pub async fn dump_stacks(&self) -> Result<String, ClientError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Stacks {
            #[serde(rename = "GuestStacks")]
            guest_stacks: String,
        }
        let s: Stacks = self
            .call(MessageId::DUMP_STACKS, UVM_CONTAINER_ID, &Empty {})
            .await?;
        Ok(s.guest_stacks)
    }

    /// Asks the guest to power the UVM off (no response is expected).
    pub async fn shutdown_uvm(&self, forced: bool) -> Result<(), ClientError> {
        let msg = if forced {
            MessageId::SHUTDOWN_FORCED
        } else {
            MessageId::SHUTDOWN_GRACEFUL
        };
        self.send_only(msg, UVM_CONTAINER_ID, &Empty {}).await
    }

    /// The next container notification, or `None` once the bridge is gone.
    pub async fn next_notification(&self) -> Option<ContainerNotification> {
        self.notifications.lock().await.recv().await
    }

    /// Closes the connection now (the guest sees its end of the stream close): outstanding
    /// requests fail with [`ClientError::Disconnected`].
    pub fn close(&self) {
        self.reader.abort();
        self.writer.abort();
        if let Ok(mut p) = self.pending.lock() {
            p.take();
        }
    }

    /// True while the reader task runs (the connection is usable).
    pub fn is_connected(&self) -> bool {
        !self.reader.is_finished()
    }
}

/// Decodes a response: the base first, and any non-zero `Result` is a failure (hcsshim's rule),
/// before the body is looked at.
fn decode_checked<R: DeserializeOwned>(what: &'static str, payload: &[u8]) -> Result<R, ClientError> {
    let (base, Empty {}) = decode_response(payload).map_err(|source| ClientError::Decode { what, source })?;
    if base.result != HResult::S_OK {
        return Err(ClientError::Guest {
            result: base.result,
            message: base.error_message,
        });
    }
    let (_, body): (ResponseBase, R) =
        decode_response(payload).map_err(|source| ClientError::Decode { what, source })?;
    Ok(body)
}
