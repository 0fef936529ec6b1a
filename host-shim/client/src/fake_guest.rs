//! A scripted fake guest for host-side tests: a bridge peer that answers container calls and
//! dials the stdio ports the way the agent does (before it answers).
//!
//! * ExecuteProcess dials the ports, writes `out:<args>` on stdout, then echoes stdin after it;
//! * WaitForProcess answers exit code 3 and then sends a `ForcedExit` notification;
//! * Create of the container `dup` fails with `0xC037010F`; every other request succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // test support

use std::path::PathBuf;
use std::sync::Arc;

use rgcs_protocol::frame::{FrameDecoder, DEFAULT_MAX_HOST_TO_GUEST};
use rgcs_protocol::io::{read_frame, write_frame};
use rgcs_protocol::message::{
    decode_request_body, encode_notification, encode_response, ContainerNotification, Empty,
    ExecuteProcessRequest, ExecuteProcessResponse, NotificationType, RequestBase, ResponseBase,
    WaitForProcessResponse,
};
use rgcs_protocol::{HResult, MessageId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vsock::port_path;
use crate::{BridgeClient, ContainerClient};

/// A fake guest: ExecuteProcess dials the ports, writes `out:<args>` on stdout, echoes stdin
/// after it, and closes; WaitForProcess answers 3; Create of "dup" fails; others succeed.
pub async fn fake_guest(stream: UnixStream, prefix: PathBuf) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_HOST_TO_GUEST);
    while let Ok(Some(f)) = read_frame(&mut rd, &mut dec).await {
        let base = RequestBase::decode_lenient(&f.payload);
        let ok = ResponseBase::ok(&base.activity_id);
        let frame = match f.message {
            MessageId::EXECUTE_PROCESS => {
                let (_, req): (RequestBase, ExecuteProcessRequest) = decode_request_body(&f.payload).unwrap();
                let ports = req.settings.vsock_stdio_relay_settings;
                let args = req
                    .settings
                    .process_parameters
                    .oci_process
                    .as_ref()
                    .and_then(|p| p.args().clone())
                    .unwrap_or_default()
                    .join(" ");
                let dial = |p: u32| {
                    let prefix = prefix.clone();
                    async move {
                        if p == 0 {
                            None
                        } else {
                            Some(UnixStream::connect(port_path(&prefix, p)).await.unwrap())
                        }
                    }
                };
                let (sin, sout) = (dial(ports.std_in).await, dial(ports.std_out).await);
                let _serr = dial(ports.std_err).await;
                tokio::spawn(async move {
                    if let Some(mut out) = sout {
                        out.write_all(format!("out:{args}\n").as_bytes()).await.unwrap();
                        if let Some(mut i) = sin {
                            let mut buf = Vec::new();
                            i.read_to_end(&mut buf).await.unwrap();
                            out.write_all(&buf).await.unwrap();
                        }
                    }
                });
                encode_response(f.message, f.id, &ok, &ExecuteProcessResponse { process_id: 42 }).unwrap()
            }
            MessageId::WAIT_FOR_PROCESS => {
                let n = ContainerNotification {
                    container_id: base.container_id.clone(),
                    notification_type: NotificationType::ForcedExit,
                    ..Default::default()
                };
                let r =
                    encode_response(f.message, f.id, &ok, &WaitForProcessResponse { exit_code: 3 }).unwrap();
                write_frame(&mut wr, &r).await.unwrap();
                encode_notification(&n).unwrap()
            }
            MessageId::CREATE if base.container_id == "dup" => {
                let e = ResponseBase::error(
                    &base.activity_id,
                    HResult::SYSTEM_ALREADY_EXISTS,
                    "container dup exists",
                );
                encode_response(f.message, f.id, &e, &Empty {}).unwrap()
            }
            _ => encode_response(f.message, f.id, &ok, &Empty {}).unwrap(),
        };
        write_frame(&mut wr, &frame).await.unwrap();
    }
}

/// A client connected to a fake guest whose stdio ports arrive under `dir`.
pub fn client_with_fake_guest(dir: &std::path::Path) -> Arc<ContainerClient> {
    let prefix = dir.join("vsock.sock");
    let (host, guest) = UnixStream::pair().unwrap();
    tokio::spawn(fake_guest(guest, prefix.clone()));
    Arc::new(ContainerClient::new(Arc::new(BridgeClient::new(host)), prefix))
}
