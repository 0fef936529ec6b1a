//! Process IDs the agent signals. `kill(0, sig)` signals the caller's own process group and
//! `kill(-1, sig)` every process: a PID from a reply or a request must never reach `kill` as
//! either, so [`ProcessId`] can only hold a positive PID.

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A positive PID in the UVM's root PID namespace (`1..=i32::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct ProcessId(u32);

impl ProcessId {
    /// `raw` as a PID, or `None` when it is 0, negative or beyond `i32::MAX`.
    pub fn new(raw: i64) -> Option<Self> {
        (1..=i64::from(i32::MAX))
            .contains(&raw)
            .then(|| u32::try_from(raw).ok())
            .flatten()
            .map(Self)
    }

    /// The PID as the wire carries it.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The PID as the kernel takes it (positive by construction).
    pub fn raw(self) -> i32 {
        i32::try_from(self.0).unwrap_or(i32::MAX)
    }

    /// `kill(pid, sig)`; `sig` 0 only checks that the process exists.
    pub fn signal(self, sig: i32) -> Result<(), Errno> {
        let sig = match sig {
            0 => None,
            s => Some(Signal::try_from(s)?),
        };
        kill(Pid::from_raw(self.raw()), sig)
    }
}

impl TryFrom<i64> for ProcessId {
    type Error = String;

    fn try_from(raw: i64) -> Result<Self, String> {
        Self::new(raw).ok_or_else(|| format!("{raw} is not a process ID"))
    }
}

impl From<ProcessId> for u32 {
    fn from(p: ProcessId) -> u32 {
        p.0
    }
}

impl From<Pid> for ProcessId {
    /// Pids the kernel hands out (fork, clone) are positive.
    fn from(p: Pid) -> Self {
        Self(u32::try_from(p.as_raw()).unwrap_or(1).max(1))
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_pids() {
        for bad in [0, -1, -5, i64::from(i32::MAX) + 1, i64::MAX] {
            assert_eq!(ProcessId::new(bad), None, "{bad}");
            assert!(serde_json::from_str::<ProcessId>(&bad.to_string()).is_err());
        }
        let p = ProcessId::new(42).unwrap();
        assert_eq!((p.get(), p.raw()), (42, 42));
        assert_eq!(serde_json::to_string(&p).unwrap(), "42");
        assert_eq!(serde_json::from_str::<ProcessId>("42").unwrap(), p);
        assert!(serde_json::from_str::<ProcessId>("null").is_err());
    }

    #[test]
    fn signal_zero_probes() {
        let me = ProcessId::new(i64::from(std::process::id())).unwrap();
        assert_eq!(me.signal(0), Ok(()));
        assert_eq!(me.signal(4096), Err(Errno::EINVAL));
    }
}
