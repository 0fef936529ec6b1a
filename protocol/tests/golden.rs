//! Golden byte fixtures (see `tests/common/mod.rs`): every fixture file must equal the frame built
//! from the spec sample, decode (header and typed body), and re-encode byte for byte with the
//! crate's encoders.
//!
//! `RGCS_BLESS=1 cargo test -p rgcs-protocol --test golden` rewrites the files; without it a
//! missing, stale or unexpected file fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeSet;

use common::{Dir, Fixture};
use rgcs_protocol::frame::FrameDecoder;
use rgcs_protocol::message::{self, ContainerNotification, Empty, Request};
use rgcs_protocol::{gojson, MessageId, ResponseBase};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn blessing() -> bool {
    std::env::var("RGCS_BLESS").is_ok_and(|v| v == "1")
}

fn reencode_request(m: MessageId, id: u64, payload: &[u8]) -> Vec<u8> {
    fn go<B: DeserializeOwned + Serialize>(m: MessageId, id: u64, payload: &[u8]) -> Vec<u8> {
        let (base, body) =
            message::decode_request_body::<B>(payload).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        message::encode_request(m, id, &base, &body).expect("encode")
    }
    match m {
        MessageId::NEGOTIATE_PROTOCOL => go::<message::NegotiateProtocolRequest>(m, id, payload),
        MessageId::CREATE => go::<message::ContainerCreate>(m, id, payload),
        MessageId::EXECUTE_PROCESS => go::<message::ExecuteProcessRequest>(m, id, payload),
        MessageId::WAIT_FOR_PROCESS => go::<message::WaitForProcessRequest>(m, id, payload),
        MessageId::SIGNAL_PROCESS => go::<message::SignalProcessRequest>(m, id, payload),
        MessageId::RESIZE_CONSOLE => go::<message::ResizeConsoleRequest>(m, id, payload),
        MessageId::GET_PROPERTIES => go::<message::GetPropertiesRequest>(m, id, payload),
        MessageId::MODIFY_SETTINGS => go::<message::ModifySettingsRequest>(m, id, payload),
        _ => go::<Empty>(m, id, payload),
    }
}

fn reencode_response(m: MessageId, id: u64, payload: &[u8]) -> Vec<u8> {
    fn go<B: DeserializeOwned + Serialize>(m: MessageId, id: u64, payload: &[u8]) -> Vec<u8> {
        let (base, body) = message::decode_response::<B>(payload).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        message::encode_response(m.request(), id, &base, &body).expect("encode")
    }
    let base: ResponseBase = gojson::from_slice(payload).expect("response base");
    if !base.result.is_success() {
        // the Go guest answers every failure with the base alone
        return go::<Empty>(m, id, payload);
    }
    match m.request() {
        MessageId::NEGOTIATE_PROTOCOL => go::<message::NegotiateProtocolResponse>(m, id, payload),
        MessageId::CREATE => go::<message::ContainerCreateResponse>(m, id, payload),
        MessageId::EXECUTE_PROCESS => go::<message::ExecuteProcessResponse>(m, id, payload),
        MessageId::WAIT_FOR_PROCESS => go::<message::WaitForProcessResponse>(m, id, payload),
        MessageId::GET_PROPERTIES => go::<message::GetPropertiesResponse>(m, id, payload),
        MessageId::DUMP_STACKS => go::<message::DumpStacksResponse>(m, id, payload),
        _ => go::<Empty>(m, id, payload),
    }
}

/// The `Request` variant a request type must decode to.
fn variant_matches(m: MessageId, r: &Request) -> bool {
    use MessageId as M;
    match m {
        M::NEGOTIATE_PROTOCOL => matches!(r, Request::NegotiateProtocol(_)),
        M::CREATE => matches!(r, Request::Create(_)),
        M::START => matches!(r, Request::Start),
        M::SHUTDOWN_GRACEFUL => matches!(r, Request::ShutdownGraceful),
        M::SHUTDOWN_FORCED => matches!(r, Request::ShutdownForced),
        M::EXECUTE_PROCESS => matches!(r, Request::ExecuteProcess(_)),
        M::WAIT_FOR_PROCESS => matches!(r, Request::WaitForProcess(_)),
        M::SIGNAL_PROCESS => matches!(r, Request::SignalProcess(_)),
        M::RESIZE_CONSOLE => matches!(r, Request::ResizeConsole(_)),
        M::GET_PROPERTIES => matches!(r, Request::GetProperties(_)),
        M::MODIFY_SETTINGS => matches!(r, Request::ModifySettings(_)),
        M::DUMP_STACKS => matches!(r, Request::DumpStacks),
        M::DELETE_CONTAINER_STATE => matches!(r, Request::DeleteContainerState),
        other => *r == Request::NotImplemented(other),
    }
}

fn bless_or_check(fixtures: &[Fixture]) {
    let dir = common::fixtures_dir();
    if blessing() {
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in fixtures {
            std::fs::write(f.path(), f.frame()).expect("write fixture");
        }
    }
    let expected: BTreeSet<String> = fixtures.iter().map(|f| format!("{}.bin", f.name)).collect();
    assert_eq!(expected.len(), fixtures.len(), "duplicate fixture names");
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    let unexpected: Vec<_> = present.difference(&expected).collect();
    assert!(
        unexpected.is_empty(),
        "fixture files not in the table: {unexpected:?}"
    );
    for f in fixtures {
        let bytes = common::load(f.name);
        assert!(
            bytes == f.frame(),
            "{}: file differs from the table; bless again if the table change is intended",
            f.name
        );
    }
}

#[test]
fn golden_fixtures_decode_and_reencode_byte_for_byte() {
    let fixtures = common::all();
    bless_or_check(&fixtures);
    for f in &fixtures {
        let bytes = common::load(f.name);
        let mut dec = FrameDecoder::new(u32::MAX);
        dec.extend(&bytes);
        let frame = dec.next_frame().expect("valid frame").expect("whole frame");
        assert_eq!(dec.buffered(), 0, "{}: trailing bytes", f.name);
        assert_eq!(frame.message, f.message, "{}", f.name);
        assert_eq!(frame.id, f.id, "{}", f.name);
        assert_eq!(frame.payload.len() + 16, bytes.len());
        assert_eq!(
            u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize,
            bytes.len()
        );
        let out = match f.dir {
            Dir::Request => {
                assert_eq!(
                    frame.payload.last(),
                    Some(&b'\n'),
                    "{}: host JSON ends with \\n",
                    f.name
                );
                let r =
                    Request::decode(f.message, &frame.payload).unwrap_or_else(|e| panic!("{}: {e}", f.name));
                assert!(variant_matches(f.message, &r), "{}: decoded as {r:?}", f.name);
                reencode_request(f.message, f.id, &frame.payload)
            }
            Dir::Response => {
                assert_ne!(
                    frame.payload.last(),
                    Some(&b'\n'),
                    "{}: guest JSON is compact",
                    f.name
                );
                reencode_response(f.message, f.id, &frame.payload)
            }
            Dir::Notification => {
                assert_eq!(f.id, 0);
                let n: ContainerNotification = gojson::from_slice(&frame.payload).expect("decode");
                message::encode_notification(&n).expect("encode")
            }
        };
        assert!(
            out == bytes,
            "{}: re-encoding differs\n  fixture: {}\n  encoded: {}",
            f.name,
            String::from_utf8_lossy(&bytes[16..]),
            String::from_utf8_lossy(out.get(16..).unwrap_or_default()),
        );
    }
}

#[test]
fn fixtures_cover_every_message_type_in_both_directions() {
    let fixtures = common::all();
    for m in MessageId::ALL_REQUESTS {
        assert!(
            fixtures.iter().any(|f| f.dir == Dir::Request && f.message == m),
            "no request fixture for {m:?}"
        );
        assert!(
            fixtures
                .iter()
                .any(|f| f.dir == Dir::Response && f.message == m.response()),
            "no response fixture for {m:?}"
        );
    }
    assert!(fixtures
        .iter()
        .any(|f| f.dir == Dir::Notification && f.message == MessageId::CONTAINER_NOTIFICATION));
    assert!(fixtures
        .iter()
        .any(|f| f.dir == Dir::Response && f.payload.contains("\"ErrorRecords\"")));
    // every response answers a request fixture with the same ID
    for r in fixtures.iter().filter(|f| f.dir == Dir::Response) {
        assert!(
            fixtures
                .iter()
                .any(|q| q.dir == Dir::Request && q.message == r.message.request() && q.id == r.id),
            "{}: no request with ID {}",
            r.name,
            r.id
        );
    }
}
