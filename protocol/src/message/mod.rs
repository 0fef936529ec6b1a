//! Typed payloads of every message (docs/gcs-reference.md §3–§4) and their envelope: the common base
//! fields (§4.1, §4.2) sit beside the type-specific fields in one flat JSON object.
//!
//! Decoding parses the payload once and reads the base and the body from the same value, each
//! with Go's rules ([`crate::gojson`]); encoding writes the base fields first, as Go's embedded
//! `MessageBase` does.

pub mod base;
pub mod container;
pub mod metrics;
pub mod modify;
pub mod negotiate;
pub mod notification;
mod omit;
pub mod process;
pub mod properties;
pub mod resources;
pub mod stacks;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::base::{Empty, ErrorRecord, RequestBase, ResponseBase, NULL_ACTIVITY_ID, UVM_CONTAINER_ID};
pub use self::container::{
    ConfigError, ContainerConfig, ContainerCreate, ContainerCreateResponse, ProtocolSupport,
};
pub use self::metrics::Metrics;
pub use self::modify::{resource_type, ModificationRequest, ModifySettingsRequest, RequestType, Resource};
pub use self::negotiate::{
    GcsCapabilities, GuestDefinedCapabilities, NegotiateProtocolRequest, NegotiateProtocolResponse,
    SchemaVersion, PROTOCOL_VERSION,
};
pub use self::notification::{ActiveOperation, ContainerNotification, NotificationType};
pub use self::process::{
    ExecuteProcessRequest, ExecuteProcessResponse, ExecuteProcessSettings, ProcessParameters,
    ResizeConsoleRequest, SignalProcessOptions, SignalProcessRequest, VsockStdioRelaySettings,
    WaitForProcessRequest, WaitForProcessResponse, SIGKILL,
};
pub use self::properties::{
    GetPropertiesRequest, GetPropertiesResponse, ProcessDetails, Properties, PropertyQuery, PropertyType,
};
pub use self::resources::{
    CombinedLayers, ConfidentialOptions, ContainerConstraints, DeviceVerityInfo, IpConfig, Layer,
    MappedDirectory, MappedVirtualDisk, NetworkAdapter, Route, ScsiDevice, SecurityPolicyFragment,
    VpMemDevice, VpMemMappingInfo, VpciDevice,
};
pub use self::stacks::DumpStacksResponse;
use crate::frame::{encode_frame, FrameError, DEFAULT_MAX_HOST_TO_GUEST, MAX_GUEST_TO_HOST};
use crate::gojson;
use crate::msgid::MessageId;

/// A decoded host → guest request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `NegotiateProtocol` (§4.4).
    NegotiateProtocol(NegotiateProtocolRequest),
    /// `Create` (§4.5).
    Create(Box<ContainerCreate>),
    /// `Start` (§4.6): base only.
    Start,
    /// `ExecuteProcess` (§4.7).
    ExecuteProcess(Box<ExecuteProcessRequest>),
    /// `WaitForProcess` (§4.8).
    WaitForProcess(WaitForProcessRequest),
    /// `SignalProcess` (§4.9).
    SignalProcess(SignalProcessRequest),
    /// `ResizeConsole` (§4.10).
    ResizeConsole(ResizeConsoleRequest),
    /// `ShutdownGraceful` (§4.11): base only.
    ShutdownGraceful,
    /// `ShutdownForced` (§4.11): base only.
    ShutdownForced,
    /// `GetProperties` (§4.12).
    GetProperties(GetPropertiesRequest),
    /// `ModifySettings` (§4.13, §4.14).
    ModifySettings(Box<ModifySettingsRequest>),
    /// `DumpStacks` (§4.15): base only.
    DumpStacks,
    /// `DeleteContainerState` (§4.16): base only.
    DeleteContainerState,
    /// A type the Linux GCS answers with `0x80004001`: UpdateContainer, LifecycleNotification,
    /// ModifyServiceSettings, and any identifier not in §2.4.
    NotImplemented(MessageId),
}

impl Request {
    /// Decodes the body of a request of type `message`. Errors are JSON errors (→ `0xC037010D`).
    ///
    /// Types whose payload is only the base (Start, Shutdown*, DumpStacks, DeleteContainerState)
    /// still need a JSON object there, as hcsshim's guest unmarshals it (a non-JSON Start is
    /// `0xC037010D`, not a success). Types we do not implement are not decoded at all.
    pub fn decode(message: MessageId, payload: &[u8]) -> Result<Self, gojson::Error> {
        let base_only = |variant: Self| -> Result<Self, gojson::Error> {
            gojson::from_slice::<RequestBase>(payload)?;
            Ok(variant)
        };
        Ok(match message {
            MessageId::NEGOTIATE_PROTOCOL => Self::NegotiateProtocol(gojson::from_slice(payload)?),
            MessageId::CREATE => Self::Create(Box::new(gojson::from_slice(payload)?)),
            MessageId::START => base_only(Self::Start)?,
            MessageId::EXECUTE_PROCESS => Self::ExecuteProcess(Box::new(gojson::from_slice(payload)?)),
            MessageId::WAIT_FOR_PROCESS => Self::WaitForProcess(gojson::from_slice(payload)?),
            MessageId::SIGNAL_PROCESS => Self::SignalProcess(gojson::from_slice(payload)?),
            MessageId::RESIZE_CONSOLE => Self::ResizeConsole(gojson::from_slice(payload)?),
            MessageId::GET_PROPERTIES => Self::GetProperties(gojson::from_slice(payload)?),
            MessageId::MODIFY_SETTINGS => Self::ModifySettings(Box::new(gojson::from_slice(payload)?)),
            MessageId::SHUTDOWN_GRACEFUL => base_only(Self::ShutdownGraceful)?,
            MessageId::SHUTDOWN_FORCED => base_only(Self::ShutdownForced)?,
            MessageId::DUMP_STACKS => base_only(Self::DumpStacks)?,
            MessageId::DELETE_CONTAINER_STATE => base_only(Self::DeleteContainerState)?,
            other => Self::NotImplemented(other),
        })
    }
}

/// Errors while encoding a message.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload could not be serialised.
    #[error("cannot encode the JSON payload")]
    Json(#[from] serde_json::Error),
    /// The frame is over the receiver's limit.
    #[error("cannot frame the message")]
    Frame(#[from] FrameError),
}

#[derive(Serialize)]
struct Merged<'a, A: Serialize, B: Serialize> {
    #[serde(flatten)]
    base: &'a A,
    #[serde(flatten)]
    body: &'a B,
}

/// Encodes a guest → host response to a request of type `request`, refusing frames over 64 KiB.
pub fn encode_response<B: Serialize>(
    request: MessageId,
    id: u64,
    base: &ResponseBase,
    body: &B,
) -> Result<Vec<u8>, EncodeError> {
    let json = serde_json::to_vec(&Merged { base, body })?;
    Ok(encode_frame(request.response(), id, &json, MAX_GUEST_TO_HOST)?)
}

/// Encodes a container notification (header ID 0), refusing frames over 64 KiB.
pub fn encode_notification(n: &ContainerNotification) -> Result<Vec<u8>, EncodeError> {
    let json = serde_json::to_vec(n)?;
    Ok(encode_frame(
        MessageId::CONTAINER_NOTIFICATION,
        0,
        &json,
        MAX_GUEST_TO_HOST,
    )?)
}

/// Encodes a host → guest request as hcsshim's host does (a streaming encoder: the JSON ends
/// with `\n`), refusing frames over [`DEFAULT_MAX_HOST_TO_GUEST`].
pub fn encode_request<B: Serialize>(
    message: MessageId,
    id: u64,
    base: &RequestBase,
    body: &B,
) -> Result<Vec<u8>, EncodeError> {
    let mut json = serde_json::to_vec(&Merged { base, body })?;
    json.push(b'\n');
    Ok(encode_frame(message, id, &json, DEFAULT_MAX_HOST_TO_GUEST)?)
}

/// Decodes a response payload into its base and typed body.
pub fn decode_response<B: DeserializeOwned>(payload: &[u8]) -> Result<(ResponseBase, B), gojson::Error> {
    let value: serde_json::Value = serde_json::from_slice(payload)?;
    let base = gojson::from_value(value.clone())?;
    let body = gojson::from_value(value)?;
    Ok((base, body))
}

/// Decodes a request payload into its base and typed body (the host-agnostic helper used by
/// tests and the fuzzers; the agent decodes the base leniently first).
pub fn decode_request_body<B: DeserializeOwned>(payload: &[u8]) -> Result<(RequestBase, B), gojson::Error> {
    let value: serde_json::Value = serde_json::from_slice(payload)?;
    let base = gojson::from_value(value.clone())?;
    let body = gojson::from_value(value)?;
    Ok((base, body))
}
