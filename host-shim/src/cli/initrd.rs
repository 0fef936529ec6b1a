//! `rgcs initrd build`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rgcs_host_shim::initrd::{self, tools, ExtraEntry, InitrdSpec};
use rgcs_host_shim::kernel;

/// Builds the initrd: the agent, the modules, busybox with its applet links, and the tools and
/// files asked for.
pub fn build(
    agent: PathBuf,
    output: PathBuf,
    busybox: Option<&Path>,
    tool_bins: &[PathBuf],
    files: &[PathBuf],
) -> Result<ExitCode> {
    let kernel = kernel::locate().context("cannot find the guest kernel")?;
    let mut spec = InitrdSpec::new(agent, &output, &kernel);
    spec.extras
        .extend(tools::with_libraries(tool_bins).context("cannot add the tools")?);
    for f in files {
        spec.extras.push(ExtraEntry::File {
            source: f.clone(),
            dest: f.to_string_lossy().into_owned(),
            mode: 0o644,
        });
    }
    if let Some(bb) = busybox {
        let taken: BTreeSet<String> = spec.extras.iter().map(|e| e.dest().to_owned()).collect();
        spec.extras
            .extend(tools::busybox_with_applets(bb, &taken).context("cannot add busybox")?);
        // DHCP for adapters without addresses: busybox udhcpc runs this script.
        spec.extras.push(ExtraEntry::dhcp_script());
    }
    let report = initrd::build(&spec).context("cannot build the initrd")?;
    eprintln!(
        "initrd: {} ({} KiB, kernel {}, {} modules)",
        report.output.display(),
        report.size / 1024,
        kernel.release,
        report.modules.len()
    );
    Ok(ExitCode::SUCCESS)
}
