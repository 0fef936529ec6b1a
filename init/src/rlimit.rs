//! The open-file limit inherited by the agent and every container (docs/gcs-reference.md §6.1 step 3).
//!
//! This module owns `RLIMIT_NOFILE`: soft [`NOFILE_SOFT`], hard [`NOFILE_HARD`]. If the kernel refuses
//! the hard value (`EPERM`: it is above `fs.nr_open`, or the caller lacks `CAP_SYS_RESOURCE`), the
//! current hard limit is kept and the soft limit is capped by it.

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Soft `RLIMIT_NOFILE` (the `select(2)`-safe default programs expect).
pub const NOFILE_SOFT: u64 = 1024;

/// Hard `RLIMIT_NOFILE` (the kernel's default `fs.nr_open`).
pub const NOFILE_HARD: u64 = 1_048_576;

/// The limits in force after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// Soft limit set.
    pub soft: u64,
    /// Hard limit set.
    pub hard: u64,
    /// Whether the preferred hard limit was refused and the current one kept.
    pub fell_back: bool,
}

/// Why the limit could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// `setrlimit` failed with something other than `EPERM`.
    #[error("set RLIMIT_NOFILE to {soft}/{hard}")]
    Set {
        /// Soft limit requested.
        soft: u64,
        /// Hard limit requested.
        hard: u64,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Reading the current limit for the fallback failed.
    #[error("read RLIMIT_NOFILE")]
    Get(#[source] Errno),
}

/// Sets `RLIMIT_NOFILE` to 1024/1048576, falling back to the current hard maximum on `EPERM`.
pub fn raise_nofile() -> Result<NofileLimits, RlimitError> {
    apply(
        |soft, hard| setrlimit(Resource::RLIMIT_NOFILE, soft, hard),
        || getrlimit(Resource::RLIMIT_NOFILE).map(|(_, hard)| hard),
    )
}

/// The policy of [`raise_nofile`] over injectable `setrlimit`/hard-limit reads.
fn apply(
    mut set: impl FnMut(u64, u64) -> Result<(), Errno>,
    current_hard: impl FnOnce() -> Result<u64, Errno>,
) -> Result<NofileLimits, RlimitError> {
    match set(NOFILE_SOFT, NOFILE_HARD) {
        Ok(()) => {
            return Ok(NofileLimits {
                soft: NOFILE_SOFT,
                hard: NOFILE_HARD,
                fell_back: false,
            })
        }
        Err(Errno::EPERM) => {}
        Err(source) => {
            return Err(RlimitError::Set {
                soft: NOFILE_SOFT,
                hard: NOFILE_HARD,
                source,
            })
        }
    }
    let hard = current_hard().map_err(RlimitError::Get)?;
    let soft = NOFILE_SOFT.min(hard);
    set(soft, hard).map_err(|source| RlimitError::Set { soft, hard, source })?;
    Ok(NofileLimits {
        soft,
        hard,
        fell_back: true,
    })
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;

    use super::*;
    use crate::sandbox::{check, ctx, run_in_child};

    #[test]
    fn preferred_limits_when_allowed() {
        let mut calls = Vec::new();
        let got = apply(
            |s, h| {
                calls.push((s, h));
                Ok(())
            },
            || panic!("no fallback"),
        );
        assert_eq!(
            got.expect("ok"),
            NofileLimits {
                soft: 1024,
                hard: 1_048_576,
                fell_back: false
            }
        );
        assert_eq!(calls, vec![(1024, 1_048_576)]);
    }

    #[test]
    fn eperm_keeps_the_current_hard_limit() {
        for (hard, soft) in [(524_288, 1024), (512, 512)] {
            let mut calls = Vec::new();
            let got = apply(
                |s, h| {
                    calls.push((s, h));
                    if h > hard {
                        Err(Errno::EPERM)
                    } else {
                        Ok(())
                    }
                },
                || Ok(hard),
            );
            assert_eq!(
                got.expect("ok"),
                NofileLimits {
                    soft,
                    hard,
                    fell_back: true
                }
            );
            assert_eq!(calls, vec![(1024, 1_048_576), (soft, hard)]);
        }
    }

    #[test]
    fn other_errors_are_reported() {
        let got = apply(|_, _| Err(Errno::EINVAL), || Ok(0));
        assert!(matches!(
            got,
            Err(RlimitError::Set {
                source: Errno::EINVAL,
                ..
            })
        ));
        let got = apply(|_, _| Err(Errno::EPERM), || Err(Errno::EFAULT));
        assert!(matches!(got, Err(RlimitError::Get(Errno::EFAULT))));
    }

    #[test]
    fn real_setrlimit_in_a_child() {
        // A forked child, so the test process's own limits are untouched.
        run_in_child(CloneFlags::empty(), || {
            let set = ctx(raise_nofile(), "raise_nofile")?;
            let (soft, hard) = ctx(getrlimit(Resource::RLIMIT_NOFILE), "getrlimit")?;
            check((soft, hard) == (set.soft, set.hard), || {
                format!("kernel has {soft}/{hard}, set {set:?}")
            })
        });
    }
}
