//! A small QMP client (QEMU Machine Protocol: JSON lines over the UVM's Unix socket) for disk
//! hot-plug, the QEMU counterpart of HCS attaching a VHD to a SCSI controller (docs/uvm-notes.md §8).
//!
//! * [`Qmp::hotplug_scsi_disk`]: `blockdev-add` (raw over file) + `device_add scsi-hd` on
//!   `scsi0.0`, `scsi-id` 0, the given LUN; the guest finds it at
//!   `/sys/bus/scsi/devices/<host>:0:0:<lun>/block/sdX`.
//! * [`Qmp::unplug`]: `device_del`, wait for `DEVICE_DELETED`, then `blockdev-del`. Call it only
//!   after the guest released the disk (GCS `MappedVirtualDisk` Remove, then `SCSIDevice`
//!   Remove: the host sends the guest requests first, then removes the VM resource, §4.13).
//! * [`Qmp::hotplug_pmem`]: `object-add memory-backend-file` + `device_add virtio-pmem-pci`.
//!   QEMU only accepts it with memory hot-plug slots (`-m <ram>,slots=N,maxmem=M`) and a free
//!   `pcie-root-port` to plug into (q35's `pcie.0` is not hot-pluggable).
//!
//! Events that arrive while a command runs are queued for [`Qmp::wait_event`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The virtio-scsi controller's bus (see `vm::qemu`).
pub const SCSI_BUS: &str = "scsi0.0";
/// How long a QMP command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `device_del` may take to produce `DEVICE_DELETED`.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// QMP replies longer than this are refused.
const MAX_LINE: usize = 16 << 20;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("cannot connect to qmp socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("qmp i/o")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection.
    #[error("qmp connection closed by qemu")]
    Closed,
    /// A line was not JSON or not an object.
    #[error("malformed qmp message: {0}")]
    Malformed(String),
    /// QEMU answered a command with an error.
    #[error("qmp {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No answer or event in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The wait.
        timeout: Duration,
    },
}

/// A hot-plugged SCSI disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHandle {
    /// The block node name (`blockdev-add`).
    pub node: String,
    /// The device id (`device_add`).
    pub device: String,
    /// The LUN on `scsi0.0`, target 0.
    pub lun: u16,
    /// The backing file.
    pub file: PathBuf,
    /// Whether attached read-only.
    pub read_only: bool,
}

/// A hot-plugged virtio-pmem device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemHandle {
    /// The memory backend object id.
    pub memdev: String,
    /// The device id.
    pub device: String,
    /// The backing file.
    pub file: PathBuf,
}

/// A hot-plugged NIC (`netdev_add` + `device_add virtio-net-pci` on a PCIe root port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicHandle {
    /// The netdev id.
    pub netdev: String,
    /// The device id.
    pub device: String,
    /// Its MAC address.
    pub mac: String,
    /// The PCIe root port it sits on.
    pub port: String,
}

/// The host side of a NIC.
#[derive(Debug)]
pub enum NetdevSpec {
    /// QEMU's user-mode network (libslirp): NAT, a DHCP and DNS server, host forwards.
    User {
        /// `net`, e.g. `10.0.2.0/24`.
        net: String,
        /// `host`: the gateway address (the host's loopback seen from the guest).
        host: String,
        /// `dns`: the DNS forwarder's address.
        dns: String,
        /// `hostfwd` rules at creation (`tcp:127.0.0.1:8080-10.0.2.15:80`).
        forwards: Vec<String>,
    },
    /// A tap device the caller opened (in whatever network namespace), passed over `SCM_RIGHTS`.
    /// `vhost=off`: this host has no `/dev/vhost-net`.
    Tap(std::os::fd::OwnedFd),
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<Value>,
    /// QEMU's version from the greeting.
    pub version: Value,
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Qmp {
    /// Connects (retrying for up to 10 s while QEMU creates the socket), reads the greeting and
    /// enters command mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
            events: VecDeque::new(),
            version: Value::Null,
        };
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout {
                what: "the qmp greeting".into(),
                timeout: COMMAND_TIMEOUT,
            })??;
        qmp.version = greeting.pointer("/QMP/version").cloned().unwrap_or(Value::Null);
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|_| QmpError::Malformed(line.trim().chars().take(200).collect()))?;
            if !v.is_object() {
                return Err(QmpError::Malformed(line.trim().chars().take(200).collect()));
            }
            return Ok(v);
        }
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = unique("rgcs-");
        let mut msg = json!({"execute": command, "id": id});
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| QmpError::Malformed(e.to_string()))?;
        bytes.push(b'\n');
        tracing::debug!(%command, "qmp execute");
        self.writer.write_all(&bytes).await?;
        self.answer(command, &id).await
    }

    /// Reads until the answer with `id` (queueing events), bounded by [`COMMAND_TIMEOUT`].
    async fn answer(&mut self, command: &str, id: &str) -> Result<Value, QmpError> {
        let fut = async {
            loop {
                let v = self.read_message().await?;
                if v.get("event").is_some() {
                    self.events.push_back(v);
                    continue;
                }
                if v.get("id").and_then(Value::as_str) != Some(id) {
                    continue;
                }
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                let err = v.get("error").cloned().unwrap_or(Value::Null);
                let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("the answer to {command}"),
                timeout: COMMAND_TIMEOUT,
            })?
    }

    /// Hot-plugs a virtio-net NIC with MAC `mac` on the free PCIe root port `port`.
    pub async fn hotplug_nic(
        &mut self,
        netdev: NetdevSpec,
        mac: &str,
        port: &str,
    ) -> Result<NicHandle, QmpError> {
        let id = unique("rgcs-net");
        let args = match netdev {
            NetdevSpec::User {
                net,
                host,
                dns,
                forwards,
            } => {
                let fwd: Vec<Value> = forwards.iter().map(|f| json!({"str": f})).collect();
                json!({"type": "user", "id": id, "net": net, "host": host, "dns": dns, "hostfwd": fwd})
            }
            NetdevSpec::Tap(fd) => {
                let fdname = format!("{id}-fd");
                self.execute_with_fd("getfd", json!({"fdname": fdname}), std::os::fd::AsFd::as_fd(&fd))
                    .await?;
                json!({"type": "tap", "id": id, "fd": fdname, "vhost": false})
            }
        };
        self.execute("netdev_add", args).await?;
        let device = format!("{id}-dev");
        let added = self
            .execute(
                "device_add",
                json!({"driver": "virtio-net-pci", "netdev": id, "mac": mac, "bus": port, "id": device}),
            )
            .await;
        if let Err(e) = added {
            let _ = self.execute("netdev_del", json!({"id": id})).await;
            return Err(e);
        }
        tracing::info!(%mac, %port, %device, "nic hot-plugged");
        Ok(NicHandle {
            netdev: id,
            device,
            mac: mac.to_owned(),
            port: port.to_owned(),
        })
    }

    /// Detaches a NIC: `device_del`, wait for `DEVICE_DELETED`, `netdev_del`.
    pub async fn unplug_nic(&mut self, nic: &NicHandle) -> Result<(), QmpError> {
        self.remove_device(&nic.device).await?;
        self.execute("netdev_del", json!({"id": nic.netdev})).await?;
        tracing::info!(mac = %nic.mac, "nic unplugged");
        Ok(())
    }

    /// Adds a user-network host forward at run time (`hostfwd_add`, HMP through QMP), e.g.
    /// `tcp:127.0.0.1:8080-10.0.2.15:80`.
    pub async fn hostfwd_add(&mut self, netdev: &str, rule: &str) -> Result<(), QmpError> {
        self.hmp("hostfwd_add", &format!("hostfwd_add {netdev} {rule}"))
            .await
    }

    /// Removes a host forward (`tcp:127.0.0.1:8080`: protocol, host address and port).
    pub async fn hostfwd_remove(&mut self, netdev: &str, rule: &str) -> Result<(), QmpError> {
        self.hmp("hostfwd_remove", &format!("hostfwd_remove {netdev} {rule}"))
            .await
    }

    /// An HMP command; its text output is the error, if any.
    async fn hmp(&mut self, name: &str, line: &str) -> Result<(), QmpError> {
        let out = self
            .execute("human-monitor-command", json!({"command-line": line}))
            .await?;
        match out.as_str().map(str::trim) {
            None | Some("") => Ok(()),
            Some(text) => Err(QmpError::Command {
                command: name.to_owned(),
                class: "HMP".into(),
                desc: text.to_owned(),
            }),
        }
    }

    /// Like [`Qmp::execute`], with `fd` attached to the command (`SCM_RIGHTS`), for `getfd`.
    async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        let id = unique("rgcs-");
        let msg = json!({"execute": command, "id": id, "arguments": arguments});
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| QmpError::Malformed(e.to_string()))?;
        bytes.push(b'\n');
        let stream = self.writer.as_ref();
        loop {
            stream.writable().await?;
            match stream.try_io(tokio::io::Interest::WRITABLE, || {
                crate::sys::scm::send_with_fds(std::os::fd::AsFd::as_fd(stream), &bytes, &[fd])
            }) {
                Ok(n) if n == bytes.len() => break,
                Ok(n) => {
                    return Err(QmpError::Malformed(format!(
                        "short write of {command}: {n} bytes"
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.answer(command, &id).await
    }

    /// Waits for an event named `name` whose `data` satisfies `pred` (queued events first).
    pub async fn wait_event(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let matches = |v: &Value| {
            v.get("event").and_then(Value::as_str) == Some(name)
                && pred(v.get("data").unwrap_or(&Value::Null))
        };
        if let Some(i) = self.events.iter().position(matches) {
            return Ok(self.events.remove(i).unwrap_or(Value::Null));
        }
        let fut = async {
            loop {
                let v = self.read_message().await?;
                if matches(&v) {
                    return Ok(v);
                }
                if v.get("event").is_some() {
                    self.events.push_back(v);
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("qmp event {name}"),
                timeout,
            })?
    }

    /// Attaches `file` (raw) as a SCSI disk at LUN `lun` of target 0 on `scsi0`.
    pub async fn hotplug_scsi_disk(
        &mut self,
        file: &Path,
        lun: u16,
        read_only: bool,
    ) -> Result<DiskHandle, QmpError> {
        let node = unique(&format!("rgcs-lun{lun}-"));
        let device = format!("{node}-dev");
        let filename = file.to_string_lossy();
        self.execute(
            "blockdev-add",
            json!({
                "driver": "raw", "node-name": node, "read-only": read_only,
                "file": {"driver": "file", "filename": filename, "read-only": read_only},
            }),
        )
        .await?;
        let added = self
            .execute(
                "device_add",
                json!({"driver": "scsi-hd", "bus": SCSI_BUS, "scsi-id": 0, "lun": lun, "drive": node, "id": device}),
            )
            .await;
        if let Err(e) = added {
            let _ = self.execute("blockdev-del", json!({"node-name": node})).await;
            return Err(e);
        }
        tracing::info!(file = %filename, lun, read_only, %device, "scsi disk hot-plugged");
        Ok(DiskHandle {
            node,
            device,
            lun,
            file: file.to_path_buf(),
            read_only,
        })
    }

    /// Detaches a disk: `device_del`, wait for `DEVICE_DELETED`, `blockdev-del`.
    pub async fn unplug(&mut self, disk: &DiskHandle) -> Result<(), QmpError> {
        self.remove_device(&disk.device).await?;
        self.execute("blockdev-del", json!({"node-name": disk.node}))
            .await?;
        tracing::info!(file = %disk.file.display(), lun = disk.lun, "scsi disk unplugged");
        Ok(())
    }

    async fn remove_device(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", json!({"id": id})).await?;
        let want = id.to_owned();
        self.wait_event(
            "DEVICE_DELETED",
            |d| d.get("device").and_then(Value::as_str) == Some(want.as_str()),
            UNPLUG_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Attaches `file` read-only as a virtio-pmem device (the guest sees `/dev/pmemN`) on PCIe
    /// port `bus`. QEMU needs memory hot-plug slots (`-m <ram>,slots=N,maxmem=M`) and, on q35, a
    /// free `pcie-root-port` per device (`-device pcie-root-port,id=<bus>,chassis=<n>`): `pcie.0`
    /// itself is not hot-pluggable. Verified by hand on QEMU 7.2 with both; the launcher does not
    /// create them yet, so this fails there with a QMP error naming the bus.
    pub async fn hotplug_pmem(&mut self, file: &Path, bus: Option<&str>) -> Result<PmemHandle, QmpError> {
        let size = std::fs::metadata(file)?.len();
        let memdev = unique("rgcs-pmem-mem");
        let device = format!("{memdev}-dev");
        self.execute(
            "object-add",
            json!({"qom-type": "memory-backend-file", "id": memdev, "mem-path": file.to_string_lossy(),
                   "size": size, "share": false, "readonly": true}),
        )
        .await?;
        let mut args = json!({"driver": "virtio-pmem-pci", "memdev": memdev, "id": device});
        if let Some(bus) = bus {
            args["bus"] = json!(bus);
        }
        let added = self.execute("device_add", args).await;
        if let Err(e) = added {
            let _ = self.execute("object-del", json!({"id": memdev})).await;
            return Err(e);
        }
        Ok(PmemHandle {
            memdev,
            device,
            file: file.to_path_buf(),
        })
    }

    /// Detaches a pmem device (needs the guest's cooperation through ACPI).
    pub async fn unplug_pmem(&mut self, pmem: &PmemHandle) -> Result<(), QmpError> {
        self.remove_device(&pmem.device).await?;
        self.execute("object-del", json!({"id": pmem.memdev})).await?;
        Ok(())
    }

    /// The ids of user-created devices (`qom-list /machine/peripheral`).
    pub async fn peripheral_ids(&mut self) -> Result<Vec<String>, QmpError> {
        let list = self
            .execute("qom-list", json!({"path": "/machine/peripheral"}))
            .await?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| {
                        p.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t.starts_with("child<"))
                    })
                    .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The node names of all named block nodes (`query-named-block-nodes`).
    pub async fn block_nodes(&mut self) -> Result<Vec<String>, QmpError> {
        let list = self
            .execute("query-named-block-nodes", json!({"flat": true}))
            .await?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.get("node-name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A scripted QMP peer: answers each command with `return {}`, except that `device_del`
    /// emits `DEVICE_DELETED` *before* its return and `device_add` of LUN 9 fails.
    async fn fake_qemu(listener: UnixListener) -> Vec<String> {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            let cmd = v["execute"].as_str().unwrap().to_owned();
            let id = v["id"].clone();
            let mut out = String::new();
            if cmd == "device_del" {
                let dev = v["arguments"]["id"].clone();
                out.push_str(&json!({"event": "DEVICE_DELETED", "data": {"device": dev}}).to_string());
                out.push('\n');
            }
            let reply = if cmd == "device_add" && v["arguments"]["lun"] == 9 {
                json!({"error": {"class": "GenericError", "desc": "lun taken"}, "id": id})
            } else {
                json!({"return": {}, "id": id})
            };
            out.push_str(&reply.to_string());
            out.push('\n');
            w.write_all(out.as_bytes()).await.unwrap();
            seen.push(cmd);
        }
        seen
    }

    #[tokio::test]
    async fn hotplug_and_unplug_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(UnixListener::bind(&sock).unwrap()));
        let mut qmp = Qmp::connect(&sock).await.unwrap();
        assert_eq!(qmp.version["qemu"]["major"], 7);
        let disk = qmp.hotplug_scsi_disk(Path::new("/x.img"), 3, true).await.unwrap();
        assert_eq!((disk.lun, disk.read_only), (3, true));
        // The event arrives before device_del's answer: it is queued, then matched.
        qmp.unplug(&disk).await.unwrap();
        // A failed device_add rolls the block node back.
        let err = qmp
            .hotplug_scsi_disk(Path::new("/y.img"), 9, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { desc, .. } if desc == "lun taken"),
            "{err}"
        );
        drop(qmp);
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "qmp_capabilities",
                "blockdev-add",
                "device_add",
                "device_del",
                "blockdev-del",
                "blockdev-add",
                "device_add",
                "blockdev-del"
            ]
        );
    }
}
