//! `rgcs bench containers`: the container lifecycle (create + start + wait + delete of `true`)
//! and an exec of `true`, through rgcs and, in the same UVM and run, through Debian's `runc` and
//! `crun` binaries shipped in a bench initrd (`rgcs initrd build --tool …`).
//!
//! Timing, and what each side includes:
//! * **rgcs** is timed on the host (monotonic clock) around the bridge calls: Create, Start,
//!   ExecuteProcess (init, no stdio pipes), WaitForProcess, DeleteContainerState — so it includes
//!   five host↔guest vsock round trips and the agent's JSON handling, as a real host sees it.
//! * **runc / crun** are timed inside the guest: a busybox shell loop runs
//!   `runc run --no-pivot --bundle B id` (which creates, starts, waits and deletes) with stdio on
//!   `/dev/null`, printing a marker line before and after each run into busybox `ts '%.s'`, which
//!   stamps lines with microsecond wall-clock time. The loop's own overhead (an empty iteration:
//!   two markers) is measured the same way and subtracted from each sample. No bridge, no vsock.
//! * exec: rgcs ExecuteProcess (with `OciProcess`) + WaitForProcess from the host; runtimes
//!   `runc exec C /bin/true` in the guest loop.
//!
//! Both run the same OCI spec (the one [`ContainerSpec`] builds) over the same busybox rootfs.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{BenchError, Row, Summary};
use crate::session::{BootOptions, Session};
use rgcs_client::{
    exec_process, init_process, prepare_busybox_rootfs, uvm_sh, uvm_sh_ok, ContainerClient, ContainerError,
    ContainerSpec, Pipes, ProcessSpec, UvmShellError, BUSYBOX_ROOTFS,
};

/// Where the bench initrd puts the runtimes (their Debian paths).
pub const RUNTIMES: [(&str, &str); 2] = [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")];

/// The containers benchmark's JSON document.
#[derive(Debug, Serialize)]
pub struct ContainersReport {
    /// `"containers"`.
    pub benchmark: &'static str,
    /// Accelerator.
    pub accel: String,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Samples per row.
    pub runs: usize,
    /// How each side is timed.
    pub method: &'static str,
    /// Rows (ms).
    pub rows: Vec<Row>,
    /// `rgcs median / runtime median` per comparison.
    pub ratios: Vec<Ratio>,
    /// Runtimes not found in the initrd.
    pub missing_runtimes: Vec<String>,
    /// Series that failed (the others still ran).
    pub errors: Vec<String>,
}

/// One ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// e.g. `lifecycle rgcs/runc`.
    pub what: String,
    /// Median ratio.
    pub median: f64,
    /// p90 ratio.
    pub p90: f64,
    /// The target (≤).
    pub target: Option<f64>,
}

/// The table header line that says how each side is timed.
pub const METHOD: &str = "rgcs: host clock around the bridge calls (incl. vsock round trips); runc/crun: in-guest busybox loop stamped by `ts`, loop overhead subtracted";

/// Errors of the containers benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ContainersBenchError {
    /// Boot failed.
    #[error("boot failed")]
    Boot(#[from] crate::session::SessionError),
    /// A container call failed.
    #[error("{step} failed")]
    Call {
        /// Which step.
        step: String,
        /// Why.
        #[source]
        source: ContainerError,
    },
    /// A UVM shell step failed.
    #[error("{step} failed")]
    Shell {
        /// Which step.
        step: String,
        /// Why.
        #[source]
        source: UvmShellError,
    },
    /// The in-guest loop printed something unexpected.
    #[error("cannot parse the {runtime} loop output: {detail}")]
    Parse {
        /// Which runtime.
        runtime: String,
        /// What was wrong.
        detail: String,
    },
    /// `true` did not exit 0.
    #[error("{what} (`/bin/true`) exited with {code}")]
    BadExit {
        /// Which process.
        what: String,
        /// Its exit code.
        code: u32,
    },
    /// Summaries.
    #[error("benchmark summary")]
    Summary(#[from] BenchError),
}

fn call(step: impl Into<String>) -> impl FnOnce(ContainerError) -> ContainersBenchError {
    let step = step.into();
    move |source| ContainersBenchError::Call { step, source }
}

fn shell(step: impl Into<String>) -> impl FnOnce(UvmShellError) -> ContainersBenchError {
    let step = step.into();
    move |source| ContainersBenchError::Shell { step, source }
}

fn row(metric: &str, samples: Vec<f64>) -> Result<Row, BenchError> {
    let summary = Summary::of(&samples).ok_or(BenchError::NoSamples("containers"))?;
    Ok(Row {
        metric: metric.to_owned(),
        summary,
        samples,
    })
}

/// One rgcs lifecycle of `true`; returns ms.
async fn rgcs_lifecycle(c: &ContainerClient, id: &str) -> Result<f64, ContainersBenchError> {
    let config = ContainerSpec::new(id, BUSYBOX_ROOTFS, ProcessSpec::new(["/bin/true"]))
        .config()
        .map_err(|e| call(format!("spec of {id}"))(e.into()))?;
    let t0 = Instant::now();
    c.create_container(id, config)
        .await
        .map_err(call(format!("create {id}")))?;
    c.start(id).await.map_err(call(format!("start {id}")))?;
    let (pid, _stdio) = c
        .execute_process(id, init_process(Pipes::NONE))
        .await
        .map_err(call(format!("init of {id}")))?;
    let code = c
        .wait_for_process(id, pid, None)
        .await
        .map_err(call(format!("wait for {id}")))?;
    c.delete_container_state(id)
        .await
        .map_err(call(format!("delete {id}")))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if code != 0 {
        return Err(ContainersBenchError::BadExit {
            what: format!("the init of {id}"),
            code,
        });
    }
    Ok(ms)
}

/// The rgcs exec series: `/bin/true` execs in a running `sleep` container.
async fn rgcs_exec(c: &ContainerClient, runs: usize) -> Result<Vec<f64>, ContainersBenchError> {
    let exec_id = "bench-exec";
    let config = ContainerSpec::new(
        exec_id,
        BUSYBOX_ROOTFS,
        ProcessSpec::new(["/bin/sleep", "100000"]),
    )
    .config()
    .map_err(|e| call("spec of bench-exec")(e.into()))?;
    c.create_container(exec_id, config)
        .await
        .map_err(call("create bench-exec"))?;
    c.start(exec_id).await.map_err(call("start bench-exec"))?;
    let (init, _s) = c
        .execute_process(exec_id, init_process(Pipes::NONE))
        .await
        .map_err(call("init of bench-exec"))?;
    let proc_true = ProcessSpec::new(["/bin/true"]);
    let series = async {
        let mut exec = Vec::with_capacity(runs);
        for i in 0..runs + 2 {
            let t0 = Instant::now();
            let (pid, _s) = c
                .execute_process(exec_id, exec_process(&proc_true, Pipes::NONE))
                .await
                .map_err(call(format!("exec {i} in bench-exec")))?;
            let code = c
                .wait_for_process(exec_id, pid, None)
                .await
                .map_err(call(format!("wait for exec {i}")))?;
            if code != 0 {
                return Err(ContainersBenchError::BadExit {
                    what: format!("exec {i} in {exec_id}"),
                    code,
                });
            }
            if i >= 2 {
                exec.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok::<_, ContainersBenchError>(exec)
    }
    .await;
    // Clean up whatever happened (the init may already be gone).
    let _ = c.signal_process(exec_id, init, None).await;
    let _ = c.wait_for_process(exec_id, init, None).await;
    let _ = c.delete_container_state(exec_id).await;
    let exec = series?;
    Ok(exec)
}

/// Parses `ts '%.s'` output of marker lines `S i` / `E i rc` into per-iteration ms.
pub fn parse_marks(text: &str) -> Result<Vec<f64>, String> {
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        let (Some(ts), Some(kind), Some(i)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("bad line {line:?}"));
        };
        let ts: f64 = ts.parse().map_err(|_| format!("bad time in {line:?}"))?;
        match kind {
            "S" => {
                starts.insert(i.to_owned(), ts);
            }
            "E" => {
                let rc = f.next().unwrap_or("0");
                if rc != "0" {
                    let why = text
                        .lines()
                        .find(|l| l.split_whitespace().nth(1) == Some("X"))
                        .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default();
                    return Err(format!("iteration {i} failed with {rc}: {why}"));
                }
                let s = starts.remove(i).ok_or_else(|| format!("no start for {i}"))?;
                out.push((ts - s) * 1e3);
            }
            "X" => {}
            _ => return Err(format!("bad marker in {line:?}")),
        }
    }
    Ok(out)
}

/// The in-guest loop: `n` iterations of `cmd` (with `$i` the iteration), stamped by `ts`.
fn loop_script(n: usize, cmd: &str) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do echo \"S $i\"; {cmd} </dev/null >/run/bench/out 2>&1; rc=$?; echo \"E $i $rc\"; \
         [ $rc = 0 ] || echo \"X $i $(head -c 400 /run/bench/out | tr '\\n' ' ')\"; i=$((i+1)); done | /bin/busybox ts '%.s'"
    )
}

fn median(v: &[f64]) -> f64 {
    Summary::of(v).map_or(0.0, |s| s.median)
}

/// Runs the benchmark in one UVM booted with `opts` (use the bench initrd for the runtimes).
pub async fn containers(opts: &BootOptions, runs: usize) -> Result<ContainersReport, ContainersBenchError> {
    let session = Session::boot(opts).await?;
    let accel = format!("{:?}", session.uvm.accel());
    let Session { uvm, bridge, .. } = session;
    let client = ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix());
    let result = run(&client, runs).await;
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(crate::session::POWER_OFF_TIMEOUT).await;
    uvm.shutdown().await;
    let out = result?;
    Ok(ContainersReport {
        benchmark: "containers",
        accel,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        runs,
        method: METHOD,
        rows: out.rows,
        ratios: out.ratios,
        missing_runtimes: out.missing,
        errors: out.errors,
    })
}

/// What the runs produced.
#[derive(Debug, Default)]
struct Outcome {
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
    /// Runtimes not found in the initrd.
    missing: Vec<String>,
    /// Series that failed (reported, not fatal).
    errors: Vec<String>,
}

/// rgcs's own series: the lifecycle and, if it works, exec.
struct RgcsSeries {
    life: Summary,
    exec: Option<Summary>,
}

async fn run(c: &ContainerClient, runs: usize) -> Result<Outcome, ContainersBenchError> {
    prepare_busybox_rootfs(c, BUSYBOX_ROOTFS)
        .await
        .map_err(shell("busybox rootfs"))?;
    let mut out = Outcome::default();
    let rgcs = rgcs_series(c, runs, &mut out).await?;
    write_runtime_bundles(c).await?;
    let baseline_out = uvm_sh_ok(c, &loop_script(runs, ":"))
        .await
        .map_err(shell("loop baseline"))?;
    let baseline = parse_marks(&baseline_out).map_err(|detail| ContainersBenchError::Parse {
        runtime: "baseline".into(),
        detail,
    })?;
    let base = median(&baseline);
    out.rows
        .push(row("in-guest loop overhead (subtracted below)", baseline)?);
    for (name, path) in RUNTIMES {
        let present = uvm_sh(c, &format!("[ -x {path} ]"), b"")
            .await
            .map_err(shell(format!("look for {name}")))?;
        if present.code != 0 {
            out.missing.push(name.to_owned());
            continue;
        }
        runtime_series(c, runs, name, path, base, &rgcs, &mut out).await?;
    }
    Ok(out)
}

/// rgcs's lifecycle and exec series (after two unmeasured warm-up lifecycles).
async fn rgcs_series(
    c: &ContainerClient,
    runs: usize,
    out: &mut Outcome,
) -> Result<RgcsSeries, ContainersBenchError> {
    for w in 0..2 {
        rgcs_lifecycle(c, &format!("bench-warm-{w}")).await?;
    }
    let mut life = Vec::with_capacity(runs);
    for i in 0..runs {
        life.push(rgcs_lifecycle(c, &format!("bench-life-{i}")).await?);
    }
    let exec = match rgcs_exec(c, runs).await {
        Ok(v) => Some(v),
        Err(e) => {
            let text = rgcs_protocol::error_chain(&e);
            tracing::warn!(error = %text, "rgcs exec series failed");
            out.errors.push(format!("rgcs exec: {text}"));
            None
        }
    };
    let life_s = Summary::of(&life).ok_or(BenchError::NoSamples("rgcs"))?;
    out.rows
        .push(row("rgcs lifecycle (create+start+wait+delete true)", life)?);
    let exec_s = exec.as_deref().and_then(Summary::of);
    if let Some(exec) = exec {
        out.rows.push(row("rgcs exec true (exec+wait)", exec)?);
    }
    Ok(RgcsSeries {
        life: life_s,
        exec: exec_s,
    })
}

/// The `true` and `sleep` bundles the runtimes run, written in the UVM.
async fn write_runtime_bundles(c: &ContainerClient) -> Result<(), ContainersBenchError> {
    let spec_true = ContainerSpec::new("rt", BUSYBOX_ROOTFS, ProcessSpec::new(["/bin/true"]))
        .oci_spec()
        .map_err(|e| call("runtime spec")(e.into()))?;
    let spec_sleep = ContainerSpec::new("rt", BUSYBOX_ROOTFS, ProcessSpec::new(["/bin/sleep", "100000"]))
        .oci_spec()
        .map_err(|e| call("runtime spec")(e.into()))?;
    let to_json = |s| serde_json::to_vec(s).unwrap_or_default();
    uvm_sh(
        c,
        "mkdir -p /run/bench/true /run/bench/sleep && cat > /run/bench/true/config.json",
        &to_json(&spec_true),
    )
    .await
    .map_err(shell("runtime bundle"))?;
    uvm_sh(c, "cat > /run/bench/sleep/config.json", &to_json(&spec_sleep))
        .await
        .map_err(shell("runtime bundle"))?;
    Ok(())
}

/// Samples of a loop's marks, less the loop's own overhead `base`; `skip` warm-up samples.
fn net_samples(out: &str, name: &str, skip: usize, base: f64) -> Result<Vec<f64>, ContainersBenchError> {
    Ok(parse_marks(out)
        .map_err(|detail| ContainersBenchError::Parse {
            runtime: name.into(),
            detail,
        })?
        .into_iter()
        .skip(skip)
        .map(|v| (v - base).max(0.0))
        .collect())
}

/// One runtime's lifecycle and exec series in the guest, and rgcs's ratios to them.
async fn runtime_series(
    c: &ContainerClient,
    runs: usize,
    name: &str,
    path: &str,
    base: f64,
    rgcs: &RgcsSeries,
    out: &mut Outcome,
) -> Result<(), ContainersBenchError> {
    let run_cmd = format!("{path} run --no-pivot --bundle /run/bench/true bench-{name}-$i");
    // Warm-up then the measured loop.
    uvm_sh_ok(c, &loop_script(2, &run_cmd.replace("bench-", "warm-")))
        .await
        .map_err(shell(format!("{name} warm-up")))?;
    let marks = uvm_sh_ok(c, &loop_script(runs, &run_cmd))
        .await
        .map_err(shell(format!("{name} lifecycle loop")))?;
    let samples = net_samples(&marks, name, 0, base)?;
    let s = Summary::of(&samples).ok_or(BenchError::NoSamples("runtime"))?;
    out.rows
        .push(row(&format!("{name} lifecycle (run true, in guest)"), samples)?);
    out.ratios.push(Ratio {
        what: format!("lifecycle rgcs/{name}"),
        median: rgcs.life.median / s.median,
        p90: rgcs.life.p90 / s.p90,
        target: Some(if name == "runc" { 0.5 } else { 1.0 }),
    });
    // exec in a detached container.
    let cid = format!("bench-{name}-exec");
    let setup =
        format!("{path} run -d --no-pivot --bundle /run/bench/sleep {cid} </dev/null >/dev/null 2>&1");
    uvm_sh_ok(c, &setup)
        .await
        .map_err(shell(format!("{name} run -d")))?;
    let exec_cmd = format!("{path} exec {cid} /bin/true");
    let marks = uvm_sh_ok(c, &loop_script(runs + 2, &exec_cmd))
        .await
        .map_err(shell(format!("{name} exec loop")))?;
    let _ = uvm_sh(
        c,
        &format!("{path} kill {cid} KILL; sleep 0.2; {path} delete -f {cid}"),
        b"",
    )
    .await;
    let samples = net_samples(&marks, name, 2, base)?;
    let s = Summary::of(&samples).ok_or(BenchError::NoSamples("runtime"))?;
    out.rows
        .push(row(&format!("{name} exec true (in guest)"), samples)?);
    if let Some(exec_s) = rgcs.exec {
        out.ratios.push(Ratio {
            what: format!("exec rgcs/{name}"),
            median: exec_s.median / s.median,
            p90: exec_s.p90 / s.p90,
            target: None,
        });
    }
    Ok(())
}

/// Renders the ratios as text lines.
pub fn ratio_lines(ratios: &[Ratio]) -> String {
    let mut s = String::new();
    for r in ratios {
        let target = r
            .target
            .map(|t| {
                format!(
                    " (target <= {t:.1}: {})",
                    if r.median <= t { "met" } else { "NOT met" }
                )
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<24} median {:.2}x  p90 {:.2}x{target}\n",
            r.what, r.median, r.p90
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn marks_parse_into_intervals() {
        let t = "100.000000 S 0\n100.250000 E 0 0\n101.000000 S 1\n101.100000 E 1 0\n";
        let v = parse_marks(t).unwrap();
        assert_eq!(v.len(), 2);
        assert!(
            (v[0] - 250.0).abs() < 1e-6 && (v[1] - 100.0).abs() < 1e-6,
            "{v:?}"
        );
        assert!(parse_marks("1.0 S 0\n2.0 E 0 1\n").is_err());
    }
}
