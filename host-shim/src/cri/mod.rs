//! A small CRI (Kubernetes Container Runtime Interface, `runtime.v1`) client: unary gRPC over
//! HTTP/2 on containerd's Unix socket, with the handful of calls the containerd shim's tests and
//! `rgcs bench containerd` make (what the kubelet would make for a pod). gRPC framing: a
//! 5-byte prefix (compressed flag, big-endian length) before each protobuf message; the status
//! comes in the trailers (`grpc-status`, `grpc-message`), or in the headers when there is no body.

pub mod wire;

use bytes::Bytes;
use std::path::Path;

use wire::{Fields, Malformed, Msg};

/// Largest answer accepted (ExecSync caps output at 16 MiB per stream).
const MAX_ANSWER: usize = 40 << 20;

/// CRI errors.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket.
    #[error("connect to {path}")]
    Connect {
        /// Socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// HTTP/2.
    #[error("HTTP/2")]
    H2(#[from] h2::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Http(#[from] http::Error),
    /// The server answered with a gRPC error.
    #[error("{method}: gRPC status {code}: {message}")]
    Status {
        /// The method.
        method: String,
        /// gRPC status code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The answer was not a gRPC message.
    #[error("{method}: bad answer: {reason}")]
    BadAnswer {
        /// The method.
        method: String,
        /// What was wrong.
        reason: String,
    },
    /// The protobuf did not decode.
    #[error("decode")]
    Decode(#[from] Malformed),
}

/// A connection to a CRI server.
#[derive(Debug, Clone)]
pub struct CriClient {
    send: h2::client::SendRequest<Bytes>,
}

/// A pod's sandbox configuration (the fields rgcs sets).
#[derive(Debug, Clone, Default)]
pub struct PodConfig {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Hostname.
    pub hostname: String,
    /// Where container logs go (a directory).
    pub log_directory: String,
}

impl PodConfig {
    fn msg(&self) -> Msg {
        let meta = Msg::new()
            .str(1, &self.name)
            .str(2, &self.uid)
            .str(3, &self.namespace);
        Msg::new()
            .msg(1, &meta)
            .str(2, &self.hostname)
            .str(3, &self.log_directory)
    }
}

/// A container's configuration (the fields rgcs sets).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint override.
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Log file, relative to the pod's log directory.
    pub log_path: String,
}

impl ContainerConfig {
    fn msg(&self) -> Msg {
        Msg::new()
            .msg(1, &Msg::new().str(1, &self.name))
            .msg(2, &Msg::new().str(1, &self.image))
            .strs(3, &self.command)
            .strs(4, &self.args)
            .str(11, &self.log_path)
    }
}

/// ExecSync's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// ContainerStats' figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Cumulative CPU time, ns.
    pub cpu_ns: u64,
    /// Memory working set, bytes.
    pub working_set: u64,
}

fn wrapped(v: &Fields, field: u32) -> Result<u64, Malformed> {
    Ok(v.msg(field)?.int(1))
}

impl CriClient {
    /// Connects to the CRI server at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| CriError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let (send, conn) = h2::client::handshake(stream).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "CRI connection ended");
            }
        });
        Ok(Self { send })
    }

    /// One unary call of `runtime.v1.<service>/<method>`.
    pub async fn call(&self, service: &str, method: &str, req: Msg) -> Result<Fields, CriError> {
        let path = format!("/runtime.v1.{service}/{method}");
        let bad = |reason: String| CriError::BadAnswer {
            method: path.clone(),
            reason,
        };
        let body = req.into_bytes();
        let len = u32::try_from(body.len()).map_err(|_| bad("request too large".into()))?;
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&body);
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (answer, mut stream) = send.send_request(request, false)?;
        stream.send_data(Bytes::from(framed), true)?;
        let (parts, mut recv) = answer.await?.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            if data.len() > MAX_ANSWER {
                return Err(bad(format!("answer over {MAX_ANSWER} bytes")));
            }
        }
        let trailers = recv.trailers().await?.unwrap_or_default();
        let header = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let code: u32 = header("grpc-status").and_then(|c| c.parse().ok()).unwrap_or(2);
        if code != 0 {
            return Err(CriError::Status {
                method: path.clone(),
                code,
                message: header("grpc-message").unwrap_or_default(),
            });
        }
        if data.len() < 5 {
            return Ok(Fields::default());
        }
        let n = usize::try_from(u32::from_be_bytes([data[1], data[2], data[3], data[4]]))
            .map_err(|_| bad("length".into()))?;
        let msg = data
            .get(5..5 + n)
            .ok_or_else(|| bad("truncated message".into()))?;
        Ok(Fields::parse(msg)?)
    }

    async fn runtime(&self, method: &str, req: Msg) -> Result<Fields, CriError> {
        self.call("RuntimeService", method, req).await
    }

    /// `Version`: the runtime's name and version.
    pub async fn version(&self) -> Result<(String, String), CriError> {
        let f = self.runtime("Version", Msg::new().str(1, "v1")).await?;
        Ok((f.str(2), f.str(3)))
    }

    /// `RunPodSandbox` with `handler` (the runtime name in containerd's CRI config); the pod ID.
    pub async fn run_pod_sandbox(&self, pod: &PodConfig, handler: &str) -> Result<String, CriError> {
        let f = self
            .runtime("RunPodSandbox", Msg::new().msg(1, &pod.msg()).str(2, handler))
            .await?;
        Ok(f.str(1))
    }

    /// The pod's IP (`PodSandboxStatus`).
    pub async fn pod_ip(&self, pod_id: &str) -> Result<String, CriError> {
        let f = self
            .runtime("PodSandboxStatus", Msg::new().str(1, pod_id))
            .await?;
        Ok(f.msg(1)?.msg(5)?.str(1))
    }

    /// `CreateContainer`; the container ID.
    pub async fn create_container(
        &self,
        pod_id: &str,
        pod: &PodConfig,
        c: &ContainerConfig,
    ) -> Result<String, CriError> {
        let req = Msg::new().str(1, pod_id).msg(2, &c.msg()).msg(3, &pod.msg());
        Ok(self.runtime("CreateContainer", req).await?.str(1))
    }

    /// `StartContainer`.
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime("StartContainer", Msg::new().str(1, id))
            .await
            .map(drop)
    }

    /// `ExecSync` with a timeout in seconds.
    pub async fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: u64) -> Result<ExecResult, CriError> {
        let f = self
            .runtime(
                "ExecSync",
                Msg::new().str(1, id).strs(2, cmd).uint(3, timeout_secs),
            )
            .await?;
        Ok(ExecResult {
            stdout: f.bytes(1),
            stderr: f.bytes(2),
            // int32 on the wire: a negative value arrives sign-extended to 64 bits.
            exit_code: i32::try_from(f.int(3).cast_signed()).unwrap_or(i32::MIN),
        })
    }

    /// `ContainerStats`.
    pub async fn container_stats(&self, id: &str) -> Result<Stats, CriError> {
        let s = self
            .runtime("ContainerStats", Msg::new().str(1, id))
            .await?
            .msg(1)?;
        Ok(Stats {
            cpu_ns: wrapped(&s.msg(2)?, 2)?,
            working_set: wrapped(&s.msg(3)?, 2)?,
        })
    }

    /// `ContainerStatus`: (state, exit code); state 0 created, 1 running, 2 exited, 3 unknown.
    pub async fn container_status(&self, id: &str) -> Result<(u64, i32), CriError> {
        let s = self
            .runtime("ContainerStatus", Msg::new().str(1, id))
            .await?
            .msg(1)?;
        Ok((
            s.int(3),
            i32::try_from(s.int(7).cast_signed()).unwrap_or(i32::MIN),
        ))
    }

    /// `UpdateContainerResources` with a memory limit (bytes).
    pub async fn update_memory_limit(&self, id: &str, bytes: u64) -> Result<(), CriError> {
        let linux = Msg::new().uint(4, bytes);
        self.runtime("UpdateContainerResources", Msg::new().str(1, id).msg(2, &linux))
            .await
            .map(drop)
    }

    /// `StopContainer` with a grace period in seconds.
    pub async fn stop_container(&self, id: &str, timeout_secs: u64) -> Result<(), CriError> {
        self.runtime("StopContainer", Msg::new().str(1, id).uint(2, timeout_secs))
            .await
            .map(drop)
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime("RemoveContainer", Msg::new().str(1, id))
            .await
            .map(drop)
    }

    /// `StopPodSandbox`.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime("StopPodSandbox", Msg::new().str(1, id))
            .await
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime("RemovePodSandbox", Msg::new().str(1, id))
            .await
            .map(drop)
    }
}
