//! rgcs-host-shim: the host side of rgcs on Linux.
//!
//! * [`kernel`] — find Debian's kernel, extract the ELF vmlinux once (PVH boot);
//! * [`initrd`] — the rootless newc initrd builder (agent, kernel modules, module list);
//! * [`vm`] — the UVM launcher (QEMU + vhost-device-vsock), host vsock listeners, teardown;
//! * [`bridge`] — the GCS bridge client;
//! * [`session`] — a booted UVM with a negotiated bridge;
//! * [`containers`] — container and process calls, the container spec, the control socket;
//! * [`stdio`] — the host ends of process stdio and their relays;
//! * [`bench`] — benchmarks;
//! * [`image`] — OCI / docker-save images → cached ext4 layer images;
//! * [`scratch`] — sparse ext4 scratch disks;
//! * [`qmp`] — QMP client: SCSI (and pmem) disk hot-plug;
//! * [`p9`] — 9P2000.L file server for guest-dialled vsock shares.
pub mod bench;
pub mod bridge;
pub mod containers;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod p9;
pub mod qmp;
pub mod rootfs;
pub mod run;
pub mod scratch;
pub mod session;
pub mod stdio;
pub mod vm;
