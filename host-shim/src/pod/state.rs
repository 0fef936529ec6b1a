//! The state directory every `rgcs` invocation shares (`/run/rgcs` by default, `RGCS_STATE_DIR`
//! or `--state-dir` otherwise): one directory per pod with its record, its server's control
//! socket and log, and per container a record and a bounded output log.
//!
//! ```text
//! <state>/pods/<pod>/pod.json            PodRecord (written by the pod's server)
//! <state>/pods/<pod>/control.sock        the server's control socket
//! <state>/pods/<pod>/server.log          the server's own log
//! <state>/pods/<pod>/containers/<c>.json ContainerRecord
//! <state>/pods/<pod>/logs/<c>.log        the container's stdout and stderr (+ <c>.log.1)
//! ```
//!
//! A record's server is alive when its PID runs and has the start time recorded with it (so a
//! reused PID is not mistaken for it). A pod whose server is gone is dead: its QEMU went with it
//! (`PR_SET_PDEATHSIG`), and its directory is swept when the name is used again.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/rgcs";

/// A pod's life as its server records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// Booting the UVM and the sandbox.
    Starting,
    /// Serving.
    Running,
    /// Start-up failed (`error` says why); the server exits.
    Failed,
}

/// `pod.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod name (the sandbox's container ID).
    pub name: String,
    /// The server's PID.
    pub server_pid: u32,
    /// The server's start time (`/proc/PID/stat` field 22), against PID reuse.
    pub server_start: u64,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Phase.
    pub phase: PodPhase,
    /// Why start-up failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Made by `rgcs run -d` for one container: removed with it.
    pub auto_remove: bool,
    /// The network (`none`, `user`, `netns:PATH`) and published ports.
    pub network: String,
    /// Published ports as given.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The sandbox's PID in the UVM, once running.
    #[serde(default)]
    pub sandbox_pid: Option<u32>,
}

/// `containers/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container ID (unique across pods).
    pub id: String,
    /// Its pod.
    pub pod: String,
    /// The image path.
    pub image: String,
    /// The command.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The init's PID in the UVM.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The exit code once exited.
    #[serde(default)]
    pub exit_code: Option<u32>,
}

/// What `ps` and `pod ls` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodStatus {
    /// Booting.
    Starting,
    /// Serving.
    Running,
    /// Start-up failed.
    Failed,
    /// The server is gone without cleaning up (killed, crashed).
    Dead,
}

impl PodStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

/// Now, seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The start time of process `pid`, if it runs (see [`crate::sys::process::running_since`]).
pub fn process_start(pid: u32) -> Option<u64> {
    crate::sys::process::running_since(pid)
}

/// The guest container ID of pod `name`'s sandbox: `_pod-<name>`. Container names cannot start
/// with `_`, so no workload takes it, and a `run -d` container may share its pod's name.
pub fn sandbox_id(name: &str) -> String {
    format!("_pod-{name}")
}

/// Pod and container names: what docker accepts, and what makes a harmless path component.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: 1 to 128 of [a-zA-Z0-9_.-], starting with a letter or digit"
        ))
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl StateDir {
    /// `dir`, else `RGCS_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self(
            dir.or_else(|| std::env::var_os("RGCS_STATE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        )
    }

    /// The root.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Pod `name`'s directory (it may not exist).
    pub fn pod(&self, name: &str) -> PodDir {
        PodDir {
            name: name.to_owned(),
            path: self.0.join("pods").join(name),
        }
    }

    /// Every pod directory.
    pub fn pods(&self) -> Vec<PodDir> {
        let mut out: Vec<PodDir> = std::fs::read_dir(self.0.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|n| self.pod(&n))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The pod holding container `id`.
    pub fn find_container(&self, id: &str) -> Option<PodDir> {
        self.pods().into_iter().find(|p| p.container(id).is_ok())
    }

    /// Whether a live pod (starting or running) holds container `id`. A dead pod holding it is
    /// swept: its server is gone, its QEMU with it, and its records must not block the name.
    pub fn name_taken(&self, id: &str) -> bool {
        let Some(pod) = self.find_container(id) else {
            return false;
        };
        match pod.status() {
            Some((_, PodStatus::Running | PodStatus::Starting)) => true,
            _ => {
                let _ = pod.remove();
                false
            }
        }
    }
}

/// One pod's directory.
#[derive(Debug, Clone)]
pub struct PodDir {
    /// The pod's name.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
}

impl PodDir {
    /// The server's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join(crate::control::CONTROL_SOCKET)
    }

    /// The server's log.
    pub fn server_log(&self) -> PathBuf {
        self.path.join("server.log")
    }

    /// Container `id`'s output log.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.path.join("logs").join(format!("{id}.log"))
    }

    /// Creates the directory and its subdirectories.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.path.join("containers"))?;
        std::fs::create_dir_all(self.path.join("logs"))
    }

    /// Removes the directory.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// `pod.json`.
    pub fn record(&self) -> io::Result<PodRecord> {
        read_json(&self.path.join("pod.json"))
    }

    /// Writes `pod.json` (atomically).
    pub fn write_record(&self, r: &PodRecord) -> io::Result<()> {
        write_json(&self.path.join("pod.json"), r)
    }

    /// The pod's status: its record, and whether its server still runs.
    pub fn status(&self) -> Option<(PodRecord, PodStatus)> {
        let r = self.record().ok()?;
        let alive = process_start(r.server_pid) == Some(r.server_start);
        let status = match (alive, r.phase) {
            (false, PodPhase::Failed) | (true, PodPhase::Failed) => PodStatus::Failed,
            (false, _) => PodStatus::Dead,
            (true, PodPhase::Starting) => PodStatus::Starting,
            (true, PodPhase::Running) => PodStatus::Running,
        };
        Some((r, status))
    }

    fn container_path(&self, id: &str) -> PathBuf {
        self.path.join("containers").join(format!("{id}.json"))
    }

    /// A container's record.
    pub fn container(&self, id: &str) -> io::Result<ContainerRecord> {
        read_json(&self.container_path(id))
    }

    /// Writes a container's record.
    pub fn write_container(&self, c: &ContainerRecord) -> io::Result<()> {
        write_json(&self.container_path(&c.id), c)
    }

    /// Forgets a container: its record and logs.
    pub fn remove_container(&self, id: &str) {
        let _ = std::fs::remove_file(self.container_path(id));
        let log = self.log_path(id);
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(log.with_extension("log.1"));
    }

    /// Every container record, by creation time.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        let mut out: Vec<ContainerRecord> = std::fs::read_dir(self.path.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json(&e.path()).ok())
            .collect();
        out.sort_by(|a: &ContainerRecord, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_liveness_follows_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(Some(tmp.path().to_path_buf()));
        let pod = state.pod("p1");
        pod.create().unwrap();
        let me = std::process::id();
        let mut r = PodRecord {
            name: "p1".into(),
            server_pid: me,
            server_start: process_start(me).unwrap(),
            created: now(),
            phase: PodPhase::Running,
            error: None,
            auto_remove: false,
            network: "none".into(),
            ports: Vec::new(),
            sandbox_pid: Some(7),
        };
        pod.write_record(&r).unwrap();
        assert_eq!(pod.status().unwrap().1, PodStatus::Running);
        r.server_start += 1; // a reused PID
        pod.write_record(&r).unwrap();
        assert_eq!(pod.status().unwrap().1, PodStatus::Dead);
        let c = ContainerRecord {
            id: "c1".into(),
            pod: "p1".into(),
            image: "/img".into(),
            command: vec!["sh".into()],
            created: 1,
            pid: Some(9),
            exit_code: None,
        };
        pod.write_container(&c).unwrap();
        assert_eq!(state.find_container("c1").unwrap().name, "p1");
        assert_eq!(pod.containers(), [c]);
        pod.remove_container("c1");
        assert!(state.find_container("c1").is_none());
        assert_eq!(state.pods().len(), 1);
        pod.remove().unwrap();
        assert!(state.pods().is_empty());
    }

    #[test]
    fn names_are_docker_like() {
        for ok in ["web", "a.b-c_d", "0x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
