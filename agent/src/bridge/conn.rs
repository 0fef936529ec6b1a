//! One bridge connection: negotiation, the read loop, one task per request, one writer.
//!
//! Rules (GCS-PROTOCOL §2.5, §3): before a successful NegotiateProtocol every other message gets
//! `0x80004001`; a second NegotiateProtocol on the same connection gets `0x80004001`; unknown types
//! get `0x80004001`. Responses go out in completion order through a single writer, each under the
//! 64 KiB guest → host limit.

use std::sync::Arc;
use std::time::Instant;

use rgcs_protocol::frame::{Frame, FrameDecoder, FrameError, DEFAULT_MAX_HOST_TO_GUEST};
use rgcs_protocol::io::{read_frame, write_frame, IoError};
use rgcs_protocol::message::{
    encode_notification, encode_response, GcsCapabilities, NegotiateProtocolRequest,
    NegotiateProtocolResponse, RequestBase, ResponseBase,
};
use rgcs_protocol::msgid::Kind;
use rgcs_protocol::{gojson, HResult, MessageId};
use serde::Serialize;
use serde_json::Map;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::dispatch::{dispatch, Outcome};
use crate::error::GcsError;
use crate::host::Host;

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

/// Serves one connection until it ends.
pub async fn serve<S>(stream: S, host: Arc<Host>, on_negotiated: impl Fn()) -> Result<Ended, IoError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUTBOX);
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    // Handlers that outlive the connection (a WaitForProcess can wait for a process's whole life)
    // hold senders, so the writer cannot wait for the channel to close: it is told to finish.
    let (finish_tx, mut finish_rx) = tokio::sync::oneshot::channel::<()>();
    let writer_task = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = out_rx.recv() => frame,
                _ = &mut finish_rx => {
                    // Flush what is already queued (responses decided before the end), then stop.
                    while let Ok(frame) = out_rx.try_recv() {
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

    // An oversized request is skipped and answered 0x80004005, not fatal: its header says exactly
    // how long it is, so the stream stays in step (hcsshim's guest has no limit at all).
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_HOST_TO_GUEST).skip_oversized();
    let mut negotiated = false;
    let mut notifier: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, &mut decoder) => frame,
            _ = stop_rx.recv() => break Ok(Ended::PowerOff),
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(Ended::Disconnected),
            Err(IoError::Frame(FrameError::Skipped {
                message,
                id,
                size,
                max,
            })) => {
                tracing::warn!(id, r#type = %message, size, max, "oversized request skipped");
                let skipped = Frame {
                    message,
                    id,
                    payload: Vec::new(),
                };
                let why = format!("request of {size} bytes exceeds the guest's limit of {max} bytes");
                let reply = error_frame(&skipped, &RequestBase::default(), HResult::FAIL, &why);
                if out_tx.send(reply).await.is_err() {
                    break Ok(Ended::Disconnected);
                }
                continue;
            }
            Err(e) => break Err(e),
        };
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
        if frame.message == MessageId::NEGOTIATE_PROTOCOL && !negotiated {
            let (reply, ok) = negotiate(&frame, &base);
            negotiated = ok;
            if out_tx.send(reply).await.is_err() {
                break Ok(Ended::Disconnected);
            }
            if ok {
                on_negotiated();
                notifier = Some(tokio::spawn(forward_notifications(
                    Arc::clone(&host),
                    out_tx.clone(),
                )));
            }
            continue;
        }
        if !negotiated || frame.message == MessageId::NEGOTIATE_PROTOCOL {
            let why = if negotiated {
                "protocol already negotiated"
            } else {
                "protocol not negotiated"
            };
            let frame_out = error_frame(&frame, &base, HResult::NOT_IMPL, why);
            if out_tx.send(frame_out).await.is_err() {
                break Ok(Ended::Disconnected);
            }
            continue;
        }
        let host = Arc::clone(&host);
        let out_tx = out_tx.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let _inflight = host.track(frame.message, frame.id, &base.container_id);
            let started = Instant::now();
            let outcome = dispatch(&host, frame.message, &base, &frame.payload).await;
            let reply = match outcome {
                Ok(Outcome::PowerOff) => {
                    tracing::info!("shutdown requested for the utility VM");
                    let _ = stop_tx.send(()).await;
                    return;
                }
                Ok(Outcome::Reply(body)) => ok_frame(&frame, &base, &body),
                Err(e) => {
                    tracing::info!(
                        id = frame.id,
                        name = frame.message.name().unwrap_or("unknown"),
                        hresult = %e.hresult(),
                        error = %e.wire_message(),
                        "request failed"
                    );
                    error_frame(&frame, &base, e.hresult(), &e.wire_message())
                }
            };
            tracing::debug!(
                id = frame.id,
                elapsed_us = started.elapsed().as_micros() as u64,
                "response"
            );
            let _ = out_tx.send(reply).await;
        });
    };
    if let Some(n) = notifier {
        n.abort();
    }
    drop(out_tx);
    let _ = finish_tx.send(());
    // Bounded: queued frames only; a peer that stopped reading cannot hold the agent here.
    if tokio::time::timeout(WRITER_FLUSH, writer_task).await.is_err() {
        tracing::warn!("bridge writer did not flush in time; dropping the connection");
    }
    result
}

/// How long the writer may take to flush queued responses when a connection ends.
const WRITER_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

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

fn negotiate(frame: &Frame, base: &RequestBase) -> (Vec<u8>, bool) {
    let req: NegotiateProtocolRequest = match gojson::from_slice(&frame.payload) {
        Ok(r) => r,
        Err(source) => {
            let e = GcsError::InvalidJson {
                what: "NegotiateProtocol",
                source,
            };
            return (error_frame(frame, base, e.hresult(), &e.wire_message()), false);
        }
    };
    match req.choose() {
        Some(version) => {
            let body = NegotiateProtocolResponse {
                version,
                capabilities: GcsCapabilities::linux(),
            };
            (
                encode_or_fail(frame, &ResponseBase::ok(&base.activity_id), &body),
                true,
            )
        }
        None => {
            let msg = format!(
                "protocol versions {}..={} do not include version 4",
                req.minimum_version, req.maximum_version
            );
            (
                error_frame(frame, base, HResult::UNSUPPORTED_PROTOCOL_VERSION, &msg),
                false,
            )
        }
    }
}

fn ok_frame(frame: &Frame, base: &RequestBase, body: &Map<String, serde_json::Value>) -> Vec<u8> {
    encode_or_fail(frame, &ResponseBase::ok(&base.activity_id), body)
}

fn error_frame(frame: &Frame, base: &RequestBase, hr: HResult, message: &str) -> Vec<u8> {
    let mut rb = ResponseBase::error(&base.activity_id, hr, message);
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
        let task = tokio::spawn(serve(server, host, || {}));
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
        let task = tokio::spawn(serve(server, Arc::clone(&host), || {}));
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
            size: 16 + big.len() as u32,
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
