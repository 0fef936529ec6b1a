//! `rgcs uvm boot`: boot and keep a UVM; with `--serve-dir`, serve its control socket.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rgcs_client::ContainerClient;
use rgcs_host_shim::control::ControlServer;
use rgcs_host_shim::session::Session;
use rgcs_host_shim::vm::{Uvm, UvmOptions, BRIDGE_PORT};

use crate::BootArgs;

/// `rgcs uvm boot`.
pub async fn boot(args: BootArgs) -> Result<ExitCode> {
    let opts = args.vm.boot_options();
    if args.check {
        let session = Session::boot(&opts).await.context("boot failed")?;
        let caps = serde_json::to_string_pretty(&session.capabilities)?;
        println!("{caps}");
        eprintln!(
            "uvm: negotiated protocol v4 {:.0} ms after QEMU spawn; guest /init -> ready {:.1} ms",
            session.timings.spawn_to_negotiated.as_secs_f64() * 1e3,
            session.timings.init_to_ready_ms()
        );
        let status = session.power_off().await.context("power-off failed")?;
        if !status.success() {
            bail!("QEMU exited with {status} after power-off");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = opts.uvm_config()?;
    if let Some(dir) = &args.vsock_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        cfg.run_dir_parent = dir.clone();
    }
    let uvm_opts = UvmOptions {
        serve_bridge: !args.no_bridge,
        ..UvmOptions::default()
    };
    let uvm = Uvm::start(&cfg, &uvm_opts)
        .await
        .context("cannot start the utility VM")?;
    println!("vsock prefix: {}", uvm.vsock_prefix().display());
    // Held until the VM stops: dropping it would close the bridge.
    let mut _bridge = None;
    let mut _server = None;
    if args.no_bridge {
        println!(
            "bridge: guest port {BRIDGE_PORT} arrives at {}_{BRIDGE_PORT}; listen there",
            uvm.vsock_prefix().display()
        );
    } else {
        let stream = uvm.accept_bridge(rgcs_host_shim::session::BOOT_TIMEOUT).await?;
        let bridge = rgcs_client::bridge::BridgeClient::new(stream);
        let caps = bridge.negotiate().await?;
        println!("{}", serde_json::to_string(&caps.capabilities)?);
        if let Some(dir) = &args.serve_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let client = Arc::new(ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix()));
            let server = Arc::new(ControlServer::new(client, dir));
            println!(
                "serving: {} (use `rgcs --uvm {} create|start|exec|ps|stats|kill|rm ...`)",
                server.socket().display(),
                dir.display()
            );
            let task = tokio::spawn(async move {
                if let Err(e) = server.serve().await {
                    eprintln!("rgcs: control socket failed: {}", rgcs_protocol::error_chain(&e));
                }
            });
            _server = Some(AbortOnDrop(task));
        } else {
            _bridge = Some(bridge);
        }
    }
    println!("running; Ctrl-C stops the VM and cleans up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = wait_term() => {}
        status = uvm.wait(FOREVER) => {
            eprintln!("uvm: QEMU exited: {status:?}");
        }
    }
    uvm.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// "Until interrupted": a year.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

async fn wait_term() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Aborts the control server (and so removes its socket) when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
