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
//! file system, spawns a task or depends on tokio or kube.

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

pub use clock::Instant;
pub use priority::Priority;
pub use rng::SplitMix64;
