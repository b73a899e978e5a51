//! Per-tier state of the dispatcher: limiter, bulkheads, health, recent
//! success, reachability marks, stop flag and counters.
//!
//! Owns the state that belongs to one tier and survives a reload under the
//! same name. Leaves the tier's breakers to the dispatcher's shared
//! [`crate::engine::breaker::BreakerSet`] (keyed by [`TierState::key`]).
//!
//! Invariant: the bulkhead limits in force are the configured ones scaled
//! by the degradation level's concurrency factor, never below one slot; a
//! type dropped from the config becomes unbounded rather than stuck.

use std::time::Duration;

use crate::engine::breaker::{Breaker, BreakerState};
use crate::engine::bulkhead::{Acquire, BulkheadConfig, Bulkheads, Permit};
use crate::engine::health::{self, BreakerPhase, HealthConfig, HealthReport, HealthTracker};
use crate::engine::limiter::{Limiter, Recipient};
use crate::engine::selector::Ewma;
use crate::engine::{FastMap, Instant};

use super::config::{DispatchError, Sink, TierConfig};
use super::intern::TypeTable;
use super::types::{MessageType, TierCounters};

/// Types not configured may have this many sends out: no limit.
const UNBOUNDED: BulkheadConfig = BulkheadConfig {
    max_concurrent: u32::MAX,
    max_wait: Duration::ZERO,
};

#[derive(Debug)]
pub struct TierState {
    /// Stable across reloads: breakers, correlation and set-aside chats are
    /// keyed by it, so a reload that reorders tiers loses nothing.
    pub key: u32,
    pub cfg: TierConfig,
    pub limiter: Limiter,
    pub bulkheads: Bulkheads<MessageType>,
    /// Configured types with their unscaled limits.
    configured: Vec<(MessageType, BulkheadConfig)>,
    pub health: HealthTracker,
    health_config: HealthConfig,
    /// The window's figures as of the last tick; the breaker's phase is
    /// applied when the score is read, so it is never stale.
    pub report: HealthReport,
    pub ewma: Ewma,
    /// Set by a critical error; cleared by an operator reset.
    pub stopped: Option<&'static str>,
    /// Chats this tier cannot reach, until the instant.
    pub unreachable: FastMap<i64, Instant>,
    pub in_flight: u32,
    pub counters: TierCounters,
}

impl TierState {
    pub fn new(
        key: u32,
        cfg: TierConfig,
        health: &HealthConfig,
        types: &mut TypeTable,
        factor: f64,
    ) -> Result<Self, DispatchError> {
        let tracker = HealthTracker::new(health.clone())?;
        let report = health::score(0, 0, None, BreakerPhase::Closed, health);
        let mut t = TierState {
            key,
            cfg: cfg.clone(),
            limiter: Limiter::new(),
            bulkheads: Bulkheads::new(UNBOUNDED),
            configured: Vec::new(),
            health: tracker,
            health_config: health.clone(),
            report,
            ewma: Ewma::default(),
            stopped: None,
            unreachable: FastMap::default(),
            in_flight: 0,
            counters: TierCounters::default(),
        };
        t.apply(cfg, types, factor);
        Ok(t)
    }

    /// Takes a new config (reload), keeping limiter, health and counters.
    pub fn apply(&mut self, cfg: TierConfig, types: &mut TypeTable, factor: f64) {
        for (ty, _) in &self.configured {
            self.bulkheads.configure(*ty, UNBOUNDED);
        }
        self.configured = cfg
            .bulkheads
            .iter()
            .map(|(name, c)| (types.intern(name), *c))
            .collect();
        self.cfg = cfg;
        self.scale(factor);
    }

    /// Applies the level's concurrency factor to every configured bulkhead.
    pub fn scale(&mut self, factor: f64) {
        for &(ty, c) in &self.configured {
            let scaled = (f64::from(c.max_concurrent) * factor).ceil();
            let max_concurrent = if scaled.is_finite() && scaled >= 1.0 {
                // `as` saturates; the product never exceeds the original.
                scaled as u32
            } else {
                1
            };
            self.bulkheads.configure(
                ty,
                BulkheadConfig {
                    max_concurrent: max_concurrent.min(c.max_concurrent.max(1)),
                    max_wait: c.max_wait,
                },
            );
        }
    }

    /// Whom the limiter sees: chats and groups on Telegram only.
    pub fn recipient(&self, chat: i64) -> Recipient {
        match self.cfg.sink {
            Sink::Telegram if chat < 0 => Recipient::Group(chat),
            Sink::Telegram => Recipient::Chat(chat),
            Sink::Webhook | Sink::Spool => Recipient::Unscoped,
        }
    }

    pub fn is_spool(&self) -> bool {
        self.cfg.sink == Sink::Spool
    }

    pub fn is_unreachable(&self, chat: i64, now: Instant) -> bool {
        !self.unreachable.is_empty() && self.unreachable.get(&chat).is_some_and(|&u| u > now)
    }

    /// Start the health window afresh (after the breaker closed on probes).
    pub fn forget_health(&mut self, now: Instant) {
        if let Ok(fresh) = HealthTracker::new(self.health.config().clone()) {
            self.health = fresh;
            self.report = self.health.report(now, BreakerPhase::Closed);
        }
    }

    /// Health score at `now` given the tier breaker (none yet: closed).
    pub fn score(&self, breaker: Option<&Breaker>, now: Instant) -> u8 {
        let r = &self.report;
        health::score(
            r.successes,
            r.failures,
            r.p95,
            phase(breaker, now),
            &self.health_config,
        )
        .score
    }

    /// A bulkhead slot for `ty`: `Ok(None)` for a type without a bulkhead
    /// (nothing to account), `Err` when the type is at its limit.
    pub fn acquire(
        &mut self,
        now: Instant,
        ty: MessageType,
    ) -> Result<Option<Permit<MessageType>>, ()> {
        if !self.configured.iter().any(|(t, _)| *t == ty) {
            return Ok(None);
        }
        match self.bulkheads.try_acquire(now, ty) {
            Acquire::Granted(p) => Ok(Some(p)),
            Acquire::Wait(w) => {
                // The dispatcher never blocks: it sets the chat aside instead
                // of holding a waiter.
                self.bulkheads.cancel(w);
                Err(())
            }
            Acquire::Rejected(_) => Err(()),
        }
    }

    /// Gives a slot back; returns the type if there was one.
    pub fn release(&mut self, permit: Option<Permit<MessageType>>) -> Option<MessageType> {
        let p = permit?;
        let ty = *p.message_type();
        self.bulkheads.release(p);
        Some(ty)
    }

    /// Free bulkhead slots for `ty`.
    pub fn free_slots(&self, ty: MessageType) -> u32 {
        self.bulkheads
            .config(&ty)
            .max_concurrent
            .saturating_sub(self.bulkheads.usage(&ty).in_use)
    }
}

/// The breaker as health and selection see it: an open breaker whose open
/// period is over is about to probe, so it counts as half-open.
pub fn phase(breaker: Option<&Breaker>, now: Instant) -> BreakerPhase {
    match breaker.map(|b| (b.state(), b.open_until())) {
        None | Some((BreakerState::Closed, _)) => BreakerPhase::Closed,
        Some((BreakerState::Open, Some(until))) if until > now => BreakerPhase::Open,
        Some(_) => BreakerPhase::HalfOpen,
    }
}

/// Would the breaker let a call through at `now`? Exact for Closed and
/// Open; for HalfOpen an estimate (the real admission may still refuse).
pub fn may_admit(breaker: Option<&Breaker>, now: Instant) -> bool {
    match breaker {
        None => true,
        Some(b) => match b.state() {
            BreakerState::Closed => true,
            BreakerState::Open => b.open_until().is_some_and(|u| u <= now),
            BreakerState::HalfOpen => b.probes_in_flight() < b.config().half_open_probes.max(1),
        },
    }
}

/// Due for a probe: open period over, or half-open with a probe slot left.
pub fn probe_due(breaker: Option<&Breaker>, now: Instant) -> bool {
    breaker.is_some_and(|b| b.state() != BreakerState::Closed) && may_admit(breaker, now)
}
