//! Request → handler, one arm per message type. Handlers live in their domain modules; this file
//! holds no logic beyond choosing one.

use rgcs_protocol::message::{Request, RequestBase};
use rgcs_protocol::MessageId;
use serde_json::{Map, Value};

use crate::error::GcsError;
use crate::host::Host;

/// What a handler asks the connection to do.
#[derive(Debug)]
pub enum Outcome {
    /// Send a success response with these body fields (beside the base).
    Reply(Map<String, Value>),
    /// Power the VM off without replying (Shutdown* on the UVM ID, GCS-PROTOCOL §4.11).
    PowerOff,
}

/// Largest DumpStacks text; the frame must stay under 64 KiB with the JSON escaping around it.
const DUMP_MAX: usize = 48 * 1024;

/// Handles one decoded request (after negotiation).
pub async fn dispatch(
    host: &Host,
    message: MessageId,
    base: &RequestBase,
    payload: &[u8],
) -> Result<Outcome, GcsError> {
    let request = Request::decode(message, payload).map_err(|source| GcsError::InvalidJson {
        what: message.name().unwrap_or("request"),
        source,
    })?;
    match request {
        Request::ShutdownGraceful | Request::ShutdownForced if base.is_uvm() => Ok(Outcome::PowerOff),
        Request::ShutdownGraceful | Request::ShutdownForced => {
            Err(GcsError::ContainerNotFound(base.container_id.clone()))
        }
        Request::Start => Ok(Outcome::Reply(Map::new())),
        Request::DumpStacks => {
            let mut body = Map::new();
            body.insert("GuestStacks".into(), Value::String(host.dump(DUMP_MAX)));
            Ok(Outcome::Reply(body))
        }
        Request::DeleteContainerState => Err(GcsError::ContainerNotFound(base.container_id.clone())),
        Request::NotImplemented(id) => Err(GcsError::NotImplemented(id)),
        // Negotiation is a connection-level exchange, handled before dispatch; a second one is
        // refused there. Container, process and storage requests arrive with the executor.
        #[allow(unreachable_patterns)]
        _ => Err(GcsError::Unsupported(
            message.name().unwrap_or("this request").to_owned(),
        )),
    }
}
