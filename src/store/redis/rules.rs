//! The message life cycle for the Redis queue: the shared rules of
//! `store/lifecycle.rs`, and how each change moves the message between the
//! queue's indexes and counters.
//!
//! Owns: the [`Move`] and counter slot of each change, decided in Rust so
//! that the Lua scripts never parse a record (Lua's JSON numbers are
//! doubles; chat ids and parameters are not). Leaves to others: which
//! change is allowed and what the new record is (`lifecycle`, the same
//! rules the embedded store keeps), reading the record and writing the
//! result atomically with a version check and the fence (`write.rs`,
//! `transition.lua`).
//!
//! Invariant: a rule either refuses (nothing to write) or answers the whole
//! new record and its [`Move`]; counters are named by [`slot_of`], so an
//! index move and its counter change can never disagree.

use crate::engine::Priority;
use crate::store::StoreError;
use crate::store::lifecycle;
use crate::store::record::{Attempt, ChatRef, MessageState, StoredMessage};

/// How a written message moves between the queue's indexes; the names are
/// the `move` argument of `transition.lua`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// Open before and after (pending ↔ in flight, readdress).
    Stay,
    /// Open → delivered (the delivered index, scored by delivery time).
    Done,
    /// Open → dead letter.
    Dead,
    /// Dead letter → open, at the back of its partition, announced on the
    /// partition's feed.
    Revive,
    /// Dead letter → removed.
    Purge,
}

impl Move {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Move::Stay => "stay",
            Move::Done => "done",
            Move::Dead => "dead",
            Move::Revive => "revive",
            Move::Purge => "purge",
        }
    }
}

/// A change one rule decided.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Change {
    /// The record to write; `None` when the message is removed.
    pub new: Option<StoredMessage>,
    pub moved: Move,
    /// The delivered index's score (delivery time, ms) for [`Move::Done`].
    pub score_ms: u64,
}

impl Change {
    fn stay(new: StoredMessage) -> Self {
        Change {
            new: Some(new),
            moved: Move::Stay,
            score_ms: 0,
        }
    }
}

/// The stats counter a message in this state counts in; `None` for states
/// counted by the size of their index instead (dead, delivered).
pub(super) fn slot_of(state: MessageState, priority: Priority) -> Option<&'static str> {
    match state {
        MessageState::Pending => Some(match priority {
            Priority::Critical => "pending.critical",
            Priority::High => "pending.high",
            Priority::Normal => "pending.normal",
            Priority::Low => "pending.low",
        }),
        MessageState::InFlight => Some("in_flight"),
        MessageState::DeadLettered | MessageState::Delivered => None,
    }
}

/// Every counter [`slot_of`] can name, in `StoreStats` order: four pending
/// classes by `Priority::index()`, then in flight.
pub(super) const SLOTS: [&str; 5] = [
    "pending.critical",
    "pending.high",
    "pending.normal",
    "pending.low",
    "in_flight",
];

pub(super) fn mark_in_flight(
    m: &StoredMessage,
    tier: &str,
    now_ms: u64,
) -> Result<Change, StoreError> {
    lifecycle::mark_in_flight(m, tier, now_ms).map(Change::stay)
}

/// `None`: already delivered, nothing to write (a repeated report).
pub(super) fn record_delivered(
    m: &StoredMessage,
    tier: &str,
    receipt: &Option<serde_json::Value>,
    now_ms: u64,
) -> Result<Option<Change>, StoreError> {
    Ok(
        lifecycle::record_delivered(m, tier, receipt, now_ms)?.map(|new| Change {
            new: Some(new),
            moved: Move::Done,
            score_ms: now_ms,
        }),
    )
}

pub(super) fn record_retry(
    m: &StoredMessage,
    attempt: &Attempt,
    next_attempt_ms: u64,
) -> Result<Change, StoreError> {
    lifecycle::record_retry(m, attempt, next_attempt_ms).map(Change::stay)
}

pub(super) fn record_dead_letter(
    m: &StoredMessage,
    attempt: &Attempt,
    reason: &str,
) -> Result<Change, StoreError> {
    Ok(Change {
        new: Some(lifecycle::record_dead_letter(m, attempt, reason)?),
        moved: Move::Dead,
        score_ms: 0,
    })
}

pub(super) fn readdress(m: &StoredMessage, new_chat: &ChatRef) -> Result<Change, StoreError> {
    lifecycle::readdress(m, new_chat).map(Change::stay)
}

/// An in-flight message whose sender is gone (the lease changed hands)
/// becomes pending again; `None` for a message that is not in flight.
pub(super) fn requeue_interrupted(m: &StoredMessage) -> Option<Change> {
    lifecycle::requeue_interrupted(m).map(Change::stay)
}

pub(super) fn retry_dead(m: &StoredMessage) -> Result<Change, StoreError> {
    Ok(Change {
        new: Some(lifecycle::retry_dead(m)?),
        moved: Move::Revive,
        score_ms: 0,
    })
}

pub(super) fn purge_dead(m: &StoredMessage) -> Result<Change, StoreError> {
    lifecycle::require_dead(m)?;
    Ok(Change {
        new: None,
        moved: Move::Purge,
        score_ms: 0,
    })
}

/// How a loaded message is shown to a new holder: in-flight is pending,
/// because whoever had it in flight was interrupted.
pub(super) fn as_loaded(m: StoredMessage) -> StoredMessage {
    lifecycle::requeue_interrupted(&m).unwrap_or(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::MessageId;
    use crate::store::record::tests::sample_new;

    fn stored(state: MessageState) -> StoredMessage {
        StoredMessage {
            id: MessageId::generate(),
            msg: sample_new(1),
            state,
            attempts: Vec::new(),
            created_ms: 10,
            updated_ms: 10,
            next_attempt_ms: Some(10),
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: None,
        }
    }

    fn attempt(at_ms: u64) -> Attempt {
        Attempt {
            at_ms,
            tier: "primary".into(),
            outcome: "transient".into(),
            error: Some("503".into()),
        }
    }

    #[test]
    fn open_messages_move_through_their_life() {
        let m = stored(MessageState::Pending);
        let c = mark_in_flight(&m, "primary", 20).unwrap();
        let flying = c.new.unwrap();
        assert_eq!(flying.state, MessageState::InFlight);
        assert_eq!(flying.in_flight_tier.as_deref(), Some("primary"));
        assert_eq!(c.moved, Move::Stay);

        let c = record_retry(&flying, &attempt(30), 500).unwrap();
        let waiting = c.new.unwrap();
        assert_eq!(waiting.state, MessageState::Pending);
        assert_eq!(waiting.next_attempt_ms, Some(500));
        assert_eq!(waiting.attempts, vec![attempt(30)]);
        assert_eq!(waiting.updated_ms, 30);
        assert_eq!(waiting.in_flight_tier, None);

        let c = record_delivered(&waiting, "backup", &None, 40)
            .unwrap()
            .unwrap();
        assert_eq!(c.moved, Move::Done);
        assert_eq!(c.score_ms, 40);
        let done = c.new.unwrap();
        assert_eq!(done.state, MessageState::Delivered);
        assert_eq!(done.attempts.len(), 2);
        assert_eq!(done.attempts[1].outcome, "delivered");
        assert_eq!(done.delivered_tier.as_deref(), Some("backup"));
        assert_eq!(record_delivered(&done, "x", &None, 50), Ok(None));
    }

    #[test]
    fn finished_messages_refuse_and_dead_letters_come_back() {
        let m = stored(MessageState::InFlight);
        let dead = record_dead_letter(&m, &attempt(20), "bad request")
            .unwrap()
            .new
            .unwrap();
        assert_eq!(dead.dead_reason.as_deref(), Some("bad request"));
        assert!(matches!(
            mark_in_flight(&dead, "p", 1),
            Err(StoreError::InvalidState {
                state: MessageState::DeadLettered,
                ..
            })
        ));
        assert!(record_retry(&dead, &attempt(1), 1).is_err());
        assert!(readdress(&dead, &ChatRef::Id(2)).is_err());
        assert!(record_delivered(&dead, "p", &None, 1).is_err());
        assert!(retry_dead(&m).is_err());

        let back = retry_dead(&dead).unwrap();
        assert_eq!(back.moved, Move::Revive);
        let back = back.new.unwrap();
        assert_eq!(back.state, MessageState::Pending);
        assert_eq!(back.dead_reason, None);
        assert_eq!(back.next_attempt_ms, None);
        assert_eq!(back.attempts.len(), 1);
        assert_eq!(purge_dead(&dead).unwrap().new, None);
    }

    #[test]
    fn interrupted_sends_come_back_as_pending() {
        let mut m = stored(MessageState::InFlight);
        m.in_flight_tier = Some("p".into());
        let back = requeue_interrupted(&m).unwrap().new.unwrap();
        assert_eq!(back.state, MessageState::Pending);
        assert_eq!(back.in_flight_tier, None);
        assert_eq!(as_loaded(m), back);
        assert_eq!(requeue_interrupted(&stored(MessageState::Pending)), None);
    }

    #[test]
    fn every_open_state_has_a_counter() {
        for p in Priority::ALL {
            assert_eq!(slot_of(MessageState::Pending, p), Some(SLOTS[p.index()]));
        }
        assert_eq!(
            slot_of(MessageState::InFlight, Priority::Low),
            Some(SLOTS[4])
        );
        assert_eq!(slot_of(MessageState::Delivered, Priority::Low), None);
    }
}
