//! What an initrd carries besides the agent and the modules, so a host can use the UVM the way
//! hcsshim's hosts use the LCOW rootfs: busybox with a link per applet (`/bin/sh`, `mount`,
//! `dmesg`, …), and dynamically linked tools (`mkfs.ext4` for EnsureFilesystem, runc and crun for
//! the benchmark) with the libraries `ldd` names.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::ExtraEntry;

/// Where busybox lives in the initrd; every applet link points here.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets we never link: `/init` is the agent, and busybox's own init must not shadow it.
const SKIPPED_APPLETS: [&str; 2] = ["sbin/init", "linuxrc"];

/// Errors of tool resolution.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `ldd` failed on a binary.
    #[error("cannot resolve the libraries of {path}")]
    Ldd {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `busybox --list-full` failed.
    #[error("cannot list the applets of {path}")]
    Applets {
        /// The busybox binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Each binary at its own path, plus every library `ldd` resolves for it (the loader included),
/// each path once.
pub fn with_libraries(binaries: &[PathBuf]) -> Result<Vec<ExtraEntry>, ToolError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for bin in binaries {
        let err = |source| ToolError::Ldd {
            path: bin.clone(),
            source,
        };
        let ldd = std::process::Command::new("ldd").arg(bin).output().map_err(err)?;
        if !ldd.status.success() {
            return Err(err(io::Error::other(
                String::from_utf8_lossy(&ldd.stderr).trim().to_owned(),
            )));
        }
        let mut files = vec![bin.clone()];
        files.extend(parse_ldd(&String::from_utf8_lossy(&ldd.stdout)));
        for path in files {
            let dest = path.to_string_lossy().into_owned();
            if seen.insert(dest.clone()) {
                out.push(ExtraEntry::File {
                    source: path,
                    dest,
                    mode: 0o755,
                });
            }
        }
    }
    Ok(out)
}

/// The absolute library paths in `ldd` output (`x => /path (0x…)` and `/lib64/ld… (0x…)`).
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// `busybox` installed at [`BUSYBOX`] and a symlink to it for each of its applets at the path
/// `busybox --list-full` gives (`/bin/sh`, `/sbin/ifconfig`, `/usr/bin/[`, …), except those in
/// `taken` (paths other entries already claim) and those that would shadow the agent.
pub fn busybox_with_applets(busybox: &Path, taken: &BTreeSet<String>) -> Result<Vec<ExtraEntry>, ToolError> {
    let err = |source| ToolError::Applets {
        path: busybox.to_path_buf(),
        source,
    };
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    let mut entries = vec![ExtraEntry::File {
        source: busybox.to_path_buf(),
        dest: BUSYBOX.into(),
        mode: 0o755,
    }];
    entries.extend(applet_links(&String::from_utf8_lossy(&out.stdout), taken));
    Ok(entries)
}

/// The links for a `busybox --list-full` listing.
fn applet_links(listing: &str, taken: &BTreeSet<String>) -> Vec<ExtraEntry> {
    let mut seen = BTreeSet::new();
    listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !SKIPPED_APPLETS.contains(l) && !l.contains(char::is_whitespace))
        .map(|l| format!("/{}", l.trim_start_matches('/')))
        .filter(|dest| dest != BUSYBOX && !taken.contains(dest) && seen.insert(dest.clone()))
        .map(|dest| ExtraEntry::Symlink {
            dest,
            target: BUSYBOX.into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let t = "\tlinux-vdso.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(t),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn applet_links_skip_init_and_taken_paths() {
        let taken: BTreeSet<String> = ["/usr/sbin/mkfs.ext2".to_owned()].into();
        let links = applet_links(
            "bin/sh\nsbin/init\nlinuxrc\nusr/bin/[\nusr/sbin/mkfs.ext2\nbin/sh\n",
            &taken,
        );
        let dests: Vec<_> = links
            .iter()
            .map(|e| match e {
                ExtraEntry::Symlink { dest, target } => {
                    assert_eq!(target, BUSYBOX);
                    dest.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(dests, ["/bin/sh", "/usr/bin/["]);
    }
}
