//! A Network request's adapter (`LCOWNetworkAdapter`), checked and normalised before anything
//! touches the kernel, so a bad field fails the request with nothing configured.
//!
//! Both shapes hosts send are taken: `IPConfigs`/`Routes` (hcsshim v0.13 and later), and the
//! older `IPAddress`/`PrefixLength`/`GatewayAddress` (and their IPv6 twins), which become one
//! address and a default route through the gateway, as hcsshim's guest converted them up to
//! v0.12 (metric 1, or 500 with `EnableLowMetric`). hcsshim's newer guests drop the old fields
//! silently and fall into DHCP; we keep what the host meant.

use std::net::IpAddr;

use rgcs_protocol::message::NetworkAdapter;

/// A route as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCfg {
    /// Destination and prefix; `None` for a default route.
    pub destination: Option<(IpAddr, u8)>,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// `Metric` as sent (0: none).
    pub metric: u16,
    /// Whether it is an IPv6 route (for a default route without a gateway).
    pub v6: bool,
}

/// A checked adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// The adapter ID (VMBus instance GUID on Hyper-V), as sent.
    pub id: String,
    /// The hardware address, lower-case `aa:bb:cc:dd:ee:ff`, if sent.
    pub mac: Option<String>,
    /// Static addresses; empty means DHCP.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes to add (default routes without a real next hop already dropped, as hcsshim does).
    pub routes: Vec<RouteCfg>,
    /// DNS search domains, trimmed and lower-cased.
    pub dns_search: Vec<String>,
    /// DNS servers, trimmed and lower-cased.
    pub dns_servers: Vec<String>,
    /// Bytes to take off the MTU.
    pub encap_overhead: u16,
    /// The host's `EnableLowMetric`.
    pub low_metric: bool,
    /// The host's `PolicyBasedRouting` (every NIC after the first is low-metric).
    pub policy_based_routing: bool,
    /// A vPCI-assigned NIC (found under the VMBus device's PCI path on Hyper-V).
    pub vpci: bool,
}

impl Adapter {
    /// The sources of the low-metric rules this adapter may have added (its addresses).
    pub fn rule_sources(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|(ip, _)| *ip).collect()
    }
}

/// Longest adapter ID we take (GUIDs are 36 characters).
const MAX_ID: usize = 128;
/// Most addresses, routes and DNS servers one adapter may carry: each is a netlink request or a
/// `resolv.conf` line, and no real endpoint comes near.
const MAX_ADDRESSES: usize = 32;
const MAX_ROUTES: usize = 256;
const MAX_DNS_SERVERS: usize = 16;

fn too_many(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{field} has {n} entries; at most {max} are taken"));
    }
    Ok(())
}

fn bad(field: &str, value: &str, why: &str) -> String {
    format!("{field} {:?} {why}", value.escape_debug().to_string())
}

/// `00-15-5D-AA-BB-CC`, `00:15:5d:aa:bb:cc` and mixed case all give `00:15:5d:aa:bb:cc`.
pub fn normalise_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(['-', ':']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(bad("MacAddress", mac, "is not a MAC address (six hex pairs)"));
    }
    let text = parts.join(":").to_ascii_lowercase();
    if text == "00:00:00:00:00:00" || text == "ff:ff:ff:ff:ff:ff" {
        return Err(bad("MacAddress", mac, "is not a unicast address"));
    }
    Ok(text)
}

fn ip(field: &str, s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, s, "is not an IP address"))
}

fn prefix(field: &str, ip: &IpAddr, len: u8) -> Result<u8, String> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad(field, &len.to_string(), &format!("is over {max} for {ip}")));
    }
    Ok(len)
}

fn cidr(field: &str, s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| bad(field, s, "is not an address/prefix"))?;
    let addr = ip(field, a)?;
    let len: u8 = l
        .trim()
        .parse()
        .map_err(|_| bad(field, s, "has no valid prefix length"))?;
    Ok((addr, prefix(field, &addr, len)?))
}

/// A comma list, trimmed and lower-cased, empty items dropped.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_lowercase())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Checks and normalises `a`.
pub fn parse(a: &NetworkAdapter) -> Result<Adapter, String> {
    if a.id.len() > MAX_ID || !a.id.bytes().all(|b| b.is_ascii_hexdigit() || b"-{}".contains(&b)) {
        return Err(bad("ID", &a.id, "is not an adapter GUID"));
    }
    too_many("IPConfigs", a.ip_configs.len(), MAX_ADDRESSES)?;
    too_many("Routes", a.routes.len(), MAX_ROUTES)?;
    let mac = match a.mac_address.trim() {
        "" => None,
        m => Some(normalise_mac(m)?),
    };
    let mut addresses = Vec::new();
    for c in &a.ip_configs {
        let addr = ip("IPConfigs.IPAddress", &c.ip_address)?;
        addresses.push((addr, prefix("IPConfigs.PrefixLength", &addr, c.prefix_length)?));
    }
    let mut routes = Vec::new();
    for r in &a.routes {
        let dst = r.destination_prefix.trim();
        let hop = r.next_hop.trim();
        let default_dst = dst == "0.0.0.0/0" || dst == "::/0";
        // hcsshim skips a default route whose next hop is the unspecified address.
        if default_dst && (hop == "0.0.0.0" || hop == "::") {
            continue;
        }
        let destination = if default_dst {
            None
        } else {
            Some(cidr("Routes.DestinationPrefix", dst)?)
        };
        let gateway = match hop {
            "" => None,
            h => Some(ip("Routes.NextHop", h)?),
        };
        if destination.is_none() && gateway.is_none() {
            return Err("a route needs a destination or a next hop".into());
        }
        routes.push(RouteCfg {
            destination,
            gateway,
            metric: r.metric,
            v6: dst.contains(':') || hop.contains(':'),
        });
    }
    // The older shape, when the newer one is absent.
    let old_metric = if a.enable_low_metric { 500 } else { 1 };
    for (field, addr, len, gw) in [
        ("IPAddress", &a.ip_address, a.prefix_length, &a.gateway_address),
        (
            "IPv6Address",
            &a.ipv6_address,
            a.ipv6_prefix_length,
            &a.ipv6_gateway_address,
        ),
    ] {
        if !a.ip_configs.is_empty() || addr.trim().is_empty() {
            continue;
        }
        let parsed = ip(field, addr)?;
        addresses.push((parsed, prefix(field, &parsed, len)?));
        if !gw.trim().is_empty() {
            let g = ip("GatewayAddress", gw)?;
            routes.push(RouteCfg {
                destination: None,
                gateway: Some(g),
                metric: old_metric,
                v6: g.is_ipv6(),
            });
        }
    }
    let dns_search = list(&a.dns_suffix);
    let dns_servers = list(&a.dns_server_list);
    too_many("DNSServerList", dns_servers.len(), MAX_DNS_SERVERS)?;
    for s in &dns_servers {
        ip("DNSServerList", s)?;
    }
    for d in &dns_search {
        if d.len() > 253
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(bad("DNSSuffix", d, "is not a domain name"));
        }
    }
    Ok(Adapter {
        id: a.id.trim().to_owned(),
        mac,
        addresses,
        routes,
        dns_search,
        dns_servers,
        encap_overhead: a.encap_overhead,
        low_metric: a.enable_low_metric,
        policy_based_routing: a.policy_based_routing,
        vpci: a.vpci_assigned,
    })
}

#[cfg(test)]
mod tests {
    use rgcs_protocol::message::{IpConfig, Route};

    use super::*;

    fn adapter() -> NetworkAdapter {
        NetworkAdapter {
            namespace_id: "NS1".into(),
            id: "6A2B7C1F-0000-4A4B-8C2D-0123456789AB".into(),
            mac_address: "00-15-5D-AA-BB-CC".into(),
            dns_suffix: " Corp.Example ,svc.example,".into(),
            dns_server_list: "10.0.0.10, 10.0.0.11".into(),
            ip_configs: vec![IpConfig {
                ip_address: "10.0.0.5".into(),
                prefix_length: 24,
            }],
            routes: vec![
                Route {
                    next_hop: "10.0.0.1".into(),
                    destination_prefix: "0.0.0.0/0".into(),
                    metric: 0,
                },
                Route {
                    next_hop: "0.0.0.0".into(),
                    destination_prefix: "0.0.0.0/0".into(),
                    metric: 0,
                },
            ],
            ..NetworkAdapter::default()
        }
    }

    #[test]
    fn the_newer_shape_normalises() {
        let a = parse(&adapter()).unwrap();
        assert_eq!(a.mac.as_deref(), Some("00:15:5d:aa:bb:cc"));
        assert_eq!(a.addresses, [("10.0.0.5".parse().unwrap(), 24)]);
        assert_eq!(a.routes.len(), 1, "the 0.0.0.0 next hop default route is skipped");
        assert_eq!(a.routes[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.dns_search, ["corp.example", "svc.example"]);
        assert_eq!(a.dns_servers, ["10.0.0.10", "10.0.0.11"]);
    }

    #[test]
    fn the_older_shape_becomes_an_address_and_a_default_route() {
        let old = NetworkAdapter {
            mac_address: "00:15:5d:00:00:01".into(),
            ip_address: "192.168.5.9".into(),
            prefix_length: 28,
            gateway_address: "192.168.5.1".into(),
            ipv6_address: "fd00::9".into(),
            ipv6_prefix_length: 64,
            ..NetworkAdapter::default()
        };
        let a = parse(&old).unwrap();
        assert_eq!(
            a.addresses,
            [
                ("192.168.5.9".parse().unwrap(), 28),
                ("fd00::9".parse().unwrap(), 64)
            ]
        );
        assert_eq!(a.routes.len(), 1);
        assert_eq!((a.routes[0].destination, a.routes[0].metric), (None, 1));
    }

    #[test]
    fn hostile_fields_are_refused() {
        for edit in [
            (|a: &mut NetworkAdapter| a.mac_address = "00-15-5D-AA-BB".into()) as fn(&mut NetworkAdapter),
            |a| a.mac_address = "zz:15:5d:aa:bb:cc".into(),
            |a| a.mac_address = "ff:ff:ff:ff:ff:ff".into(),
            |a| a.ip_configs[0].prefix_length = 33,
            |a| a.ip_configs[0].ip_address = "10.0.0.500".into(),
            |a| a.routes[0].destination_prefix = "10.0.0.0/99".into(),
            |a| a.routes[0].next_hop = "gateway".into(),
            |a| a.id = "../../etc".into(),
            |a| a.dns_server_list = "not-an-ip".into(),
            |a| a.dns_suffix = "a b".into(),
            |a| a.ip_configs = vec![a.ip_configs[0].clone(); MAX_ADDRESSES + 1],
            |a| a.routes = vec![a.routes[0].clone(); MAX_ROUTES + 1],
            |a| a.dns_server_list = vec!["10.0.0.1"; MAX_DNS_SERVERS + 1].join(","),
        ] {
            let mut a = adapter();
            edit(&mut a);
            assert!(parse(&a).is_err(), "{a:?}");
        }
    }
}
