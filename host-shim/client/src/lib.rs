//! rgcs-client: the host end of hcsshim's GCS bridge, for every host-side user of an rgcs guest
//! (the `rgcs` CLI, the containerd shim, the VM tests and the agent's own tests).
//!
//! * [`bridge`] — [`BridgeClient`]: request IDs, the pending map, the notification stream;
//! * [`containers`] — [`ContainerClient`]: one typed call per container and process message,
//!   stdio ports listened on before the request, notifications by container;
//! * [`spec`] — the `ContainerConfig` and `ProcessParameters` a host sends, built as hcsshim's
//!   host builds them;
//! * [`vsock`] — the host end of guest vsock ports: guest port `P` arrives as a Unix connection
//!   on `<prefix>_P` (vhost-device-vsock's naming, and the agent's `--stdio-unix-prefix` in
//!   tests);
//! * [`stdio`] — the host ends of a process's stdio, and capturing them;
//! * [`uvm`] — shell commands in the UVM (null container ID) and the busybox root filesystem.
//!
//! It knows nothing of how the UVM was started: it needs a byte stream to the agent and the
//! vsock prefix its stdio ports arrive on.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod containers;
#[cfg(any(test, feature = "fake-guest"))]
pub mod fake_guest;
#[cfg(feature = "hostile")]
pub mod hostile;
pub mod spec;
pub mod stdio;
pub mod uvm;
pub mod vsock;

pub use bridge::{BridgeClient, ClientError};
pub use containers::{ContainerClient, ContainerError, ShutdownKind, STDIO_ACCEPT_TIMEOUT};
pub use spec::{
    bundle_path, exec_process, init_process, uvm_process, BindMount, ContainerSpec, Pipes, PodRole,
    ProcessSpec, SpecError, UserSpec,
};
pub use stdio::{Captured, HostStdio, StdioError};
pub use uvm::{
    census, prepare_busybox_rootfs, prepare_pause_rootfs, uvm_sh, uvm_sh_ok, Census, ShellOutput,
    UvmShellError, BUSYBOX_ROOTFS, PAUSE_ROOTFS,
};
pub use vsock::{connect_to_guest, port_path, VsockError, VsockListener};

/// The OCI runtime-spec crate the spec types come from.
pub use oci_spec;
pub use rgcs_protocol;
