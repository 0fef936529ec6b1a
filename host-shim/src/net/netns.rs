//! The `netns` backend: a tap device created inside a network namespace that a CNI plugin (or a
//! test) has already given a veth, mirrored to that veth with tc (an ingress qdisc on each and a
//! `u32 match u8 0 0` filter redirecting every frame to the other's egress: Kata's tc-filter
//! model). The guest NIC takes the veth's MAC, addresses and routes, so the peer side of the veth
//! cannot tell the UVM from the namespace. The veth keeps its address but never sees a frame: its
//! ingress is redirected before the namespace's stack. Kernel parts: tun, sch_ingress, cls_u32,
//! act_mirred; QEMU gets the tap by descriptor with `vhost=off` (no `/dev/vhost-net` needed).
//!
//! The namespace is entered by a thread of its own (`setns` changes only the calling thread, and
//! a thread is never returned to a pool in another namespace); `ip` and `tc` run as its children
//! and so in the namespace too.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{Endpoint, NetError};
use crate::sys::tap::open_tap;

/// What [`prepare`] set up.
#[derive(Debug)]
pub struct Prepared {
    /// The tap, for QEMU's `-netdev tap,fd=`.
    pub tap: OwnedFd,
    /// The veth's MAC, addresses, routes and DNS.
    pub endpoint: Endpoint,
    /// The tc mirror, to undo when the NIC goes.
    pub mirror: TapMirror,
}

/// The tc mirror between a veth and a tap in one namespace.
#[derive(Debug)]
pub struct TapMirror {
    ns: PathBuf,
    veth: String,
    tap: String,
}

impl TapMirror {
    /// The veth mirrored.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// Removes the veth's ingress qdisc (and with it the filter), and the tap if it is still
    /// there; the veth is back as the CNI plugin left it. Best effort: logged, never fails.
    pub fn undo(self) {
        let Self { ns, veth, tap } = self;
        let done = in_netns(&ns, move || {
            let _ = run("tc", &["qdisc", "del", "dev", &veth, "ingress"]);
            // The tap dies with QEMU's descriptor; this covers a NIC that was never plugged.
            let _ = run("ip", &["link", "del", &tap]);
            Ok(())
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, ns = %ns.display(), "cannot undo the tap mirror");
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let file = File::open(ns)?;
    std::thread::Builder::new()
        .name("rgcs-netns".into())
        .spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Runs a command (in the caller's namespace) and returns its stdout; a failure carries stderr.
fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {program} (is iproute2 installed?): {e}"),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(program: &str, args: &[&str]) -> io::Result<Vec<Value>> {
    let out = run(program, args)?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).map_err(|e| io::Error::other(format!("`{program} {}`: {e}", args.join(" "))))
}

/// The interface to mirror: the one the default route leaves by, else the only Ethernet link
/// with a global address.
fn pick_link(links: &[Value], default_dev: Option<&str>) -> io::Result<Value> {
    let has_global = |l: &&Value| {
        l["addr_info"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["scope"] == "global"))
    };
    let ether: Vec<&Value> = links
        .iter()
        .filter(|l| l["link_type"] == "ether")
        .filter(has_global)
        .collect();
    if let Some(dev) = default_dev {
        if let Some(l) = ether.iter().find(|l| l["ifname"] == dev) {
            return Ok((*l).clone());
        }
    }
    match ether[..] {
        [one] => Ok(one.clone()),
        [] => Err(io::Error::other(
            "no Ethernet interface with a global address (has a CNI plugin configured it?)",
        )),
        _ => Err(io::Error::other(
            "several Ethernet interfaces with addresses and no default route to choose one",
        )),
    }
}

/// Addresses (global scope) of an `ip -j addr` link.
fn addresses(link: &Value) -> Vec<(IpAddr, u8)> {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["scope"] == "global")
        .filter_map(|i| {
            let ip = i["local"].as_str()?.parse().ok()?;
            let len = u8::try_from(i["prefixlen"].as_u64()?).ok()?;
            Some((ip, len))
        })
        .collect()
}

/// Routes with a next hop (connected ones follow from the addresses), as
/// (destination, next hop, metric).
fn routes(v4: &[Value], v6: &[Value]) -> Vec<(String, String, u16)> {
    let pick = |r: &Value, any: &str| {
        let hop = r["gateway"].as_str()?;
        let dst = match r["dst"].as_str()? {
            "default" => any.to_owned(),
            d if d.contains('/') => d.to_owned(),
            d if d.contains(':') => format!("{d}/128"),
            d => format!("{d}/32"),
        };
        let metric = u16::try_from(r["metric"].as_u64().unwrap_or(0)).unwrap_or(u16::MAX);
        Some((dst, hop.to_owned(), metric))
    };
    v4.iter()
        .filter_map(|r| pick(r, "0.0.0.0/0"))
        .chain(v6.iter().filter_map(|r| pick(r, "::/0")))
        .collect()
}

/// `nameserver` and `search` lines of a resolv.conf; loopback resolvers are dropped (the guest
/// cannot reach the host's loopback through this NIC).
fn resolv(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut servers, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    if !ip.is_loopback() {
                        servers.push(ip.to_string());
                    }
                }
            }
            Some("search" | "domain") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (servers, search)
}

/// DNS for a namespace: `ip netns`' convention `/etc/netns/NAME/resolv.conf` for a named one
/// (`/run/netns/NAME`), else the host's `/etc/resolv.conf`.
fn dns_for(ns: &Path) -> (Vec<String>, Vec<String>) {
    let named = ns
        .parent()
        .filter(|p| *p == Path::new("/run/netns") || *p == Path::new("/var/run/netns"))
        .and(ns.file_name())
        .map(|n| Path::new("/etc/netns").join(n).join("resolv.conf"));
    let text = named
        .and_then(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::fs::read_to_string("/etc/resolv.conf").ok())
        .unwrap_or_default();
    resolv(&text)
}

/// A tap name unique on this host for the life of the process.
fn tap_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = std::process::id() ^ (N.fetch_add(1, Ordering::Relaxed) << 22);
    format!("rgcs{n:08x}")
}

/// Reads the namespace's veth, creates a tap beside it and mirrors the two (see the module doc).
/// On failure nothing is left in the namespace.
pub fn prepare(ns: &Path) -> Result<Prepared, NetError> {
    let path = ns.to_path_buf();
    let err = |source| NetError::Netns {
        path: path.clone(),
        source,
    };
    let (dns_servers, dns_search) = dns_for(ns);
    let tap = tap_name();
    let tap2 = tap.clone();
    let (fd, endpoint, veth) = in_netns(ns, move || {
        let default = json("ip", &["-j", "route", "show", "default"])?;
        let default_dev = default.first().and_then(|r| r["dev"].as_str()).map(str::to_owned);
        let links = json("ip", &["-j", "addr", "show"])?;
        let link = pick_link(&links, default_dev.as_deref())?;
        let veth = link["ifname"].as_str().unwrap_or_default().to_owned();
        let mac = link["address"].as_str().unwrap_or_default().to_owned();
        let mtu = link["mtu"].as_u64().unwrap_or(1500).to_string();
        let v4 = json("ip", &["-j", "-4", "route", "show", "dev", &veth])?;
        let v6 = json("ip", &["-j", "-6", "route", "show", "dev", &veth])?;
        let endpoint = Endpoint {
            mac,
            addresses: addresses(&link),
            routes: routes(&v4, &v6),
            dns_servers,
            dns_search,
        };
        let fd = open_tap(&tap2)?;
        let mirror = || -> io::Result<()> {
            run("ip", &["link", "set", "dev", &tap2, "mtu", &mtu, "up"])?;
            for (from, to) in [(&veth, &tap2), (&tap2, &veth)] {
                run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
                run(
                    "tc",
                    &[
                        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                        "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                    ],
                )?;
            }
            Ok(())
        };
        if let Err(e) = mirror() {
            let _ = run("tc", &["qdisc", "del", "dev", &veth, "ingress"]);
            return Err(e);
        }
        Ok((fd, endpoint, veth))
    })
    .map_err(err)?;
    tracing::info!(ns = %ns.display(), %veth, %tap, mac = %endpoint.mac, "tap mirrored to the namespace's veth");
    Ok(Prepared {
        tap: fd,
        endpoint,
        mirror: TapMirror {
            ns: ns.to_path_buf(),
            veth,
            tap,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_links_routes_and_resolv_conf() {
        let links = vec![
            json!({"ifname": "lo", "link_type": "loopback", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]}),
            json!({"ifname": "eth0", "link_type": "ether", "address": "aa:bb:cc:00:00:01", "mtu": 1450,
                   "addr_info": [{"family": "inet", "local": "10.88.0.5", "prefixlen": 16, "scope": "global"},
                                 {"family": "inet6", "local": "fd00::5", "prefixlen": 64, "scope": "global"},
                                 {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]}),
        ];
        let l = pick_link(&links, None).unwrap();
        assert_eq!(l["ifname"], "eth0");
        let a = addresses(&l);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].0.to_string().as_str(), a[0].1), ("10.88.0.5", 16));
        let v4 = vec![
            json!({"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"}),
            json!({"dst": "10.88.0.0/16", "dev": "eth0", "protocol": "kernel"}),
            json!({"dst": "192.0.2.7", "gateway": "10.88.0.1", "metric": 70000}),
        ];
        let v6 = vec![json!({"dst": "default", "gateway": "fd00::1", "metric": 1024})];
        assert_eq!(
            routes(&v4, &v6),
            vec![
                ("0.0.0.0/0".into(), "10.88.0.1".into(), 0),
                ("192.0.2.7/32".into(), "10.88.0.1".into(), u16::MAX),
                ("::/0".into(), "fd00::1".into(), 1024),
            ]
        );
        let (s, d) =
            resolv("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch a.example b.example\n");
        assert_eq!(
            (s, d),
            (
                vec!["192.0.2.53".to_owned()],
                vec!["a.example".to_owned(), "b.example".to_owned()]
            )
        );
        assert!(pick_link(&links[..1], None).is_err());
        let two = vec![
            links[1].clone(),
            json!({"ifname": "eth1", "link_type": "ether", "addr_info": [{"local": "10.1.0.2", "prefixlen": 24, "scope": "global"}]}),
        ];
        assert!(pick_link(&two, None).is_err());
        assert_eq!(pick_link(&two, Some("eth1")).unwrap()["ifname"], "eth1");
        assert!(tap_name().len() < 16);
    }
}
