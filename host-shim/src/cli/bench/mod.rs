//! `rgcs bench boot|soak|storage|net|memory|run|pod|containers`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rgcs_client::{prepare_busybox_rootfs, ContainerClient, BUSYBOX_ROOTFS};
use rgcs_host_shim::bench;
use rgcs_host_shim::session::Session;

use crate::{check_runs, BenchCommand, VmArgs};

mod run;
pub use run::bench_run;

/// A benchmark's scratch directory under the temporary directory, removed on drop.
struct TempWork(PathBuf);

impl TempWork {
    fn new(kind: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("rgcs-{kind}bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempWork {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image a CLI-driven benchmark runs: the one given, else the demo image built in `work`.
fn bench_image(work: &TempWork, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(i) = given {
        return Ok(i);
    }
    let p = work.path().join("image");
    rgcs_host_shim::image::demo::build(&p, Path::new("/bin/busybox"))
        .context("cannot build the demo image")?;
    Ok(p)
}

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
        BenchCommand::Containerd { runs, shim_dir, json } => {
            check_runs(runs)?;
            let opts = bench::containerd::Options {
                runs,
                shim_dir: shim_dir.unwrap_or_else(bench::containerd::default_shim_dir),
                initrd: rgcs_host_shim::session::initrd_from_env().map_err(anyhow::Error::msg)?,
            };
            let report = bench::containerd::run(&opts)
                .await
                .context("containerd benchmark failed")?;
            print!("{}", bench::containerd::render(&report));
            if let Some(path) = json {
                bench::write_json(&path, &report)?;
            }
        }
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
            return bench_pod(&vm, runs, image, json).await;
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

/// `rgcs bench pod`: what a pod costs and what it saves, timed end to end through the CLI as a
/// user runs it (each step a separate `rgcs` process, own state directory):
/// `run -d` (a new pod: boot, sandbox, image, container) and `run -d --pod P` (the pod up: image
/// and container only) until the command returns with the container running; `rm -f` of each.
pub async fn bench_pod(
    vm: &VmArgs,
    runs: usize,
    image: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<ExitCode> {
    use rgcs_host_shim::bench::{table, write_json, Row, Summary};
    let work = TempWork::new("pod")?;
    let image = bench_image(&work, image)?;
    let exe = std::env::current_exe()?;
    let mut vm_args = vm.to_args()?;
    vm_args.extend(["--cache".into(), work.path().join("cache").into()]);
    let state = work.path().join("state");
    let rgcs = |args: Vec<OsString>| {
        let (exe, state) = (exe.clone(), state.clone());
        async move {
            let t = Instant::now();
            let out = tokio::process::Command::new(&exe)
                .arg("--state-dir")
                .arg(&state)
                .args(&args)
                .output()
                .await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!("rgcs {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok::<f64, anyhow::Error>(ms)
        }
    };
    let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let img: OsString = image.clone().into();
    // A warm-up: the image's layers are imported once into the cache, as for any later run.
    let mut warm = os(&["run", "-d", "--network", "none", "--name", "warm"]);
    warm.extend(vm_args.iter().cloned());
    warm.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
    rgcs(warm).await?;
    rgcs(os(&["rm", "-f", "warm"])).await?;
    let (mut new_pod, mut rm_pod) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("b{i}");
        let mut a = os(&["run", "-d", "--network", "none", "--name", &name]);
        a.extend(vm_args.iter().cloned());
        a.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
        new_pod.push(rgcs(a).await?);
        rm_pod.push(rgcs(os(&["rm", "-f", &name])).await?);
    }
    let mut create = os(&["pod", "create", "--network", "none"]);
    create.extend(vm_args.iter().cloned());
    create.push("pb".into());
    let pod_create = rgcs(create).await?;
    let (mut in_pod, mut rm_in_pod) = (Vec::new(), Vec::new());
    let result = async {
        for i in 0..runs {
            let name = format!("w{i}");
            let mut a = os(&["run", "-d", "--pod", "pb", "--name", &name, "--cache"]);
            a.push(work.path().join("cache").into());
            a.extend([img.clone(), "--".into(), "sleep".into(), "1000".into()]);
            in_pod.push(rgcs(a).await?);
            rm_in_pod.push(rgcs(os(&["rm", "-f", &name])).await?);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = rgcs(os(&["pod", "rm", "-f", "pb"])).await;
    result?;
    let row = |metric: &str, samples: Vec<f64>| -> Result<Row> {
        Ok(Row {
            metric: metric.to_owned(),
            summary: Summary::of(&samples).ok_or_else(|| anyhow!("no samples for {metric}"))?,
            samples,
        })
    };
    let rows = vec![
        row("run -d (new pod) -> running", new_pod)?,
        row("rm -f (its pod goes too)", rm_pod)?,
        row("run -d --pod P -> running", in_pod)?,
        row("rm -f (in a pod)", rm_in_pod)?,
        row("pod create (once)", vec![pod_create])?,
    ];
    let ratio = rows[2].summary.median / rows[0].summary.median;
    print!(
        "{}",
        table(
            &format!(
                "pod benchmark: n={runs}, through the CLI, {} MiB, {} vCPU",
                vm.memory_mib(),
                vm.cpus()
            ),
            &rows
        )
    );
    println!("run -d --pod / run -d (median): {ratio:.3}  (what an existing pod saves)");
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            benchmark: &'static str,
            runs: usize,
            rows: &'a [Row],
            ratio_in_pod_to_new_pod: f64,
        }
        write_json(
            &path,
            &Report {
                benchmark: "pod",
                runs,
                rows: &rows,
                ratio_in_pod_to_new_pod: ratio,
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
