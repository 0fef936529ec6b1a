//! In-process tier of the hostile-input suite (`rgcs_client::hostile`): the real `gcs` binary on
//! this host as root, bridged over a Unix socket with re-dialling on, so cases that end the
//! connection find the agent dialling again. Requires root: fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rgcs_client::hostile::{self, BoxFut, Env, Snapshot};
use rgcs_client::{BridgeClient, ContainerClient};
use tokio::net::UnixListener;
use tokio::sync::Mutex;

use common::TempDir;

const STALL: Duration = Duration::from_millis(1500);

struct Local {
    dir: TempDir,
    listener: Mutex<UnixListener>,
    prefix: PathBuf,
    agent: u32,
    link: PathBuf,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}

/// Every descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                all.push(c);
                todo.push(c);
            }
        }
    }
    all
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

impl Env for Local {
    fn reconnect(&self) -> BoxFut<'_, Result<Arc<ContainerClient>, String>> {
        Box::pin(async move {
            let l = self.listener.lock().await;
            let (s, _) = tokio::time::timeout(Duration::from_secs(30), l.accept())
                .await
                .map_err(|_| "the agent did not dial again".to_owned())?
                .map_err(|e| e.to_string())?;
            let b = Arc::new(BridgeClient::new(s));
            b.negotiate().await.map_err(|e| e.to_string())?;
            Ok(Arc::new(ContainerClient::new(b, &self.prefix)))
        })
    }

    fn rootfs(&self) -> String {
        self.dir.0.join("rootfs").display().to_string()
    }

    fn bundle(&self, id: &str) -> String {
        self.dir.0.join("bundles").join(id).display().to_string()
    }

    fn symlink_under_root(&self) -> BoxFut<'_, Result<String, String>> {
        Box::pin(async move {
            std::fs::create_dir_all("/run/mounts").map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&self.link);
            std::os::unix::fs::symlink("/", &self.link).map_err(|e| e.to_string())?;
            Ok(self.link.display().to_string())
        })
    }

    fn snapshot(&self) -> BoxFut<'_, Result<Snapshot, String>> {
        Box::pin(async move {
            // Let the reaper collect what just exited, bounded.
            let mut last = None;
            for _ in 0..50 {
                let s = self.take();
                if last.as_ref() == Some(&s) {
                    return Ok(s);
                }
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last.ok_or_else(|| "no snapshot".into())
        })
    }

    fn stall(&self) -> Duration {
        STALL
    }
}

impl Local {
    fn take(&self) -> Snapshot {
        let agent = self.agent;
        let cg = PathBuf::from(format!("/proc/{agent}/root/sys/fs/cgroup"));
        let cgroups = if cg.join("cgroup.controllers").exists() {
            entries(&cg.join("containers"))
        } else {
            ["memory", "pids", "cpu", "devices"]
                .iter()
                .flat_map(|c| {
                    entries(&cg.join(c).join("containers"))
                        .into_iter()
                        .map(move |e| format!("{c}/{e}"))
                })
                .collect()
        };
        let mut state = entries(&self.dir.0.join("run/runtime"));
        state.extend(entries(&self.dir.0.join("run/procs")));
        Snapshot {
            mounts: std::fs::read_to_string(format!("/proc/{agent}/mountinfo"))
                .map(|m| m.lines().count())
                .unwrap_or(0),
            processes: descendants(agent).len(),
            cgroups,
            state,
            agent_fds: std::fs::read_dir(format!("/proc/{agent}/fd"))
                .map(Iterator::count)
                .unwrap_or(0),
        }
    }
}

#[tokio::test]
async fn hostile_suite_in_process() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the hostile suite needs root (run `cargo test` as root); it does not skip silently"
    );
    let dir = TempDir::new("hostile");
    let sock = dir.0.join("bridge.sock");
    let prefix = dir.0.join("vsock.sock");
    common::busybox_rootfs(&dir.0.join("rootfs"));
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcs"))
        .arg("--bridge")
        .arg(format!("unix:{}", sock.display()))
        .arg("--run-dir")
        .arg(dir.0.join("run"))
        .arg("--stdio-unix-prefix")
        .arg(&prefix)
        .arg("--bridge-stall-ms")
        .arg(STALL.as_millis().to_string())
        .args(["--log-level", "warning"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent = child.id().unwrap();
    let env = Local {
        link: PathBuf::from(format!("/run/mounts/rgcs-hostile-{}", std::process::id())),
        dir,
        listener: Mutex::new(listener),
        prefix,
        agent,
    };
    let client = env.reconnect().await.unwrap();
    let results = hostile::run(&env, client).await;
    for r in &results {
        eprintln!("{} {}", if r.result.is_ok() { "ok  " } else { "FAIL" }, r.name);
    }
    let failures = hostile::failures(&results);
    assert!(results.len() > 60, "only {} cases", results.len());
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    assert!(child.try_wait().unwrap().is_none(), "the agent exited");
}
