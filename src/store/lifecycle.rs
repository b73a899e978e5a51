//! The message life cycle as pure functions over records: which change is
//! allowed from which state, and the whole record after it.
//!
//! Owns the rules both backends keep: the embedded store applies them
//! inside its write transaction (`transitions.rs`), the Redis store before
//! its scripts write the result under a version check and the lease's
//! fence (`redis/rules.rs`; the Lua never parses a record). Leaves to the
//! backends: reading and writing, indexes and counters, and where an
//! in-flight mark lives (the embedded store keeps it in memory).
//!
//! ```text
//!   accept ─▶ Pending ◀──────── retry / readdress ───┐
//!                │  ▲ interrupted (the sender is gone) │
//!     mark in    ▼  │                                  │
//!     flight ─▶ InFlight ──────────────────────────────┘
//!                │         │
//!     delivered  ▼         ▼ dead-letter
//!            Delivered   DeadLettered ── retry_dead ─▶ Pending
//!                              └── purge ─▶ (removed)
//! ```
//!
//! Invariant: a rule either refuses with [`StoreError::InvalidState`]
//! (nothing to write) or answers the new record; a repeated delivery report
//! answers that nothing changes.

use super::StoreError;
use super::record::{Attempt, ChatRef, MessageState, StoredMessage};

/// Refuses `op` on a message that is no longer open (delivered or
/// dead-lettered).
pub(super) fn require_open(m: &StoredMessage, op: &'static str) -> Result<(), StoreError> {
    if m.state.is_open() {
        Ok(())
    } else {
        Err(StoreError::InvalidState {
            id: m.id,
            state: m.state,
            op,
        })
    }
}

/// Refuses a dead-letter operation on a message that is not one.
pub(super) fn require_dead(m: &StoredMessage) -> Result<(), StoreError> {
    if m.state == MessageState::DeadLettered {
        Ok(())
    } else {
        Err(StoreError::InvalidState {
            id: m.id,
            state: m.state,
            op: "act on it as a dead letter",
        })
    }
}

/// A send of an open message begins through `tier`.
pub(super) fn mark_in_flight(
    m: &StoredMessage,
    tier: &str,
    now_ms: u64,
) -> Result<StoredMessage, StoreError> {
    require_open(m, "mark in flight")?;
    let mut new = m.clone();
    new.state = MessageState::InFlight;
    new.in_flight_tier = Some(tier.to_owned());
    new.updated_ms = now_ms;
    Ok(new)
}

/// `tier` delivered the message. `None`: it was delivered already, nothing
/// changes (a repeated report, after a crash say).
pub(super) fn record_delivered(
    m: &StoredMessage,
    tier: &str,
    receipt: &Option<serde_json::Value>,
    now_ms: u64,
) -> Result<Option<StoredMessage>, StoreError> {
    if m.state == MessageState::Delivered {
        return Ok(None);
    }
    require_open(m, "record delivery")?;
    let mut new = m.clone();
    new.state = MessageState::Delivered;
    new.attempts.push(Attempt {
        at_ms: now_ms,
        tier: tier.to_owned(),
        outcome: "delivered".into(),
        error: None,
    });
    new.delivered_tier = Some(tier.to_owned());
    new.in_flight_tier = None;
    new.next_attempt_ms = None;
    new.receipt = receipt.clone();
    new.updated_ms = now_ms;
    Ok(Some(new))
}

/// An attempt failed; the message waits until `next_attempt_ms`.
pub(super) fn record_retry(
    m: &StoredMessage,
    attempt: &Attempt,
    next_attempt_ms: u64,
) -> Result<StoredMessage, StoreError> {
    require_open(m, "schedule a retry")?;
    let mut new = m.clone();
    new.state = MessageState::Pending;
    new.updated_ms = new.updated_ms.max(attempt.at_ms);
    new.attempts.push(attempt.clone());
    new.in_flight_tier = None;
    new.next_attempt_ms = Some(next_attempt_ms);
    Ok(new)
}

/// The last attempt ends the message's life as a dead letter.
pub(super) fn record_dead_letter(
    m: &StoredMessage,
    attempt: &Attempt,
    reason: &str,
) -> Result<StoredMessage, StoreError> {
    require_open(m, "dead-letter")?;
    let mut new = m.clone();
    new.state = MessageState::DeadLettered;
    new.updated_ms = new.updated_ms.max(attempt.at_ms);
    new.attempts.push(attempt.clone());
    new.in_flight_tier = None;
    new.next_attempt_ms = None;
    new.dead_reason = Some(reason.to_owned());
    Ok(new)
}

/// The chat moved (a group became a supergroup): same message, new chat.
pub(super) fn readdress(
    m: &StoredMessage,
    new_chat: &ChatRef,
) -> Result<StoredMessage, StoreError> {
    require_open(m, "readdress")?;
    let mut new = m.clone();
    new.msg.chat_id = new_chat.clone();
    Ok(new)
}

/// A dead letter goes back to the queue, its history kept.
pub(super) fn retry_dead(m: &StoredMessage) -> Result<StoredMessage, StoreError> {
    require_dead(m)?;
    let mut new = m.clone();
    new.state = MessageState::Pending;
    new.dead_reason = None;
    new.next_attempt_ms = None;
    Ok(new)
}

/// An in-flight message whose sender is gone (a restart, a lease that
/// changed hands) is pending again; `None` for a message not in flight.
pub(super) fn requeue_interrupted(m: &StoredMessage) -> Option<StoredMessage> {
    (m.state == MessageState::InFlight).then(|| {
        let mut new = m.clone();
        new.state = MessageState::Pending;
        new.in_flight_tier = None;
        new
    })
}
