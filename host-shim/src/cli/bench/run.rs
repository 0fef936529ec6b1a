//! `rgcs bench run`: `rgcs run` end to end, cold and warm, as a user runs it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{bench_image, TempWork};
use crate::{check_runs, VmArgs};

/// `rgcs bench run`: `rgcs run` end to end as a user runs it (a separate process each time), from
/// the command's start to the container's first output byte and to its exit, with the phases
/// `rgcs run` marks (`RGCS_RUN_MARKS`); cold (`--cold`: a UVM booted for the run) and warm (a
/// UVM of a one-UVM pool, booted ahead of time: before each warm sample the bench waits, untimed,
/// until the pool has refilled). The layers are imported once before the first sample, as they
/// would be for any run after the first.
pub async fn bench_run(
    vm: &VmArgs,
    runs: usize,
    image: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<ExitCode> {
    use rgcs_host_shim::bench::{table, write_json, Row};
    use rgcs_host_shim::warm::{tree_rss_kib, Pool};

    check_runs(runs)?;
    let work = TempWork::new("run")?;
    let image = bench_image(&work, image)?;
    let state = work.path().join("state");
    let mut run_args: Vec<OsString> = vec![
        "--state-dir".into(),
        state.clone().into(),
        "run".into(),
        "--network".into(),
        "none".into(),
    ];
    run_args.extend(vm.to_args()?);
    run_args.extend(["--cache".into(), work.path().join("cache").into(), image.into()]);
    run_args.extend(["--".into(), "echo".into(), "first-output".into()]);
    const COLD: [(&str, &str, &str); 9] = [
        ("a. process start-up", "spawn", "start"),
        ("b. image (cached layers)", "start", "image"),
        ("c. boot: QEMU spawn -> negotiated", "image", "booted"),
        ("d. layers, scratch, overlay attached", "booted", "rootfs"),
        ("e. network (none)", "rootfs", "network"),
        ("f. Create", "network", "created"),
        ("g. Start + init running", "created", "started"),
        ("h. program ran, output drained", "started", "exited"),
        ("i. teardown (delete, detach, power off)", "exited", "down"),
    ];
    // The warm UVM's server reports its phases with the lease's answer (same host clock).
    const WARM: [(&str, &str, &str); 8] = [
        ("a. process start-up", "spawn", "start"),
        ("b. image (cached layers)", "start", "image"),
        ("d. lease, layers, scratch, overlay attached", "image", "rootfs"),
        ("e. network (none)", "rootfs", "network"),
        ("f. Create", "network", "created"),
        ("g. Start + init running", "created", "started"),
        ("h. program ran, output drained", "started", "exited"),
        (
            "i. teardown (container removed; power-off after)",
            "exited",
            "down",
        ),
    ];
    let exe = std::env::current_exe()?;
    let mut cold_args = run_args.clone();
    cold_args.insert(3, "--cold".into());
    let mut cold = RunSeries::default();
    for i in 0..=runs {
        let s = run_sample(&exe, &cold_args).await?;
        if i > 0 {
            cold.add(&s, &COLD);
        }
    }
    // The warm series: a pool of one.
    let mut pool_args: Vec<OsString> = vec![
        "--state-dir".into(),
        state.clone().into(),
        "pool".into(),
        "start".into(),
        "--size".into(),
        "1".into(),
    ];
    pool_args.extend(vm.to_args()?);
    let started = tokio::process::Command::new(&exe)
        .args(&pool_args)
        .output()
        .await?;
    if !started.status.success() {
        bail!(
            "rgcs pool start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
    let pool = Pool::new(&rgcs_host_shim::pod::state::StateDir::new(Some(state.clone())));
    let mut warm = RunSeries::default();
    let mut boot_ms = Vec::new();
    let mut memory_mib = Vec::new();
    let warm_result = async {
        for i in 0..runs {
            let ready = wait_warm_ready(&pool).await?;
            if let Some(ms) = ready.boot_ms {
                boot_ms.push(ms as f64);
            }
            memory_mib.push(tree_rss_kib(ready.server_pid) as f64 / 1024.0);
            let s = run_sample(&exe, &run_args).await?;
            if !s.marks.contains_key("leased") {
                bail!("warm sample {i} did not lease a warm UVM");
            }
            warm.add(&s, &WARM);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let stopped = tokio::process::Command::new(&exe)
        .args([
            "--state-dir".as_ref(),
            state.as_os_str(),
            "pool".as_ref(),
            "stop".as_ref(),
        ])
        .output()
        .await;
    warm_result?;
    if !stopped?.status.success() {
        bail!("rgcs pool stop failed");
    }
    let title = |mode: &str| {
        format!(
            "rgcs run, {mode}, n={runs}, {} MiB, {} vCPU, `echo` in the demo image",
            vm.memory_mib(),
            vm.cpus()
        )
    };
    let cold_rows = cold.rows();
    let warm_rows = warm.rows();
    print!(
        "{}",
        table(&title("cold (a UVM booted for each run)"), &cold_rows)
    );
    print!(
        "{}",
        table(
            &title("warm (a UVM from a pool of one, booted ahead)"),
            &warm_rows
        )
    );
    let pool_rows: Vec<Row> = [
        ("warm UVM boot (in the background), ms", boot_ms),
        ("host memory per ready warm UVM, MiB", memory_mib),
    ]
    .into_iter()
    .filter_map(|(m, v)| Row::new(m, v))
    .collect();
    print!("{}", table("the pool's cost", &pool_rows));
    let ratio = |metric: &str| {
        let m = |rows: &[Row]| rows.iter().find(|r| r.metric == metric).map(|r| r.summary.median);
        Some(m(&warm_rows)? / m(&cold_rows)?)
    };
    let ratios: Vec<(String, f64)> = ["to first output byte", "to exit (command done)"]
        .into_iter()
        .filter_map(|m| Some((format!("warm / cold, {m} (median)"), ratio(m)?)))
        .collect();
    for (name, r) in &ratios {
        println!("{name}: {r:.3}");
    }
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            benchmark: &'static str,
            runs: usize,
            cold: &'a [Row],
            warm: &'a [Row],
            pool: &'a [Row],
            ratios: &'a [(String, f64)],
        }
        write_json(
            &path,
            &Report {
                benchmark: "run",
                runs,
                cold: &cold_rows,
                warm: &warm_rows,
                pool: &pool_rows,
                ratios: &ratios,
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One `rgcs run`: when its first output byte came and when it exited (ms after its spawn), and
/// the phase marks it printed (ms since the epoch, with its spawn as `spawn`).
struct RunSample {
    first: f64,
    exit: f64,
    marks: std::collections::BTreeMap<String, f64>,
}

async fn run_sample(exe: &Path, args: &[OsString]) -> Result<RunSample> {
    use std::collections::BTreeMap;
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let t0 = now_ms();
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .env("RGCS_RUN_MARKS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let marks = tokio::spawn(async move {
        let mut m = BTreeMap::new();
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut it = l.split_whitespace();
            if it.next() == Some("rgcs-mark") {
                if let (Some(p), Some(t)) = (it.next(), it.next().and_then(|t| t.parse::<f64>().ok())) {
                    m.insert(p.to_owned(), t);
                }
            }
        }
        m
    });
    let mut first = [0u8; 1];
    let n = out.read(&mut first).await?;
    let first_at = now_ms();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).await?;
    let status = child.wait().await?;
    let end = now_ms();
    let mut marks = marks.await?;
    if !status.success() || n == 0 {
        bail!("rgcs run failed ({status})");
    }
    marks.insert("spawn".into(), t0);
    Ok(RunSample {
        first: first_at - t0,
        exit: end - t0,
        marks,
    })
}

/// Samples of one mode, by metric.
#[derive(Default)]
struct RunSeries(std::collections::BTreeMap<&'static str, Vec<f64>>);

impl RunSeries {
    fn add(&mut self, s: &RunSample, phases: &[(&'static str, &str, &str)]) {
        self.0.entry("to first output byte").or_default().push(s.first);
        self.0.entry("to exit (command done)").or_default().push(s.exit);
        for &(name, from, to) in phases {
            if let (Some(a), Some(b)) = (s.marks.get(from), s.marks.get(to)) {
                self.0.entry(name).or_default().push(b - a);
            }
        }
    }

    fn rows(&self) -> Vec<rgcs_host_shim::bench::Row> {
        self.0
            .iter()
            .filter_map(|(metric, samples)| rgcs_host_shim::bench::Row::new(*metric, samples.clone()))
            .collect()
    }
}

/// Waits until the pool has a ready warm UVM; its record.
async fn wait_warm_ready(pool: &rgcs_host_shim::warm::Pool) -> Result<rgcs_host_shim::warm::WarmRecord> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = pool.entries().into_iter().find_map(|e| {
            let r = e.record?;
            (e.alive && r.phase == rgcs_host_shim::warm::WarmPhase::Ready).then_some(r)
        }) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("the pool did not refill within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
