//! `rgcs run`: an OCI image, end to end, the way hcsshim's host drives LCOW (docs/gcs-reference.md
//! Appendix A): import (layers as cached ext4 images), boot, attach the root filesystem
//! ([`crate::rootfs`]), Create, the init process with stdio relayed to this terminal, its exit
//! code, and every resource removed again, whether the container ran or not.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::image::{self, ImportedImage, Progress};
use crate::net::{NetError, NetworkMode, PortMap};
use crate::rootfs::RootfsError;
use crate::session::{BootOptions, Session, SessionError, POWER_OFF_TIMEOUT};
use crate::stdio::StdioError;
use crate::vm::Uvm;
use crate::warm::lease::{self, RunRequest};
use crate::warm::{fingerprint, Pool};
use rgcs_client::bridge::{BridgeClient, ClientError};
use rgcs_client::spec::{ProcessSpec, UserSpec};
use rgcs_client::{ContainerClient, ContainerError};

mod attach;
mod start;

pub use attach::{attach_init, InitHandle, LocalInit, STOP_GRACE};
pub use start::{start_container, Started};

/// `-v HOSTDIR:CTRDIR[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// Host directory (shared over Plan 9).
    pub host: PathBuf,
    /// Absolute path in the container.
    pub container: String,
    /// Mounted read-only (enforced by the host's 9p server and the guest mount).
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOSTDIR:CTRDIR[:ro|:rw]`.
    pub fn parse(s: &str) -> Result<Self, RunError> {
        let bad = || RunError::BadVolume(s.to_owned());
        let mut parts = s.split(':');
        let host = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let container = parts.next().filter(|p| p.starts_with('/')).ok_or_else(bad)?;
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let host = std::fs::canonicalize(host).map_err(|source| RunError::VolumeSource {
            path: host.into(),
            source,
        })?;
        if !host.is_dir() {
            return Err(RunError::VolumeNotDir(host));
        }
        Ok(Self {
            host,
            container: container.to_owned(),
            read_only,
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// An OCI image layout directory, an OCI tar or a `docker save` tar.
    pub image: PathBuf,
    /// Overrides the image's entrypoint + cmd when non-empty.
    pub command: Vec<String>,
    /// Extra `K=V` environment entries.
    pub env: Vec<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Attach the local stdin.
    pub interactive: bool,
    /// Host directories to share.
    pub volumes: Vec<Volume>,
    /// Container ID (default: derived from the process ID).
    pub id: Option<String>,
    /// Where layer images are cached.
    pub cache_dir: PathBuf,
    /// Scratch disk size in bytes (sparse).
    pub scratch_size: u64,
    /// The container's network.
    pub network: NetworkMode,
    /// Published ports (`user` network only).
    pub ports: Vec<PortMap>,
    /// DNS servers overriding the network's.
    pub dns: Vec<String>,
    /// Hostname (default: the container ID, as Docker does).
    pub hostname: Option<String>,
    /// The UVM to boot.
    pub boot: BootOptions,
}

/// Errors of `rgcs run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `-v` value is malformed.
    #[error("bad volume {0:?}: expected HOSTDIR:CTRDIR[:ro], CTRDIR absolute")]
    BadVolume(String),
    /// A `-v` host directory cannot be resolved.
    #[error("volume source {path}")]
    VolumeSource {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `-v` host path is not a directory.
    #[error("volume source {0} is not a directory")]
    VolumeNotDir(PathBuf),
    /// The image could not be imported.
    #[error("cannot import the image {path}")]
    Image {
        /// The image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: image::ImageError,
    },
    /// Nothing to run.
    #[error("the image has no entrypoint or cmd and no command was given")]
    NoCommand,
    /// The image has more layers than the SCSI controller's LUNs we use.
    #[error("the image has {0} layers; at most {MAX_LAYERS} are supported")]
    TooManyLayers(usize),
    /// The UVM failed.
    #[error("the utility VM failed")]
    Session(#[from] SessionError),
    /// The network could not be set up.
    #[error("cannot set up the container's network")]
    Network(#[from] NetError),
    /// The root filesystem could not be attached.
    #[error("cannot attach the container's root filesystem")]
    Rootfs(#[from] RootfsError),
    /// A guest request failed.
    #[error("guest request failed")]
    Bridge(#[from] ClientError),
    /// A container request failed.
    #[error("container request failed")]
    Container(#[from] ContainerError),
    /// The container spec is invalid.
    #[error("invalid container spec")]
    Spec(#[from] rgcs_client::spec::SpecError),
    /// Relaying stdio failed.
    #[error("stdio relay failed")]
    Stdio(#[from] StdioError),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// A warm UVM's server failed (or refused the container, saying why).
    #[error("the warm UVM: {0}")]
    Warm(String),
    /// The container's program cannot be run: docker's 127 (not found) or 126 (not executable).
    #[error("{message}")]
    Program {
        /// 127 or 126.
        code: u8,
        /// The guest's reason.
        message: String,
    },
}

impl RunError {
    /// The command's exit status for this error: docker's 127/126 when the program cannot be
    /// run, 125 for every failure of rgcs itself.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Program { code, .. } => *code,
            _ => 125,
        }
    }
}

/// docker's exit code for a Create the executor refused because the program does not exist
/// (127) or cannot be executed (126), read from the executor's reason as docker reads runc's.
pub fn program_exit_code(reason: &str) -> Option<u8> {
    if reason.contains("not found in $PATH") {
        Some(127)
    } else if reason.contains("does not have correct permissions") {
        Some(126)
    } else {
        None
    }
}

/// A Create refused because the program cannot run, as [`RunError::Program`].
pub fn program_error(e: &ContainerError) -> Option<RunError> {
    let text = rgcs_protocol::error_chain(e);
    let code = program_exit_code(&text)?;
    let reason = text
        .rsplit_once(": ")
        .map_or(text.as_str(), |(_, r)| r)
        .to_owned();
    Some(RunError::Program {
        code,
        message: format!("the container's program cannot be run: {reason}"),
    })
}

/// Layers of one image (the scratch disk and every layer take a LUN of controller 0).
pub const MAX_LAYERS: usize = 127;

/// Runs the image's (or the given) command in a container in a fresh UVM and returns its exit code:
/// a warm one leased from `pool` when it holds a ready UVM booted as this run would boot (the pool
/// then boots a replacement in the background), else one booted now.
pub async fn run(opts: RunOptions, pool: Option<&Pool>) -> Result<i32, RunError> {
    mark("start");
    let image = import(&opts).await?;
    mark("image");
    if image.layers.len() > MAX_LAYERS {
        return Err(RunError::TooManyLayers(image.layers.len()));
    }
    let process = process_spec(&opts, &image.config)?;
    let id = opts
        .id
        .clone()
        .unwrap_or_else(|| format!("rgcs-run-{}", std::process::id()));
    if let Some(pool) = pool {
        let warm = run_warm(pool, &opts, &image, &id).await;
        // After the container, not during it: a boot takes a whole core under TCG.
        if let Err(e) = pool.refill() {
            tracing::warn!(error = %e, "cannot refill the warm pool");
        }
        if let Some(result) = warm.transpose() {
            return result;
        }
    }
    let Session { uvm, bridge, .. } = Session::boot(&opts.boot).await?;
    mark("booted");
    let bridge = Arc::new(bridge);
    let client = ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix());
    let result = run_in(&uvm, &bridge, &client, &opts, &image, process, &id).await;
    // Power off (the guest exits without answering) and take everything down.
    let _ = bridge.shutdown_uvm(true).await;
    if uvm.wait(POWER_OFF_TIMEOUT).await.is_err() {
        tracing::warn!("the utility VM did not power off in time; stopping it");
    }
    uvm.shutdown().await;
    mark("down");
    result
}

/// The run in a warm UVM leased from `pool`; `None` when it has none ready for these options.
async fn run_warm(
    pool: &Pool,
    opts: &RunOptions,
    image: &ImportedImage,
    id: &str,
) -> Result<Option<i32>, RunError> {
    let req = RunRequest::new(opts, image, id);
    let Some((lease, stdio)) = lease::claim(pool, &fingerprint(&opts.boot), &req).await? else {
        return Ok(None);
    };
    mark("leased");
    let result = attach_init(&lease, stdio, opts.tty).await;
    let finished = lease.finish().await;
    mark("down");
    match (result, finished) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(code), Ok(())) => Ok(Some(code)),
    }
}

/// With `RGCS_RUN_MARKS` set, `rgcs run` prints `rgcs-mark <phase> <unix ms>` lines to stderr at
/// each phase (for `rgcs bench run`'s breakdown; another process compares them with its clock).
/// Returns the time, for a warm UVM's server to pass its phases on to the run.
fn mark(phase: &str) -> f64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    print_mark(phase, ms);
    ms
}

/// Prints a phase mark taken here or in a warm UVM's server (same host clock).
pub fn print_mark(phase: &str, ms: f64) {
    if std::env::var_os("RGCS_RUN_MARKS").is_some() {
        eprintln!("rgcs-mark {phase} {ms:.3}");
    }
}

async fn import(opts: &RunOptions) -> Result<ImportedImage, RunError> {
    let (path, cache) = (opts.image.clone(), opts.cache_dir.clone());
    tokio::task::spawn_blocking(move || {
        let progress = image::TerminalProgress::new();
        image::import(&path, &cache, &progress as &dyn Progress)
            .map_err(|source| RunError::Image { path, source })
    })
    .await
    .map_err(|e| RunError::Task(e.to_string()))?
}

/// The process from the image config (`Entrypoint` + `Cmd`, `Env`, `WorkingDir`, `User`) and the
/// command-line overrides (a command replaces both entrypoint and cmd).
fn process_spec(opts: &RunOptions, config: &Value) -> Result<ProcessSpec, RunError> {
    image_process(config, &opts.command, &opts.env, opts.tty)
}

/// The process of an image's container: `Entrypoint` + `Cmd` unless `command` replaces both,
/// the image's `Env` then `env`, its `WorkingDir` and `User`.
pub fn image_process(
    config: &Value,
    command: &[String],
    env: &[String],
    tty: bool,
) -> Result<ProcessSpec, RunError> {
    let cfg = config
        .get("config")
        .or_else(|| config.get("Config"))
        .unwrap_or(&Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let args = if command.is_empty() {
        let mut a = strings(cfg.get("Entrypoint"));
        a.extend(strings(cfg.get("Cmd")));
        a
    } else {
        command.to_vec()
    };
    if args.is_empty() {
        return Err(RunError::NoCommand);
    }
    let mut p = ProcessSpec::new(args).tty(tty);
    for e in strings(cfg.get("Env")).iter().chain(env) {
        p = p.env_entry(e)?;
    }
    if let Some(wd) = cfg
        .get("WorkingDir")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
    {
        p = p.cwd(wd);
    }
    if let Some(user) = cfg.get("User").and_then(Value::as_str).filter(|u| !u.is_empty()) {
        p = p.user(UserSpec::parse(user)?);
    }
    Ok(p)
}

async fn run_in(
    uvm: &Uvm,
    bridge: &BridgeClient,
    client: &ContainerClient,
    opts: &RunOptions,
    image: &ImportedImage,
    process: ProcessSpec,
    id: &str,
) -> Result<i32, RunError> {
    let (started, stdio) = start_container(uvm, bridge, client, opts, image, process, id).await?;
    let local = LocalInit {
        client,
        id,
        pid: started.pid,
    };
    let result = attach_init(&local, stdio, opts.tty).await;
    started.remove(bridge, client).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_and_refuse_bad_forms() {
        let dir = std::env::temp_dir();
        let v = Volume::parse(&format!("{}:/data:ro", dir.display())).unwrap();
        assert!(v.read_only && v.container == "/data");
        assert!(
            !Volume::parse(&format!("{}:/data", dir.display()))
                .unwrap()
                .read_only
        );
        for bad in ["", ":/x", "/tmp:relative", "/tmp:/x:rx", "/tmp:/x:ro:extra"] {
            assert!(matches!(Volume::parse(bad), Err(RunError::BadVolume(_))), "{bad}");
        }
        assert!(matches!(
            Volume::parse("/definitely/not/here:/x"),
            Err(RunError::VolumeSource { .. })
        ));
    }

    #[test]
    fn process_from_image_config_and_overrides() {
        let config = serde_json::json!({"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["A=1"], "WorkingDir": "/w"}});
        let mut opts = RunOptions {
            image: PathBuf::new(),
            command: vec![],
            env: vec!["B=2".into()],
            tty: false,
            interactive: false,
            volumes: vec![],
            id: None,
            cache_dir: PathBuf::new(),
            scratch_size: 0,
            network: NetworkMode::None,
            ports: vec![],
            dns: vec![],
            hostname: None,
            boot: BootOptions::new("/nonexistent"),
        };
        let p = process_spec(&opts, &config).unwrap();
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
        assert!(p.env_entries().contains(&"A=1".to_owned()) && p.env_entries().contains(&"B=2".to_owned()));
        opts.command = vec!["true".into()];
        assert_eq!(process_spec(&opts, &config).unwrap().args, ["true"]);
        opts.command.clear();
        assert!(matches!(
            process_spec(&opts, &serde_json::json!({})),
            Err(RunError::NoCommand)
        ));
    }
}
