//! `rgcs bench containerd`: what containerd users wait for, with rgcs and with runc on the same
//! private containerd in the same run: `ctr run --rm` of `true`, and a pod through CRI
//! (RunPodSandbox + CreateContainer + StartContainer, then Stop/RemovePodSandbox). Ratios are
//! rgcs / runc. Where rgcs's time goes comes from the shim's own timing records in containerd's
//! log (UVM boot, rootfs share, guest Create, init start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::ctrd::{Containerd, CtrdError, Netns, RUNC, RUNTIME};
use super::{Row, Summary};
use crate::cri::{ContainerConfig, CriClient, PodConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per scenario and runtime.
    pub runs: usize,
    /// The directory holding `containerd-shim-rgcs-v1`.
    pub shim_dir: PathBuf,
    /// The initrd the shim boots.
    pub initrd: PathBuf,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `"containerd"`.
    pub benchmark: &'static str,
    /// containerd's version.
    pub containerd: String,
    /// Rows: `<scenario> <runtime>`.
    pub rows: Vec<Row>,
    /// Median rgcs / median runc per scenario.
    pub ratios: BTreeMap<String, f64>,
    /// Medians of the shim's phases (ms) per scenario, from its log.
    pub rgcs_phases: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum CtrdBenchError {
    /// containerd or ctr failed.
    #[error(transparent)]
    Ctrd(#[from] CtrdError),
    /// A CRI call failed.
    #[error("CRI")]
    Cri(#[from] crate::cri::CriError),
    /// A run failed.
    #[error("{0}")]
    Run(String),
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn row(metric: String, samples: Vec<f64>) -> Result<Row, CtrdBenchError> {
    let summary =
        Summary::of(&samples).ok_or_else(|| CtrdBenchError::Run(format!("{metric}: no samples")))?;
    Ok(Row {
        metric,
        summary,
        samples,
    })
}

/// The task and the `key_ms=V` fields of the shim's log lines with message `what`.
pub fn phase_records(log: &str, what: &str) -> Vec<(String, BTreeMap<String, f64>)> {
    log.lines()
        .filter(|l| l.contains(&format!(" {what} ")) || l.ends_with(&format!(" {what}")))
        .filter_map(|l| {
            let fields: Vec<(&str, &str)> =
                l.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
            let task = fields.iter().find(|(k, _)| *k == "task")?.1.to_owned();
            let times: BTreeMap<String, f64> = fields
                .iter()
                .filter(|(k, _)| k.ends_with("_ms"))
                .filter_map(|(k, v)| Some(((*k).to_owned(), v.parse::<f64>().ok()?)))
                .collect();
            (!times.is_empty()).then_some((task, times))
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark (`ctr` runs as blocking child processes: a multi-threaded runtime keeps
/// serving meanwhile).
pub async fn run(opts: &Options) -> Result<Report, CtrdBenchError> {
    if !opts.shim_dir.join("containerd-shim-rgcs-v1").is_file() {
        return Err(CtrdBenchError::Run(format!(
            "no containerd-shim-rgcs-v1 in {} (cargo build --release -p rgcs-host-shim)",
            opts.shim_dir.display()
        )));
    }
    let ns = Netns::new(&format!("rgcs-bench-{}", std::process::id()))?;
    let c = Containerd::start(Some(&ns.0), &opts.shim_dir, &opts.initrd)?;
    let version = c.ok(&["version"])?;
    let containerd = version
        .lines()
        .skip_while(|l| !l.starts_with("Server:"))
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    c.import("default", "docker.io/rgcs/demo:latest", 0)?;
    c.import_pause()?;
    c.import("k8s.io", "docker.io/rgcs/demo:latest", 0)?;
    let mut rows = Vec::new();
    let mut medians: BTreeMap<(String, &str), f64> = BTreeMap::new();
    // ctr run --rm true.
    for (name, runtime) in [("runc", RUNC), ("rgcs", RUNTIME)] {
        let mut samples = Vec::new();
        for i in 0..opts.runs {
            let id = format!("bench-{name}-{i}");
            let t = Instant::now();
            let out = c.ctr(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "docker.io/rgcs/demo:latest",
                &id,
                "true",
            ])?;
            let took = ms(t);
            if !out.status.success() {
                return Err(CtrdBenchError::Run(format!(
                    "ctr run ({name}) failed: {}",
                    super::ctrd::text(&out.stderr)
                )));
            }
            samples.push(took);
        }
        let r = row(format!("ctr run --rm true, {name}"), samples)?;
        medians.insert(("ctr run --rm true".into(), name), r.summary.median);
        rows.push(r);
    }
    // A pod through CRI.
    let cri_rows = cri_pods(&c, opts.runs).await.map_err(|e| {
        let log = c.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        CtrdBenchError::Run(format!(
            "{}\ncontainerd's log ends:\n{}",
            rgcs_protocol::error_chain(&e),
            tail.join("\n")
        ))
    })?;
    for (name, samples, teardown) in cri_rows {
        let r = row(format!("CRI pod start (run+create+start), {name}"), samples)?;
        medians.insert(("CRI pod start".into(), name), r.summary.median);
        rows.push(r);
        rows.push(row(format!("CRI pod stop+remove, {name}"), teardown)?);
    }
    let mut ratios = BTreeMap::new();
    for scenario in ["ctr run --rm true", "CRI pod start"] {
        if let (Some(rgcs), Some(runc)) = (
            medians.get(&(scenario.to_owned(), "rgcs")),
            medians.get(&(scenario.to_owned(), "runc")),
        ) {
            ratios.insert(scenario.to_owned(), rgcs / runc);
        }
    }
    // ctr's tasks are named `bench-…`; CRI's have hex IDs (a sandbox boots, its container does not).
    let log = c.log();
    let mut phases: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (task, rec) in phase_records(&log, "task created")
        .into_iter()
        .chain(phase_records(&log, "task started"))
    {
        let scenario = if task.starts_with("bench-") {
            "ctr run --rm true"
        } else {
            "CRI pod start"
        };
        for (k, v) in rec {
            if k == "boot_ms" && v == 0.0 {
                continue;
            }
            phases
                .entry(scenario.to_owned())
                .or_default()
                .entry(k)
                .or_default()
                .push(v);
        }
    }
    let rgcs_phases = phases
        .into_iter()
        .map(|(s, m)| (s, m.into_iter().map(|(k, mut v)| (k, median(&mut v))).collect()))
        .collect();
    Ok(Report {
        benchmark: "containerd",
        containerd,
        rows,
        ratios,
        rgcs_phases,
    })
}

type CriRows = Vec<(&'static str, Vec<f64>, Vec<f64>)>;

async fn cri_pods(c: &Containerd, runs: usize) -> Result<CriRows, CtrdBenchError> {
    let cri = CriClient::connect(&c.sock()).await?;
    let mut out = Vec::new();
    for handler in ["runc", "rgcs"] {
        let (mut start, mut stop) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let pod = PodConfig {
                name: format!("bench-{handler}-{i}"),
                uid: format!("uid-{handler}-{i}"),
                namespace: "bench".into(),
                hostname: format!("bench-{i}"),
                log_directory: c
                    .dir
                    .path()
                    .join("logs")
                    .join(format!("{handler}-{i}"))
                    .display()
                    .to_string(),
            };
            let ctr = ContainerConfig {
                name: "app".into(),
                image: "docker.io/rgcs/demo:latest".into(),
                command: vec!["sleep".into(), "1000".into()],
                log_path: "app.log".into(),
                ..Default::default()
            };
            let t = Instant::now();
            let pod_id = cri.run_pod_sandbox(&pod, handler).await?;
            let id = cri.create_container(&pod_id, &pod, &ctr).await?;
            cri.start_container(&id).await?;
            start.push(ms(t));
            let t = Instant::now();
            cri.stop_pod_sandbox(&pod_id).await?;
            cri.remove_pod_sandbox(&pod_id).await?;
            stop.push(ms(t));
        }
        out.push((handler, start, stop));
    }
    Ok(out)
}

/// Renders the report.
pub fn render(r: &Report) -> String {
    let mut s = super::table(
        &format!("containerd {} (rgcs and runc, same run)", r.containerd),
        &r.rows,
    );
    for (k, v) in &r.ratios {
        s.push_str(&format!("ratio rgcs/runc, {k}: {v:.1}\n"));
    }
    for (scenario, phases) in &r.rgcs_phases {
        s.push_str(&format!("rgcs phases, {scenario} (median ms, the shim's log):"));
        for (k, v) in phases {
            s.push_str(&format!(" {k}={v:.0}"));
        }
        s.push('\n');
    }
    s
}

/// The directory of the running binary (where `cargo build` puts the shim beside `rgcs`).
pub fn default_shim_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_records_are_read_from_the_log() {
        let log = "2026-12-03T16:05:17Z  INFO rgcs_host_shim::shim::service: task created task=t1 boot_ms=5536 rootfs_ms=12 create_ms=480\n\
                   other line boot_ms=1\n\
                   2026-12-03T16:05:18Z  INFO rgcs_host_shim::shim::service: task started task=t1 start_ms=40\n";
        let created = phase_records(log, "task created");
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].0, "t1");
        assert_eq!(created[0].1["boot_ms"], 5536.0);
        assert_eq!(created[0].1["create_ms"], 480.0);
        assert_eq!(phase_records(log, "task started")[0].1["start_ms"], 40.0);
        assert!((median(&mut [3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
    }
}
