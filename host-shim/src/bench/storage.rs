//! `rgcs bench storage` (UVM part): sequential write and read throughput of a 9p share served
//! by [`Server`] against a hot-plugged ext4 scratch disk, both mounted by the agent in the same
//! UVM (`MappedDirectory` and `MappedVirtualDisk` Add), measured in the guest with busybox `dd`.

use std::path::Path;
use std::sync::Arc;

use rgcs_protocol::message::{
    Empty, MappedDirectory, MappedVirtualDisk, ModificationRequest, ModifySettingsRequest, RequestType,
    Resource, ScsiDevice, UVM_CONTAINER_ID,
};
use rgcs_protocol::MessageId;

use crate::p9::{Server, PORT};
use crate::scratch::{self, ScratchError};
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::{Uvm, VmError};
use rgcs_client::bridge::{BridgeClient, ClientError};
use rgcs_client::{uvm_sh_ok, ContainerClient, UvmShellError};

/// Where the agent mounts the two file systems.
const SHARE_MOUNT: &str = "/run/mounts/plan9/bench";
const DISK_MOUNT: &str = "/run/mounts/scsi/bench";
/// The LUN of the scratch disk.
const LUN: u8 = 1;
/// Errors of the in-UVM storage benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The scratch disk could not be made.
    #[error("scratch disk")]
    Scratch(#[from] ScratchError),
    /// Hot-plug failed.
    #[error("hot-plug")]
    Qmp(#[from] QmpError),
    /// A ModifySettings request failed.
    #[error("ModifySettings {what}")]
    Modify {
        /// The resource.
        what: &'static str,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// Serving the share failed.
    #[error("9p share")]
    Share(#[from] crate::p9::P9Error),
    /// The vsock listener failed.
    #[error("9p listener")]
    Vm(#[from] VmError),
    /// The guest command failed.
    #[error("guest dd")]
    Shell(#[from] UvmShellError),
    /// The guest printed something unexpected.
    #[error("unexpected guest output: {0}")]
    Output(String),
}

/// Guest-measured sequential throughput in MB/s (10^6 bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StorageBench {
    /// Bytes per file.
    pub bytes: u64,
    /// 9p write (`dd conv=fsync`).
    pub p9_write_mb_s: f64,
    /// 9p read (uncached: the mount has no page cache).
    pub p9_read_mb_s: f64,
    /// Scratch disk write (`dd conv=fsync`).
    pub scsi_write_mb_s: f64,
    /// Scratch disk read after dropping the guest's caches.
    pub scsi_read_mb_s: f64,
}

async fn modify(
    bridge: &BridgeClient,
    what: &'static str,
    rt: RequestType,
    r: Resource,
) -> Result<(), BenchError> {
    let req = ModifySettingsRequest {
        request: ModificationRequest::new(rt, r),
    };
    bridge
        .call::<_, Empty>(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &req)
        .await
        .map(drop)
        .map_err(|source| BenchError::Modify { what, source })
}

/// The guest script: write then read `mib` MiB in 1 MiB blocks on `dir`, printing uptime stamps.
fn dd_script(dir: &str, mib: u64) -> String {
    format!(
        "set -e; t() {{ cut -d' ' -f1 /proc/uptime; }}; f={dir}/bench.bin; \
         a=$(t); dd if=/dev/zero of=$f bs=1048576 count={mib} conv=fsync 2>/dev/null; b=$(t); \
         sync; echo 3 > /proc/sys/vm/drop_caches; \
         c=$(t); dd if=$f of=/dev/null bs=1048576 2>/dev/null; d=$(t); rm -f $f; echo $a $b $c $d"
    )
}

fn rates(out: &str, bytes: u64) -> Result<(f64, f64), BenchError> {
    let v: Vec<f64> = out.split_whitespace().filter_map(|s| s.parse().ok()).collect();
    let [a, b, c, d] = v[..] else {
        return Err(BenchError::Output(out.trim().to_owned()));
    };
    let mb = bytes as f64 / 1e6;
    // /proc/uptime has 10 ms resolution.
    Ok((mb / (b - a).max(0.01), mb / (d - c).max(0.01)))
}

/// Runs the benchmark in a booted UVM: `work` holds the scratch image and the shared directory.
pub async fn storage_in_uvm(
    uvm: &Uvm,
    bridge: &Arc<BridgeClient>,
    client: &ContainerClient,
    work: &Path,
    mib: u64,
) -> Result<StorageBench, BenchError> {
    let share_dir = work.join("share");
    std::fs::create_dir_all(&share_dir).map_err(|source| ScratchError::Create {
        path: share_dir.clone(),
        source,
    })?;
    let disk = work.join("bench-scratch.img");
    let _ = std::fs::remove_file(&disk);
    scratch::create(&disk, (mib * 3 + 64) << 20)?;

    let server = Server::with_shares([("bench", (&share_dir, false))])?;
    let listener = uvm.listen(PORT)?;
    let serving = tokio::spawn(server.serve(listener));
    let mut qmp = Qmp::connect(uvm.qmp_socket()).await?;
    let handle = qmp.hotplug_scsi_disk(&disk, LUN.into(), false).await?;
    let share = MappedDirectory {
        mount_path: SHARE_MOUNT.into(),
        port: crate::p9::PORT_I32,
        share_name: "bench".into(),
        read_only: false,
    };
    let vdisk = MappedVirtualDisk {
        mount_path: DISK_MOUNT.into(),
        lun: LUN,
        ..Default::default()
    };
    modify(
        bridge,
        "MappedDirectory",
        RequestType::Add,
        Resource::MappedDirectory(share.clone()),
    )
    .await?;
    modify(
        bridge,
        "MappedVirtualDisk",
        RequestType::Add,
        Resource::MappedVirtualDisk(vdisk.clone()),
    )
    .await?;

    let bytes = mib << 20;
    let result = async {
        let (p9_write_mb_s, p9_read_mb_s) =
            rates(&uvm_sh_ok(client, &dd_script(SHARE_MOUNT, mib)).await?, bytes)?;
        let (scsi_write_mb_s, scsi_read_mb_s) =
            rates(&uvm_sh_ok(client, &dd_script(DISK_MOUNT, mib)).await?, bytes)?;
        Ok::<_, BenchError>(StorageBench {
            bytes,
            p9_write_mb_s,
            p9_read_mb_s,
            scsi_write_mb_s,
            scsi_read_mb_s,
        })
    }
    .await;

    // Guest first (unmount, release the disk), then the VM resources (GCS §4.13).
    modify(
        bridge,
        "MappedVirtualDisk",
        RequestType::Remove,
        Resource::MappedVirtualDisk(vdisk),
    )
    .await?;
    modify(
        bridge,
        "MappedDirectory",
        RequestType::Remove,
        Resource::MappedDirectory(share),
    )
    .await?;
    let unplug = ScsiDevice {
        lun: LUN,
        ..Default::default()
    };
    modify(
        bridge,
        "SCSIDevice",
        RequestType::Remove,
        Resource::ScsiDevice(unplug),
    )
    .await?;
    qmp.unplug(&handle).await?;
    serving.abort();
    let _ = std::fs::remove_file(&disk);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_stamps() {
        let (w, r) = rates("10.00 12.00 12.50 13.50\n", 100_000_000).unwrap_or((0.0, 0.0));
        assert!((w - 50.0).abs() < 1e-9 && (r - 100.0).abs() < 1e-9);
        assert!(rates("oops", 1).is_err());
        assert!(dd_script("/m", 4).contains("count=4 conv=fsync"));
    }
}
