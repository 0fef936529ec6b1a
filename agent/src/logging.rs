//! The agent's log output: one logrus-style JSON object per line on stderr, which PID 1 connected
//! to vsock port 109 (docs/gcs-reference.md §1.2): `{"time":…,"level":…,"msg":…, <fields>}`.
//!
//! Events are formatted on the emitting thread and handed to one writer thread through a bounded
//! queue. A host that stops reading the log port therefore never blocks a request handler: when
//! the queue is full, lines are dropped and counted, and the count is reported in the next line
//! that gets through (guest-triggered log floods are bounded, as in Firecracker's rate limiter).

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Lines buffered between the emitters and the writer thread.
const QUEUE_LINES: usize = 1024;

/// A duration as whole milliseconds for a log field (saturating; a `u128` never fits otherwise).
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Maps an hcsshim/logrus level name (or a tracing one) to a filter. Unknown names mean `info`.
pub fn level_filter(name: &str) -> LevelFilter {
    match name.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "fatal" | "panic" => LevelFilter::ERROR,
        "off" => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    }
}

/// The logrus level name of a tracing level.
fn logrus_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Installs the global subscriber writing JSON lines to stderr. Starts the writer thread: call it
/// after any fork that must happen while the process is single-threaded.
pub fn install(filter: LevelFilter) {
    let (tx, rx) = sync_channel::<String>(QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let stderr = std::io::stderr();
            for line in rx {
                let mut out = stderr.lock();
                // A broken log stream must not take the agent down; there is nowhere left to report.
                let _ = out.write_all(line.as_bytes());
            }
        });
    if let Some(pipe) = init_log_pipe() {
        relay_init_lines(pipe, tx.clone());
    }
    let sink = match spawned {
        Ok(_) => Sink::Queue {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        Err(_) => Sink::Direct,
    };
    let subscriber = tracing_subscriber::registry().with(JsonLines { sink }.with_filter(filter));
    // Only fails if a subscriber is already installed (tests): keep the existing one.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// PID 1's log pipe, if it gave us one (`RGCS_INIT_LOG_FD`).
fn init_log_pipe() -> Option<std::os::fd::OwnedFd> {
    let fd = std::env::var(rgcs_init::pid1::INIT_LOG_FD_ENV)
        .ok()?
        .parse()
        .ok()?;
    crate::sys::inherited::take(fd)
}

/// Longest line relayed from PID 1; longer ones are cut (init's lines are far shorter).
const MAX_INIT_LINE: usize = 16 * 1024;

/// Relays PID 1's lines (already JSON) into our queue while we own the log socket: one writer
/// per stream, so lines never interleave (see `rgcs_init::journal`).
fn relay_init_lines(pipe: std::os::fd::OwnedFd, tx: SyncSender<String>) {
    let spawned = std::thread::Builder::new()
        .name("init-log-relay".into())
        .spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(std::fs::File::from(pipe));
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_INIT_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line.last() != Some(&b'\n') {
                            // Too long: drop it whole; half a JSON object would stop the host's parser.
                            let mut rest = Vec::new();
                            let _ = reader.read_until(b'\n', &mut rest);
                            continue;
                        }
                        let _ = tx.try_send(String::from_utf8_lossy(&line).into_owned());
                    }
                }
            }
        });
    if let Err(e) = spawned {
        let _ = writeln!(std::io::stderr(), "cannot relay init's log lines: {e}");
    }
}

enum Sink {
    Queue {
        tx: SyncSender<String>,
        dropped: Arc<AtomicU64>,
    },
    Direct,
}

struct JsonLines {
    sink: Sink,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut map = fields.into_map(logrus_level(meta.level()), meta.target());
        match &self.sink {
            Sink::Queue { tx, dropped } => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    map.insert("dropped_lines".into(), lost.into());
                }
                let line = to_line(map);
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line) {
                    dropped.fetch_add(1 + lost, Ordering::Relaxed);
                }
            }
            Sink::Direct => {
                let _ = std::io::stderr().write_all(to_line(map).as_bytes());
            }
        }
    }
}

fn to_line(map: Map<String, Value>) -> String {
    let mut line = Value::Object(map).to_string();
    line.push('\n');
    line
}

/// Collects an event's fields; `message` becomes `msg`.
#[derive(Default)]
struct FieldVisitor {
    msg: String,
    fields: Vec<(String, Value)>,
}

impl FieldVisitor {
    fn into_map(self, level: &str, target: &str) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert(
            "time".into(),
            Value::String(rgcs_init::log::rfc3339_nano(std::time::SystemTime::now())),
        );
        map.insert("level".into(), Value::String(level.to_owned()));
        map.insert("msg".into(), Value::String(self.msg));
        if !target.starts_with("rgcs_agent") {
            map.insert("target".into(), Value::String(target.to_owned()));
        }
        for (k, v) in self.fields {
            // logrus' own keys win over fields with the same name
            if !map.contains_key(&k) {
                map.insert(k, v);
            }
        }
        map
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), Value::String(value.to_owned())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().to_owned(), value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().to_owned(), value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().to_owned(), value.into()));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name().to_owned(), value.into()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, once: "outer: cause: root".
        let text = rgcs_protocol::error_chain(value);
        self.fields.push((field.name().to_owned(), Value::String(text)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.fields.push((field.name().to_owned(), Value::String(text)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names() {
        assert_eq!(level_filter("warning"), LevelFilter::WARN);
        assert_eq!(level_filter("DEBUG"), LevelFilter::DEBUG);
        assert_eq!(level_filter("bogus"), LevelFilter::INFO);
        assert_eq!(logrus_level(&Level::WARN), "warning");
    }

    #[test]
    fn line_shape() {
        let v = FieldVisitor {
            msg: "hello \"x\"".into(),
            fields: vec![("msg".into(), 1.into()), ("n".into(), 2.into())],
        };
        let line = to_line(v.into_map("info", "rgcs_agent::bridge"));
        assert!(line.ends_with('\n'));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["level"], "info");
        assert_eq!(parsed["msg"], "hello \"x\"");
        assert_eq!(parsed["n"], 2);
        assert!(parsed.get("target").is_none());
        assert!(parsed["time"].as_str().unwrap().ends_with('Z'));
    }
}
