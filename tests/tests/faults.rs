//! VM tier, faults and the UVM's own tools (issue 13): everything through host-shim, against the
//! agent as PID 1.
//!
//! One UVM serves the cases that leave it usable: its shell and tools, EnsureFilesystem on a raw
//! disk, the host dropping the bridge under in-flight requests, a container init killed from
//! outside the agent, an OOM kill, and a SCSI disk yanked while mounted. A second UVM is for the
//! case that ends it: the vsock backend killed on the host. Each case reports `Err(reason)`; the
//! test lists every failed case at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::{
    exec_process, prepare_busybox_rootfs, uvm_sh_ok, BridgeClient, ContainerClient, Pipes, ProcessSpec,
    BUSYBOX_ROOTFS,
};
use rgcs_host_shim::session::Session;
use rgcs_host_shim::vm::qmp::Qmp;
use rgcs_host_shim::vm::{Uvm, VmError};
use rgcs_protocol::message::{
    MappedVirtualDisk, NotificationType, PropertyType, RequestType, Resource, UVM_CONTAINER_ID,
};
use rgcs_protocol::{error_chain, HResult};
use rgcs_tests::cases::{
    busybox, create_and_start, ensure, err, modify_uvm, sleeper, step, CaseResult, Cases, STEP,
};
use rgcs_tests::{boot_options, init_logging, processes_mentioning, wait_until};

/// A MappedVirtualDisk request on the UVM; the HRESULT.
async fn disk(c: &ContainerClient, request: RequestType, d: MappedVirtualDisk) -> Result<HResult, String> {
    modify_uvm(c, request, Resource::MappedVirtualDisk(d)).await
}

async fn case_shell_and_tools(c: &ContainerClient) -> CaseResult {
    // hcsshim's hosts and tests run these in the UVM (kernel-args checks, CreateScratch's mkfs).
    let out = step(
        "uvm sh",
        uvm_sh_ok(
            c,
            "dmesg | tail -n 1 > /dev/null && mount | grep -q ' / ' && sleep 0.1 && cat /proc/version && \
             command -v mkfs.ext4 && echo ok",
        ),
    )
    .await?
    .map_err(err("uvm sh"))?;
    ensure(
        out.contains("Linux version") && out.contains("mkfs.ext4") && out.ends_with("ok\n"),
        || format!("unexpected output {out:?}"),
    )?;
    // The UVM process gets /bin/sh by name, through the agent's PATH.
    let p = rgcs_client::uvm_process(["sh", "-c", "echo $0"], Pipes::OUTPUT);
    let (pid, stdio) = step("uvm process", c.execute_process(UVM_CONTAINER_ID, p))
        .await?
        .map_err(err("sh by name"))?;
    let out = stdio
        .capture_for(b"", STEP)
        .await
        .map_err(err("stdio"))?
        .ok_or("no EOF")?;
    let code = step("wait", c.wait_for_process(UVM_CONTAINER_ID, pid, None))
        .await?
        .map_err(err("wait"))?;
    ensure(code == 0 && out.stdout_text() == "sh\n", || {
        format!("exit {code}, {out:?}")
    })
}

async fn case_ensure_filesystem(c: &ContainerClient, uvm: &Uvm, work: &std::path::Path) -> CaseResult {
    // A raw, all-zero disk: EnsureFilesystem formats it (mkfs.ext4 in the UVM), then mounts it.
    let raw = work.join("raw.img");
    let f = std::fs::File::create(&raw).map_err(err("raw disk"))?;
    f.set_len(64 << 20).map_err(err("raw disk"))?;
    drop(f);
    let mut qmp = Qmp::connect(uvm.qmp_socket()).await.map_err(err("qmp"))?;
    let handle = qmp
        .hotplug_scsi_disk(&raw, 3, false)
        .await
        .map_err(err("hot-plug"))?;
    let d = MappedVirtualDisk {
        mount_path: "/run/mounts/scsi/raw".into(),
        lun: 3,
        ensure_filesystem: true,
        filesystem: "ext4".into(),
        ..MappedVirtualDisk::default()
    };
    let r = async {
        let got = disk(c, RequestType::Add, d.clone()).await?;
        ensure(got == HResult::S_OK, || format!("Add with EnsureFilesystem: {got}"))?;
        let out = step(
            "check",
            uvm_sh_ok(c, "grep ' /run/mounts/scsi/raw ' /proc/mounts | cut -d' ' -f3 && echo data > /run/mounts/scsi/raw/f && cat /run/mounts/scsi/raw/f"),
        )
        .await?
        .map_err(err("mounted disk"))?;
        ensure(out == "ext4\ndata\n", || format!("mounted disk: {out:?}"))?;
        let got = disk(c, RequestType::Remove, d.clone()).await?;
        ensure(got == HResult::S_OK, || format!("Remove: {got}"))?;
        // The host's file now holds an ext4 file system (superblock magic 0xEF53 at 1080).
        let bytes = std::fs::read(&raw).map_err(err("read back"))?;
        ensure(bytes.get(1080..1082) == Some(&[0x53, 0xEF][..]), || "no ext4 superblock on the disk".into())
    }
    .await;
    let unplugged = qmp.unplug(&handle).await.map_err(err("unplug"));
    r.and(unplugged)
}

async fn case_bridge_dropped_mid_flight(uvm: &Uvm, client: &mut Arc<ContainerClient>) -> CaseResult {
    let c = Arc::clone(client);
    let pid = sleeper(&c, busybox("survivor", &["sleep", "100000"])).await?;
    // A wait and an exec in flight when the host goes away.
    let waiting = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.wait_for_process("survivor", pid, None).await })
    };
    let execing = {
        let c = Arc::clone(&c);
        tokio::spawn(async move {
            c.execute_process(
                "survivor",
                exec_process(&ProcessSpec::new(["sleep", "100000"]), Pipes::OUTPUT),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.bridge().close();
    let w = step("the in-flight wait", waiting).await?.map_err(err("join"))?;
    ensure(w.is_err(), || {
        format!("the wait on a dropped bridge returned {w:?}")
    })?;
    if let Ok(Ok((exec_pid, _))) = step("the in-flight exec", execing).await? {
        // It was answered before the drop: that process runs on; kill it below with the init.
        eprintln!("exec {exec_pid} was answered before the bridge dropped");
    }
    // The agent dials again; a new host negotiates and finds the container running.
    let s = uvm.accept_bridge(STEP).await.map_err(err("re-dial"))?;
    let b = Arc::new(BridgeClient::new(s));
    step("negotiate", b.negotiate())
        .await?
        .map_err(err("negotiate"))?;
    let c = Arc::new(ContainerClient::new(b, uvm.vsock_prefix()));
    *client = Arc::clone(&c);
    let list = step(
        "ProcessList",
        c.get_properties("survivor", &[PropertyType::ProcessList]),
    )
    .await?
    .map_err(err("ProcessList"))?;
    ensure(list.process_list.iter().any(|p| p.process_id == pid), || {
        format!(
            "init {pid} is gone after the bridge dropped: {:?}",
            list.process_list
        )
    })?;
    let waited = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.wait_for_process("survivor", pid, None).await })
    };
    step("signal", c.signal_process("survivor", pid, Some(9)))
        .await?
        .map_err(err("signal"))?;
    let code = step("wait", waited)
        .await?
        .map_err(err("join"))?
        .map_err(err("wait"))?;
    ensure(code == 137, || format!("exit {code}"))?;
    step("delete", c.delete_container_state("survivor"))
        .await?
        .map_err(err("delete"))
}

async fn case_init_killed_from_outside(c: &ContainerClient) -> CaseResult {
    let pid = sleeper(c, busybox("victim", &["sleep", "100000"])).await?;
    step("kill -9 from the UVM", uvm_sh_ok(c, &format!("kill -9 {pid}")))
        .await?
        .map_err(err("kill"))?;
    let code = step("wait", c.wait_for_process("victim", pid, None))
        .await?
        .map_err(err("wait"))?;
    ensure(code == 137, || format!("exit {code}"))?;
    let n = c
        .wait_notification("victim", STEP)
        .await
        .map_err(err("notification"))?;
    ensure(n.notification_type == NotificationType::UnexpectedExit, || {
        format!("{n:?}")
    })?;
    step("delete", c.delete_container_state("victim"))
        .await?
        .map_err(err("delete"))
}

async fn case_oom_kill(c: &ContainerClient) -> CaseResult {
    // The init itself needs more than its limit: OOM-killed (137), counted, notified.
    let spec = busybox(
        "oom",
        &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    )
    .memory_limit(32 << 20);
    let (pid, _stdio) = create_and_start(c, &spec, Pipes::NONE).await?;
    let code = step("wait", c.wait_for_process("oom", pid, None))
        .await?
        .map_err(err("wait"))?;
    ensure(code == 137, || format!("exit {code}, want 137 (OOM kill)"))?;
    let stats = step("Statistics", c.get_properties("oom", &[PropertyType::Statistics]))
        .await?
        .map_err(err("Statistics"))?;
    let kills = stats
        .lcow_metrics
        .as_ref()
        .and_then(|m| m.memory_oom_control.as_ref())
        .map_or(0, |o| o.oom_kill);
    ensure(kills >= 1, || {
        format!("Statistics counts {kills} OOM kills: {stats:?}")
    })?;
    let n = c
        .wait_notification("oom", STEP)
        .await
        .map_err(err("notification"))?;
    ensure(n.notification_type == NotificationType::UnexpectedExit, || {
        format!("{n:?}")
    })?;
    step("delete", c.delete_container_state("oom"))
        .await?
        .map_err(err("delete"))
}

async fn case_disk_yanked(c: &ContainerClient, uvm: &Uvm, work: &std::path::Path) -> CaseResult {
    let raw = work.join("yank.img");
    let f = std::fs::File::create(&raw).map_err(err("disk"))?;
    f.set_len(64 << 20).map_err(err("disk"))?;
    drop(f);
    let mut qmp = Qmp::connect(uvm.qmp_socket()).await.map_err(err("qmp"))?;
    let handle = qmp
        .hotplug_scsi_disk(&raw, 4, false)
        .await
        .map_err(err("hot-plug"))?;
    let d = MappedVirtualDisk {
        mount_path: "/run/mounts/scsi/yank".into(),
        lun: 4,
        ensure_filesystem: true,
        filesystem: "ext4".into(),
        ..MappedVirtualDisk::default()
    };
    let got = disk(c, RequestType::Add, d.clone()).await?;
    ensure(got == HResult::S_OK, || format!("Add: {got}"))?;
    // Yanked: the host removes the device without asking the guest first.
    step("device_del", qmp.unplug(&handle))
        .await?
        .map_err(err("yank"))?;
    step("DumpStacks", c.dump_stacks())
        .await?
        .map_err(err("the agent after the yank"))?;
    // Later requests for it get answers: Remove cleans the mount up (or fails clearly), and a new
    // Add at the gone LUN fails clearly instead of hanging.
    let removed = disk(c, RequestType::Remove, d.clone()).await?;
    let mounts = step(
        "mounts",
        uvm_sh_ok(c, "grep -c ' /run/mounts/scsi/yank ' /proc/mounts || true"),
    )
    .await?
    .map_err(err("mounts"))?;
    ensure(removed == HResult::S_OK && mounts.trim() == "0", || {
        format!("Remove after the yank: {removed}, mounts left: {mounts:?}")
    })?;
    let again = disk(c, RequestType::Add, d).await?;
    ensure(again == HResult::FAIL, || {
        format!("Add of the gone disk: {again}")
    })?;
    step("DumpStacks", c.dump_stacks())
        .await?
        .map_err(err("the agent after all"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_tools_in_one_uvm() {
    init_logging();
    let work = tempfile::tempdir().unwrap();
    let Session { uvm, bridge, .. } = Session::boot(&boot_options()).await.expect("boot");
    let mut client = Arc::new(ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix()));
    let late = uvm
        .guest_logs()
        .wait_for(Duration::from_secs(60), |r| r.msg == "late set-up done")
        .await;
    assert!(late.is_some(), "late set-up did not finish");
    prepare_busybox_rootfs(&client, BUSYBOX_ROOTFS)
        .await
        .expect("busybox rootfs");
    let mut cases = Cases::new();
    cases
        .run(
            "the UVM has a shell and tools (sh, dmesg, mount, sleep, cat, mkfs.ext4)",
            case_shell_and_tools(&client),
        )
        .await;
    cases
        .run(
            "EnsureFilesystem formats a raw SCSI disk",
            case_ensure_filesystem(&client, &uvm, work.path()),
        )
        .await;
    cases
        .run(
            "the host drops the bridge under in-flight requests; containers survive",
            case_bridge_dropped_mid_flight(&uvm, &mut client),
        )
        .await;
    cases
        .run(
            "a container init killed from outside the agent",
            case_init_killed_from_outside(&client),
        )
        .await;
    cases
        .run(
            "an OOM kill is in Statistics and the notification",
            case_oom_kill(&client),
        )
        .await;
    cases
        .run(
            "a SCSI disk yanked while mounted",
            case_disk_yanked(&client, &uvm, work.path()),
        )
        .await;
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(Duration::from_secs(30)).await;
    uvm.shutdown().await;
    cases.finish();
}

/// The vsock backend dies on the host: host-shim says so and takes the VM down, and nothing of it
/// is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_vsock_backend_is_reported_and_the_uvm_torn_down() {
    init_logging();
    let Session { uvm, bridge, .. } = Session::boot(&boot_options()).await.expect("boot");
    let run_dir = uvm.run_dir().to_path_buf();
    let killed = std::process::Command::new("kill")
        .args(["-9", &uvm.vsock_backend_pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // QEMU is stopped because the guest has lost vsock.
    let status = uvm.wait(STEP).await;
    assert!(
        status.is_ok(),
        "qemu still runs after the backend died: {status:?}"
    );
    assert!(
        uvm.vsock_backend_exit().is_some(),
        "the backend's death was not recorded"
    );
    let e = uvm.accept_bridge(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(e, VmError::BackendDied { .. }), "{e}");
    assert!(
        error_chain(&e).contains("vhost-device-vsock exited"),
        "{}",
        error_chain(&e)
    );
    assert!(
        wait_until(STEP, || (!bridge.is_connected()).then_some(()))
            .await
            .is_some(),
        "the bridge client did not notice"
    );
    uvm.shutdown().await;
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "processes left: {:?}",
        processes_mentioning(&run_dir)
    );
    assert!(!run_dir.exists(), "run dir left behind");
}
