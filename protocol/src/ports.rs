//! The vsock ports of an LCOW utility VM (§1.1, §1.3). The guest dials all of them on the host
//! (CID 2); the host listens before the guest needs them.

/// The entropy seed: the host writes 512 random bytes and closes (§6.1 step 11).
pub const ENTROPY_PORT: u32 = 1;
/// The guest's log stream: logrus-style JSON lines (§1.2).
pub const LOG_PORT: u32 = 109;
/// The GCS bridge (§1.1).
pub const BRIDGE_PORT: u32 = 0x4000_0000;
/// The first port a host allocates for process stdio (§1.3); each stream gets its own port.
pub const FIRST_STDIO_PORT: u32 = 0x4000_0001;
/// The port of Plan 9 shares (`MappedDirectory`, §6.4).
pub const PLAN9_PORT: u32 = 564;
