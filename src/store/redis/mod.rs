//! The Redis backend: one queue shared by several agents, partitioned by
//! chat, each partition delivered by one agent at a time.
//!
//! Owns: [`RedisStore`] — the [`crate::store::Store`] contract on a shared
//! Redis, partition leases with fencing tokens, and the per-partition feed
//! through which a partition's holder learns of messages any agent accepts.
//! Leaves to others: which partitions an agent takes, and the shared rate
//! limiter (`crate::fleet`), scheduling and sending (the agent).
//!
//! Invariants:
//! - A chat always maps to one partition ([`partition_of`], FNV-1a of
//!   the chat's canonical text), and a partition is delivered in accept
//!   sequence, so per-chat FIFO holds across agents. New ids grow with that
//!   sequence; an import from an agent's spill keeps its older id.
//! - Every change of more than one key is one Lua script (`lua/`), applied
//!   whole or not at all.
//! - A delivery-side write succeeds only while the writer holds its
//!   partition's lease with the token it names; a stale holder's writes
//!   fail with [`crate::store::StoreError::Fenced`] and change nothing.
//!
//! # Key layout
//!
//! Every key starts with the configured prefix and `:` (below: `P:`). Ids
//! are 32 lowercase hex digits (the UUIDv7's bits), so text order is id
//! order. Redis Cluster is not supported: the scripts derive key names.
//!
//! | key             | type        | holds                                             |
//! |-----------------|-------------|---------------------------------------------------|
//! | `P:layout`      | hash        | `version`, `partitions` — checked at connect      |
//! | `P:m:<id>`      | string      | `<version>:<partition>:<record bytes>` (`record.rs` encoding) |
//! | `P:o:<n>`       | sorted set  | open messages of partition n, scored by accept sequence |
//! | `P:s:<n>`       | stream      | feed of partition n: one entry (`i` = id) per accept or revival |
//! | `P:pm:<n>`      | hash        | partition n's accept sequence `seq` and `last` id |
//! | `P:l:<n>`       | hash        | lease of partition n: `owner`, `token`, `exp` (server ms) |
//! | `P:i:<key>`     | string      | idempotency key → id, expiring after its TTL      |
//! | `P:a:<id>`      | string      | a candidate id accept moved → the id it got, for 10 min |
//! | `P:dead`        | sorted set  | dead letters, all score 0 (ordered by id)         |
//! | `P:done`        | sorted set  | delivered messages, scored by delivery time (ms)  |
//! | `P:stats`       | hash        | counters: `pending.<priority>`, `in_flight`       |
//!
//! Durability is Redis's: see [`Durability`] and docs/decisions.md ("Redis
//! queue layout").

mod dead;
mod feed;
mod keys;
mod lease;
mod options;
mod queue;
mod reply;
mod rules;
mod scripts;
pub mod server;
mod settle;
mod store;
mod write;

pub use keys::partition_of;
pub use lease::HANDOVER_GRACE;
pub use options::{Durability, MAX_PARTITIONS, RedisOptions};
pub use queue::Imported;
pub use store::RedisStore;

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod tests;
