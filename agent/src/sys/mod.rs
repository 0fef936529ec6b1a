//! The agent's thin layer over the kernel: the only place in the agent that uses `unsafe` or raw
//! file descriptors.

pub mod fdstream;
