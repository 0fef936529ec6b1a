//! A container started in a UVM the way `rgcs run` starts it (cold, or in a warm UVM's server):
//! its root filesystem, its NIC, Create, Start and the init; and taken down again.

use super::{mark, program_error, RunError, RunOptions};
use crate::image::ImportedImage;
use crate::net::{AttachedNic, NetError, UvmNetwork};
use crate::rootfs::{add_binds, ContainerRootfs, Share, UvmStorage};
use crate::vm::Uvm;
use rgcs_client::bridge::BridgeClient;
use rgcs_client::spec::{init_process, Pipes, ProcessSpec};
use rgcs_client::{ContainerClient, ContainerSpec, HostStdio};

/// A container [`start_container`] made ready in a UVM: its root filesystem mounted, its NIC
/// attached, created, its init running. [`Started::remove`] takes all of it down again.
pub struct Started {
    storage: UvmStorage,
    /// `None` once unmounted.
    root: Option<ContainerRootfs>,
    net: UvmNetwork,
    nic: Option<AttachedNic>,
    /// The container's ID.
    pub id: String,
    /// The init's PID in the guest.
    pub pid: u32,
    /// When each phase of the start ended (`rootfs`, `network`, `created`, `started`; unix ms).
    pub marks: Vec<(String, f64)>,
}

/// Mounts the image's root filesystem (with the volumes), attaches the network, creates and
/// starts the container and its init with the pipes `opts` asks for. On failure whatever was done
/// is undone before the error returns.
pub async fn start_container(
    uvm: &Uvm,
    bridge: &BridgeClient,
    client: &ContainerClient,
    opts: &RunOptions,
    image: &ImportedImage,
    process: ProcessSpec,
    id: &str,
) -> Result<(Started, HostStdio), RunError> {
    let mut storage = UvmStorage::new(uvm).await?;
    let shares: Vec<Share> = opts
        .volumes
        .iter()
        .map(|v| Share {
            host: v.host.clone(),
            container: v.container.clone(),
            read_only: v.read_only,
        })
        .collect();
    let root = storage
        .mount(uvm, bridge, image, id, opts.scratch_size, &shares)
        .await?;
    let mut marks = vec![("rootfs".to_owned(), mark("rootfs"))];
    // The NIC goes to the namespace named after the container (ContainerSpec's default) before
    // Create, as hcsshim's host adds endpoints first; the guest moves it in at Create.
    let attached = async {
        let mut net = UvmNetwork::new(uvm).await?;
        let nic = net
            .attach(bridge, id, &opts.network, &opts.ports, &opts.dns)
            .await?;
        Ok::<_, NetError>((net, nic))
    }
    .await;
    let (net, nic) = match attached {
        Ok(n) => n,
        Err(e) => {
            storage.unmount(bridge, root).await;
            return Err(e.into());
        }
    };
    marks.push(("network".to_owned(), mark("network")));
    let mut started = Started {
        storage,
        root: None,
        net,
        nic,
        id: id.to_owned(),
        pid: 0,
        marks,
    };
    let created = create_and_start(client, opts, process, &root).await;
    started.root = Some(root);
    match created {
        Ok((pid, stdio, created)) => {
            started.pid = pid;
            started.marks.push(("created".to_owned(), created));
            started.marks.push(("started".to_owned(), mark("started")));
            Ok((started, stdio))
        }
        Err(e) => {
            started.release(bridge).await;
            Err(e)
        }
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Started {
    /// Deletes the container's state (its init has exited or is killed with the state), then
    /// detaches its NIC and unmounts its root filesystem.
    pub async fn remove(mut self, bridge: &BridgeClient, client: &ContainerClient) {
        if let Err(e) = client.delete_container_state(&self.id).await {
            tracing::warn!(error = %e, container = %self.id, "delete container state failed");
        }
        self.release(bridge).await;
    }

    async fn release(&mut self, bridge: &BridgeClient) {
        if let Some(nic) = self.nic.take() {
            if let Err(e) = self.net.detach(bridge, nic).await {
                tracing::warn!(error = %rgcs_protocol::error_chain(&e), "network detach failed");
            }
        }
        if let Some(root) = self.root.take() {
            self.storage.unmount(bridge, root).await;
        }
    }
}

/// Create, start and the init process; the container's state is deleted again if a step after
/// Create fails.
async fn create_and_start(
    client: &ContainerClient,
    opts: &RunOptions,
    process: ProcessSpec,
    root: &ContainerRootfs,
) -> Result<(u32, HostStdio, f64), RunError> {
    let id = root.id.as_str();
    let mut spec = ContainerSpec::new(id, root.rootfs.clone(), process);
    spec.hostname.clone_from(&opts.hostname);
    let mut config = spec.config()?;
    if let Some(oci) = config.oci_specification.as_mut() {
        add_binds(oci, &root.binds);
    }
    client
        .create_container(id, config)
        .await
        .map_err(|e| program_error(&e).unwrap_or(RunError::Container(e)))?;
    let created = mark("created");
    let pipes = Pipes {
        stdin: opts.interactive || opts.tty,
        stdout: true,
        stderr: !opts.tty,
    };
    let result = async {
        client.start(id).await?;
        client.execute_process(id, init_process(pipes)).await
    }
    .await;
    if result.is_err() {
        if let Err(e) = client.delete_container_state(id).await {
            tracing::warn!(error = %e, container = id, "delete container state failed");
        }
    }
    let (pid, stdio) = result?;
    Ok((pid, stdio, created))
}
