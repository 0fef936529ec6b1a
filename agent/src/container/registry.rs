//! The container table: IDs reserved while a Create runs (so a second Create answers "exists" and
//! an exec or wait answers "still being created"), and the record of each created container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use libcontainer::oci_spec::runtime::Spec;
use rgcs_protocol::message::NotificationType;
use tokio::sync::watch;

use super::user::Resolved;
use crate::error::GcsError;
use crate::process::stdio::{Attached, Relays};
use crate::process::table::{ProcessEntry, ProcessTable};
use crate::sys::pid::ProcessId;

/// Lifecycle of a container record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Built: init waits for Start.
    Created,
    /// Started.
    Running,
    /// Init exited.
    Exited,
}

impl State {
    /// For error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created but not started",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

/// One created container.
#[derive(Debug)]
pub struct Container {
    /// Container ID.
    pub id: String,
    /// ActivityId of the Create request (for the notification).
    pub activity_id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root file system (absolute).
    pub rootfs: PathBuf,
    /// The adjusted spec libcontainer runs.
    pub spec: Spec,
    /// The container user, when the spec named one.
    pub user: Option<Resolved>,
    /// Whether the container has its own PID namespace (else init's exit kills the rest).
    pub owns_pid_ns: bool,
    /// The pod's sandbox ID (its own for a sandbox; `None` standalone).
    pub sandbox_id: Option<String>,
    /// Where init's output is also appended (the tee-log annotation).
    pub tee_log: Option<PathBuf>,
    /// Per-process state directory (`<run>/procs/<id>`).
    pub proc_dir: PathBuf,
    /// The init process.
    pub init: Arc<ProcessEntry>,
    /// Init and exec processes.
    pub processes: ProcessTable,
    state: Mutex<State>,
    pending_stdio: Mutex<Option<Attached>>,
    init_relays: Mutex<Option<Relays>>,
    exit_type: Mutex<NotificationType>,
    deleted: watch::Sender<bool>,
    next_proc: AtomicU64,
}

/// What Create hands over to build a record.
#[derive(Debug)]
pub struct NewContainer {
    /// See [`Container`].
    pub id: String,
    /// See [`Container`].
    pub activity_id: String,
    /// See [`Container`].
    pub bundle: PathBuf,
    /// See [`Container`].
    pub rootfs: PathBuf,
    /// See [`Container`].
    pub spec: Spec,
    /// See [`Container`].
    pub user: Option<Resolved>,
    /// See [`Container`].
    pub owns_pid_ns: bool,
    /// See [`Container`].
    pub sandbox_id: Option<String>,
    /// See [`Container`].
    pub tee_log: Option<PathBuf>,
    /// See [`Container`].
    pub proc_dir: PathBuf,
    /// Init PID.
    pub init_pid: ProcessId,
    /// The init's stdio.
    pub stdio: Attached,
}

impl Container {
    /// A record in state [`State::Created`].
    pub fn new(n: NewContainer) -> Arc<Self> {
        let init = ProcessEntry::new(n.init_pid);
        if let Some(master) = n.stdio.tty() {
            init.set_tty(master);
        }
        let processes = ProcessTable::default();
        processes.insert(Arc::clone(&init));
        Arc::new(Self {
            id: n.id,
            activity_id: n.activity_id,
            bundle: n.bundle,
            rootfs: n.rootfs,
            spec: n.spec,
            user: n.user,
            owns_pid_ns: n.owns_pid_ns,
            sandbox_id: n.sandbox_id,
            tee_log: n.tee_log,
            proc_dir: n.proc_dir,
            init,
            processes,
            state: Mutex::new(State::Created),
            pending_stdio: Mutex::new(Some(n.stdio)),
            init_relays: Mutex::new(None),
            exit_type: Mutex::new(NotificationType::UnexpectedExit),
            deleted: watch::channel(false).0,
            next_proc: AtomicU64::new(0),
        })
    }

    /// Current state.
    pub fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to `to` if the current state is `from`; else the current state.
    pub fn transition(&self, from: State, to: State) -> Result<(), State> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *s == from {
            *s = to;
            Ok(())
        } else {
            Err(*s)
        }
    }

    /// Marks init exited.
    pub fn set_exited(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Exited;
    }

    /// Takes the init's stdio (once, at Start).
    pub fn take_pending_stdio(&self) -> Option<Attached> {
        self.pending_stdio
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stores the init's relays (Start), for the exit task to drain.
    pub fn set_init_relays(&self, r: Relays) {
        *self.init_relays.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    }

    /// Takes the init's relays (exit task).
    pub fn take_init_relays(&self) -> Option<Relays> {
        self.init_relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Records why init is going to exit, once a SIGTERM or SIGKILL was delivered to it: the
    /// last one wins, as hcsshim's guest records it (`setExitType` after each successful kill),
    /// so a ShutdownGraceful the init ignores followed by a ShutdownForced reports `ForcedExit`.
    pub fn record_exit_signal(&self, signal: i32) {
        let t = match signal {
            libc::SIGTERM => NotificationType::GracefulExit,
            libc::SIGKILL => NotificationType::ForcedExit,
            _ => return,
        };
        *self.exit_type.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// The notification type for init's exit.
    pub fn exit_type(&self) -> NotificationType {
        *self.exit_type.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the record deleted (cancels a pending notification).
    pub fn mark_deleted(&self) {
        self.deleted.send_replace(true);
    }

    /// Resolves once the record is deleted.
    pub async fn deleted(&self) {
        let mut rx = self.deleted.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// A fresh per-process directory name.
    pub fn next_proc_dir(&self) -> PathBuf {
        let n = self.next_proc.fetch_add(1, Ordering::Relaxed);
        self.proc_dir.join(n.to_string())
    }
}

#[derive(Debug)]
enum Slot {
    Creating,
    Ready(Arc<Container>),
}

/// Container ID → record.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Slot>>,
}

impl Registry {
    /// Reserves `id` for a Create in progress.
    pub fn reserve(&self, id: &str) -> Result<(), GcsError> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(id) {
            return Err(GcsError::ContainerExists(id.to_owned()));
        }
        map.insert(id.to_owned(), Slot::Creating);
        Ok(())
    }

    /// Completes a reservation.
    pub fn publish(&self, c: Arc<Container>) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(c.id.clone(), Slot::Ready(c));
    }

    /// Drops a reservation or record.
    pub fn remove(&self, id: &str) -> Option<Arc<Container>> {
        match self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(id) {
            Some(Slot::Ready(c)) => Some(c),
            _ => None,
        }
    }

    /// The created container `id`: not found, or still being created (`0x80370105`).
    pub fn get(&self, id: &str) -> Result<Arc<Container>, GcsError> {
        match self.map.lock().unwrap_or_else(PoisonError::into_inner).get(id) {
            Some(Slot::Ready(c)) => Ok(Arc::clone(c)),
            Some(Slot::Creating) => Err(GcsError::InvalidState {
                id: id.to_owned(),
                state: "still being created",
            }),
            None => Err(GcsError::ContainerNotFound(id.to_owned())),
        }
    }

    /// Every created container.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|s| match s {
                Slot::Ready(c) => Some(Arc::clone(c)),
                Slot::Creating => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rgcs_protocol::HResult;

    use super::*;

    #[test]
    fn reservation_rules() {
        let r = Registry::default();
        r.reserve("a").unwrap();
        assert_eq!(
            r.reserve("a").unwrap_err().hresult(),
            HResult::SYSTEM_ALREADY_EXISTS
        );
        assert_eq!(r.get("a").unwrap_err().hresult(), HResult::INVALID_STATE);
        assert_eq!(r.get("b").unwrap_err().hresult(), HResult::SYSTEM_NOT_FOUND);
        assert!(r.remove("a").is_none());
        r.reserve("a").unwrap();
    }
}
