//! Errors of request handling, and the single place that maps them to wire HRESULTs: every
//! error frame the agent sends is built from a [`GcsError`] (`bridge/conn.rs` makes none itself).

use rgcs_protocol::HResult;

/// Why a request failed. Each variant names what failed; [`GcsError::hresult`] is the wire code.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// The message type is not implemented (unknown, or one the Linux GCS never handles).
    #[error("message type {0} is not implemented")]
    NotImplemented(rgcs_protocol::MessageId),
    /// A request before NegotiateProtocol succeeded on this connection.
    #[error("protocol not negotiated")]
    NotNegotiated,
    /// A second NegotiateProtocol on one connection.
    #[error("protocol already negotiated")]
    AlreadyNegotiated,
    /// The host's version range does not include 4.
    #[error("protocol versions {min}..={max} do not include version 4")]
    UnsupportedVersion {
        /// `MinimumVersion`.
        min: u32,
        /// `MaximumVersion`.
        max: u32,
    },
    /// A request over the guest's frame limit, skipped unread.
    #[error("request of {size} bytes exceeds the guest's limit of {max} bytes")]
    RequestTooLarge {
        /// Its `Size`.
        size: u32,
        /// The limit.
        max: u32,
    },
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
    /// A container with this ID already exists.
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    /// The container configuration is unusable (schema below 2.1, missing spec, bad JSON).
    #[error("invalid container configuration for {id:?}: {reason}")]
    InvalidConfig {
        /// The container.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The container exists but is not in a state that allows the request (still being
    /// created, already exited, never started).
    #[error("container {id:?} is {state}")]
    InvalidState {
        /// The container.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// No process with this PID in the container (or in the UVM), or it already exited.
    #[error("process {0} not found")]
    ProcessNotFound(u32),
    /// WaitForProcess timed out.
    #[error("timed out waiting for process {0}")]
    WaitTimeout(u32),
    /// The executor (libcontainer in the zygote) failed; the text is its error chain.
    #[error("{op} container {id:?}: {message}")]
    Runtime {
        /// What was attempted (create, start, exec, ...).
        op: &'static str,
        /// The container.
        id: String,
        /// The executor's error chain.
        message: String,
    },
    /// An executor call did not finish within its deadline; the zygote was replaced.
    #[error("{op} container {id:?}: the executor did not answer within {after:?}")]
    ExecutorTimeout {
        /// What was attempted.
        op: &'static str,
        /// The container.
        id: String,
        /// The deadline.
        after: std::time::Duration,
    },
    /// A container ID that cannot name a container.
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId {
        /// The ID, escaped.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A guest path from the host breaks the path rules.
    #[error("{what} {path:?} {reason}")]
    InvalidPath {
        /// Which field.
        what: &'static str,
        /// The path, escaped.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A system call or file operation of the agent failed.
    #[error("{what}")]
    Io {
        /// What was attempted, with the identifying data.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The request is valid but this build of rgcs does not support it yet.
    #[error("{0} is not supported by this guest")]
    Unsupported(String),
    /// A pod rule refused the container (hcsshim's texts: no sandbox ID, unknown pod, a workload
    /// hostname, a mount source outside its base, a sandbox deleted before its workloads).
    #[error("container {id:?}: {reason}")]
    Pod {
        /// The container.
        id: String,
        /// Why.
        reason: String,
    },
    /// A network request (or the network part of a Create) failed; the source says why.
    #[error("network request failed")]
    Network(#[from] crate::network::NetworkError),
    /// A storage request (disk, layer, share, overlay) failed; the source says why.
    #[error("storage request failed")]
    Storage(#[from] crate::storage::StorageError),
    /// An invariant of the agent broke (a bug); the text says which.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GcsError {
    /// The HRESULT the host expects for this error (docs/gcs-reference.md §5).
    pub fn hresult(&self) -> HResult {
        match self {
            Self::NotImplemented(_) | Self::NotNegotiated | Self::AlreadyNegotiated => HResult::NOT_IMPL,
            Self::UnsupportedVersion { .. } => HResult::UNSUPPORTED_PROTOCOL_VERSION,
            Self::RequestTooLarge { .. } => HResult::FAIL,
            Self::InvalidJson { .. } => HResult::INVALID_JSON,
            Self::ContainerNotFound(_) => HResult::SYSTEM_NOT_FOUND,
            Self::ContainerExists(_) => HResult::SYSTEM_ALREADY_EXISTS,
            Self::InvalidConfig { .. } => HResult::INVALID_JSON,
            Self::InvalidState { .. } => HResult::INVALID_STATE,
            Self::ProcessNotFound(_) => HResult::NOT_FOUND,
            Self::WaitTimeout(_) | Self::ExecutorTimeout { .. } => HResult::TIMEOUT,
            Self::Storage(_) => HResult::FAIL,
            // hcsshim returns its "namespace not found" with HrErrNotFound; everything else of
            // networking is a plain failure there too.
            Self::Network(crate::network::NetworkError::NamespaceNotFound(_)) => HResult::NOT_FOUND,
            Self::Network(_) => HResult::FAIL,
            Self::Runtime { .. }
            | Self::Pod { .. }
            | Self::Io { .. }
            | Self::Unsupported(_)
            | Self::Internal(_)
            | Self::InvalidId { .. }
            | Self::InvalidPath { .. } => HResult::FAIL,
        }
    }

    /// An [`GcsError::Io`] from an `io::Error` and a description.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The message for `ErrorMessage`: the whole cause chain, once.
    pub fn wire_message(&self) -> String {
        rgcs_protocol::error_chain(self)
    }
}
