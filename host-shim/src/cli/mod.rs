//! The `rgcs` subcommands beyond argument parsing (kept out of `main.rs`).

pub mod bench;
pub mod containers;
pub mod image;
pub mod initrd;
pub mod pod;
pub mod pool;
pub mod uvm;
pub mod workloads;

use std::path::PathBuf;

use anyhow::{anyhow, Result};

/// The layer cache: the one given, else the default.
pub(crate) fn cache_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    given
        .or_else(rgcs_host_shim::image::default_cache_dir)
        .ok_or_else(|| anyhow!("no cache directory: pass --cache DIR"))
}

/// Prints a line; a closed stdout (`| head`) is not an error.
pub(crate) fn say(line: impl std::fmt::Display) -> Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
