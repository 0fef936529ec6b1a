//! Moving a NIC into a container's network namespace and configuring it there, in hcsshim's order
//! (§6.8): in the agent's namespace the link goes down and moves; inside the target, the MTU
//! loses `EncapOverhead`, the link comes up, each address is added, with `EnableLowMetric` a
//! source rule to table 101 (priority 5), then each route (metric 500 in table 101 when low
//! metric; a gateway off the subnet gets its own /32 or /128 and the route is tried again).
//! Without addresses, DHCP (busybox `udhcpc` with our script, with a real deadline).
//!
//! A NIC that fails half-way is moved back to the agent's namespace, which drops every address
//! and route it got: nothing half-configured stays in the container.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::adapter::Adapter;
use super::netlink::{RouteSpec, Rtnl, TABLE_MAIN};
use super::netns;
use crate::reaper::Reaper;

/// The policy-routing table of low-metric NICs (hcsshim).
pub const LOW_METRIC_TABLE: u8 = 101;
/// The priority of their source rules.
pub const LOW_METRIC_RULE_PRIORITY: u32 = 5;
/// The metric of their routes when the host gives none.
pub const LOW_METRIC: u32 = 500;
/// Where the initrd carries udhcpc's event script.
pub const DHCP_SCRIPT: &str = "/usr/share/rgcs/udhcpc.script";
/// busybox's udhcpc in the initrd.
pub const UDHCPC: &str = "/sbin/udhcpc";
/// How long DHCP may take (hcsshim meant 30 s; its timer never ran).
pub const DHCP_LIMIT: Duration = Duration::from_secs(30);
/// The agent's own network namespace (PID 1's: the agent never leaves it).
pub const AGENT_NETNS: &str = "/proc/1/ns/net";

fn link_index(nl: &mut Rtnl, name: &str) -> io::Result<u32> {
    nl.link(name)?
        .map(|l| l.index)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name:?}")))
}

/// In the agent's namespace: `ifname` down, then into the namespace at `target`, where it keeps
/// its name unless the namespace already has a link of that name (a NIC added after another was
/// moved in gets the UVM's first free name again): then it takes the first free `ethN` there.
/// hcsshim never renames, and its second such NIC fails with `EEXIST`. Returns the name in the
/// namespace.
pub fn move_into(ifname: &str, target: &Path) -> io::Result<String> {
    let name = free_name(ifname, &link_names(target)?);
    let ns = std::fs::File::open(target)?;
    let ifname = ifname.to_owned();
    // A thread of its own: the caller may be a pooled thread, and netlink sockets are bound to
    // the namespace of the thread that makes them.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut nl = Rtnl::new()?;
            let index = link_index(&mut nl, &ifname)?;
            nl.set_up(index, false)?;
            let rename = (name != ifname).then_some(name.as_str());
            nl.set_netns(index, std::os::fd::AsFd::as_fd(&ns), rename)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netlink worker panicked")))
    })?;
    Ok(name)
}

/// The names of the links in the namespace at `ns`.
fn link_names(ns: &Path) -> io::Result<Vec<String>> {
    netns::run_in(ns, || {
        Ok(Rtnl::new()?.links()?.into_iter().map(|l| l.name).collect())
    })
}

/// `ifname` if no link in `taken` has it, else the first `ethN` none has.
fn free_name(ifname: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == ifname) {
        return ifname.to_owned();
    }
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|c| !taken.contains(c))
        .unwrap_or_else(|| ifname.to_owned())
}

/// Inside the namespace at `ns`: `ifname` back to the agent's namespace (addresses and routes
/// go with the move; the low-metric source rules of `sources`, which belong to the namespace,
/// are deleted first where present).
/// It is renamed like [`move_into`] if the agent's namespace has its name.
pub fn move_back(ifname: &str, ns: &Path, sources: &[IpAddr]) -> io::Result<()> {
    let name = free_name(ifname, &link_names(Path::new(AGENT_NETNS))?);
    let agent = std::fs::File::open(AGENT_NETNS)?;
    netns::run_in(ns, move || {
        let mut nl = Rtnl::new()?;
        for ip in sources {
            match nl.del_rule(*ip, LOW_METRIC_TABLE, LOW_METRIC_RULE_PRIORITY) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
        let index = link_index(&mut nl, ifname)?;
        nl.set_up(index, false)?;
        let rename = (name != ifname).then_some(name.as_str());
        nl.set_netns(index, std::os::fd::AsFd::as_fd(&agent), rename)
    })
}

/// Inside the namespace at `ns`: `lo` up (runc does it for a new namespace; libcontainer does not).
pub fn loopback_up(ns: &Path) -> io::Result<()> {
    netns::run_in(ns, || {
        let mut nl = Rtnl::new()?;
        let index = link_index(&mut nl, "lo")?;
        nl.set_up(index, true)
    })
}

/// Inside the namespace at `ns`: configure `ifname` from `a`; `low_metric` as decided for this NIC.
pub fn configure(ifname: &str, ns: &Path, a: &Adapter, low_metric: bool, reaper: &Reaper) -> io::Result<()> {
    netns::run_in(ns, || {
        let mut nl = Rtnl::new()?;
        let link = nl
            .link(ifname)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {ifname:?}")))?;
        if a.encap_overhead > 0 {
            let mtu = link
                .mtu
                .checked_sub(u32::from(a.encap_overhead))
                .filter(|m| *m >= 68);
            let mtu = mtu.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "EncapOverhead {} leaves no usable MTU of {}",
                        a.encap_overhead, link.mtu
                    ),
                )
            })?;
            nl.set_mtu(link.index, mtu)?;
        }
        if a.addresses.is_empty() {
            return dhcp(ifname, reaper);
        }
        nl.set_up(link.index, true)?;
        for (ip, len) in &a.addresses {
            nl.add_address(link.index, *ip, *len)?;
            if low_metric {
                nl.add_rule(*ip, LOW_METRIC_TABLE, LOW_METRIC_RULE_PRIORITY)?;
            }
        }
        for r in &a.routes {
            add_route(&mut nl, link.index, r, low_metric)?;
        }
        Ok(())
    })
}

fn add_route(nl: &mut Rtnl, index: u32, r: &super::adapter::RouteCfg, low_metric: bool) -> io::Result<()> {
    let metric = match (u32::from(r.metric), low_metric) {
        (0, true) => LOW_METRIC,
        (m, _) => m,
    };
    let spec = RouteSpec {
        destination: r.destination,
        gateway: r.gateway,
        oif: index,
        metric,
        table: if low_metric { LOW_METRIC_TABLE } else { TABLE_MAIN },
        v6: r.v6,
    };
    match nl.add_route(&spec) {
        // A gateway outside the NIC's subnets: make it reachable on the link, try once more.
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => {
            let Some(gw) = r.gateway else { return Err(e) };
            let host_len = if gw.is_ipv4() { 32 } else { 128 };
            nl.add_address(index, gw, host_len)?;
            nl.add_route(&spec)
        }
        other => other,
    }
}

/// DHCP on `ifname` (this thread is inside the container's namespace, so udhcpc is too).
fn dhcp(ifname: &str, reaper: &Reaper) -> io::Result<()> {
    crate::process::tool::run(
        reaper,
        Path::new(UDHCPC),
        &["-q", "-n", "-t", "5", "-T", "2", "-i", ifname, "-s", DHCP_SCRIPT],
        &["PATH=/sbin:/usr/sbin:/bin:/usr/bin"],
        DHCP_LIMIT,
    )?
    .check(&format!("udhcpc on {ifname}"))
}

/// The addresses `ifname` has inside the namespace at `ns` (for tests and diagnostics).
pub fn addresses(ifname: &str, ns: &Path) -> io::Result<Vec<(IpAddr, u8)>> {
    netns::run_in(ns, || {
        let mut nl = Rtnl::new()?;
        let index = link_index(&mut nl, ifname)?;
        Ok(nl
            .addresses()?
            .into_iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, ip, len)| (ip, len))
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::free_name;

    #[test]
    fn a_clashing_name_takes_the_first_free_eth() {
        let taken = ["lo".to_owned(), "eth0".to_owned(), "eth2".to_owned()];
        assert_eq!(free_name("eth1", &taken), "eth1");
        assert_eq!(free_name("eth0", &taken), "eth1");
        assert_eq!(
            free_name("eth2", &["eth0".into(), "eth1".into(), "eth2".into()]),
            "eth3"
        );
    }
}
