//! One bridge connection: negotiation, the read loop, one task per request, one writer.
//!
//! Rules (§2.5, §3): before a successful NegotiateProtocol every other message gets
//! `0x80004001`; a second NegotiateProtocol on the same connection gets `0x80004001`; unknown types
//! get `0x80004001`. Responses go out in completion order through a single writer, each under the
//! 64 KiB guest → host limit.
//!
//! Bounds (stricter than hcsshim's guest, which trusts the host): a request over
//! [`DEFAULT_MAX_HOST_TO_GUEST`] is skipped unread and answered `0x80004005`; a header claiming
//! more than [`MAX_SKIPPED_FRAME`], or a frame whose bytes stop arriving for longer than the
//! stall bound, ends the connection, and the agent dials again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rgcs_protocol::frame::{Frame, FrameDecoder, FrameError, DEFAULT_MAX_HOST_TO_GUEST, MAX_SKIPPED_FRAME};
use rgcs_protocol::io::{read_frame_bounded, write_frame, IoError};
use rgcs_protocol::message::{
    encode_notification, encode_response, GcsCapabilities, NegotiateProtocolRequest,
    NegotiateProtocolResponse, RequestBase, ResponseBase,
};
use rgcs_protocol::msgid::Kind;
use rgcs_protocol::{gojson, HResult, MessageId};
use serde::Serialize;
use serde_json::Map;
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::dispatch::dispatch;
use crate::error::GcsError;
use crate::host::Host;
use crate::outcome::Outcome;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host closed the stream (or it broke): dial again.
    Disconnected,
    /// The host asked the UVM to shut down.
    PowerOff,
}

/// Frames queued for the writer before handlers wait.
const OUTBOX: usize = 64;
/// Longest error text we put on the wire (the frame limit is 64 KiB).
const MAX_ERROR_TEXT: usize = 8 * 1024;
/// How long the writer may take to flush queued responses when a connection ends.
const WRITER_FLUSH: Duration = Duration::from_secs(2);
/// Default bound on a gap inside a frame (a 4 MiB request over vsock takes ~0.1 s under TCG).
pub const DEFAULT_STALL: Duration = Duration::from_secs(10);

/// The single writer of a connection. Handlers that outlive the connection (a WaitForProcess can
/// wait for a process's whole life) hold senders, so the writer cannot wait for the channel to
/// close: it is told to finish, flushes what was already queued, and stops.
struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    finish: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Writer {
    fn spawn<W: AsyncWrite + Send + 'static>(mut writer: WriteHalf<W>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOX);
        let (finish, mut finish_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = rx.recv() => frame,
                    _ = &mut finish_rx => {
                        while let Ok(frame) = rx.try_recv() {
                            if write_frame(&mut writer, &frame).await.is_err() {
                                break;
                            }
                        }
                        return;
                    }
                };
                let Some(frame) = frame else { return };
                if let Err(e) = write_frame(&mut writer, &frame).await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "bridge write failed");
                    return;
                }
            }
        });
        Self { tx, finish, task }
    }

    /// Bounded: queued frames only; a peer that stopped reading cannot hold the agent here.
    async fn finish(self) {
        drop(self.tx);
        let _ = self.finish.send(());
        if tokio::time::timeout(WRITER_FLUSH, self.task).await.is_err() {
            tracing::warn!("bridge writer did not flush in time; dropping the connection");
        }
    }
}

/// Per-connection state: negotiation, the outbox, the notification forwarder.
struct Session<F> {
    host: Arc<Host>,
    out: mpsc::Sender<Vec<u8>>,
    stop: mpsc::Sender<()>,
    negotiated: bool,
    notifier: Option<JoinHandle<()>>,
    on_negotiated: F,
}

/// The queue to the writer is gone: the connection is over.
struct Closed;

impl<F: Fn()> Session<F> {
    async fn send(&self, frame: Vec<u8>) -> Result<(), Closed> {
        self.out.send(frame).await.map_err(|_| Closed)
    }

    /// Answers a frame that was skipped unread because it is over the limit.
    async fn skipped(&self, message: MessageId, id: u64, size: u32, max: u32) -> Result<(), Closed> {
        tracing::warn!(id, r#type = %message, size, max, "oversized request skipped");
        let frame = Frame {
            message,
            id,
            payload: Vec::new(),
        };
        let e = GcsError::RequestTooLarge { size, max };
        self.send(error_frame(&frame, &RequestBase::default(), &e)).await
    }

    /// One frame from the host: negotiation rules, then a task per request.
    async fn frame(&mut self, frame: Frame) -> Result<(), Closed> {
        let base = RequestBase::decode_lenient(&frame.payload);
        tracing::debug!(
            id = frame.id,
            r#type = %frame.message,
            name = frame.message.name().unwrap_or("unknown"),
            container_id = %base.container_id,
            activity_id = %base.activity_id,
            "request"
        );
        if frame.message.kind() != Kind::Request {
            tracing::warn!(r#type = %frame.message, "non-request message from the host");
        }
        match (frame.message == MessageId::NEGOTIATE_PROTOCOL, self.negotiated) {
            (true, false) => self.negotiate(&frame, &base).await,
            (true, true) => {
                self.send(error_frame(&frame, &base, &GcsError::AlreadyNegotiated))
                    .await
            }
            (false, false) => {
                self.send(error_frame(&frame, &base, &GcsError::NotNegotiated))
                    .await
            }
            (false, true) => {
                self.spawn_request(frame, base);
                Ok(())
            }
        }
    }

    async fn negotiate(&mut self, frame: &Frame, base: &RequestBase) -> Result<(), Closed> {
        let (reply, ok) = match negotiate(frame) {
            Ok(body) => (
                encode_or_fail(frame, &ResponseBase::ok(&base.activity_id), &body),
                true,
            ),
            Err(e) => (error_frame(frame, base, &e), false),
        };
        self.send(reply).await?;
        if ok {
            self.negotiated = true;
            (self.on_negotiated)();
            self.notifier = Some(tokio::spawn(forward_notifications(
                Arc::clone(&self.host),
                self.out.clone(),
            )));
        }
        Ok(())
    }

    /// Runs a request in its own task; its response goes through the writer when it is done.
    fn spawn_request(&self, frame: Frame, base: RequestBase) {
        let host = Arc::clone(&self.host);
        let out = self.out.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _inflight = host.track(frame.message, frame.id, &base.container_id);
            let started = Instant::now();
            let reply = match dispatch(&host, frame.message, &base, &frame.payload).await {
                Ok(Outcome::PowerOff) => {
                    tracing::info!("shutdown requested for the utility VM");
                    let _ = stop.send(()).await;
                    return;
                }
                Ok(Outcome::Reply(body)) => {
                    encode_or_fail(&frame, &ResponseBase::ok(&base.activity_id), &body)
                }
                Err(e) => {
                    tracing::info!(
                        id = frame.id,
                        name = frame.message.name().unwrap_or("unknown"),
                        hresult = %e.hresult(),
                        error = %e.wire_message(),
                        "request failed"
                    );
                    error_frame(&frame, &base, &e)
                }
            };
            tracing::debug!(
                id = frame.id,
                elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "response"
            );
            let _ = out.send(reply).await;
        });
    }

    fn end(self) {
        if let Some(n) = self.notifier {
            n.abort();
        }
    }
}

/// Serves one connection until it ends. A gap longer than `stall` inside a frame ends it.
pub async fn serve<S>(
    stream: S,
    host: Arc<Host>,
    stall: Duration,
    on_negotiated: impl Fn(),
) -> Result<Ended, IoError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = Writer::spawn(writer);
    let (stop, mut stop_rx) = mpsc::channel::<()>(1);
    let mut session = Session {
        host,
        out: writer.tx.clone(),
        stop,
        negotiated: false,
        notifier: None,
        on_negotiated,
    };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_HOST_TO_GUEST).skip_oversized(MAX_SKIPPED_FRAME);
    let result = loop {
        let read = tokio::select! {
            read = read_frame_bounded(&mut reader, &mut decoder, stall) => read,
            _ = stop_rx.recv() => break Ok(Ended::PowerOff),
        };
        let handled = match read {
            Ok(Some(frame)) => session.frame(frame).await,
            Ok(None) => break Ok(Ended::Disconnected),
            Err(IoError::Frame(FrameError::Skipped {
                message,
                id,
                size,
                max,
            })) => session.skipped(message, id, size, max).await,
            Err(e) => break Err(e),
        };
        if handled.is_err() {
            break Ok(Ended::Disconnected);
        }
    };
    session.end();
    writer.finish().await;
    result
}

/// Sends queued container notifications on this connection; one that cannot be handed to the
/// writer goes back to the front of the queue for the next connection.
async fn forward_notifications(host: Arc<Host>, out: mpsc::Sender<Vec<u8>>) {
    loop {
        let n = host.next_notification().await;
        let frame = match encode_notification(&n) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, container_id = %n.container_id, "notification cannot be encoded");
                continue;
            }
        };
        match out.reserve().await {
            Ok(permit) => {
                tracing::info!(container_id = %n.container_id, r#type = ?n.notification_type, "container notification");
                permit.send(frame);
            }
            Err(_) => {
                host.requeue_notification(n);
                return;
            }
        }
    }
}

/// The negotiated version and our capabilities, or why not.
fn negotiate(frame: &Frame) -> Result<NegotiateProtocolResponse, GcsError> {
    let req: NegotiateProtocolRequest =
        gojson::from_slice(&frame.payload).map_err(|source| GcsError::InvalidJson {
            what: "NegotiateProtocol",
            source,
        })?;
    let version = req.choose().ok_or(GcsError::UnsupportedVersion {
        min: req.minimum_version,
        max: req.maximum_version,
    })?;
    Ok(NegotiateProtocolResponse {
        version,
        capabilities: GcsCapabilities::linux(),
    })
}

fn error_frame(frame: &Frame, base: &RequestBase, e: &GcsError) -> Vec<u8> {
    let mut rb = ResponseBase::error(&base.activity_id, e.hresult(), e.wire_message());
    rb.bound_messages(MAX_ERROR_TEXT);
    encode_or_fail(frame, &rb, &Map::new())
}

/// Encodes a response; if it cannot be framed (over 64 KiB) answers `0x80004005` instead, whose
/// size is bounded, so the host always gets an answer and never an oversized frame.
fn encode_or_fail<B: Serialize>(frame: &Frame, base: &ResponseBase, body: &B) -> Vec<u8> {
    match encode_response(frame.message, frame.id, base, body) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                id = frame.id,
                "response cannot be encoded"
            );
            let mut rb = ResponseBase::error(
                &base.activity_id,
                HResult::FAIL,
                format!("response cannot be encoded: {e}"),
            );
            rb.bound_messages(MAX_ERROR_TEXT);
            // A bounded error body always fits: the base fields are all short.
            encode_response(frame.message, frame.id, &rb, &Map::new()).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use rgcs_protocol::message::{decode_response, encode_request, Empty, NULL_ACTIVITY_ID};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::modules::ModulesGate;

    async fn roundtrip(requests: &[Vec<u8>]) -> Vec<Frame> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let host = Arc::new(Host::new(
            ModulesGate::ready(),
            Arc::new(crate::reaper::Reaper::default()),
        ));
        let task = tokio::spawn(serve(server, host, DEFAULT_STALL, || {}));
        let (mut r, mut w) = tokio::io::split(client);
        for req in requests {
            w.write_all(req).await.unwrap();
        }
        let mut dec = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        while frames.len() < requests.len() {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0);
            dec.extend(&buf[..n]);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(task.await.unwrap().unwrap(), Ended::Disconnected);
        frames
    }

    #[tokio::test]
    async fn notifications_queued_while_disconnected_go_out_after_negotiation() {
        use rgcs_protocol::message::{ContainerNotification, NotificationType};
        let host = Arc::new(Host::new(
            ModulesGate::ready(),
            Arc::new(crate::reaper::Reaper::default()),
        ));
        host.notify(ContainerNotification {
            container_id: "c1".into(),
            notification_type: NotificationType::ForcedExit,
            ..Default::default()
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, Arc::clone(&host), DEFAULT_STALL, || {}));
        let (mut r, mut w) = tokio::io::split(client);
        w.write_all(&negotiate_req(0, 4, 4)).await.unwrap();
        let mut dec = FrameDecoder::new(1 << 16);
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        while frames.len() < 2 {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0);
            dec.extend(&buf[..n]);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let note = frames
            .iter()
            .find(|f| f.message == MessageId::CONTAINER_NOTIFICATION)
            .unwrap();
        assert_eq!(note.id, 0);
        let n: ContainerNotification = serde_json::from_slice(&note.payload).unwrap();
        assert_eq!(
            (n.container_id.as_str(), n.notification_type),
            ("c1", NotificationType::ForcedExit)
        );
        drop(w);
        drop(r);
        let _ = task.await;
    }

    fn negotiate_req(id: u64, min: u32, max: u32) -> Vec<u8> {
        let body = NegotiateProtocolRequest {
            minimum_version: min,
            maximum_version: max,
        };
        encode_request(MessageId::NEGOTIATE_PROTOCOL, id, &RequestBase::new(""), &body).unwrap()
    }

    #[tokio::test]
    async fn negotiation_rules() {
        let start = encode_request(MessageId::START, 1, &RequestBase::new("c1"), &Empty {}).unwrap();
        let frames = roundtrip(&[start.clone(), negotiate_req(0, 4, 4), negotiate_req(2, 4, 4)]).await;
        let by_id = |id| frames.iter().find(|f| f.id == id).unwrap();
        let (b, _): (ResponseBase, Empty) = decode_response(&by_id(1).payload).unwrap();
        assert_eq!(b.result, HResult::NOT_IMPL);
        assert_eq!(b.activity_id, NULL_ACTIVITY_ID);
        assert_eq!(by_id(0).message, MessageId(0x2010_0B01));
        let (b, n): (ResponseBase, NegotiateProtocolResponse) = decode_response(&by_id(0).payload).unwrap();
        assert_eq!((b.result, n.version), (HResult::S_OK, 4));
        assert_eq!(n.capabilities, GcsCapabilities::linux());
        let (b, _): (ResponseBase, Empty) = decode_response(&by_id(2).payload).unwrap();
        assert_eq!(b.result, HResult::NOT_IMPL);
    }

    #[tokio::test]
    async fn an_oversized_request_is_answered_and_the_stream_goes_on() {
        let big = vec![b' '; DEFAULT_MAX_HOST_TO_GUEST as usize];
        let mut oversized = rgcs_protocol::frame::Header {
            message: MessageId::MODIFY_SETTINGS,
            size: 16 + u32::try_from(big.len()).unwrap(),
            id: 7,
        }
        .to_bytes()
        .to_vec();
        oversized.extend_from_slice(&big);
        let frames = roundtrip(&[
            negotiate_req(0, 4, 4),
            oversized,
            encode_request(MessageId::DUMP_STACKS, 8, &RequestBase::new(""), &Empty {}).unwrap(),
        ])
        .await;
        let skipped = frames
            .iter()
            .find(|f| f.id == 7)
            .expect("answer to the oversized request");
        assert_eq!(skipped.message, MessageId::MODIFY_SETTINGS.response());
        let (b, _): (ResponseBase, Empty) = decode_response(&skipped.payload).unwrap();
        assert_eq!(b.result, HResult::FAIL);
        assert!(b.error_message.contains("exceeds"), "{}", b.error_message);
        let after = frames
            .iter()
            .find(|f| f.id == 8)
            .expect("the next request is served");
        let (b, _): (ResponseBase, Empty) = decode_response(&after.payload).unwrap();
        assert_eq!(b.result, HResult::S_OK);
    }

    #[tokio::test]
    async fn unsupported_versions_and_unknown_types() {
        let unknown = encode_request(MessageId(0x1010_1F01), 5, &RequestBase::new("x"), &Empty {}).unwrap();
        let frames = roundtrip(&[negotiate_req(0, 1, 3)]).await;
        let (b, _): (ResponseBase, Empty) = decode_response(&frames[0].payload).unwrap();
        assert_eq!(b.result, HResult::UNSUPPORTED_PROTOCOL_VERSION);
        let frames = roundtrip(&[negotiate_req(0, 4, 4), unknown]).await;
        let f = frames.iter().find(|f| f.id == 5).unwrap();
        assert_eq!(f.message, MessageId(0x2010_1F01));
        let (b, _): (ResponseBase, Empty) = decode_response(&f.payload).unwrap();
        assert_eq!(b.result, HResult::NOT_IMPL);
    }

    #[tokio::test]
    async fn bad_json_is_invalid_json_and_dumpstacks_fits() {
        let mut bad = negotiate_req(0, 4, 4);
        let n = bad.len();
        bad[n - 3] = b'x'; // corrupt the JSON
        let frames = roundtrip(&[bad]).await;
        let (b, _): (ResponseBase, Empty) = decode_response(&frames[0].payload).unwrap();
        assert_eq!(b.result, HResult::INVALID_JSON);

        let dump = encode_request(MessageId::DUMP_STACKS, 1, &RequestBase::new(""), &Empty {}).unwrap();
        let frames = roundtrip(&[negotiate_req(0, 4, 4), dump]).await;
        let f = frames.iter().find(|f| f.id == 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        assert!(v["GuestStacks"]
            .as_str()
            .unwrap()
            .contains("request(s) in flight"));
    }
}
