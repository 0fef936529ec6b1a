//! Command-line configuration of the agent. Pure parsing, tested on strings.
//!
//! The host (or our own initrd's kernel command line, after ` -- `) passes hcsshim-style flags;
//! unknown hcsshim flags are accepted and ignored so an unchanged host command line works.

use std::path::PathBuf;

/// Where the bridge connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeTarget {
    /// vsock CID 2, port 0x40000000 (the product path).
    Vsock {
        /// The port (default [`BRIDGE_PORT`]).
        port: u32,
    },
    /// A Unix socket, for tests without a VM.
    Unix(PathBuf),
}

pub use rgcs_protocol::ports::BRIDGE_PORT;

/// Parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bridge transport.
    pub bridge: BridgeTarget,
    /// Log filter (`trace|debug|info|warning|error`, or a tracing filter directive).
    pub log_level: String,
    /// Re-dial when the bridge drops (hcsshim HEAD behaviour). `--no-redial` exits instead.
    pub redial: bool,
    /// Load the `late` kernel modules in the background once the bridge is up.
    pub late_modules: bool,
    /// The agent's run directory: libcontainer state in `runtime/`, per-process state in
    /// `procs/` (`--run-dir`, default `/run/gcs`).
    pub run_dir: PathBuf,
    /// Dial stdio "ports" as Unix sockets `PREFIX_<port>` instead of vsock (`--stdio-unix-prefix`,
    /// for tests without a VM).
    pub stdio_unix_prefix: Option<PathBuf>,
    /// The longest gap the host may leave inside a frame before the connection is dropped
    /// (`--bridge-stall-ms`).
    pub bridge_stall: std::time::Duration,
    /// The deadline of one executor (libcontainer) call (`--executor-deadline-ms`).
    pub executor_deadline: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bridge: BridgeTarget::Vsock { port: BRIDGE_PORT },
            log_level: "info".to_owned(),
            redial: true,
            late_modules: true,
            run_dir: PathBuf::from("/run/gcs"),
            stdio_unix_prefix: None,
            bridge_stall: crate::bridge::conn::DEFAULT_STALL,
            executor_deadline: crate::container::runtime::DEFAULT_DEADLINE,
        }
    }
}

/// A command-line error, shown to whoever started the agent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A flag needs a value that is missing.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// `--bridge` is neither `vsock[:PORT]` nor `unix:PATH`.
    #[error("bad --bridge value {0:?}: expected vsock, vsock:PORT or unix:PATH")]
    BadBridge(String),
    /// A flag's value is malformed.
    #[error("bad value {1:?} for flag {0}")]
    BadValue(String, String),
    /// An argument we do not know and hcsshim does not pass.
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

/// hcsshim `gcs` flags that take a value and that we accept and ignore.
const IGNORED_WITH_VALUE: &[&str] = &[
    "log-format",
    "logfile",
    "root-mem-reserve-bytes",
    "gcs-mem-limit-bytes",
    "core-dump-location",
    "kmsgLogLevel",
    "initial-policy-stance",
];
/// hcsshim `gcs` boolean flags that we accept and ignore.
const IGNORED_BOOL: &[&str] = &["v4", "disable-time-sync", "use-inouterr", "scrub-logs"];

impl Config {
    /// Parses arguments (without the program name). Both `-flag` and `--flag`, and `flag=value`
    /// or `flag value` forms are accepted, like Go's `flag` package.
    pub fn parse<I, S>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cfg = Self::default();
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return Err(ConfigError::Unknown(arg));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.to_owned(), None),
            };
            let mut value = |name: &str| match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(name.to_owned())),
            };
            match name.as_str() {
                "bridge" => cfg.bridge = parse_bridge(&value("bridge")?)?,
                "loglevel" | "log-level" => cfg.log_level = value("log-level")?,
                "no-redial" => cfg.redial = false,
                "no-late-modules" => cfg.late_modules = false,
                "run-dir" => cfg.run_dir = PathBuf::from(value("run-dir")?),
                "stdio-unix-prefix" => {
                    cfg.stdio_unix_prefix = Some(PathBuf::from(value("stdio-unix-prefix")?))
                }
                "bridge-stall-ms" => cfg.bridge_stall = millis("bridge-stall-ms", value("bridge-stall-ms")?)?,
                "executor-deadline-ms" => {
                    cfg.executor_deadline = millis("executor-deadline-ms", value("executor-deadline-ms")?)?
                }
                n if IGNORED_WITH_VALUE.contains(&n) => {
                    value(n)?;
                }
                n if IGNORED_BOOL.contains(&n) => {}
                _ => return Err(ConfigError::Unknown(arg)),
            }
        }
        Ok(cfg)
    }
}

/// A positive number of milliseconds.
fn millis(flag: &str, v: String) -> Result<std::time::Duration, ConfigError> {
    v.parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| ConfigError::BadValue(flag.into(), v))
}

fn parse_bridge(v: &str) -> Result<BridgeTarget, ConfigError> {
    if v == "vsock" {
        return Ok(BridgeTarget::Vsock { port: BRIDGE_PORT });
    }
    if let Some(port) = v.strip_prefix("vsock:") {
        let port = parse_port(port).ok_or_else(|| ConfigError::BadBridge(v.to_owned()))?;
        return Ok(BridgeTarget::Vsock { port });
    }
    match v.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(BridgeTarget::Unix(PathBuf::from(path))),
        _ => Err(ConfigError::BadBridge(v.to_owned())),
    }
}

fn parse_port(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_hcsshim_flags() {
        let c = Config::parse([
            "-v4",
            "-log-format",
            "json",
            "-loglevel",
            "debug",
            "-disable-time-sync",
        ])
        .unwrap();
        assert_eq!(c.bridge, BridgeTarget::Vsock { port: BRIDGE_PORT });
        assert_eq!(c.log_level, "debug");
        assert!(c.redial);
    }

    #[test]
    fn bridge_targets() {
        let c = Config::parse(["--bridge", "unix:/tmp/b.sock", "--no-redial"]).unwrap();
        assert_eq!(c.bridge, BridgeTarget::Unix("/tmp/b.sock".into()));
        assert!(!c.redial);
        let c = Config::parse(["--bridge=vsock:0x40000000"]).unwrap();
        assert_eq!(c.bridge, BridgeTarget::Vsock { port: BRIDGE_PORT });
        assert!(matches!(
            Config::parse(["--bridge", "tcp:1"]),
            Err(ConfigError::BadBridge(_))
        ));
        assert!(matches!(
            Config::parse(["--bridge", "unix:"]),
            Err(ConfigError::BadBridge(_))
        ));
        assert!(matches!(
            Config::parse(["--bridge"]),
            Err(ConfigError::MissingValue(_))
        ));
        let c = Config::parse(["--run-dir", "/tmp/r", "--stdio-unix-prefix=/tmp/s"]).unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));
        assert_eq!(c.stdio_unix_prefix, Some(PathBuf::from("/tmp/s")));
        assert!(matches!(Config::parse(["stray"]), Err(ConfigError::Unknown(_))));
        assert!(matches!(
            Config::parse(["--frobnicate"]),
            Err(ConfigError::Unknown(_))
        ));
    }
}
