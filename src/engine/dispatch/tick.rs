//! `tick` and `snapshot`: the once-a-second bookkeeping and the read-out.
//!
//! Owns: sampling the degradation signals, applying a level change (classes
//! held back, concurrency factor on bulkheads and max-in-flight, route,
//! paused types), refreshing health scores, evicting idle state, and the
//! [`Snapshot`]. Leaves to others: the level arithmetic (degradation), the
//! score formula (health), turning events into logs and metrics (caller).
//!
//! Signals, precisely: queue depth = messages held (queued, set aside, in
//! flight); oldest age = now − the oldest held message's `enqueued_at`
//! (whole seconds, never younger than true); error rate = failed ÷ answered
//! attempts over the health window of every tier together (429s excluded:
//! they say "slower", not "broken"); p95 = the attempt latency (send to
//! answer; queueing is the oldest-age signal's job) over the same window;
//! open breakers = tiers whose breaker is open and still inside its open
//! period, plus stopped tiers.
//!
//! Invariant: `tick` is the only place the level changes without an
//! operator; every change is applied before `tick` returns and reported as
//! an [`Event::Level`].

use std::time::Duration;

use crate::engine::Instant;
use crate::engine::breaker::BreakerState;
use crate::engine::degradation::Signals;
use crate::engine::health::BreakerPhase;

use super::Dispatcher;
use super::LevelCache;
use super::tier::phase;
use super::types::{Event, Snapshot, TierSnapshot};

/// Ticks between sweeps of idle limiter keys, breakers and marks.
const EVICT_EVERY: u64 = 60;
/// A chat breaker untouched this long is forgotten.
const BREAKER_IDLE: Duration = Duration::from_secs(600);

impl Dispatcher {
    /// Once per second: health, degradation, housekeeping. Returns the
    /// events since the last tick (breaker transitions, level changes,
    /// escalations, stopped tiers). Poll again afterwards: a level change
    /// can make messages eligible.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        self.ticks += 1;
        self.tier_cache.invalidate();
        let mut successes = 0u64;
        let mut failures = 0u64;
        for t in &mut self.tiers {
            t.report = t.health.report(now, BreakerPhase::Closed);
            successes += t.report.successes;
            failures += t.report.failures;
        }
        let attempts = successes + failures;
        let oldest = match (self.scheduler.oldest_enqueued_at(), self.aside.oldest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let signals = Signals {
            queue_depth: self.metas.len() as u64,
            oldest_age: oldest.map_or(Duration::ZERO, |o| now.since(o)),
            error_rate: if attempts == 0 {
                0.0
            } else {
                failures as f64 / attempts as f64
            },
            p95_latency: self.latency.quantile(now, 0.95).unwrap_or(Duration::ZERO),
            open_breakers: self.open_breakers(now),
        };
        if let Some(change) = self.degrader.evaluate(now, &signals) {
            self.apply_level();
            self.push_event(Event::Level(change));
        }
        if self.ticks.is_multiple_of(EVICT_EVERY) {
            for t in &mut self.tiers {
                t.limiter.evict_idle(now);
                t.unreachable.retain(|_, until| *until > now);
                t.bulkheads.evict_idle();
            }
            self.breakers.evict_idle(now, BREAKER_IDLE);
            self.chat_breakers = self.breakers.iter().any(|(_, chat, _)| chat.is_some());
            self.correlator.evict_idle(now);
        }
        self.release_free_aside();
        if self.dropped_events > 0 {
            let count = std::mem::take(&mut self.dropped_events);
            self.events.push(Event::Dropped { count });
        }
        std::mem::take(&mut self.events)
    }

    /// The events collected since the last tick, without ticking.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn open_breakers(&self, now: Instant) -> u32 {
        let open = self
            .tiers
            .iter()
            .filter(|t| {
                t.stopped.is_some()
                    || phase(self.breakers.get(&t.key, None), now) == BreakerPhase::Open
            })
            .count();
        u32::try_from(open).unwrap_or(u32::MAX)
    }

    /// Makes the effective level's actions the ones in force.
    pub(super) fn apply_level(&mut self) {
        let a = self.degrader.actions();
        let factor = if a.concurrency_factor.is_finite() {
            a.concurrency_factor.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let paused = a.paused_types.clone();
        self.level = LevelCache {
            classes: a.dispatchable(),
            factor,
            route: a.route,
            paused: paused.iter().map(|n| self.types.intern(n)).collect(),
        };
        for t in &mut self.tiers {
            t.scale(factor);
        }
        self.tier_cache.invalidate();
        self.release_free_aside();
    }

    /// The state for `/healthz/details` and metrics.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let oldest = match (self.scheduler.oldest_enqueued_at(), self.aside.oldest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let tiers = self
            .tiers
            .iter()
            .map(|t| {
                let b = self.breakers.get(&t.key, None);
                TierSnapshot {
                    name: t.cfg.name.clone(),
                    sink: t.cfg.sink,
                    breaker: b.map_or(BreakerState::Closed, |b| b.state()),
                    open_until: b.and_then(|b| b.open_until()),
                    stopped: t.stopped,
                    health_score: t.score(b, now),
                    health_floor: t.cfg.health_floor,
                    ewma: t.ewma.value(),
                    p95: t.report.p95,
                    bulkheads: t
                        .bulkheads
                        .configured()
                        .filter(|(_, c, _)| c.max_concurrent != u32::MAX)
                        .map(|(ty, c, u)| {
                            (self.types.name(*ty).to_owned(), u.in_use, c.max_concurrent)
                        })
                        .collect(),
                    in_flight: t.in_flight,
                    unreachable_chats: t.unreachable.values().filter(|u| **u > now).count(),
                    paused_until: t.limiter.paused_until(now),
                    counters: t.counters,
                }
            })
            .collect();
        Snapshot {
            at: now,
            level: self.degrader.level(),
            level_since: self.degrader.since(),
            override_level: self.degrader.override_level(),
            held: self.metas.len(),
            queued_by_priority: {
                let mut n = self.scheduler.len_by_priority();
                for (a, b) in n.iter_mut().zip(self.aside.by_priority()) {
                    *a += b;
                }
                n
            },
            set_aside: self.aside.len(),
            in_flight: self.in_flight.len(),
            oldest_age: oldest.map(|o| now.since(o)),
            tiers,
        }
    }
}
