//! host-shim's thin layer over the kernel: the only module of the crate allowed to use `unsafe`
//! (the crate denies it everywhere else). Each function wraps one system call or one ioctl
//! behind a safe signature.
//!
//! * [`term`] — raw mode, window sizes, `isatty`;
//! * [`fs`] — `openat2` beneath a root, `lsetxattr`;
//! * [`process`] — a child that dies with its parent (`PR_SET_PDEATHSIG`);
//! * [`scm`] — descriptors over a Unix stream (`SCM_RIGHTS`);
//! * [`tap`] — tap devices for QEMU NICs.
#![allow(unsafe_code)]

pub mod fs;
pub mod process;
pub mod scm;
pub mod tap;
pub mod term;
