//! DumpStacks (docs/gcs-reference.md §4.15): the request is base only; the response carries the dump.

use serde::{Deserialize, Serialize};

/// `DumpStacks` response body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DumpStacksResponse {
    /// A dump of every thread's stack; always present. Keep the whole frame under 64 KiB.
    #[serde(rename = "GuestStacks")]
    pub guest_stacks: String,
}
