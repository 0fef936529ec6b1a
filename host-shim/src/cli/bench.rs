//! `rgcs bench boot|soak|storage|net|memory|run|pod|containers`.

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rgcs_client::{prepare_busybox_rootfs, ContainerClient, BUSYBOX_ROOTFS};
use rgcs_host_shim::bench;
use rgcs_host_shim::session::Session;

use crate::{check_runs, BenchCommand};

/// Runs a benchmark, prints its table, writes its JSON.
pub async fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Boot { vm, runs, json } => {
            check_runs(runs)?;
            let report = bench::boot(&vm.boot_options(), runs)
                .await
                .context("boot benchmark failed")?;
            let title = format!(
                "boot benchmark: {} boots, accel {}, {} MiB, {} vCPU",
                runs, report.accel, report.memory_mib, report.cpus
            );
            print!("{}", bench::table(&title, &report.rows));
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
        }
        BenchCommand::Soak { vm, runs, json } => {
            check_runs(runs)?;
            let session = Session::boot(&vm.boot_options()).await.context("boot")?;
            let Session { uvm, bridge, .. } = session;
            let client = ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix());
            let result = async {
                prepare_busybox_rootfs(&client, BUSYBOX_ROOTFS)
                    .await
                    .context("busybox rootfs")?;
                bench::soak::soak(&client, runs).await.context("soak failed")
            }
            .await;
            let _ = client.bridge().shutdown_uvm(true).await;
            let _ = uvm.wait(Duration::from_secs(30)).await;
            uvm.shutdown().await;
            let report = result?;
            print!("{}", report.table());
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
            let leaks = report.leaks();
            if !leaks.is_empty() {
                anyhow::bail!("the soak leaked: {}", leaks.join("; "));
            }
        }
        BenchCommand::Net {
            vm,
            mib,
            rounds,
            pings,
            json,
        } => {
            check_runs(rounds)?;
            check_runs(pings)?;
            let report = bench::net::net(&vm.boot_options(), mib.max(1), rounds, pings)
                .await
                .context("network benchmark failed")?;
            print!("{}", report.table());
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
        }
        BenchCommand::Run(a) => return bench_run(&a.vm, a.runs, a.image, a.json).await,
        BenchCommand::Memory { vm, containers, json } => {
            let report = bench::memory::memory(&vm.boot_options(), containers)
                .await
                .context("memory benchmark failed")?;
            print!("{}", report.table());
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
        }
        BenchCommand::Pod(crate::ImageBenchArgs {
            vm,
            runs,
            image,
            json,
        }) => {
            check_runs(runs)?;
            return crate::cli::pod::bench(&vm, runs, image, json).await;
        }
        BenchCommand::Storage { vm, image, mib, json } => {
            return crate::cli::image::bench_storage(vm, image, mib, json).await;
        }
        BenchCommand::Containers { vm, runs, json } => {
            check_runs(runs)?;
            let report = bench::containers::containers(&vm.boot_options(), runs)
                .await
                .context("containers benchmark failed")?;
            let title = format!(
                "containers benchmark: n={}, accel {}, {} MiB, {} vCPU\ntiming: {}",
                runs, report.accel, report.memory_mib, report.cpus, report.method
            );
            print!("{}", bench::table(&title, &report.rows));
            print!("{}", bench::containers::ratio_lines(&report.ratios));
            if !report.missing_runtimes.is_empty() {
                println!(
                    "not in this initrd: {} (build it with `rgcs initrd build --tool …`, see scripts/build.sh)",
                    report.missing_runtimes.join(", ")
                );
            }
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rgcs bench run`: `rgcs run` end to end as a user runs it (a separate process, cold: a fresh
/// UVM each time), from the command's start to the container's first output byte and to its
/// exit, with the phases `rgcs run` marks (`RGCS_RUN_MARKS`). The layers are imported once before
/// the first sample, as they would be for any run after the first.
pub async fn bench_run(
    vm: &crate::VmArgs,
    runs: usize,
    image: Option<std::path::PathBuf>,
    json: Option<std::path::PathBuf>,
) -> Result<ExitCode> {
    use std::collections::BTreeMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    use rgcs_host_shim::bench::{table, write_json, Row, Summary};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    check_runs(runs)?;
    let work = std::env::temp_dir().join(format!("rgcs-runbench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(work.clone());
    let image = match image {
        Some(i) => i,
        None => {
            let p = work.join("image");
            rgcs_host_shim::image::demo::build(&p, std::path::Path::new("/bin/busybox"))?;
            p
        }
    };
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--network".into(), "none".into()];
    args.extend(vm.to_args()?);
    args.extend(["--cache".into(), work.join("cache").into(), image.into()]);
    args.extend(["--".into(), "echo".into(), "first-output".into()]);
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let mut series: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    const PHASES: [(&str, &str, &str); 9] = [
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
    for i in 0..=runs {
        let t0 = now_ms();
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
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
            bail!("rgcs run failed ({status}) in sample {i}");
        }
        if i == 0 {
            continue; // the warm-up imported the layers
        }
        marks.insert("spawn".into(), t0);
        series
            .entry("to first output byte")
            .or_default()
            .push(first_at - t0);
        series.entry("to exit (command done)").or_default().push(end - t0);
        for (name, from, to) in PHASES {
            if let (Some(a), Some(b)) = (marks.get(from), marks.get(to)) {
                series.entry(name).or_default().push(b - a);
            }
        }
    }
    let rows: Vec<Row> = series
        .into_iter()
        .filter_map(|(metric, samples)| {
            Some(Row {
                metric: metric.to_owned(),
                summary: Summary::of(&samples)?,
                samples,
            })
        })
        .collect();
    print!(
        "{}",
        table(
            &format!(
                "rgcs run, cold (a fresh UVM each), n={runs}, {} MiB, {} vCPU, `echo` in the demo image",
                vm.memory_mib(),
                vm.cpus()
            ),
            &rows
        )
    );
    println!("warm start (a booted UVM taken from a template or pool): not implemented yet");
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            benchmark: &'static str,
            mode: &'static str,
            runs: usize,
            rows: &'a [Row],
        }
        write_json(
            &path,
            &Report {
                benchmark: "run",
                mode: "cold",
                runs,
                rows: &rows,
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
