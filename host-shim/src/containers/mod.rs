//! The host side of containers: typed bridge calls, the spec the host sends, UVM shell helpers
//! and the local control socket of a served UVM.
//!
//! * [`spec`] — [`ContainerSpec`] → `ContainerConfig` (§4.5), `ProcessParameters` builders (§4.7);
//! * [`client`] — [`ContainerClient`]: Create, Start, ExecuteProcess (stdio ports from
//!   `0x40000001`, listened on before the request), WaitForProcess, SignalProcess,
//!   ResizeConsole, Shutdown, GetProperties, ContainerConstraints, DeleteContainerState,
//!   DumpStacks, notifications by container;
//! * [`uvm`] — busybox shell commands in the UVM and the busybox container rootfs;
//! * [`control`] — `rgcs uvm boot --serve-dir`'s control socket (server and client).

pub mod client;
pub mod control;
pub mod spec;
pub mod uvm;

pub use client::{ContainerClient, ContainerError, ShutdownKind, STDIO_ACCEPT_TIMEOUT};
pub use spec::{
    bundle_path, exec_process, init_process, uvm_process, ContainerSpec, Pipes, ProcessSpec, SpecError,
    UserSpec,
};
pub use uvm::{prepare_busybox_rootfs, uvm_sh, uvm_sh_ok, ShellOutput, UvmShellError, BUSYBOX_ROOTFS};

/// The OCI runtime-spec crate the spec types come from.
pub use oci_spec;

#[cfg(test)]
mod tests;
