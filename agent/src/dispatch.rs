//! Request → handler, one arm per message type. Handlers live in their domain modules
//! (`container`, `process`, `storage`); this file holds no logic beyond choosing one.

use std::sync::Arc;

use rgcs_protocol::message::{Request, RequestBase, Resource};
use rgcs_protocol::MessageId;

use crate::error::GcsError;
use crate::host::Host;
use crate::outcome::Outcome;
use crate::{container, network, process, storage};

/// Largest DumpStacks text; the frame must stay under 64 KiB with the JSON escaping around it.
const DUMP_MAX: usize = 48 * 1024;

/// Handles one request (after negotiation).
pub async fn dispatch(
    host: &Arc<Host>,
    message: MessageId,
    base: &RequestBase,
    payload: &[u8],
) -> Result<Outcome, GcsError> {
    let request = Request::decode(message, payload).map_err(|source| GcsError::InvalidJson {
        what: message.name().unwrap_or("request"),
        source,
    })?;
    match request {
        Request::Create(req) => container::create(host, base, *req).await,
        Request::Start => Ok(Outcome::empty()),
        Request::ExecuteProcess(req) => process::execute(host, base, *req).await,
        Request::WaitForProcess(req) => process::wait(host, base, req).await,
        Request::SignalProcess(req) => process::signal(host, base, req).await,
        Request::ResizeConsole(req) => process::resize(host, base, req).await,
        Request::ShutdownGraceful | Request::ShutdownForced if base.is_uvm() => Ok(Outcome::PowerOff),
        Request::ShutdownGraceful => container::shutdown(host, base, false).await,
        Request::ShutdownForced => container::shutdown(host, base, true).await,
        Request::GetProperties(req) => container::get_properties(host, base, req).await,
        Request::ModifySettings(req) if base.is_uvm() => match req.request.resource {
            Resource::Network(_) => network::modify(host, *req).await,
            _ => storage::modify(host, base, *req).await,
        },
        Request::ModifySettings(req) => container::modify(host, base, *req).await,
        Request::DumpStacks => Outcome::body(&serde_json::json!({ "GuestStacks": host.dump(DUMP_MAX) })),
        Request::DeleteContainerState => container::delete_state(host, base).await,
        Request::NegotiateProtocol(_) => Err(GcsError::NotImplemented(message)),
        Request::NotImplemented(id) => Err(GcsError::NotImplemented(id)),
    }
}
