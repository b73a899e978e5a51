//! The delivery engine: every decision herald makes about a message, as pure
//! functions of their inputs and an injected clock.
//!
//! Owns: rate limiting (GCRA), circuit breaking, retry schedules, the error
//! taxonomy, bulkhead accounting, scheduling, tier selection, degradation,
//! health scoring and the canary's share of the queue partitions. Leaves to others: all I/O, all clocks, all randomness
//! sources (the agent, the Redis backend, the simulator and the sandbox pass
//! time in as [`Instant`] and randomness as [`SplitMix64`]).
//!
//! Invariant: nothing in this module reads a clock, touches the network or the
//! file system, spawns a task or depends on tokio or kube. Its hash maps
//! ([`FastMap`]) are seeded per process, and no decision depends on their
//! order.

pub mod breaker;
pub mod bulkhead;
pub mod clock;
pub mod degradation;
pub mod dispatch;
pub mod health;
pub mod limiter;
pub mod partition;
pub mod priority;
pub mod retry;
pub mod rng;
pub mod scheduler;
pub mod selector;
pub mod taxonomy;

/// The engine's hash maps: std's table with foldhash instead of SipHash,
/// seeded per process like std's (chat ids come from users, so a fixed
/// seed would let anyone pick colliding ones). Nothing decides by their
/// iteration order. SipHash was the largest single cost of a dispatch
/// decision; see docs/decisions.md.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use clock::Instant;
pub use priority::Priority;
pub use rng::SplitMix64;
