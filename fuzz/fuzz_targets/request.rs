//! Request payloads: the first byte picks a message type of docs/gcs-reference.md §2.4 (or an unknown one),
//! the rest is the JSON payload.
//!
//! `RequestBase::decode_lenient` and `Request::decode` must never panic. A payload that decodes
//! must re-encode (`encode_request`), and the re-encoded frame must decode to the same value
//! (after one normalising pass: defaults such as an empty `RequestType` are made explicit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::message::{self, Empty, Request, RequestBase};
use rgcs_protocol::{FrameDecoder, MessageId};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn reencode<B: Serialize>(m: MessageId, base: &RequestBase, body: &B) -> Vec<u8> {
    let frame = message::encode_request(m, 7, base, body).expect("a decoded request re-encodes");
    let mut dec = FrameDecoder::new(u32::MAX);
    dec.extend(&frame);
    let f = dec.next_frame().expect("valid frame").expect("whole frame");
    assert_eq!((f.message, f.id), (m, 7));
    f.payload
}

fn check<B: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: MessageId, payload: &[u8]) {
    let Ok((base, body)) = message::decode_request_body::<B>(payload) else {
        return;
    };
    let p1 = reencode(m, &base, &body);
    let (base1, body1) = message::decode_request_body::<B>(&p1).expect("re-encoded payload decodes");
    let p2 = reencode(m, &base1, &body1);
    let (base2, body2) = message::decode_request_body::<B>(&p2).expect("stable");
    assert_eq!(base1, base2);
    assert_eq!(body1, body2);
    // the typed dispatcher agrees with the generic decoder
    assert!(Request::decode(m, &p2).is_ok());
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let all = MessageId::ALL_REQUESTS;
    let m = match all.get(usize::from(pick) % (all.len() + 1)) {
        Some(m) => *m,
        None => MessageId(0x1010_1001), // not in §2.4
    };
    let _ = RequestBase::decode_lenient(payload);
    let decoded = Request::decode(m, payload);
    match m {
        MessageId::NEGOTIATE_PROTOCOL => check::<message::NegotiateProtocolRequest>(m, payload),
        MessageId::CREATE => check::<message::ContainerCreate>(m, payload),
        MessageId::EXECUTE_PROCESS => check::<message::ExecuteProcessRequest>(m, payload),
        MessageId::WAIT_FOR_PROCESS => check::<message::WaitForProcessRequest>(m, payload),
        MessageId::SIGNAL_PROCESS => check::<message::SignalProcessRequest>(m, payload),
        MessageId::RESIZE_CONSOLE => check::<message::ResizeConsoleRequest>(m, payload),
        MessageId::GET_PROPERTIES => check::<message::GetPropertiesRequest>(m, payload),
        MessageId::MODIFY_SETTINGS => check::<message::ModifySettingsRequest>(m, payload),
        MessageId::START
        | MessageId::SHUTDOWN_GRACEFUL
        | MessageId::SHUTDOWN_FORCED
        | MessageId::DUMP_STACKS
        | MessageId::DELETE_CONTAINER_STATE => {
            // base-only types decode exactly when their base does (hcsshim unmarshals it)
            let base = rgcs_protocol::gojson::from_slice::<RequestBase>(payload);
            assert_eq!(decoded.is_ok(), base.is_ok());
            check::<Empty>(m, payload);
        }
        _ => {
            // not-implemented types are never decoded
            assert!(decoded.is_ok());
        }
    }
});
