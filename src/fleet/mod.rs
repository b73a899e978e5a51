//! The agents of one tier sharing a Redis queue: who is alive, who delivers
//! which queue partition, one rate limit shared by all of them, and each
//! agent's task that keeps its partitions.
//!
//! Files:
//! - [`shared_limiter`]: the engine's GCRA in one Lua script per decision on
//!   Redis time, the shared 429 pause, batched decisions.
//! - [`membership`]: heartbeats and the live list, on the server's clock.
//! - [`assignment`]: rendezvous partition assignment with the canary's
//!   exact share (pure).
//! - [`link`]: the Redis link's state machine (pure).
//! - [`answer_delay`]: how late a shared slot may be for a slow round trip
//!   (pure).
//! - [`task`]: the [`Fleet`] handle and the partition task (heartbeat,
//!   rebalance, feed, hand-over on SIGTERM).
//!
//! Leaves to others: the queue and its leases (`store::redis`), what a
//! tier's limits come to while Redis answers or not (`policy::effective`),
//! scheduling and sending (the agent's dispatch loop, reached through the
//! [`Dispatch`] trait, so nothing here imports the agent).

pub mod answer_delay;
pub mod assignment;
pub mod link;
pub mod membership;
pub mod shared_limiter;
pub mod task;

pub use task::{Dispatch, Fleet, FleetOptions, agent_id};
