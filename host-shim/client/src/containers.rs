//! Typed container and process calls over a [`BridgeClient`], with the host ends of the stdio
//! ports and a per-container view of the notification stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use rgcs_protocol::message::{
    ContainerConfig, ContainerConstraints, ContainerCreate, ContainerCreateResponse, ContainerNotification,
    Empty, ExecuteProcessRequest, ExecuteProcessResponse, ExecuteProcessSettings, GetPropertiesRequest,
    GetPropertiesResponse, ModificationRequest, ModifySettingsRequest, ProcessParameters, Properties,
    PropertyQuery, PropertyType, RequestType, ResizeConsoleRequest, Resource, SignalProcessOptions,
    SignalProcessRequest, VsockStdioRelaySettings, WaitForProcessRequest, WaitForProcessResponse,
    UVM_CONTAINER_ID,
};
use rgcs_protocol::{HResult, JsonString, MessageId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use rgcs_protocol::ports::FIRST_STDIO_PORT;

use crate::bridge::{BridgeClient, ClientError};
use crate::spec::adjust_resources;
use crate::stdio::HostStdio;
use crate::vsock::{VsockError, VsockListener};

/// How long the guest gets to dial the stdio ports once it has answered ExecuteProcess (it dials
/// before answering, so the connections are already queued).
pub const STDIO_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of container calls. Each names the container (or the UVM) and the operation.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The guest (or the bridge) failed the call.
    #[error("{op} for {target} failed")]
    Call {
        /// Operation name.
        op: &'static str,
        /// `container <id>` or `the uvm`.
        target: String,
        /// The bridge error (guest failures carry the HRESULT name and the guest's message).
        #[source]
        source: ClientError,
    },
    /// A stdio port could not be listened on or accepted.
    #[error("stdio port {port:#x} of a process in {target}")]
    Stdio {
        /// `container <id>` or `the uvm`.
        target: String,
        /// The vsock port.
        port: u32,
        /// Why.
        #[source]
        source: VsockError,
    },
    /// The stdio port range is used up.
    #[error("no vsock stdio ports left on this bridge connection")]
    PortsExhausted,
    /// WaitForProcess timed out in the guest.
    #[error("process {pid} in {target} did not exit within {timeout:?}")]
    WaitTimeout {
        /// `container <id>` or `the uvm`.
        target: String,
        /// The process.
        pid: u32,
        /// The timeout sent.
        timeout: Duration,
    },
    /// No notification came in time.
    #[error("no exit notification for container {id} within {timeout:?}")]
    NoNotification {
        /// The container.
        id: String,
        /// The wait.
        timeout: Duration,
    },
    /// The spec could not be built.
    #[error("invalid container spec")]
    Spec(#[from] crate::spec::SpecError),
}

impl ContainerError {
    /// The guest's HRESULT, when the guest answered with a failure.
    pub fn hresult(&self) -> Option<HResult> {
        match self {
            Self::Call { source, .. } => source.hresult(),
            _ => None,
        }
    }
}

/// How to stop a container (§4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// SIGTERM to init (`GracefulExit`).
    Graceful,
    /// SIGKILL to init (`ForcedExit`).
    Forced,
}

/// Notifications received so far, by container.
#[derive(Debug, Default)]
struct NoteBook {
    by_container: HashMap<String, Vec<ContainerNotification>>,
    /// Every notification, in arrival order.
    log: Vec<ContainerNotification>,
    closed: bool,
}

/// The container client of one bridge connection.
#[derive(Debug)]
pub struct ContainerClient {
    bridge: Arc<BridgeClient>,
    vsock_prefix: PathBuf,
    next_port: AtomicU32,
    notes: Arc<Mutex<NoteBook>>,
    note_arrived: Arc<Notify>,
    router: JoinHandle<()>,
}

impl Drop for ContainerClient {
    fn drop(&mut self) {
        self.router.abort();
    }
}

fn target(container_id: &str) -> String {
    if container_id == UVM_CONTAINER_ID {
        "the uvm".to_owned()
    } else {
        format!("container {container_id}")
    }
}

impl ContainerClient {
    /// A client over a negotiated bridge; guest port `P` arrives on `<vsock_prefix>_P`
    /// (the UVM launcher's vsock prefix, or the agent's `--stdio-unix-prefix` in tests). Takes over
    /// the bridge's notification stream.
    pub fn new(bridge: Arc<BridgeClient>, vsock_prefix: impl Into<PathBuf>) -> Self {
        let notes = Arc::new(Mutex::new(NoteBook::default()));
        let note_arrived = Arc::new(Notify::new());
        let router = {
            let (bridge, notes, arrived) =
                (Arc::clone(&bridge), Arc::clone(&notes), Arc::clone(&note_arrived));
            tokio::spawn(async move {
                while let Some(n) = bridge.next_notification().await {
                    tracing::debug!(container = %n.container_id, kind = ?n.notification_type, "container notification");
                    if let Ok(mut book) = notes.lock() {
                        let list = book.by_container.entry(n.container_id.clone()).or_default();
                        if !list.is_empty() {
                            tracing::warn!(container = %n.container_id, "second notification for one container");
                        }
                        list.push(n.clone());
                        book.log.push(n);
                    }
                    arrived.notify_waiters();
                }
                if let Ok(mut book) = notes.lock() {
                    book.closed = true;
                }
                arrived.notify_waiters();
            })
        };
        Self {
            bridge,
            vsock_prefix: vsock_prefix.into(),
            next_port: AtomicU32::new(FIRST_STDIO_PORT),
            notes,
            note_arrived,
            router,
        }
    }

    /// The bridge.
    pub fn bridge(&self) -> &Arc<BridgeClient> {
        &self.bridge
    }

    /// The vsock prefix.
    pub fn vsock_prefix(&self) -> &Path {
        &self.vsock_prefix
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        op: &'static str,
        message: MessageId,
        container_id: &str,
        body: &B,
    ) -> Result<R, ContainerError> {
        self.bridge
            .call(message, container_id, body)
            .await
            .map_err(|source| ContainerError::Call {
                op,
                target: target(container_id),
                source,
            })
    }

    /// Create (§4.5).
    pub async fn create_container(&self, id: &str, config: ContainerConfig) -> Result<(), ContainerError> {
        let body = ContainerCreate {
            container_config: Some(JsonString(config)),
            supported_versions: None,
        };
        let _: ContainerCreateResponse = self.call("Create", MessageId::CREATE, id, &body).await?;
        Ok(())
    }

    /// Start (§4.6; a no-op in the guest, sent as hcsshim does).
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let _: Empty = self.call("Start", MessageId::START, id, &Empty {}).await?;
        Ok(())
    }

    /// The next port [`ContainerClient::execute_process`] would allocate.
    #[cfg(test)]
    pub(crate) fn next_port_for_tests(&self) -> u32 {
        self.next_port.load(Ordering::Relaxed)
    }

    /// Allocates the next stdio port (never reused on this connection).
    fn allocate_port(&self) -> Result<u32, ContainerError> {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        if port < FIRST_STDIO_PORT {
            return Err(ContainerError::PortsExhausted);
        }
        Ok(port)
    }

    /// ExecuteProcess (§4.7) in `container_id` (or [`UVM_CONTAINER_ID`]): allocates a port per
    /// requested pipe (stdin, stdout, stderr), listens on each before sending the request, and
    /// accepts the guest's connections. Returns the PID and the host ends of the pipes.
    pub async fn execute_process(
        &self,
        container_id: &str,
        params: ProcessParameters,
    ) -> Result<(u32, HostStdio), ContainerError> {
        let tgt = || target(container_id);
        let mut ports = VsockStdioRelaySettings::default();
        let mut listeners: [Option<VsockListener>; 3] = [None, None, None];
        let wanted = [
            params.create_std_in_pipe,
            params.create_std_out_pipe,
            params.create_std_err_pipe,
        ];
        for (i, want) in wanted.into_iter().enumerate() {
            if !want {
                continue;
            }
            let port = self.allocate_port()?;
            let l =
                VsockListener::bind(&self.vsock_prefix, port).map_err(|source| ContainerError::Stdio {
                    target: tgt(),
                    port,
                    source,
                })?;
            match i {
                0 => ports.std_in = port,
                1 => ports.std_out = port,
                _ => ports.std_err = port,
            }
            listeners[i] = Some(l);
        }
        // Accept while the request is in flight: the guest dials before it answers.
        let accepts: Vec<_> = listeners
            .into_iter()
            .map(|l| {
                l.map(|l| {
                    tokio::spawn(async move {
                        let port = l.port();
                        // The listener is dropped (its socket file removed) after one accept.
                        l.accept_one(STDIO_ACCEPT_TIMEOUT).await.map_err(|e| (port, e))
                    })
                })
            })
            .collect();
        let body = ExecuteProcessRequest {
            settings: ExecuteProcessSettings {
                process_parameters: JsonString(params),
                stdio_relay_settings: None,
                vsock_stdio_relay_settings: ports,
            },
        };
        let result: Result<ExecuteProcessResponse, _> = self
            .call("ExecuteProcess", MessageId::EXECUTE_PROCESS, container_id, &body)
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                for a in accepts.iter().flatten() {
                    a.abort();
                }
                return Err(e);
            }
        };
        let mut streams: [Option<UnixStream>; 3] = [None, None, None];
        for (i, a) in accepts.into_iter().enumerate() {
            let Some(a) = a else { continue };
            let joined = a.await.map_err(|e| ContainerError::Stdio {
                target: tgt(),
                port: 0,
                source: VsockError::Accept {
                    path: self.vsock_prefix.clone(),
                    port: 0,
                    source: std::io::Error::other(e),
                },
            })?;
            streams[i] = Some(joined.map_err(|(port, source)| ContainerError::Stdio {
                target: tgt(),
                port,
                source,
            })?);
        }
        let [stdin, stdout, stderr] = streams;
        tracing::debug!(
            container = container_id,
            pid = resp.process_id,
            ?ports,
            "process started"
        );
        Ok((
            resp.process_id,
            HostStdio {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    /// WaitForProcess (§4.8); `None` waits forever. Returns the exit code.
    pub async fn wait_for_process(
        &self,
        container_id: &str,
        pid: u32,
        timeout: Option<Duration>,
    ) -> Result<u32, ContainerError> {
        let timeout_in_ms = match timeout {
            None => WaitForProcessRequest::INFINITE,
            Some(t) => u32::try_from(t.as_millis())
                .unwrap_or(u32::MAX - 1)
                .min(u32::MAX - 1),
        };
        let body = WaitForProcessRequest {
            process_id: pid,
            timeout_in_ms,
        };
        match self
            .call::<_, WaitForProcessResponse>(
                "WaitForProcess",
                MessageId::WAIT_FOR_PROCESS,
                container_id,
                &body,
            )
            .await
        {
            Ok(r) => Ok(r.exit_code),
            Err(e) if e.hresult() == Some(HResult::TIMEOUT) => Err(ContainerError::WaitTimeout {
                target: target(container_id),
                pid,
                timeout: timeout.unwrap_or_default(),
            }),
            Err(e) => Err(e),
        }
    }

    /// SignalProcess (§4.9); `None` sends no options (SIGKILL, the host's `Kill()`).
    pub async fn signal_process(
        &self,
        container_id: &str,
        pid: u32,
        signal: Option<i32>,
    ) -> Result<(), ContainerError> {
        let body = SignalProcessRequest {
            process_id: pid,
            options: signal.map(|signal| SignalProcessOptions { signal }),
        };
        let _: Empty = self
            .call("SignalProcess", MessageId::SIGNAL_PROCESS, container_id, &body)
            .await?;
        Ok(())
    }

    /// ResizeConsole (§4.10).
    pub async fn resize_console(
        &self,
        container_id: &str,
        pid: u32,
        height: u16,
        width: u16,
    ) -> Result<(), ContainerError> {
        let body = ResizeConsoleRequest {
            process_id: pid,
            height,
            width,
        };
        let _: Empty = self
            .call("ResizeConsole", MessageId::RESIZE_CONSOLE, container_id, &body)
            .await?;
        Ok(())
    }

    /// ShutdownGraceful / ShutdownForced of a container (§4.11).
    pub async fn shutdown_container(&self, id: &str, kind: ShutdownKind) -> Result<(), ContainerError> {
        let (op, msg) = match kind {
            ShutdownKind::Graceful => ("ShutdownGraceful", MessageId::SHUTDOWN_GRACEFUL),
            ShutdownKind::Forced => ("ShutdownForced", MessageId::SHUTDOWN_FORCED),
        };
        let _: Empty = self.call(op, msg, id, &Empty {}).await?;
        Ok(())
    }

    /// GetProperties (§4.12).
    pub async fn get_properties(
        &self,
        id: &str,
        types: &[PropertyType],
    ) -> Result<Properties, ContainerError> {
        let body = GetPropertiesRequest {
            query: JsonString(PropertyQuery {
                property_types: types.to_vec(),
                queries: None,
            }),
        };
        let r: GetPropertiesResponse = self
            .call("GetProperties", MessageId::GET_PROPERTIES, id, &body)
            .await?;
        Ok(r.properties.into_inner())
    }

    /// ModifySettings `ContainerConstraints` `Update` (§4.14), with the §4.5 resource adjustments.
    pub async fn update_constraints(
        &self,
        id: &str,
        resources: LinuxResources,
    ) -> Result<(), ContainerError> {
        let body = ModifySettingsRequest {
            request: ModificationRequest::new(
                RequestType::Update,
                Resource::ContainerConstraints(Box::new(ContainerConstraints {
                    windows: None,
                    linux: Some(adjust_resources(resources)),
                })),
            ),
        };
        let _: Empty = self
            .call("ContainerConstraints", MessageId::MODIFY_SETTINGS, id, &body)
            .await?;
        Ok(())
    }

    /// DeleteContainerState (§4.16).
    pub async fn delete_container_state(&self, id: &str) -> Result<(), ContainerError> {
        let _: Empty = self
            .call(
                "DeleteContainerState",
                MessageId::DELETE_CONTAINER_STATE,
                id,
                &Empty {},
            )
            .await?;
        Ok(())
    }

    /// DumpStacks (§4.15).
    pub async fn dump_stacks(&self) -> Result<String, ContainerError> {
        self.bridge
            .dump_stacks()
            .await
            .map_err(|source| ContainerError::Call {
                op: "DumpStacks",
                target: target(UVM_CONTAINER_ID),
                source,
            })
    }

    /// Notifications received so far for `id` (the guest must send exactly one).
    pub fn notifications(&self, id: &str) -> Vec<ContainerNotification> {
        self.notes
            .lock()
            .map(|b| b.by_container.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Every notification received so far, whatever its container, in arrival order.
    pub fn notification_log(&self) -> Vec<ContainerNotification> {
        self.notes.lock().map(|b| b.log.clone()).unwrap_or_default()
    }

    /// Waits until `pick` finds a notification in the book (or the bridge closes).
    async fn wait_book<T>(&self, timeout: Duration, pick: impl Fn(&NoteBook) -> Option<T>) -> Option<T> {
        let fut = async {
            loop {
                let arrived = self.note_arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                {
                    let book = self.notes.lock().ok()?;
                    if let Some(v) = pick(&book) {
                        return Some(v);
                    }
                    if book.closed {
                        return None;
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// Waits for the first notification of `id`.
    pub async fn wait_notification(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<ContainerNotification, ContainerError> {
        self.wait_book(timeout, |b| {
            b.by_container.get(id).and_then(|l| l.first()).cloned()
        })
        .await
        .ok_or_else(|| ContainerError::NoNotification {
            id: id.to_owned(),
            timeout,
        })
    }

    /// Waits for the `n`-th notification (counting from 1) of the whole bridge.
    pub async fn wait_nth_notification(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<ContainerNotification, ContainerError> {
        self.wait_book(timeout, |b| n.checked_sub(1).and_then(|i| b.log.get(i)).cloned())
            .await
            .ok_or_else(|| ContainerError::NoNotification {
                id: format!("#{n}"),
                timeout,
            })
    }
}

#[cfg(test)]
mod tests;
