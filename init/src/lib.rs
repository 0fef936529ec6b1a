//! `rgcs-init`: the PID 1 duties of the rgcs utility VM.
//!
//! The single static `gcs` binary calls [`pid1::main`] when it runs as PID 1. PID 1 is a small,
//! single-threaded supervisor: it mounts the early filesystems, sets limits, loads the early
//! kernel modules (virtio-pci, vsock), dials the host's log stream, then re-executes itself as the
//! agent (`gcs …`), reaps every child, forwards shutdown signals, and powers the VM off when the
//! agent exits. See [`pid1`] for the order and what is fatal.
//!
//! The rest of hcsshim's `/init` work (entropy from the host, cgroups with every controller,
//! `lo` up, the late kernel modules) is the agent's late set-up after the bridge is negotiated
//! (docs/adr/0003-late-kernel-modules.md); this crate provides the pieces ([`entropy`],
//! [`cgroups`], [`net`], [`modules`]) the agent calls.
//!
//! Pieces the agent reuses:
//! * [`vsock::connect`]: the guest-dials-host connect with the hcsshim retry policy;
//! * [`log::LogLine`]: the logrus JSON line format of the port-109 log stream;
//! * [`modules::load`] with [`modules::Phase::Late`]: the storage modules, after negotiation;
//! * [`kmsg`]: last-resort logging; [`time::boottime`] and [`pid1::BOOTTIME_ENV`]: boot timing;
//! * [`poweroff::power_off`]: the one way to stop the VM.
//!
//! Only [`reaper`] calls `waitpid(-1)`. `unsafe` is confined to FFI calls that `nix` does not wrap
//! (ioctls, `fork`, `_exit`); each block states its invariants.

#![warn(missing_docs)]

pub mod cgroups;
pub mod entropy;
mod journal;
pub mod kmsg;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod pid1;
pub mod poweroff;
pub mod reaper;
pub mod rlimit;
mod spawn;
mod supervisor;
pub mod time;
pub mod vsock;

#[cfg(test)]
mod sandbox;
