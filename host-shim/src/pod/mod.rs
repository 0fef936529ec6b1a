//! Pods on the host (`docs/pods.md`): one UVM per pod, a sandbox (`/pause`, no image) and
//! workloads from images, served by a background process per pod that any `rgcs` invocation
//! reaches through the state directory.
//!
//! * [`state`] — the state directory, pod and container records, liveness;
//! * [`server`] — the pod server: boot, sandbox, NIC, workloads, teardown;
//! * [`workloads`] — the pod's requests: run an image, stop, remove, wait, shut down;
//! * [`log`] — each workload's bounded output log.

pub mod log;
pub mod server;
pub mod state;
pub mod workloads;
