//! The warm pool (docs/warm-start.md): `rgcs pool start|ls|stop` and the hidden `rgcs pool serve`
//! each warm UVM runs in.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rgcs_host_shim::pod::state::{now, StateDir};
use rgcs_host_shim::warm::server::{serve, WarmOptions};
use rgcs_host_shim::warm::{fingerprint, tree_rss_kib, Pool, PoolConfig, WarmPhase, MAX_POOL};

use super::say;
use crate::VmArgs;

/// `rgcs pool start`.
#[derive(Args, Debug)]
pub struct PoolStartArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Warm UVMs to keep ready (1 to 8).
    #[arg(long, default_value_t = 1)]
    size: usize,
    /// Return at once instead of waiting until they are ready.
    #[arg(long)]
    no_wait: bool,
}

/// `rgcs pool serve` (internal: what the pool starts in the background for each warm UVM).
#[derive(Args, Debug)]
pub struct PoolServeArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The warm UVM's name.
    name: String,
}

/// How long `pool start` waits for its UVMs.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// How long `pool stop` waits for the servers it signalled.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// `rgcs pool start`: records the pool's size and boot options, stops warm UVMs booted with other
/// options, boots the missing ones and (unless `--no-wait`) waits until all are ready.
pub async fn start(state: &StateDir, a: PoolStartArgs) -> Result<ExitCode> {
    if a.size == 0 || a.size > MAX_POOL {
        bail!("--size must be 1 to {MAX_POOL}");
    }
    let vm_args =
        a.vm.to_args()?
            .into_iter()
            .map(|s| {
                s.into_string()
                    .map_err(|s| anyhow::anyhow!("argument {s:?} is not UTF-8"))
            })
            .collect::<Result<Vec<_>>>()?;
    let pool = Pool::new(state);
    let want = fingerprint(&a.vm.boot_options());
    {
        let _lock = pool.lock().context("cannot lock the pool")?;
        pool.write_config(&PoolConfig {
            size: a.size,
            vm_args,
        })
        .context("cannot write the pool's configuration")?;
    }
    // Warm UVMs booted otherwise serve no run of this pool: they go.
    let other: Vec<u32> = pool
        .entries()
        .iter()
        .filter(|e| e.alive)
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.fingerprint != want && matches!(r.phase, WarmPhase::Booting | WarmPhase::Ready))
        .map(|r| r.server_pid)
        .collect();
    terminate(&other);
    wait_gone(&pool, &other).await;
    let started = pool.refill().context("cannot start the pool's UVMs")?;
    if a.no_wait {
        say(format!("pool: size {}, {} booting", a.size, started.len()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        let entries = pool.entries();
        if let Some(failed) = entries.iter().find_map(|e| {
            let r = e.record.as_ref()?;
            (r.fingerprint == want && r.phase == WarmPhase::Failed).then(|| (e.dir.clone(), r.error.clone()))
        }) {
            let (dir, why) = failed;
            let log = std::fs::read_to_string(dir.server_log()).unwrap_or_default();
            let _ = dir.remove();
            bail!(
                "a warm UVM did not boot: {}\n{}",
                why.unwrap_or_default(),
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        let ready = entries
            .iter()
            .filter(|e| e.alive)
            .filter_map(|e| e.record.as_ref())
            .filter(|r| r.fingerprint == want && r.phase == WarmPhase::Ready)
            .count();
        if ready >= a.size {
            say(format!("pool: {ready} warm UVM(s) ready"))?;
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            bail!("the pool's UVMs were not ready within {READY_LIMIT:?} (`rgcs pool ls`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rgcs pool ls`: the pool's size and each warm UVM with its phase, boot time, age and the host
/// memory it holds (its server, QEMU and vhost-device-vsock).
pub fn ls(state: &StateDir) -> Result<ExitCode> {
    let pool = Pool::new(state);
    pool.sweep();
    match pool.config() {
        Some(c) => say(format!("pool size {} ({})", c.size, c.vm_args.join(" ")))?,
        None => say("no pool (rgcs pool start)")?,
    }
    say(format!(
        "{:<28} {:<8} {:>8} {:>8} {:>12}",
        "NAME", "PHASE", "BOOT", "AGE", "HOST MEMORY"
    ))?;
    for e in pool.entries() {
        let Some(r) = e.record else {
            say(format!("{:<28} {:<8}", e.dir.name, "starting"))?;
            continue;
        };
        let phase = match (e.alive, r.phase) {
            (_, WarmPhase::Failed) => "failed",
            (false, _) => "dead",
            (true, WarmPhase::Booting) => "booting",
            (true, WarmPhase::Ready) => "ready",
            (true, WarmPhase::Leased) => "leased",
        };
        let boot = r.boot_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
        let mem = if e.alive {
            format!("{} MiB", tree_rss_kib(r.server_pid) / 1024)
        } else {
            "-".to_owned()
        };
        say(format!(
            "{:<28} {:<8} {:>8} {:>7}s {:>12}",
            e.dir.name,
            phase,
            boot,
            now().saturating_sub(r.created),
            mem
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs pool stop`: no more refills; every warm UVM not leased is powered off. A leased one
/// belongs to its `rgcs run` and powers off when that ends.
pub async fn stop(state: &StateDir) -> Result<ExitCode> {
    let pool = Pool::new(state);
    {
        let _lock = pool.lock().context("cannot lock the pool")?;
        pool.remove_config()
            .context("cannot remove the pool's configuration")?;
    }
    let entries = pool.entries();
    let idle: Vec<u32> = entries
        .iter()
        .filter(|e| e.alive)
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.phase != WarmPhase::Leased)
        .map(|r| r.server_pid)
        .collect();
    // Servers still starting have no record yet: wait for them to write one, then stop them.
    let deadline = Instant::now() + STOP_LIMIT;
    while pool.entries().iter().any(|e| e.record.is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late: Vec<u32> = pool
        .entries()
        .iter()
        .filter(|e| e.alive)
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.phase != WarmPhase::Leased && !idle.contains(&r.server_pid))
        .map(|r| r.server_pid)
        .collect();
    let all: Vec<u32> = idle.into_iter().chain(late).collect();
    terminate(&all);
    wait_gone(&pool, &all).await;
    pool.sweep();
    let leased = pool
        .entries()
        .iter()
        .filter(|e| e.alive && e.record.as_ref().is_some_and(|r| r.phase == WarmPhase::Leased))
        .count();
    let mut line = format!("pool stopped: {} warm UVM(s) powered off", all.len());
    if leased > 0 {
        line.push_str(&format!("; {leased} in use power off when their containers end"));
    }
    say(line)?;
    Ok(ExitCode::SUCCESS)
}

/// `rgcs pool serve`: one warm UVM, in the foreground.
pub async fn serve_cmd(state: &StateDir, a: PoolServeArgs) -> Result<ExitCode> {
    serve(WarmOptions {
        name: a.name.clone(),
        state: state.clone(),
        boot: a.vm.boot_options(),
    })
    .await
    .with_context(|| format!("warm UVM {}", a.name))?;
    Ok(ExitCode::SUCCESS)
}

fn terminate(pids: &[u32]) {
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Waits (at most [`STOP_LIMIT`]) until the servers `pids` have removed their directories or
/// died; a server still there then is killed (its QEMU dies with it) and its directory swept.
async fn wait_gone(pool: &Pool, pids: &[u32]) {
    let present = || {
        pool.entries()
            .into_iter()
            .filter(|e| e.alive && e.record.as_ref().is_some_and(|r| pids.contains(&r.server_pid)))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + STOP_LIMIT;
    while !present().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in present() {
        if let Some(r) = e.record {
            if let Ok(pid) = i32::try_from(r.server_pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    pool.sweep();
}
