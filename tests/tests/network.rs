//! VM tier, container networking (issue 9): hot-plugged virtio-net NICs from host-shim
//! (`rgcs_host_shim::net`), hcsshim's `Network` requests, and the guest moving and configuring
//! them, all against the agent as PID 1 in one UVM.
//!
//! Traffic goes only to the host's loopback (through the user backend's gateway and host
//! forwards) and to addresses inside network namespaces this test creates and deletes itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rgcs_client::{uvm_sh_ok, ContainerClient};
use rgcs_host_shim::net::{user, AttachedNic, NetworkMode, UvmNetwork};
use rgcs_protocol::message::{IpConfig, NetworkAdapter, RequestType, Resource};
use rgcs_protocol::HResult;
use rgcs_tests::cases::{busybox, ensure, err, modify_uvm, remove, sh, sleeper, step, CaseResult, Cases};
use rgcs_tests::{boot_with_busybox, power_off};

/// The hosts file of a container named `name` (§6.8).
fn hosts(name: &str, short: Option<&str>) -> String {
    let alias = short.map(|s| format!(" {s}")).unwrap_or_default();
    format!(
        "127.0.0.1 localhost\n127.0.0.1 {name}{alias}\n\n::1 ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\n\
         ff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
    )
}

/// Runs a host command; its stdout, or an error with stderr.
fn host(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Network namespaces this test creates; deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, tag: &str) -> Result<(String, PathBuf), String> {
        let name = format!("rgcs-t{}-{tag}", std::process::id());
        host(&["ip", "netns", "add", &name])?;
        self.0.push(name.clone());
        host(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok((name.clone(), PathBuf::from(format!("/run/netns/{name}"))))
    }

    /// A veth pair `a` (in `na`, `a_addrs`) ↔ `b` (in `nb`, `b_addrs`), both up; no DAD.
    fn veth(
        &self,
        na: &str,
        a: &str,
        a_addrs: &[&str],
        nb: &str,
        b: &str,
        b_addrs: &[&str],
    ) -> Result<(), String> {
        host(&[
            "ip", "-n", na, "link", "add", a, "type", "veth", "peer", "name", b, "netns", nb,
        ])?;
        for (ns, dev, addrs) in [(na, a, a_addrs), (nb, b, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["ip", "-n", ns, "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                host(&args)?;
            }
            host(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = host(&["ip", "netns", "del", n]);
        }
    }
}

/// A free TCP port on the host's loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Accepts one connection on `l` (within 60 s) and returns its first line.
async fn accept_line(l: TcpListener) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        l.set_nonblocking(false).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok(line)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A Network request on the UVM; its HRESULT.
async fn network(c: &ContainerClient, request: RequestType, a: NetworkAdapter) -> Result<HResult, String> {
    modify_uvm(c, request, Resource::Network(a)).await
}

/// The UVM's own links (`ip -o link` names), to see that nothing was left behind.
async fn uvm_links(c: &ContainerClient) -> Result<Vec<String>, String> {
    let out = uvm_sh_ok(c, "ip -o link | cut -d: -f2")
        .await
        .map_err(err("ip link in the UVM"))?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// A container's link names.
async fn links(c: &ContainerClient, id: &str) -> Result<Vec<String>, String> {
    let out = sh(c, id, "ip -o link | cut -d: -f2 | cut -d@ -f1").await?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

async fn case_user(c: &ContainerClient, net: &mut UvmNetwork) -> CaseResult {
    let id = "net-user";
    let mut nic = net
        .attach(c.bridge(), id, &NetworkMode::User, &[], &[])
        .await
        .map_err(err("attach user NIC"))?
        .ok_or("no NIC")?;
    let mut s = busybox(id, &["/bin/sleep", "100000"]);
    s.hostname = Some("web.example".into());
    let result = async {
        let pid = sleeper(c, s).await?;
        let addrs = sh(c, id, "ip -o -4 addr show scope global").await?;
        ensure(addrs.contains(&format!("{}/24", user::GUEST)), || {
            format!("addresses: {addrs}")
        })?;
        let route = sh(c, id, "ip route show default").await?;
        ensure(route.contains(&format!("via {}", user::GATEWAY)), || {
            format!("default route: {route}")
        })?;
        let resolv = sh(c, id, "cat /etc/resolv.conf").await?;
        ensure(resolv == format!("nameserver {}\n", user::DNS), || {
            format!("resolv.conf: {resolv:?}")
        })?;
        let h = sh(c, id, "cat /etc/hosts").await?;
        ensure(h == hosts("web.example", Some("web")), || format!("hosts: {h:?}"))?;
        // The container reaches a server on the host's loopback through the gateway.
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let got = accept_line(l);
        let script = format!("echo hello-host | nc {} {port}", user::GATEWAY);
        let send = sh(c, id, &script);
        let (got, send) = tokio::join!(got, send);
        send?;
        ensure(got? == "hello-host\n", || {
            "the host's server got another line".into()
        })?;
        // A port published while the container runs (hostfwd_add), then taken away again.
        let hp = free_port();
        net.publish(&mut nic, &format!("127.0.0.1:{hp}:8080").parse().unwrap())
            .await
            .map_err(err("publish"))?;
        sh(
            c,
            id,
            "mkdir -p /www && echo served-by-httpd > /www/index.html && httpd -p 8080 -h /www",
        )
        .await?;
        let page = tokio::task::spawn_blocking(move || http_get(hp))
            .await
            .map_err(|e| e.to_string())??;
        ensure(page.ends_with("served-by-httpd\n"), || format!("page: {page:?}"))?;
        remove(c, id, pid).await
    }
    .await;
    net.detach(c.bridge(), nic).await.map_err(err("detach"))?;
    result
}

/// `GET /` from 127.0.0.1:`port` (retried while the forward or server comes up); the response.
fn http_get(port: u16) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let _ = s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut body = String::new();
                match s.read_to_string(&mut body) {
                    Ok(_) if body.starts_with("HTTP/1") => return Ok(body),
                    Ok(_) => last = format!("reply {body:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no page from 127.0.0.1:{port}: {last}"))
}

async fn case_dhcp(c: &ContainerClient, net: &mut UvmNetwork) -> CaseResult {
    let id = "net-dhcp";
    // No addresses: the guest runs udhcpc against slirp's DHCP server.
    let nic = net
        .attach_adapter(c.bridge(), id, &NetworkMode::User, &[], &[], |a| {
            a.ip_configs.clear();
            a.routes.clear();
        })
        .await
        .map_err(err("attach user NIC for DHCP"))?
        .ok_or("no NIC")?;
    let result = async {
        let pid = sleeper(c, busybox(id, &["/bin/sleep", "100000"])).await?;
        let addrs = sh(c, id, "ip -o -4 addr show scope global").await?;
        ensure(addrs.contains(&format!("{}/24", user::GUEST)), || {
            format!("DHCP addresses: {addrs}")
        })?;
        let route = sh(c, id, "ip route show default").await?;
        ensure(route.contains(&format!("via {}", user::GATEWAY)), || {
            format!("DHCP route: {route}")
        })?;
        remove(c, id, pid).await
    }
    .await;
    net.detach(c.bridge(), nic).await.map_err(err("detach"))?;
    result
}

async fn case_none(c: &ContainerClient) -> CaseResult {
    let id = "net-none";
    let pid = sleeper(c, busybox(id, &["/bin/sleep", "100000"])).await?;
    let l = links(c, id).await?;
    let lo = sh(c, id, "ip -o link show lo").await?;
    let resolv = sh(c, id, "cat /etc/resolv.conf").await?;
    let h = sh(c, id, "cat /etc/hosts").await?;
    remove(c, id, pid).await?;
    ensure(l == ["lo"], || format!("links: {l:?}"))?;
    ensure(lo.contains(",UP"), || format!("lo is down: {lo}"))?;
    ensure(resolv.is_empty(), || format!("resolv.conf: {resolv:?}"))?;
    ensure(h == hosts(id, None), || format!("hosts: {h:?}"))
}

async fn case_netns(c: &ContainerClient, net: &mut UvmNetwork) -> CaseResult {
    let mut spaces = Namespaces(Vec::new());
    let (a, a_path) = spaces.add("a")?;
    let (b, b_path) = spaces.add("b")?;
    let (lm, lm_path) = spaces.add("c")?;
    spaces.veth(
        &a,
        "va",
        &["10.231.0.2/24", "fd00:231::2/64"],
        &b,
        "vb",
        &["10.231.0.1/24", "fd00:231::1/64"],
    )?;
    host(&["ip", "-n", &a, "route", "add", "default", "via", "10.231.0.1"])?;
    spaces.veth(&lm, "vc", &["10.232.0.2/24"], &b, "vd", &["10.232.0.1/24"])?;
    // A server in namespace b: the socket stays in the namespace it was made in.
    let server = rgcs_host_shim::net::netns::in_netns(&b_path, || TcpListener::bind("10.231.0.1:7000"))
        .map_err(|e| format!("server in {b}: {e}"))?;

    let id = "net-tap";
    let nic = net
        .attach(c.bridge(), id, &NetworkMode::Netns(a_path.clone()), &[], &[])
        .await
        .map_err(err("attach netns NIC"))?
        .ok_or("no NIC")?;
    let result = async {
        let pid = sleeper(c, busybox(id, &["/bin/sleep", "100000"])).await?;
        let addrs = sh(c, id, "ip -o addr show scope global").await?;
        ensure(
            addrs.contains("10.231.0.2/24") && addrs.contains("fd00:231::2/64"),
            || format!("addresses: {addrs}"),
        )?;
        sh(c, id, "ping -c 2 -W 5 10.231.0.1").await?;
        let got = accept_line(server);
        let send = sh(c, id, "echo over-the-tap | nc 10.231.0.1 7000");
        let (got, send) = tokio::join!(got, send);
        send?;
        ensure(got? == "over-the-tap\n", || {
            "the server in namespace b got another line".into()
        })?;
        // IPv6 (the guest's address goes through DAD first).
        sh(
            c,
            id,
            "for i in $(seq 20); do ping6 -c 1 -W 1 fd00:231::1 && exit 0; done; exit 1",
        )
        .await?;

        // A second NIC, added while the container runs, with EnableLowMetric.
        let second = net
            .attach_adapter(
                c.bridge(),
                id,
                &NetworkMode::Netns(lm_path.clone()),
                &[],
                &[],
                |ad| {
                    ad.enable_low_metric = true;
                },
            )
            .await
            .map_err(err("attach the low-metric NIC"))?
            .ok_or("no second NIC")?;
        let checked = async {
            let rules = sh(c, id, "ip rule").await?;
            ensure(rules.contains("5:\tfrom 10.232.0.2 lookup 101"), || {
                format!("rules: {rules:?}")
            })?;
            sh(c, id, "ping -c 1 -W 5 10.232.0.1").await?;
            ensure(links(c, id).await?.len() == 3, || "want lo and two NICs".into())
        }
        .await;
        net.detach(c.bridge(), second)
            .await
            .map_err(err("detach the low-metric NIC"))?;
        checked?;
        // Network Remove took it out: its link and its rule are gone from the container.
        let after = links(c, id).await?;
        ensure(after.len() == 2, || format!("links after Remove: {after:?}"))?;
        let rules = sh(c, id, "ip rule").await?;
        ensure(!rules.contains("lookup 101"), || {
            format!("rules after Remove: {rules:?}")
        })?;
        remove(c, id, pid).await
    }
    .await;
    net.detach(c.bridge(), nic).await.map_err(err("detach"))?;
    result?;
    // Nothing left in the namespaces: no tap, no ingress qdisc on the veths.
    for (ns, dev) in [(&a, "va"), (&lm, "vc")] {
        let l = host(&["ip", "-n", ns, "-o", "link"])?;
        let names: Vec<&str> = l.lines().filter_map(|x| x.split(": ").nth(1)).collect();
        ensure(names.len() == 2, || format!("links left in {ns}: {names:?}"))?;
        let q = host(&["tc", "-n", ns, "qdisc", "show", "dev", dev])?;
        ensure(!q.contains("ingress"), || {
            format!("an ingress qdisc is left on {dev}: {q}")
        })?;
    }
    Ok(())
}

async fn case_hostile(c: &ContainerClient, net: &mut UvmNetwork) -> CaseResult {
    let before = uvm_links(c).await?;
    let adapter = |ns: &str, mac: &str| NetworkAdapter {
        namespace_id: ns.into(),
        id: "11111111-2222-4333-8444-555555555555".into(),
        mac_address: mac.into(),
        ip_configs: vec![IpConfig {
            ip_address: "10.9.0.2".into(),
            prefix_length: 24,
        }],
        ..NetworkAdapter::default()
    };
    let mut bad_prefix = adapter("h", "52:54:00:12:34:56");
    bad_prefix.ip_configs[0].prefix_length = 33;
    let mut bad_ip = adapter("h", "52:54:00:12:34:56");
    bad_ip.ip_configs[0].ip_address = "10.9.0.300".into();
    let mut bad_route = adapter("h", "52:54:00:12:34:56");
    bad_route.routes = vec![rgcs_protocol::message::Route {
        next_hop: "not-an-ip".into(),
        destination_prefix: "0.0.0.0/0".into(),
        metric: 0,
    }];
    let mut many_routes = adapter("h", "52:54:00:12:34:56");
    many_routes.routes = vec![
        rgcs_protocol::message::Route {
            next_hop: "10.9.0.1".into(),
            destination_prefix: "10.8.0.0/16".into(),
            metric: 0,
        };
        10_000
    ];
    for (what, a) in [
        ("a bad MAC", adapter("h", "zz:zz:zz:zz:zz:zz")),
        ("10,000 routes", many_routes),
        ("a short MAC", adapter("h", "52:54:00:12:34")),
        ("prefix 33", bad_prefix),
        ("a bad address", bad_ip),
        ("a bad next hop", bad_route),
        (
            "a MAC no NIC has (5 s resolve limit)",
            adapter("h", "52:54:00:ff:ff:fe"),
        ),
    ] {
        let hr = network(c, RequestType::Add, a).await?;
        ensure(hr == HResult::FAIL, || {
            format!("Add with {what}: {hr}, want E_FAIL")
        })?;
    }
    // Remove of an unknown namespace or adapter succeeds (hcsshim HEAD).
    let hr = network(c, RequestType::Remove, adapter("nobody", "52:54:00:12:34:56")).await?;
    ensure(hr == HResult::S_OK, || {
        format!("Remove of an unknown namespace: {hr}")
    })?;
    // A sandbox whose namespace was never added: ERROR_NOT_FOUND.
    let mut sandbox = busybox("net-sandbox", &["/bin/sleep", "1"]);
    sandbox.network_namespace = Some("no-such-namespace".into());
    sandbox
        .annotations
        .insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    let cfg = sandbox.config().map_err(err("spec"))?;
    match step("Create", c.create_container("net-sandbox", cfg)).await? {
        Err(e) => {
            let hr = e.hresult();
            ensure(hr == Some(HResult::NOT_FOUND), || {
                format!("sandbox in an unknown namespace: {e}")
            })?;
        }
        Ok(()) => return Err("a sandbox in an unknown namespace was created".into()),
    }
    // The same adapter twice: the second Add is refused, the first stays usable.
    let nic: AttachedNic = net
        .attach(c.bridge(), "dup", &NetworkMode::User, &[], &[])
        .await
        .map_err(err("attach"))?
        .ok_or("no NIC")?;
    let again = network(c, RequestType::Add, nic.adapter.clone()).await;
    net.detach(c.bridge(), nic).await.map_err(err("detach"))?;
    let again = again?;
    ensure(again == HResult::FAIL, || format!("duplicate Add: {again}"))?;
    let after = uvm_links(c).await?;
    ensure(after == before, || {
        format!("UVM links before {before:?}, after {after:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_networks_from_the_host() {
    let (uvm, client) = boot_with_busybox().await;
    let mut net = UvmNetwork::new(&uvm).await.expect("QMP");
    let mut cases = Cases::new();
    cases
        .run(
            "--network none: only lo, empty resolv.conf, §6.8 hosts",
            case_none(&client),
        )
        .await;
    cases
        .run(
            "user: address, route, resolv.conf, hosts, the host's loopback, a published port",
            case_user(&client, &mut net),
        )
        .await;
    cases
        .run(
            "user with DHCP (udhcpc and our script)",
            case_dhcp(&client, &mut net),
        )
        .await;
    cases
        .run(
            "netns: tap mirrored to a veth; ping, TCP, IPv6, a low-metric NIC, Remove",
            case_netns(&client, &mut net),
        )
        .await;
    cases
        .run(
            "hostile adapters leave nothing configured",
            case_hostile(&client, &mut net),
        )
        .await;
    power_off(&client, uvm).await;
    cases.finish();
}
