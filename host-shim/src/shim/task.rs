//! One task's processes (the init and its execs) and their life: created → running → stopped.
//! The exit is a `watch` value, set once (the first of the guest's answer, a kill before start,
//! or the UVM's death wins), which `Wait` and `Delete` read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use super::io::{StdioPaths, Wired};
use super::spec::Kind;
use crate::rootfs::SharedDir;

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit status (128 + signal for a signal).
    pub code: u32,
    /// When.
    pub at: Timestamp,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// A Start is in flight (Kill and Delete wait for it to settle).
    Starting,
    /// Running with this guest PID.
    Running(u32),
    /// Exited.
    Stopped,
}

/// The init or an exec.
#[derive(Debug)]
pub struct Proc {
    /// "" for the init.
    pub exec_id: String,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// An exec's process (the init's comes from the container's spec).
    pub spec: Option<oci_spec::runtime::Process>,
    phase: Mutex<Phase>,
    /// The copiers, once started.
    pub wired: Mutex<Option<Wired>>,
    exit: watch::Sender<Option<Exit>>,
    /// `CloseIO` came (perhaps before the copiers existed).
    stdin_closed: AtomicBool,
    /// The guest answered WaitForProcess: the process is gone, its output may still drain.
    exited_in_guest: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proc {
    /// A created process.
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Option<oci_spec::runtime::Process>) -> Arc<Self> {
        Arc::new(Self {
            exec_id: exec_id.to_owned(),
            stdio,
            spec,
            phase: Mutex::new(Phase::Created),
            wired: Mutex::new(None),
            exit: watch::channel(None).0,
            stdin_closed: AtomicBool::new(false),
            exited_in_guest: AtomicBool::new(false),
        })
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        *lock(&self.phase)
    }

    /// Created → Starting; `false` if it is not in Created.
    pub fn begin_start(&self) -> bool {
        let mut p = lock(&self.phase);
        if *p == Phase::Created {
            *p = Phase::Starting;
            true
        } else {
            false
        }
    }

    /// Starting → Created (the start failed).
    pub fn start_failed(&self) {
        let mut p = lock(&self.phase);
        if *p == Phase::Starting {
            *p = Phase::Created;
        }
    }

    /// Marks it running (unless it already stopped).
    pub fn set_running(&self, pid: u32) {
        let mut p = lock(&self.phase);
        if matches!(*p, Phase::Created | Phase::Starting) {
            *p = Phase::Running(pid);
        }
    }

    /// The guest reported the exit (the output may still be draining).
    pub fn set_exited_in_guest(&self) {
        self.exited_in_guest.store(true, Ordering::Release);
    }

    /// Whether the process is gone in the guest (or was never started and is stopped).
    pub fn gone(&self) -> bool {
        self.exited_in_guest.load(Ordering::Acquire) || self.phase() == Phase::Stopped
    }

    /// Records the exit; `false` if it was recorded before.
    pub fn set_exited(&self, code: u32) -> bool {
        *lock(&self.phase) = Phase::Stopped;
        let mut first = false;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit {
                code,
                at: super::timestamp_now(),
            });
            first = true;
            true
        });
        first
    }

    /// The exit, if any.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: unreachable while we borrow it.
                return Exit {
                    code: 255,
                    at: super::timestamp_now(),
                };
            }
        }
    }

    /// `CloseIO`: remembered, so that copiers wired later close stdin at once.
    pub fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::Release);
        if let Some(w) = lock(&self.wired).as_ref() {
            w.close_stdin();
        }
    }

    /// Installs the copiers (honouring a `CloseIO` that came first).
    pub fn set_wired(&self, w: Wired) {
        let mut slot = lock(&self.wired);
        if self.stdin_closed.load(Ordering::Acquire) {
            w.close_stdin();
        }
        *slot = Some(w);
    }

    /// Stops its copiers.
    pub fn stop_io(&self) {
        if let Some(mut w) = lock(&self.wired).take() {
            w.stop();
        }
    }
}

/// A task: a container in the guest (or a pod's sandbox).
#[derive(Debug)]
pub struct Task {
    /// containerd's task ID (= the guest container ID).
    pub id: String,
    /// The bundle on the host.
    pub bundle: PathBuf,
    /// Its place.
    pub kind: Kind,
    /// The init.
    pub init: Arc<Proc>,
    /// Execs by ID.
    pub execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Plan 9 shares (rootfs first), removed at delete.
    pub shares: tokio::sync::Mutex<Vec<SharedDir>>,
    /// The host rootfs mount, if we made one.
    pub host_rootfs: Option<PathBuf>,
    /// The rootfs mounts containerd gave (for TaskCreate).
    pub rootfs_mounts: Vec<containerd_shim_protos::api::Mount>,
}

impl Task {
    /// The process `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Option<Arc<Proc>> {
        if exec_id.is_empty() {
            Some(Arc::clone(&self.init))
        } else {
            lock(&self.execs).get(exec_id).cloned()
        }
    }

    /// Adds an exec; `false` if the ID is taken.
    pub fn add_exec(&self, p: Arc<Proc>) -> bool {
        let mut e = lock(&self.execs);
        if e.contains_key(&p.exec_id) {
            return false;
        }
        e.insert(p.exec_id.clone(), p);
        true
    }

    /// Removes an exec.
    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Proc>> {
        lock(&self.execs).remove(exec_id)
    }

    /// Every process not yet stopped.
    pub fn live(&self) -> Vec<Arc<Proc>> {
        let mut v: Vec<_> = lock(&self.execs).values().cloned().collect();
        v.push(Arc::clone(&self.init));
        v.retain(|p| p.phase() != Phase::Stopped);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_exit_wins() {
        let p = Proc::new("", StdioPaths::default(), None);
        assert_eq!(p.phase(), Phase::Created);
        p.set_running(5);
        assert_eq!(p.phase(), Phase::Running(5));
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.wait().await.code })
        };
        assert!(p.set_exited(3));
        assert!(!p.set_exited(137));
        assert_eq!(waiter.await.ok(), Some(3));
        assert_eq!(p.exit().map(|e| e.code), Some(3));
        p.set_running(6);
        assert_eq!(p.phase(), Phase::Stopped);
    }
}
