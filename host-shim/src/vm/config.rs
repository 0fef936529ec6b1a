//! UVM configuration: what to boot, with how much memory and which accelerator, and which host
//! binaries to run. Validation lives here; turning a config into a QEMU argv is `qemu.rs`.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Environment variable naming the `vhost-device-vsock` binary.
pub const ENV_VHOST_DEVICE_VSOCK: &str = "RGCS_VHOST_DEVICE_VSOCK";
/// Where `scripts/setup.sh` installs `vhost-device-vsock`.
pub const DEFAULT_VHOST_DEVICE_VSOCK: &str = "/opt/rgcs-tools/bin/vhost-device-vsock";
/// Default QEMU binary (looked up in `PATH`).
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Default guest RAM.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Default guest context ID.
pub const DEFAULT_GUEST_CID: u32 = 3;
/// x86 `COMMAND_LINE_SIZE`: the longest kernel command line, terminating NUL excluded.
pub const MAX_CMDLINE_LEN: usize = 2047;
/// The kernel passes at most this many arguments to init (`CONFIG_INIT_ENV_ARG_LIMIT`).
pub const MAX_AGENT_ARGS: usize = 31;

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM when it is real hardware KVM, else TCG (see [`Accel::resolve`]).
    #[default]
    Auto,
    /// Force KVM.
    Kvm,
    /// Force TCG (software emulation).
    Tcg,
}

/// A decided accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// Host facts [`Accel::resolve_with`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAccelFacts {
    /// `/dev/kvm` opens read-write.
    pub kvm_openable: bool,
    /// `/sys/module/kvm_pvm` exists: `/dev/kvm` is PVM, which cannot run a stock kernel.
    pub kvm_is_pvm: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_has_vmx_or_svm: bool,
}

impl HostAccelFacts {
    /// Probes this host.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kvm_openable: OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
            kvm_is_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            cpu_has_vmx_or_svm: cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")),
        }
    }
}

impl Accel {
    /// Decides on this host: KVM only for real hardware KVM (`/dev/kvm` openable, not PVM, and
    /// `vmx`/`svm` in `/proc/cpuinfo`), else TCG with a warning saying why.
    pub fn resolve(self) -> ResolvedAccel {
        match self {
            Self::Kvm => ResolvedAccel::Kvm,
            Self::Tcg => ResolvedAccel::Tcg,
            Self::Auto => Self::resolve_with(HostAccelFacts::probe()),
        }
    }

    /// The `Auto` decision for given host facts (pure, for tests).
    pub fn resolve_with(facts: HostAccelFacts) -> ResolvedAccel {
        let why = if !facts.kvm_openable {
            "/dev/kvm cannot be opened read-write"
        } else if facts.kvm_is_pvm {
            "/dev/kvm is PVM (/sys/module/kvm_pvm exists), which cannot boot a stock kernel"
        } else if !facts.cpu_has_vmx_or_svm {
            "the CPU has no vmx/svm flag"
        } else {
            return ResolvedAccel::Kvm;
        };
        tracing::warn!(reason = why, "using TCG (software emulation): boots take seconds");
        ResolvedAccel::Tcg
    }
}

/// Errors of configuration validation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An agent argument cannot be passed on the kernel command line.
    #[error("agent argument {arg:?} cannot be passed on the kernel command line (empty, whitespace, quote or control character)")]
    BadAgentArg {
        /// The argument.
        arg: String,
    },
    /// Too many agent arguments.
    #[error("{count} agent arguments exceed the kernel's limit of {MAX_AGENT_ARGS}")]
    TooManyAgentArgs {
        /// How many were given.
        count: usize,
    },
    /// The extra kernel command line contains `--` or a control character.
    #[error("extra kernel command line {extra:?} must not contain `--` or control characters")]
    BadCmdlineExtra {
        /// The extra text.
        extra: String,
    },
    /// The command line is too long.
    #[error("kernel command line is {len} bytes; the limit is {MAX_CMDLINE_LEN}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// Memory or CPU count out of range.
    #[error("{what} must be at least {min}")]
    TooSmall {
        /// The field.
        what: &'static str,
        /// Its minimum.
        min: u32,
    },
    /// A guest CID below 3 is reserved.
    #[error("guest cid {cid} is reserved (must be >= 3)")]
    ReservedCid {
        /// The CID.
        cid: u32,
    },
}

/// virtio-pmem layer slots by default (hcsshim's default is 64 VPMem devices; each slot here is a
/// PCIe root port, which costs boot time under TCG, so fewer; layers beyond them go to SCSI).
pub const DEFAULT_PMEM_SLOTS: u32 = 4;

/// The PCIe root port id of pmem slot `i` (hot-plug `virtio-pmem-pci` devices there).
pub fn pmem_port(i: u32) -> String {
    format!("pmem{i}")
}

/// PCIe root ports kept free for NIC hot-plug (one per network endpoint).
pub const DEFAULT_NIC_SLOTS: u32 = 4;

/// The PCIe root port id of NIC slot `i`.
pub fn nic_port(i: u32) -> String {
    format!("nic{i}")
}

/// Everything needed to start a UVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UvmConfig {
    /// Uncompressed ELF vmlinux (PVH boot); a bzImage also works, about 6 s slower under TCG.
    pub kernel: PathBuf,
    /// The initrd (see `crate::initrd`).
    pub initrd: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Extra kernel parameters, appended before ` -- `.
    pub kernel_cmdline_extra: String,
    /// Arguments for PID 1, passed after ` -- ` on the kernel command line.
    pub agent_args: Vec<String>,
    /// QEMU binary.
    pub qemu_bin: PathBuf,
    /// `vhost-device-vsock` binary.
    pub vhost_device_vsock_bin: PathBuf,
    /// Guest context ID.
    pub guest_cid: u32,
    /// Where the per-VM run directory is created (short: sockets live there).
    pub run_dir_parent: PathBuf,
    /// PCIe root ports (and memory hot-plug slots) for virtio-pmem layer devices; 0 for none.
    pub pmem_slots: u32,
    /// PCIe root ports for hot-plugged NICs; 0 for none.
    pub nic_slots: u32,
}

impl UvmConfig {
    /// Defaults: 512 MiB, 1 vCPU, `Accel::Auto`, CID 3, run dirs under `/tmp`.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 1,
            accel: Accel::Auto,
            kernel_cmdline_extra: String::new(),
            agent_args: Vec::new(),
            qemu_bin: PathBuf::from(DEFAULT_QEMU),
            vhost_device_vsock_bin: default_vhost_device_vsock(),
            guest_cid: DEFAULT_GUEST_CID,
            run_dir_parent: PathBuf::from("/tmp"),
            pmem_slots: DEFAULT_PMEM_SLOTS,
            nic_slots: DEFAULT_NIC_SLOTS,
        }
    }

    /// Checks the fields and the resulting kernel command line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib < 64 {
            return Err(ConfigError::TooSmall {
                what: "memory_mib",
                min: 64,
            });
        }
        if self.cpus < 1 {
            return Err(ConfigError::TooSmall { what: "cpus", min: 1 });
        }
        if self.guest_cid < 3 {
            return Err(ConfigError::ReservedCid { cid: self.guest_cid });
        }
        let extra = &self.kernel_cmdline_extra;
        if extra.split_whitespace().any(|w| w == "--") || extra.chars().any(char::is_control) {
            return Err(ConfigError::BadCmdlineExtra { extra: extra.clone() });
        }
        if self.agent_args.len() > MAX_AGENT_ARGS {
            return Err(ConfigError::TooManyAgentArgs {
                count: self.agent_args.len(),
            });
        }
        if let Some(arg) = self
            .agent_args
            .iter()
            .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"'))
        {
            return Err(ConfigError::BadAgentArg { arg: arg.clone() });
        }
        let len = super::qemu::kernel_cmdline(self, ResolvedAccel::Tcg).len();
        if len > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong { len });
        }
        Ok(())
    }
}

/// `$RGCS_VHOST_DEVICE_VSOCK`, else [`DEFAULT_VHOST_DEVICE_VSOCK`] if it exists, else the
/// first `vhost-device-vsock` in `PATH`, else the bare name.
pub fn default_vhost_device_vsock() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_VHOST_DEVICE_VSOCK).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if Path::new(DEFAULT_VHOST_DEVICE_VSOCK).is_file() {
        return PathBuf::from(DEFAULT_VHOST_DEVICE_VSOCK);
    }
    let name = OsString::from("vhost-device-vsock");
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm_openable: bool, kvm_is_pvm: bool, cpu_has_vmx_or_svm: bool) -> HostAccelFacts {
        HostAccelFacts {
            kvm_openable,
            kvm_is_pvm,
            cpu_has_vmx_or_svm,
        }
    }

    #[test]
    fn auto_picks_kvm_only_on_hardware_kvm() {
        assert_eq!(Accel::resolve_with(facts(true, false, true)), ResolvedAccel::Kvm);
        assert_eq!(Accel::resolve_with(facts(true, true, true)), ResolvedAccel::Tcg);
        assert_eq!(Accel::resolve_with(facts(true, true, false)), ResolvedAccel::Tcg);
        assert_eq!(Accel::resolve_with(facts(false, false, true)), ResolvedAccel::Tcg);
        assert_eq!(Accel::resolve_with(facts(true, false, false)), ResolvedAccel::Tcg);
        assert_eq!(Accel::Kvm.resolve(), ResolvedAccel::Kvm);
        assert_eq!(Accel::Tcg.resolve(), ResolvedAccel::Tcg);
    }

    /// On PVM hosts (this project's machines) auto must never pick KVM.
    #[test]
    fn auto_is_tcg_on_a_pvm_host() {
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(Accel::Auto.resolve(), ResolvedAccel::Tcg);
        }
    }

    #[test]
    fn validates_agent_args_and_cmdline() {
        let mut cfg = UvmConfig::new("/k", "/i");
        cfg.agent_args = vec!["-loglevel".into(), "debug".into(), "--flag=x".into()];
        cfg.validate().unwrap();
        for bad in ["", "a b", "q\"", "tab\t"] {
            cfg.agent_args = vec![bad.into()];
            assert!(
                matches!(cfg.validate(), Err(ConfigError::BadAgentArg { .. })),
                "{bad:?}"
            );
        }
        cfg.agent_args = vec!["x".into(); MAX_AGENT_ARGS + 1];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::TooManyAgentArgs { .. })
        ));
        cfg.agent_args.clear();
        cfg.kernel_cmdline_extra = "foo -- bar".into();
        assert!(matches!(cfg.validate(), Err(ConfigError::BadCmdlineExtra { .. })));
        cfg.kernel_cmdline_extra = "x".repeat(3000);
        assert!(matches!(cfg.validate(), Err(ConfigError::CmdlineTooLong { .. })));
        cfg.kernel_cmdline_extra.clear();
        cfg.guest_cid = 2;
        assert!(matches!(cfg.validate(), Err(ConfigError::ReservedCid { cid: 2 })));
    }
}
