//! The control server: one UVM's container commands, served on `DIR/control.sock`.

#[allow(clippy::wildcard_imports)]
use super::*;

type Exit = Option<Result<u32, String>>;

#[derive(Debug, Default)]
struct ServerState {
    /// Container → (init PID once started, init has a tty).
    containers: HashMap<String, (Option<u32>, bool)>,
    /// (container, PID) → exit code once known.
    exits: HashMap<(String, u32), watch::Receiver<Exit>>,
    /// Whether the busybox rootfs exists.
    rootfs_ready: bool,
}

/// The control server of one UVM.
#[derive(Debug)]
pub struct ControlServer {
    client: Arc<ContainerClient>,
    state: Arc<Mutex<ServerState>>,
    socket: PathBuf,
}

impl ControlServer {
    /// A server for `client`, listening at `dir/control.sock`.
    pub fn new(client: Arc<ContainerClient>, dir: &Path) -> Self {
        Self {
            client,
            state: Arc::new(Mutex::new(ServerState::default())),
            socket: dir.join(CONTROL_SOCKET),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until the task is dropped; removes the socket file then.
    pub async fn serve(self: Arc<Self>) -> Result<(), ControlError> {
        let _ = std::fs::remove_file(&self.socket);
        let listener =
            UnixListener::bind(&self.socket).map_err(|e| ControlError::Bind(self.socket.clone(), e))?;
        struct Unlink(PathBuf);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _unlink = Unlink(self.socket.clone());
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| ControlError::Io(self.socket.clone(), e))?;
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::debug!(error = %error_chain(&e), "control connection failed");
                }
            });
        }
    }

    async fn connection(&self, stream: UnixStream) -> Result<(), ControlError> {
        let io_err = |e| ControlError::Io(self.socket.clone(), e);
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(io_err)?;
        let mut stream = reader.into_inner();
        let (answer, fds) = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::debug!(request = ?req, "control request");
                self.handle(req).await
            }
            Err(e) => (Answer::err(format!("bad request: {e}")), Vec::new()),
        };
        let mut text = serde_json::to_vec(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
        text.push(b'\n');
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let sent = loop {
            stream.writable().await.map_err(io_err)?;
            let r = stream.try_io(Interest::WRITABLE, || {
                crate::sys::scm::send_with_fds(stream.as_fd(), &text, &borrowed)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err(e)),
            }
        };
        stream.write_all(&text[sent..]).await.map_err(io_err)?;
        drop(fds);
        Ok(())
    }

    async fn handle(&self, req: Request) -> (Answer, Vec<OwnedFd>) {
        match self.handle_inner(req).await {
            Ok(r) => r,
            Err(e) => (Answer::err(e), Vec::new()),
        }
    }

    fn track(&self, id: &str, pid: u32) {
        let (tx, rx) = watch::channel(None);
        if let Ok(mut s) = self.state.lock() {
            s.exits.insert((id.to_owned(), pid), rx);
        }
        let client = Arc::clone(&self.client);
        let id = id.to_owned();
        tokio::spawn(async move {
            let r = client
                .wait_for_process(&id, pid, None)
                .await
                .map_err(|e| error_chain(&e));
            let _ = tx.send(Some(r));
        });
    }

    fn stdio_answer(pid: u32, tty: bool, stdio: HostStdio) -> Result<(Answer, Vec<OwnedFd>), String> {
        let mut fds = Vec::new();
        let mut which = [false; 3];
        for (i, s) in [stdio.stdin, stdio.stdout, stdio.stderr].into_iter().enumerate() {
            if let Some(s) = s {
                let std = s.into_std().map_err(|e| e.to_string())?;
                fds.push(OwnedFd::from(std));
                which[i] = true;
            }
        }
        Ok((
            Answer {
                pid: Some(pid),
                tty,
                stdio: Some(which),
                ..Answer::ok()
            },
            fds,
        ))
    }

    async fn handle_inner(&self, req: Request) -> Result<(Answer, Vec<OwnedFd>), String> {
        let c = &self.client;
        let e = |e: rgcs_client::ContainerError| error_chain(&e);
        match req {
            Request::Create {
                id,
                rootfs,
                process,
                memory_mib,
            } => {
                let rootfs = match rootfs {
                    Some(r) => r,
                    None => {
                        let ready = self.state.lock().map(|s| s.rootfs_ready).unwrap_or(false);
                        if !ready {
                            prepare_busybox_rootfs(c, BUSYBOX_ROOTFS).await.map_err(|e| {
                                format!("cannot prepare the busybox rootfs: {}", error_chain(&e))
                            })?;
                            if let Ok(mut s) = self.state.lock() {
                                s.rootfs_ready = true;
                            }
                        }
                        BUSYBOX_ROOTFS.to_owned()
                    }
                };
                let mut spec = ContainerSpec::new(id.clone(), rootfs, process.to_spec()?);
                if let Some(mib) = memory_mib {
                    spec = spec.memory_limit(mib << 20);
                }
                let config = spec.config().map_err(|e| e.to_string())?;
                c.create_container(&id, config).await.map_err(e)?;
                c.start(&id).await.map_err(e)?;
                if let Ok(mut s) = self.state.lock() {
                    s.containers.insert(id, (None, process.tty));
                }
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Start { id, stdin } => {
                let tty = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.containers.get(&id).map(|c| c.1))
                    .unwrap_or(false);
                let pipes = Pipes {
                    stdin,
                    stdout: true,
                    stderr: !tty,
                };
                let (pid, stdio) = c.execute_process(&id, init_process(pipes)).await.map_err(e)?;
                self.track(&id, pid);
                if let Ok(mut s) = self.state.lock() {
                    s.containers.entry(id).or_insert((None, tty)).0 = Some(pid);
                }
                Self::stdio_answer(pid, tty, stdio)
            }
            Request::Exec { id, process } => {
                let spec = process.to_spec()?;
                let pipes = Pipes {
                    stdin: process.stdin,
                    stdout: true,
                    stderr: true,
                };
                let (pid, stdio) = c
                    .execute_process(&id, exec_process(&spec, pipes))
                    .await
                    .map_err(e)?;
                self.track(&id, pid);
                Self::stdio_answer(pid, process.tty, stdio)
            }
            Request::Wait { id, pid } => {
                let rx = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.exits.get(&(id.clone(), pid)).cloned());
                let code = match rx {
                    Some(mut rx) => {
                        let v = rx
                            .wait_for(Option::is_some)
                            .await
                            .map_err(|_| "the waiter stopped".to_owned())?
                            .clone();
                        v.unwrap_or_else(|| Err("no exit code".into()))?
                    }
                    None => c.wait_for_process(&id, pid, None).await.map_err(e)?,
                };
                Ok((
                    Answer {
                        exit_code: Some(code),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Resize { id, pid, rows, cols } => {
                c.resize_console(&id, pid, rows, cols).await.map_err(e)?;
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Kill { id, pid, signal } => {
                let pid = match pid {
                    Some(p) => p,
                    None => self
                        .state
                        .lock()
                        .ok()
                        .and_then(|s| s.containers.get(&id).and_then(|c| c.0))
                        .ok_or_else(|| {
                            format!(
                                "container {id} has no started init process known to this server; give a PID"
                            )
                        })?,
                };
                c.signal_process(&id, pid, signal).await.map_err(e)?;
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Ps { id } => {
                let p = c
                    .get_properties(&id, &[PropertyType::ProcessList])
                    .await
                    .map_err(e)?;
                let pids: Vec<u32> = p.process_list.iter().map(|d| d.process_id).collect();
                Ok((
                    Answer {
                        data: Some(serde_json::json!(pids)),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Stats { id } => {
                let p = c
                    .get_properties(&id, &[PropertyType::Statistics])
                    .await
                    .map_err(e)?;
                let data = serde_json::to_value(&p.lcow_metrics).map_err(|e| e.to_string())?;
                Ok((
                    Answer {
                        data: Some(data),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
            Request::Rm { id, force } => {
                let init = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.containers.get(&id).and_then(|c| c.0));
                if force {
                    if let Err(err) = c.shutdown_container(&id, ShutdownKind::Forced).await {
                        tracing::debug!(error = %error_chain(&err), "forced shutdown before rm");
                    }
                    let rx =
                        init.and_then(|pid| self.state.lock().ok()?.exits.get(&(id.clone(), pid)).cloned());
                    if let Some(mut rx) = rx {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some)).await;
                    }
                }
                c.delete_container_state(&id).await.map_err(e)?;
                if let Ok(mut s) = self.state.lock() {
                    s.containers.remove(&id);
                    s.exits.retain(|(cid, _), _| *cid != id);
                }
                Ok((Answer::ok(), Vec::new()))
            }
            Request::Stacks => {
                let s = c.dump_stacks().await.map_err(e)?;
                Ok((
                    Answer {
                        data: Some(serde_json::Value::String(s)),
                        ..Answer::ok()
                    },
                    Vec::new(),
                ))
            }
        }
    }
}
