//! The 9p server against the guest kernel's v9fs client: boot a UVM, serve vsock port 564,
//! ask the agent to mount two shares (`MappedDirectory` Add: rw and ro), overlay the read-only
//! one as a container rootfs (`CombinedLayers`: the kernel walks, stats and reads xattrs through
//! our server), then remove everything. Needs `RGCS_INITRD` (`bash scripts/build.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use rgcs_host_shim::p9::{self, Server};
use rgcs_host_shim::session::{BootOptions, Session};
use rgcs_protocol::message::{
    CombinedLayers, Empty, Layer, MappedDirectory, ModificationRequest, ModifySettingsRequest, RequestType,
    Resource, UVM_CONTAINER_ID,
};
use rgcs_protocol::MessageId;

fn initrd() -> PathBuf {
    rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}"))
}

async fn modify(session: &Session, request_type: RequestType, resource: Resource) {
    let req = ModifySettingsRequest {
        request: ModificationRequest::new(request_type, resource),
    };
    let _: Empty = session
        .bridge
        .call(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &req)
        .await
        .unwrap_or_else(|e| panic!("ModifySettings failed: {e:?}"));
}

fn share(name: &str, mount: &str, read_only: bool) -> Resource {
    Resource::MappedDirectory(MappedDirectory {
        mount_path: mount.into(),
        port: p9::PORT_I32,
        share_name: name.into(),
        read_only,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_kernel_mounts_shares_through_the_server() {
    let initrd = initrd();
    let tmp = tempfile::tempdir().unwrap();
    let (rw, ro) = (tmp.path().join("rw"), tmp.path().join("ro"));
    std::fs::create_dir_all(ro.join("bin")).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("hello"), b"from the host").unwrap();
    let server = Server::with_shares([("0", (&rw, false)), ("1", (&ro, true))]).unwrap();

    let session = Session::boot(&BootOptions::new(initrd)).await.expect("boot");
    let listener = session.uvm.listen(p9::PORT).unwrap();
    let serving = tokio::spawn(server.clone().serve(listener));

    modify(
        &session,
        RequestType::Add,
        share("0", "/run/mounts/plan9/0", false),
    )
    .await;
    modify(
        &session,
        RequestType::Add,
        share("1", "/run/mounts/plan9/1", true),
    )
    .await;
    let stats = server.stats();
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        2,
        "one connection per mount"
    );
    assert!(stats.attaches.load(Ordering::Relaxed) >= 2);

    let before = stats.requests.load(Ordering::Relaxed);
    let layers = CombinedLayers {
        container_root_path: "/run/gcs/c/p9test/rootfs".into(),
        // A read-only overlay needs two lower layers: both shares.
        layers: ["/run/mounts/plan9/1", "/run/mounts/plan9/0"]
            .iter()
            .map(|p| Layer {
                path: (*p).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    modify(
        &session,
        RequestType::Add,
        Resource::CombinedLayers(layers.clone()),
    )
    .await;
    assert!(
        stats.requests.load(Ordering::Relaxed) > before,
        "overlayfs looked at the 9p lower dir"
    );
    modify(&session, RequestType::Remove, Resource::CombinedLayers(layers)).await;

    modify(
        &session,
        RequestType::Remove,
        share("1", "/run/mounts/plan9/1", true),
    )
    .await;
    modify(
        &session,
        RequestType::Remove,
        share("0", "/run/mounts/plan9/0", false),
    )
    .await;
    eprintln!(
        "9p: {} connections, {} attaches, {} requests",
        stats.connections.load(Ordering::Relaxed),
        stats.attaches.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed)
    );
    serving.abort();
    let Session { uvm, bridge, .. } = session;
    drop(bridge);
    uvm.shutdown().await;
}
