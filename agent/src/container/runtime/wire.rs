//! The zygote channel's messages: one [`Request`] per call, and for each request exactly one kind
//! of [`Reply`] (the typed calls of [`super::Zygote`] check it). JSON over `SOCK_SEQPACKET`,
//! stdio descriptors alongside (`SCM_RIGHTS`, stdin, stdout, stderr order for the `true`
//! entries of `stdio`).

use std::path::PathBuf;

use libcontainer::oci_spec::runtime::LinuxResources;
use rgcs_protocol::message::Metrics;
use serde::{Deserialize, Serialize};

use crate::sys::pid::ProcessId;

/// One request to the zygote.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// `as_init(bundle).build()`: the init exists, blocked until `Start`. Reply: [`Reply::Pid`].
    Create {
        /// Container ID.
        id: String,
        /// Bundle with `config.json`.
        bundle: PathBuf,
        /// Listening socket that receives the pty master (terminal containers).
        console_socket: Option<PathBuf>,
        /// Which of stdin/stdout/stderr descriptors are attached.
        stdio: [bool; 3],
    },
    /// `Container::start()`. Reply: [`Reply::Done`].
    Start {
        /// Container ID.
        id: String,
    },
    /// `as_tenant().with_process(process).build()`. Reply: [`Reply::Pid`].
    Exec {
        /// Container ID.
        id: String,
        /// `process.json`.
        process: PathBuf,
        /// Listening socket for the pty master.
        console_socket: Option<PathBuf>,
        /// Which stdio descriptors are attached.
        stdio: [bool; 3],
    },
    /// `Container::kill(signal, all)`. Reply: [`Reply::Done`].
    Kill {
        /// Container ID.
        id: String,
        /// Signal number.
        signal: i32,
        /// Every process of the cgroup, not just init.
        all: bool,
    },
    /// `Container::delete(true)`, then the state directory, whatever is left. Reply:
    /// [`Reply::Done`].
    Delete {
        /// Container ID.
        id: String,
    },
    /// Every PID in the container's cgroup. Reply: [`Reply::Pids`].
    Pids {
        /// Container ID.
        id: String,
    },
    /// Cgroup statistics as `LCOWMetrics`. Reply: [`Reply::Stats`].
    Stats {
        /// Container ID.
        id: String,
    },
    /// Apply resources to the live cgroup. Reply: [`Reply::Done`].
    Update {
        /// Container ID.
        id: String,
        /// The new resources.
        resources: Box<LinuxResources>,
    },
    /// Delete every container found in the state root (left by a previous agent, a failed build
    /// or a zygote that died). Reply: [`Reply::Swept`].
    Sweep,
}

impl Request {
    /// What the request does, for error messages (`"{op} container {id}"`).
    pub fn op(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Start { .. } => "start",
            Self::Exec { .. } => "exec in",
            Self::Kill { .. } => "kill",
            Self::Delete { .. } => "delete",
            Self::Pids { .. } => "list processes of",
            Self::Stats { .. } => "read statistics of",
            Self::Update { .. } => "update",
            Self::Sweep => "sweep",
        }
    }

    /// The container the request is about (empty for `Sweep`).
    pub fn id(&self) -> &str {
        match self {
            Self::Create { id, .. }
            | Self::Start { id }
            | Self::Exec { id, .. }
            | Self::Kill { id, .. }
            | Self::Delete { id }
            | Self::Pids { id }
            | Self::Stats { id }
            | Self::Update { id, .. } => id,
            Self::Sweep => "",
        }
    }
}

/// A successful reply.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// A new process (Create, Exec): a positive PID by construction.
    Pid(ProcessId),
    /// Done, nothing to return (Start, Kill, Delete, Update).
    Done,
    /// The PIDs of a cgroup (Pids).
    Pids(Vec<ProcessId>),
    /// Statistics (Stats).
    Stats(Box<Metrics>),
    /// The containers a sweep deleted (Sweep).
    Swept(Vec<String>),
}

/// What the zygote sends back: a reply, or the error chain of the failure.
pub type Answer = Result<Reply, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_reply_never_decodes_to_zero() {
        let ok: Answer = serde_json::from_str(r#"{"Ok":{"Pid":42}}"#).unwrap();
        assert!(matches!(ok, Ok(Reply::Pid(p)) if p.get() == 42));
        for bad in [
            r#"{"Ok":{"Pid":0}}"#,
            r#"{"Ok":{"Pid":-1}}"#,
            r#"{"Ok":{"Pid":null}}"#,
            r#"{"Ok":{}}"#,
        ] {
            assert!(serde_json::from_str::<Answer>(bad).is_err(), "{bad}");
        }
    }
}
