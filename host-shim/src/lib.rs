//! rgcs-host-shim: the host side of rgcs on Linux. The bridge client itself is the
//! `rgcs-client` crate (`host-shim/client`), which every host-side user shares.
//!
//! * [`kernel`] — find Debian's kernel, extract the ELF vmlinux once (PVH boot);
//! * [`initrd`] — the rootless newc initrd builder (agent, kernel modules, module list);
//! * [`vm`] — the UVM launcher (QEMU + vhost-device-vsock), host vsock listeners, QMP, teardown;
//! * [`session`] — a booted UVM with a negotiated bridge;
//! * [`image`] — OCI / docker-save images → cached ext4 layer images;
//! * [`scratch`] — sparse ext4 scratch disks;
//! * [`rootfs`] — a container's root filesystem attached to a running UVM (layers, scratch, shares);
//! * [`p9`] — 9P2000.L file server for guest-dialled vsock shares;
//! * [`run`] — `rgcs run`: an image, end to end;
//! * [`cri`] — a small CRI (Kubernetes runtime API) client over gRPC;
//! * [`control`] — `rgcs uvm boot --serve-dir`'s control socket (server and client);
//! * [`shim`] — `containerd-shim-rgcs-v1`, the containerd shim v2;
//! * [`stdio`] — the CLI's terminal relay;
//! * [`bench`](mod@bench) — benchmarks;
//! * [`sys`] — the only module with `unsafe`.
#![deny(unsafe_code)]
pub mod bench;
pub mod control;
pub mod cri;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod net;
pub mod p9;
pub mod pod;
pub mod rootfs;
pub mod run;
pub mod scratch;
pub mod session;
pub mod shim;
pub mod stdio;
pub mod sys;
pub mod vm;
pub mod warm;
