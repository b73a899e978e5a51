//! The wall clock, read by the I/O shells (agent, fleet, sinks): unix
//! milliseconds, the unit the store records and the wire carries.
//!
//! Leaves to others: time inside decisions. The engine never reads a clock;
//! its `Instant` is injected, so simulations and tests can drive it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now; 0 for a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
