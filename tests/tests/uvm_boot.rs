//! VM tier, issue 3: one real UVM (QEMU, the agent as PID 1 in our initrd) checked end to end
//! through host-shim only: handshake and capabilities, guest logs on port 109, entropy on port 1,
//! the background module load, re-dial after the host drops the bridge (with the negotiation rules
//! on the new connection), and a clean power-off that leaves no process, socket or directory.
//! One boot serves every step (a TCG boot costs seconds); each step asserts on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use rgcs_client::bridge::BridgeClient;
use rgcs_host_shim::session::Session;
use rgcs_host_shim::vm::GuestLevel;
use rgcs_protocol::message::{Empty, GcsCapabilities, UVM_CONTAINER_ID};
use rgcs_protocol::{HResult, MessageId};
use rgcs_tests::{boot_options, init_logging, processes_mentioning, wait_until};

const STEP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "current_thread")]
async fn uvm_boots_negotiates_logs_seeds_redials_and_powers_off_cleanly() {
    init_logging();
    let session = Session::boot(&boot_options()).await.expect("boot and negotiate");

    // 1. Handshake: exactly the Linux capabilities of docs/gcs-reference.md §3.1.
    assert_eq!(session.capabilities, GcsCapabilities::linux());
    let t = session.timings;
    assert!(
        t.guest_init_ms > 0.0 && t.guest_ready_ms > t.guest_init_ms,
        "{t:?}"
    );

    // 2. Guest logs arrived on port 109 as logrus JSON, from PID 1 and from the agent.
    let logs = session.uvm.guest_logs();
    for msg in [
        "early filesystems mounted",
        "cgroups ready",
        "early modules loaded",
        "init ready",
        "rgcs agent starting",
        "bridge negotiated",
    ] {
        let rec = logs
            .wait_for(STEP, |r| r.msg == msg)
            .await
            .unwrap_or_else(|| panic!("no guest log {msg:?}"));
        assert!(
            !rec.raw && rec.time.as_deref().is_some_and(|t| t.ends_with('Z')),
            "{rec:?}"
        );
        assert_eq!(rec.level, GuestLevel::Info, "{rec:?}");
    }
    let cg = logs.wait_for(STEP, |r| r.msg == "cgroups ready").await.unwrap();
    assert_eq!(cg.fields["version"], "v2", "{cg:?}");
    assert!(logs.snapshot().iter().all(|r| !r.raw), "every guest line is JSON");

    // 3. Entropy: the host served 512 bytes and the guest fed all of them to the kernel.
    assert!(
        session.uvm.entropy_delivered(),
        "host did not deliver the entropy seed"
    );
    let seeded = logs
        .wait_for(STEP, |r| r.msg == "entropy seeded")
        .await
        .expect("entropy log");
    assert_eq!(seeded.fields["bytes"], 512, "{seeded:?}");

    // 4. The late set-up (entropy, cgroups, lo, storage modules) runs after readiness, all of it.
    let late = logs
        .wait_for(STEP, |r| r.msg == "late kernel modules loaded")
        .await
        .expect("late modules");
    assert_eq!(late.fields["skipped"], 0, "{late:?}");
    assert!(late.fields["loaded"].as_u64().is_some_and(|n| n > 10), "{late:?}");

    // 5. The bridge works: DumpStacks answers with the agent's summary.
    let stacks = session.bridge.dump_stacks().await.expect("dump stacks");
    assert!(
        stacks.contains("rgcs agent") && stacks.contains("in flight"),
        "{stacks}"
    );

    // 6. The host drops the bridge: the agent dials again; the new connection starts fresh.
    let Session { uvm, bridge, .. } = session;
    drop(bridge);
    let stream = uvm.accept_bridge(STEP).await.expect("agent re-dialled");
    let bridge = BridgeClient::new(stream);
    let err = bridge
        .call::<_, Empty>(MessageId::DUMP_STACKS, UVM_CONTAINER_ID, &Empty {})
        .await
        .unwrap_err();
    assert_eq!(
        err.hresult(),
        Some(HResult::NOT_IMPL),
        "before negotiation: {err}"
    );
    assert_eq!(bridge.negotiate().await.expect("renegotiate").version, 4);
    let err = bridge.negotiate().await.unwrap_err();
    assert_eq!(
        err.hresult(),
        Some(HResult::NOT_IMPL),
        "second negotiation: {err}"
    );
    let err = bridge
        .call::<_, Empty>(MessageId(0x1010_1F01), UVM_CONTAINER_ID, &Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.hresult(), Some(HResult::NOT_IMPL), "unknown type: {err}");
    let rec = logs
        .wait_for(STEP, |r| {
            r.msg == "bridge connected" && r.fields["connection"] == 2
        })
        .await;
    assert!(rec.is_some(), "guest did not log its second connection");

    // 7. Power-off: QEMU exits 0 and nothing is left behind.
    let run_dir = uvm.run_dir().to_path_buf();
    let prefix = uvm.vsock_prefix().to_path_buf();
    assert!(
        !processes_mentioning(&run_dir).is_empty(),
        "qemu and vhost-device-vsock run"
    );
    bridge.shutdown_uvm(false).await.expect("send shutdown");
    let status = uvm
        .wait(STEP)
        .await
        .expect("qemu exits after the guest powers off");
    assert!(status.success(), "qemu exit status {status}");
    let exited = logs
        .wait_for(STEP, |r| r.msg == "agent exited")
        .await
        .expect("PID 1 logged the agent's exit");
    assert_eq!(exited.fields["exit_code"], 0, "{exited:?}");
    uvm.shutdown().await;
    let leftovers = wait_until(Duration::from_secs(10), || {
        let p = processes_mentioning(&run_dir);
        p.is_empty().then_some(())
    })
    .await;
    assert!(
        leftovers.is_some(),
        "processes left: {:?}",
        processes_mentioning(&run_dir)
    );
    assert!(!run_dir.exists(), "run dir {} left behind", run_dir.display());
    assert!(!prefix.exists());
}
