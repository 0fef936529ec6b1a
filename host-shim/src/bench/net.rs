//! `rgcs bench net`: TCP throughput (host → guest) and round-trip latency (1-byte ping-pong)
//! between the host and a server in the UVM, for each NIC backend, first with the server as a UVM
//! process on the NIC in the UVM's own network namespace, then with the same server in a
//! container that the guest moved the same NIC into. The ratio container / UVM process is the
//! cost of the container path (its network namespace, cgroup and the move), measured in one run.
//!
//! Servers are busybox `nc`: a sink (`nc -l -p 5001 > /dev/null`, once per round) and an echo
//! (`nc -l -p 5002 -e cat`, one connection for every ping). A round sends `mib` MiB, half-closes,
//! and ends when the guest closes (it has read everything). The host reaches them through host
//! forwards on 127.0.0.1 (`user`) or from a peer namespace the benchmark creates and deletes
//! (`netns`): traffic goes nowhere else.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgcs_client::{
    init_process, prepare_busybox_rootfs, uvm_process, uvm_sh_ok, ContainerClient, ContainerSpec, Pipes,
    ProcessSpec, BUSYBOX_ROOTFS,
};
use serde::Serialize;

use super::Summary;
use crate::net::{netns, AttachedNic, NetworkMode, PortMap, Protocol, UvmNetwork};
use crate::session::{BootOptions, Session};

/// Guest port of the sink.
const SINK: u16 = 5001;
/// Guest port of the echo server.
const ECHO: u16 = 5002;

/// Errors of the network benchmark.
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    /// The UVM did not boot.
    #[error("boot failed")]
    Boot(#[from] crate::session::SessionError),
    /// A step failed.
    #[error("{0}")]
    Step(String),
}

fn step<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> NetBenchError + '_ {
    move |e| NetBenchError::Step(format!("{what}: {e}"))
}

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct NetRow {
    /// `user` or `netns`.
    pub backend: &'static str,
    /// `uvm process` or `container`.
    pub path: &'static str,
    /// Throughput per round, MB/s (10^6 bytes).
    pub throughput_mb_s: Summary,
    /// Round trips, µs.
    pub rtt_us: Summary,
}

/// The benchmark's JSON document.
#[derive(Debug, Serialize)]
pub struct NetReport {
    /// `"net"`.
    pub benchmark: &'static str,
    /// Accelerator used.
    pub accel: String,
    /// MiB per throughput round.
    pub mib: u64,
    /// Throughput rounds per path.
    pub rounds: usize,
    /// Pings per path.
    pub pings: usize,
    /// The measured paths.
    pub rows: Vec<NetRow>,
    /// Per backend: (median throughput container / UVM process, median RTT UVM process / container);
    /// 1.0 means the container path costs nothing.
    pub ratios: Vec<(String, f64, f64)>,
}

impl NetReport {
    /// The table printed by `rgcs bench net`.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "network benchmark: accel {}, {} rounds of {} MiB host -> guest, {} pings of 1 byte\n",
            self.accel, self.rounds, self.mib, self.pings
        );
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>10} {:>10} {:>10} {:>10}",
            "backend", "server", "MB/s med", "MB/s min", "RTT µs med", "RTT µs p90"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<8} {:<12} {:>10.1} {:>10.1} {:>10.0} {:>10.0}",
                r.backend,
                r.path,
                r.throughput_mb_s.median,
                r.throughput_mb_s.min,
                r.rtt_us.median,
                r.rtt_us.p90
            );
        }
        for (backend, tput, rtt) in &self.ratios {
            let _ = writeln!(
                out,
                "{backend}: container / UVM process: throughput {tput:.3}, latency (UVM RTT / container RTT) {rtt:.3}"
            );
        }
        out
    }
}

/// Where the host connects for one backend: the sink and echo addresses, and the namespace to
/// open the sockets in (`None`: the host's own).
#[derive(Debug, Clone)]
struct Target {
    sink: SocketAddr,
    echo: SocketAddr,
    netns: Option<PathBuf>,
}

impl Target {
    fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let connect = move || TcpStream::connect_timeout(&to, Duration::from_secs(10));
        match &self.netns {
            None => connect(),
            Some(ns) => netns::in_netns(ns, connect),
        }
    }

    /// Retries a connection while the server comes up.
    fn connect_retry(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.connect(to) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// One throughput round, retried while the sink is not (yet, or again: the guest restarts `nc`
/// between rounds) listening. Through a slirp forward the host's connect succeeds regardless, and
/// a missing server shows only as a reset or broken pipe while sending.
fn throughput_round(t: &Target, bytes: u64) -> std::io::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match throughput_once(t, bytes) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "sink not ready, retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One attempt: `bytes` to the sink, half-close, wait for its close. MB/s.
fn throughput_once(t: &Target, bytes: u64) -> std::io::Result<f64> {
    let chunk = vec![0x5au8; 256 << 10];
    let mut s = t.connect_retry(t.sink)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    let secs = start.elapsed().as_secs_f64();
    // A forward (slirp) may accept before the guest's server exists: then the guest never read.
    if secs <= 0.0 {
        return Err(std::io::Error::other("a round took no time"));
    }
    Ok(bytes as f64 / secs / 1e6)
}

/// `pings` 1-byte round trips over one connection to the echo server. µs each.
fn pings(t: &Target, pings: usize) -> std::io::Result<Vec<f64>> {
    let mut s = t.connect_retry(t.echo)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = Vec::with_capacity(pings);
    let mut b = [0u8; 1];
    // The first exchange also proves the server is there (a forward accepts regardless).
    s.write_all(b"w")?;
    s.read_exact(&mut b)?;
    for i in 0..pings {
        let byte = [u8::try_from(i % 251).unwrap_or(0)];
        let start = Instant::now();
        s.write_all(&byte)?;
        s.read_exact(&mut b)?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
        if b != byte {
            return Err(std::io::Error::other("the echo server answered another byte"));
        }
    }
    Ok(out)
}

/// The guest servers: `rounds` sink connections and one echo connection, then exit.
fn server_script(rounds: usize) -> String {
    format!("nc -l -p {ECHO} -e cat & for i in $(seq {rounds}); do nc -l -p {SINK} > /dev/null; done; wait")
}

/// Measures one path: a warm-up round, then `rounds` rounds and `n` pings.
async fn measure(
    t: &Target,
    mib: u64,
    rounds: usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), NetBenchError> {
    let t = t.clone();
    tokio::task::spawn_blocking(move || {
        let bytes = mib << 20;
        let mut tput = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            tput.push(throughput_round(&t, bytes)?);
        }
        let rtt = pings(&t, n)?;
        Ok::<_, std::io::Error>((tput, rtt))
    })
    .await
    .map_err(step("measurement task"))?
    .map_err(step("measurement"))
}

fn summary(samples: &[f64], what: &str) -> Result<Summary, NetBenchError> {
    Summary::of(samples).ok_or_else(|| NetBenchError::Step(format!("no samples for {what}")))
}

/// The UVM-process phase: the NIC (still in the UVM's namespace after the Network Add) gets the
/// adapter's address by hand, the servers run as a UVM process; afterwards the address goes.
async fn uvm_phase(
    c: &ContainerClient,
    nic: &AttachedNic,
    t: &Target,
    mib: u64,
    rounds: usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), NetBenchError> {
    let ip = nic
        .adapter
        .ip_configs
        .first()
        .ok_or_else(|| NetBenchError::Step("the adapter has no address".into()))?;
    let mac = nic.adapter.mac_address.to_lowercase();
    let dev = uvm_sh_ok(
        c,
        &format!(
            "for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {mac} ] && basename $d; done; true"
        ),
    )
    .await
    .map_err(step("find the NIC in the UVM"))?;
    let dev = dev.trim().to_owned();
    uvm_sh_ok(
        c,
        &format!(
            "ip addr add {}/{} dev {dev} && ip link set {dev} up",
            ip.ip_address, ip.prefix_length
        ),
    )
    .await
    .map_err(step("configure the NIC in the UVM"))?;
    let (pid, _stdio) = c
        .execute_process(
            rgcs_protocol::message::UVM_CONTAINER_ID,
            uvm_process(["/bin/sh", "-c", &server_script(rounds + 1)], Pipes::NONE),
        )
        .await
        .map_err(step("start the UVM servers"))?;
    let measured = async {
        throughput_round_async(t, mib).await?;
        measure(t, mib, rounds, n).await
    }
    .await;
    let waited = c
        .wait_for_process(
            rgcs_protocol::message::UVM_CONTAINER_ID,
            pid,
            Some(Duration::from_secs(60)),
        )
        .await;
    uvm_sh_ok(c, &format!("ip addr flush dev {dev} && ip link set {dev} down"))
        .await
        .map_err(step("unconfigure the NIC in the UVM"))?;
    let measured = measured?;
    waited.map_err(step("the UVM servers did not finish"))?;
    Ok(measured)
}

/// A warm-up round (not counted).
async fn throughput_round_async(t: &Target, mib: u64) -> Result<f64, NetBenchError> {
    let t = t.clone();
    tokio::task::spawn_blocking(move || throughput_round(&t, mib << 20))
        .await
        .map_err(step("warm-up task"))?
        .map_err(step("warm-up round"))
}

/// The container phase: a container in the NIC's namespace runs the same servers.
async fn container_phase(
    c: &ContainerClient,
    ns: &str,
    t: &Target,
    mib: u64,
    rounds: usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), NetBenchError> {
    let id = ns;
    let spec = ContainerSpec::new(
        id,
        BUSYBOX_ROOTFS,
        ProcessSpec::new(["/bin/sh", "-c", &server_script(rounds + 1)]),
    );
    let config = spec.config().map_err(step("spec"))?;
    c.create_container(id, config).await.map_err(step("Create"))?;
    let result = async {
        c.start(id).await.map_err(step("Start"))?;
        let (pid, _stdio) = c
            .execute_process(id, init_process(Pipes::NONE))
            .await
            .map_err(step("init"))?;
        let measured = async {
            throughput_round_async(t, mib).await?;
            measure(t, mib, rounds, n).await
        }
        .await;
        if measured.is_err() {
            let _ = c.signal_process(id, pid, None).await;
        }
        let waited = c.wait_for_process(id, pid, Some(Duration::from_secs(60))).await;
        let measured = measured?;
        waited.map_err(step("the container's servers did not finish"))?;
        Ok(measured)
    }
    .await;
    if let Err(e) = c.delete_container_state(id).await {
        tracing::warn!(error = %e, "delete container state");
    }
    result
}

/// A backend's NIC and host end.
struct Backend {
    name: &'static str,
    mode: NetworkMode,
    ports: Vec<PortMap>,
    target: Target,
}

/// Runs the benchmark in a fresh UVM.
pub async fn net(opts: &BootOptions, mib: u64, rounds: usize, n: usize) -> Result<NetReport, NetBenchError> {
    let session = Session::boot(opts).await?;
    let accel = format!("{:?}", session.uvm.accel());
    let Session { uvm, bridge, .. } = session;
    let client = ContainerClient::new(Arc::new(bridge), uvm.vsock_prefix());
    let peer = PeerNamespaces::create().map_err(step("create the benchmark's namespaces"));
    let result = match &peer {
        Ok(peer) => run(&uvm, &client, peer, mib, rounds, n).await,
        Err(e) => Err(NetBenchError::Step(e.to_string())),
    };
    let _ = client.bridge().shutdown_uvm(true).await;
    let _ = uvm.wait(crate::session::POWER_OFF_TIMEOUT).await;
    uvm.shutdown().await;
    drop(peer);
    let (rows, ratios) = result?;
    Ok(NetReport {
        benchmark: "net",
        accel,
        mib,
        rounds,
        pings: n,
        rows,
        ratios,
    })
}

type Rows = (Vec<NetRow>, Vec<(String, f64, f64)>);

async fn run(
    uvm: &crate::vm::Uvm,
    c: &ContainerClient,
    peer: &PeerNamespaces,
    mib: u64,
    rounds: usize,
    n: usize,
) -> Result<Rows, NetBenchError> {
    prepare_busybox_rootfs(c, BUSYBOX_ROOTFS)
        .await
        .map_err(step("busybox rootfs"))?;
    let mut net = UvmNetwork::new(uvm).await.map_err(step("QMP"))?;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(step("a free port"))
    };
    let (sink_port, echo_port) = (free()?, free()?);
    let forward = |host_port, container_port| PortMap {
        host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        host_port,
        container_port,
        protocol: Protocol::Tcp,
    };
    let backends = [
        Backend {
            name: "user",
            mode: NetworkMode::User,
            ports: vec![forward(sink_port, SINK), forward(echo_port, ECHO)],
            target: Target {
                sink: SocketAddr::from(([127, 0, 0, 1], sink_port)),
                echo: SocketAddr::from(([127, 0, 0, 1], echo_port)),
                netns: None,
            },
        },
        Backend {
            name: "netns",
            mode: NetworkMode::Netns(peer.guest_side.clone()),
            ports: Vec::new(),
            target: Target {
                sink: SocketAddr::from((PeerNamespaces::GUEST_IP, SINK)),
                echo: SocketAddr::from((PeerNamespaces::GUEST_IP, ECHO)),
                netns: Some(peer.host_side.clone()),
            },
        },
    ];
    let (mut rows, mut ratios) = (Vec::new(), Vec::new());
    for b in backends {
        let ns = format!("bench-net-{}", b.name);
        let nic = net
            .attach(c.bridge(), &ns, &b.mode, &b.ports, &[])
            .await
            .map_err(step("attach"))?
            .ok_or_else(|| NetBenchError::Step("no NIC".into()))?;
        let measured = async {
            let uvm_side = uvm_phase(c, &nic, &b.target, mib, rounds, n).await?;
            let ctr_side = container_phase(c, &ns, &b.target, mib, rounds, n).await?;
            Ok::<_, NetBenchError>((uvm_side, ctr_side))
        }
        .await;
        if let Err(e) = net.detach(c.bridge(), nic).await {
            tracing::warn!(error = %rgcs_protocol::error_chain(&e), "detach");
        }
        let ((ut, ur), (ct, cr)) = measured?;
        let (ut, ur, ct, cr) = (
            summary(&ut, "throughput")?,
            summary(&ur, "rtt")?,
            summary(&ct, "throughput")?,
            summary(&cr, "rtt")?,
        );
        ratios.push((b.name.to_owned(), ct.median / ut.median, ur.median / cr.median));
        rows.push(NetRow {
            backend: b.name,
            path: "uvm process",
            throughput_mb_s: ut,
            rtt_us: ur,
        });
        rows.push(NetRow {
            backend: b.name,
            path: "container",
            throughput_mb_s: ct,
            rtt_us: cr,
        });
    }
    Ok((rows, ratios))
}

/// Two namespaces joined by a veth: the guest side (mirrored to the UVM's NIC) and the host side
/// (where the benchmark opens its sockets). Deleted on drop.
struct PeerNamespaces {
    names: [String; 2],
    guest_side: PathBuf,
    host_side: PathBuf,
}

impl PeerNamespaces {
    const GUEST_IP: [u8; 4] = [10, 233, 0, 2];

    fn create() -> std::io::Result<Self> {
        let pid = std::process::id();
        let names = [format!("rgcs-bench{pid}-g"), format!("rgcs-bench{pid}-h")];
        let ip = |args: &[&str]| -> std::io::Result<()> {
            let st = Command::new("ip").args(args).status()?;
            if st.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("ip {}: {st}", args.join(" "))))
            }
        };
        let me = Self {
            guest_side: PathBuf::from(format!("/run/netns/{}", names[0])),
            host_side: PathBuf::from(format!("/run/netns/{}", names[1])),
            names,
        };
        let (g, h) = (me.names[0].as_str(), me.names[1].as_str());
        ip(&["netns", "add", g])?;
        ip(&["netns", "add", h])?;
        ip(&[
            "-n", g, "link", "add", "vg", "type", "veth", "peer", "name", "vh", "netns", h,
        ])?;
        ip(&["-n", g, "addr", "add", "10.233.0.2/24", "dev", "vg"])?;
        ip(&["-n", h, "addr", "add", "10.233.0.1/24", "dev", "vh"])?;
        for (ns, dev) in [(g, "vg"), (h, "vh"), (g, "lo"), (h, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(me)
    }
}

impl Drop for PeerNamespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}
