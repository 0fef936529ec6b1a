//! Kernel modules carried in the initrd, loaded in two phases from the list [`MODULES_LIST`].
//!
//! This module owns the list format, its parser and the `finit_module(2)` loop. It does not resolve
//! dependencies: the host's initrd builder writes the list already in load order (from `modules.dep`
//! plus the softdeps a PID 1 without modprobe would miss, such as crc32c before ext4; docs/uvm-notes.md §5–§6).
//!
//! # List format
//!
//! One entry per line: `<phase> <required|optional> <absolute path of the .ko>`. `#` starts a comment
//! (whole-line or trailing), blank lines are ignored, fields are separated by whitespace.
//!
//! * `early`: needed before the bridge (virtio transport, vsock); loaded by init.
//! * `late`: storage (scsi/blk, crc32c, ext4, overlay, 9p, dm); loaded by the agent in the background
//!   after the bridge is negotiated.
//!
//! `EEXIST` (already loaded or built in) counts as success. An `optional` module that fails (for
//! example `ENODEV` from crc32c-intel without SSE4.2) is reported as skipped; a `required` one that
//! fails stops the phase with an error naming it.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where the initrd builder writes the list.
pub const MODULES_LIST: &str = "/etc/rgcs/modules";

/// When a module is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// By init, before the log stream and bridge are dialled.
    Early,
    /// By the agent, after protocol negotiation.
    Late,
}

impl Phase {
    /// The list-file spelling: `early` or `late`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Early => "early",
            Phase::Late => "late",
        }
    }
}

/// Whether a module's failure stops its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Failure is an error.
    Required,
    /// Failure is reported and skipped.
    Optional,
}

/// One parsed line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// 1-based line number in the list.
    pub line: usize,
    /// Load phase.
    pub phase: Phase,
    /// Required or optional.
    pub requirement: Requirement,
    /// Absolute path of the `.ko` file.
    pub path: PathBuf,
}

/// A malformed list line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first field is not `early` or `late`.
    #[error("line {line}: unknown phase {found:?} (expected early or late)")]
    BadPhase {
        /// 1-based line number.
        line: usize,
        /// The field found.
        found: String,
    },
    /// The second field is missing.
    #[error("line {line}: missing required/optional flag")]
    MissingRequirement {
        /// 1-based line number.
        line: usize,
    },
    /// The second field is not `required` or `optional`.
    #[error("line {line}: unknown flag {found:?} (expected required or optional)")]
    BadRequirement {
        /// 1-based line number.
        line: usize,
        /// The field found.
        found: String,
    },
    /// The third field is missing.
    #[error("line {line}: missing module path")]
    MissingPath {
        /// 1-based line number.
        line: usize,
    },
    /// The path is not absolute.
    #[error("line {line}: module path {found:?} is not absolute")]
    RelativePath {
        /// 1-based line number.
        line: usize,
        /// The path found.
        found: String,
    },
    /// More than three fields.
    #[error("line {line}: unexpected field {found:?} after the module path")]
    TrailingField {
        /// 1-based line number.
        line: usize,
        /// The first extra field.
        found: String,
    },
}

/// Parses a module list (see the module docs for the format). Entries keep file order.
pub fn parse(text: &str) -> Result<Vec<ModuleEntry>, ParseError> {
    let mut entries = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let mut fields = content.split_whitespace();
        let Some(phase) = fields.next() else { continue };
        let phase = match phase {
            "early" => Phase::Early,
            "late" => Phase::Late,
            other => {
                return Err(ParseError::BadPhase {
                    line,
                    found: other.into(),
                })
            }
        };
        let requirement = match fields.next() {
            Some("required") => Requirement::Required,
            Some("optional") => Requirement::Optional,
            Some(other) => {
                return Err(ParseError::BadRequirement {
                    line,
                    found: other.into(),
                })
            }
            None => return Err(ParseError::MissingRequirement { line }),
        };
        let path = fields.next().ok_or(ParseError::MissingPath { line })?;
        if !path.starts_with('/') {
            return Err(ParseError::RelativePath {
                line,
                found: path.into(),
            });
        }
        if let Some(extra) = fields.next() {
            return Err(ParseError::TrailingField {
                line,
                found: extra.into(),
            });
        }
        entries.push(ModuleEntry {
            line,
            phase,
            requirement,
            path: PathBuf::from(path),
        });
    }
    Ok(entries)
}

/// How one module failed to load.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    /// The `.ko` could not be opened.
    #[error("open")]
    Open(#[source] io::Error),
    /// The kernel refused it.
    #[error("finit_module")]
    Init(#[source] Errno),
}

/// An optional module that failed and was skipped.
#[derive(Debug)]
pub struct SkippedModule {
    /// Its path.
    pub path: PathBuf,
    /// Why it failed.
    pub failure: LoadFailure,
}

/// What [`load`] did for one phase.
#[derive(Debug)]
pub struct LoadReport {
    /// The phase loaded.
    pub phase: Phase,
    /// Whether the list file existed (a missing list means nothing to load).
    pub list_found: bool,
    /// Modules newly loaded.
    pub loaded: usize,
    /// Modules the kernel already had (`EEXIST`).
    pub already_loaded: usize,
    /// Optional modules that failed.
    pub skipped: Vec<SkippedModule>,
    /// Wall time spent, parsing included.
    pub elapsed: Duration,
}

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The list exists but could not be read.
    #[error("read module list {path}")]
    ReadList {
        /// List path.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The list is malformed.
    #[error("parse module list {path}")]
    Parse {
        /// List path.
        path: PathBuf,
        /// The first bad line.
        #[source]
        source: ParseError,
    },
    /// A required module failed.
    #[error("load required module {path} (list line {line})")]
    Load {
        /// Module path.
        path: PathBuf,
        /// Its line in the list.
        line: usize,
        /// Why it failed.
        #[source]
        source: LoadFailure,
    },
}

/// Loads the modules of `phase` listed in [`MODULES_LIST`], in file order.
pub fn load(phase: Phase) -> Result<LoadReport, ModuleError> {
    load_from(Path::new(MODULES_LIST), phase)
}

/// Like [`load`] with another list file.
pub fn load_from(list: &Path, phase: Phase) -> Result<LoadReport, ModuleError> {
    load_with(list, phase, load_module)
}

/// Like [`load`], calling `done` with each module's name (see [`module_name`]) once it is in the
/// kernel (loaded now or before, or an optional one given up on), so that a caller waiting for
/// one subsystem need not wait for the whole list.
pub fn load_observed(phase: Phase, mut done: impl FnMut(&str)) -> Result<LoadReport, ModuleError> {
    load_with(Path::new(MODULES_LIST), phase, |path| {
        let r = load_module(path);
        if r.is_ok() || matches!(r, Err(LoadFailure::Init(Errno::EEXIST))) {
            done(&module_name(path));
        }
        r
    })
}

/// A module's name as the kernel spells it: the file name without `.ko` (and a compression
/// suffix), with `-` as `_` (`dm-mod.ko` is `dm_mod`).
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.split(".ko").next().unwrap_or(&file);
    stem.replace('-', "_")
}

/// The loop behind [`load_from`], over an injectable per-module loader.
fn load_with(
    list: &Path,
    phase: Phase,
    mut load_one: impl FnMut(&Path) -> Result<(), LoadFailure>,
) -> Result<LoadReport, ModuleError> {
    let start = Instant::now();
    let mut report = LoadReport {
        phase,
        list_found: true,
        loaded: 0,
        already_loaded: 0,
        skipped: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.list_found = false;
            report.elapsed = start.elapsed();
            return Ok(report);
        }
        Err(source) => {
            return Err(ModuleError::ReadList {
                path: list.into(),
                source,
            })
        }
    };
    let entries = parse(&text).map_err(|source| ModuleError::Parse {
        path: list.into(),
        source,
    })?;
    for entry in entries.into_iter().filter(|e| e.phase == phase) {
        match load_one(&entry.path) {
            Ok(()) => report.loaded += 1,
            Err(LoadFailure::Init(Errno::EEXIST)) => report.already_loaded += 1,
            Err(failure) if entry.requirement == Requirement::Optional => {
                report.skipped.push(SkippedModule {
                    path: entry.path,
                    failure,
                });
            }
            Err(source) => {
                return Err(ModuleError::Load {
                    path: entry.path,
                    line: entry.line,
                    source,
                });
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Opens `path` and hands it to `finit_module(fd, "", 0)`.
fn load_module(path: &Path) -> Result<(), LoadFailure> {
    const NO_PARAMS: &CStr = c"";
    let file = File::open(path).map_err(LoadFailure::Open)?;
    finit_module(&file, NO_PARAMS, ModuleInitFlags::empty()).map_err(LoadFailure::Init)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::TempDir;

    const LIST: &str = "\
# written by the initrd builder
early required /lib/modules/6.1/virtio.ko
early required /lib/modules/6.1/vsock.ko   # trailing comment

late  required /lib/modules/6.1/crc32c_generic.ko
late optional /lib/modules/6.1/crc32c-intel.ko
\tlate\trequired\t/lib/modules/6.1/ext4.ko
";

    #[test]
    fn module_names_are_the_kernels() {
        assert_eq!(
            module_name(Path::new("/lib/modules/6.1/kernel/drivers/md/dm-mod.ko")),
            "dm_mod"
        );
        assert_eq!(module_name(Path::new("/x/9pnet_fd.ko.xz")), "9pnet_fd");
        assert_eq!(module_name(Path::new("ext4.ko")), "ext4");
    }

    #[test]
    fn parses_entries_in_order_with_line_numbers() {
        let entries = parse(LIST).expect("valid");
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.line, e.phase, e.requirement, e.path.to_str().unwrap_or("")))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    2,
                    Phase::Early,
                    Requirement::Required,
                    "/lib/modules/6.1/virtio.ko"
                ),
                (
                    3,
                    Phase::Early,
                    Requirement::Required,
                    "/lib/modules/6.1/vsock.ko"
                ),
                (
                    5,
                    Phase::Late,
                    Requirement::Required,
                    "/lib/modules/6.1/crc32c_generic.ko"
                ),
                (
                    6,
                    Phase::Late,
                    Requirement::Optional,
                    "/lib/modules/6.1/crc32c-intel.ko"
                ),
                (7, Phase::Late, Requirement::Required, "/lib/modules/6.1/ext4.ko"),
            ]
        );
        assert_eq!(parse("").expect("empty"), vec![]);
        assert_eq!(parse("# only\n\n   \n").expect("comments"), vec![]);
    }

    #[test]
    fn bad_lines_are_typed_errors_with_line_numbers() {
        let cases = [
            (
                "\nmiddle required /a.ko",
                ParseError::BadPhase {
                    line: 2,
                    found: "middle".into(),
                },
            ),
            (
                "Early required /a.ko",
                ParseError::BadPhase {
                    line: 1,
                    found: "Early".into(),
                },
            ),
            ("early\n", ParseError::MissingRequirement { line: 1 }),
            (
                "#\nearly maybe /a.ko",
                ParseError::BadRequirement {
                    line: 2,
                    found: "maybe".into(),
                },
            ),
            ("late optional", ParseError::MissingPath { line: 1 }),
            ("late optional # /a.ko", ParseError::MissingPath { line: 1 }),
            (
                "late optional a.ko",
                ParseError::RelativePath {
                    line: 1,
                    found: "a.ko".into(),
                },
            ),
            (
                "early required /a.ko extra",
                ParseError::TrailingField {
                    line: 1,
                    found: "extra".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want.clone()), "{text:?}");
        }
        assert_eq!(
            ParseError::BadPhase {
                line: 3,
                found: "x".into()
            }
            .to_string(),
            "line 3: unknown phase \"x\" (expected early or late)"
        );
    }

    fn list_file(text: &str) -> (TempDir, PathBuf) {
        let dir = TempDir::new();
        let path = dir.path().join("modules");
        std::fs::write(&path, text).expect("write list");
        (dir, path)
    }

    #[test]
    fn loads_only_the_phase_in_order_with_eexist_as_success() {
        let (_dir, list) = list_file(LIST);
        let mut seen = Vec::new();
        let report = load_with(&list, Phase::Late, |p| {
            seen.push(p.to_path_buf());
            match p.file_name().and_then(|n| n.to_str()) {
                Some("crc32c-intel.ko") => Err(LoadFailure::Init(Errno::ENODEV)),
                Some("ext4.ko") => Err(LoadFailure::Init(Errno::EEXIST)),
                _ => Ok(()),
            }
        })
        .expect("late phase loads");
        let names: Vec<_> = seen.iter().filter_map(|p| p.file_name()?.to_str()).collect();
        assert_eq!(names, ["crc32c_generic.ko", "crc32c-intel.ko", "ext4.ko"]);
        assert!(report.list_found);
        assert_eq!(
            (report.phase, report.loaded, report.already_loaded),
            (Phase::Late, 1, 1)
        );
        assert_eq!(report.skipped.len(), 1);
        assert!(matches!(
            report.skipped[0].failure,
            LoadFailure::Init(Errno::ENODEV)
        ));
    }

    #[test]
    fn a_required_failure_names_the_module_and_stops() {
        let (_dir, list) = list_file(LIST);
        let mut calls = 0;
        let err = load_with(&list, Phase::Early, |_| {
            calls += 1;
            Err(LoadFailure::Open(io::Error::from(io::ErrorKind::NotFound)))
        })
        .expect_err("required module missing");
        assert_eq!(calls, 1, "stops at the first required failure");
        assert_eq!(
            err.to_string(),
            "load required module /lib/modules/6.1/virtio.ko (list line 2)"
        );
        assert!(matches!(
            err,
            ModuleError::Load {
                line: 2,
                source: LoadFailure::Open(_),
                ..
            }
        ));
    }

    #[test]
    fn missing_list_means_nothing_to_load_and_parse_errors_are_reported() {
        let dir = TempDir::new();
        let report = load_from(&dir.path().join("absent"), Phase::Early).expect("missing list is fine");
        assert!(!report.list_found);
        assert_eq!(
            (report.loaded, report.already_loaded, report.skipped.len()),
            (0, 0, 0)
        );

        let (_dir, list) = list_file("early required relative.ko\n");
        let err = load_with(&list, Phase::Early, |_| Ok(())).expect_err("bad list");
        assert!(matches!(
            err,
            ModuleError::Parse {
                source: ParseError::RelativePath { line: 1, .. },
                ..
            }
        ));

        let err = load_from(dir.path(), Phase::Early).expect_err("a directory is not a list");
        assert!(matches!(err, ModuleError::ReadList { .. }));
    }

    #[test]
    fn real_loader_reports_open_failures() {
        let dir = TempDir::new();
        let missing = dir.path().join("missing.ko");
        assert!(
            matches!(load_module(&missing), Err(LoadFailure::Open(e)) if e.kind() == io::ErrorKind::NotFound)
        );
        assert_eq!(MODULES_LIST, "/etc/rgcs/modules");
        assert_eq!((Phase::Early.as_str(), Phase::Late.as_str()), ("early", "late"));
    }
}
