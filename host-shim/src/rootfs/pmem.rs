//! Layers on virtio-pmem slots (ADR-0006): a free slot is hot-plugged once and keeps its layer
//! for the VM's life (QEMU cannot unplug virtio memory devices); the guest mounts and unmounts it
//! through `VPMemDevice`.

use std::path::Path;

use rgcs_protocol::message::{RequestType, Resource, VpMemDevice};

use super::{modify, AttachedLayer, Device, RootfsError, UvmStorage};
use crate::vm::qmp::PmemHandle;
use rgcs_client::bridge::BridgeClient;

/// Largest layer put on a pmem device (hcsshim's VPMem limit).
const MAX_PMEM_LAYER: u64 = 4 << 30;
/// virtio-pmem regions must be 2 MiB aligned in size for the guest's nd_pmem to map them.
const PMEM_ALIGN: u64 = 2 << 20;

/// A virtio-pmem slot once a layer was hot-plugged into it (it stays for the VM's life).
#[derive(Debug)]
pub(super) struct PmemSlot {
    digest: String,
    _handle: PmemHandle,
}

impl UvmStorage {
    /// Puts a layer on pmem: its own slot if it had one, else a never-used slot (hot-plugged now),
    /// if the layer fits; `Ok(None)` means "use SCSI".
    pub(super) async fn attach_pmem(
        &mut self,
        bridge: &BridgeClient,
        digest: &str,
        file: &Path,
    ) -> Result<Option<AttachedLayer>, RootfsError> {
        let own = self
            .pmem
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.digest == digest));
        let slot = match own {
            Some(slot) => slot,
            None => {
                let Some(slot) = self.pmem.iter().position(Option::is_none) else {
                    return Ok(None);
                };
                let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(u64::MAX);
                if len > MAX_PMEM_LAYER {
                    return Ok(None);
                }
                // Round the (sparse) image up to the alignment nd_pmem needs; ext4 ignores the tail.
                let aligned = len.div_ceil(PMEM_ALIGN) * PMEM_ALIGN;
                if aligned != len {
                    let resized = std::fs::OpenOptions::new()
                        .write(true)
                        .open(file)
                        .and_then(|f| f.set_len(aligned));
                    if let Err(e) = resized {
                        tracing::warn!(file = %file.display(), error = %e, "cannot align the layer for pmem; using SCSI");
                        return Ok(None);
                    }
                }
                let port = crate::vm::pmem_port(u32::try_from(slot).unwrap_or(u32::MAX));
                let plugged = self.qmp.lock().await.hotplug_pmem(file, Some(&port)).await;
                match plugged {
                    Ok(handle) => {
                        self.pmem[slot] = Some(PmemSlot {
                            digest: digest.to_owned(),
                            _handle: handle,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "pmem hot-plug failed; using SCSI");
                        return Ok(None);
                    }
                }
                slot
            }
        };
        let slot32 = u32::try_from(slot).unwrap_or(u32::MAX);
        let mount = format!("/run/layers/p{slot}");
        let dev = VpMemDevice {
            device_number: slot32,
            mount_path: mount.clone(),
            ..VpMemDevice::default()
        };
        modify(bridge, RequestType::Add, Resource::VpMemDevice(dev)).await?;
        Ok(Some(AttachedLayer {
            device: Device::Pmem { slot: slot32 },
            mount,
            users: 1,
        }))
    }
}
