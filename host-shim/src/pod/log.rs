//! A workload's output log: stdout and stderr interleaved as they come, appended, rotated once
//! past [`MAX_LOG`] (one previous file, `<c>.log.1`, is kept), so a chatty container cannot fill
//! the host's disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

/// A container's log is rotated once it passes this size (one previous file is kept).
pub const MAX_LOG: u64 = 8 << 20;

/// Copies a workload's stdout and stderr into its log file (interleaved as they come), rotating
/// at [`MAX_LOG`]; ends when both streams end.
pub fn spawn_log(path: PathBuf, stdio: rgcs_client::HostStdio) -> tokio::task::JoinHandle<()> {
    let log = Arc::new(Mutex::new(BoundedLog::open(path)));
    let copy = |s: Option<tokio::net::UnixStream>, log: Arc<Mutex<BoundedLog>>| async move {
        let Some(mut s) = s else { return };
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Ok(mut l) = log.lock() {
                        l.write(&buf[..n]);
                    }
                }
            }
        }
    };
    let (a, b) = (copy(stdio.stdout, Arc::clone(&log)), copy(stdio.stderr, log));
    tokio::spawn(async move {
        tokio::join!(a, b);
    })
}

/// An append-only log with one rotation.
struct BoundedLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
}

impl BoundedLog {
    fn open(path: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Self { path, file, size }
    }

    fn write(&mut self, data: &[u8]) {
        use std::io::Write;
        if self.size + data.len() as u64 > MAX_LOG {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            *self = Self::open(self.path.clone());
        }
        if let Some(f) = &mut self.file {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_once_past_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.log");
        let mut log = BoundedLog::open(path.clone());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            log.write(&chunk);
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(path.with_extension("log.1")).unwrap().len();
        assert!(cur <= MAX_LOG && old <= MAX_LOG, "{cur} {old}");
        assert_eq!((cur + old) % (1 << 20), 0);
    }
}
