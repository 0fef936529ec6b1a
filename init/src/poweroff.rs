//! The end of the utility VM: flush and power off (docs/uvm-notes.md §6 pitfall 14).
//!
//! This module owns the one way PID 1 stops. It never returns and never panics: if the kernel refuses
//! `reboot(RB_POWER_OFF)` (only possible without `CAP_SYS_BOOT`, i.e. not as PID 1), the process parks
//! in `pause()` forever rather than exiting, because PID 1 exiting panics the kernel.

use nix::sys::reboot::{reboot, RebootMode};
use nix::unistd::{pause, sync};

use crate::kmsg;
use crate::log::Level;

/// `sync()`, then `reboot(RB_POWER_OFF)`; if that returns, loops on `pause()`.
pub fn power_off() -> ! {
    kmsg::log(Level::Info, "powering off");
    sync();
    // `reboot` only returns on failure (its success type is uninhabited).
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    kmsg::log(
        Level::Error,
        &format!("reboot(RB_POWER_OFF) failed: {e}; halting in pause()"),
    );
    loop {
        pause();
    }
}
