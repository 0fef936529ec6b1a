//! The double-encoded documents through `JsonString`: the first byte picks `ContainerConfig`,
//! `ProcessParameters`, `PropertyQuery` or `Properties`; the rest is the inner document, carried
//! in a JSON string. Decoding never panics; a decoded value re-encodes and decodes back equal
//! (after one normalising pass).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::message::{ContainerConfig, ProcessParameters, Properties, PropertyQuery};
use rgcs_protocol::{gojson, JsonString};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(inner: &str) {
    let outer = serde_json::to_string(inner).expect("a str always encodes");
    let direct = gojson::from_str::<T>(inner);
    let Ok(JsonString(v)) = gojson::from_str::<JsonString<T>>(&outer) else {
        assert!(direct.is_err(), "JsonString and direct decoding disagree");
        return;
    };
    assert!(direct.is_ok(), "JsonString and direct decoding disagree");
    let e1 = serde_json::to_string(&JsonString(v)).expect("re-encodes");
    let JsonString(v1) = gojson::from_str::<JsonString<T>>(&e1).expect("re-encoded decodes");
    let e2 = serde_json::to_string(&JsonString(v1)).expect("re-encodes");
    let JsonString(v2) = gojson::from_str::<JsonString<T>>(&e2).expect("stable");
    let JsonString(v1) = gojson::from_str::<JsonString<T>>(&e1).expect("re-encoded decodes");
    assert_eq!(v1, v2);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let inner = String::from_utf8_lossy(rest);
    match pick % 4 {
        0 => check::<ContainerConfig>(&inner),
        1 => check::<ProcessParameters>(&inner),
        2 => check::<PropertyQuery>(&inner),
        _ => check::<Properties>(&inner),
    }
});
