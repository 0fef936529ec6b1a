//! Errors of request handling, and the single place that maps them to wire HRESULTs.

use rgcs_protocol::HResult;

/// Why a request failed. Each variant names what failed; [`GcsError::hresult`] is the wire code.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// The message type is not implemented (unknown, or one the Linux GCS never handles).
    #[error("message type {0} is not implemented")]
    NotImplemented(rgcs_protocol::MessageId),
    /// The payload is not valid JSON for its type.
    #[error("invalid JSON in the {what} payload")]
    InvalidJson {
        /// Which message or field.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: rgcs_protocol::gojson::Error,
    },
    /// No container with this ID.
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// The request is valid but this build of rgcs does not support it yet.
    #[error("{0} is not supported by this guest")]
    Unsupported(String),
}

impl GcsError {
    /// The HRESULT the host expects for this error (GCS-PROTOCOL §5).
    pub fn hresult(&self) -> HResult {
        match self {
            Self::NotImplemented(_) => HResult::NOT_IMPL,
            Self::InvalidJson { .. } => HResult::INVALID_JSON,
            Self::ContainerNotFound(_) => HResult::SYSTEM_NOT_FOUND,
            Self::Unsupported(_) => HResult::FAIL,
        }
    }

    /// The message for `ErrorMessage`: the whole cause chain, once.
    pub fn wire_message(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}
