//! The guest log line format spoken on vsock port 109: one logrus-style JSON object per line.
//!
//! This module owns the pure [`LogLine`] builder and the RFC 3339 (nanosecond) time formatting that
//! goes with it. It performs no I/O: init's journal and the agent's tracing layer decide where the
//! lines go. The format follows docs/gcs-reference.md §1.2: the host decodes a stream of JSON objects with
//! `time` (RFC3339Nano, UTC), `level` and `msg`, plus any extra fields.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use rgcs_init::log::{Level, LogLine};
//!
//! let line = LogLine::new(Level::Info, "init ready")
//!     .at(UNIX_EPOCH + Duration::from_millis(1500))
//!     .field("boottime_ns", 42u64)
//!     .to_json();
//! assert_eq!(
//!     line,
//!     "{\"time\":\"1970-01-01T00:00:01.5Z\",\"level\":\"info\",\"msg\":\"init ready\",\"boottime_ns\":42}\n"
//! );
//! ```

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A logrus level, as spelled on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `trace`: very verbose diagnostics.
    Trace,
    /// `debug`: diagnostics.
    Debug,
    /// `info`: normal progress.
    Info,
    /// `warning`: something degraded but the guest carries on (logrus spells it `warning`).
    Warning,
    /// `error`: an operation failed.
    Error,
}

impl Level {
    /// The wire spelling: `trace|debug|info|warning|error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    /// The syslog priority used for `/dev/kmsg` records (`KERN_ERR` = 3 … `KERN_DEBUG` = 7).
    pub const fn syslog_priority(self) -> u8 {
        match self {
            Level::Trace | Level::Debug => 7,
            Level::Info => 6,
            Level::Warning => 4,
            Level::Error => 3,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keys the format itself uses. Like logrus, a field with one of these names is renamed to
/// `fields.<name>` so that it cannot clobber the line's own `time`, `level` or `msg`.
const RESERVED_KEYS: [&str; 3] = ["time", "level", "msg"];

/// One log line: a timestamp, a level, a message and ordered extra fields.
///
/// Fields keep insertion order; setting a key twice replaces the earlier value in place (logrus
/// `WithField` semantics). Serialise with [`LogLine::to_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    time: SystemTime,
    level: Level,
    msg: String,
    fields: Vec<(String, Value)>,
}

impl LogLine {
    /// A line at `level` with message `msg`, stamped with the current wall-clock time.
    pub fn new(level: Level, msg: impl Into<String>) -> Self {
        LogLine {
            time: SystemTime::now(),
            level,
            msg: msg.into(),
            fields: Vec::new(),
        }
    }

    /// Replaces the timestamp (for lines describing an earlier event, and for tests).
    #[must_use]
    pub fn at(mut self, time: SystemTime) -> Self {
        self.time = time;
        self
    }

    /// Adds (or replaces) the field `key` with a JSON value. Anything with `Into<serde_json::Value>`
    /// works: strings, integers, floats, booleans, vectors, or a prebuilt `Value`.
    #[must_use]
    pub fn field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set_field(key, value);
        self
    }

    /// The in-place form of [`LogLine::field`], for callers that build lines in a loop.
    pub fn set_field(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let mut key = key.into();
        if RESERVED_KEYS.contains(&key.as_str()) {
            key.insert_str(0, "fields.");
        }
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The line's level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The line's message.
    pub fn msg(&self) -> &str {
        &self.msg
    }

    /// The line's timestamp.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The extra fields, in insertion order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The wire form: one JSON object (`time`, `level`, `msg`, then the fields) ending in `\n`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.msg.len() + 24 * self.fields.len());
        out.push_str("{\"time\":\"");
        out.push_str(&rfc3339_nano(self.time));
        out.push_str("\",\"level\":\"");
        out.push_str(self.level.as_str());
        out.push_str("\",\"msg\":");
        push_json_string(&mut out, &self.msg);
        for (key, value) in &self.fields {
            out.push(',');
            push_json_string(&mut out, key);
            out.push(':');
            // `Value`'s Display is its compact JSON serialisation; writing to a String cannot fail.
            let _ = write!(out, "{value}");
        }
        out.push_str("}\n");
        out
    }

    /// A compact single-line human form, `msg key=value …` (values as JSON), for `/dev/kmsg`.
    pub fn to_text(&self) -> String {
        let mut out = self.msg.clone();
        for (key, value) in &self.fields {
            let _ = write!(out, " {key}={value}");
        }
        out
    }
}

/// Appends `s` to `out` as a JSON string literal: quotes, backslashes and every control character
/// (U+0000–U+001F) are escaped, everything else is copied as UTF-8.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats `t` as Go's `time.RFC3339Nano` in UTC: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, where the
/// fraction has its trailing zeros removed and is omitted entirely when zero. Times before 1970 work.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let (secs, nanos) = unix_parts(t);
    let days = secs.div_euclid(86_400);
    let sec_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(30);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sec_of_day / 3600,
        sec_of_day % 3600 / 60,
        sec_of_day % 60
    );
    if nanos != 0 {
        let mut digits = format!("{nanos:09}");
        while digits.ends_with('0') {
            digits.pop();
        }
        out.push('.');
        out.push_str(&digits);
    }
    out.push('Z');
    out
}

/// Whole seconds since the Unix epoch (floored, so negative before 1970) and the nanoseconds past
/// that second (always in `0..1e9`).
fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// The proleptic Gregorian date `(year, month 1–12, day 1–31)` of `days` days after 1970-01-01
/// (negative for earlier dates). This is Howard Hinnant's `civil_from_days` algorithm; it is exact
/// for every day whose year fits in an `i64`'s range divided by 366.
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    // cast: `month` is in [1, 12] and `day` in [1, 31] (see above), so both casts are exact;
    // `u32::try_from` is not usable in a `const fn`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (month, day) = (month as u32, day as u32);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: i64, nanos: u32) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
        }
    }

    #[test]
    fn rfc3339_known_timestamps() {
        let cases: &[(i64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00Z"),
            (1, 500_000_000, "1970-01-01T00:00:01.5Z"),
            (0, 100, "1970-01-01T00:00:00.0000001Z"),
            (1_234_567_890, 123_456_789, "2009-02-13T23:31:30.123456789Z"),
            (1_700_000_000, 0, "2023-11-14T22:13:20Z"),
            (951_782_400, 0, "2000-02-29T00:00:00Z"),
            (951_868_799, 999_999_999, "2000-02-29T23:59:59.999999999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00Z"),
            (253_402_300_799, 10, "9999-12-31T23:59:59.00000001Z"),
            (-1, 0, "1969-12-31T23:59:59Z"),
            (-1, 500_000_000, "1969-12-31T23:59:59.5Z"),
            (-2_208_988_800, 0, "1900-01-01T00:00:00Z"),
        ];
        for &(secs, nanos, want) in cases {
            assert_eq!(rfc3339_nano(at(secs, nanos)), want, "secs={secs} nanos={nanos}");
        }
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_walk() {
        fn leap(y: i64) -> bool {
            (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        }
        fn month_len(y: i64, m: u32) -> u32 {
            match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        // Walk forward from 1600-01-01 (day -135140) across 800 years, including 1700/1800/1900/2100.
        let (mut y, mut m, mut d) = (1600_i64, 1_u32, 1_u32);
        for days in -135_140_i64..(-135_140 + 292_194) {
            assert_eq!(civil_from_days(days), (y, m, d), "days={days}");
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert_eq!((y, m, d), (2400, 1, 1));
    }

    #[test]
    fn json_line_has_fixed_keys_then_fields_in_order() {
        let line = LogLine::new(Level::Warning, "x")
            .at(at(0, 0))
            .field("b", 1)
            .field("a", "s")
            .field("ok", true)
            .field("ms", 1.5)
            .field("list", vec!["cpu", "memory"])
            .to_json();
        assert_eq!(
            line,
            "{\"time\":\"1970-01-01T00:00:00Z\",\"level\":\"warning\",\"msg\":\"x\",\"b\":1,\"a\":\"s\",\
             \"ok\":true,\"ms\":1.5,\"list\":[\"cpu\",\"memory\"]}\n"
        );
    }

    #[test]
    fn strings_are_escaped_and_round_trip() {
        let nasty = "quote\" backslash\\ nl\n cr\r tab\t nul\u{0} esc\u{1b} bell\u{7} del\u{7f} é ☃ 😀";
        let line = LogLine::new(Level::Error, nasty)
            .field("k\"ey\n", nasty)
            .to_json();
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1, "exactly one newline, at the end");
        assert!(line.contains("nul\\u0000 esc\\u001b bell\\u0007"));
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["msg"], nasty);
        assert_eq!(v["k\"ey\n"], nasty);
        assert_eq!(v["level"], "error");
    }

    #[test]
    fn reserved_keys_are_prefixed_and_duplicates_replaced() {
        let line = LogLine::new(Level::Info, "m")
            .field("msg", "other")
            .field("n", 1)
            .field("n", 2);
        let fields: Vec<_> = line.fields().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        assert_eq!(
            fields,
            vec![
                ("fields.msg".to_owned(), Value::from("other")),
                ("n".to_owned(), Value::from(2))
            ]
        );
        let v: Value = serde_json::from_str(&line.to_json()).expect("valid JSON");
        assert_eq!(v["msg"], "m");
        assert_eq!(v["fields.msg"], "other");
    }

    #[test]
    fn text_form_and_levels() {
        let line = LogLine::new(Level::Debug, "hello")
            .field("port", 109)
            .field("path", "/x");
        assert_eq!(line.to_text(), "hello port=109 path=\"/x\"");
        let levels = [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warning,
            Level::Error,
        ];
        let names: Vec<_> = levels.iter().map(|l| l.to_string()).collect();
        assert_eq!(names, ["trace", "debug", "info", "warning", "error"]);
        let prios: Vec<_> = levels.iter().map(|l| l.syslog_priority()).collect();
        assert_eq!(prios, [7, 7, 6, 4, 3]);
    }
}
