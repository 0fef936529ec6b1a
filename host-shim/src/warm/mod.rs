//! Warm UVMs (docs/warm-start.md, ADR-0012): utility VMs booted and negotiated ahead of time,
//! each held by a background `rgcs pool serve`, and each used by exactly one container. `rgcs run`
//! leases a ready one whose boot options match its own instead of booting, and the pool boots a
//! replacement in the background. A warm UVM is never reused: after its container it powers off,
//! so no container sees another's memory, disks or processes, and each UVM's entropy and clock
//! are its own boot's.
//!
//! ```text
//! <state>/warm/pool.json            PoolConfig: how many warm UVMs to keep, booted how
//! <state>/warm/pool.lock            locked while the pool is counted and refilled
//! <state>/warm/<name>/warm.json     WarmRecord (written by the UVM's server)
//! <state>/warm/<name>/lease.sock    takes one lease, then goes (server.rs, lease.rs)
//! <state>/warm/<name>/server.log    the server's own log
//! ```

pub mod lease;
pub mod server;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pod::state::{now, process_start, read_json, write_json, StateDir};
use crate::session::BootOptions;

/// The most warm UVMs a pool keeps (each holds a booted guest: ~60–110 MiB of host memory under
/// TCG, `rgcs pool ls` shows each one's).
pub const MAX_POOL: usize = 8;

/// A warm UVM's life as its server records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmPhase {
    /// Booting.
    Booting,
    /// Booted and negotiated; `lease.sock` takes a lease.
    Ready,
    /// Running a container for a lease; powers off after it.
    Leased,
    /// The boot failed (`error` says why); the server exits.
    Failed,
}

/// `warm.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRecord {
    /// The server's PID.
    pub server_pid: u32,
    /// Its start time ([`process_start`]), against PID reuse.
    pub server_start: u64,
    /// When the server started (seconds since the epoch).
    pub created: u64,
    /// QEMU spawn → negotiated and late modules loaded, milliseconds, once ready.
    pub boot_ms: Option<u64>,
    /// What the UVM was booted with ([`fingerprint`]); a lease must ask for the same.
    pub fingerprint: String,
    /// Its phase.
    pub phase: WarmPhase,
    /// Why the boot failed.
    pub error: Option<String>,
}

/// One warm UVM's directory.
#[derive(Debug, Clone)]
pub struct WarmDir {
    /// Its name.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
}

impl WarmDir {
    /// The socket that takes the lease.
    pub fn lease_socket(&self) -> PathBuf {
        self.path.join("lease.sock")
    }

    /// The server's log.
    pub fn server_log(&self) -> PathBuf {
        self.path.join("server.log")
    }

    /// `warm.json`.
    pub fn record(&self) -> io::Result<WarmRecord> {
        read_json(&self.path.join("warm.json"))
    }

    /// Writes `warm.json` (atomically).
    pub fn write_record(&self, r: &WarmRecord) -> io::Result<()> {
        write_json(&self.path.join("warm.json"), r)
    }

    /// The record, if its server still runs.
    pub fn live_record(&self) -> Option<WarmRecord> {
        let r = self.record().ok()?;
        (process_start(r.server_pid) == Some(r.server_start)).then_some(r)
    }

    /// Removes the directory.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `pool.json`: what `rgcs pool start` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Warm UVMs to keep (booting or ready).
    pub size: usize,
    /// The VM arguments every warm UVM's server is started with (`--initrd … --memory …`).
    pub vm_args: Vec<String>,
}

/// The pool: `<state>/warm`.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
    state: StateDir,
}

/// A warm UVM as `rgcs pool ls` shows it.
#[derive(Debug, Clone)]
pub struct WarmEntry {
    /// Its directory.
    pub dir: WarmDir,
    /// Its record (`None` while the server has not written one).
    pub record: Option<WarmRecord>,
    /// Whether its server runs.
    pub alive: bool,
}

impl Pool {
    /// The pool of `state`.
    pub fn new(state: &StateDir) -> Self {
        Self {
            dir: state.path().join("warm"),
            state: state.clone(),
        }
    }

    /// The pool's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Warm UVM `name`'s directory (it may not exist).
    pub fn warm(&self, name: &str) -> WarmDir {
        WarmDir {
            name: name.to_owned(),
            path: self.dir.join(name),
        }
    }

    /// Every warm UVM directory, oldest name first.
    pub fn entries(&self) -> Vec<WarmEntry> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let dir = self.warm(&n);
                let record = dir.record().ok();
                let alive = record
                    .as_ref()
                    .is_some_and(|r| process_start(r.server_pid) == Some(r.server_start));
                WarmEntry { dir, record, alive }
            })
            .collect()
    }

    /// Removes the directories of servers that are gone (their QEMU went with them). A directory
    /// without a record yet belongs to a server still starting, unless it is older than a minute.
    pub fn sweep(&self) {
        for e in self.entries() {
            let stale = match &e.record {
                Some(_) => !e.alive,
                None => std::fs::metadata(&e.dir.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 60),
            };
            if stale {
                let _ = e.dir.remove();
            }
        }
    }

    /// `pool.json`, if a pool was started.
    pub fn config(&self) -> Option<PoolConfig> {
        read_json(&self.dir.join("pool.json")).ok()
    }

    /// Writes `pool.json`.
    pub fn write_config(&self, c: &PoolConfig) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_json(&self.dir.join("pool.json"), c)
    }

    /// Removes `pool.json` (no more refills).
    pub fn remove_config(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join("pool.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Holds the pool's lock until the file is dropped (counting and refilling are not racy
    /// between concurrent `rgcs` invocations).
    pub fn lock(&self) -> io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("pool.lock"))?;
        f.lock()?;
        Ok(f)
    }

    /// Starts servers until the pool holds `pool.json`'s size of live booting or ready UVMs;
    /// returns the directories of those it started. Nothing when no pool was started.
    pub fn refill(&self) -> io::Result<Vec<WarmDir>> {
        // Without a pool nothing is touched (not even the lock file).
        if self.config().is_none() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let Some(config) = self.config() else {
            return Ok(Vec::new());
        };
        self.sweep();
        let live = self
            .entries()
            .iter()
            .filter(|e| {
                // After the sweep a directory without a record is a server still starting.
                e.record
                    .as_ref()
                    .is_none_or(|r| e.alive && matches!(r.phase, WarmPhase::Booting | WarmPhase::Ready))
            })
            .count();
        let mut started = Vec::new();
        for _ in live..config.size.min(MAX_POOL) {
            started.push(self.spawn(&config.vm_args)?);
        }
        Ok(started)
    }

    /// Starts one `rgcs pool serve` in the background, in its own process group (a Ctrl-C in the
    /// starting terminal is not the pool's), its output to its `server.log`.
    fn spawn(&self, vm_args: &[String]) -> io::Result<WarmDir> {
        use std::os::unix::process::CommandExt;
        let name = format!(
            "w{}-{}-{}",
            now(),
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = self.warm(&name);
        std::fs::create_dir_all(&dir.path)?;
        let log = std::fs::File::create(dir.server_log())?;
        let mut args: Vec<OsString> = vec![
            "--state-dir".into(),
            self.state.path().into(),
            "pool".into(),
            "serve".into(),
        ];
        args.extend(vm_args.iter().map(OsString::from));
        args.push(name.into());
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        // Its exit is its own business: a reaper thread keeps it from lingering as a zombie of
        // this process while this process lives.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(dir)
    }
}

/// The resident memory of process `pid` and all its descendants (a warm UVM's server, its QEMU
/// with the guest's touched RAM, and its vhost-device-vsock), KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            };
            let ppid = u32::try_from(field("PPid:")?).ok()?;
            Some((p, ppid, field("VmRSS:").unwrap_or(0)))
        })
        .collect();
    let mut tree = vec![pid];
    let mut total = 0;
    while let Some(p) = tree.pop() {
        for &(child, parent, rss) in &procs {
            if child == p {
                total += rss;
            }
            if parent == p {
                tree.push(child);
            }
        }
    }
    total
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// What a UVM booted with `boot` is, as a string two invocations compare: the rgcs binary, the
/// initrd (path, size, modification time), memory, vCPUs, accelerator, log level and agent
/// arguments. A warm UVM serves a run only if both say the same.
pub fn fingerprint(boot: &BootOptions) -> String {
    let file = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        serde_json::json!({
            "path": std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
            "size": meta.as_ref().map(std::fs::Metadata::len),
            "mtime": meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string()),
        })
    };
    let exe = std::env::current_exe().unwrap_or_default();
    serde_json::json!({
        "rgcs": file(&exe),
        "version": env!("CARGO_PKG_VERSION"),
        "initrd": file(&boot.initrd),
        "memory_mib": boot.memory_mib,
        "cpus": boot.cpus,
        "accel": format!("{:?}", boot.accel),
        "log_level": boot.log_level,
        "agent_args": boot.agent_args,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_in_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&initrd, b"one").unwrap();
        let a = BootOptions::new(&initrd);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        let mut b = a.clone();
        b.memory_mib = 1024;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let before = fingerprint(&a);
        std::fs::write(&initrd, b"a rebuilt initrd").unwrap();
        assert_ne!(before, fingerprint(&a), "a rebuilt initrd is another UVM");
    }

    #[test]
    fn sweep_keeps_the_live_and_the_young() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(&StateDir::new(Some(dir.path().to_path_buf())));
        let write = |name: &str, pid: u32, start: u64| {
            let w = pool.warm(name);
            std::fs::create_dir_all(&w.path).unwrap();
            w.write_record(&WarmRecord {
                server_pid: pid,
                server_start: start,
                created: now(),
                boot_ms: None,
                fingerprint: String::new(),
                phase: WarmPhase::Ready,
                error: None,
            })
            .unwrap();
        };
        let me = std::process::id();
        write("live", me, process_start(me).unwrap());
        write("dead", me, process_start(me).unwrap() + 1);
        std::fs::create_dir_all(pool.warm("young").path).unwrap();
        pool.sweep();
        let names: Vec<String> = pool.entries().into_iter().map(|e| e.dir.name).collect();
        assert_eq!(names, ["live", "young"]);
    }
}
