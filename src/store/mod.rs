//! The durable message queue: the [`Store`] trait, its contract, and its
//! backends.
//!
//! Owns: keeping messages and their delivery history across crashes.
//! Leaves to others: deciding what to send when (the engine's scheduler),
//! sending (the sinks), validating producer input (ingest), clocks (every
//! method takes `now_ms`, unix milliseconds, from its caller).
//!
//! # The contract
//!
//! Every backend keeps these promises; the tests of each backend check them.
//!
//! 1. **Accept means durable.** When [`Store::accept`] answers `Ok` for a
//!    message, the message is on disk — its commit has been fsynced — and it
//!    survives `kill -9` of the process and a crash of the machine. An accept
//!    whose future is dropped before it answers may or may not have stored
//!    its messages; it has acknowledged nothing.
//! 2. **Nothing vanishes.** Every accepted message ends `Delivered` or
//!    `DeadLettered` (with a reason and all its attempts); until then it is
//!    `Pending` or `InFlight`. The only ways a record leaves the store are
//!    [`Store::cleanup`] (delivered records past their retention) and
//!    [`Store::purge_dead`] (an operator's explicit order).
//! 3. **At-least-once across crashes.** A message that was `InFlight` when the
//!    process died comes back as `Pending` on reopen. A message can therefore
//!    be sent twice, but only if it was in flight at the kill: duplicates are
//!    bounded by the number of messages in flight at that moment. Every state
//!    change a sink reports (`record_*`) is durable before it is answered.
//! 4. **Idempotency.** A second accept of the same idempotency key while the
//!    key lives (its time to live, counted from the first accept) returns the
//!    first message's id with `duplicate_of = true` and stores nothing, also
//!    when the two accepts race each other: one key, one message.
//! 5. **One transaction per change.** Every method that writes is atomic: all
//!    of its effect is visible, or none of it. Backends may commit several
//!    callers' changes together (group commit), never half of one.

#[cfg(test)]
pub(crate) mod contract;
pub mod embedded;
mod error;
mod lifecycle;
pub mod record;
pub mod redis;

use std::future::Future;
use std::time::Duration;

pub use embedded::{CommitCounts, EmbeddedOptions, EmbeddedStore};
pub use error::StoreError;
pub use record::{Attempt, ChatRef, MessageId, MessageState, NewMessage, StoredMessage};

/// The answer to one accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: MessageId,
    /// `true` when the idempotency key was already known: `id` is the first
    /// message's id and nothing new was stored.
    pub duplicate_of: bool,
}

/// Which dead letters an operation looks at. All set criteria must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only messages of this bot.
    pub bot: Option<String>,
    /// Only messages whose dead-letter reason contains this text.
    pub reason_contains: Option<String>,
    /// At most this many messages; `None` is no limit.
    pub limit: Option<usize>,
    /// Only messages with a larger id (paging: pass the last id seen).
    pub after: Option<MessageId>,
}

impl DeadFilter {
    pub fn matches(&self, m: &StoredMessage) -> bool {
        self.after.is_none_or(|after| m.id > after)
            && self.bot.as_ref().is_none_or(|bot| &m.msg.bot == bot)
            && self.reason_contains.as_ref().is_none_or(|text| {
                m.dead_reason
                    .as_deref()
                    .is_some_and(|reason| reason.contains(text.as_str()))
            })
    }
}

/// The dead letters an operator acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadSelection {
    One(MessageId),
    Filter(DeadFilter),
    All,
}

/// What a [`Store::cleanup`] pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupCounts {
    pub delivered_removed: u64,
    pub idempotency_removed: u64,
    /// The pass stopped at its size bound; call again to remove the rest.
    pub more: bool,
}

/// Queue sizes, for metrics and the degradation signals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages waiting (not in flight), indexed by `Priority::index()`.
    pub pending_by_priority: [u64; 4],
    pub in_flight: u64,
    pub dead: u64,
    /// Delivered messages not yet removed by `cleanup`.
    pub delivered_retained: u64,
}

impl StoreStats {
    /// Pending plus in flight: everything not yet finished.
    pub fn open_total(&self) -> u64 {
        self.pending_by_priority.iter().sum::<u64>() + self.in_flight
    }
}

/// A durable message queue. See the module documentation for the contract.
///
/// Transition rules: `mark_in_flight`, `record_delivered`, `record_retry` and
/// `record_dead_letter` accept a message that is `Pending` or `InFlight` and
/// answer [`StoreError::InvalidState`] otherwise — except that
/// `record_delivered` on a message already `Delivered` is a no-op `Ok`, so a
/// repeated report after a crash does no harm.
pub trait Store: Send + Sync {
    /// Stores a batch in one durable commit; one answer per message, in order.
    /// Per-message failures (e.g. a record over the size limit) fail only that
    /// message; a failed commit fails all of them.
    fn accept(
        &self,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> impl Future<Output = Vec<Result<Accepted, StoreError>>> + Send;

    /// Every message not yet `Delivered` or `DeadLettered`, oldest id first,
    /// for loading the scheduler at start. `InFlight` messages are reported
    /// as `Pending`: whoever had them was interrupted.
    fn pending(&self) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    fn get(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<StoredMessage>, StoreError>> + Send;

    /// A sink is about to send. Need not be durable, nor written at all: a
    /// message in flight at a crash is reported pending on reopen either
    /// way (promise 3). The embedded store keeps its marks in memory.
    fn mark_in_flight(
        &self,
        id: MessageId,
        tier: String,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The message arrived; `receipt` is the receiving API's answer. Appends an
    /// attempt with outcome `delivered`.
    fn record_delivered(
        &self,
        id: MessageId,
        tier: String,
        receipt: Option<serde_json::Value>,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The attempt failed and the message waits until `next_attempt_ms`.
    fn record_retry(
        &self,
        id: MessageId,
        attempt: Attempt,
        next_attempt_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The message will not be delivered; keeps `reason` and all attempts.
    fn record_dead_letter(
        &self,
        id: MessageId,
        attempt: Attempt,
        reason: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Points a waiting message at another chat (a group migrated to a
    /// supergroup). Only for `Pending` or `InFlight` messages.
    fn readdress(
        &self,
        id: MessageId,
        new_chat: ChatRef,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Dead letters matching `filter`, oldest id first.
    fn list_dead(
        &self,
        filter: DeadFilter,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    /// Puts the selected dead letters back to `Pending`, due at once, with
    /// their attempts kept and their reason cleared; answers their ids.
    fn retry_dead(
        &self,
        selection: DeadSelection,
    ) -> impl Future<Output = Result<Vec<MessageId>, StoreError>> + Send;

    /// Deletes the selected dead letters; answers how many. Their idempotency
    /// keys stay until they expire, so a producer's retry does not resurrect
    /// a purged message.
    fn purge_dead(
        &self,
        selection: DeadSelection,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes delivered messages delivered at least `delivered_retention`
    /// ago and idempotency keys first seen at least `idempotency_ttl` ago.
    /// Bounded per call (see [`CleanupCounts::more`]).
    fn cleanup(
        &self,
        now_ms: u64,
        delivered_retention: Duration,
        idempotency_ttl: Duration,
    ) -> impl Future<Output = Result<CleanupCounts, StoreError>> + Send;

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;
}
