//! Task events to containerd (`TTRPC_ADDRESS`, service `containerd.services.events.ttrpc.v1.Events`,
//! method `Forward`). One task sends them in order (TaskStart before TaskExit); a failed send is
//! retried a few times with a growing pause and a fresh connection, as containerd's own shims do.
//!
//! The event's `Any` carries the bare message name (`containerd.events.TaskExit`): containerd
//! 1.6 resolves type URLs by exact name, and `Any::pack`'s `type.googleapis.com/` prefix would
//! not resolve.

use std::time::Duration;

use containerd_shim_protos::api::ForwardRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc::context;
use tokio::sync::mpsc;

use super::timestamp_now;

/// Pending events at most (a send blocks the caller beyond that).
const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 5;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle that queues events for containerd.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Any)>,
}

impl Publisher {
    /// Starts the sender for `namespace`, connecting to `ttrpc_address` (a socket path; empty
    /// when containerd gave none: events are then logged and dropped).
    pub fn start(ttrpc_address: String, namespace: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(ttrpc_address, namespace, rx));
        Self { tx }
    }

    /// Queues `event` under `topic` (`/tasks/exit`…).
    pub async fn publish(&self, topic: &str, event: &dyn MessageDyn) {
        let value = match event.write_to_bytes_dyn() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(topic, error = %e, "cannot encode an event");
                return;
            }
        };
        let any = Any {
            type_url: event.descriptor_dyn().full_name().to_owned(),
            value,
            ..Default::default()
        };
        if self.tx.send((topic.to_owned(), any)).await.is_err() {
            tracing::warn!(topic, "the event sender stopped");
        }
    }
}

async fn connect(address: &str) -> Option<EventsClient> {
    match Client::connect(&format!("unix://{address}")).await {
        Ok(c) => Some(EventsClient::new(c)),
        Err(e) => {
            tracing::warn!(address, error = %e, "cannot connect to containerd's event service");
            None
        }
    }
}

async fn send_loop(address: String, namespace: String, mut rx: mpsc::Receiver<(String, Any)>) {
    let mut client: Option<EventsClient> = None;
    while let Some((topic, event)) = rx.recv().await {
        if address.is_empty() {
            tracing::info!(%topic, "event (no TTRPC_ADDRESS to send it to)");
            continue;
        }
        let req = ForwardRequest {
            envelope: MessageField::some(Envelope {
                timestamp: MessageField::some(timestamp_now()),
                namespace: namespace.clone(),
                topic: topic.clone(),
                event: MessageField::some(event),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut sent = false;
        for attempt in 1..=ATTEMPTS {
            if client.is_none() {
                client = connect(&address).await;
            }
            if let Some(c) = &client {
                let ctx = context::with_timeout(i64::try_from(SEND_TIMEOUT.as_nanos()).unwrap_or(i64::MAX));
                match c.forward(ctx, &req).await {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%topic, attempt, error = %e, "event not delivered");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
        if sent {
            tracing::debug!(%topic, "event delivered");
        } else {
            tracing::error!(%topic, "event dropped after {ATTEMPTS} attempts");
        }
    }
}
