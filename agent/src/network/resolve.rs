//! Which interface of the UVM an adapter is.
//!
//! On Hyper-V, hcsshim's guest finds it by its VMBus instance: `/sys/bus/vmbus/devices/<id>/net/*`
//! (or, for a vPCI-assigned NIC, `<id>/pci*/<bus>*/net/*`). A UVM without VMBus (QEMU) has no
//! such path, so the adapter is found by `MacAddress` among `/sys/class/net/*/address`. Either
//! way the wait is bounded (hcsshim: 5 s, polling every 10 ms) and exactly one interface must
//! match.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::adapter::Adapter;

/// How long an adapter may take to appear (hcsshim's deadline).
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Poll interval.
const POLL: Duration = Duration::from_millis(10);

/// Why no interface was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Neither an ID that resolves nor a MAC address to match.
    #[error("adapter {0:?}: nothing to find it by (no VMBus device and no MacAddress)")]
    NoKey(String),
    /// Nothing matched in time.
    #[error("adapter {id:?} (MAC {mac:?}) did not appear within {waited:?}")]
    Timeout {
        /// Adapter ID.
        id: String,
        /// MAC address.
        mac: String,
        /// The wait.
        waited: Duration,
    },
    /// More than one interface matched.
    #[error("adapter {0:?} matches more than one interface: {1:?}")]
    Ambiguous(String, Vec<String>),
}

/// The interface names under `dir` (a `…/net` directory).
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `<dir>/<prefix>*` entries.
fn glob(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// One attempt: `Ok(Some(name))`, `Ok(None)` (not there yet) or an error that will not change.
fn attempt(a: &Adapter, sysfs: &Path) -> Result<Option<String>, ResolveError> {
    let vmbus = sysfs.join("bus/vmbus/devices");
    if !a.id.is_empty() && vmbus.is_dir() {
        let dev = vmbus.join(a.id.to_lowercase());
        let nets: Vec<PathBuf> = if a.vpci {
            glob(&dev, "pci")
                .into_iter()
                .flat_map(|p| {
                    let bus = p
                        .file_name()
                        .map(|n| n.to_string_lossy().trim_start_matches("pci").to_owned())
                        .unwrap_or_default();
                    glob(&p, &bus)
                })
                .map(|p| p.join("net"))
                .collect()
        } else {
            vec![dev.join("net")]
        };
        let names: Vec<String> = nets.iter().flat_map(|n| names_in(n)).collect();
        return match names.len() {
            0 => Ok(None),
            1 => Ok(names.into_iter().next()),
            _ => Err(ResolveError::Ambiguous(a.id.clone(), names)),
        };
    }
    let Some(mac) = &a.mac else {
        return Err(ResolveError::NoKey(a.id.clone()));
    };
    let net = sysfs.join("class/net");
    let matches: Vec<String> = names_in(&net)
        .into_iter()
        .filter(|n| {
            std::fs::read_to_string(net.join(n).join("address"))
                .is_ok_and(|addr| addr.trim().eq_ignore_ascii_case(mac))
        })
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.into_iter().next()),
        _ => Err(ResolveError::Ambiguous(a.id.clone(), matches)),
    }
}

/// The interface name of `a`, waiting until `deadline`.
pub fn ifname(a: &Adapter, sysfs: &Path, deadline: Instant) -> Result<String, ResolveError> {
    let start = Instant::now();
    loop {
        if let Some(name) = attempt(a, sysfs)? {
            return Ok(name);
        }
        if Instant::now() >= deadline {
            return Err(ResolveError::Timeout {
                id: a.id.clone(),
                mac: a.mac.clone().unwrap_or_default(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(id: &str, mac: Option<&str>) -> Adapter {
        Adapter {
            id: id.into(),
            mac: mac.map(str::to_owned),
            addresses: vec![],
            routes: vec![],
            dns_search: vec![],
            dns_servers: vec![],
            encap_overhead: 0,
            low_metric: false,
            policy_based_routing: false,
            vpci: false,
        }
    }

    fn tree(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rgcs-resolve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("class/net")).unwrap();
        d
    }

    fn nic(sysfs: &Path, name: &str, mac: &str) {
        std::fs::create_dir_all(sysfs.join("class/net").join(name)).unwrap();
        std::fs::write(
            sysfs.join("class/net").join(name).join("address"),
            format!("{mac}\n"),
        )
        .unwrap();
    }

    #[test]
    fn by_mac_without_vmbus_and_by_vmbus_id_with_it() {
        let s = tree("mac");
        nic(&s, "lo", "00:00:00:00:00:00");
        nic(&s, "eth0", "52:54:00:12:34:56");
        nic(&s, "eth1", "00:15:5d:aa:bb:cc");
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            ifname(&adapter("g1", Some("00:15:5d:aa:bb:cc")), &s, soon).unwrap(),
            "eth1"
        );
        assert!(matches!(
            ifname(&adapter("g2", Some("00:15:5d:00:00:00")), &s, Instant::now()),
            Err(ResolveError::Timeout { .. })
        ));
        assert!(matches!(
            ifname(&adapter("g3", None), &s, soon),
            Err(ResolveError::NoKey(_))
        ));
        // With VMBus, the ID decides (lower-cased), as on Hyper-V.
        let dev = s.join("bus/vmbus/devices/6a2b-guid/net/eth7");
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(ifname(&adapter("6A2B-GUID", None), &s, soon).unwrap(), "eth7");
        let _ = std::fs::remove_dir_all(&s);
    }

    #[test]
    fn two_matches_are_ambiguous() {
        let s = tree("dup");
        nic(&s, "eth0", "00:15:5d:aa:bb:cc");
        nic(&s, "eth1", "00:15:5D:AA:BB:CC");
        assert!(matches!(
            ifname(&adapter("g", Some("00:15:5d:aa:bb:cc")), &s, Instant::now()),
            Err(ResolveError::Ambiguous(..))
        ));
        let _ = std::fs::remove_dir_all(&s);
    }
}
