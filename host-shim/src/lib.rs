//! rgcs-host-shim: the host side of rgcs on Linux.
//!
//! * [`kernel`] — find Debian's kernel, extract the ELF vmlinux once (PVH boot);
//! * [`initrd`] — the rootless newc initrd builder (agent, kernel modules, module list);
//! * [`vm`] — the UVM launcher (QEMU + vhost-device-vsock), host vsock listeners, teardown;
//! * [`bridge`] — the GCS bridge client;
//! * [`session`] — a booted UVM with a negotiated bridge;
//! * [`bench`] — benchmarks.
pub mod bench;
pub mod bridge;
pub mod initrd;
pub mod kernel;
pub mod session;
pub mod vm;
