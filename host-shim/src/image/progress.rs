//! Import progress: a trait the importer reports to, a no-op and a terminal bar.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives import progress. All methods default to doing nothing.
pub trait Progress: Sync {
    /// The import starts: `layers` layers, `total_bytes` of blobs to read (cached layers excluded).
    fn start(&self, _layers: usize, _total_bytes: u64) {}
    /// Layer `index` (0-based) starts; `cached` layers are not read.
    fn layer(&self, _index: usize, _digest: &str, _cached: bool) {}
    /// `bytes` more blob bytes were read.
    fn advance(&self, _bytes: u64) {}
    /// The import ended.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

#[derive(Debug, Default)]
struct BarState {
    layers: usize,
    layer: usize,
    total: u64,
    done: u64,
    drawn: Option<Instant>,
    started: Option<Instant>,
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal (at most 10×/s).
#[derive(Debug, Default)]
pub struct TerminalProgress {
    state: Mutex<BarState>,
    enabled: bool,
}

impl TerminalProgress {
    /// A bar that draws if stderr is a terminal.
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn draw(&self, s: &mut BarState, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && s.drawn.is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        s.drawn = Some(now);
        let frac = if s.total == 0 {
            1.0
        } else {
            s.done as f64 / s.total as f64
        };
        let width = 30usize;
        // cast: `frac` is in [0, 1] (a non-negative ratio, capped), so the product is in
        // [0, width] and truncates to a valid bar length.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let fill = ((frac.min(1.0)) * width as f64) as usize;
        let secs = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-3);
        let line = format!(
            "\r[{}{}] {:>3.0}% layer {}/{} {:.1}/{:.1} MB {:.1} MB/s",
            "#".repeat(fill),
            " ".repeat(width - fill),
            frac * 100.0,
            s.layer,
            s.layers,
            s.done as f64 / 1e6,
            s.total as f64 / 1e6,
            s.done as f64 / 1e6 / secs,
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }

    fn with(&self, f: impl FnOnce(&mut BarState) -> bool) {
        if let Ok(mut s) = self.state.lock() {
            let force = f(&mut s);
            self.draw(&mut s, force);
        }
    }
}

impl Progress for TerminalProgress {
    fn start(&self, layers: usize, total_bytes: u64) {
        self.with(|s| {
            s.layers = layers;
            s.total = total_bytes;
            s.started = Some(Instant::now());
            true
        });
    }

    fn layer(&self, index: usize, _digest: &str, _cached: bool) {
        self.with(|s| {
            s.layer = index + 1;
            true
        });
    }

    fn advance(&self, bytes: u64) {
        self.with(|s| {
            s.done += bytes;
            false
        });
    }

    fn finish(&self) {
        self.with(|s| {
            s.done = s.total;
            true
        });
        if self.enabled {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// A reader that reports the bytes it reads.
pub struct ProgressReader<'p, R> {
    /// The wrapped reader.
    pub inner: R,
    /// Where to report.
    pub progress: &'p dyn Progress,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
