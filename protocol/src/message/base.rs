//! The common request and response bases (docs/gcs-reference.md §4.1, §4.2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hresult::HResult;

/// The null GUID: `ContainerId` of requests aimed at the utility VM itself.
pub const UVM_CONTAINER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The zero activity ID the host sends in practice.
pub const NULL_ACTIVITY_ID: &str = UVM_CONTAINER_ID;

/// Fields every host → guest payload carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestBase {
    /// Target container, the null GUID for the VM, empty for NegotiateProtocol.
    #[serde(rename = "ContainerId")]
    pub container_id: String,
    /// Activity GUID, echoed in the response.
    #[serde(rename = "ActivityId", skip_serializing_if = "String::is_empty")]
    pub activity_id: String,
    /// OpenTelemetry W3C context (`traceparent`, `tracestate`).
    #[serde(rename = "otsc", skip_serializing_if = "Option::is_none")]
    pub otel_span_context: Option<BTreeMap<String, String>>,
    /// Legacy OpenCensus span context; kept opaque.
    #[serde(rename = "ocsc", skip_serializing_if = "Option::is_none")]
    pub opencensus_span_context: Option<serde_json::Value>,
}

impl RequestBase {
    /// A base for `container_id` with the zero activity ID, as the host sends it.
    pub fn new(container_id: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            activity_id: NULL_ACTIVITY_ID.to_owned(),
            ..Self::default()
        }
    }

    /// Decodes the base of any payload, ignoring errors (hcsshim does the same, for logging and
    /// for echoing `ActivityId` even when the body is malformed).
    pub fn decode_lenient(payload: &[u8]) -> Self {
        crate::gojson::from_slice(payload).unwrap_or_default()
    }

    /// True when the request targets the utility VM rather than a container.
    pub fn is_uvm(&self) -> bool {
        self.container_id == UVM_CONTAINER_ID
    }
}

/// One entry of `ErrorRecords` (the host only logs these).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorRecord {
    /// HRESULT of this record.
    #[serde(rename = "Result")]
    pub result: HResult,
    /// Human-readable message.
    #[serde(rename = "Message")]
    pub message: String,
    /// Optional stack trace.
    #[serde(rename = "StackTrace", skip_serializing_if = "String::is_empty")]
    pub stack_trace: String,
    /// Module that raised it; the guest sends `"gcs"`.
    #[serde(rename = "ModuleName")]
    pub module_name: String,
    /// Source file name.
    #[serde(rename = "FileName")]
    pub file_name: String,
    /// Source line; `4294967295` when unknown.
    #[serde(rename = "Line")]
    pub line: u32,
    /// Function name.
    #[serde(rename = "FunctionName", skip_serializing_if = "String::is_empty")]
    pub function_name: String,
}

/// Fields every guest → host response carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseBase {
    /// HRESULT; always present, signed.
    #[serde(rename = "Result")]
    pub result: HResult,
    /// The request's `ActivityId`, omitted when empty.
    #[serde(rename = "ActivityId", skip_serializing_if = "String::is_empty")]
    pub activity_id: String,
    /// Human-readable error text, omitted when empty.
    #[serde(rename = "ErrorMessage", skip_serializing_if = "String::is_empty")]
    pub error_message: String,
    /// Error records, omitted when empty.
    #[serde(rename = "ErrorRecords", skip_serializing_if = "Vec::is_empty")]
    pub error_records: Vec<ErrorRecord>,
}

impl ResponseBase {
    /// A success answer to a request with `activity_id`.
    pub fn ok(activity_id: &str) -> Self {
        Self {
            activity_id: activity_id.to_owned(),
            ..Self::default()
        }
    }

    /// An error answer: `result`, the message, and one error record as the Go GCS sends it.
    pub fn error(activity_id: &str, result: HResult, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            result,
            activity_id: activity_id.to_owned(),
            error_records: vec![ErrorRecord {
                result,
                message: message.clone(),
                module_name: "gcs".to_owned(),
                line: u32::MAX,
                ..ErrorRecord::default()
            }],
            error_message: message,
        }
    }

    /// Truncates `ErrorMessage` and record messages so an error response stays far below the
    /// 64 KiB guest → host limit whatever the error text (at most `max` bytes each, cut on a
    /// character boundary).
    pub fn bound_messages(&mut self, max: usize) {
        truncate_utf8(&mut self.error_message, max);
        for r in &mut self.error_records {
            truncate_utf8(&mut r.message, max);
            truncate_utf8(&mut r.stack_trace, max);
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

/// Body of messages that carry only the base (Start, Shutdown*, DumpStacks request,
/// DeleteContainerState, and the responses to most requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_base_shape() {
        let b = ResponseBase::error(
            NULL_ACTIVITY_ID,
            HResult::SYSTEM_NOT_FOUND,
            "container c1 not found",
        );
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(
            json,
            r#"{"Result":-1070137074,"ActivityId":"00000000-0000-0000-0000-000000000000","ErrorMessage":"container c1 not found","ErrorRecords":[{"Result":-1070137074,"Message":"container c1 not found","ModuleName":"gcs","FileName":"","Line":4294967295}]}"#
        );
        let ok = serde_json::to_string(&ResponseBase::ok("")).unwrap();
        assert_eq!(ok, r#"{"Result":0}"#);
    }

    #[test]
    fn bound_messages_cuts_on_char_boundaries() {
        let mut b = ResponseBase::error("", HResult::FAIL, "é".repeat(10));
        b.bound_messages(5);
        assert_eq!(b.error_message, "éé");
        assert_eq!(b.error_records[0].message, "éé");
    }

    #[test]
    fn lenient_base_decode() {
        let b =
            RequestBase::decode_lenient(br#"{"containerid":"x","ActivityId":"a","MinimumVersion":"bad"}"#);
        assert_eq!((b.container_id.as_str(), b.activity_id.as_str()), ("x", "a"));
        assert_eq!(RequestBase::decode_lenient(b"garbage"), RequestBase::default());
        assert!(RequestBase::new(UVM_CONTAINER_ID).is_uvm());
    }
}
