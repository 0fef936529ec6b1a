//! The control server: one UVM's container commands, served on `DIR/control.sock`.

#[allow(clippy::wildcard_imports)]
use super::*;

type Exit = Option<Result<u32, String>>;

/// What the server knows of a container it created.
#[derive(Debug, Clone, Copy, Default)]
struct Tracked {
    /// The init's PID, once started.
    init: Option<u32>,
    /// Whether the init has a pty.
    tty: bool,
}

/// A handler's answer: the JSON line and the descriptors that travel with it.
type Reply = Result<(Answer, Vec<OwnedFd>), String>;

#[derive(Debug, Default)]
struct ServerState {
    containers: HashMap<String, Tracked>,
    /// (container, PID) → exit code once known.
    exits: HashMap<(String, u32), watch::Receiver<Exit>>,
    /// Whether the busybox rootfs exists.
    rootfs_ready: bool,
}

/// A handler's future: the answer and the descriptors that travel with it.
pub type Handled<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Answer, Vec<OwnedFd>)> + Send + 'a>>;

/// More requests on the same socket (a pod's): offered each request line first; `None` leaves it
/// to the control server.
pub trait Extension: Send + Sync + std::fmt::Debug {
    /// Handles `line` if it is one of this extension's requests.
    fn handle<'a>(&'a self, line: &'a str) -> Option<Handled<'a>>;
}

/// The control server of one UVM.
#[derive(Debug)]
pub struct ControlServer {
    client: Arc<ContainerClient>,
    state: Arc<Mutex<ServerState>>,
    socket: PathBuf,
    extension: Option<Arc<dyn Extension>>,
}

impl ControlServer {
    /// A server for `client`, listening at `dir/control.sock`.
    pub fn new(client: Arc<ContainerClient>, dir: &Path) -> Self {
        Self {
            client,
            state: Arc::new(Mutex::new(ServerState::default())),
            socket: dir.join(CONTROL_SOCKET),
            extension: None,
        }
    }

    /// Offers every request to `ext` first.
    pub fn with_extension(mut self, ext: Arc<dyn Extension>) -> Self {
        self.extension = Some(ext);
        self
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
        let extended = match &self.extension {
            Some(ext) => match ext.handle(&line) {
                Some(f) => Some(f.await),
                None => None,
            },
            None => None,
        };
        let (answer, fds) = match extended {
            Some(r) => r,
            None => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    tracing::debug!(request = ?req, "control request");
                    self.handle(req).await
                }
                Err(e) => (Answer::err(format!("bad request: {e}")), Vec::new()),
            },
        };
        write_answer(&mut stream, &answer, fds).await.map_err(io_err)
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

    async fn handle_inner(&self, req: Request) -> Reply {
        match req {
            Request::Create {
                id,
                rootfs,
                process,
                memory_mib,
            } => self.create(id, rootfs, &process, memory_mib).await,
            Request::Start { id, stdin } => self.start_init(id, stdin).await,
            Request::Exec { id, process } => self.exec(&id, &process).await,
            Request::Wait { id, pid } => self.wait(&id, pid).await,
            Request::Resize { id, pid, rows, cols } => {
                self.client
                    .resize_console(&id, pid, rows, cols)
                    .await
                    .map_err(chain)?;
                ok()
            }
            Request::Kill { id, pid, signal } => {
                let pid = match pid {
                    Some(p) => p,
                    None => self.tracked(&id).init.ok_or_else(|| {
                        format!("container {id} has no started init process known to this server; give a PID")
                    })?,
                };
                self.client
                    .signal_process(&id, pid, signal)
                    .await
                    .map_err(chain)?;
                ok()
            }
            Request::Ps { id } => {
                let p = self
                    .client
                    .get_properties(&id, &[PropertyType::ProcessList])
                    .await
                    .map_err(chain)?;
                let pids: Vec<u32> = p.process_list.iter().map(|d| d.process_id).collect();
                data(serde_json::json!(pids))
            }
            Request::Stats { id } => {
                let p = self
                    .client
                    .get_properties(&id, &[PropertyType::Statistics])
                    .await
                    .map_err(chain)?;
                data(serde_json::to_value(&p.lcow_metrics).map_err(|e| e.to_string())?)
            }
            Request::Rm { id, force } => self.remove(&id, force).await,
            Request::Stacks => data(serde_json::Value::String(
                self.client.dump_stacks().await.map_err(chain)?,
            )),
        }
    }

    fn tracked(&self, id: &str) -> Tracked {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.containers.get(id).copied())
            .unwrap_or_default()
    }

    /// The busybox rootfs, prepared in the UVM on first use.
    async fn default_rootfs(&self) -> Result<String, String> {
        let ready = self.state.lock().map(|s| s.rootfs_ready).unwrap_or(false);
        if !ready {
            prepare_busybox_rootfs(&self.client, BUSYBOX_ROOTFS)
                .await
                .map_err(|e| format!("cannot prepare the busybox rootfs: {}", error_chain(&e)))?;
            if let Ok(mut s) = self.state.lock() {
                s.rootfs_ready = true;
            }
        }
        Ok(BUSYBOX_ROOTFS.to_owned())
    }

    async fn create(
        &self,
        id: String,
        rootfs: Option<String>,
        process: &ProcessArgs,
        memory_mib: Option<u64>,
    ) -> Reply {
        let rootfs = match rootfs {
            Some(r) => r,
            None => self.default_rootfs().await?,
        };
        let mut spec = ContainerSpec::new(id.clone(), rootfs, process.to_spec()?);
        if let Some(mib) = memory_mib {
            spec = spec.memory_limit(mib << 20);
        }
        let config = spec.config().map_err(|e| e.to_string())?;
        self.client.create_container(&id, config).await.map_err(chain)?;
        self.client.start(&id).await.map_err(chain)?;
        if let Ok(mut s) = self.state.lock() {
            s.containers.insert(
                id,
                Tracked {
                    init: None,
                    tty: process.tty,
                },
            );
        }
        ok()
    }

    async fn start_init(&self, id: String, stdin: bool) -> Reply {
        let tty = self.tracked(&id).tty;
        let pipes = Pipes {
            stdin,
            stdout: true,
            stderr: !tty,
        };
        let (pid, stdio) = self
            .client
            .execute_process(&id, init_process(pipes))
            .await
            .map_err(chain)?;
        self.track(&id, pid);
        if let Ok(mut s) = self.state.lock() {
            s.containers.entry(id).or_insert(Tracked { init: None, tty }).init = Some(pid);
        }
        stdio_answer(pid, tty, stdio)
    }

    async fn exec(&self, id: &str, process: &ProcessArgs) -> Reply {
        let spec = process.to_spec()?;
        let pipes = Pipes {
            stdin: process.stdin,
            stdout: true,
            stderr: true,
        };
        let (pid, stdio) = self
            .client
            .execute_process(id, exec_process(&spec, pipes))
            .await
            .map_err(chain)?;
        self.track(id, pid);
        stdio_answer(pid, process.tty, stdio)
    }

    /// The exit code of a process: from this server's own waiter if it started it.
    async fn wait(&self, id: &str, pid: u32) -> Reply {
        let rx = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.exits.get(&(id.to_owned(), pid)).cloned());
        let code = match rx {
            Some(mut rx) => {
                let v = rx
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| "the waiter stopped".to_owned())?
                    .clone();
                v.unwrap_or_else(|| Err("no exit code".into()))?
            }
            None => self.client.wait_for_process(id, pid, None).await.map_err(chain)?,
        };
        Ok((
            Answer {
                exit_code: Some(code),
                ..Answer::ok()
            },
            Vec::new(),
        ))
    }

    /// DeleteContainerState; with `force`, a forced shutdown first and a bounded wait for the
    /// init's exit.
    async fn remove(&self, id: &str, force: bool) -> Reply {
        if force {
            if let Err(err) = self.client.shutdown_container(id, ShutdownKind::Forced).await {
                tracing::debug!(error = %error_chain(&err), "forced shutdown before rm");
            }
            let init = self.tracked(id).init;
            let rx = init.and_then(|pid| self.state.lock().ok()?.exits.get(&(id.to_owned(), pid)).cloned());
            if let Some(mut rx) = rx {
                let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some)).await;
            }
        }
        self.client.delete_container_state(id).await.map_err(chain)?;
        if let Ok(mut s) = self.state.lock() {
            s.containers.remove(id);
            s.exits.retain(|(cid, _), _| cid != id);
        }
        ok()
    }
}

fn chain(e: rgcs_client::ContainerError) -> String {
    error_chain(&e)
}

fn ok() -> Reply {
    Ok((Answer::ok(), Vec::new()))
}

fn data(v: serde_json::Value) -> Reply {
    Ok((
        Answer {
            data: Some(v),
            ..Answer::ok()
        },
        Vec::new(),
    ))
}
