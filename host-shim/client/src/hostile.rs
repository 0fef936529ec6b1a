//! The hostile-input suite: malformed frames and JSON, wrong types, out-of-range numbers, unknown
//! and duplicate IDs, hostile paths, requests out of order and concurrent requests, driven over
//! the real bridge at the real agent. Each case checks the HRESULT a host would see; after each
//! one the agent must still answer, and at the end nothing may be left behind (mounts, processes,
//! container cgroups, state directories, the agent's descriptors).
//!
//! The suite runs wherever an agent runs: the in-process tier (`agent/tests/hostile.rs`, the
//! agent on this host over a Unix socket) and the VM tier (`tests/tests/hostile.rs`, PID 1 of a
//! real UVM). [`Env`] is what differs.
#![allow(missing_docs)] // test support: the case names document themselves

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgcs_protocol::frame::Header;
use rgcs_protocol::message::{decode_response, Empty, NotificationType, ResponseBase, UVM_CONTAINER_ID};
use rgcs_protocol::{ErrorChain, Frame, HResult, MessageId};
use serde_json::{json, Value};

use crate::spec::{exec_process, init_process, uvm_process, ContainerSpec, Pipes, ProcessSpec};
use crate::{ContainerClient, ContainerError};

/// A boxed future, for the object-safe [`Env`].
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What could leak, counted between cases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Mount points the agent sees.
    pub mounts: usize,
    /// Processes (the agent's children, or every process of the UVM).
    pub processes: usize,
    /// Container cgroups.
    pub cgroups: Vec<String>,
    /// Per-container state directories (libcontainer's, the agent's per-process ones).
    pub state: Vec<String>,
    /// The agent's open descriptors.
    pub agent_fds: usize,
}

/// Where the agent under test runs.
pub trait Env: Send + Sync {
    /// A new negotiated client, after the agent dropped the bridge and dialled again.
    fn reconnect(&self) -> BoxFut<'_, Result<Arc<ContainerClient>, String>>;
    /// A busybox root filesystem in the guest, shared by the suite's containers.
    fn rootfs(&self) -> String;
    /// The bundle directory of container `id` in the guest.
    fn bundle(&self, id: &str) -> String;
    /// A symlink to `/` under a storage root the agent accepts (e.g. `/run/mounts/…`).
    fn symlink_under_root(&self) -> BoxFut<'_, Result<String, String>>;
    /// What could leak, now.
    fn snapshot(&self) -> BoxFut<'_, Result<Snapshot, String>>;
    /// How long the agent waits for the rest of a frame (its `--bridge-stall-ms`).
    fn stall(&self) -> Duration;
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Its name.
    pub name: String,
    /// `Err(why)` when it failed.
    pub result: Result<(), String>,
}

/// The suite's state: the current client (replaced after a case that ends the connection).
pub struct Ctx<'e> {
    env: &'e dyn Env,
    client: Mutex<Arc<ContainerClient>>,
}

type R = Result<(), String>;

/// Per-call limit (TCG is slow; nothing legitimate takes this long).
const STEP: Duration = Duration::from_secs(60);

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

impl<'e> Ctx<'e> {
    fn c(&self) -> Arc<ContainerClient> {
        Arc::clone(
            &self
                .client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    async fn reconnect(&self) -> R {
        let c = self.env.reconnect().await?;
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
        Ok(())
    }

    /// Sends `payload` as is; the HRESULT of the answer.
    async fn raw(&self, message: MessageId, payload: &[u8]) -> Result<HResult, String> {
        let c = self.c();
        let f = tokio::time::timeout(STEP, c.bridge().call_bytes(message, payload))
            .await
            .map_err(|_| format!("no answer to {message} within {STEP:?}"))?
            .map_err(|e| format!("{message}: {}", ErrorChain(&e)))?;
        result_of(&f)
    }

    /// Sends `body` (a JSON object) with `ContainerId` merged in; the HRESULT.
    async fn json(&self, message: MessageId, container_id: &str, mut body: Value) -> Result<HResult, String> {
        if let Value::Object(m) = &mut body {
            m.insert("ContainerId".into(), Value::String(container_id.into()));
            m.entry("ActivityId")
                .or_insert(Value::String(UVM_CONTAINER_ID.into()));
        }
        let payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        self.raw(message, &payload).await
    }

    async fn expect_raw(&self, message: MessageId, payload: &[u8], want: HResult) -> R {
        let got = self.raw(message, payload).await?;
        ensure(got == want, || format!("{message}: got {got}, want {want}"))
    }

    async fn expect_json(&self, message: MessageId, id: &str, body: Value, want: HResult) -> R {
        let got = self.json(message, id, body).await?;
        ensure(got == want, || format!("{message}: got {got}, want {want}"))
    }

    /// The agent answers DumpStacks on the current connection.
    async fn alive(&self) -> R {
        let c = self.c();
        tokio::time::timeout(STEP, c.dump_stacks())
            .await
            .map_err(|_| "the agent did not answer DumpStacks".to_owned())?
            .map(|_| ())
            .map_err(|e| format!("DumpStacks: {}", ErrorChain(&e)))
    }

    /// The spec of a suite container running `args` (non-tty, busybox rootfs).
    fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        let mut s = ContainerSpec::new(id, self.env.rootfs(), ProcessSpec::new(args.iter().copied()));
        s.bundle = Some(self.env.bundle(id));
        s
    }

    /// Creates and starts `id` running `args`; its init PID.
    async fn running(&self, id: &str, args: &[&str]) -> Result<u32, String> {
        let c = self.c();
        let cfg = self.spec(id, args).config().map_err(|e| e.to_string())?;
        c.create_container(id, cfg).await.map_err(err("Create"))?;
        c.start(id).await.map_err(err("Start"))?;
        let (pid, _stdio) = c
            .execute_process(id, init_process(Pipes::NONE))
            .await
            .map_err(err("ExecuteProcess"))?;
        Ok(pid)
    }

    /// Kills `id`'s init, waits for it, and deletes the container (whatever state it is in).
    async fn remove(&self, id: &str, init: Option<u32>) -> R {
        let c = self.c();
        if let Some(pid) = init {
            let _ = c.signal_process(id, pid, Some(9)).await;
            let _ = tokio::time::timeout(STEP, c.wait_for_process(id, pid, None)).await;
        }
        c.delete_container_state(id)
            .await
            .map_err(err("DeleteContainerState"))
    }
}

fn err(what: &'static str) -> impl FnOnce(ContainerError) -> String {
    move |e| format!("{what}: {}", ErrorChain(&e))
}

fn hresult(e: &ContainerError) -> Option<HResult> {
    match e {
        ContainerError::WaitTimeout { .. } => Some(HResult::TIMEOUT),
        other => other.hresult(),
    }
}

fn result_of(f: &Frame) -> Result<HResult, String> {
    let (base, Empty {}): (ResponseBase, Empty) =
        decode_response(&f.payload).map_err(|e| format!("undecodable answer: {e}"))?;
    Ok(base.result)
}

/// A frame header with any `Size`.
fn header(message: MessageId, size: u32, id: u64) -> Vec<u8> {
    Header { message, size, id }.to_bytes().to_vec()
}

/// Framing: cases that may end the connection (the agent must dial again and serve the next
/// host) and cases that must not.
async fn frames(cx: &Ctx<'_>, out: &mut Vec<CaseResult>) {
    async fn dropped_then_redial(cx: &Ctx<'_>, bytes: Vec<u8>, within: Duration) -> R {
        let c = cx.c();
        c.bridge().send_raw(bytes).await.map_err(|e| e.to_string())?;
        let t0 = std::time::Instant::now();
        while c.bridge().is_connected() {
            if t0.elapsed() > within {
                return Err(format!("the agent kept the connection for {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cx.reconnect().await
    }
    let stall = cx.env.stall();
    let slack = stall + Duration::from_secs(20);
    let cases: Vec<(&str, BoxFut<'_, R>)> = vec![
        (
            "frame: Size below the header ends the connection; the agent dials again",
            Box::pin(dropped_then_redial(cx, header(MessageId::START, 8, 1), slack)),
        ),
        (
            "frame: a header claiming ~4 GiB ends the connection at once (not skipped forever)",
            Box::pin(async {
                let mut b = header(MessageId::MODIFY_SETTINGS, 0xFFFF_FFF0, 2);
                b.extend_from_slice(b"{\"ContainerId\":");
                dropped_then_redial(cx, b, slack).await
            }),
        ),
        (
            "frame: a header stalled halfway ends the connection after the stall bound",
            Box::pin(async {
                let b = header(MessageId::DUMP_STACKS, 40, 3);
                dropped_then_redial(cx, b[..8].to_vec(), slack).await
            }),
        ),
        (
            "frame: a payload stalled halfway ends the connection after the stall bound",
            Box::pin(async {
                let mut b = header(MessageId::DUMP_STACKS, 16 + 100, 4);
                b.extend_from_slice(b"{\"Contain");
                dropped_then_redial(cx, b, slack).await
            }),
        ),
        (
            "frame: a request over 4 MiB is answered 0x80004005 and the connection goes on",
            Box::pin(async {
                let big = vec![b' '; (4 << 20) + 100];
                cx.expect_raw(MessageId::MODIFY_SETTINGS, &big, HResult::FAIL)
                    .await
            }),
        ),
        (
            "frame: an unknown message type is 0x80004001",
            Box::pin(cx.expect_raw(MessageId(0x1010_9901), b"{}", HResult::NOT_IMPL)),
        ),
        (
            "frame: a response type sent by the host is 0x80004001",
            Box::pin(cx.expect_raw(MessageId(0x2010_0101), b"{}", HResult::NOT_IMPL)),
        ),
        (
            "frame: a notification type sent by the host is 0x80004001",
            Box::pin(cx.expect_raw(MessageId(0x3010_0101), b"{}", HResult::NOT_IMPL)),
        ),
        (
            "frame: request ID u64::MAX is echoed",
            Box::pin(async {
                let c = cx.c();
                let f = c
                    .bridge()
                    .call_bytes_as(u64::MAX, MessageId::DUMP_STACKS, b"{}")
                    .await
                    .map_err(|e| e.to_string())?;
                ensure(f.id == u64::MAX && result_of(&f)? == HResult::S_OK, || {
                    format!("answer id {} result {:?}", f.id, result_of(&f))
                })
            }),
        ),
        (
            "frame: a request ID in the top half of the range is served",
            Box::pin(async {
                let c = cx.c();
                let f = c
                    .bridge()
                    .call_bytes_as(1 << 62, MessageId::DUMP_STACKS, b"{}")
                    .await
                    .map_err(|e| e.to_string())?;
                ensure(result_of(&f)? == HResult::S_OK, || "DumpStacks failed".into())
            }),
        ),
        (
            "frame: an empty payload is 0xC037010D",
            Box::pin(cx.expect_raw(MessageId::START, b"", HResult::INVALID_JSON)),
        ),
        (
            "frame: a payload that is not UTF-8 is 0xC037010D",
            Box::pin(cx.expect_raw(
                MessageId::CREATE,
                b"{\"ContainerId\":\"\xff\xfe\"}",
                HResult::INVALID_JSON,
            )),
        ),
    ];
    for (name, fut) in cases {
        let mut result = fut.await;
        if let Err(e) = cx.alive().await {
            result = Err(format!("{result:?}; then the agent stopped answering: {e}"));
            let _ = cx.reconnect().await;
        }
        out.push(CaseResult {
            name: name.into(),
            result,
        });
    }
}

/// Malformed JSON at every nesting level, wrong types, out-of-range numbers.
macro_rules! json_cases {
    ($cx:ident, $case:ident) => {{
        let cx = &$cx;
        for (m, name) in [
            (MessageId::CREATE, "Create"),
            (MessageId::EXECUTE_PROCESS, "ExecuteProcess"),
            (MessageId::WAIT_FOR_PROCESS, "WaitForProcess"),
            (MessageId::SIGNAL_PROCESS, "SignalProcess"),
            (MessageId::RESIZE_CONSOLE, "ResizeConsole"),
            (MessageId::GET_PROPERTIES, "GetProperties"),
            (MessageId::MODIFY_SETTINGS, "ModifySettings"),
            (MessageId::START, "Start"),
            (MessageId::SHUTDOWN_GRACEFUL, "ShutdownGraceful"),
            (MessageId::SHUTDOWN_FORCED, "ShutdownForced"),
            (MessageId::DUMP_STACKS, "DumpStacks"),
            (MessageId::DELETE_CONTAINER_STATE, "DeleteContainerState"),
        ] {
            $case!(
                format!("json: a {name} that is not JSON is 0xC037010D"),
                cx.expect_raw(m, b"this is not json", HResult::INVALID_JSON)
            );
        }
        $case!("json: an array instead of an object is 0xC037010D",
            cx.expect_raw(MessageId::CREATE, b"[1,2,3]", HResult::INVALID_JSON));
        $case!("json: truncated JSON is 0xC037010D",
            cx.expect_raw(MessageId::CREATE, b"{\"ContainerId\":\"x\",\"ContainerConfig\":\"{", HResult::INVALID_JSON));
        $case!("json: 100000 levels of nesting are 0xC037010D, no stack overflow", async {
            let mut p = b"{\"ContainerId\":\"deep\",\"X\":".to_vec();
            p.extend(std::iter::repeat_n(b'[', 100_000));
            p.extend(std::iter::repeat_n(b']', 100_000));
            p.push(b'}');
            cx.expect_raw(MessageId::CREATE, &p, HResult::INVALID_JSON).await
        });
        $case!("json: ContainerConfig as a number is 0xC037010D",
            cx.expect_json(MessageId::CREATE, "cfg-num", json!({"ContainerConfig": 5}), HResult::INVALID_JSON));
        $case!("json: ContainerConfig holding broken JSON is 0xC037010D",
            cx.expect_json(MessageId::CREATE, "cfg-broken", json!({"ContainerConfig": "{\"SchemaVersion\":"}), HResult::INVALID_JSON));
        $case!("json: a wrong type deep in the OCI spec (process.args: 5) is 0xC037010D", async {
            let inner = json!({"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": cx.env.bundle("deep-type"),
                               "OciSpecification": {"ociVersion": "1.0.2", "process": {"args": 5, "cwd": "/", "user": {"uid": 0, "gid": 0}}}});
            cx.expect_json(MessageId::CREATE, "deep-type", json!({"ContainerConfig": inner.to_string()}), HResult::INVALID_JSON).await
        });
        $case!("json: schema version 1.0 is 0xC037010D", async {
            let inner = json!({"SchemaVersion": {"Major": 1, "Minor": 0}, "OciBundlePath": cx.env.bundle("schema1")});
            cx.expect_json(MessageId::CREATE, "schema1", json!({"ContainerConfig": inner.to_string()}), HResult::INVALID_JSON).await
        });
        $case!("json: a Create without an OCI spec is 0xC037010D", async {
            let inner = json!({"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": cx.env.bundle("nospec")});
            cx.expect_json(MessageId::CREATE, "nospec", json!({"ContainerConfig": inner.to_string()}), HResult::INVALID_JSON).await
        });
        $case!("json: ProcessId as a string is 0xC037010D",
            cx.expect_json(MessageId::WAIT_FOR_PROCESS, UVM_CONTAINER_ID, json!({"ProcessId": "12", "TimeoutInMs": 0}), HResult::INVALID_JSON));
        $case!("json: a negative ProcessId is 0xC037010D",
            cx.expect_json(MessageId::SIGNAL_PROCESS, UVM_CONTAINER_ID, json!({"ProcessId": -1}), HResult::INVALID_JSON));
        $case!("json: ProcessId 1e20 is 0xC037010D",
            cx.expect_json(MessageId::WAIT_FOR_PROCESS, UVM_CONTAINER_ID, json!({"ProcessId": 1e20}), HResult::INVALID_JSON));
        $case!("json: a negative TimeoutInMs is 0xC037010D",
            cx.expect_json(MessageId::WAIT_FOR_PROCESS, UVM_CONTAINER_ID, json!({"ProcessId": 1, "TimeoutInMs": -5}), HResult::INVALID_JSON));
        $case!("json: a console height of -1 is 0xC037010D",
            cx.expect_json(MessageId::RESIZE_CONSOLE, UVM_CONTAINER_ID, json!({"ProcessId": 1, "Height": -1, "Width": 10}), HResult::INVALID_JSON));
        $case!("json: Lun 300 (over u8) is 0xC037010D",
            cx.expect_json(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, json!({"Request": {"ResourceType": "MappedVirtualDisk", "RequestType": "Add", "Settings": {"MountPath": "/run/mounts/scsi/h1", "Lun": 300}}}), HResult::INVALID_JSON));
        $case!("json: a negative Controller is 0xC037010D",
            cx.expect_json(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, json!({"Request": {"ResourceType": "MappedVirtualDisk", "RequestType": "Add", "Settings": {"MountPath": "/run/mounts/scsi/h1", "Controller": -2}}}), HResult::INVALID_JSON));
        $case!("json: Settings as a string is 0xC037010D",
            cx.expect_json(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, json!({"Request": {"ResourceType": "MappedDirectory", "RequestType": "Add", "Settings": "nope"}}), HResult::INVALID_JSON));
        $case!("json: a NUL in the container ID is refused, nothing created", async {
            let inner = json!({"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": cx.env.bundle("nul"),
                               "OciSpecification": cx.spec("nul", &["true"]).oci_spec().map_err(|e| e.to_string())?});
            cx.expect_json(MessageId::CREATE, "a\u{0}b", json!({"ContainerConfig": inner.to_string()}), HResult::FAIL).await
        });
    }};
}

/// Requests out of order, unknown IDs, and requests aimed at the wrong target.
macro_rules! order_cases {
    ($cx:ident, $case:ident) => {{
        let cx = &$cx;
        let any = |cid: &'static str, m: MessageId, body: Value, want: HResult| cx.expect_json(m, cid, body, want);
        $case!("order: ExecuteProcess in an unknown container is 0xC037010E",
            any("nope", MessageId::EXECUTE_PROCESS, json!({"Settings": {"ProcessParameters": "{\"OciProcess\":{\"args\":[\"true\"],\"cwd\":\"/\",\"user\":{\"uid\":0,\"gid\":0}}}"}}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: WaitForProcess in an unknown container is 0xC037010E",
            any("nope", MessageId::WAIT_FOR_PROCESS, json!({"ProcessId": 1, "TimeoutInMs": 0}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: SignalProcess of PID 0 is 0x80070490 (never kill(0))",
            any(UVM_CONTAINER_ID, MessageId::SIGNAL_PROCESS, json!({"ProcessId": 0}), HResult::NOT_FOUND));
        $case!("order: WaitForProcess of PID u32::MAX is 0x80070490",
            any(UVM_CONTAINER_ID, MessageId::WAIT_FOR_PROCESS, json!({"ProcessId": 4294967295u32, "TimeoutInMs": 0}), HResult::NOT_FOUND));
        $case!("order: ResizeConsole of an unknown PID is 0x80070490",
            any(UVM_CONTAINER_ID, MessageId::RESIZE_CONSOLE, json!({"ProcessId": 999_999, "Height": 10, "Width": 10}), HResult::NOT_FOUND));
        $case!("order: DeleteContainerState of an unknown container is 0xC037010E",
            any("nope", MessageId::DELETE_CONTAINER_STATE, json!({}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: GetProperties of an unknown container is 0xC037010E",
            any("nope", MessageId::GET_PROPERTIES, json!({"Query": "{\"PropertyTypes\":[\"ProcessList\"]}"}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: GetProperties of the UVM is 0x80004005",
            any(UVM_CONTAINER_ID, MessageId::GET_PROPERTIES, json!({"Query": "{}"}), HResult::FAIL));
        $case!("order: ShutdownForced of an unknown container is 0xC037010E",
            any("nope", MessageId::SHUTDOWN_FORCED, json!({}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: a container ModifySettings for an unknown container is 0xC037010E (hcsshim)",
            any("nope", MessageId::MODIFY_SETTINGS, json!({"Request": {"ResourceType": "ContainerConstraints", "RequestType": "Update", "Settings": {"Linux": {}}}}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: ContainerConstraints sent to the UVM ID is 0xC037010E (hcsshim)",
            any(UVM_CONTAINER_ID, MessageId::MODIFY_SETTINGS, json!({"Request": {"ResourceType": "ContainerConstraints", "RequestType": "Update", "Settings": {"Linux": {}}}}), HResult::SYSTEM_NOT_FOUND));
        $case!("order: an unknown ResourceType is 0x80004005",
            any(UVM_CONTAINER_ID, MessageId::MODIFY_SETTINGS, json!({"Request": {"ResourceType": "Teleporter", "RequestType": "Add", "Settings": {}}}), HResult::FAIL));
        $case!("order: a RequestType a resource does not take is 0x80004005",
            any(UVM_CONTAINER_ID, MessageId::MODIFY_SETTINGS, json!({"Request": {"ResourceType": "MappedVirtualDisk", "RequestType": "Update", "Settings": {"MountPath": "/run/mounts/scsi/h2"}}}), HResult::FAIL));
        $case!("order: a Windows-only resource is 0x80004005",
            any(UVM_CONTAINER_ID, MessageId::MODIFY_SETTINGS, json!({"Request": {"ResourceType": "HvSocket", "RequestType": "Add", "Settings": {}}}), HResult::FAIL));
        $case!("order: delete twice: the second is 0xC037010E", async {
            let pid = cx.running("twice", &["sleep", "1000"]).await?;
            cx.remove("twice", Some(pid)).await?;
            cx.expect_json(MessageId::DELETE_CONTAINER_STATE, "twice", json!({}), HResult::SYSTEM_NOT_FOUND).await
        });
        $case!("order: Create with an existing ID is 0xC037010F", async {
            let pid = cx.running("dup", &["sleep", "1000"]).await?;
            let cfg = cx.spec("dup", &["true"]).config().map_err(|e| e.to_string())?;
            let r = cx.c().create_container("dup", cfg).await;
            cx.remove("dup", Some(pid)).await?;
            let e = r.err().ok_or("the second Create succeeded")?;
            ensure(hresult(&e) == Some(HResult::SYSTEM_ALREADY_EXISTS), || format!("got {e}"))
        });
        $case!("order: exec before the init started is 0x80370105", async {
            let c = cx.c();
            let cfg = cx.spec("early", &["sleep", "1000"]).config().map_err(|e| e.to_string())?;
            c.create_container("early", cfg).await.map_err(err("Create"))?;
            let r = c.execute_process("early", exec_process(&ProcessSpec::new(["true"]), Pipes::NONE)).await;
            cx.remove("early", None).await?;
            let e = r.err().ok_or("exec before start succeeded")?;
            ensure(hresult(&e) == Some(HResult::INVALID_STATE), || format!("got {e}"))
        });
        $case!("order: starting the init twice is 0x80370105", async {
            let pid = cx.running("twostart", &["sleep", "1000"]).await?;
            let r = cx.c().execute_process("twostart", init_process(Pipes::NONE)).await;
            cx.remove("twostart", Some(pid)).await?;
            let e = r.err().ok_or("a second init start succeeded")?;
            ensure(hresult(&e) == Some(HResult::INVALID_STATE), || format!("got {e}"))
        });
        $case!("order: wait on a PID whose exit was delivered is 0x80070490; signal it too", async {
            let c = cx.c();
            let pid = cx.running("reaped", &["true"]).await?;
            let code = c.wait_for_process("reaped", pid, Some(STEP)).await.map_err(err("wait"))?;
            ensure(code == 0, || format!("exit {code}"))?;
            let again = c.wait_for_process("reaped", pid, Some(Duration::ZERO)).await;
            let sig = c.signal_process("reaped", pid, Some(15)).await;
            let _ = c.wait_notification("reaped", STEP).await;
            cx.remove("reaped", None).await?;
            ensure(again.as_ref().err().and_then(hresult) == Some(HResult::NOT_FOUND), || format!("wait again: {again:?}"))?;
            ensure(sig.as_ref().err().and_then(hresult) == Some(HResult::NOT_FOUND), || format!("signal: {sig:?}"))
        });
        $case!("order: ResizeConsole of a process without a tty is 0x80004005", async {
            let pid = cx.running("notty", &["sleep", "1000"]).await?;
            let r = cx.c().resize_console("notty", pid, 10, 10).await;
            cx.remove("notty", Some(pid)).await?;
            ensure(r.as_ref().err().and_then(hresult) == Some(HResult::FAIL), || format!("got {r:?}"))
        });
        $case!("order: a signal number out of range is 0x80004005 and the process lives on", async {
            let c = cx.c();
            let pid = cx.running("badsig", &["sleep", "1000"]).await?;
            let r = c.signal_process("badsig", pid, Some(99_999)).await;
            let still = c.wait_for_process("badsig", pid, Some(Duration::from_millis(100))).await;
            cx.remove("badsig", Some(pid)).await?;
            ensure(r.as_ref().err().and_then(hresult) == Some(HResult::FAIL), || format!("signal: {r:?}"))?;
            ensure(still.as_ref().err().and_then(hresult) == Some(HResult::TIMEOUT), || format!("it exited: {still:?}"))
        });
        $case!("order: a memory limit of 1e308 bytes is refused and the container is unharmed", async {
            let c = cx.c();
            let pid = cx.running("hugemem", &["sleep", "1000"]).await?;
            let got = cx.json(MessageId::MODIFY_SETTINGS, "hugemem", json!({"Request": {"ResourceType": "ContainerConstraints", "RequestType": "Update", "Settings": {"Linux": {"memory": {"limit": 1e308}}}}})).await?;
            let alive = c.wait_for_process("hugemem", pid, Some(Duration::from_millis(100))).await;
            cx.remove("hugemem", Some(pid)).await?;
            ensure(got != HResult::S_OK, || "accepted".into())?;
            ensure(alive.as_ref().err().and_then(hresult) == Some(HResult::TIMEOUT), || format!("it exited: {alive:?}"))
        });
        $case!("order: an exec of a missing program fails clearly and the container runs on", async {
            let c = cx.c();
            let pid = cx.running("nosuch", &["sleep", "1000"]).await?;
            let r = c.execute_process("nosuch", exec_process(&ProcessSpec::new(["/no/such/program"]), Pipes::NONE)).await;
            let alive = c.wait_for_process("nosuch", pid, Some(Duration::from_millis(100))).await;
            cx.remove("nosuch", Some(pid)).await?;
            let e = r.err().ok_or("the exec succeeded")?;
            ensure(ErrorChain(&e).to_string().contains("no/such/program"), || format!("unclear: {e}"))?;
            ensure(alive.as_ref().err().and_then(hresult) == Some(HResult::TIMEOUT), || format!("it exited: {alive:?}"))
        });
        $case!("order: a UVM process of a missing program is 0x80004005", async {
            let r = cx.c().execute_process(UVM_CONTAINER_ID, uvm_process(["/no/such/program"], Pipes::NONE)).await;
            ensure(r.as_ref().err().and_then(hresult) == Some(HResult::FAIL), || format!("got {r:?}"))
        });
    }};
}

/// Container IDs and guest paths that would escape, inject options or follow links.
macro_rules! id_and_path_cases {
    ($cx:ident, $case:ident) => {{
        let cx = &$cx;
        let create_with = |id: String, bundle: String| async move {
            let mut spec = cx.spec("idcase", &["true"]).oci_spec().map_err(|e| e.to_string())?;
            spec.set_hostname(None);
            let inner = json!({"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": bundle, "OciSpecification": spec});
            cx.json(MessageId::CREATE, &id, json!({"ContainerConfig": inner.to_string()})).await
        };
        for (what, id) in [
            ("'..'", "..".to_owned()),
            ("'../escape'", "../escape".to_owned()),
            ("a '/'", "a/b".to_owned()),
            ("an empty", String::new()),
            ("a 5000-character", "x".repeat(5000)),
            ("a newline in the", "a\nb".to_owned()),
        ] {
            $case!(format!("id: {what} container ID is refused, nothing created"), async {
                let got = create_with(id.clone(), cx.env.bundle("idcase")).await?;
                ensure(got == HResult::FAIL, || format!("got {got}"))
            });
        }
        for (what, bundle) in [
            ("'..' in", format!("{}/../escape", cx.env.bundle("b1"))),
            ("a control character in", format!("{}\u{7}x", cx.env.bundle("b2"))),
            ("',' in", format!("{},x", cx.env.bundle("b3"))),
        ] {
            $case!(format!("path: {what} OciBundlePath is refused, nothing created"), async {
                let got = create_with(format!("bundle-{}", what.len()), bundle.clone()).await?;
                ensure(got == HResult::FAIL, || format!("got {got}"))
            });
        }
        $case!("path: an OciBundlePath through a symlink is refused", async {
            let link = cx.env.symlink_under_root().await?;
            let got = create_with("bundle-link".into(), format!("{link}/tmp/rgcs-hostile-bundle")).await?;
            ensure(got == HResult::FAIL, || format!("got {got}"))
        });
        let modify = |rt: &'static str, settings: Value| {
            cx.expect_json(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID,
                json!({"Request": {"ResourceType": rt, "RequestType": "Add", "Settings": settings}}), HResult::FAIL)
        };
        for (what, path) in [
            ("'..'", "/run/mounts/../../etc/x"),
            ("option injection with ','", "/run/mounts/scsi/m1,dev"),
            ("option injection with ':'", "/run/mounts/scsi/m1:x"),
            ("a control character", "/run/mounts/scsi/m\u{1b}1"),
            ("a relative", "run/mounts/scsi/m1"),
            ("an outside-the-roots", "/etc/rgcs-hostile"),
        ] {
            $case!(format!("path: MappedVirtualDisk with {what} MountPath is refused"),
                modify("MappedVirtualDisk", json!({"MountPath": path, "Lun": 5})));
        }
        $case!("path: MappedDirectory with '..' is refused",
            modify("MappedDirectory", json!({"MountPath": "/run/mounts/plan9/../../../etc", "Port": 564, "ShareName": "0"})));
        $case!("path: MappedDirectory through a symlink under a root is refused", async {
            let link = cx.env.symlink_under_root().await?;
            modify("MappedDirectory", json!({"MountPath": format!("{link}/etc/x"), "Port": 564, "ShareName": "0"})).await
        });
        $case!("path: VPMemDevice with '..' is refused",
            modify("VPMemDevice", json!({"MountPath": "/run/layers/../../x", "DeviceNumber": 0})));
        $case!("path: CombinedLayers with a '..' ContainerRootPath is refused",
            modify("CombinedLayers", json!({"ContainerRootPath": "/run/gcs/c/../../../etc", "Layers": [{"Path": "/run/layers/p0"}]})));
        $case!("path: CombinedLayers with a hostile layer path is refused",
            modify("CombinedLayers", json!({"ContainerRootPath": "/run/gcs/c/hl/rootfs", "Layers": [{"Path": "/run/layers/p0,upperdir=/"}]})));
        $case!("path: CombinedLayers with a hostile ScratchPath is refused",
            modify("CombinedLayers", json!({"ContainerRootPath": "/run/gcs/c/hs/rootfs", "Layers": [{"Path": "/run/layers/p0"}], "ScratchPath": "/run/gcs/c/hs/../../../../tmp"})));
    }};
}

/// Concurrent requests on one container.
macro_rules! concurrency_cases {
    ($cx:ident, $case:ident) => {{
        let cx = &$cx;
        $case!(
            "concurrency: 10 Creates of one ID: one wins, the rest are refused",
            async {
                let c = cx.c();
                let cfg = cx
                    .spec("race", &["sleep", "1000"])
                    .config()
                    .map_err(|e| e.to_string())?;
                let calls = (0..10).map(|_| c.create_container("race", cfg.clone()));
                let results = futures_join_all(calls).await;
                let ok = results.iter().filter(|r| r.is_ok()).count();
                let refused = results
                    .iter()
                    .filter(|r| {
                        r.as_ref().err().and_then(hresult).is_some_and(|h| {
                            h == HResult::SYSTEM_ALREADY_EXISTS || h == HResult::INVALID_STATE
                        })
                    })
                    .count();
                cx.remove("race", None).await?;
                ensure(ok == 1 && refused == 9, || {
                    format!("{ok} succeeded, {refused} refused: {results:?}")
                })
            }
        );
        $case!("concurrency: 8 execs at once in one container all run", async {
            let c = cx.c();
            let pid = cx.running("many", &["sleep", "1000"]).await?;
            let p = ProcessSpec::new(["sh", "-c", "echo $$"]);
            let runs = (0..8).map(|_| async {
                let (pid, stdio) = c
                    .execute_process("many", exec_process(&p, Pipes::OUTPUT))
                    .await
                    .map_err(err("exec"))?;
                let out = stdio
                    .capture_for(b"", STEP)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no EOF")?;
                let code = c
                    .wait_for_process("many", pid, Some(STEP))
                    .await
                    .map_err(err("wait"))?;
                Ok::<_, String>((pid, code, out.stdout_text()))
            });
            let results = futures_join_all(runs).await;
            cx.remove("many", Some(pid)).await?;
            let mut pids = Vec::new();
            for r in results {
                let (p, code, out) = r?;
                ensure(code == 0 && !out.trim().is_empty(), || {
                    format!("exec {p}: exit {code}, output {out:?}")
                })?;
                pids.push(p);
            }
            pids.sort_unstable();
            pids.dedup();
            ensure(pids.len() == 8, || format!("PIDs not distinct: {pids:?}"))
        });
        $case!(
            "concurrency: wait, signal and delete at once leave a consistent state",
            async {
                let c = cx.c();
                let pid = cx.running("trio", &["sleep", "1000"]).await?;
                let (w, s) = tokio::join!(
                    c.wait_for_process("trio", pid, Some(STEP)),
                    c.signal_process("trio", pid, Some(9)),
                );
                ensure(s.is_ok(), || format!("signal: {s:?}"))?;
                ensure(w.as_ref().ok() == Some(&137), || format!("wait: {w:?}"))?;
                let n = c
                    .wait_notification("trio", STEP)
                    .await
                    .map_err(err("notification"))?;
                ensure(n.notification_type == NotificationType::ForcedExit, || {
                    format!("{n:?}")
                })?;
                let (d1, d2) =
                    tokio::join!(c.delete_container_state("trio"), c.delete_container_state("trio"));
                let oks = [d1.is_ok(), d2.is_ok()].iter().filter(|x| **x).count();
                ensure(oks == 1, || format!("deletes: {d1:?} / {d2:?}"))
            }
        );
        $case!(
            "concurrency: a delete while an exec is being set up leaves nothing running",
            async {
                let c = cx.c();
                let pid = cx.running("midexec", &["sleep", "1000"]).await?;
                let p = ProcessSpec::new(["sleep", "1000"]);
                let (e, k) = tokio::join!(
                    c.execute_process("midexec", exec_process(&p, Pipes::NONE)),
                    async {
                        let _ = c.signal_process("midexec", pid, Some(9)).await;
                        let _ = c.wait_for_process("midexec", pid, Some(STEP)).await;
                        c.delete_container_state("midexec").await
                    }
                );
                ensure(k.is_ok(), || format!("delete: {k:?}"))?;
                if let Ok((exec_pid, _)) = e {
                    // The exec won the race: it must be gone with the container's cgroup.
                    let r = c.signal_process("midexec", exec_pid, Some(0)).await;
                    ensure(r.is_err(), || format!("exec {exec_pid} still addressable"))?;
                }
                Ok(())
            }
        );
    }};
}

/// Runs every case against the agent behind `client`; one result per case, then the leak check.
pub async fn run(env: &dyn Env, client: Arc<ContainerClient>) -> Vec<CaseResult> {
    let cx = Ctx {
        env,
        client: Mutex::new(client),
    };
    let mut out = Vec::new();
    let before = env.snapshot().await;
    macro_rules! case {
        ($name:expr, $body:expr) => {{
            let mut result: R = $body.await;
            if let Err(e) = cx.alive().await {
                result = Err(match result {
                    Ok(()) => format!("the agent stopped answering: {e}"),
                    Err(first) => format!("{first}; then the agent stopped answering: {e}"),
                });
                // Keep going on a fresh connection if the agent dialled again.
                let _ = cx.reconnect().await;
            }
            out.push(CaseResult {
                name: $name.to_string(),
                result,
            });
        }};
    }
    frames(&cx, &mut out).await;
    json_cases!(cx, case);
    order_cases!(cx, case);
    id_and_path_cases!(cx, case);
    concurrency_cases!(cx, case);
    // Nothing left behind by the whole suite.
    let leak = match (before, env.snapshot().await) {
        (Ok(b), Ok(a)) => ensure(a == b, || format!("before {b:?}\nafter  {a:?}")),
        (Err(e), _) | (_, Err(e)) => Err(format!("snapshot: {e}")),
    };
    out.push(CaseResult {
        name: "nothing left behind (mounts, processes, cgroups, state, fds)".into(),
        result: leak,
    });
    out
}

/// Joins futures without an extra crate: polls each in turn on the current task.
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

/// The failed cases, one line each; empty when all passed.
pub fn failures(results: &[CaseResult]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| r.result.as_ref().err().map(|e| format!("{}: {e}", r.name)))
        .collect()
}
