//! Benchmarks (`rgcs bench …`): measured runs, summarised as min / median / p90 / max, printed as
//! a table and written as JSON. Speed goals are checked here, never by timed assertions in tests.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

pub mod containerd;
pub mod containers;
pub mod ctrd;
pub mod memory;
pub mod net;
pub mod soak;
pub mod storage;

use crate::session::{BootOptions, Session, SessionError};

/// Summary statistics of one series, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when empty or when a sample is not finite.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank: ⌈0.9·n⌉, in integers.
        let rank = (9 * n).div_ceil(10).clamp(1, n);
        Some(Self {
            n,
            min: v[0],
            median,
            p90: v[rank - 1],
            max: v[n - 1],
        })
    }
}

/// One row of a benchmark table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// Its statistics.
    pub summary: Summary,
    /// Raw samples, ms.
    pub samples: Vec<f64>,
}

impl Row {
    /// A row of `samples`; `None` when there are none (or one is not finite).
    pub fn new(metric: impl Into<String>, samples: Vec<f64>) -> Option<Self> {
        Some(Self {
            metric: metric.into(),
            summary: Summary::of(&samples)?,
            samples,
        })
    }
}

/// Renders rows as an aligned text table.
pub fn table(title: &str, rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.metric.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{title}\n");
    let _ = writeln!(
        out,
        "{:<width$}  {:>4}  {:>9}  {:>9}  {:>9}  {:>9}",
        "metric", "n", "min ms", "median", "p90", "max"
    );
    for r in rows {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{:<width$}  {:>4}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}",
            r.metric, s.n, s.min, s.median, s.p90, s.max
        );
    }
    out
}

/// The boot benchmark's JSON document.
#[derive(Debug, Serialize)]
pub struct BootReport {
    /// `"boot"`.
    pub benchmark: &'static str,
    /// Accelerator used.
    pub accel: String,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The rows.
    pub rows: Vec<Row>,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A boot failed.
    #[error("boot {index} failed")]
    Boot {
        /// Which boot (0-based).
        index: usize,
        /// Why.
        #[source]
        source: SessionError,
    },
    /// Nothing to summarise.
    #[error("no samples for {0}")]
    NoSamples(&'static str),
    /// The JSON file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Boots `n` UVMs one after another, each to a negotiated bridge and back to power-off.
pub async fn boot(opts: &BootOptions, n: usize) -> Result<BootReport, BenchError> {
    let (mut spawn, mut init_ready, mut guest_init, mut guest_ready) = (vec![], vec![], vec![], vec![]);
    let mut accel = String::new();
    for index in 0..n {
        let s = Session::boot(opts)
            .await
            .map_err(|source| BenchError::Boot { index, source })?;
        accel = format!("{:?}", s.uvm.accel());
        let t = s.timings;
        tracing::info!(
            index,
            spawn_to_negotiated_ms = t.spawn_to_negotiated.as_secs_f64() * 1e3,
            init_to_ready_ms = t.init_to_ready_ms(),
            "boot"
        );
        spawn.push(t.spawn_to_negotiated.as_secs_f64() * 1e3);
        init_ready.push(t.init_to_ready_ms());
        guest_init.push(t.guest_init_ms);
        guest_ready.push(t.guest_ready_ms);
        s.power_off()
            .await
            .map_err(|source| BenchError::Boot { index, source })?;
    }
    let row = |metric: &str, samples: Vec<f64>, what: &'static str| -> Result<Row, BenchError> {
        let summary = Summary::of(&samples).ok_or(BenchError::NoSamples(what))?;
        Ok(Row {
            metric: metric.to_owned(),
            summary,
            samples,
        })
    };
    Ok(BootReport {
        benchmark: "boot",
        accel,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        rows: vec![
            row("qemu spawn -> negotiated (host clock)", spawn, "spawn")?,
            row("guest boottime at /init", guest_init, "init")?,
            row("guest boottime at negotiated", guest_ready, "ready")?,
            row("/init -> negotiated (ours)", init_ready, "init->ready")?,
        ],
    })
}

/// Writes a report as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report).map_err(|e| BenchError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.p90, s.max), (5, 1.0, 3.0, 5.0, 5.0));
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.median, 2.5);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&ten).unwrap().p90, 9.0);
        assert_eq!(Summary::of(&[7.0]).unwrap().p90, 7.0);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
        let t = table(
            "t",
            &[Row {
                metric: "x".into(),
                summary: s,
                samples: vec![],
            }],
        );
        assert!(t.contains("median") && t.contains("2.5"));
    }
}
