//! VM tier, images and storage (issue 5), through host-shim only: an OCI image built locally from
//! busybox-static (three layers: a deleted file, an opaque directory) becomes virtio-pmem layer
//! devices (SCSI once pmem slots run out), a scratch disk and an overlay; the container runs from
//! it; writes land in scratch; Plan 9 shares honour read-only; two containers share the layer disks; hostile paths are refused with nothing
//! mounted; 20 attach/detach cycles leave nothing behind; a 10-layer image runs over SCSI alone.
//! One booted UVM serves every case.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::{
    exec_process, init_process, uvm_sh_ok, ContainerClient, ContainerSpec, Pipes, ProcessSpec,
};
use rgcs_host_shim::image::{self, demo, ImportedImage, NoProgress};
use rgcs_host_shim::rootfs::{add_binds, ContainerRootfs, Share, UvmStorage};
use rgcs_host_shim::session::Session;
use rgcs_protocol::message::{
    CombinedLayers, Empty, Layer, MappedVirtualDisk, ModificationRequest, ModifySettingsRequest, RequestType,
    Resource, UVM_CONTAINER_ID,
};
use rgcs_protocol::{HResult, MessageId};
use rgcs_tests::{boot_options, init_logging};

const SCRATCH: u64 = 256 << 20;

/// Runs `args` as an exec in `id`, returns (exit code, stdout, stderr).
async fn exec(c: &ContainerClient, id: &str, args: &[&str]) -> (u32, String, String) {
    let p = ProcessSpec::new(args.iter().copied());
    let (pid, stdio) = c
        .execute_process(id, exec_process(&p, Pipes::OUTPUT))
        .await
        .expect("exec");
    let (out, code) = tokio::join!(stdio.capture(b""), c.wait_for_process(id, pid, None));
    let out = out.expect("exec output");
    (code.expect("exec exit"), out.stdout_text(), out.stderr_text())
}

/// Creates and starts `id` from `root` with a long-running init; returns the init PID.
async fn start(c: &ContainerClient, root: &ContainerRootfs) -> u32 {
    let spec = ContainerSpec::new(
        root.id.clone(),
        root.rootfs.clone(),
        ProcessSpec::new(["/bin/sleep", "600"]),
    );
    let mut config = spec.config().expect("config");
    add_binds(config.oci_specification.as_mut().expect("spec"), &root.binds);
    c.create_container(&root.id, config)
        .await
        .expect("create from the image rootfs");
    c.start(&root.id).await.expect("start");
    let (pid, _stdio) = c
        .execute_process(&root.id, init_process(Pipes::NONE))
        .await
        .expect("init");
    pid
}

async fn stop(c: &ContainerClient, id: &str, pid: u32) {
    c.signal_process(id, pid, None).await.expect("kill init");
    let code = c
        .wait_for_process(id, pid, Some(Duration::from_secs(30)))
        .await
        .expect("init exits");
    assert_eq!(code, 137, "init killed by SIGKILL");
    c.delete_container_state(id).await.expect("delete state");
}

/// A snapshot of what storage leaves in the UVM: mounts, block devices, dm targets, bundle dirs.
async fn residue(c: &ContainerClient) -> String {
    uvm_sh_ok(
        c,
        "cat /proc/mounts | wc -l; ls /sys/block | sort | tr '\\n' ' '; echo; ls /sys/class/block | wc -l; \
         ls /dev/mapper 2>/dev/null | wc -l; ls /run/gcs/c 2>/dev/null | wc -l; ls /run/mounts/scsi 2>/dev/null | wc -l",
    )
    .await
    .expect("residue snapshot")
}

async fn modify_raw(c: &ContainerClient, resource: Resource) -> Result<(), rgcs_client::bridge::ClientError> {
    let body = ModifySettingsRequest {
        request: ModificationRequest::new(RequestType::Add, resource),
    };
    c.bridge()
        .call::<_, Empty>(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &body)
        .await
        .map(|Empty {}| ())
}

fn import_demo(dir: &std::path::Path) -> ImportedImage {
    let layout = dir.join("demo-image");
    demo::build(&layout, std::path::Path::new("/bin/busybox")).expect("build the demo image");
    image::import(&layout, &dir.join("cache"), &NoProgress).expect("import")
}

#[tokio::test(flavor = "current_thread")]
async fn an_image_runs_from_scsi_layers_with_scratch_shares_and_no_residue() {
    init_logging();
    let work = tempfile::tempdir().unwrap();
    let img = import_demo(work.path());
    assert_eq!(img.layers.len(), 3);

    let Session { uvm, bridge, .. } = Session::boot(&boot_options()).await.expect("boot");
    let bridge = Arc::new(bridge);
    let c = ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix());
    let mut storage = UvmStorage::new(&uvm).await.expect("qmp");
    // The baseline is taken once the late set-up (storage modules, dm-mod's /dev/mapper/control)
    // is done, so that it does not race the module load.
    let done = uvm
        .guest_logs()
        .wait_for(Duration::from_secs(60), |r| r.msg == "late set-up done")
        .await;
    assert!(
        done.is_some_and(|r| r.fields["ready"] == true),
        "late set-up did not finish"
    );
    let boot = residue(&c).await;

    // Shares: a read-only one with a file from the host, a writable one for the guest to write.
    let ro_dir = work.path().join("ro");
    let rw_dir = work.path().join("rw");
    std::fs::create_dir_all(&ro_dir).unwrap();
    std::fs::create_dir_all(&rw_dir).unwrap();
    std::fs::write(ro_dir.join("from-host"), "host data\n").unwrap();
    let shares = [
        Share {
            host: ro_dir.clone(),
            container: "/ro".into(),
            read_only: true,
        },
        Share {
            host: rw_dir.clone(),
            container: "/rw".into(),
            read_only: false,
        },
    ];

    // 1. The image runs; the whiteout and the opaque directory are honoured.
    let a = storage
        .mount(&uvm, &bridge, &img, "img-a", SCRATCH, &shares)
        .await
        .expect("attach rootfs a");
    // Layers go to virtio-pmem first (VPMemDevice, /run/layers/p<N>), like hcsshim's VPMem.
    assert_eq!(storage.pmem_layers(), 3, "the three layers are on pmem");
    let layers = uvm_sh_ok(&c, "grep ' /run/layers/p' /proc/mounts | cut -d' ' -f1-3 | sort")
        .await
        .expect("mounts");
    assert_eq!(
        layers.lines().collect::<Vec<_>>(),
        [
            "/dev/pmem0 /run/layers/p0 ext4",
            "/dev/pmem1 /run/layers/p1 ext4",
            "/dev/pmem2 /run/layers/p2 ext4"
        ],
        "{layers}"
    );
    let pid_a = start(&c, &a).await;
    let (code, out, err) = exec(&c, "img-a", &["/hello.sh"]).await;
    assert_eq!(code, 0, "hello.sh: {err}");
    assert!(out.contains("hello from rgcs: rgcs demo image"), "{out}");
    let (code, _, _) = exec(&c, "img-a", &["test", "-e", "/etc/motd-old"]).await;
    assert_eq!(code, 1, "the deleted file is absent");
    let (code, out, _) = exec(&c, "img-a", &["ls", "/var/cache"]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "new.txt"),
        "the opaque directory hides the lower one"
    );

    // 2. Writes land in scratch and survive into a second exec.
    let (code, _, err) = exec(&c, "img-a", &["sh", "-c", "echo persisted > /written"]).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = exec(&c, "img-a", &["cat", "/written"]).await;
    assert_eq!(out, "persisted\n");
    let upper = uvm_sh_ok(&c, "cat /run/gcs/c/img-a/scratch/img-a/upper/written")
        .await
        .expect("upper");
    assert_eq!(
        upper, "persisted\n",
        "the write is in the scratch disk's upper dir"
    );

    // 3. Shares: read-only refuses writes, read-write round-trips to the host.
    let (_, out, _) = exec(&c, "img-a", &["cat", "/ro/from-host"]).await;
    assert_eq!(out, "host data\n");
    let (code, _, _) = exec(&c, "img-a", &["sh", "-c", "echo x > /ro/new"]).await;
    assert_ne!(code, 0, "a read-only share refused the write");
    assert!(!ro_dir.join("new").exists());
    let (code, _, err) = exec(&c, "img-a", &["sh", "-c", "echo from-guest > /rw/out && sync"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(rw_dir.join("out")).unwrap(),
        "from-guest\n"
    );

    // 4. A second container of the same image shares the three layer disks.
    let b = storage
        .mount(&uvm, &bridge, &img, "img-b", SCRATCH, &[])
        .await
        .expect("attach rootfs b");
    assert_eq!(
        storage.attached_layers(),
        3,
        "layer disks are shared, not attached twice"
    );
    let pid_b = start(&c, &b).await;
    let (_, out, _) = exec(&c, "img-b", &["cat", "/etc/rgcs-demo"]).await;
    assert!(out.contains("rgcs demo image"), "{out}");
    let (code, _, _) = exec(&c, "img-b", &["test", "-e", "/written"]).await;
    assert_eq!(code, 1, "b does not see a's scratch");
    stop(&c, "img-a", pid_a).await;
    storage.unmount(&bridge, a).await;
    let (_, out, _) = exec(&c, "img-b", &["cat", "/etc/rgcs-demo"]).await;
    assert!(
        out.contains("rgcs demo image"),
        "b's layers survive a's removal: {out}"
    );
    stop(&c, "img-b", pid_b).await;
    storage.unmount(&bridge, b).await;
    assert_eq!(storage.attached_layers(), 0);
    // QEMU cannot unplug virtio-pmem devices: the three stay as block devices for the VM's life
    // (and are mounted again when their layers come back); no mount of them is left.
    let before = residue(&c).await;
    assert_eq!(
        before.lines().next(),
        boot.lines().next(),
        "mounts left after a and b: {before}"
    );
    assert!(before.contains("pmem0 pmem1 pmem2"), "{before}");

    // 5. Hostile paths are refused and nothing is mounted.
    for root in [
        "/run/gcs/c/x/../../../etc",
        "relative/rootfs",
        "/etc/evil",
        "/run/gcs/c/x/rootfs\0",
    ] {
        let bad = CombinedLayers {
            container_root_path: root.into(),
            layers: vec![Layer {
                path: "/run/mounts/scsi/m0".into(),
                ..Layer::default()
            }],
            ..CombinedLayers::default()
        };
        let e = modify_raw(&c, Resource::CombinedLayers(bad))
            .await
            .expect_err(root);
        assert_eq!(e.hresult(), Some(HResult::FAIL), "{root}: {e}");
    }
    let bad = MappedVirtualDisk {
        mount_path: "/run/mounts/../../etc/x".into(),
        lun: 9,
        ..MappedVirtualDisk::default()
    };
    assert!(modify_raw(&c, Resource::MappedVirtualDisk(bad)).await.is_err());
    assert_eq!(residue(&c).await, before, "hostile requests mounted nothing");

    // 6. Twenty attach/detach cycles leave no mount, block device, dm target or directory.
    for i in 0..20 {
        let id = format!("cycle-{i}");
        let r = storage
            .mount(&uvm, &bridge, &img, &id, SCRATCH, &[])
            .await
            .expect("attach");
        storage.unmount(&bridge, r).await;
    }
    assert_eq!(residue(&c).await, before, "20 attach/detach cycles left residue");

    // 7. A 10-layer image works over SCSI alone (hcsshim falls back to SCSI when VPMem is full).
    let layout = work.path().join("ten-layers");
    demo::build_with_layers(&layout, std::path::Path::new("/bin/busybox"), 7).expect("build 10 layers");
    let ten = image::import(&layout, &work.path().join("cache"), &NoProgress).expect("import 10 layers");
    assert_eq!(ten.layers.len(), 10);
    drop(storage); // one QMP client at a time
    let mut storage = UvmStorage::new(&uvm).await.expect("qmp").scsi_only();
    let r = storage
        .mount(&uvm, &bridge, &ten, "ten", SCRATCH, &[])
        .await
        .expect("attach 10 layers");
    assert_eq!(
        (storage.attached_layers(), storage.pmem_layers()),
        (10, 0),
        "all ten on SCSI"
    );
    let pid = start(&c, &r).await;
    let (code, out, err) = exec(&c, "ten", &["sh", "-c", "cat /layers/*"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 7, "{out}");
    assert!(
        out.starts_with("layer 0\n") && out.ends_with("layer 6\n"),
        "{out}"
    );
    stop(&c, "ten", pid).await;
    storage.unmount(&bridge, r).await;
    assert_eq!(residue(&c).await, before, "the 10-layer container left residue");

    let _ = bridge.shutdown_uvm(true).await;
    let _ = uvm.wait(Duration::from_secs(30)).await;
    uvm.shutdown().await;
}
