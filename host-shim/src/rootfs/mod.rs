//! Container root filesystems in a running UVM, driven the way hcsshim's host does it (docs/gcs-reference.md
//! §4.14, §6.2–§6.5, Appendix A rows 3–5, 16): each image layer is an ext4 disk hot-plugged on the
//! virtio-scsi controller and mounted read-only by the guest (`MappedVirtualDisk`), a scratch disk
//! becomes the container's bundle directory, `CombinedLayers` builds the overlay, and `-v` host
//! directories arrive as Plan 9 shares (`MappedDirectory`).
//!
//! A layer is attached once per UVM and shared by every container whose image has it (keyed by the
//! layer's digest); it is unmounted and unplugged when its last container goes. Like hcsshim, a
//! layer goes to a VPMem device first (virtio-pmem here, `VPMemDevice` at `/run/layers/p<N>`) while
//! a pmem slot is free and the layer is at most 4 GiB, and to SCSI after that. QEMU (7.2) cannot
//! unplug virtio memory devices ("virtio based memory devices cannot be unplugged"), so a pmem
//! slot keeps its layer for the VM's life: when no container uses it, the guest unmounts it; when
//! the same layer is attached again, the slot is mounted again. Removal runs in the host's order:
//! guest request first, then the VM resource (§4.13).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rgcs_protocol::message::{
    CombinedLayers, Empty, Layer, MappedDirectory, MappedVirtualDisk, ModificationRequest,
    ModifySettingsRequest, RequestType, Resource, ScsiDevice, VpMemDevice, UVM_CONTAINER_ID,
};
use rgcs_protocol::MessageId;

use crate::image::ImportedImage;
use crate::p9;
use crate::scratch;
use crate::vm::qmp::{DiskHandle, QmpError};
use crate::vm::SharedQmp;
use crate::vm::{Uvm, VmError};
use rgcs_client::bridge::{BridgeClient, ClientError};
use rgcs_client::spec::bundle_path;

mod pmem;

use pmem::PmemSlot;

/// LUNs of controller 0 that we use (scratch and layer disks alike); QEMU's virtio-scsi allows
/// far more, the guest's `u8` `Lun` field does not.
const MAX_LUN: u16 = 255;
/// Errors of root filesystem set-up and removal.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// QMP failed (hot-plug or unplug).
    #[error("disk hot-plug")]
    Qmp(#[from] QmpError),
    /// The guest refused a request.
    #[error("guest storage request")]
    Guest(#[from] ClientError),
    /// The scratch disk could not be created.
    #[error("scratch disk")]
    Scratch(#[from] scratch::ScratchError),
    /// The 9p listener could not be set up.
    #[error("plan 9 share port")]
    Vm(#[from] VmError),
    /// A 9p share could not be registered.
    #[error("plan 9 share {dir}: {reason}")]
    Share {
        /// The host directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Every LUN is in use.
    #[error("no free SCSI LUN on controller 0 (at most {MAX_LUN} disks)")]
    NoLun,
}

/// A host directory to share into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Host directory.
    pub host: PathBuf,
    /// Absolute destination in the container.
    pub container: String,
    /// Read-only (enforced by the 9p server and the guest mount).
    pub read_only: bool,
}

/// A bind mount the container spec needs: `(source in the UVM, destination, read-only)`.
pub type Bind = (String, String, bool);

#[derive(Debug)]
enum Device {
    Scsi(DiskHandle),
    Pmem { slot: u32 },
}

#[derive(Debug)]
struct AttachedLayer {
    device: Device,
    mount: String,
    users: usize,
}

/// One container's root filesystem, as attached.
#[derive(Debug)]
pub struct ContainerRootfs {
    /// Container ID.
    pub id: String,
    /// Bundle directory in the UVM (the scratch disk's mount).
    pub bundle: String,
    /// The overlay: the spec's `root.path`.
    pub rootfs: String,
    /// Bind mounts for the shares.
    pub binds: Vec<Bind>,
    scratch: Option<DiskHandle>,
    scratch_file: PathBuf,
    layers: Vec<String>,
    shares: Vec<SharedDir>,
    overlay: bool,
}

/// A host directory shared into the UVM ([`UvmStorage::share_dir`]).
#[derive(Debug)]
pub struct SharedDir {
    /// Where the guest mounted it.
    pub mount: String,
    name: String,
}

/// Storage of one UVM: the QMP connection, LUNs, shared layer disks, the 9p server.
pub struct UvmStorage {
    qmp: SharedQmp,
    run_dir: PathBuf,
    used_luns: Vec<bool>,
    layers: HashMap<String, AttachedLayer>,
    p9: Option<p9::Server>,
    next_share: u64,
    next_layer_mount: u64,
    /// One entry per slot: `None` never used, `Some` holds that layer for good.
    pmem: Vec<Option<PmemSlot>>,
}

async fn modify(
    bridge: &BridgeClient,
    request_type: RequestType,
    resource: Resource,
) -> Result<(), ClientError> {
    let body = ModifySettingsRequest {
        request: ModificationRequest::new(request_type, resource),
    };
    bridge
        .call::<_, Empty>(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &body)
        .await
        .map(|Empty {}| ())
}

impl UvmStorage {
    /// Connects to the UVM's QMP socket.
    pub async fn new(uvm: &Uvm) -> Result<Self, RootfsError> {
        Ok(Self {
            qmp: uvm.qmp().await?,
            run_dir: uvm.run_dir().to_path_buf(),
            used_luns: vec![false; usize::from(MAX_LUN) + 1],
            layers: HashMap::new(),
            p9: None,
            next_share: 0,
            next_layer_mount: 0,
            pmem: (0..uvm.pmem_slots()).map(|_| None).collect(),
        })
    }

    /// Puts every layer on SCSI, none on pmem (hcsshim's behaviour when VPMem is full or off).
    pub fn scsi_only(mut self) -> Self {
        self.pmem.clear();
        self
    }

    async fn detach_layer(&mut self, bridge: &BridgeClient, layer: AttachedLayer) {
        match layer.device {
            Device::Scsi(disk) => self.detach_disk(bridge, &disk, &layer.mount).await,
            Device::Pmem { slot } => {
                // The device stays (it cannot be unplugged); the guest lets go of the mount.
                let dev = VpMemDevice {
                    device_number: slot,
                    mount_path: layer.mount.clone(),
                    ..VpMemDevice::default()
                };
                if let Err(e) = modify(bridge, RequestType::Remove, Resource::VpMemDevice(dev)).await {
                    tracing::warn!(error = %e, mount = %layer.mount, "guest pmem unmount failed");
                }
            }
        }
    }

    fn take_lun(&mut self) -> Result<u8, RootfsError> {
        let free = self
            .used_luns
            .iter()
            .position(|used| !used)
            .ok_or(RootfsError::NoLun)?;
        self.used_luns[free] = true;
        u8::try_from(free).map_err(|_| RootfsError::NoLun)
    }

    fn free_lun(&mut self, lun: u16) {
        if let Some(slot) = self.used_luns.get_mut(usize::from(lun)) {
            *slot = false;
        }
    }

    /// Hot-plugs `file` and has the guest mount it at `mount`; on a guest failure the disk is
    /// unplugged again.
    async fn attach_disk(
        &mut self,
        bridge: &BridgeClient,
        file: &Path,
        mount: &str,
        read_only: bool,
    ) -> Result<DiskHandle, RootfsError> {
        let lun = self.take_lun()?;
        let plugged = self
            .qmp
            .lock()
            .await
            .hotplug_scsi_disk(file, u16::from(lun), read_only)
            .await;
        let disk = match plugged {
            Ok(d) => d,
            Err(e) => {
                self.free_lun(u16::from(lun));
                return Err(e.into());
            }
        };
        let mvd = MappedVirtualDisk {
            mount_path: mount.to_owned(),
            lun,
            read_only,
            options: if read_only { vec!["ro".into()] } else { Vec::new() },
            ensure_filesystem: !read_only,
            filesystem: if read_only { String::new() } else { "ext4".into() },
            ..MappedVirtualDisk::default()
        };
        if let Err(e) = modify(bridge, RequestType::Add, Resource::MappedVirtualDisk(mvd)).await {
            self.unplug(bridge, &disk).await;
            return Err(e.into());
        }
        Ok(disk)
    }

    /// Guest-side unplug, then the VM resource; errors are logged (teardown goes on).
    async fn unplug(&mut self, bridge: &BridgeClient, disk: &DiskHandle) {
        let lun = u8::try_from(disk.lun).unwrap_or(u8::MAX);
        let dev = ScsiDevice { controller: 0, lun };
        if let Err(e) = modify(bridge, RequestType::Remove, Resource::ScsiDevice(dev)).await {
            tracing::warn!(error = %e, lun, "guest-side SCSI unplug failed");
        }
        let unplugged = self.qmp.lock().await.unplug(disk).await;
        match unplugged {
            Ok(()) => self.free_lun(disk.lun),
            Err(e) => tracing::warn!(error = %e, lun, "disk unplug failed; LUN stays reserved"),
        }
    }

    async fn detach_disk(&mut self, bridge: &BridgeClient, disk: &DiskHandle, mount: &str) {
        let lun = u8::try_from(disk.lun).unwrap_or(u8::MAX);
        let mvd = MappedVirtualDisk {
            mount_path: mount.to_owned(),
            lun,
            ..MappedVirtualDisk::default()
        };
        if let Err(e) = modify(bridge, RequestType::Remove, Resource::MappedVirtualDisk(mvd)).await {
            tracing::warn!(error = %e, %mount, "guest unmount failed");
        }
        self.unplug(bridge, disk).await;
    }

    /// Attaches `image` for container `id`: scratch, layers (shared with other containers), the
    /// overlay and the shares. On any failure, what was attached is removed again.
    pub async fn mount(
        &mut self,
        uvm: &Uvm,
        bridge: &BridgeClient,
        image: &ImportedImage,
        id: &str,
        scratch_size: u64,
        shares: &[Share],
    ) -> Result<ContainerRootfs, RootfsError> {
        let bundle = bundle_path(id);
        let mut root = ContainerRootfs {
            id: id.to_owned(),
            rootfs: format!("{bundle}/rootfs"),
            bundle: bundle.clone(),
            binds: Vec::new(),
            scratch: None,
            scratch_file: self.run_dir.join(format!("scratch-{id}.img")),
            layers: Vec::new(),
            shares: Vec::new(),
            overlay: false,
        };
        match self
            .mount_into(uvm, bridge, image, scratch_size, shares, &mut root)
            .await
        {
            Ok(()) => Ok(root),
            Err(e) => {
                self.unmount(bridge, root).await;
                Err(e)
            }
        }
    }

    async fn mount_into(
        &mut self,
        uvm: &Uvm,
        bridge: &BridgeClient,
        image: &ImportedImage,
        scratch_size: u64,
        shares: &[Share],
        root: &mut ContainerRootfs,
    ) -> Result<(), RootfsError> {
        // Scratch: a fresh sparse ext4 disk that becomes the bundle directory.
        scratch::create(&root.scratch_file, scratch_size)?;
        let file = root.scratch_file.clone();
        root.scratch = Some(self.attach_disk(bridge, &file, &root.bundle, false).await?);

        // Layers, bottom-most first; one disk per layer digest per UVM.
        for layer in &image.layers {
            if let Some(attached) = self.layers.get_mut(&layer.digest) {
                attached.users += 1;
            } else if let Some(attached) = self.attach_pmem(bridge, &layer.digest, &layer.path).await? {
                self.layers.insert(layer.digest.clone(), attached);
            } else {
                // hcsshim's v1 shim names SCSI layer mounts /run/mounts/scsi/m<N>.
                let mount = format!("/run/mounts/scsi/m{}", self.next_layer_mount);
                self.next_layer_mount += 1;
                let disk = self.attach_disk(bridge, &layer.path, &mount, true).await?;
                self.layers.insert(
                    layer.digest.clone(),
                    AttachedLayer {
                        device: Device::Scsi(disk),
                        mount,
                        users: 1,
                    },
                );
            }
            root.layers.push(layer.digest.clone());
        }
        // The overlay wants the top-most layer first.
        let lower: Vec<Layer> = root
            .layers
            .iter()
            .rev()
            .filter_map(|d| self.layers.get(d))
            .map(|a| Layer {
                path: a.mount.clone(),
                ..Layer::default()
            })
            .collect();
        let combined = CombinedLayers {
            container_id: root.id.clone(),
            container_root_path: root.rootfs.clone(),
            layers: lower,
            scratch_path: format!("{}/scratch/{}", root.bundle, root.id),
        };
        modify(bridge, RequestType::Add, Resource::CombinedLayers(combined)).await?;
        root.overlay = true;

        // Shares over Plan 9 (port 564), one connection per guest mount.
        for share in shares {
            let mount = format!("{}/mounts/m{}", root.bundle, root.shares.len());
            let shared = self
                .share_dir(uvm, bridge, &share.host, &mount, share.read_only)
                .await?;
            root.shares.push(shared);
            root.binds.push((mount, share.container.clone(), share.read_only));
        }
        Ok(())
    }

    /// Shares host directory `host` into the UVM at `mount` over Plan 9 (port 564, one
    /// connection per guest mount; the server starts with the first share).
    pub async fn share_dir(
        &mut self,
        uvm: &Uvm,
        bridge: &BridgeClient,
        host: &Path,
        mount: &str,
        read_only: bool,
    ) -> Result<SharedDir, RootfsError> {
        let name = self.next_share.to_string();
        self.next_share += 1;
        let server = match &self.p9 {
            Some(s) => s.clone(),
            None => {
                let s = p9::Server::new();
                tokio::spawn(s.clone().serve(uvm.listen(p9::PORT)?));
                self.p9 = Some(s.clone());
                s
            }
        };
        server
            .add_share(name.clone(), host, read_only)
            .map_err(|e| RootfsError::Share {
                dir: host.to_path_buf(),
                reason: e.to_string(),
            })?;
        let dir = MappedDirectory {
            mount_path: mount.to_owned(),
            port: crate::p9::PORT_I32,
            share_name: name.clone(),
            read_only,
        };
        if let Err(e) = modify(bridge, RequestType::Add, Resource::MappedDirectory(dir)).await {
            server.remove_share(&name);
            return Err(e.into());
        }
        Ok(SharedDir {
            mount: mount.to_owned(),
            name,
        })
    }

    /// Undoes [`Self::share_dir`]: the guest unmounts, the server forgets the share. Errors are
    /// logged.
    pub async fn unshare_dir(&mut self, bridge: &BridgeClient, shared: &SharedDir) {
        let dir = MappedDirectory {
            mount_path: shared.mount.clone(),
            ..MappedDirectory::default()
        };
        if let Err(e) = modify(bridge, RequestType::Remove, Resource::MappedDirectory(dir)).await {
            tracing::warn!(error = %e, mount = %shared.mount, "share removal failed");
        }
        if let Some(s) = &self.p9 {
            s.remove_share(&shared.name);
        }
    }

    /// Removes what [`UvmStorage::mount`] attached, newest first. Errors are logged and removal goes on.
    pub async fn unmount(&mut self, bridge: &BridgeClient, root: ContainerRootfs) {
        for shared in root.shares.iter().rev() {
            self.unshare_dir(bridge, shared).await;
        }
        if root.overlay {
            let c = CombinedLayers {
                container_root_path: root.rootfs.clone(),
                ..CombinedLayers::default()
            };
            if let Err(e) = modify(bridge, RequestType::Remove, Resource::CombinedLayers(c)).await {
                tracing::warn!(error = %e, rootfs = %root.rootfs, "rootfs removal failed");
            }
        }
        for digest in root.layers.iter().rev() {
            let last = match self.layers.get_mut(digest) {
                Some(a) => {
                    a.users -= 1;
                    a.users == 0
                }
                None => false,
            };
            if last {
                if let Some(a) = self.layers.remove(digest) {
                    self.detach_layer(bridge, a).await;
                }
            }
        }
        if let Some(disk) = &root.scratch {
            self.detach_disk(bridge, disk, &root.bundle).await;
        }
        if let Err(e) = std::fs::remove_file(&root.scratch_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, file = %root.scratch_file.display(), "scratch file not removed");
            }
        }
    }

    /// Layer disks currently attached (for tests and `ps`-like output).
    pub fn attached_layers(&self) -> usize {
        self.layers.len()
    }

    /// Of those, how many are on pmem.
    pub fn pmem_layers(&self) -> usize {
        self.layers
            .values()
            .filter(|l| matches!(l.device, Device::Pmem { .. }))
            .count()
    }
}

/// Adds the binds to an OCI spec's mounts.
pub fn add_binds(spec: &mut oci_spec::runtime::Spec, binds: &[Bind]) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, destination, read_only) in binds {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if *read_only {
            options.push("ro".to_owned());
        }
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(PathBuf::from(destination));
        m.set_source(Some(PathBuf::from(source)));
        m.set_typ(Some("bind".to_owned()));
        m.set_options(Some(options));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
}
