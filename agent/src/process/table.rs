//! Process records and the WaitForProcess rules (docs/gcs-reference.md §4.8): any number of concurrent
//! waits each get the exit code; the record is deleted once one wait has delivered it, and later
//! waits answer "not found"; a timeout leaves the record in place.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::sys::pid::ProcessId;

/// One process the host knows by PID.
#[derive(Debug)]
pub struct ProcessEntry {
    /// PID in the UVM's root PID namespace, as the wire carries it.
    pub pid: u32,
    id: ProcessId,
    exit: watch::Sender<Option<u32>>,
    delivered: watch::Sender<bool>,
    reaped: AtomicBool,
    tty: Mutex<Option<Arc<OwnedFd>>>,
}

/// The exit code WaitForProcess reports for a container process: the exit status, or 128 + the
/// signal that killed it.
pub fn exit_code(status: crate::reaper::ExitStatus) -> u32 {
    u32::try_from(status.code()).unwrap_or(u32::MAX)
}

/// Why a wait failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// No record (never existed, or a wait already delivered its exit).
    NotFound,
    /// The timeout expired first.
    Timeout,
}

impl ProcessEntry {
    /// A running process.
    pub fn new(id: ProcessId) -> Arc<Self> {
        Arc::new(Self {
            pid: id.get(),
            id,
            exit: watch::channel(None).0,
            delivered: watch::channel(false).0,
            reaped: AtomicBool::new(false),
            tty: Mutex::new(None),
        })
    }

    /// The PID, for the reaper and `kill`.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Sends `signal` unless the process was already reaped (its PID may be reused then):
    /// `ESRCH` in that case, as from the kernel for a dead process.
    pub fn signal(&self, signal: i32) -> Result<(), nix::errno::Errno> {
        if self.is_reaped() {
            return Err(nix::errno::Errno::ESRCH);
        }
        self.id.signal(signal)
    }

    /// Records that the reaper collected the process (signals now answer "not found").
    pub fn mark_reaped(&self) {
        self.reaped.store(true, Ordering::SeqCst);
    }

    /// Whether the process has been reaped.
    pub fn is_reaped(&self) -> bool {
        self.reaped.load(Ordering::SeqCst)
    }

    /// Publishes the exit code (after the output relays drained); waits complete.
    pub fn publish(&self, code: u32) {
        self.exit.send_replace(Some(code));
    }

    /// The published exit code, if any.
    pub fn exit_code(&self) -> Option<u32> {
        *self.exit.borrow()
    }

    /// Resolves once a wait has delivered the exit code to the host.
    pub async fn delivered(&self) {
        let mut rx = self.delivered.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Resolves once the exit code is published.
    pub async fn exited(&self) -> u32 {
        let mut rx = self.exit.subscribe();
        let code = match rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        code.unwrap_or(u32::MAX)
    }

    /// Attaches the pty master (for ResizeConsole).
    pub fn set_tty(&self, master: Arc<OwnedFd>) {
        *self.tty.lock().unwrap_or_else(PoisonError::into_inner) = Some(master);
    }

    /// Resizes the pty: `Ok(false)` when the process has no tty.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<bool> {
        let tty = self.tty.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match tty {
            None => Ok(false),
            Some(_) if self.is_reaped() => Ok(true),
            Some(master) => crate::sys::pty::set_size(master.as_fd(), rows, cols).map(|()| true),
        }
    }
}

/// PID → process, for one container or for the UVM.
#[derive(Debug, Default)]
pub struct ProcessTable {
    map: Mutex<HashMap<u32, Arc<ProcessEntry>>>,
}

impl ProcessTable {
    /// Adds a record (replacing a stale one with the same PID).
    pub fn insert(&self, entry: Arc<ProcessEntry>) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.pid, entry);
    }

    /// The record for `pid`.
    pub fn get(&self, pid: u32) -> Option<Arc<ProcessEntry>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .cloned()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record (for shutdown and diagnostics).
    pub fn all(&self) -> Vec<Arc<ProcessEntry>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// WaitForProcess: the exit code, once published, or the timeout. The first wait that
    /// delivers deletes the record.
    pub async fn wait(&self, pid: u32, timeout: Option<Duration>) -> Result<u32, WaitError> {
        let entry = self.get(pid).ok_or(WaitError::NotFound)?;
        let exited = entry.exited();
        let code = match timeout {
            Some(t) => tokio::time::timeout(t, exited)
                .await
                .map_err(|_| WaitError::Timeout)?,
            None => exited.await,
        };
        {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&pid).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                map.remove(&pid);
            }
        }
        entry.delivered.send_replace(true);
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(raw: i64) -> ProcessId {
        ProcessId::new(raw).unwrap()
    }

    #[tokio::test]
    async fn record_deleted_after_first_delivered_wait() {
        let t = Arc::new(ProcessTable::default());
        let e = ProcessEntry::new(pid(42));
        t.insert(Arc::clone(&e));
        let t1 = Arc::clone(&t);
        let w1 = tokio::spawn(async move { t1.wait(42, None).await });
        let t2 = Arc::clone(&t);
        let w2 = tokio::spawn(async move { t2.wait(42, Some(Duration::from_secs(10))).await });
        tokio::task::yield_now().await;
        assert_eq!(
            t.wait(42, Some(Duration::from_millis(20))).await,
            Err(WaitError::Timeout)
        );
        assert!(t.get(42).is_some(), "a timeout keeps the record");
        e.publish(3);
        assert_eq!(w1.await.unwrap(), Ok(3));
        assert_eq!(w2.await.unwrap(), Ok(3));
        assert_eq!(t.wait(42, None).await, Err(WaitError::NotFound));
        e.delivered().await;
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn wait_after_exit_returns_at_once_and_unknown_is_not_found() {
        let t = ProcessTable::default();
        let e = ProcessEntry::new(pid(7));
        e.publish(137);
        t.insert(Arc::clone(&e));
        assert_eq!(t.wait(7, Some(Duration::ZERO)).await, Ok(137));
        assert_eq!(t.wait(8, None).await, Err(WaitError::NotFound));
        assert!(!e.resize(1, 1).unwrap(), "no tty");
    }
}
