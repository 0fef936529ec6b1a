//! Early and last-resort logging to the kernel log (`/dev/kmsg`).
//!
//! This module owns the record format `<priority>rgcs-init: message` and the best-effort writer used
//! before the port-109 log stream exists and on fatal paths. It never fails loudly: if `/dev/kmsg`
//! cannot be written (for example before devtmpfs is mounted), the record goes to stderr, which for
//! PID 1 is `/dev/console`.
//!
//! `/dev/kmsg` is opened for every record. The kernel rate-limits user writes per open file (10
//! records per 5 s unless `printk.devkmsg=on`), so a fresh open per record keeps init's few lines
//! from being dropped.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::log::{Level, LogLine};

/// The kernel log device.
pub const KMSG_PATH: &str = "/dev/kmsg";

/// The tag that prefixes every record this crate writes.
pub const TAG: &str = "rgcs-init";

/// Longest record written, newline included. The kernel rejects writes longer than
/// `LOG_LINE_MAX` (1024 minus a 32-byte prefix) with `EINVAL`; longer messages are truncated.
pub const MAX_RECORD_LEN: usize = 976;

/// Builds one kmsg record: `<prio>rgcs-init: msg\n`. Control characters (including newlines, which
/// would split the record) become spaces, and the result is cut to [`MAX_RECORD_LEN`] bytes on a
/// character boundary.
pub fn record(level: Level, msg: &str) -> Vec<u8> {
    let mut out = format!("<{}>{TAG}: ", level.syslog_priority());
    for c in msg.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() + 1 > MAX_RECORD_LEN {
            break;
        }
        out.push(c);
    }
    out.push('\n');
    out.into_bytes()
}

/// Writes one record to `/dev/kmsg`.
pub fn write(level: Level, msg: &str) -> io::Result<()> {
    write_to(Path::new(KMSG_PATH), level, msg)
}

/// Writes one record to the kmsg-like file at `path` (a seam for tests).
pub fn write_to(path: &Path, level: Level, msg: &str) -> io::Result<()> {
    let mut kmsg = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    // One write(2) per record: /dev/kmsg treats each write as exactly one record.
    kmsg.write_all(&record(level, msg))
}

/// Best-effort: writes `msg` to `/dev/kmsg`, or to stderr if that fails. Never fails or panics.
pub fn log(level: Level, msg: &str) {
    log_to(Path::new(KMSG_PATH), level, msg);
}

/// Best-effort: writes a [`LogLine`] as `msg key=value …` at its level (see [`log`]).
pub fn log_line(line: &LogLine) {
    log(line.level(), &line.to_text());
}

/// [`log`] with another kmsg-like path (a seam for tests).
pub fn log_to(path: &Path, level: Level, msg: &str) {
    if write_to(path, level, msg).is_err() {
        let line = format!("{TAG}: {level}: {msg}\n");
        // Stderr may be closed (no /dev/console in the initrd); there is nowhere left to report to.
        let _ = io::stderr().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::TempDir;

    #[test]
    fn record_format() {
        assert_eq!(record(Level::Info, "hello"), b"<6>rgcs-init: hello\n");
        assert_eq!(record(Level::Error, "a\nb\tc"), b"<3>rgcs-init: a b c\n");
        assert_eq!(record(Level::Warning, ""), b"<4>rgcs-init: \n");
    }

    #[test]
    fn long_records_are_truncated_on_a_char_boundary() {
        let msg = "é".repeat(2000);
        let rec = record(Level::Debug, &msg);
        assert!(rec.len() <= MAX_RECORD_LEN);
        assert!(rec.len() >= MAX_RECORD_LEN - 2);
        assert_eq!(rec.last(), Some(&b'\n'));
        assert!(std::str::from_utf8(&rec).is_ok());
    }

    #[test]
    fn write_to_writes_one_record() {
        let dir = TempDir::new();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, b"").expect("create");
        write_to(&path, Level::Warning, "disk \"x\" gone").expect("write");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"<4>rgcs-init: disk \"x\" gone\n"
        );
        let err = write_to(&dir.path().join("missing/kmsg"), Level::Info, "x").expect_err("no file");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
