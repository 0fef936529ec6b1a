//! `rgcs bench boot|soak|storage|net|pod|containers`.

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
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
        BenchCommand::Pod {
            vm,
            runs,
            image,
            json,
        } => {
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
