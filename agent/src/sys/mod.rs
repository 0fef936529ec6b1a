//! The agent's thin layer over the kernel: the only place in the agent that uses `unsafe` or raw
//! file descriptors.

pub mod dm;
pub mod fdstream;
pub mod heap;
pub mod inherited;
pub mod pid;
pub mod pty;
pub mod scm;
pub mod spawn;
pub mod zygote;
