//! Response and notification payloads (what the host decodes): the first byte picks the typed
//! body, the rest is the JSON payload. A payload that decodes must re-encode to a payload that
//! decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::message::{self, ContainerNotification, Empty, ResponseBase};
use rgcs_protocol::{FrameDecoder, MessageId};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn payload_of(frame: &[u8]) -> Vec<u8> {
    let mut dec = FrameDecoder::new(u32::MAX);
    dec.extend(frame);
    dec.next_frame().expect("valid frame").expect("whole frame").payload
}

/// Encodes and decodes once; `None` when the guest → host size limit refuses the frame.
fn pass<B: Serialize + DeserializeOwned>(m: MessageId, base: &ResponseBase, body: &B) -> Option<(ResponseBase, B)> {
    let frame = message::encode_response(m, 3, base, body).ok()?;
    Some(message::decode_response::<B>(&payload_of(&frame)).expect("re-encoded payload decodes"))
}

fn check<B: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: MessageId, payload: &[u8]) {
    let Ok((base, body)) = message::decode_response::<B>(payload) else {
        return;
    };
    let Some((b1, d1)) = pass(m, &base, &body) else {
        return;
    };
    let (b2, d2) = pass(m, &b1, &d1).expect("same size as before");
    assert_eq!(b1, b2);
    assert_eq!(d1, d2);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let m = MessageId::ALL_REQUESTS[usize::from(pick) % MessageId::ALL_REQUESTS.len()];
    match pick % 8 {
        0 => check::<Empty>(m, payload),
        1 => check::<message::NegotiateProtocolResponse>(m, payload),
        2 => check::<message::ContainerCreateResponse>(m, payload),
        3 => check::<message::ExecuteProcessResponse>(m, payload),
        4 => check::<message::WaitForProcessResponse>(m, payload),
        5 => check::<message::GetPropertiesResponse>(m, payload),
        6 => check::<message::DumpStacksResponse>(m, payload),
        _ => {
            let Ok(n) = rgcs_protocol::gojson::from_slice::<ContainerNotification>(payload) else {
                return;
            };
            let frame = match message::encode_notification(&n) {
                Ok(f) => f,
                Err(_) => return,
            };
            let back: ContainerNotification =
                rgcs_protocol::gojson::from_slice(&payload_of(&frame)).expect("re-encoded decodes");
            assert_eq!(back, n);
        }
    }
});
