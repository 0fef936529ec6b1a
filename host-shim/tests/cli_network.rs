//! VM tier, the CLI's networking: `rgcs run -p` publishes a busybox `httpd` and a UDP echo on the
//! host's loopback; `--dns` and `--hostname` reach the container's files; SIGTERM is forwarded
//! and a second one kills; bad values fail with docker's 125 before anything boots.
//! Traffic goes only to 127.0.0.1. Needs `RGCS_INITRD` (set by `scripts/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rgcs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rgcs"));
    c.env(
        "RGCS_INITRD",
        rgcs_host_shim::session::initrd_from_env().unwrap_or_else(|e| panic!("{e}")),
    );
    c
}

/// A static UDP echo server for the container (the image's busybox has no UDP server), built
/// with the toolchain that builds the tests.
const UDP_ECHO: &str = r#"
fn main() {
    let port = std::env::args().nth(1).expect("port");
    let s = std::net::UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}
"#;

fn build_udp_echo(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("udp_echo.rs");
    std::fs::write(&src, UDP_ECHO).unwrap();
    let out = dir.join("udp-echo");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc");
    assert!(st.success(), "cannot build the UDP echo server");
    out
}

fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Retries `f` every 200 ms for up to 90 s (the UVM boots under TCG meanwhile).
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn run_publishes_tcp_and_udp_ports_and_forwards_signals() {
    let work = tempfile::Builder::new()
        .prefix("rgcs-clinet")
        .tempdir_in("/tmp")
        .unwrap();
    let share = work.path().join("share");
    std::fs::create_dir_all(share.join("www")).unwrap();
    std::fs::write(share.join("www/index.html"), "published-page\n").unwrap();
    std::fs::copy(build_udp_echo(work.path()), share.join("udp-echo")).unwrap();
    let image = work.path().join("image");
    rgcs_host_shim::image::demo::build(&image, Path::new("/bin/busybox")).unwrap();
    let (tcp, udp) = (free_port(false), free_port(true));

    let child = rgcs()
        .args([
            "run",
            "--name",
            "clinet",
            "--hostname",
            "web.local",
            "--dns",
            "192.0.2.53",
        ])
        .arg("--cache")
        .arg(work.path().join("cache"))
        .arg("-v")
        .arg(format!("{}:/t:ro", share.display()))
        .args([
            "-p",
            &format!("127.0.0.1:{tcp}:80"),
            "-p",
            &format!("127.0.0.1:{udp}:5353/udp"),
        ])
        .arg(&image)
        .args([
            "--",
            "sh",
            "-c",
            "cat /etc/resolv.conf /etc/hostname; httpd -p 80 -h /t/www; exec /t/udp-echo 5353",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let page = retry("GET through -p", || {
        let mut s = TcpStream::connect(("127.0.0.1", tcp)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        if body.starts_with("HTTP/1") {
            Ok(body)
        } else {
            Err(format!("reply {body:?}"))
        }
    });
    assert!(
        page.contains("200 OK") && page.ends_with("published-page\n"),
        "{page}"
    );

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let echo = retry("UDP echo through -p …/udp", || {
        sock.send_to(b"ping-over-udp", ("127.0.0.1", udp))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf[..n].to_vec())
    });
    assert_eq!(echo, b"ping-over-udp");

    // The init (the echo server, PID 1 without handlers) ignores the forwarded SIGTERM; the
    // second one kills it: docker's 137.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(137), "exit status; stdout {stdout}");
    assert_eq!(stdout, "nameserver 192.0.2.53\nweb.local\n");
    // The forwards went with the VM: both ports are free again.
    TcpListener::bind(("127.0.0.1", tcp)).expect("the TCP port is still taken");
    UdpSocket::bind(("127.0.0.1", udp)).expect("the UDP port is still taken");
}

#[test]
fn bad_network_values_fail_with_125_before_booting() {
    for args in [
        &["--network", "bridge"][..],
        &["-p", "80"],
        &["-p", "8080:80/sctp"],
        &["--network", "none", "-p", "8080:80"],
        &["--dns", "not-an-ip"],
        &["--hostname", "a b"],
        &["--network", "netns:/no/such/ns"],
        &["-p", "8080:80", "-p", "8080:81"],
    ] {
        let out = rgcs()
            .arg("run")
            .args(args)
            .arg("/no/such/image")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        // The image does not exist: an error naming the value, not the image, shows the check
        // came before the import (and so before any boot).
        assert!(
            stderr.starts_with("rgcs: ") && !stderr.contains("image"),
            "{args:?}: {stderr}"
        );
    }
}
