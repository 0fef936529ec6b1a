//! The boot-relative clock (`CLOCK_BOOTTIME`) used to time init's steps and to tell the agent when
//! init started.
//!
//! This module owns clock reads and the conversions used in log fields. It must not format wall-clock
//! time; that lives in [`crate::log`].

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Time since the kernel booted, including time spent suspended (`CLOCK_BOOTTIME`).
///
/// `CLOCK_BOOTTIME` exists on every kernel this agent supports (Linux ≥ 2.6.39), so the call cannot
/// fail in practice; if it ever does, this returns [`Duration::ZERO`] rather than panicking in PID 1.
pub fn boottime() -> Duration {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
            Duration::new(secs, nanos)
        }
        Err(_) => Duration::ZERO,
    }
}

/// `d` in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn as_nanos_u64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` in milliseconds as a float rounded to whole microseconds, the unit of every `duration_ms` log
/// field.
pub fn as_millis_f64(d: Duration) -> f64 {
    // Whole microseconds fit an f64 exactly for any realistic duration (< 285 years).
    let micros = d.as_micros() as f64;
    micros / 1000.0
}

/// The time elapsed on the boot clock since `start` (a value returned earlier by [`boottime`]).
pub fn since(start: Duration) -> Duration {
    boottime().saturating_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_is_positive_and_monotonic() {
        let a = boottime();
        let b = boottime();
        assert!(a > Duration::ZERO);
        assert!(b >= a);
        assert!(since(a) >= b - a);
    }

    #[test]
    fn millis_are_rounded_to_microseconds() {
        assert_eq!(as_millis_f64(Duration::from_nanos(1_234_567)), 1.234);
        assert_eq!(as_millis_f64(Duration::from_secs(2)), 2000.0);
        assert_eq!(as_millis_f64(Duration::ZERO), 0.0);
    }

    #[test]
    fn nanos_saturate() {
        assert_eq!(as_nanos_u64(Duration::from_nanos(42)), 42);
        assert_eq!(as_nanos_u64(Duration::MAX), u64::MAX);
    }
}
