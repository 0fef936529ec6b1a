//! What the VM-tier tests share: a case returns `Err(reason)` instead of panicking (one broken
//! call must not hide the state of the others), every guest call has a step limit, and a
//! [`Cases`] collects the results and fails the test at the end listing every failed case.

use std::future::Future;
use std::time::Duration;

use rgcs_client::stdio::{Captured, HostStdio};
use rgcs_client::{
    exec_process, init_process, ContainerClient, ContainerSpec, Pipes, ProcessSpec, ShutdownKind,
    BUSYBOX_ROOTFS,
};
use rgcs_protocol::error_chain;
use rgcs_protocol::message::NotificationType;

/// Per-step limit (TCG is slow; nothing legitimate takes this long).
pub const STEP: Duration = Duration::from_secs(60);

/// A case's result.
pub type CaseResult = Result<(), String>;

/// `Err(msg())` unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Maps an error to "what: the whole chain".
pub fn err<E: std::error::Error>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {}", error_chain(&e))
}

/// `f` within [`STEP`].
pub async fn step<T>(what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| format!("{what}: no answer within {STEP:?}"))
}

/// A UVM-level ModifySettings of `resource`; its HRESULT (`S_OK` on success).
pub async fn modify_uvm(
    c: &ContainerClient,
    request: rgcs_protocol::message::RequestType,
    resource: rgcs_protocol::message::Resource,
) -> Result<rgcs_protocol::HResult, String> {
    use rgcs_protocol::message::{Empty, ModificationRequest, ModifySettingsRequest, UVM_CONTAINER_ID};
    let what = format!("ModifySettings {:?} {:?}", request, resource.resource_type());
    let body = ModifySettingsRequest {
        request: ModificationRequest::new(request, resource),
    };
    match step(
        &what,
        c.bridge()
            .call::<_, Empty>(rgcs_protocol::MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &body),
    )
    .await?
    {
        Ok(_) => Ok(rgcs_protocol::HResult::S_OK),
        Err(e) => e.hresult().ok_or_else(|| format!("{what}: {e}")),
    }
}

/// A container over the busybox rootfs the harness prepares in the UVM.
pub fn busybox(id: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec::new(id, BUSYBOX_ROOTFS, ProcessSpec::new(args.iter().copied()))
}

/// Creates `spec`'s container and starts its init with `pipes`; returns the init PID and stdio.
pub async fn create_and_start(
    c: &ContainerClient,
    spec: &ContainerSpec,
    pipes: Pipes,
) -> Result<(u32, HostStdio), String> {
    let id = &spec.id;
    let config = spec.config().map_err(err("spec"))?;
    step("Create", c.create_container(id, config))
        .await?
        .map_err(err(&format!("Create {id}")))?;
    step("Start", c.start(id))
        .await?
        .map_err(err(&format!("Start {id}")))?;
    step(
        "ExecuteProcess (init)",
        c.execute_process(id, init_process(pipes)),
    )
    .await?
    .map_err(err(&format!("ExecuteProcess init of {id}")))
}

/// Runs a container to completion: returns (exit code, output, notification type); deletes it.
pub async fn run_container(
    c: &ContainerClient,
    spec: &ContainerSpec,
    pipes: Pipes,
    input: &[u8],
) -> Result<(u32, Captured, NotificationType), String> {
    let id = spec.id.clone();
    let (pid, stdio) = create_and_start(c, spec, pipes).await?;
    let (out, code) = tokio::join!(
        stdio.capture_for(input, STEP),
        step("WaitForProcess", c.wait_for_process(&id, pid, None))
    );
    let code = code?.map_err(err(&format!("WaitForProcess init of {id}")))?;
    let out = out
        .map_err(err("stdio"))?
        .ok_or_else(|| format!("{id}: stdout/stderr did not reach EOF within {STEP:?}"))?;
    let note = c
        .wait_notification(&id, STEP)
        .await
        .map_err(err("notification"))?;
    step("DeleteContainerState", c.delete_container_state(&id))
        .await?
        .map_err(err(&format!("DeleteContainerState {id}")))?;
    Ok((code, out, note.notification_type))
}

/// Execs `p` in `id`, feeding `input`; returns (exit code, output).
pub async fn exec(
    c: &ContainerClient,
    id: &str,
    p: &ProcessSpec,
    pipes: Pipes,
    input: &[u8],
) -> Result<(u32, Captured), String> {
    let (pid, stdio) = step(
        "ExecuteProcess (exec)",
        c.execute_process(id, exec_process(p, pipes)),
    )
    .await?
    .map_err(err(&format!("exec {:?} in {id}", p.args)))?;
    let (out, code) = tokio::join!(
        stdio.capture_for(input, STEP),
        step("WaitForProcess", c.wait_for_process(id, pid, None))
    );
    let code = code?.map_err(err(&format!("WaitForProcess exec {pid} in {id}")))?;
    let out = out
        .map_err(err("stdio"))?
        .ok_or_else(|| format!("exec {:?} in {id}: output did not end", p.args))?;
    Ok((code, out))
}

/// `sh -c script` in `id`; its stdout when it exits 0, else an error with both streams.
pub async fn sh(c: &ContainerClient, id: &str, script: &str) -> Result<String, String> {
    let (code, out) = exec(
        c,
        id,
        &ProcessSpec::new(["/bin/sh", "-c", script]),
        Pipes::ALL,
        b"",
    )
    .await?;
    ensure(code == 0, || {
        format!(
            "`{script}` in {id}: exit {code}, stdout {:?}, stderr {:?}",
            out.stdout_text(),
            out.stderr_text()
        )
    })?;
    Ok(out.stdout_text())
}

/// A long-running container (init `sleep`), started without stdio; its init PID.
pub async fn sleeper(c: &ContainerClient, spec: ContainerSpec) -> Result<u32, String> {
    let (pid, _stdio) = create_and_start(c, &spec, Pipes::NONE).await?;
    Ok(pid)
}

/// Kills a sleeper's init (137, ForcedExit), waits for it and deletes the container.
pub async fn remove(c: &ContainerClient, id: &str, pid: u32) -> CaseResult {
    step("Shutdown", c.shutdown_container(id, ShutdownKind::Forced))
        .await?
        .map_err(err(&format!("ShutdownForced {id}")))?;
    let code = step("WaitForProcess", c.wait_for_process(id, pid, None))
        .await?
        .map_err(err(&format!("WaitForProcess init of {id}")))?;
    ensure(code == 137, || {
        format!("{id}: forced shutdown exit code {code}, want 137")
    })?;
    let n = c.wait_notification(id, STEP).await.map_err(err("notification"))?;
    ensure(n.notification_type == NotificationType::ForcedExit, || {
        format!("{id}: notification {:?}, want ForcedExit", n.notification_type)
    })?;
    step("DeleteContainerState", c.delete_container_state(id))
        .await?
        .map_err(err(&format!("DeleteContainerState {id}")))
}

/// The results of a test's cases.
#[derive(Debug, Default)]
pub struct Cases {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Cases {
    /// No case run yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one case and records its result.
    pub async fn run(&mut self, name: &str, case: impl Future<Output = CaseResult>) {
        match case.await {
            Ok(()) => self.passed.push(name.to_owned()),
            Err(e) => self.fail(name, &e),
        }
    }

    /// Records a failure found outside a case.
    pub fn fail(&mut self, name: &str, why: &str) {
        eprintln!("case {name} FAILED: {why}");
        self.failed.push(format!("{name}: {why}"));
    }

    /// Fails the test if any case failed, listing them all.
    pub fn finish(self) {
        eprintln!("passed cases: {:?}", self.passed);
        assert!(
            self.failed.is_empty(),
            "{} failed case(s):\n{}",
            self.failed.len(),
            self.failed.join("\n")
        );
    }
}
