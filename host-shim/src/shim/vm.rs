//! The shim's UVM: booted at the Create of its pod's sandbox (or of a standalone task), with the
//! pod's NIC, its storage (Plan 9 shares) and the bridge; powered off at that task's Delete.

use std::sync::Arc;
use std::time::Duration;

use rgcs_client::{BridgeClient, ContainerClient};
use rgcs_protocol::error_chain;

use super::spec::NetPlan;
use super::ShimError;
use crate::net::{AttachedNic, NetworkMode, UvmNetwork};
use crate::rootfs::UvmStorage;
use crate::session::{BootOptions, Session, POWER_OFF_TIMEOUT};
use crate::vm::Uvm;

/// A booted UVM.
pub struct Vm {
    /// The VM.
    pub uvm: Arc<Uvm>,
    /// The bridge.
    pub bridge: Arc<BridgeClient>,
    /// Container requests.
    pub client: Arc<ContainerClient>,
    /// Shares.
    pub storage: tokio::sync::Mutex<UvmStorage>,
    net: tokio::sync::Mutex<Option<(UvmNetwork, AttachedNic)>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("qemu_pid", &self.uvm.qemu_pid())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Boots the UVM and gives guest network namespace `ns` the NIC `plan` asks for.
    pub async fn boot(opts: &BootOptions, plan: &NetPlan, ns: &str) -> Result<Self, ShimError> {
        let Session {
            uvm, bridge, timings, ..
        } = Session::boot(opts)
            .await
            .map_err(|e| ShimError::Guest(format!("boot the UVM: {}", error_chain(&e))))?;
        tracing::info!(ms = timings.spawn_to_negotiated.as_millis(), "UVM booted");
        let uvm = Arc::new(uvm);
        let bridge = Arc::new(bridge);
        let client = Arc::new(ContainerClient::new(Arc::clone(&bridge), uvm.vsock_prefix()));
        let vm = async {
            let storage = UvmStorage::new(&uvm)
                .await
                .map_err(|e| ShimError::Guest(format!("QMP: {}", error_chain(&e))))?;
            let mode = match plan {
                NetPlan::Empty => NetworkMode::None,
                NetPlan::HostLike => NetworkMode::User,
                NetPlan::Netns(p) => NetworkMode::Netns(p.clone()),
            };
            let mut network = UvmNetwork::new(&uvm)
                .await
                .map_err(|e| ShimError::Guest(format!("QMP: {}", error_chain(&e))))?;
            let nic = network
                .attach(&bridge, ns, &mode, &[], &[])
                .await
                .map_err(|e| ShimError::Guest(format!("attach the network: {}", error_chain(&e))))?;
            Ok::<_, ShimError>(Self {
                uvm: Arc::clone(&uvm),
                bridge: Arc::clone(&bridge),
                client: Arc::clone(&client),
                storage: tokio::sync::Mutex::new(storage),
                net: tokio::sync::Mutex::new(nic.map(|n| (network, n))),
            })
        }
        .await;
        match vm {
            Ok(v) => Ok(v),
            Err(e) => {
                drop(client);
                let _ = bridge.shutdown_uvm(true).await;
                if let Ok(uvm) = Arc::try_unwrap(uvm) {
                    let _ = uvm.wait(Duration::from_secs(5)).await;
                    uvm.shutdown().await;
                }
                Err(e)
            }
        }
    }

    /// Whether the VM has a NIC.
    pub async fn has_nic(&self) -> bool {
        self.net.lock().await.is_some()
    }

    /// QEMU's PID: the PID containerd sees for every task of the UVM.
    pub fn pid(&self) -> u32 {
        self.uvm.qemu_pid()
    }

    /// The NIC out and the guest told to power off (waits for QEMU to exit). Every request in
    /// flight then ends, so the holders of the VM let go of it.
    pub async fn halt(&self) {
        let nic = self.net.lock().await.take();
        if let Some((mut network, nic)) = nic {
            if let Err(e) = network.detach(&self.bridge, nic).await {
                tracing::warn!(error = %error_chain(&e), "detach the NIC");
            }
        }
        let _ = self.bridge.shutdown_uvm(true).await;
        let _ = self.uvm.wait(POWER_OFF_TIMEOUT).await;
    }

    /// After [`Self::halt`]: QEMU and its helpers stopped, the run directory removed.
    pub async fn power_off(self) {
        drop(self.client);
        drop(self.storage);
        match Arc::try_unwrap(self.uvm) {
            Ok(uvm) => {
                uvm.shutdown().await;
            }
            Err(uvm) => {
                tracing::warn!("the UVM is still referenced; stopping QEMU by signal");
                if let Ok(pid) = i32::try_from(uvm.qemu_pid()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}
