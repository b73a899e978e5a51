//! The values that cross the dispatcher's boundary: messages in, send orders
//! and verdicts out, events and snapshots for logs and metrics.
//!
//! Owns the vocabulary only; the decisions live in the sibling files.
//! Invariant: nothing here holds message payloads or secrets — ids, chat
//! ids, priorities, fixed reason labels and numbers only.

use std::fmt;
use std::time::Duration;

use crate::engine::breaker::{BreakerState, Transition};
use crate::engine::degradation::{Level, LevelChange};
use crate::engine::retry::GiveUpReason;
use crate::engine::taxonomy::Class;
use crate::engine::{Instant, Priority};

use super::config::Sink;

/// An interned message type (see [`super::Dispatcher::message_type`]):
/// bulkheads and paused types are looked up by this small id instead of by
/// string on every decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageType(pub(crate) u16);

/// A message handed to the dispatcher: at ingest, or when pending messages
/// are reloaded from the store at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Chosen by the caller, unique among held messages (the agent maps its
    /// store keys to dense ids).
    pub id: u64,
    /// Telegram chat id; negative ids are groups and channels.
    pub chat: i64,
    pub priority: Priority,
    pub message_type: MessageType,
    pub enqueued_at: Instant,
    /// Not sent before this instant (scheduled send, or a reloaded retry).
    pub not_before: Option<Instant>,
    /// Attempts already made (0 for a new message).
    pub attempts_so_far: u32,
    pub first_attempt_at: Option<Instant>,
}

impl QueuedMessage {
    /// A new message with no history.
    pub fn new(
        id: u64,
        chat: i64,
        priority: Priority,
        message_type: MessageType,
        enqueued_at: Instant,
    ) -> Self {
        QueuedMessage {
            id,
            chat,
            priority,
            message_type,
            enqueued_at,
            not_before: None,
            attempts_so_far: 0,
            first_attempt_at: None,
        }
    }
}

/// One attempt to carry out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOrder {
    pub id: u64,
    /// Index into the configured tiers ([`super::Dispatcher::tier_name`]).
    pub tier: usize,
    /// Where to send; differs from the enqueued chat after a group migration.
    pub chat: i64,
    /// 1-based; 429s and readdresses do not use attempts up.
    pub attempt: u32,
    /// Give up on the attempt at this instant and report
    /// [`crate::engine::taxonomy::Outcome::Timeout`].
    pub deadline: Instant,
    /// The attempt is a half-open breaker probe: its verdict decides whether
    /// the tier comes back.
    pub probe: bool,
}

/// The answer to [`super::Dispatcher::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send this now, then report with [`super::Dispatcher::complete`].
    Send(SendOrder),
    /// Nothing can go now. Poll again at `wake_at`, or sooner after an
    /// `enqueue`, `complete`, `tick`, `reconfigure` or override; `None`: only
    /// one of those can make something eligible.
    Idle { wake_at: Option<Instant> },
}

/// What happened to a message after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done; forget the message.
    Delivered,
    /// Queued again, not eligible before this instant: a backoff, or a 429's
    /// `retry_after` (which pauses the whole tier and uses no attempt).
    RetryAt(Instant),
    /// Every tier the message could take failed it with the tier's own fault:
    /// queued again, not eligible before this instant, to wait out the
    /// outage on every tier (see `complete`'s hold). Store it like a retry.
    Held(Instant),
    /// Queued again at once for another tier; `to` is the tier it would take
    /// now. The tier it left is not used for this message again.
    FailedOver { to: usize },
    /// Give up: keep it with its reason in the dead-letter queue.
    DeadLetter { reason: DeadLetterReason },
    /// The group became a supergroup: queued again under `new_chat`, at the
    /// back of that chat, using no attempt. Update the stored chat id.
    Readdressed { new_chat: i64 },
}

/// Why a message was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The message itself was refused (400 bad request, another 4xx): no
    /// tier would take it. `reason` is the taxonomy's label.
    Refused { reason: &'static str },
    /// No tier is left that could take it; `last` says why the last tier
    /// failed it.
    NoTierLeft { last: LastFailure },
    /// The message waited out outages until it reached the configured
    /// maximum age; `last` says how its last tier failed it.
    Expired { last: LastFailure },
}

/// The last tier's failure behind [`DeadLetterReason::NoTierLeft`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LastFailure {
    /// Retries used up (attempts or elapsed time) on a transient error.
    RetriesExhausted(GiveUpReason),
    /// The chat cannot be reached (blocked, not found) on any tier left.
    Unreachable { reason: &'static str },
    /// The tier failed in a way that makes it unusable for this message
    /// (TLS failure, bad token) and nothing else is left.
    TierFailed { reason: &'static str },
}

impl LastFailure {
    /// The tier failed the message with the tier's own fault (an outage, a
    /// TLS failure, a stopped tier), not the message's or the chat's: such
    /// a failure holds the message instead of dead-lettering it.
    pub const fn is_tier_fault(self) -> bool {
        matches!(
            self,
            LastFailure::RetriesExhausted(_) | LastFailure::TierFailed { .. }
        )
    }
}

impl DeadLetterReason {
    /// A fixed label for metrics and reports.
    pub const fn label(self) -> &'static str {
        match self {
            DeadLetterReason::Refused { reason } => reason,
            DeadLetterReason::NoTierLeft { last } => match last {
                LastFailure::RetriesExhausted(g) => g.as_str(),
                LastFailure::Unreachable { reason } | LastFailure::TierFailed { reason } => reason,
            },
            DeadLetterReason::Expired { .. } => "max_age",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::Refused { reason } => write!(f, "refused: {reason}"),
            DeadLetterReason::NoTierLeft { last } => match last {
                LastFailure::RetriesExhausted(GiveUpReason::MaxAttempts { attempts }) => {
                    write!(f, "no tier left: gave up after {attempts} attempts")
                }
                LastFailure::RetriesExhausted(GiveUpReason::MaxElapsed { next_at }) => write!(
                    f,
                    "no tier left: next retry would be {}s after the first attempt",
                    next_at.as_secs()
                ),
                LastFailure::Unreachable { reason } => {
                    write!(f, "no tier left that reaches the chat: {reason}")
                }
                LastFailure::TierFailed { reason } => write!(f, "no tier left: {reason}"),
            },
            DeadLetterReason::Expired { last } => {
                write!(
                    f,
                    "reached its maximum age while no tier could take it (last: "
                )?;
                match last {
                    LastFailure::RetriesExhausted(g) => write!(f, "{}", g.as_str())?,
                    LastFailure::Unreachable { reason } | LastFailure::TierFailed { reason } => {
                        write!(f, "{reason}")?
                    }
                }
                write!(f, ")")
            }
        }
    }
}

/// Something worth a log line or a metric; collected by
/// [`super::Dispatcher::tick`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A tier breaker (`chat: None`) or chat breaker changed state.
    Breaker {
        tier: usize,
        tier_name: String,
        chat: Option<i64>,
        transition: Transition,
    },
    /// The degradation level changed.
    Level(LevelChange),
    /// One error class across many chats of a tier: one alert, not one per
    /// message.
    Escalation {
        tier: usize,
        tier_name: String,
        class: Class,
        chats: usize,
        since: Instant,
        at: Instant,
        severity: u8,
    },
    /// A critical error (bad token, unknown endpoint) stopped the tier until
    /// [`super::Dispatcher::reset_breaker`].
    TierStopped {
        tier: usize,
        tier_name: String,
        at: Instant,
        reason: &'static str,
    },
    /// More events happened than the buffer holds between ticks.
    Dropped { count: u64 },
}

/// Counters of one tier since the dispatcher was built (kept across reloads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierCounters {
    /// Send orders handed out.
    pub sent: u64,
    pub delivered: u64,
    /// Attempts that failed (any class but a 429).
    pub failed: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Messages that left this tier for another.
    pub failed_over: u64,
    /// Messages given up after an attempt on this tier.
    pub dead_lettered: u64,
    /// Messages this tier failed with its own fault when no tier was left
    /// for them: held to wait out the outage instead of dead-lettered.
    pub held: u64,
}

/// One tier in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct TierSnapshot {
    pub name: String,
    pub sink: Sink,
    pub breaker: BreakerState,
    pub open_until: Option<Instant>,
    /// Why the tier is stopped, if a critical error stopped it.
    pub stopped: Option<&'static str>,
    /// 0..=100, as the selector sees it now.
    pub health_score: u8,
    pub health_floor: u8,
    /// Recent success, 0..=1.
    pub ewma: f64,
    /// p95 of answered sends in the health window; `None` without samples.
    pub p95: Option<Duration>,
    /// Bounded bulkheads: (message type, slots in use, limit in force).
    pub bulkheads: Vec<(String, u32, u32)>,
    pub in_flight: u32,
    /// Chats currently marked unreachable on this tier.
    pub unreachable_chats: usize,
    /// A 429 pause in force on the whole tier.
    pub paused_until: Option<Instant>,
    pub counters: TierCounters,
}

/// The dispatcher's state for `/healthz/details` and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub at: Instant,
    pub level: Level,
    pub level_since: Instant,
    pub override_level: Option<(Level, Option<Instant>)>,
    /// Messages held: queued, set aside (paused type or full bulkhead) or
    /// in flight.
    pub held: usize,
    /// Held messages per priority (index [`Priority::index`]).
    pub queued_by_priority: [usize; 4],
    /// Held back because their type is paused or its bulkhead is full.
    pub set_aside: usize,
    pub in_flight: usize,
    pub oldest_age: Option<Duration>,
    pub tiers: Vec<TierSnapshot>,
}

/// A call named a message the dispatcher does not hold in that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message {0} is already held")]
    Duplicate(u64),
    #[error("message {0} is not in flight")]
    NotInFlight(u64),
}

/// What [`super::Dispatcher::remove`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// It was waiting; it is gone.
    Queued,
    /// It was in flight: its slot is freed and a later `complete` for it
    /// returns [`MessageError::NotInFlight`].
    InFlight,
}
