//! What a request handler returns to the connection: the body of a success, or power-off. A
//! leaf module: domains (`container`, `process`, `storage`) produce it, `dispatch` and the
//! connection consume it, and it imports neither.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::GcsError;

/// What a handler asks the connection to do.
#[derive(Debug)]
pub enum Outcome {
    /// Send a success response with these body fields (beside the base).
    Reply(Map<String, Value>),
    /// Power the VM off without replying (Shutdown* on the UVM ID, docs/gcs-reference.md §4.11).
    PowerOff,
}

impl Outcome {
    /// A success with no body fields.
    pub fn empty() -> Self {
        Self::Reply(Map::new())
    }

    /// A success whose body is `body`'s JSON object fields.
    pub fn body<T: Serialize>(body: &T) -> Result<Self, GcsError> {
        match serde_json::to_value(body) {
            Ok(Value::Object(map)) => Ok(Self::Reply(map)),
            Ok(other) => Err(GcsError::Internal(format!(
                "response body is not an object: {other}"
            ))),
            Err(e) => Err(GcsError::Internal(format!("cannot encode the response: {e}"))),
        }
    }
}
