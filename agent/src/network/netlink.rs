//! A small synchronous rtnetlink client over `netlink-packet-route` and `netlink-sys` (the
//! rust-netlink crates libcontainer already links, so they add nothing to the tree): links,
//! addresses, routes and rules, each request acknowledged. A socket talks to the network namespace
//! of the thread that created it, so the caller creates one inside the namespace it configures
//! (see [`super::netns`]).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `ifindex`.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its hardware address, lower-case `aa:bb:…` (empty for `lo`-like links).
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// `IFF_UP`.
    pub up: bool,
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination and prefix; `None` is the default route.
    pub destination: Option<(IpAddr, u8)>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface.
    pub oif: u32,
    /// `RTA_PRIORITY`; 0 leaves the kernel's default.
    pub metric: u32,
    /// Routing table (254 is main).
    pub table: u8,
    /// Address family when there is neither destination nor gateway to tell.
    pub v6: bool,
}

/// The route tables.
pub const TABLE_MAIN: u8 = 254;

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn mac_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Rtnl {
    /// A socket bound in this thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the replies until the ACK (or the end of a dump). A NACK
    /// is the errno it carries.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rbuf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = usize::try_from(msg.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "empty netlink message",
                    ));
                }
                offset += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            continue;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if any.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    fn set_link(&mut self, index: u32, edit: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        edit(&mut m);
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(drop)
    }

    /// Sets `IFF_UP` on or off.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    /// Moves the link into the network namespace `netns` (an open `/proc/<pid>/ns/net`), renamed
    /// to `rename` there if given (one request: the name never clashes in either namespace).
    pub fn set_netns(&mut self, index: u32, netns: BorrowedFd<'_>, rename: Option<&str>) -> io::Result<()> {
        let fd = netns.as_raw_fd();
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(fd));
            if let Some(name) = rename {
                m.attributes.push(LinkAttribute::IfName(name.to_owned()));
            }
        })
    }

    /// Adds `ip/prefix` to the link (`CREATE|EXCL`: an existing address is `EEXIST`). An IPv4
    /// address below /31 gets its broadcast address, as `ip addr add` gives it.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip {
            m.attributes.push(AddressAttribute::Local(ip));
            if prefix < 31 {
                let mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                m.attributes
                    .push(AddressAttribute::Broadcast((u32::from(v4) | mask).into()));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Every address of the namespace as (ifindex, address, prefix).
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, IpAddr, u8)>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = ip {
                    out.push((a.header.index, ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Removes `ip/prefix` from the link.
    pub fn del_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        }
        self.request(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK)
            .map(drop)
    }

    /// Adds a unicast route (`CREATE|EXCL`, protocol boot, scope universe).
    pub fn add_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        let mut m = RouteMessage::default();
        let v6 = match (&r.destination, &r.gateway) {
            (Some((d, _)), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => r.v6,
        };
        m.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.table = r.table;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if let Some((dst, len)) = r.destination {
            m.header.destination_prefix_length = len;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(r.oif));
        if r.metric > 0 {
            m.attributes.push(RouteAttribute::Priority(r.metric));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip rule add from <src>/32|128 lookup <table> priority <priority>`.
    pub fn add_rule(&mut self, src: IpAddr, table: u8, priority: u32) -> io::Result<()> {
        self.rule(src, table, priority, true)
    }

    /// `ip rule del from <src>/32|128 lookup <table> priority <priority>`.
    pub fn del_rule(&mut self, src: IpAddr, table: u8, priority: u32) -> io::Result<()> {
        self.rule(src, table, priority, false)
    }

    fn rule(&mut self, src: IpAddr, table: u8, priority: u32, add: bool) -> io::Result<()> {
        let mut m = RuleMessage::default();
        m.header.family = family(&src);
        m.header.src_len = if src.is_ipv4() { 32 } else { 128 };
        m.header.table = table;
        m.header.action = RuleAction::ToTable;
        m.attributes.push(RuleAttribute::Source(src));
        m.attributes.push(RuleAttribute::Priority(priority));
        m.attributes.push(RuleAttribute::Table(u32::from(table)));
        let (msg, flags) = if add {
            (
                RouteNetlinkMessage::NewRule(m),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (RouteNetlinkMessage::DelRule(m), NLM_F_ACK)
        };
        self.request(msg, flags).map(drop)
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut out = Link {
        index: l.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name.clone_from(n),
            LinkAttribute::Address(m) => out.mac = mac_text(m),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_like_sysfs() {
        assert_eq!(
            mac_text(&[0x00, 0x15, 0x5d, 0xaa, 0x0b, 0xcc]),
            "00:15:5d:aa:0b:cc"
        );
    }

    /// Root tier: a private network namespace on a thread, `lo` brought up and given an address
    /// and a route, read back.
    #[test]
    fn links_addresses_and_routes_in_a_private_namespace() {
        assert!(nix::unistd::geteuid().is_root(), "needs root; does not skip");
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut nl = Rtnl::new().unwrap();
            let lo = nl.link("lo").unwrap().expect("lo exists in a new namespace");
            assert!(!lo.up);
            nl.set_up(lo.index, true).unwrap();
            assert!(nl.link("lo").unwrap().unwrap().up);
            let ip: IpAddr = "10.9.8.7".parse().unwrap();
            nl.add_address(lo.index, ip, 24).unwrap();
            let e = nl.add_address(lo.index, ip, 24).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
            assert!(nl.addresses().unwrap().contains(&(lo.index, ip, 24)));
            nl.add_route(&RouteSpec {
                destination: Some(("10.100.0.0".parse().unwrap(), 16)),
                gateway: Some("10.9.8.1".parse().unwrap()),
                oif: lo.index,
                metric: 500,
                table: 101,
                v6: false,
            })
            .unwrap();
            nl.add_rule(ip, 101, 5).unwrap();
            nl.set_mtu(lo.index, 1500).unwrap();
            assert_eq!(nl.link("lo").unwrap().unwrap().mtu, 1500);
            nl.del_address(lo.index, ip, 24).unwrap();
            assert!(!nl.addresses().unwrap().contains(&(lo.index, ip, 24)));
        })
        .join()
        .unwrap();
    }
}
