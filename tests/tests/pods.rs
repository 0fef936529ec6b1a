//! VM tier, pods in the guest (issue 10, docs/gcs-reference.md §6.6, `docs/pods.md`): a sandbox and
//! workloads that join its network, IPC and UTS namespaces, the pod's `/etc` files and volumes,
//! mount-source rewrites with their escapes refused, the tee log, the pod cgroup, and the order of
//! removal, against the agent as PID 1 in one UVM, driven only through the host client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use rgcs_client::{census, uvm_sh_ok, BindMount, ContainerClient, PodRole};
use rgcs_protocol::HResult;
use rgcs_tests::cases::{busybox, ensure, err, remove, sh, sleeper, step, CaseResult, Cases};
use rgcs_tests::{boot_with_busybox, power_off};

const POD: &str = "pod1";
const POD_HOSTNAME: &str = "podhost";

fn sandbox(id: &str) -> rgcs_client::ContainerSpec {
    let mut s = busybox(id, &["/bin/sleep", "100000"]);
    s.pod = Some(PodRole::Sandbox);
    s.hostname = Some(POD_HOSTNAME.into());
    s.memory_limit = Some(256 << 20);
    // No NIC for this pod: loopback only (hcsshim HEAD's skip-pod-networking).
    s.annotations
        .insert("io.microsoft.cri.skip-pod-networking".into(), "true".into());
    s
}

fn workload(id: &str, sandbox_pid: u32, args: &[&str]) -> rgcs_client::ContainerSpec {
    let mut s = busybox(id, args);
    s.pod = Some(PodRole::Workload {
        sandbox_id: POD.into(),
        sandbox_pid,
        share_pid: false,
    });
    s.mounts.push(BindMount {
        source: "sandbox://shared".into(),
        destination: "/shared".into(),
        read_only: false,
    });
    s
}

/// A Create that must fail with E_FAIL and a message containing `says`, leaving no container.
async fn refused(c: &ContainerClient, spec: &rgcs_client::ContainerSpec, says: &str) -> CaseResult {
    let cfg = spec.config().map_err(err("spec"))?;
    match step("Create", c.create_container(&spec.id, cfg)).await? {
        Ok(()) => Err(format!(
            "{}: created, want a refusal mentioning {says:?}",
            spec.id
        )),
        Err(e) => {
            let text = rgcs_protocol::error_chain(&e);
            ensure(e.hresult() == Some(HResult::FAIL) && text.contains(says), || {
                format!("{}: {text}, want E_FAIL mentioning {says:?}", spec.id)
            })
        }
    }
}

async fn case_pod(c: &ContainerClient) -> CaseResult {
    let before = census(c).await.map_err(err("census"))?;
    let sb = sleeper(c, sandbox(POD)).await?;
    let bundle = rgcs_client::bundle_path(POD);
    let result = async {
        // The pod cgroup carries the sandbox's memory limit for the pod as a whole.
        let max = uvm_sh_ok(c, &format!("cat /sys/fs/cgroup/pods/{POD}/memory.max"))
            .await
            .map_err(err("pod memory.max"))?;
        ensure(max.trim() == (256u64 << 20).to_string(), || {
            format!("pod memory.max {max:?}")
        })?;
        // w1: a server on the pod's loopback, its init output teed to logs/w1/init.log.
        let mut w1 = workload(
            "w1",
            sb,
            &[
                "/bin/sh",
                "-c",
                "echo init-output; echo init-error >&2; mkdir -p /tmp/www; echo served-by-w1 > /tmp/www/index.html; \
                 echo from-w1 > /shared/note; exec httpd -f -p 8080 -h /tmp/www",
            ],
        );
        w1.annotations.insert(
            "io.microsoft.container.lcow.tee-log-path".into(),
            "w1/init.log".into(),
        );
        let (w1_pid, w1_io) = rgcs_tests::cases::create_and_start(c, &w1, rgcs_client::Pipes::ALL).await?;
        let w2 = sleeper(c, workload("w2", sb, &["/bin/sleep", "100000"])).await?;
        // w2 reaches w1 over localhost (one network namespace).
        let mut page = String::new();
        for _ in 0..100 {
            match sh(c, "w2", "wget -q -O - http://127.0.0.1:8080/index.html").await {
                Ok(p) => {
                    page = p;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        ensure(page.trim() == "served-by-w1", || format!("w2 fetched {page:?}"))?;
        // One UTS namespace: both see the sandbox's hostname, and its /etc files.
        for id in ["w1", "w2"] {
            let h = sh(c, id, "hostname; cat /etc/hostname").await?;
            ensure(h == format!("{POD_HOSTNAME}\n{POD_HOSTNAME}\n"), || {
                format!("{id} hostname: {h:?}")
            })?;
        }
        // A sandbox:// volume shared both ways.
        let note = sh(c, "w2", "cat /shared/note; echo from-w2 > /shared/back").await?;
        ensure(note.trim() == "from-w1", || format!("w2 read {note:?}"))?;
        let back = sh(c, "w1", "cat /shared/back").await?;
        ensure(back.trim() == "from-w2", || format!("w1 read {back:?}"))?;
        // The tee log holds init's output, not an exec's.
        sh(c, "w1", "echo exec-output").await?;
        let log = uvm_sh_ok(c, &format!("cat {bundle}/logs/w1/init.log"))
            .await
            .map_err(err("tee log"))?;
        ensure(
            log.contains("init-output") && log.contains("init-error") && !log.contains("exec-output"),
            || format!("tee log {log:?}"),
        )?;
        // Refusals, each leaving nothing behind.
        let mut named = workload("bad-host", sb, &["/bin/true"]);
        named.hostname = Some("elsewhere".into());
        refused_with_hostname(c, &named).await?;
        let mut escape = workload("bad-escape", sb, &["/bin/true"]);
        escape.mounts[0].source = "sandbox://../../x".into();
        refused(c, &escape, "leaves its base directory").await?;
        let mut missing = workload("bad-missing", sb, &["/bin/true"]);
        missing.pod = Some(PodRole::Workload {
            sandbox_id: "no-such-pod".into(),
            sandbox_pid: sb,
            share_pid: false,
        });
        refused(c, &missing, "pod no-such-pod does not exist").await?;
        let mut no_sid = busybox("bad-nosid", &["/bin/true"]);
        no_sid
            .annotations
            .insert(rgcs_client::spec::CONTAINER_TYPE.into(), "container".into());
        refused(c, &no_sid, "sandbox-id").await?;
        // The sandbox cannot go before its workloads.
        match step("Delete sandbox", c.delete_container_state(POD)).await? {
            Ok(()) => return Err("the sandbox was deleted under live workloads".into()),
            Err(e) => {
                let text = rgcs_protocol::error_chain(&e);
                ensure(text.contains("still has workload containers"), || text.clone())?;
            }
        }
        remove(c, "w2", w2).await?;
        remove(c, "w1", w1_pid).await?;
        drop(w1_io);
        Ok::<(), String>(())
    }
    .await;
    remove(c, POD, sb).await?;
    result?;
    // Nothing of the pod is left: cgroups, mounts, processes, state, the bundle.
    let after = census(c).await.map_err(err("census"))?;
    ensure(
        after.cgroups == before.cgroups
            && after.mounts == before.mounts
            && after.processes == before.processes
            && after.state == before.state,
        || format!("census before {before:?}, after {after:?}"),
    )?;
    let left = uvm_sh_ok(c, &format!("ls -A {bundle} 2>/dev/null; true"))
        .await
        .map_err(err("bundle"))?;
    ensure(left.trim().is_empty(), || format!("left in the bundle: {left:?}"))
}

async fn refused_with_hostname(c: &ContainerClient, spec: &rgcs_client::ContainerSpec) -> CaseResult {
    // The client's workload spec never names a hostname; put one back as a hostile host would.
    let mut cfg = spec.config().map_err(err("spec"))?;
    if let Some(s) = cfg.oci_specification.as_mut() {
        s.set_hostname(spec.hostname.clone());
    }
    match step("Create", c.create_container(&spec.id, cfg)).await? {
        Ok(()) => Err("a workload with a hostname was created".into()),
        Err(e) => {
            let text = rgcs_protocol::error_chain(&e);
            ensure(
                text.contains("workload container must not change hostname: elsewhere"),
                || text.clone(),
            )
        }
    }
}

/// Twenty pods of a sandbox and one workload, created and removed: nothing accumulates.
async fn case_twenty_pods(c: &ContainerClient) -> CaseResult {
    let before = census(c).await.map_err(err("census"))?;
    for i in 0..20 {
        let sid = format!("p{i}");
        let mut sb = sandbox(&sid);
        sb.id.clone_from(&sid);
        let spid = sleeper(c, sb).await?;
        let mut w = workload(&format!("p{i}-w"), spid, &["/bin/sleep", "100000"]);
        w.pod = Some(PodRole::Workload {
            sandbox_id: sid.clone(),
            sandbox_pid: spid,
            share_pid: false,
        });
        let wpid = sleeper(c, w).await?;
        remove(c, &format!("p{i}-w"), wpid).await?;
        remove(c, &sid, spid).await?;
    }
    let after = census(c).await.map_err(err("census"))?;
    ensure(
        after.cgroups == before.cgroups
            && after.mounts == before.mounts
            && after.processes == before.processes
            && after.state == before.state
            && after.agent_fds == before.agent_fds,
        || format!("census before {before:?}, after {after:?}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_share_namespaces_files_and_volumes_and_leave_nothing() {
    let (uvm, client) = boot_with_busybox().await;
    let mut cases = Cases::new();
    cases
        .run(
            "a sandbox and two workloads: localhost, hostname, sandbox:// volume, tee log, refusals, order",
            case_pod(&client),
        )
        .await;
    cases
        .run("twenty pods leave nothing behind", case_twenty_pods(&client))
        .await;
    power_off(&client, uvm).await;
    cases.finish();
}
