//! Container networking (§6.8, §4.14 `Network`): the NICs a host adds for a network namespace,
//! moved into the namespace of the container that owns it and configured there.
//!
//! * [`adapter`] — the request's adapter, checked and normalised (both shapes hosts send);
//! * [`resolve`] — which interface an adapter is (VMBus ID on Hyper-V, MAC address elsewhere);
//! * [`configure`] — the move and the configuration, in hcsshim's order, with rollback;
//! * [`netlink`] — the rtnetlink client; [`netns`] — running code inside a namespace.
//!
//! Namespaces are keyed by the lower-cased `NamespaceID` (the empty string is a valid key), as in
//! hcsshim. A Network Add records the NIC and, if the namespace already has its container,
//! moves and configures it at once. A sandbox or standalone Create gives the namespace its
//! container: `lo` comes up and every recorded NIC is moved and configured before Create
//! answers. Differences from hcsshim's guest, on purpose: only NICs not yet moved are moved (its
//! second Sync fails on the first NIC); a Network Remove moves the NIC back out of the container
//! (hcsshim only forgets it); a deleted container's namespace forgets its PID, and the
//! namespace itself goes when it is keyed by the container's ID and has no NIC left.

pub mod adapter;
pub mod configure;
pub mod netlink;
pub mod netns;
pub mod resolve;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rgcs_protocol::message::{ModifySettingsRequest, NetworkAdapter};

use self::adapter::Adapter;
use crate::reaper::Reaper;
use crate::sys::pid::ProcessId;

/// Why a network request failed. [`crate::error::GcsError`] maps these to HRESULTs.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// An adapter field is malformed.
    #[error("invalid network adapter: {0}")]
    BadAdapter(String),
    /// The adapter ID is already recorded in this namespace.
    #[error("adapter with id: {id:?} already present in namespace {ns:?}")]
    Duplicate {
        /// Adapter ID.
        id: String,
        /// Namespace.
        ns: String,
    },
    /// No interface for the adapter.
    #[error("cannot find the interface of the adapter")]
    Resolve(#[from] resolve::ResolveError),
    /// The namespace is unknown (a sandbox Create whose Network Add never came).
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    /// A second container for one namespace.
    #[error("previously assigned container pid {pid} to network namespace {ns:?}")]
    AlreadyAssigned {
        /// The first container's init.
        pid: u32,
        /// Namespace.
        ns: String,
    },
    /// Moving or configuring an interface failed (it was moved back out).
    #[error("cannot {what} {ifname:?}")]
    Configure {
        /// What was attempted.
        what: &'static str,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task failed.
    #[error("network worker: {0}")]
    Task(String),
}

/// A NIC recorded in a namespace.
#[derive(Debug, Clone)]
struct Nic {
    adapter: Adapter,
    /// Its name: in the agent's namespace, or in the container's once moved.
    ifname: String,
    /// Moved into (and configured in) the namespace's container.
    moved: bool,
}

/// One namespace: its container (once created) and its NICs, in the order they were added.
#[derive(Debug, Default)]
struct Namespace {
    owner: Option<(String, ProcessId)>,
    nics: Vec<Nic>,
}

/// Every namespace. One lock serialises network work: it is rare, and a NIC must not be moved
/// by an Add and a Create at once.
#[derive(Debug)]
pub struct Networks {
    spaces: tokio::sync::Mutex<HashMap<String, Namespace>>,
    sysfs: PathBuf,
    reaper: Option<Arc<Reaper>>,
}

impl Networks {
    /// Networks over the real `/sys`, running helpers (udhcpc) through `reaper`.
    pub fn new(reaper: Option<Arc<Reaper>>) -> Self {
        Self {
            spaces: tokio::sync::Mutex::new(HashMap::new()),
            sysfs: PathBuf::from("/sys"),
            reaper,
        }
    }

    /// `Network` `Add`: check the adapter, find its interface, record it; configure it at once
    /// when the namespace has its container.
    pub async fn add(&self, a: &NetworkAdapter) -> Result<(), NetworkError> {
        let adapter = adapter::parse(a).map_err(NetworkError::BadAdapter)?;
        let key = a.namespace_id.to_lowercase();
        let mut spaces = self.spaces.lock().await;
        let ns = spaces.entry(key.clone()).or_default();
        if !adapter.id.is_empty()
            && ns
                .nics
                .iter()
                .any(|n| n.adapter.id.eq_ignore_ascii_case(&adapter.id))
        {
            return Err(NetworkError::Duplicate {
                id: adapter.id,
                ns: key,
            });
        }
        if let Some(mac) = &adapter.mac {
            if ns.nics.iter().any(|n| n.adapter.mac.as_ref() == Some(mac)) {
                return Err(NetworkError::Duplicate {
                    id: mac.clone(),
                    ns: key,
                });
            }
        }
        let (sysfs, probe) = (self.sysfs.clone(), adapter.clone());
        let ifname = blocking(move || {
            resolve::ifname(&probe, &sysfs, Instant::now() + resolve::DEADLINE).map_err(NetworkError::from)
        })
        .await?;
        tracing::info!(namespace = %key, %ifname, mac = ?adapter.mac, "network adapter added");
        ns.nics.push(Nic {
            adapter,
            ifname: ifname.clone(),
            moved: false,
        });
        let synced = self.sync(ns).await;
        if synced.is_err() {
            // A failed Add records nothing (the NIC is already back out of the container).
            ns.nics.retain(|n| n.ifname != ifname || n.moved);
        }
        synced
    }

    /// `Network` `Remove`: an unknown namespace or adapter is success (hcsshim HEAD); a NIC in a
    /// container is moved back out first.
    pub async fn remove(&self, a: &NetworkAdapter) -> Result<(), NetworkError> {
        let key = a.namespace_id.to_lowercase();
        let mut spaces = self.spaces.lock().await;
        let Some(ns) = spaces.get_mut(&key) else {
            tracing::warn!(namespace = %key, "network remove for an unknown namespace");
            return Ok(());
        };
        let mac = a.mac_address.trim();
        let mac = (!mac.is_empty())
            .then(|| adapter::normalise_mac(mac).ok())
            .flatten();
        let Some(i) = ns.nics.iter().position(|n| {
            (!a.id.is_empty() && n.adapter.id.eq_ignore_ascii_case(a.id.trim()))
                || (a.id.is_empty() && mac.is_some() && n.adapter.mac == mac)
        }) else {
            return Ok(());
        };
        let nic = ns.nics.remove(i);
        if nic.moved {
            if let Some((_, pid)) = &ns.owner {
                let path = netns::of_pid(pid.get());
                let ifname = nic.ifname.clone();
                let sources = nic.adapter.rule_sources();
                blocking(move || {
                    configure::move_back(&ifname, &path, &sources).map_err(|source| NetworkError::Configure {
                        what: "move back out of the container",
                        ifname,
                        source,
                    })
                })
                .await?;
            }
        }
        tracing::info!(namespace = %key, ifname = %nic.ifname, "network adapter removed");
        Ok(())
    }

    /// Whether `ns` (any case) exists.
    pub async fn exists(&self, ns: &str) -> bool {
        self.spaces.lock().await.contains_key(&ns.to_lowercase())
    }

    /// The DNS search list and servers of `ns`'s NICs, in order, each once (§6.8, HEAD).
    pub async fn dns(&self, ns: &str) -> (Vec<String>, Vec<String>) {
        let spaces = self.spaces.lock().await;
        let mut search: Vec<String> = Vec::new();
        let mut servers: Vec<String> = Vec::new();
        if let Some(n) = spaces.get(&ns.to_lowercase()) {
            for nic in &n.nics {
                for s in &nic.adapter.dns_search {
                    if !search.contains(s) {
                        search.push(s.clone());
                    }
                }
                for s in &nic.adapter.dns_servers {
                    if !servers.contains(s) {
                        servers.push(s.clone());
                    }
                }
            }
        }
        (search, servers)
    }

    /// A sandbox or standalone container `id` takes namespace `ns` (created if `create`):
    /// `lo` up when the container has a namespace of its own, then every NIC moved and
    /// configured. A namespace that already has a container is refused.
    pub async fn attach(
        &self,
        ns: &str,
        create: bool,
        id: &str,
        pid: ProcessId,
        own_netns: bool,
    ) -> Result<(), NetworkError> {
        let key = ns.to_lowercase();
        let mut spaces = self.spaces.lock().await;
        if !create && !spaces.contains_key(&key) {
            return Err(NetworkError::NamespaceNotFound(key));
        }
        let space = spaces.entry(key.clone()).or_default();
        if let Some((_, owner)) = &space.owner {
            return Err(NetworkError::AlreadyAssigned {
                pid: owner.get(),
                ns: key,
            });
        }
        if own_netns {
            let path = netns::of_pid(pid.get());
            blocking(move || {
                configure::loopback_up(&path).map_err(|source| NetworkError::Configure {
                    what: "bring up",
                    ifname: "lo".into(),
                    source,
                })
            })
            .await?;
        }
        space.owner = Some((id.to_owned(), pid));
        if let Err(e) = self.sync(space).await {
            space.owner = None;
            return Err(e);
        }
        Ok(())
    }

    /// Container `id` is gone: its namespace forgets it, and a namespace keyed by its ID with no
    /// NIC left is dropped (hcsshim drops the namespace keyed by the container ID).
    pub async fn detach(&self, id: &str) {
        let mut spaces = self.spaces.lock().await;
        for ns in spaces.values_mut() {
            if ns.owner.as_ref().is_some_and(|(o, _)| o == id) {
                ns.owner = None;
                for nic in &mut ns.nics {
                    // The kernel moved them back to the UVM when the namespace died.
                    nic.moved = false;
                }
            }
        }
        let key = id.to_lowercase();
        if spaces
            .get(&key)
            .is_some_and(|n| n.nics.is_empty() && n.owner.is_none())
        {
            spaces.remove(&key);
        }
    }

    /// Moves and configures every NIC of `ns` not yet in its container (none if it has none).
    /// A NIC that fails is moved back out and stays recorded as not moved.
    async fn sync(&self, ns: &mut Namespace) -> Result<(), NetworkError> {
        let Some((_, pid)) = ns.owner.clone() else {
            return Ok(());
        };
        let target = netns::of_pid(pid.get());
        let pbr = ns.nics.iter().any(|n| n.adapter.policy_based_routing);
        for (i, nic) in ns.nics.iter_mut().enumerate() {
            if nic.moved {
                continue;
            }
            let low_metric = if pbr { i > 0 } else { nic.adapter.low_metric };
            let (adapter, path, reaper, sysfs) = (
                nic.adapter.clone(),
                target.clone(),
                self.reaper.clone(),
                self.sysfs.clone(),
            );
            let ifname = nic.ifname.clone();
            let name = blocking(move || {
                let fail = |what, source| NetworkError::Configure {
                    what,
                    ifname: ifname.clone(),
                    source,
                };
                // Found again: a NIC that came back from a dead container may have a new name.
                let ifname = resolve::ifname(&adapter, &sysfs, Instant::now() + resolve::DEADLINE)?;
                let name =
                    configure::move_into(&ifname, &path).map_err(|e| fail("move into the container", e))?;
                let reaper = reaper.ok_or_else(|| {
                    fail(
                        "configure",
                        std::io::Error::other("no reaper to run helpers with"),
                    )
                });
                let configured = reaper.and_then(|r| {
                    configure::configure(&name, &path, &adapter, low_metric, &r)
                        .map_err(|e| fail("configure", e))
                });
                if let Err(e) = configured {
                    if let Err(back) = configure::move_back(&name, &path, &adapter.rule_sources()) {
                        tracing::error!(ifname = %name, error = %back, "cannot move a failed NIC back out");
                    }
                    return Err(e);
                }
                Ok(name)
            })
            .await?;
            nic.ifname = name;
            nic.moved = true;
            tracing::info!(ifname = %nic.ifname, pid = pid.get(), low_metric, "network adapter configured in its container");
        }
        Ok(())
    }
}

/// `ModifySettings` `Network` on the UVM: `Add` or `Remove` (anything else is refused, as in
/// hcsshim), once the late modules (virtio_net among them) are loaded.
pub async fn modify(
    host: &Arc<crate::host::Host>,
    req: ModifySettingsRequest,
) -> Result<crate::outcome::Outcome, crate::error::GcsError> {
    use rgcs_protocol::message::{RequestType, Resource};
    let Resource::Network(a) = &req.request.resource else {
        return Err(crate::error::GcsError::Internal("not a Network request".into()));
    };
    match req.request.request_type {
        RequestType::Add => {
            host.modules
                .wait_for(&["virtio_net"])
                .await
                .map_err(crate::storage::StorageError::Modules)?;
            host.networks.add(a).await?;
        }
        RequestType::Remove => host.networks.remove(a).await?,
        ref other => {
            return Err(crate::error::GcsError::Unsupported(format!(
                "RequestType {:?} for Network",
                other.as_str()
            )))
        }
    }
    Ok(crate::outcome::Outcome::empty())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetworkError::Task(e.to_string()))?
}
