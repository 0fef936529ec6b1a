//! The guest log stream (vsock port 109): logrus JSON lines `{time, level, msg, ...fields}`,
//! re-emitted as host `tracing` events with `source = "guest"`, published on a broadcast
//! channel, and kept (the last N) for tests to assert on.
//!
//! Lines are bounded ([`MAX_LINE_LEN`]); a longer line is truncated and the rest skipped. A
//! line that is not a JSON object (a Go panic dump, say) is logged raw. A missing level means
//! info; `fatal` and `panic` map to error (docs/gcs-reference.md §1.2).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

use rgcs_client::vsock::VsockListener;

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Default number of records kept for [`GuestLogs::snapshot`].
pub const DEFAULT_LOG_CAPACITY: usize = 1000;

/// Level of a guest record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuestLevel {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info` (also a missing or unknown level).
    Info,
    /// `warning` / `warn`.
    Warn,
    /// `error`, `fatal`, `panic`.
    Error,
}

impl GuestLevel {
    fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "warning" | "warn" => Self::Warn,
            "error" | "fatal" | "panic" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// One guest log record.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestLogRecord {
    /// The guest's `time` field, as sent.
    pub time: Option<String>,
    /// Mapped level.
    pub level: GuestLevel,
    /// The message (the whole line for a raw record).
    pub msg: String,
    /// Every other field.
    pub fields: Map<String, Value>,
    /// The line was not a JSON object.
    pub raw: bool,
    /// The line was longer than [`MAX_LINE_LEN`] and was cut.
    pub truncated: bool,
}

impl GuestLogRecord {
    /// Parses one line.
    pub fn parse(line: &str) -> Self {
        let line = line.trim_end_matches(['\r', '\n']);
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut fields)) => {
                let time = match fields.remove("time") {
                    Some(Value::String(s)) => Some(s),
                    Some(other) => Some(other.to_string()),
                    None => None,
                };
                let level = match fields.remove("level") {
                    Some(Value::String(s)) => GuestLevel::parse(&s),
                    _ => GuestLevel::Info,
                };
                let msg = match fields.remove("msg") {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                Self {
                    time,
                    level,
                    msg,
                    fields,
                    raw: false,
                    truncated: false,
                }
            }
            _ => Self {
                time: None,
                level: GuestLevel::Info,
                msg: line.to_owned(),
                fields: Map::new(),
                raw: true,
                truncated: false,
            },
        }
    }

    /// Re-emits the record as a host `tracing` event.
    pub fn emit(&self) {
        let time = self.time.as_deref().unwrap_or("");
        let fields = Value::Object(self.fields.clone());
        macro_rules! ev {
            ($lvl:expr) => {
                tracing::event!(
                    $lvl,
                    source = "guest",
                    guest_time = time,
                    fields = %fields,
                    raw = self.raw,
                    truncated = self.truncated,
                    "{}",
                    self.msg
                )
            };
        }
        match self.level {
            GuestLevel::Trace => ev!(tracing::Level::TRACE),
            GuestLevel::Debug => ev!(tracing::Level::DEBUG),
            GuestLevel::Info => ev!(tracing::Level::INFO),
            GuestLevel::Warn => ev!(tracing::Level::WARN),
            GuestLevel::Error => ev!(tracing::Level::ERROR),
        }
    }
}

/// Guest lines re-emitted as host events per second at most; the rest are kept and broadcast but
/// only counted in the host log (a guest can write as fast as it likes; the host log must not
/// drown: STYLE's rule for guest-triggered log paths).
pub const MAX_EMITTED_PER_SEC: u32 = 200;

#[derive(Debug)]
struct RateLimit {
    window: std::time::Instant,
    emitted: u32,
    suppressed: u64,
}

impl RateLimit {
    /// Whether to emit now; reports lines suppressed in the previous window when one ends.
    fn admit(&mut self, now: std::time::Instant) -> (bool, u64) {
        let mut reported = 0;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            reported = std::mem::take(&mut self.suppressed);
            self.window = now;
            self.emitted = 0;
        }
        if self.emitted < MAX_EMITTED_PER_SEC {
            self.emitted += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

#[derive(Debug)]
struct Shared {
    tx: broadcast::Sender<GuestLogRecord>,
    recent: Mutex<VecDeque<GuestLogRecord>>,
    limit: Mutex<RateLimit>,
    capacity: usize,
}

/// Handle on the guest's log records: subscribe to new ones or take a snapshot of the last N.
#[derive(Debug, Clone)]
pub struct GuestLogs {
    shared: Arc<Shared>,
}

impl GuestLogs {
    /// Keeps the last `capacity` records.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self {
            shared: Arc::new(Shared {
                tx,
                recent: Mutex::new(VecDeque::new()),
                limit: Mutex::new(RateLimit {
                    window: std::time::Instant::now(),
                    emitted: 0,
                    suppressed: 0,
                }),
                capacity,
            }),
        }
    }

    /// Records published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<GuestLogRecord> {
        self.shared.tx.subscribe()
    }

    /// The last records, oldest first.
    pub fn snapshot(&self) -> Vec<GuestLogRecord> {
        self.shared
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Waits until a record (already kept or new) matches `pred`, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&GuestLogRecord) -> bool,
    ) -> Option<GuestLogRecord> {
        let mut rx = self.subscribe();
        if let Some(r) = self.snapshot().into_iter().find(|r| pred(r)) {
            return Some(r);
        }
        let fut = async {
            loop {
                match rx.recv().await {
                    Ok(r) if pred(&r) => return Some(r),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// Emits (rate-limited), keeps and broadcasts one record.
    pub fn publish(&self, record: GuestLogRecord) {
        let (emit, suppressed) = self
            .shared
            .limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(std::time::Instant::now());
        if suppressed > 0 {
            tracing::warn!(
                source = "guest",
                suppressed,
                "guest log lines not re-emitted (rate limit)"
            );
        }
        if emit {
            record.emit();
        }
        {
            let mut recent = self.shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= self.shared.capacity {
                recent.pop_front();
            }
            if self.shared.capacity > 0 {
                recent.push_back(record.clone());
            }
        }
        // No subscribers is fine.
        let _ = self.shared.tx.send(record);
    }

    /// Reads lines from one connection until EOF or an error.
    pub async fn consume<R: AsyncRead + Unpin>(&self, stream: R) {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::with_capacity(1024);
        loop {
            match read_bounded_line(&mut reader, &mut buf, MAX_LINE_LEN).await {
                Ok(Some(truncated)) => {
                    let mut record = GuestLogRecord::parse(&String::from_utf8_lossy(&buf));
                    record.truncated = truncated;
                    self.publish(record);
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "guest log stream failed");
                    return;
                }
            }
        }
    }

    /// Serves the log port: every connection (the guest relay may reconnect) is read to EOF.
    pub async fn serve(self, listener: VsockListener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let logs = self.clone();
                    tokio::spawn(async move { logs.consume(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "guest log listener failed");
                    return;
                }
            }
        }
    }
}

/// Reads one `\n`-terminated line into `buf` (without the newline), keeping at most `max`
/// bytes. Returns `None` at EOF with nothing read, else whether the line was truncated.
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut truncated = false;
    let mut any = false;
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            return Ok(any.then_some(truncated));
        }
        any = true;
        let (line, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if line.len() > room {
            truncated = true;
        }
        buf.extend_from_slice(&line[..line.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(truncated));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_logrus_json() {
        let r = GuestLogRecord::parse(
            r#"{"time":"2026-11-22T10:00:00.1Z","level":"warning","msg":"hello","cid":"abc","n":3}"#,
        );
        assert_eq!(r.level, GuestLevel::Warn);
        assert_eq!(r.msg, "hello");
        assert_eq!(r.time.as_deref(), Some("2026-11-22T10:00:00.1Z"));
        assert_eq!(r.fields["cid"], "abc");
        assert_eq!(r.fields["n"], 3);
        assert!(!r.raw);
        assert_eq!(GuestLogRecord::parse(r#"{"msg":"x"}"#).level, GuestLevel::Info);
        assert_eq!(
            GuestLogRecord::parse(r#"{"level":"fatal","msg":"x"}"#).level,
            GuestLevel::Error
        );
        assert_eq!(
            GuestLogRecord::parse(r#"{"level":"panic"}"#).level,
            GuestLevel::Error
        );
        let raw = GuestLogRecord::parse("goroutine 1 [running]:\r\n");
        assert!(raw.raw);
        assert_eq!(raw.msg, "goroutine 1 [running]:");
        assert!(GuestLogRecord::parse("42").raw);
    }

    #[tokio::test]
    async fn consumes_a_stream_with_bounded_lines() {
        let logs = GuestLogs::new(3);
        let mut rx = logs.subscribe();
        let long = "x".repeat(MAX_LINE_LEN + 10);
        let input = format!(
            "{{\"level\":\"info\",\"msg\":\"one\"}}\nnot json\n{long}\n{{\"level\":\"error\",\"msg\":\"four\"}}\ntail"
        );
        logs.consume(input.as_bytes()).await;
        let first = rx.recv().await.unwrap();
        assert_eq!(first.msg, "one");
        let snap = logs.snapshot();
        // Capacity 3: "one" fell out.
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].msg.len(), MAX_LINE_LEN);
        assert!(snap[0].truncated && snap[0].raw);
        assert_eq!((snap[1].msg.as_str(), snap[1].level), ("four", GuestLevel::Error));
        assert_eq!(snap[2].msg, "tail");
        let found = logs
            .wait_for(Duration::from_millis(10), |r| r.msg == "four")
            .await;
        assert!(found.is_some());
        assert!(logs
            .wait_for(Duration::from_millis(10), |r| r.msg == "absent")
            .await
            .is_none());
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn rate_limit_admits_a_window_then_counts() {
        let t0 = Instant::now();
        let mut rl = RateLimit {
            window: t0,
            emitted: 0,
            suppressed: 0,
        };
        for _ in 0..MAX_EMITTED_PER_SEC {
            assert_eq!(rl.admit(t0), (true, 0));
        }
        assert_eq!(rl.admit(t0), (false, 0));
        assert_eq!(rl.admit(t0), (false, 0));
        // next window: the two suppressed lines are reported once
        assert_eq!(rl.admit(t0 + Duration::from_secs(1)), (true, 2));
        assert_eq!(rl.admit(t0 + Duration::from_secs(1)), (true, 0));
    }

    #[tokio::test]
    async fn flood_is_kept_and_broadcast_but_bounded() {
        let logs = GuestLogs::new(10);
        for i in 0..1000 {
            logs.publish(GuestLogRecord::parse(&format!(
                r#"{{"level":"info","msg":"m{i}"}}"#
            )));
        }
        let snap = logs.snapshot();
        assert_eq!(snap.len(), 10);
        assert_eq!(snap.last().map(|r| r.msg.as_str()), Some("m999"));
    }
}
