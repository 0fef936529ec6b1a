//! Container networks on the host: a virtio-net NIC per endpoint, hot-plugged over QMP on a free
//! PCIe root port, then the agent told about it with a `Network` Add (the host adds the VM
//! resource first, §4.13), and the reverse on removal (guest first, then the VM resource).
//!
//! Backends:
//! * [`user`] — QEMU's user-mode network (libslirp): NAT to whatever the host reaches, no root
//!   set-up on the host, ports published with host forwards (also added and removed at run time);
//! * [`netns`] — a tap created inside a given network namespace and mirrored with tc to the veth
//!   a CNI plugin put there (Kata's tc-filter model); the namespace's addresses and routes become
//!   the adapter's. This is what the containerd shim uses.

pub mod netns;
pub mod user;

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use rgcs_client::BridgeClient;
use rgcs_protocol::message::{
    Empty, IpConfig, ModificationRequest, ModifySettingsRequest, NetworkAdapter, RequestType, Resource,
    Route, UVM_CONTAINER_ID,
};
use rgcs_protocol::MessageId;

use crate::vm::qmp::{NetdevSpec, NicHandle, QmpError};
use crate::vm::{nic_port, SharedQmp, Uvm};

/// Errors of container networking on the host.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A `--network` value is malformed.
    #[error("bad network {0:?}: expected none, user or netns:PATH")]
    BadMode(String),
    /// A `-p` value is malformed.
    #[error("bad port mapping {0:?}: expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]")]
    BadPort(String),
    /// A `--dns` value is not an IP address.
    #[error("bad DNS server {0:?}: expected an IP address")]
    BadDns(String),
    /// A `--hostname` value is not a hostname.
    #[error("bad hostname {0:?}: 1 to 63 letters, digits, '_', '-' and '.'")]
    BadHostname(String),
    /// A host port is published twice.
    #[error("host port {0} is published twice")]
    DuplicatePort(u16),
    /// Ports were asked for on a network that cannot publish them.
    #[error("-p needs --network user (none and netns:PATH publish no ports)")]
    PortsNeedUser,
    /// Every NIC slot of the UVM is taken.
    #[error("every NIC slot of the utility VM is in use ({0})")]
    NoSlot(u32),
    /// QMP failed.
    #[error("cannot change the utility VM's NICs")]
    Qmp(#[from] QmpError),
    /// The guest refused the adapter.
    #[error("the guest refused the network adapter")]
    Guest(#[source] rgcs_client::ClientError),
    /// The network namespace could not be used.
    #[error("network namespace {path}")]
    Netns {
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A container's network as the command line gives it, checked before anything boots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The backend.
    pub mode: NetworkMode,
    /// Published ports.
    pub ports: Vec<PortMap>,
    /// DNS servers (empty: the backend's).
    pub dns: Vec<String>,
}

impl Network {
    /// Parses and checks `--network`, `-p`, `--dns` and `--hostname` together: ports need the
    /// user network, a namespace path must exist, a hostname must be a valid one.
    pub fn parse(
        mode: &str,
        ports: &[String],
        dns: &[String],
        hostname: Option<&str>,
    ) -> Result<Self, NetError> {
        let mode: NetworkMode = mode.parse()?;
        let ports = ports
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<PortMap>, _>>()?;
        if !ports.is_empty() && mode != NetworkMode::User {
            return Err(NetError::PortsNeedUser);
        }
        let dns = dns
            .iter()
            .map(|d| {
                d.parse::<IpAddr>()
                    .map(|ip| ip.to_string())
                    .map_err(|_| NetError::BadDns(d.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let NetworkMode::Netns(path) = &mode {
            std::fs::metadata(path).map_err(|source| NetError::Netns {
                path: path.clone(),
                source,
            })?;
        }
        if let Some(h) = hostname {
            // The guest's rule (hcsshim: letters, digits, '_', '-', '.'), within the kernel's 64.
            if h.is_empty()
                || h.len() > 63
                || !h.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(NetError::BadHostname(h.to_owned()));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &ports {
            if !seen.insert((p.host_ip, p.host_port, p.protocol.as_str())) {
                return Err(NetError::DuplicatePort(p.host_port));
            }
        }
        Ok(Self { mode, ports, dns })
    }
}

/// Which network a container gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// Only `lo`.
    None,
    /// QEMU's user-mode network.
    #[default]
    User,
    /// The veth in this network namespace (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
    Netns(PathBuf),
}

impl FromStr for NetworkMode {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        match s {
            "none" => Ok(Self::None),
            "user" => Ok(Self::User),
            _ => match s.strip_prefix("netns:") {
                Some(p) if p.starts_with('/') => Ok(Self::Netns(PathBuf::from(p))),
                _ => Err(NetError::BadMode(s.to_owned())),
            },
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` / `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]` (docker's form; the host address defaults to all).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMap {
    /// Host address to listen on (`0.0.0.0`: all).
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl FromStr for PortMap {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadPort(s.to_owned());
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (ip, host, ctr) = match parts[..] {
            [h, c] => ("0.0.0.0", h, c),
            [ip, h, c] => (ip, h, c),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(Self {
            host_ip: ip.parse().map_err(|_| bad())?,
            host_port: port(host)?,
            container_port: port(ctr)?,
            protocol,
        })
    }
}

/// What the guest is told about one NIC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// MAC address.
    pub mac: String,
    /// Addresses and prefix lengths (none: DHCP).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes: (destination `a.b.c.d/n` or `0.0.0.0/0`, next hop, metric).
    pub routes: Vec<(String, String, u16)>,
    /// DNS servers.
    pub dns_servers: Vec<String>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
}

impl Endpoint {
    /// The `Network` adapter for namespace `ns`, in the newer shape (`IPConfigs`/`Routes`).
    pub fn adapter(&self, ns: &str, id: &str) -> NetworkAdapter {
        NetworkAdapter {
            namespace_id: ns.to_owned(),
            id: id.to_owned(),
            mac_address: self.mac.clone(),
            dns_suffix: self.dns_search.join(","),
            dns_server_list: self.dns_servers.join(","),
            ip_configs: self
                .addresses
                .iter()
                .map(|(ip, len)| IpConfig {
                    ip_address: ip.to_string(),
                    prefix_length: *len,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|(dst, hop, metric)| Route {
                    next_hop: hop.clone(),
                    destination_prefix: dst.clone(),
                    metric: *metric,
                })
                .collect(),
            ..NetworkAdapter::default()
        }
    }
}

/// A locally administered unicast MAC in QEMU's range (`52:54:00:xx:xx:xx`), unique per call.
pub fn new_mac() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503);
    let b = seed.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// The adapter ID (a GUID, as hosts send one) for a MAC address.
fn adapter_id(mac: &str) -> String {
    format!("00000000-0000-4000-8000-{}", mac.replace(':', ""))
}

/// The host side of an attached NIC, kept for [`UvmNetwork::detach`].
#[derive(Debug)]
pub struct AttachedNic {
    /// The QEMU device.
    pub handle: NicHandle,
    /// What the guest was told.
    pub adapter: NetworkAdapter,
    /// The tc mirror to undo (netns backend).
    mirror: Option<netns::TapMirror>,
    /// Host forwards in place (user backend): `proto:hostip:hostport`.
    forwards: Vec<String>,
}

impl AttachedNic {
    /// The endpoint's first address (for forwards and diagnostics).
    pub fn address(&self) -> Option<String> {
        self.adapter.ip_configs.first().map(|c| c.ip_address.clone())
    }
}

/// The NICs of one UVM: its free PCIe root ports and the shared QMP connection.
#[derive(Debug)]
pub struct UvmNetwork {
    qmp: SharedQmp,
    used: Vec<bool>,
}

async fn modify(
    bridge: &BridgeClient,
    request_type: RequestType,
    adapter: NetworkAdapter,
) -> Result<(), NetError> {
    let body = ModifySettingsRequest {
        request: ModificationRequest::new(request_type, Resource::Network(adapter)),
    };
    bridge
        .call::<_, Empty>(MessageId::MODIFY_SETTINGS, UVM_CONTAINER_ID, &body)
        .await
        .map(|Empty {}| ())
        .map_err(NetError::Guest)
}

impl UvmNetwork {
    /// The NICs of `uvm`.
    pub async fn new(uvm: &Uvm) -> Result<Self, NetError> {
        Ok(Self {
            qmp: uvm.qmp().await?,
            used: vec![false; usize::try_from(uvm.nic_slots()).unwrap_or(0)],
        })
    }

    /// Gives namespace `ns` a NIC of `mode` (`None` gives none), publishing `ports` (user only),
    /// with `dns` servers overriding the backend's.
    pub async fn attach(
        &mut self,
        bridge: &BridgeClient,
        ns: &str,
        mode: &NetworkMode,
        ports: &[PortMap],
        dns: &[String],
    ) -> Result<Option<AttachedNic>, NetError> {
        self.attach_adapter(bridge, ns, mode, ports, dns, |_| {}).await
    }

    /// [`Self::attach`], with `adjust` applied to the adapter before the guest gets it (DHCP
    /// instead of the backend's addresses, `EnableLowMetric`, `EncapOverhead`…).
    pub async fn attach_adapter(
        &mut self,
        bridge: &BridgeClient,
        ns: &str,
        mode: &NetworkMode,
        ports: &[PortMap],
        dns: &[String],
        adjust: impl FnOnce(&mut NetworkAdapter),
    ) -> Result<Option<AttachedNic>, NetError> {
        if !ports.is_empty() && *mode != NetworkMode::User {
            return Err(NetError::PortsNeedUser);
        }
        let slot = match mode {
            NetworkMode::None => return Ok(None),
            _ => self.used.iter().position(|u| !u).ok_or(NetError::NoSlot(
                u32::try_from(self.used.len()).unwrap_or(u32::MAX),
            ))?,
        };
        let port = nic_port(u32::try_from(slot).unwrap_or(u32::MAX));
        let mac = new_mac();
        let (netdev, mut endpoint, mirror, forwards) = match mode {
            NetworkMode::None => return Ok(None),
            NetworkMode::User => {
                let forwards: Vec<String> = ports.iter().map(user::forward_rule).collect();
                let keys = ports.iter().map(user::forward_key).collect();
                (user::netdev(forwards), user::endpoint(&mac), None, keys)
            }
            NetworkMode::Netns(path) => {
                let path = path.clone();
                let prepared = tokio::task::spawn_blocking(move || netns::prepare(&path))
                    .await
                    .map_err(|e| NetError::Netns {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                (
                    NetdevSpec::Tap(prepared.tap),
                    prepared.endpoint,
                    Some(prepared.mirror),
                    Vec::new(),
                )
            }
        };
        if !dns.is_empty() {
            endpoint.dns_servers = dns.to_vec();
        }
        let mac = if endpoint.mac.is_empty() {
            mac
        } else {
            endpoint.mac.clone()
        };
        endpoint.mac = mac.clone();
        let plugged = self.qmp.lock().await.hotplug_nic(netdev, &mac, &port).await;
        let handle = match plugged {
            Ok(h) => h,
            Err(e) => {
                if let Some(m) = mirror {
                    m.undo();
                }
                return Err(e.into());
            }
        };
        self.used[slot] = true;
        let mut adapter = endpoint.adapter(ns, &adapter_id(&mac));
        adjust(&mut adapter);
        let nic = AttachedNic {
            handle,
            adapter: adapter.clone(),
            mirror,
            forwards,
        };
        if let Err(e) = modify(bridge, RequestType::Add, adapter).await {
            self.unplug(nic).await;
            return Err(e);
        }
        Ok(Some(nic))
    }

    /// Adds a host forward to a user-network NIC at run time.
    pub async fn publish(&mut self, nic: &mut AttachedNic, port: &PortMap) -> Result<(), NetError> {
        self.qmp
            .lock()
            .await
            .hostfwd_add(&nic.handle.netdev, &user::forward_rule(port))
            .await?;
        nic.forwards.push(user::forward_key(port));
        Ok(())
    }

    /// Takes a NIC away: the guest first (Network Remove), then the device.
    pub async fn detach(&mut self, bridge: &BridgeClient, nic: AttachedNic) -> Result<(), NetError> {
        let guest = modify(bridge, RequestType::Remove, nic.adapter.clone()).await;
        self.unplug(nic).await;
        guest
    }

    async fn unplug(&mut self, nic: AttachedNic) {
        let mut qmp = self.qmp.lock().await;
        for f in &nic.forwards {
            let _ = qmp.hostfwd_remove(&nic.handle.netdev, f).await;
        }
        if let Err(e) = qmp.unplug_nic(&nic.handle).await {
            tracing::warn!(error = %rgcs_protocol::error_chain(&e), mac = %nic.handle.mac, "nic unplug");
        }
        drop(qmp);
        if let Some(m) = nic.mirror {
            m.undo();
        }
        if let Some(slot) = nic
            .handle
            .port
            .strip_prefix("nic")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if let Some(u) = self.used.get_mut(slot) {
                *u = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_ports_parse_like_docker() {
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("user".parse::<NetworkMode>().unwrap(), NetworkMode::User);
        assert_eq!(
            "netns:/var/run/netns/x".parse::<NetworkMode>().unwrap(),
            NetworkMode::Netns("/var/run/netns/x".into())
        );
        for bad in ["", "bridge", "netns:", "netns:relative"] {
            assert!(bad.parse::<NetworkMode>().is_err(), "{bad}");
        }
        let p: PortMap = "127.0.0.1:8080:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        assert_eq!(p.host_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        let p: PortMap = "5353:53/udp".parse().unwrap();
        assert_eq!(
            (p.host_ip.to_string().as_str(), p.protocol),
            ("0.0.0.0", Protocol::Udp)
        );
        for bad in ["80", "0:80", "8080:70000", "x:8080:80", "8080:80/sctp", "1:2:3:4"] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_become_newer_shape_adapters() {
        let e = Endpoint {
            mac: "52:54:00:01:02:03".into(),
            addresses: vec![("10.0.2.15".parse().unwrap(), 24)],
            routes: vec![("0.0.0.0/0".into(), "10.0.2.2".into(), 0)],
            dns_servers: vec!["10.0.2.3".into()],
            dns_search: vec![],
        };
        let a = e.adapter("ns1", &adapter_id(&e.mac));
        assert_eq!(a.id, "00000000-0000-4000-8000-525400010203");
        assert_eq!(a.ip_configs[0].ip_address, "10.0.2.15");
        assert_eq!(a.routes[0].next_hop, "10.0.2.2");
        assert_eq!(a.dns_server_list, "10.0.2.3");
        assert!(new_mac().starts_with("52:54:00:") && new_mac() != new_mac());
    }
}
