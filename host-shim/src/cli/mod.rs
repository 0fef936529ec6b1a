//! The `rgcs` subcommands beyond argument parsing (kept out of `main.rs`).

pub mod bench;
pub mod containers;
pub mod image;
pub mod initrd;
pub mod pod;
pub mod uvm;
