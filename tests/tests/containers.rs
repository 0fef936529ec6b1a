//! VM tier: containers and processes in one real UVM, driven only through host-shim
//! (`ContainerClient` over the bridge, stdio over vsock ports from 0x40000001).
//!
//! One boot serves every case (a TCG boot costs seconds). Each case runs in turn, reports
//! `Err(reason)` instead of panicking, and the test fails at the end listing every failed case by
//! name, so one broken call does not hide the state of the others. The container rootfs is a
//! busybox tree the test builds in the UVM with a UVM process (null container ID) from the
//! initrd's `/bin/busybox` (`rgcs initrd build --busybox`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::{
    exec_process, prepare_busybox_rootfs, uvm_process, uvm_sh_ok, ContainerClient, Pipes, ProcessSpec,
    ShutdownKind, UserSpec, BUSYBOX_ROOTFS,
};
use rgcs_host_shim::session::Session;
use rgcs_protocol::message::{NotificationType, PropertyType, UVM_CONTAINER_ID};
use rgcs_protocol::HResult;
use rgcs_tests::cases::{
    busybox, create_and_start, ensure, err, exec, remove, run_container, sleeper, step, CaseResult, Cases,
    STEP,
};
use rgcs_tests::{boot_options, init_logging};

/// The init of a long-running container ([`sleeper`]).
const SLEEP: &[&str] = &["/bin/sleep", "100000"];

async fn case_init_stdio(c: &ContainerClient) -> CaseResult {
    let (code, out, note) = run_container(c, &busybox("init-true", &["/bin/true"]), Pipes::ALL, b"").await?;
    ensure(
        code == 0 && out.stdout.is_empty() && out.stderr.is_empty(),
        || format!("true: code {code}, output {out:?}"),
    )?;
    ensure(note == NotificationType::UnexpectedExit, || {
        format!("true: notification {note:?}, want UnexpectedExit")
    })?;
    let (code, out, _) = run_container(
        c,
        &busybox("init-echo", &["/bin/echo", "hello", "world"]),
        Pipes::ALL,
        b"",
    )
    .await?;
    ensure(code == 0 && out.stdout_text() == "hello world\n", || {
        format!("echo: code {code}, output {out:?}")
    })?;
    let (code, out, _) = run_container(
        c,
        &busybox("init-cat", &["/bin/cat"]),
        Pipes::ALL,
        b"ping\npong\n",
    )
    .await?;
    ensure(code == 0 && out.stdout_text() == "ping\npong\n", || {
        format!("cat: code {code}, output {out:?}")
    })?;
    let s = busybox("init-err", &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (code, out, _) = run_container(c, &s, Pipes::ALL, b"").await?;
    ensure(
        code == 3 && out.stdout_text() == "out\n" && out.stderr_text() == "err\n",
        || format!("exit 3: code {code}, output {out:?}"),
    )
}

async fn case_signals(c: &ContainerClient) -> CaseResult {
    // SignalProcess without options is SIGKILL: 137 and ForcedExit.
    let pid = sleeper(c, busybox("sig-kill", SLEEP)).await?;
    step("SignalProcess", c.signal_process("sig-kill", pid, None))
        .await?
        .map_err(err("SignalProcess sig-kill"))?;
    let code = step("Wait", c.wait_for_process("sig-kill", pid, None))
        .await?
        .map_err(err("WaitForProcess sig-kill"))?;
    ensure(code == 137, || format!("SIGKILL: exit code {code}, want 137"))?;
    let n = c
        .wait_notification("sig-kill", STEP)
        .await
        .map_err(err("notification"))?;
    ensure(n.notification_type == NotificationType::ForcedExit, || {
        format!("SIGKILL: notification {:?}, want ForcedExit", n.notification_type)
    })?;
    // Signalling an exited process: 0x80070490.
    let e = step("SignalProcess", c.signal_process("sig-kill", pid, Some(15)))
        .await?
        .err();
    ensure(
        e.as_ref().and_then(|e| e.hresult()) == Some(HResult::NOT_FOUND),
        || format!("signal after exit: {e:?}, want 0x80070490"),
    )?;
    step("Delete", c.delete_container_state("sig-kill"))
        .await?
        .map_err(err("DeleteContainerState sig-kill"))?;

    // SIGTERM to an exec (not a namespace init, so the default action applies): 143.
    let pid = sleeper(c, busybox("sig-term", SLEEP)).await?;
    let (epid, _s) = step(
        "exec",
        c.execute_process(
            "sig-term",
            exec_process(&ProcessSpec::new(["/bin/sleep", "100000"]), Pipes::NONE),
        ),
    )
    .await?
    .map_err(err("exec sleep in sig-term"))?;
    step("SignalProcess", c.signal_process("sig-term", epid, Some(15)))
        .await?
        .map_err(err("SignalProcess 15"))?;
    let code = step("Wait", c.wait_for_process("sig-term", epid, None))
        .await?
        .map_err(err("WaitForProcess exec"))?;
    ensure(code == 143, || format!("SIGTERM: exit code {code}, want 143"))?;
    remove(c, "sig-term", pid).await?;

    // ShutdownGraceful: SIGTERM to init, which traps it; GracefulExit.
    let s = busybox(
        "shutdown-graceful",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.2; done",
        ],
    );
    let (pid, stdio) = create_and_start(c, &s, Pipes::OUTPUT).await?;
    let mut out = stdio.stdout.ok_or("no stdout")?;
    let mut first = [0u8; 6];
    step(
        "read ready",
        tokio::io::AsyncReadExt::read_exact(&mut out, &mut first),
    )
    .await?
    .map_err(err("read ready"))?;
    step("Shutdown", c.shutdown_container(&s.id, ShutdownKind::Graceful))
        .await?
        .map_err(err("ShutdownGraceful"))?;
    let code = step("Wait", c.wait_for_process(&s.id, pid, None))
        .await?
        .map_err(err("WaitForProcess graceful"))?;
    ensure(code == 7, || {
        format!("graceful: exit code {code}, want 7 (the trap)")
    })?;
    drop(out);
    let n = c
        .wait_notification(&s.id, STEP)
        .await
        .map_err(err("notification"))?;
    ensure(n.notification_type == NotificationType::GracefulExit, || {
        format!(
            "graceful: notification {:?}, want GracefulExit",
            n.notification_type
        )
    })?;
    step("Delete", c.delete_container_state(&s.id))
        .await?
        .map_err(err("DeleteContainerState graceful"))
}

async fn case_exec(c: &ContainerClient) -> CaseResult {
    let id = "exec";
    let pid = sleeper(c, busybox(id, SLEEP)).await?;
    let r = async {
        let (code, out) = exec(
            c,
            id,
            &ProcessSpec::new(["/bin/cat"]),
            Pipes::ALL,
            b"exec stdin\n",
        )
        .await?;
        ensure(code == 0 && out.stdout_text() == "exec stdin\n", || {
            format!("exec cat: {code} {out:?}")
        })?;
        let p = ProcessSpec::new(["/bin/sh", "-c", "echo o; echo e >&2; exit 5"]);
        let (code, out) = exec(c, id, &p, Pipes::ALL, b"").await?;
        ensure(
            code == 5 && out.stdout_text() == "o\n" && out.stderr_text() == "e\n",
            || format!("exec exit 5: {code} {out:?}"),
        )?;
        // user by uid:gid and by name
        let p =
            ProcessSpec::new(["/bin/sh", "-c", "id -u; id -g"]).user(UserSpec::Id { uid: 1000, gid: 100 });
        let (code, out) = exec(c, id, &p, Pipes::OUTPUT, b"").await?;
        ensure(code == 0 && out.stdout_text() == "1000\n100\n", || {
            format!("user 1000:100: {code} {out:?}")
        })?;
        let p = ProcessSpec::new(["/bin/sh", "-c", "id -un; id -u"]).user(UserSpec::Name("guest".into()));
        let (code, out) = exec(c, id, &p, Pipes::OUTPUT, b"").await?;
        ensure(code == 0 && out.stdout_text() == "guest\n1000\n", || {
            format!("user guest: {code} {out:?}")
        })?;
        // working directory and environment
        let p = ProcessSpec::new(["/bin/pwd"]).cwd("/tmp");
        let (code, out) = exec(c, id, &p, Pipes::OUTPUT, b"").await?;
        ensure(code == 0 && out.stdout_text() == "/tmp\n", || {
            format!("cwd /tmp: {code} {out:?}")
        })?;
        let p = ProcessSpec::new(["/bin/sh", "-c", "echo \"$FOO|$BAR\""])
            .env("FOO", "foo value")
            .env("BAR", "b=c");
        let (code, out) = exec(c, id, &p, Pipes::OUTPUT, b"").await?;
        ensure(code == 0 && out.stdout_text() == "foo value|b=c\n", || {
            format!("env: {code} {out:?}")
        })?;
        // tty exec: ResizeConsole is seen by `stty size`
        let p = ProcessSpec::new(["/bin/sh", "-c", "read x; stty size"]).tty(true);
        let (tpid, stdio) = step("exec tty", c.execute_process(id, exec_process(&p, Pipes::ALL)))
            .await?
            .map_err(err("exec tty"))?;
        ensure(stdio.stderr.is_none(), || "tty exec got a stderr pipe".into())?;
        step("ResizeConsole", c.resize_console(id, tpid, 31, 97))
            .await?
            .map_err(err("ResizeConsole"))?;
        let (out, code) = tokio::join!(
            stdio.capture_for(b"go\r", STEP),
            step("Wait", c.wait_for_process(id, tpid, None))
        );
        let code = code?.map_err(err("WaitForProcess tty"))?;
        let out = out.map_err(err("tty stdio"))?.ok_or("tty output did not end")?;
        ensure(code == 0 && out.stdout_text().contains("31 97"), || {
            format!("tty stty size: {code} {:?}", out.stdout_text())
        })?;
        // ResizeConsole of a process without a tty: 0x80004005.
        let (npid, _s) = step(
            "exec",
            c.execute_process(
                id,
                exec_process(&ProcessSpec::new(["/bin/sleep", "5"]), Pipes::NONE),
            ),
        )
        .await?
        .map_err(err("exec sleep"))?;
        let e = step("Resize", c.resize_console(id, npid, 10, 10)).await?.err();
        ensure(
            e.as_ref().and_then(|e| e.hresult()) == Some(HResult::FAIL),
            || format!("resize without tty: {e:?}, want 0x80004005"),
        )?;
        Ok(())
    }
    .await;
    remove(c, id, pid).await?;
    r
}

fn memory_limit(p: &rgcs_protocol::message::Properties) -> Option<u64> {
    p.lcow_metrics
        .as_ref()?
        .memory
        .as_ref()?
        .usage
        .as_ref()
        .map(|u| u.limit)
}

async fn case_memory_and_stats(c: &ContainerClient) -> CaseResult {
    let (a, b) = ("stats-a", "stats-b");
    let pa = sleeper(c, busybox(a, SLEEP).memory_limit(32 << 20)).await?;
    let pb = sleeper(c, busybox(b, SLEEP).memory_limit(64 << 20)).await?;
    let r = async {
        let sa = step("GetProperties", c.get_properties(a, &[PropertyType::Statistics]))
            .await?
            .map_err(err("Statistics a"))?;
        let sb = step("GetProperties", c.get_properties(b, &[PropertyType::Statistics]))
            .await?
            .map_err(err("Statistics b"))?;
        ensure(memory_limit(&sa) == Some(32 << 20), || {
            format!(
                "stats a: memory limit {:?}, want 32 MiB; {sa:?}",
                memory_limit(&sa)
            )
        })?;
        ensure(memory_limit(&sb) == Some(64 << 20), || {
            format!("stats b: memory limit {:?}, want 64 MiB", memory_limit(&sb))
        })?;
        // Process lists are per container.
        let la = step("ProcessList", c.get_properties(a, &[PropertyType::ProcessList]))
            .await?
            .map_err(err("ProcessList a"))?;
        let pids: Vec<u32> = la.process_list.iter().map(|p| p.process_id).collect();
        ensure(pids == vec![pa], || {
            format!("process list a: {pids:?}, want [{pa}]")
        })?;
        // An exec shows up, with a UVM PID.
        let (epid, _s) = step(
            "exec",
            c.execute_process(
                b,
                exec_process(&ProcessSpec::new(["/bin/sleep", "100000"]), Pipes::NONE),
            ),
        )
        .await?
        .map_err(err("exec in b"))?;
        let lb = step("ProcessList", c.get_properties(b, &[PropertyType::ProcessList]))
            .await?
            .map_err(err("ProcessList b"))?;
        let mut pids: Vec<u32> = lb.process_list.iter().map(|p| p.process_id).collect();
        pids.sort_unstable();
        let mut want = vec![pb, epid];
        want.sort_unstable();
        ensure(pids == want, || {
            format!("process list b: {pids:?}, want {want:?}")
        })?;
        // Enforced: a 64 MiB buffer in a 32 MiB container is OOM-killed (SIGKILL, 137).
        let p = ProcessSpec::new(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        let (code, out) = exec(c, a, &p, Pipes::OUTPUT, b"").await?;
        ensure(code == 137, || {
            format!("OOM: dd exit code {code}, want 137; {out:?}")
        })?;
        // The kernel counted it in the container's own cgroup (found by its name in the UVM).
        let events = step(
            "memory.events",
            uvm_sh_ok(
                c,
                &format!("cat $(find /sys/fs/cgroup -type d -name {a} | head -1)/memory.events"),
            ),
        )
        .await?
        .map_err(err("memory.events of stats-a"))?;
        let oom_kills = events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        ensure(oom_kills >= 1, || {
            format!("OOM: memory.events of {a}: {events:?}, want oom_kill >= 1")
        })?;
        // ... and Statistics reports it, as containerd's memory_oom_control.oom_kill.
        let so = step("GetProperties", c.get_properties(a, &[PropertyType::Statistics]))
            .await?
            .map_err(err("Statistics a after the OOM kill"))?;
        let reported = so
            .lcow_metrics
            .as_ref()
            .and_then(|m| m.memory_oom_control.as_ref())
            .map_or(0, |o| o.oom_kill);
        ensure(reported == oom_kills, || {
            format!("OOM: Statistics oom_kill {reported}, memory.events says {oom_kills}")
        })?;
        // ContainerConstraints raises the limit; Statistics sees it.
        let mut mem = rgcs_client::oci_spec::runtime::LinuxMemory::default();
        mem.set_limit(Some(48 << 20));
        let mut res = rgcs_client::oci_spec::runtime::LinuxResources::default();
        res.set_memory(Some(mem));
        step("ContainerConstraints", c.update_constraints(a, res))
            .await?
            .map_err(err("ContainerConstraints a"))?;
        let sa = step("GetProperties", c.get_properties(a, &[PropertyType::Statistics]))
            .await?
            .map_err(err("Statistics a after update"))?;
        ensure(memory_limit(&sa) == Some(48 << 20), || {
            format!("update: memory limit {:?}, want 48 MiB", memory_limit(&sa))
        })?;
        Ok(())
    }
    .await;
    remove(c, a, pa).await?;
    remove(c, b, pb).await?;
    r
}

async fn case_orphan(c: &ContainerClient) -> CaseResult {
    // The init forks a child holding stdout, then exits: the init is reported exited, the
    // output ends (the namespace's processes die with its init), the notification arrives.
    let s = busybox("orphan", &["/bin/sh", "-c", "sleep 100000 & echo started"]);
    let (code, out, note) = run_container(c, &s, Pipes::ALL, b"").await?;
    ensure(code == 0 && out.stdout_text() == "started\n", || {
        format!("orphan: {code} {out:?}")
    })?;
    ensure(note == NotificationType::UnexpectedExit, || {
        format!("orphan: notification {note:?}")
    })
}

async fn case_errors(c: &ContainerClient) -> CaseResult {
    let e = step(
        "Create",
        c.create_container("dup", busybox("dup", &["/bin/true"]).config().unwrap()),
    )
    .await?
    .err();
    ensure(e.is_none(), || format!("create dup: {e:?}"))?;
    let e = step(
        "Create",
        c.create_container("dup", busybox("dup", &["/bin/true"]).config().unwrap()),
    )
    .await?
    .err();
    ensure(
        e.as_ref().and_then(|e| e.hresult()) == Some(HResult::SYSTEM_ALREADY_EXISTS),
        || format!("second Create: {e:?}, want 0xC037010F"),
    )?;
    step("Delete", c.delete_container_state("dup"))
        .await?
        .map_err(err("DeleteContainerState dup"))?;
    let e = step("Delete", c.delete_container_state("nope")).await?.err();
    ensure(
        e.as_ref().and_then(|e| e.hresult()) == Some(HResult::SYSTEM_NOT_FOUND),
        || format!("delete unknown: {e:?}, want 0xC037010E"),
    )?;
    let e = step(
        "Wait",
        c.wait_for_process("exec", 999_999, Some(Duration::from_millis(50))),
    )
    .await?
    .err();
    ensure(e.is_some(), || "wait on an unknown container answered".into())
}

/// Mounts, cgroup directories, agent fds, processes and state directories, measured in the UVM.
async fn census(c: &ContainerClient) -> Result<String, String> {
    let script = r#"
echo "mounts $(wc -l < /proc/mounts)"
echo "cgroups $(find /sys/fs/cgroup -type d | wc -l)"
fds=0
for p in /proc/[0-9]*; do
  if [ "$(readlink $p/exe 2>/dev/null)" = /init ]; then fds=$((fds + $(ls $p/fd | wc -l))); fi
done
echo "agent-fds $fds"
# User processes only (kernel threads, children of kthreadd = PID 2, come and go on their own),
# not this shell or its children; counted with builtins only, so counting forks nothing.
n=0
for p in /proc/[0-9]*; do
  read -r line < $p/stat 2>/dev/null || continue
  rest=${line##*) }
  set -- $rest
  pid=${p#/proc/}
  if [ "$2" != 2 ] && [ "$2" != $$ ] && [ "$pid" != $$ ]; then n=$((n + 1)); fi
done
echo "processes $n"
echo "run-dirs $(find /run -xdev -type d ! -path '/run/rgcs/*' | wc -l)"
echo "bundles $(ls /run/gcs/c 2>/dev/null | wc -l)"
"#;
    step("census", uvm_sh_ok(c, script)).await?.map_err(err("census"))
}

async fn case_no_leaks(c: &ContainerClient) -> CaseResult {
    let cycle = |i: usize| async move {
        let s = busybox(&format!("cycle-{i}"), &["/bin/true"]);
        let (code, _out, _note) = run_container(c, &s, Pipes::OUTPUT, b"").await?;
        ensure(code == 0, || format!("cycle {i}: exit code {code}"))
    };
    cycle(0).await?; // lazily created parents exist from here on
    let before = census(c).await?;
    // The census must see something to be worth comparing: at least PID 1 and the agent.
    let procs = before
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    ensure(procs >= 2, || {
        format!("census saw {procs} user processes:\n{before}")
    })?;
    for i in 1..=50 {
        cycle(i).await?;
    }
    let after = census(c).await?;
    ensure(before == after, || {
        format!("50 create/delete cycles left something behind:\nbefore:\n{before}after:\n{after}")
    })
}

async fn case_uvm_process(c: &ContainerClient) -> CaseResult {
    // A UVM process: the exit code and output; DumpStacks answers.
    let out = step("uvm sh", uvm_sh_ok(c, "echo uvm; cat /proc/self/cgroup"))
        .await?
        .map_err(err("uvm process"))?;
    ensure(out.starts_with("uvm\n"), || format!("uvm process output {out:?}"))?;
    let stacks = step("DumpStacks", c.dump_stacks())
        .await?
        .map_err(err("DumpStacks"))?;
    ensure(!stacks.is_empty(), || "empty DumpStacks".into())?;
    // SignalProcess reaches UVM processes too (docs/adr/0004-executor.md: an extension over
    // hcsshim's guest, which answers 0xC037010E); a signalled UVM process reports
    // 4294967295 (§4.8), and an unknown PID is 0x80070490.
    let (pid, _s) = step(
        "uvm sleep",
        c.execute_process(
            UVM_CONTAINER_ID,
            uvm_process(["/bin/busybox", "sleep", "1000"], Pipes::NONE),
        ),
    )
    .await?
    .map_err(err("uvm sleep"))?;
    step("Signal", c.signal_process(UVM_CONTAINER_ID, pid, None))
        .await?
        .map_err(err("SignalProcess of a UVM process"))?;
    let code = step("Wait", c.wait_for_process(UVM_CONTAINER_ID, pid, None))
        .await?
        .map_err(err("WaitForProcess of a UVM process"))?;
    ensure(code == u32::MAX, || {
        format!("signalled UVM process: exit code {code}, want 4294967295")
    })?;
    let e = step("Signal", c.signal_process(UVM_CONTAINER_ID, 999_999, Some(15)))
        .await?
        .err();
    ensure(
        e.as_ref().and_then(|e| e.hresult()) == Some(HResult::NOT_FOUND),
        || format!("signal an unknown UVM PID: {e:?}, want 0x80070490"),
    )
}

async fn case_control_socket(client: &Arc<ContainerClient>) -> CaseResult {
    use rgcs_host_shim::control::{request_async, stdio_from_fds, ControlServer, ProcessArgs, Request};
    // The CLI's path: the control socket passes the guest's stdio sockets as descriptors.
    let dir = std::env::temp_dir().join(format!("rgcs-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err("control dir"))?;
    let server = Arc::new(ControlServer::new(Arc::clone(client), &dir));
    let task = tokio::spawn(Arc::clone(&server).serve());
    let r = async {
        for _ in 0..200 {
            if server.socket().exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let process = ProcessArgs {
            args: vec![
                "/bin/sh".into(),
                "-c".into(),
                "read l; echo \"got $l\"; exit 6".into(),
            ],
            ..ProcessArgs::default()
        };
        let create = Request::Create {
            id: "ctl".into(),
            rootfs: Some(BUSYBOX_ROOTFS.into()),
            process,
            memory_mib: Some(64),
        };
        step("control create", request_async(&dir, create))
            .await?
            .map_err(err("control create"))?;
        let (answer, fds) = step(
            "control start",
            request_async(
                &dir,
                Request::Start {
                    id: "ctl".into(),
                    stdin: true,
                },
            ),
        )
        .await?
        .map_err(err("control start"))?;
        let pid = answer.pid.ok_or("control start: no pid")?;
        let stdio = stdio_from_fds(&answer, fds).map_err(err("control fds"))?;
        let out = stdio
            .capture_for(b"line\n", STEP)
            .await
            .map_err(err("control stdio"))?
            .ok_or("control stdio did not end")?;
        ensure(out.stdout_text() == "got line\n", || {
            format!("control start output {out:?}")
        })?;
        let (w, _) = step(
            "control wait",
            request_async(
                &dir,
                Request::Wait {
                    id: "ctl".into(),
                    pid,
                },
            ),
        )
        .await?
        .map_err(err("control wait"))?;
        ensure(w.exit_code == Some(6), || {
            format!("control wait: {:?}, want 6", w.exit_code)
        })?;
        let e = step(
            "control exec",
            request_async(
                &dir,
                Request::Exec {
                    id: "nope".into(),
                    process: ProcessArgs {
                        args: vec!["/bin/true".into()],
                        ..ProcessArgs::default()
                    },
                },
            ),
        )
        .await?
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        ensure(e.contains("HrVmcomputeSystemNotFound"), || {
            format!("control exec in an unknown container: {e:?}")
        })?;
        step(
            "control rm",
            request_async(
                &dir,
                Request::Rm {
                    id: "ctl".into(),
                    force: false,
                },
            ),
        )
        .await?
        .map_err(err("control rm"))?;
        Ok(())
    }
    .await;
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_in_a_real_uvm() {
    init_logging();
    let session = Session::boot(&boot_options()).await.expect("boot and negotiate");
    let Session { uvm, bridge, .. } = session;
    let client = Arc::new(ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix()));
    let c = client.as_ref();
    prepare_busybox_rootfs(c, BUSYBOX_ROOTFS)
        .await
        .expect("busybox rootfs in the UVM (needs an initrd built with --busybox, scripts/build.sh)");

    let mut cases = Cases::new();
    cases.run("uvm process", case_uvm_process(c)).await;
    cases
        .run("init stdio (true, echo, cat, exit 3)", case_init_stdio(c))
        .await;
    cases.run("signals (137, 143, graceful)", case_signals(c)).await;
    cases
        .run("exec (stdio, user, cwd, env, tty resize)", case_exec(c))
        .await;
    cases
        .run(
            "memory limit, statistics, process list, constraints",
            case_memory_and_stats(c),
        )
        .await;
    cases.run("forked child outliving init", case_orphan(c)).await;
    cases.run("errors", case_errors(c)).await;
    cases
        .run("control socket (the CLI's path)", case_control_socket(&client))
        .await;
    cases
        .run("50 create/delete cycles leave nothing behind", case_no_leaks(c))
        .await;

    // Exactly one notification per container that ran an init (each case waited for the first;
    // a second one would be fatal for hcsshim's bridge, §4.17).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [
        "init-true",
        "init-echo",
        "init-cat",
        "init-err",
        "sig-kill",
        "sig-term",
        "shutdown-graceful",
        "exec",
        "stats-a",
        "stats-b",
        "orphan",
        "ctl",
    ] {
        let n = client.notifications(id).len();
        if n > 1 {
            cases.fail(
                "notifications",
                &format!("container {id} got {n} notifications, want exactly 1"),
            );
        }
    }
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(Duration::from_secs(30)).await;
    uvm.shutdown().await;
    cases.finish();
}
