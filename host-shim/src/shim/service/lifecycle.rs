//! A task's life in the shim: Create (the UVM booted for a sandbox or standalone task, the
//! container made in the guest, its rootfs and binds shared), Delete (the guest container, the
//! shares and mounts, and the UVM with the task that booted it), and the UVM's own end.

use super::process::publish_exit;
use super::*;

impl Shim {
    pub(super) async fn create(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
        rgcs_client::spec::check_id(&req.id).map_err(|e| ShimError::Invalid(e.to_string()))?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restore from a checkpoint".into()));
        }
        if lock(&self.tasks).contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("task {}", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| ShimError::Invalid(format!("{}/config.json: {e}", req.bundle)))?;
        let kind = shimspec::kind(&spec);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // The UVM: booted by a sandbox or standalone task, joined by workloads.
        let began = std::time::Instant::now();
        let mut creating = None;
        let (vm, booted) = match &kind {
            Kind::Workload { sandbox } => {
                {
                    let mut pods = lock(&self.pods);
                    if !pods.sandboxes.contains_key(sandbox) {
                        return Err(ShimError::Precondition(format!(
                            "sandbox {sandbox} is not running"
                        )));
                    }
                    pods.creating += 1;
                }
                creating = Some(Creating(&self.pods));
                (self.vm().await?, false)
            }
            Kind::Sandbox | Kind::Standalone => {
                let mut slot = self.vm.lock().await;
                if slot.is_some() {
                    return Err(ShimError::Precondition(format!(
                        "this shim already runs a UVM; task {} needs its own shim",
                        req.id
                    )));
                }
                let vm = Arc::new(Vm::boot(&self.boot, &shimspec::net_plan(&spec), &req.id).await?);
                *slot = Some(Arc::clone(&vm));
                drop(slot);
                self.watch_vm(Arc::clone(&vm));
                (vm, true)
            }
        };
        let boot_ms = if booted { began.elapsed().as_millis() } else { 0 };
        let made = self.create_in_guest(&vm, req, &bundle, spec, &kind, &stdio).await;
        match made {
            Ok((task, rootfs_ms, create_ms)) => {
                tracing::info!(task = %req.id, boot_ms, rootfs_ms, create_ms, "task created");
                lock(&self.tasks).insert(req.id.clone(), Arc::new(task));
                drop(creating);
                let pid = vm.pid();
                self.events
                    .publish(
                        topics::TASK_CREATE_EVENT_TOPIC,
                        &TaskCreate {
                            container_id: req.id.clone(),
                            bundle: req.bundle.clone(),
                            rootfs: req.rootfs.clone(),
                            io: MessageField::some(TaskIO {
                                stdin: req.stdin.clone(),
                                stdout: req.stdout.clone(),
                                stderr: req.stderr.clone(),
                                terminal: req.terminal,
                                ..Default::default()
                            }),
                            checkpoint: req.checkpoint.clone(),
                            pid,
                            ..Default::default()
                        },
                    )
                    .await;
                Ok(pid)
            }
            Err(e) => {
                if booted {
                    self.vm.lock().await.take();
                    power_off(vm).await;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn create_in_guest(
        &self,
        vm: &Arc<Vm>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        mut spec: Spec,
        kind: &Kind,
        stdio: &StdioPaths,
    ) -> Result<(Task, u128, u128), ShimError> {
        let began = std::time::Instant::now();
        let id = req.id.as_str();
        let mut task = Task {
            id: id.to_owned(),
            bundle: bundle.to_path_buf(),
            kind: kind.clone(),
            init: Proc::new("", stdio.clone(), None),
            execs: Mutex::new(HashMap::new()),
            shares: tokio::sync::Mutex::new(Vec::new()),
            host_rootfs: None,
            rootfs_mounts: req.rootfs.clone(),
        };
        let config = if *kind == Kind::Sandbox {
            // The pod's sandbox runs rgcs's own pause; the pause image is not needed in the UVM.
            prepare_pause_rootfs(&vm.client)
                .await
                .map_err(|e| ShimError::Guest(format!("prepare /pause: {}", error_chain(&e))))?;
            let mut s = ContainerSpec::new(id, PAUSE_ROOTFS, ProcessSpec::new(["/pause"]));
            s.pod = Some(PodRole::Sandbox);
            s.readonly_rootfs = true;
            s.hostname = spec.hostname().clone();
            s.network_namespace = Some(id.to_owned());
            if !vm.has_nic().await {
                s.annotations
                    .insert("io.microsoft.cri.skip-pod-networking".into(), "true".into());
            }
            s.config().map_err(|e| ShimError::Invalid(e.to_string()))?
        } else {
            let (sandbox_pid, ns) = match kind {
                Kind::Workload { sandbox } => {
                    (lock(&self.pods).sandboxes.get(sandbox).copied(), sandbox.clone())
                }
                _ => (None, id.to_owned()),
            };
            let guest_bundle = bundle_path(id);
            let guest_root = format!("{guest_bundle}/rootfs");
            let host_root = bundle.join("rootfs");
            let binds = shimspec::adapt(&mut spec, &guest_root, stdio.terminal, sandbox_pid, &ns)?;
            rootfs::mount_host_rootfs(&req.rootfs, &host_root)?;
            task.host_rootfs = Some(host_root.clone());
            let shared = self
                .share_all(vm, &task, &mut spec, &host_root, &guest_root, &binds)
                .await;
            if let Err(e) = shared {
                self.release(vm, &task).await;
                return Err(e);
            }
            ContainerConfig {
                schema_version: SchemaVersion::V2_1,
                oci_specification: Some(spec),
                scratch_dir_path: format!("{guest_bundle}/scratch/{id}"),
                oci_bundle_path: guest_bundle,
            }
        };
        let rootfs_ms = began.elapsed().as_millis();
        if let Err(e) = vm.client.create_container(id, config).await {
            self.release(vm, &task).await;
            return Err(ShimError::from_guest(&e));
        }
        Ok((task, rootfs_ms, began.elapsed().as_millis() - rootfs_ms))
    }

    pub(super) async fn share_all(
        &self,
        vm: &Vm,
        task: &Task,
        spec: &mut Spec,
        host_root: &Path,
        guest_root: &str,
        binds: &[shimspec::HostBind],
    ) -> Result<(), ShimError> {
        let mut storage = vm.storage.lock().await;
        let mut shares = task.shares.lock().await;
        let err = |e: crate::rootfs::RootfsError| ShimError::Guest(error_chain(&e));
        shares.push(
            storage
                .share_dir(&vm.uvm, &vm.bridge, host_root, guest_root, false)
                .await
                .map_err(err)?,
        );
        for (i, b) in binds.iter().enumerate() {
            let mount = format!("{}/mounts/m{i}", bundle_path(&task.id));
            shares.push(
                storage
                    .share_dir(&vm.uvm, &vm.bridge, &b.dir, &mount, b.read_only)
                    .await
                    .map_err(err)?,
            );
            shimspec::set_bind_source(spec, b, &mount);
        }
        Ok(())
    }

    /// Undoes shares and the host rootfs mount (guest container already gone or never made).
    pub(super) async fn release(&self, vm: &Vm, task: &Task) {
        let shares: Vec<_> = task.shares.lock().await.drain(..).collect();
        if !shares.is_empty() {
            let mut storage = vm.storage.lock().await;
            for s in shares.iter().rev() {
                storage.unshare_dir(&vm.bridge, s).await;
            }
        }
        if let Some(root) = &task.host_rootfs {
            rootfs::unmount_host_rootfs(root);
        }
    }

    /// When QEMU exits on its own, every process of every task has exited.
    pub(super) fn watch_vm(&self, vm: Arc<Vm>) {
        let exited = vm.uvm.qemu_exited();
        drop(vm);
        let events = self.events.clone();
        let tasks = Arc::clone(&self.tasks);
        tokio::spawn(async move {
            let status = exited.await;
            let all: Vec<Arc<Task>> = lock(&tasks).values().cloned().collect();
            if all.is_empty() {
                return;
            }
            tracing::error!(?status, "the UVM exited under its tasks");
            for t in all {
                for p in t.live() {
                    if p.set_exited(128 + 9) {
                        publish_exit(&events, &t.id, &p, 0).await;
                    }
                }
            }
        });
    }

    /// Removes every task and powers the UVM off (Shutdown with `now`, SIGTERM).
    pub async fn stop_all(&self) {
        let tasks: Vec<Arc<Task>> = lock(&self.tasks).drain().map(|(_, t)| t).collect();
        let vm = self.vm.lock().await.take();
        for t in &tasks {
            for p in lock(&t.execs).values() {
                p.stop_io();
            }
            t.init.stop_io();
            match &vm {
                Some(vm) => self.release(vm, t).await,
                None => {
                    if let Some(root) = &t.host_rootfs {
                        rootfs::unmount_host_rootfs(root);
                    }
                }
            }
        }
        if let Some(vm) = vm {
            power_off(vm).await;
        }
    }

    pub(super) async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let (task, proc) = self.proc(id, exec_id)?;
        match proc.phase() {
            Phase::Running(_) | Phase::Starting => {
                return Err(ShimError::Precondition(format!(
                    "process {id}/{exec_id} is running: kill it first"
                )))
            }
            // Never started: it ends now (a Wait on it returns).
            Phase::Created => {
                proc.set_exited(128 + 9);
            }
            Phase::Stopped => {}
        }
        let pid = self.host_pid().await;
        let exit = proc.exit();
        let resp = api::DeleteResponse {
            pid,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.as_ref().map(|e| e.at.clone()).into(),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            proc.stop_io();
            task.remove_exec(exec_id);
            return Ok(resp);
        }
        if task.kind == Kind::Sandbox {
            // Under the pods lock: no workload Create may start once the sandbox is going.
            let mut pods = lock(&self.pods);
            let others: Vec<String> = lock(&self.tasks).keys().filter(|k| *k != id).cloned().collect();
            if !others.is_empty() || pods.creating > 0 {
                return Err(ShimError::Precondition(format!(
                    "sandbox {id} still has containers {others:?} ({} being created)",
                    pods.creating
                )));
            }
            pods.sandboxes.remove(id);
        }
        let live = task.live();
        if !live.is_empty() {
            // Execs outliving their init (a shared PID namespace): the container goes with them.
            if let Some(vm) = self.vm.lock().await.clone() {
                let _ = vm.client.shutdown_container(id, ShutdownKind::Forced).await;
            }
            for p in live {
                if p.set_exited(128 + 9) {
                    publish_exit(&self.events, id, &p, pid).await;
                }
            }
        }
        for p in lock(&task.execs).drain().map(|(_, p)| p) {
            p.stop_io();
        }
        proc.stop_io();
        if let Some(vm) = self.vm.lock().await.clone() {
            if let Err(e) = vm.client.delete_container_state(id).await {
                tracing::warn!(task = %id, error = %error_chain(&e), "guest delete");
            }
            self.release(&vm, &task).await;
        } else if let Some(root) = &task.host_rootfs {
            rootfs::unmount_host_rootfs(root);
        }
        lock(&self.tasks).remove(id);
        if !matches!(task.kind, Kind::Workload { .. }) {
            if let Some(vm) = self.vm.lock().await.take() {
                power_off(vm).await;
            }
        }
        self.events
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                &TaskDelete {
                    container_id: id.to_owned(),
                    pid,
                    exit_status: resp.exit_status,
                    exited_at: resp.exited_at.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(resp)
    }
}

/// Halts the VM (which ends every request holding it), then powers it off once nothing holds
/// it any more.
pub(super) async fn power_off(vm: Arc<Vm>) {
    vm.halt().await;
    let mut vm = vm;
    for _ in 0..100 {
        match Arc::try_unwrap(vm) {
            Ok(v) => return v.power_off().await,
            Err(v) => vm = v,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!("the UVM is still in use 5 s after it halted; killing QEMU");
    if let Ok(pid) = i32::try_from(vm.pid()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}
