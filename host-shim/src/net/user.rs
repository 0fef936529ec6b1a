//! The `user` backend: QEMU's user-mode network (libslirp). Each NIC gets its own slirp
//! instance, so every container sees the same fixed addressing (QEMU's defaults): it is
//! `10.0.2.15/24`, the host is the gateway `10.0.2.2` (connections to it reach the host's
//! loopback), and `10.0.2.3` forwards DNS to the host's resolvers. Published ports are slirp host
//! forwards, which listen on the host and connect to the container's address.

use super::{Endpoint, PortMap};
use crate::vm::qmp::NetdevSpec;

/// The slirp network.
pub const NET: &str = "10.0.2.0/24";
/// The container's address.
pub const GUEST: &str = "10.0.2.15";
/// The gateway: the host (its loopback, seen from the guest).
pub const GATEWAY: &str = "10.0.2.2";
/// slirp's DNS forwarder.
pub const DNS: &str = "10.0.2.3";

/// The netdev, with `forwards` (see [`forward_rule`]) in place from the start.
pub fn netdev(forwards: Vec<String>) -> NetdevSpec {
    NetdevSpec::User {
        net: NET.to_owned(),
        host: GATEWAY.to_owned(),
        dns: DNS.to_owned(),
        forwards,
    }
}

/// What the guest is told: a static address (no DHCP round trip at start), the default route
/// through the gateway and slirp's DNS.
pub fn endpoint(mac: &str) -> Endpoint {
    Endpoint {
        mac: mac.to_owned(),
        addresses: vec![(
            GUEST.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            24,
        )],
        routes: vec![("0.0.0.0/0".to_owned(), GATEWAY.to_owned(), 0)],
        dns_servers: vec![DNS.to_owned()],
        dns_search: Vec::new(),
    }
}

/// A `hostfwd` rule: `tcp:127.0.0.1:8080-10.0.2.15:80` (an unspecified host address listens on
/// all of the host's addresses, as docker's `-p 8080:80` does).
pub fn forward_rule(p: &PortMap) -> String {
    format!("{}-{GUEST}:{}", forward_key(p), p.container_port)
}

/// The host end of a forward, as `hostfwd_remove` names it: `tcp:127.0.0.1:8080`.
pub fn forward_key(p: &PortMap) -> String {
    let host = if p.host_ip.is_unspecified() {
        String::new()
    } else {
        p.host_ip.to_string()
    };
    format!("{}:{host}:{}", p.protocol.as_str(), p.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_name_both_ends() {
        let p: PortMap = "127.0.0.1:8080:80".parse().unwrap();
        assert_eq!(forward_rule(&p), "tcp:127.0.0.1:8080-10.0.2.15:80");
        assert_eq!(forward_key(&p), "tcp:127.0.0.1:8080");
        let p: PortMap = "5353:53/udp".parse().unwrap();
        assert_eq!(forward_rule(&p), "udp::5353-10.0.2.15:53");
        let e = endpoint("52:54:00:00:00:01");
        assert_eq!(e.addresses[0].0.to_string(), GUEST);
    }
}
