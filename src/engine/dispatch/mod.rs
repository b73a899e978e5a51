//! The dispatch pipeline: every engine decision about a message, composed.
//!
//! ```text
//! enqueue ─▶ scheduler (WFQ classes, FIFO per chat) ─▶ paused type? ─▶ tier
//! selection (breaker, health floor, reachability, fallbacks, spool last)
//! ─▶ bulkhead slot? ─▶ breakers admit ─▶ limiter charges ─▶ SendOrder
//! complete ─▶ taxonomy ─▶ Delivered | RetryAt | FailedOver | DeadLetter | Readdressed
//! tick (1 s) ─▶ health scores, degradation level, events
//! ```
//!
//! Owns: the composition — which module is asked what, in which order, and
//! what a refusal means for the queue: a chat's limiter refusal parks that
//! chat (others go on), a tier-wide refusal (global limit, 429 pause, no
//! concurrency left) stops the poll, a priority share's refusal skips that
//! class, a paused type or a full bulkhead sets the chat aside until there
//! is room; and what an outcome means for the message: a retry goes back to
//! the tier it failed on, a failover leaves that tier for good, a 429
//! pauses the whole tier without using an attempt. Leaves to others: every individual decision (the sibling engine
//! modules), durability (the store), sending and timing (the agent or the
//! simulator), and reading configuration (`crate::policy`).
//!
//! Invariant: pure — no I/O, no clock reads (time comes in as [`Instant`]),
//! randomness only from the seeded [`SplitMix64`], so a run replays exactly
//! from its seed and inputs. A send order is handed out only after every
//! limiter key of its tier admitted and was charged at that instant, and
//! only on a tier whose breaker admitted it; at most one message per chat is
//! out; every held message is in exactly one place (scheduler, set aside,
//! in flight) until `complete` says Delivered or DeadLetter, or `remove`.
//!
//! Usage (the agent's loop):
//! ```text
//! loop { match d.poll(now) { Send(o) => spawn send(o), Idle { wake_at } => break } }
//! on each result:  d.complete(now, id, &outcome, latency)  → update the store
//! every second:    d.tick(now) → log/metric the events; poll again
//! ```

mod aside;
mod complete;
pub mod config;
mod defer;
mod ids;
mod intern;
mod poll;
mod reload;
mod tick;
mod tier;
pub mod types;

#[cfg(test)]
mod outage_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::engine::breaker::{BreakerSet, Ticket};
use crate::engine::bulkhead::Permit;
use crate::engine::degradation::{Degrader, Level, LevelChange, Refusal};
use crate::engine::health::LatencyWindow;
use crate::engine::limiter::{Charge, Recipient};
use crate::engine::scheduler::{Item, PrioritySet, Scheduler};
use crate::engine::selector::{Route, SelectorConfig};
use crate::engine::taxonomy::Correlator;
use crate::engine::{Instant, Priority, SplitMix64};

pub use config::{DispatchConfig, DispatchError, MAX_TIERS, Sink, TierConfig};
pub use types::{
    DeadLetterReason, Event, LastFailure, MessageError, MessageType, Poll, QueuedMessage, Removed,
    SendOrder, Snapshot, TierCounters, TierSnapshot, Verdict,
};

use aside::{Aside, BlockKey};
use ids::{IdMap, IdTable};
use intern::TypeTable;
use tier::TierState;

/// Events kept between ticks; beyond this they are counted, not stored.
const MAX_EVENTS: usize = 4096;
/// Marks "no first attempt yet" in [`Meta::first_attempt`].
const NEVER: u64 = u64::MAX;

/// What the dispatcher remembers of a held message besides what the
/// scheduler keeps; 32 bytes, so a million held messages stay small.
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Current chat (changes on readdress).
    chat: i64,
    /// Nanoseconds of the first attempt, [`NEVER`] if none.
    first_attempt: u64,
    attempts: u32,
    /// Last backoff in milliseconds, for decorrelated jitter; 0: none.
    prev_delay_ms: u32,
    ty: MessageType,
    /// Tiers (by index) this message has left; not used for it again.
    excluded: u16,
    /// 1 + the tier its next attempt is a retry on (0: none): a retry goes
    /// to the same tier while that tier's breaker admits it.
    pinned: u8,
}

/// A send that is out.
#[derive(Debug)]
struct InFlight {
    tier_key: u32,
    chat: i64,
    /// What the limiter charged for this send.
    charge: Charge,
    /// `None` for a type without a bulkhead.
    permit: Option<Permit<MessageType>>,
    tier_ticket: Option<Ticket>,
    chat_ticket: Option<Ticket>,
    /// A half-open probe: its verdict changes what the breaker admits.
    probe: bool,
}

/// The degradation level's actions, cached in the form poll needs.
#[derive(Clone, Debug)]
struct LevelCache {
    classes: PrioritySet,
    factor: f64,
    route: Route,
    paused: Vec<MessageType>,
}

/// Dispatcher-wide settings taken from the config.
#[derive(Clone, Debug)]
struct Settings {
    selector: SelectorConfig,
    max_in_flight: u32,
    unreachable_ttl: Duration,
    max_age: Duration,
}

/// The dispatch pipeline of one agent: see the module docs.
#[derive(Debug)]
pub struct Dispatcher {
    tiers: Vec<TierState>,
    fallbacks: Vec<usize>,
    settings: Settings,
    next_key: u32,
    breakers: BreakerSet<u32>,
    scheduler: Scheduler<u64>,
    degrader: Degrader,
    level: LevelCache,
    correlator: Correlator<u32>,
    metas: IdTable<Meta>,
    in_flight: IdMap<InFlight>,
    aside: Aside,
    types: TypeTable,
    rng: SplitMix64,
    /// Attempt latencies of every tier: the p95 signal.
    latency: LatencyWindow,
    events: Vec<Event>,
    dropped_events: u64,
    ticks: u64,
    /// Whether any chat breaker may exist; while none does, sends skip the
    /// chat breaker lookup (recomputed when idle breakers are evicted).
    chat_breakers: bool,
    /// Breaker and health summary per tier, reused across polls.
    tier_cache: poll::TierCache,
    /// Buffers reused by every poll, so a poll allocates nothing.
    scratch_transitions: Vec<(usize, Option<i64>, crate::engine::breaker::Transition)>,
    scratch_aside: Vec<(i64, BlockKey)>,
}

impl Dispatcher {
    /// Builds a dispatcher; fails on a config [`DispatchConfig::validate`]
    /// rejects.
    pub fn new(config: DispatchConfig, seed: u64) -> Result<Self, DispatchError> {
        config.validate()?;
        let degrader = Degrader::new(config.degradation.clone())?;
        let mut d = Dispatcher {
            tiers: Vec::new(),
            fallbacks: Vec::new(),
            settings: Settings {
                selector: config.selector.clone(),
                max_in_flight: config.max_in_flight,
                unreachable_ttl: config.unreachable_ttl,
                max_age: config.max_age,
            },
            next_key: 0,
            breakers: BreakerSet::new(config.chat_breaker, config.chat_breaker),
            scheduler: Scheduler::new(&config.scheduler)?,
            level: LevelCache {
                classes: PrioritySet::ALL,
                factor: 1.0,
                route: Route::Normal,
                paused: Vec::new(),
            },
            degrader,
            correlator: Correlator::new(config.correlation_window, config.correlation_chats),
            metas: IdTable::default(),
            in_flight: IdMap::default(),
            aside: Aside::default(),
            types: TypeTable::default(),
            rng: SplitMix64::new(seed),
            latency: LatencyWindow::new(config.health.window, config.health.slots)?,
            events: Vec::new(),
            dropped_events: 0,
            ticks: 0,
            chat_breakers: false,
            tier_cache: poll::TierCache::default(),
            scratch_transitions: Vec::new(),
            scratch_aside: Vec::new(),
        };
        d.install(config, Instant::ZERO)?;
        Ok(d)
    }

    /// The id of a message type name, for [`QueuedMessage::message_type`].
    /// Names past [`intern::MAX_TYPES`] share one id with no bulkhead.
    pub fn message_type(&mut self, name: &str) -> MessageType {
        self.types.intern(name)
    }

    pub fn message_type_name(&self, ty: MessageType) -> &str {
        self.types.name(ty)
    }

    /// Holds a message until it is delivered or dead-lettered. Also used to
    /// reload pending messages at start (with their attempts so far).
    pub fn enqueue(&mut self, _now: Instant, msg: QueuedMessage) -> Result<(), MessageError> {
        if self.metas.contains_key(msg.id) {
            return Err(MessageError::Duplicate(msg.id));
        }
        self.metas.insert(
            msg.id,
            Meta {
                chat: msg.chat,
                first_attempt: msg.first_attempt_at.map_or(NEVER, Instant::as_nanos),
                attempts: msg.attempts_so_far,
                prev_delay_ms: 0,
                ty: msg.message_type,
                excluded: 0,
                pinned: 0,
            },
        );
        self.push_item(Item {
            id: msg.id,
            chat: msg.chat,
            priority: msg.priority,
            enqueued_at: msg.enqueued_at,
            not_before: msg.not_before,
        });
        Ok(())
    }

    /// Whether ingest should accept a message of this class and type now
    /// (degradation); refuse with 503 and the refusal's `retry_after`.
    pub fn admits_ingest(&self, priority: Priority, message_type: &str) -> Result<(), Refusal> {
        self.degrader.admits_ingest(priority, message_type)
    }

    /// Forgets a message (purged, or withdrawn by the store). An in-flight
    /// message gives its slot and breaker probe back; its late `complete`
    /// is refused. `None` when the message is not held.
    pub fn remove(&mut self, id: u64) -> Option<Removed> {
        let meta = self.metas.remove(id)?;
        if let Some(f) = self.in_flight.remove(&id) {
            self.release_flight(f);
            let _ = self.scheduler.complete(id);
            return Some(Removed::InFlight);
        }
        if self.aside.remove(meta.chat, id) {
            return Some(Removed::Queued);
        }
        let rest: Vec<Item<u64>> = self
            .scheduler
            .drain_chat(meta.chat)
            .into_iter()
            .filter(|i| i.id != id)
            .collect();
        for item in rest {
            self.scheduler.push(item);
        }
        Some(Removed::Queued)
    }

    /// Operator reset of a tier: its breaker closes, a critical stop is
    /// lifted and the 429 pause stays (Telegram's demand). `None` when the
    /// index is out of range.
    pub fn reset_breaker(&mut self, now: Instant, tier: usize) -> Option<()> {
        let t = self.tiers.get_mut(tier)?;
        t.stopped = None;
        self.tier_cache.invalidate();
        let key = t.key;
        if let Some(tr) = self.breakers.reset(now, &key, None) {
            self.breaker_event(tier, None, tr);
        }
        self.release_aside(BlockKey::Stranded, usize::MAX);
        Some(())
    }

    /// Sets (`Some`) or clears (`None`) a manual degradation level, optionally
    /// until an instant. Returns the change of the effective level.
    pub fn set_degradation_override(
        &mut self,
        now: Instant,
        level: Option<(Level, Option<Instant>)>,
    ) -> Option<LevelChange> {
        let change = match level {
            Some((l, until)) => self.degrader.set_override(now, l, until),
            None => self.degrader.clear_override(now),
        };
        if let Some(c) = change {
            self.apply_level();
            self.push_event(Event::Level(c));
        }
        change
    }

    /// The current degradation level.
    pub fn level(&self) -> Level {
        self.degrader.level()
    }

    /// Tier count; tier indices are `0..tier_count()`.
    pub fn tier_count(&self) -> usize {
        self.tiers.len()
    }

    pub fn tier_name(&self, tier: usize) -> Option<&str> {
        self.tiers.get(tier).map(|t| t.cfg.name.as_str())
    }

    pub fn tier_sink(&self, tier: usize) -> Option<Sink> {
        self.tiers.get(tier).map(|t| t.cfg.sink)
    }

    /// Whom `tier`'s limiter sees in a send to `chat`.
    pub fn tier_recipient(&self, tier: usize, chat: i64) -> Option<Recipient> {
        self.tiers.get(tier).map(|t| t.recipient(chat))
    }

    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.cfg.name == name)
    }

    /// Messages held: queued, set aside or in flight.
    pub fn held(&self) -> usize {
        self.metas.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues a message in the scheduler, or behind its chat if the chat is
    /// set aside (FIFO per chat holds either way).
    fn push_item(&mut self, item: Item<u64>) {
        if self.aside.is_empty() {
            self.scheduler.push(item);
        } else if let Err(item) = self.aside.append(item) {
            self.scheduler.push(item);
        }
    }

    /// Gives back what an in-flight send holds (not its scheduler slot).
    fn release_flight(&mut self, f: InFlight) {
        if let Some(i) = self.index_of(f.tier_key) {
            let t = &mut self.tiers[i];
            t.in_flight = t.in_flight.saturating_sub(1);
            if let Some(ty) = t.release(f.permit) {
                self.release_aside(
                    BlockKey::Bulkhead {
                        tier: f.tier_key,
                        ty,
                    },
                    1,
                );
            }
        }
        if f.probe {
            self.tier_cache.invalidate();
        }
        if let Some(ticket) = f.tier_ticket {
            self.breakers.abandon(&f.tier_key, None, ticket);
        }
        if let Some(ticket) = f.chat_ticket {
            self.breakers.abandon(&f.tier_key, Some(f.chat), ticket);
        }
    }

    /// Puts up to `chats` set-aside chats of `key` back into the scheduler.
    fn release_aside(&mut self, key: BlockKey, chats: usize) {
        if self.aside.is_empty() {
            return;
        }
        for item in self.aside.release(key, chats) {
            self.scheduler.push(item);
        }
    }

    fn index_of(&self, key: u32) -> Option<usize> {
        self.tiers.iter().position(|t| t.key == key)
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(e);
        } else {
            self.dropped_events += 1;
        }
    }

    fn breaker_event(
        &mut self,
        tier: usize,
        chat: Option<i64>,
        transition: crate::engine::breaker::Transition,
    ) {
        self.tier_cache.invalidate();
        let tier_name = self.tiers[tier].cfg.name.clone();
        self.push_event(Event::Breaker {
            tier,
            tier_name,
            chat,
            transition,
        });
    }
}
