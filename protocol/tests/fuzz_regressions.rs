//! Inputs found by the fuzz targets in `fuzz/`, pinned as named tests (added before each fix).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use rgcs_protocol::gojson;
use rgcs_protocol::message::{ModificationRequest, ModifySettingsRequest, RequestType, Resource};

fn roundtrip(req: &ModifySettingsRequest) -> ModifySettingsRequest {
    gojson::from_slice(&serde_json::to_vec(req).expect("encode")).expect("decode")
}

/// `modify_settings` crash-d8c01ac5627621abb2bc039ab1352bfde7868190 (`"23E88"`: HvSocket settings
/// `3E88`). serde_json's default float parser is not correctly rounded, so an opaque number read as
/// 2.999999999999999e88 re-encoded and re-read as 2.9999999999999993e88: opaque settings did not
/// survive a decode → encode → decode. Fixed by serde_json's `float_roundtrip` (Go's `ParseFloat`
/// is correctly rounded too).
#[test]
fn modify_settings_opaque_float_round_trips() {
    let settings = serde_json::from_slice(b"3E88").expect("number");
    let resource = Resource::decode("HvSocket", Some(settings)).expect("unsupported, not an error");
    let req = ModifySettingsRequest {
        request: ModificationRequest::new(RequestType::from("HvSocket"), resource),
    };
    let r1 = roundtrip(&req);
    assert_eq!(r1, req);
    assert_eq!(roundtrip(&r1), r1);
    for text in [
        "3E88",
        "0.1",
        "1e-300",
        "2.2250738585072011e-308",
        "9007199254740993.0",
    ] {
        let v: serde_json::Value = serde_json::from_str(text).expect("number");
        let again: serde_json::Value = serde_json::from_str(&v.to_string()).expect("number");
        assert_eq!(v, again, "{text}");
    }
}
