//! A task's processes: Start (the init or an exec, with its stdio wired and a waiter whose
//! answer is the exit), Exec, Kill, ResizePty, and the OOM watch.

use super::*;

/// How long after an exit the output may still flow before the exit is reported.
const DRAIN: Duration = Duration::from_secs(2);
/// How often a running container's OOM-kill count is read.
const OOM_POLL: Duration = Duration::from_secs(2);

impl Shim {
    pub(super) async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let (task, proc) = self.proc(id, exec_id)?;
        if !proc.begin_start() {
            return Err(ShimError::Precondition(format!(
                "process {id}/{exec_id} was started already"
            )));
        }
        match self.start_guest(&task, &proc, id, exec_id).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                proc.start_failed();
                Err(e)
            }
        }
    }

    pub(super) async fn start_guest(
        &self,
        task: &Task,
        proc: &Arc<Proc>,
        id: &str,
        exec_id: &str,
    ) -> Result<u32, ShimError> {
        let vm = self.vm().await?;
        let began = std::time::Instant::now();
        let opened =
            Opened::open(&proc.stdio).map_err(|e| ShimError::io("open the stdio FIFOs".into(), e))?;
        let pipes = opened.pipes();
        let params = match &proc.spec {
            None => {
                vm.client.start(id).await.map_err(|e| ShimError::from_guest(&e))?;
                init_process(pipes)
            }
            Some(p) => exec_params(p, pipes),
        };
        let (guest_pid, host) = vm
            .client
            .execute_process(id, params)
            .await
            .map_err(|e| ShimError::from_guest(&e))?;
        proc.set_wired(opened.wire(host));
        proc.set_running(guest_pid);
        tracing::info!(task = %id, exec = %exec_id, start_ms = began.elapsed().as_millis(), "task started");
        let pid = vm.pid();
        if exec_id.is_empty() {
            if task.kind == Kind::Sandbox {
                lock(&self.pods).sandboxes.insert(id.to_owned(), guest_pid);
            }
            self.events
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    &TaskStart {
                        container_id: id.to_owned(),
                        pid,
                        ..Default::default()
                    },
                )
                .await;
            if task.kind != Kind::Sandbox {
                tokio::spawn(watch_oom(
                    Arc::clone(&vm),
                    self.events.clone(),
                    id.to_owned(),
                    Arc::clone(proc),
                ));
            }
        } else {
            self.events
                .publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    &TaskExecStarted {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        pid,
                        ..Default::default()
                    },
                )
                .await;
        }
        // The waiter: the guest's answer is the exit; the output is drained before it is told.
        let events = self.events.clone();
        let id = id.to_owned();
        let proc = Arc::clone(proc);
        tokio::spawn(async move {
            let waited = vm.client.wait_for_process(&id, guest_pid, None).await;
            proc.set_exited_in_guest();
            drop(vm);
            let code = match waited {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(task = %id, exec = %proc.exec_id, error = %error_chain(&e), "wait failed; reporting 255");
                    255
                }
            };
            let wired = lock(&proc.wired).take();
            if let Some(mut w) = wired {
                w.drain(DRAIN).await;
                *lock(&proc.wired) = Some(w);
            }
            if proc.set_exited(code) {
                publish_exit(&events, &id, &proc, pid).await;
            }
        });
        Ok(pid)
    }

    pub(super) async fn kill(&self, req: &api::KillRequest) -> Result<(), ShimError> {
        let (task, proc) = self.proc(&req.id, &req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ShimError::Invalid(format!("signal {}", req.signal)))?;
        let finished = || ShimError::NotFound(format!("process {}/{} already finished", req.id, req.exec_id));
        let init_all = req.all && req.exec_id.is_empty();
        match proc.phase() {
            Phase::Starting => Err(ShimError::Precondition(format!(
                "process {}/{} is being started",
                req.id, req.exec_id
            ))),
            Phase::Created => {
                // Never started: nothing runs in the guest; the process ends as if signalled.
                if proc.set_exited(128 + signal.unsigned_abs()) {
                    publish_exit(&self.events, &req.id, &proc, self.host_pid().await).await;
                }
                Ok(())
            }
            Phase::Stopped if init_all && !task.live().is_empty() => {
                // The init is gone but execs live on: `all` reaches them.
                let vm = self.vm().await?;
                for p in task.live() {
                    if let Phase::Running(pid) = p.phase() {
                        let _ = vm.client.signal_process(&req.id, pid, Some(signal)).await;
                    }
                }
                Ok(())
            }
            Phase::Stopped => Err(finished()),
            Phase::Running(_) if proc.gone() && !init_all => Err(finished()),
            Phase::Running(pid) => {
                let vm = self.vm().await?;
                if init_all && signal == libc::SIGKILL && task.kind != Kind::Sandbox {
                    // Every process of the container: the guest's forced shutdown.
                    return match vm.client.shutdown_container(&req.id, ShutdownKind::Forced).await {
                        Ok(()) => Ok(()),
                        Err(_) if proc.gone() => Err(finished()),
                        Err(e) => Err(ShimError::from_guest(&e)),
                    };
                }
                if init_all {
                    let props = vm
                        .client
                        .get_properties(&req.id, &[PropertyType::ProcessList])
                        .await;
                    for p in props.map(|p| p.process_list).unwrap_or_default() {
                        if p.process_id != pid {
                            let _ = vm
                                .client
                                .signal_process(&req.id, p.process_id, Some(signal))
                                .await;
                        }
                    }
                }
                match vm.client.signal_process(&req.id, pid, Some(signal)).await {
                    Ok(()) => Ok(()),
                    Err(_) if proc.gone() => Err(finished()),
                    Err(e) => Err(ShimError::from_guest(&e)),
                }
            }
        }
    }

    pub(super) async fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::Invalid("an exec needs an ID".into()));
        }
        if !matches!(task.init.phase(), Phase::Running(_)) {
            return Err(ShimError::Precondition(format!("task {} is not running", req.id)));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::Invalid("an exec needs a process spec".into()))?;
        let mut process: Process = serde_json::from_slice(&spec.value)
            .map_err(|e| ShimError::Invalid(format!("exec process spec: {e}")))?;
        process.set_terminal(Some(req.terminal));
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if !task.add_exec(Proc::new(&req.exec_id, stdio, Some(process))) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} of task {}",
                req.exec_id, req.id
            )));
        }
        self.events
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                &TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(())
    }

    pub(super) async fn resize(&self, req: &api::ResizePtyRequest) -> Result<(), ShimError> {
        let (_, proc) = self.proc(&req.id, &req.exec_id)?;
        let Phase::Running(pid) = proc.phase() else {
            return Err(ShimError::Precondition("the process is not running".into()));
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.vm()
            .await?
            .client
            .resize_console(&req.id, pid, clamp(req.height), clamp(req.width))
            .await
            .map_err(|e| ShimError::from_guest(&e))
    }
}

/// `ProcessParameters` of an exec from containerd's process spec.
pub(super) fn exec_params(p: &Process, pipes: Pipes) -> ProcessParameters {
    let tty = p.terminal().unwrap_or(false);
    ProcessParameters {
        create_std_in_pipe: pipes.stdin,
        create_std_out_pipe: pipes.stdout,
        create_std_err_pipe: pipes.stderr && !tty,
        oci_process: Some(p.clone()),
        ..ProcessParameters::default()
    }
}

pub(super) async fn publish_exit(events: &Publisher, id: &str, proc: &Proc, pid: u32) {
    let Some(exit) = proc.exit() else { return };
    let ev = TaskExit {
        container_id: id.to_owned(),
        id: if proc.exec_id.is_empty() {
            id.to_owned()
        } else {
            proc.exec_id.clone()
        },
        pid,
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    };
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, &ev).await;
}

/// Publishes TaskOOM whenever the container's OOM-kill count rises, while its init runs.
pub(super) async fn watch_oom(vm: Arc<Vm>, events: Publisher, id: String, init: Arc<Proc>) {
    let mut seen = 0;
    loop {
        let count = vm
            .client
            .get_properties(&id, &[PropertyType::Statistics])
            .await
            .ok()
            .and_then(|p| p.lcow_metrics)
            .and_then(|m| m.memory_oom_control)
            .map_or(0, |o| o.oom_kill);
        if count > seen {
            seen = count;
            events
                .publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    &TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
        tokio::select! {
            _ = init.wait() => return,
            () = tokio::time::sleep(OOM_POLL) => {}
        }
    }
}
