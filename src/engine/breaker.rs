//! Circuit breakers: one per tier, and one per chat for chat-specific errors.
//!
//! Owns: the Closed → Open → HalfOpen state machine, its sliding window
//! (count ring or time buckets), the open-duration backoff and the keyed set
//! of breakers with idle eviction. Leaves to others: deciding which outcomes
//! count (the taxonomy), timing calls (the agent measures latency), metrics
//! and events (callers turn [`Transition`]s into them).
//!
//! Invariant: reads no clock; in HalfOpen at most `half_open_probes` probes
//! are admitted per round, so never more are in flight; every state change is
//! reported exactly once as a [`Transition`].
//!
//! Calls carry a [`Ticket`] from [`Breaker::admit`] to [`Breaker::record`]:
//! a result that comes back after the breaker changed state (a slow call
//! admitted while Closed finishing during HalfOpen) is ignored instead of
//! being taken for a probe's verdict.

use std::hash::Hash;
use std::time::Duration;

use crate::engine::clock::duration_nanos;
use crate::engine::{FastMap, Instant};

/// Buckets of a time window; the window covers between 9/10 and all of its
/// configured length.
const TIME_BUCKETS: usize = 10;
/// Largest count window kept; larger settings are clamped (one byte each).
pub const MAX_COUNT_WINDOW: u32 = 100_000;
/// Shortest wait handed to a caller refused during HalfOpen.
const MIN_HALF_OPEN_WAIT: Duration = Duration::from_millis(100);

/// What the failure and slow-call rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `d`.
    Time(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    pub window: Window,
    /// No verdict while the window holds fewer calls than this (clamped to a
    /// count window's size).
    pub minimum_calls: u32,
    /// Open when `failures / calls >= this` (0..=1; 0 means any failure).
    pub failure_rate_threshold: f64,
    /// A call at least this long is slow (zero: slow calls are not tracked).
    pub slow_call_duration: Duration,
    /// Open when `slow / calls >= this` (0..=1).
    pub slow_call_rate_threshold: f64,
    /// First open period; doubles with each consecutive re-open...
    pub open_base: Duration,
    /// ...up to this.
    pub open_max: Duration,
    /// Probes admitted per HalfOpen round; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    /// Tuned for a Telegram tier sending up to 30/s: 50 calls is under two
    /// seconds of traffic at full rate; a Bot API call taking 5 s is sick.
    fn default() -> Self {
        BreakerConfig {
            window: Window::Count(50),
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call_duration: Duration::from_secs(5),
            slow_call_rate_threshold: 0.8,
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(16),
            half_open_probes: 3,
        }
    }
}

/// A breaker configuration that should have been rejected at apply time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerConfigError {
    #[error("window must hold 1..={MAX_COUNT_WINDOW} calls")]
    CountWindow,
    #[error("time window must be longer than zero")]
    TimeWindow,
    #[error("{0} must be between 0 and 1")]
    Threshold(&'static str),
    #[error("minimumCalls must be at least 1 and at most the count window")]
    MinimumCalls,
    #[error("openMax must not be shorter than openBase")]
    OpenDurations,
    #[error("halfOpenProbes must be at least 1")]
    Probes,
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        match self.window {
            Window::Count(n) if n == 0 || n > MAX_COUNT_WINDOW => {
                return Err(BreakerConfigError::CountWindow);
            }
            Window::Count(n) if self.minimum_calls > n => {
                return Err(BreakerConfigError::MinimumCalls);
            }
            Window::Time(d) if d.is_zero() => return Err(BreakerConfigError::TimeWindow),
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(BreakerConfigError::MinimumCalls);
        }
        if !(0.0..=1.0).contains(&self.failure_rate_threshold) {
            return Err(BreakerConfigError::Threshold("failureRateThreshold"));
        }
        if !(0.0..=1.0).contains(&self.slow_call_rate_threshold) {
            return Err(BreakerConfigError::Threshold("slowCallRateThreshold"));
        }
        if self.open_max < self.open_base {
            return Err(BreakerConfigError::OpenDurations);
        }
        if self.half_open_probes == 0 {
            return Err(BreakerConfigError::Probes);
        }
        Ok(())
    }

    /// Open period after `reopens` consecutive re-opens:
    /// `min(open_base · 2^reopens, open_max)`.
    pub fn open_duration(&self, reopens: u32) -> Duration {
        let factor = 1u32.checked_shl(reopens.min(31)).unwrap_or(u32::MAX);
        self.open_base.saturating_mul(factor).min(self.open_max)
    }

    fn probes(&self) -> u32 {
        self.half_open_probes.max(1)
    }

    fn is_slow(&self, latency: Duration) -> bool {
        !self.slow_call_duration.is_zero() && latency >= self.slow_call_duration
    }
}

/// The result of a call the breaker admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    Success {
        latency: Duration,
    },
    /// Only outcomes the taxonomy says count toward the breaker.
    Failure {
        latency: Duration,
    },
}

/// Proof of admission; hand it back to [`Breaker::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Ticket {
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Closed: send.
    Allowed(Ticket),
    /// HalfOpen: send as a probe; its verdict decides the breaker.
    Probe(Ticket),
    /// Do not send before `until` (Open: when it turns HalfOpen; HalfOpen
    /// with all probes out: a guess at when their verdict is in).
    Rejected { until: Instant },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransitionReason {
    FailureRate {
        failures: u32,
        calls: u32,
    },
    SlowCallRate {
        slow: u32,
        calls: u32,
    },
    /// The open period ended.
    OpenElapsed,
    ProbeFailed,
    ProbesSlow {
        slow: u32,
        probes: u32,
    },
    ProbesSucceeded,
    /// An operator reset it.
    Reset,
}

impl TransitionReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransitionReason::FailureRate { .. } => "failure_rate",
            TransitionReason::SlowCallRate { .. } => "slow_call_rate",
            TransitionReason::OpenElapsed => "open_elapsed",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ProbesSlow { .. } => "probes_slow",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::Reset => "reset",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: Instant,
    pub reason: TransitionReason,
}

/// Counts over the current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WindowStats {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

#[derive(Clone, Debug)]
enum Stats {
    Count {
        ring: Vec<u8>,
        next: usize,
        filled: usize,
        totals: WindowStats,
    },
    Time {
        width: u64,
        buckets: [(u64, WindowStats); TIME_BUCKETS],
    },
}

impl Stats {
    fn new(window: Window) -> Stats {
        match window {
            Window::Count(n) => Stats::Count {
                ring: vec![0; n.clamp(1, MAX_COUNT_WINDOW) as usize],
                next: 0,
                filled: 0,
                totals: WindowStats::default(),
            },
            Window::Time(d) => Stats::Time {
                width: (duration_nanos(d) / TIME_BUCKETS as u64).max(1),
                buckets: [(0, WindowStats::default()); TIME_BUCKETS],
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Stats::Count {
                ring,
                next,
                filled,
                totals,
            } => {
                ring.fill(0);
                *next = 0;
                *filled = 0;
                *totals = WindowStats::default();
            }
            Stats::Time { buckets, .. } => *buckets = [(0, WindowStats::default()); TIME_BUCKETS],
        }
    }

    fn capacity(&self) -> u32 {
        match self {
            Stats::Count { ring, .. } => u32::try_from(ring.len()).unwrap_or(u32::MAX),
            Stats::Time { .. } => u32::MAX,
        }
    }

    fn record(&mut self, now: Instant, bits: u8) {
        fn add(s: &mut WindowStats, bits: u8) {
            s.calls = s.calls.saturating_add(1);
            s.failures = s.failures.saturating_add(u32::from(bits & FAILED));
            s.slow = s.slow.saturating_add(u32::from((bits & SLOW) >> 1));
        }
        match self {
            Stats::Count {
                ring,
                next,
                filled,
                totals,
            } => {
                let len = ring.len();
                let Some(slot) = ring.get_mut(*next) else {
                    return;
                };
                if *filled == len {
                    let old = *slot;
                    totals.calls = totals.calls.saturating_sub(1);
                    totals.failures = totals.failures.saturating_sub(u32::from(old & FAILED));
                    totals.slow = totals.slow.saturating_sub(u32::from((old & SLOW) >> 1));
                } else {
                    *filled += 1;
                }
                *slot = bits;
                add(totals, bits);
                *next = (*next + 1) % len;
            }
            Stats::Time { width, buckets } => {
                let epoch = now.as_nanos() / *width;
                let bucket = &mut buckets[(epoch % TIME_BUCKETS as u64) as usize];
                if bucket.0 != epoch {
                    *bucket = (epoch, WindowStats::default());
                }
                add(&mut bucket.1, bits);
            }
        }
    }

    fn totals(&self, now: Instant) -> WindowStats {
        match self {
            Stats::Count { totals, .. } => *totals,
            Stats::Time { width, buckets } => {
                let epoch = now.as_nanos() / *width;
                let mut sum = WindowStats::default();
                for (e, s) in buckets {
                    if *e <= epoch && epoch - *e < TIME_BUCKETS as u64 {
                        sum.calls = sum.calls.saturating_add(s.calls);
                        sum.failures = sum.failures.saturating_add(s.failures);
                        sum.slow = sum.slow.saturating_add(s.slow);
                    }
                }
                sum
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        succeeded: u32,
        slow: u32,
    },
}

/// One circuit breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    stats: Stats,
    phase: Phase,
    /// Consecutive re-opens from HalfOpen; sets the next open period.
    reopens: u32,
    /// Bumped on every transition; tickets from another generation are stale.
    generation: u64,
    last_activity: Instant,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            stats: Stats::new(config.window),
            config,
            phase: Phase::Closed,
            reopens: 0,
            generation: 0,
            last_activity: Instant::ZERO,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Swap the configuration (config reload), keeping the state; the window
    /// restarts only if its shape changed.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        if config.window != self.config.window {
            self.stats = Stats::new(config.window);
        }
        self.config = config;
    }

    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When an open breaker turns HalfOpen; `None` unless Open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Calls, failures and slow calls in the current window.
    pub fn stats(&self, now: Instant) -> WindowStats {
        self.stats.totals(now)
    }

    /// Probes admitted in this HalfOpen round whose verdict is still out.
    pub fn probes_in_flight(&self) -> u32 {
        match self.phase {
            Phase::HalfOpen { in_flight, .. } => in_flight,
            _ => 0,
        }
    }

    /// May a call go now? Moves Open → HalfOpen once the open period is over,
    /// and reports that transition.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        self.last_activity = self.last_activity.max(now);
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now < until {
                return (Admission::Rejected { until }, None);
            }
            transition = Some(self.enter(
                now,
                Phase::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                    slow: 0,
                },
                TransitionReason::OpenElapsed,
            ));
        }
        let ticket = Ticket {
            generation: self.generation,
        };
        let probes = self.config.probes();
        let admission = match &mut self.phase {
            Phase::Closed => Admission::Allowed(ticket),
            Phase::HalfOpen {
                in_flight,
                succeeded,
                ..
            } if in_flight.saturating_add(*succeeded) < probes => {
                *in_flight += 1;
                Admission::Probe(ticket)
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => Admission::Rejected {
                until: now + self.config.open_base.max(MIN_HALF_OPEN_WAIT),
            },
        };
        (admission, transition)
    }

    /// Report how an admitted call went. Stale tickets are ignored.
    pub fn record(
        &mut self,
        now: Instant,
        ticket: Ticket,
        outcome: CallOutcome,
    ) -> Option<Transition> {
        if ticket.generation != self.generation {
            return None;
        }
        self.last_activity = self.last_activity.max(now);
        let (failed, latency) = match outcome {
            CallOutcome::Success { latency } => (false, latency),
            CallOutcome::Failure { latency } => (true, latency),
        };
        let slow = self.config.is_slow(latency);
        match &mut self.phase {
            Phase::Closed => {
                let bits = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
                self.stats.record(now, bits);
                let reason = self.trip_reason(now)?;
                self.reopens = 0;
                Some(self.open(now, reason))
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                in_flight,
                succeeded,
                slow: slow_probes,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    self.reopens = self.reopens.saturating_add(1);
                    return Some(self.open(now, TransitionReason::ProbeFailed));
                }
                *succeeded += 1;
                *slow_probes += u32::from(slow);
                let probes = self.config.probes();
                if *succeeded < probes {
                    return None;
                }
                let slow_probes = *slow_probes;
                if slow_probes > 0
                    && f64::from(slow_probes) / f64::from(probes)
                        >= self.config.slow_call_rate_threshold
                {
                    self.reopens = self.reopens.saturating_add(1);
                    return Some(self.open(
                        now,
                        TransitionReason::ProbesSlow {
                            slow: slow_probes,
                            probes,
                        },
                    ));
                }
                self.reopens = 0;
                self.stats.clear();
                Some(self.enter(now, Phase::Closed, TransitionReason::ProbesSucceeded))
            }
        }
    }

    /// A probe that will never report (cancelled before sending) gives its
    /// slot back.
    pub fn abandon(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation {
            return;
        }
        if let Phase::HalfOpen { in_flight, .. } = &mut self.phase {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// Operator reset: Closed, empty window, backoff forgotten.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.reopens = 0;
        self.stats.clear();
        if self.phase == Phase::Closed {
            return None;
        }
        Some(self.enter(now, Phase::Closed, TransitionReason::Reset))
    }

    fn trip_reason(&self, now: Instant) -> Option<TransitionReason> {
        let s = self.stats.totals(now);
        let minimum = self.config.minimum_calls.clamp(1, self.stats.capacity());
        if s.calls < minimum {
            return None;
        }
        let rate = |n: u32| f64::from(n) / f64::from(s.calls);
        if s.failures > 0 && rate(s.failures) >= self.config.failure_rate_threshold {
            return Some(TransitionReason::FailureRate {
                failures: s.failures,
                calls: s.calls,
            });
        }
        if s.slow > 0 && rate(s.slow) >= self.config.slow_call_rate_threshold {
            return Some(TransitionReason::SlowCallRate {
                slow: s.slow,
                calls: s.calls,
            });
        }
        None
    }

    fn open(&mut self, now: Instant, reason: TransitionReason) -> Transition {
        self.stats.clear();
        let until = now + self.config.open_duration(self.reopens);
        self.enter(now, Phase::Open { until }, reason)
    }

    fn enter(&mut self, now: Instant, phase: Phase, reason: TransitionReason) -> Transition {
        let from = self.state();
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
        Transition {
            from,
            to: self.state(),
            at: now,
            reason,
        }
    }

    /// Would dropping this breaker lose nothing worth keeping?
    fn is_idle(&self, now: Instant, idle: Duration) -> bool {
        let quiet = now.since(self.last_activity) >= idle;
        let still_open = matches!(self.phase, Phase::Open { until } if until > now);
        quiet && !still_open
    }
}

/// Breakers keyed by tier and, for chat-scoped errors, chat.
///
/// Tier breakers are created on first use. A chat breaker is created only by
/// a failure recorded against it; until then a chat admits freely, so state
/// is kept only for chats that misbehaved recently. Callers record a chat-
/// scoped failure on `(tier, Some(chat))`, any other counted failure on
/// `(tier, None)`, and successes on both.
#[derive(Clone, Debug)]
pub struct BreakerSet<T> {
    default_tier: BreakerConfig,
    default_chat: BreakerConfig,
    configs: FastMap<T, (BreakerConfig, BreakerConfig)>,
    breakers: FastMap<(T, Option<i64>), Breaker>,
}

impl<T: Hash + Eq + Clone> BreakerSet<T> {
    /// Configs used for tiers that were never [`configure`](Self::configure)d.
    pub fn new(tier: BreakerConfig, chat: BreakerConfig) -> Self {
        BreakerSet {
            default_tier: tier,
            default_chat: chat,
            configs: FastMap::default(),
            breakers: FastMap::default(),
        }
    }

    /// Set a tier's configs; its existing breakers keep their state.
    pub fn configure(&mut self, tier: T, tier_config: BreakerConfig, chat_config: BreakerConfig) {
        for ((t, chat), breaker) in &mut self.breakers {
            if *t == tier {
                breaker.reconfigure(if chat.is_some() {
                    chat_config
                } else {
                    tier_config
                });
            }
        }
        self.configs.insert(tier, (tier_config, chat_config));
    }

    fn config_for(&self, tier: &T, chat: Option<i64>) -> BreakerConfig {
        let (t, c) = self
            .configs
            .get(tier)
            .copied()
            .unwrap_or((self.default_tier, self.default_chat));
        if chat.is_some() { c } else { t }
    }

    pub fn admit(
        &mut self,
        now: Instant,
        tier: &T,
        chat: Option<i64>,
    ) -> (Admission, Option<Transition>) {
        let key = (tier.clone(), chat);
        if let Some(b) = self.breakers.get_mut(&key) {
            return b.admit(now);
        }
        if chat.is_some() {
            // No chat breaker yet: it would be a fresh Closed one.
            return (Admission::Allowed(Ticket { generation: 0 }), None);
        }
        let config = self.config_for(tier, chat);
        self.breakers
            .entry(key)
            .or_insert_with(|| Breaker::new(config))
            .admit(now)
    }

    pub fn record(
        &mut self,
        now: Instant,
        tier: &T,
        chat: Option<i64>,
        ticket: Ticket,
        outcome: CallOutcome,
    ) -> Option<Transition> {
        let key = (tier.clone(), chat);
        if let Some(b) = self.breakers.get_mut(&key) {
            return b.record(now, ticket, outcome);
        }
        if matches!(outcome, CallOutcome::Success { .. }) && chat.is_some() {
            return None;
        }
        let config = self.config_for(tier, chat);
        self.breakers
            .entry(key)
            .or_insert_with(|| Breaker::new(config))
            .record(now, ticket, outcome)
    }

    pub fn get(&self, tier: &T, chat: Option<i64>) -> Option<&Breaker> {
        self.breakers.get(&(tier.clone(), chat))
    }

    /// Cancelled probe: see [`Breaker::abandon`].
    pub fn abandon(&mut self, tier: &T, chat: Option<i64>, ticket: Ticket) {
        if let Some(b) = self.breakers.get_mut(&(tier.clone(), chat)) {
            b.abandon(ticket);
        }
    }

    pub fn reset(&mut self, now: Instant, tier: &T, chat: Option<i64>) -> Option<Transition> {
        self.breakers.get_mut(&(tier.clone(), chat))?.reset(now)
    }

    /// Every breaker, for metrics and `/healthz/details`.
    pub fn iter(&self) -> impl Iterator<Item = (&T, Option<i64>, &Breaker)> {
        self.breakers.iter().map(|((t, c), b)| (t, *c, b))
    }

    /// Drop breakers untouched for `idle` that are not holding an open
    /// period; a dropped breaker comes back fresh and Closed.
    pub fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
        let before = self.breakers.len();
        self.breakers.retain(|_, b| !b.is_idle(now, idle));
        before - self.breakers.len()
    }

    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAST: Duration = Duration::from_millis(50);

    fn ok() -> CallOutcome {
        CallOutcome::Success { latency: FAST }
    }

    fn fail() -> CallOutcome {
        CallOutcome::Failure { latency: FAST }
    }

    fn small() -> BreakerConfig {
        BreakerConfig {
            window: Window::Count(4),
            minimum_calls: 4,
            half_open_probes: 2,
            ..BreakerConfig::default()
        }
    }

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn allowed(b: &mut Breaker, now: Instant) -> Ticket {
        match b.admit(now).0 {
            Admission::Allowed(t) | Admission::Probe(t) => t,
            other => panic!("refused: {other:?}"),
        }
    }

    /// Drives a Closed breaker into Open with failures.
    fn trip(b: &mut Breaker, now: Instant) -> Transition {
        loop {
            let t = allowed(b, now);
            if let Some(tr) = b.record(now, t, fail()) {
                return tr;
            }
        }
    }

    #[test]
    fn opens_on_failure_rate_after_minimum_calls() {
        let mut b = Breaker::new(small());
        for _ in 0..2 {
            let t = allowed(&mut b, ms(0));
            assert_eq!(b.record(ms(0), t, ok()), None);
        }
        let t = allowed(&mut b, ms(0));
        assert_eq!(b.record(ms(0), t, fail()), None); // 3 calls < minimum
        let t = allowed(&mut b, ms(0));
        let tr = b.record(ms(10), t, fail()).unwrap();
        assert_eq!(
            tr,
            Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                at: ms(10),
                reason: TransitionReason::FailureRate {
                    failures: 2,
                    calls: 4
                },
            }
        );
        assert_eq!(b.open_until(), Some(ms(1_010)));
        assert_eq!(b.admit(ms(500)).0, Admission::Rejected { until: ms(1_010) });
    }

    #[test]
    fn count_window_forgets_old_calls() {
        let mut b = Breaker::new(small());
        for outcome in [fail(), ok(), ok(), ok(), ok(), fail()] {
            let t = allowed(&mut b, ms(0));
            assert_eq!(b.record(ms(0), t, outcome), None);
        }
        assert_eq!(
            b.stats(ms(0)),
            WindowStats {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_drops_expired_buckets() {
        let mut b = Breaker::new(BreakerConfig {
            window: Window::Time(Duration::from_secs(10)),
            minimum_calls: 100,
            ..BreakerConfig::default()
        });
        for i in 0..20 {
            let t = allowed(&mut b, ms(i * 1_000));
            b.record(ms(i * 1_000), t, fail());
        }
        // At 19.5 s the window holds the calls of buckets 10..=19 s.
        assert_eq!(b.stats(ms(19_500)).calls, 10);
        assert_eq!(b.stats(ms(40_000)).calls, 0);
    }

    #[test]
    fn slow_calls_open_the_breaker() {
        let mut b = Breaker::new(small());
        let slow = CallOutcome::Success {
            latency: Duration::from_secs(6),
        };
        let mut last = None;
        for _ in 0..4 {
            let t = allowed(&mut b, ms(0));
            last = b.record(ms(0), t, slow);
        }
        assert_eq!(
            last.map(|t| t.reason),
            Some(TransitionReason::SlowCallRate { slow: 4, calls: 4 })
        );
    }

    #[test]
    fn half_open_probes_close_or_reopen_with_doubling() {
        let mut b = Breaker::new(small());
        trip(&mut b, ms(0));
        // Open for 1 s; then HalfOpen with 2 probes.
        let (a, tr) = b.admit(ms(1_000));
        let p1 = match a {
            Admission::Probe(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(tr.map(|t| t.to), Some(BreakerState::HalfOpen));
        let p2 = match b.admit(ms(1_000)).0 {
            Admission::Probe(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(matches!(b.admit(ms(1_000)).0, Admission::Rejected { .. }));
        assert_eq!(b.record(ms(1_050), p1, ok()), None);
        let tr = b.record(ms(1_060), p2, fail()).unwrap();
        assert_eq!(tr.reason, TransitionReason::ProbeFailed);
        // Second open lasts 2 s, then 4, 8, 16, 16.
        let mut now = ms(1_060);
        for expected in [2, 4, 8, 16, 16] {
            assert_eq!(b.open_until(), Some(now + Duration::from_secs(expected)));
            now = b.open_until().unwrap();
            let t = allowed(&mut b, now);
            b.record(now, t, fail());
        }
        // Now let both probes succeed: Closed, backoff reset.
        now = b.open_until().unwrap();
        let (a1, a2) = (allowed(&mut b, now), allowed(&mut b, now));
        assert_eq!(b.record(now, a1, ok()), None);
        let tr = b.record(now, a2, ok()).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        let tr = trip(&mut b, now);
        assert_eq!(
            tr.reason,
            TransitionReason::FailureRate {
                failures: 4,
                calls: 4
            }
        );
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn stale_tickets_are_ignored() {
        let mut b = Breaker::new(small());
        let stale = allowed(&mut b, ms(0));
        trip(&mut b, ms(0));
        let _ = b.admit(ms(1_000));
        assert_eq!(b.probes_in_flight(), 1);
        // A slow Closed-era call finishing now is not a probe verdict.
        assert_eq!(b.record(ms(1_001), stale, ok()), None);
        assert_eq!(b.probes_in_flight(), 1);
    }

    #[test]
    fn abandon_frees_a_probe_slot_and_reset_closes() {
        let mut b = Breaker::new(small());
        trip(&mut b, ms(0));
        let p = allowed(&mut b, ms(1_000));
        let _q = allowed(&mut b, ms(1_000));
        assert!(matches!(b.admit(ms(1_000)).0, Admission::Rejected { .. }));
        b.abandon(p);
        assert!(matches!(b.admit(ms(1_000)).0, Admission::Probe(_)));
        let tr = b.reset(ms(1_001)).unwrap();
        assert_eq!(tr.reason, TransitionReason::Reset);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.reset(ms(1_002)), None);
    }

    #[test]
    fn config_validation() {
        assert!(BreakerConfig::default().validate().is_ok());
        let bad = BreakerConfig {
            window: Window::Count(0),
            ..BreakerConfig::default()
        };
        assert_eq!(bad.validate(), Err(BreakerConfigError::CountWindow));
        let bad = BreakerConfig {
            failure_rate_threshold: 1.5,
            ..BreakerConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = BreakerConfig {
            minimum_calls: 60,
            ..BreakerConfig::default()
        };
        assert_eq!(bad.validate(), Err(BreakerConfigError::MinimumCalls));
        // Degenerate settings still do not panic.
        let weird = BreakerConfig {
            window: Window::Count(0),
            minimum_calls: 0,
            half_open_probes: 0,
            open_base: Duration::ZERO,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(weird);
        trip(&mut b, ms(0));
        let t = allowed(&mut b, ms(0));
        assert!(b.record(ms(0), t, ok()).is_some());
        assert_eq!(
            BreakerConfig::default().open_duration(u32::MAX),
            Duration::from_secs(16)
        );
    }

    #[test]
    fn set_creates_chat_breakers_only_on_failure_and_evicts() {
        let mut set: BreakerSet<u32> = BreakerSet::new(small(), small());
        let (a, _) = set.admit(ms(0), &1, Some(42));
        let Admission::Allowed(t) = a else {
            panic!("{a:?}")
        };
        assert_eq!(set.record(ms(0), &1, Some(42), t, ok()), None);
        assert!(set.get(&1, Some(42)).is_none());
        for _ in 0..4 {
            let (Admission::Allowed(t), _) = set.admit(ms(0), &1, Some(42)) else {
                panic!()
            };
            set.record(ms(0), &1, Some(42), t, fail());
        }
        assert_eq!(
            set.get(&1, Some(42)).map(Breaker::state),
            Some(BreakerState::Open)
        );
        // The tier and other chats are unaffected.
        assert!(matches!(
            set.admit(ms(1), &1, None).0,
            Admission::Allowed(_)
        ));
        assert!(matches!(
            set.admit(ms(1), &1, Some(7)).0,
            Admission::Allowed(_)
        ));
        assert_eq!(set.len(), 2);
        // Open breakers survive eviction until their period is over.
        assert_eq!(set.evict_idle(ms(500), Duration::from_millis(100)), 1);
        assert_eq!(set.evict_idle(ms(2_000), Duration::from_millis(100)), 1);
        assert!(set.is_empty());
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Admit,
        Complete {
            index: usize,
            failed: bool,
            slow: bool,
        },
        Abandon {
            index: usize,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Admit),
            3 => (any::<usize>(), any::<bool>(), any::<bool>())
                .prop_map(|(index, failed, slow)| Op::Complete { index, failed, slow }),
            1 => any::<usize>().prop_map(|index| Op::Abandon { index }),
            2 => (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    proptest! {
        /// (b) HalfOpen never has more than `half_open_probes` probes out and
        /// never admits more than that per round; open periods follow the
        /// doubling schedule.
        #[test]
        fn half_open_admits_at_most_probe_count(
            probes in 1u32..5,
            window in 1u32..8,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let config = BreakerConfig {
                window: Window::Count(window),
                minimum_calls: window,
                half_open_probes: probes,
                ..BreakerConfig::default()
            };
            let mut b = Breaker::new(config);
            let mut now = Instant::ZERO;
            let mut outstanding: Vec<(Ticket, bool)> = Vec::new();
            let mut probes_this_round = 0u32;
            for op in ops {
                match op {
                    Op::Admit => {
                        let (a, tr) = b.admit(now);
                        if tr.is_some_and(|t| t.to == BreakerState::HalfOpen) {
                            probes_this_round = 0;
                        }
                        match a {
                            Admission::Allowed(t) => outstanding.push((t, false)),
                            Admission::Probe(t) => {
                                probes_this_round += 1;
                                outstanding.push((t, true));
                            }
                            Admission::Rejected { until } => prop_assert!(until > now),
                        }
                    }
                    Op::Complete { index, failed, slow } if !outstanding.is_empty() => {
                        let (t, _) = outstanding.swap_remove(index % outstanding.len());
                        let latency = if slow { Duration::from_secs(10) } else { FAST };
                        let outcome = if failed {
                            CallOutcome::Failure { latency }
                        } else {
                            CallOutcome::Success { latency }
                        };
                        if let Some(tr) = b.record(now, t, outcome)
                            && tr.to == BreakerState::Open
                        {
                            let d = b.open_until().unwrap().since(now);
                            prop_assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(16));
                            prop_assert!(d.as_secs().is_power_of_two());
                        }
                    }
                    Op::Abandon { index } if !outstanding.is_empty() => {
                        let (t, probe) = outstanding.swap_remove(index % outstanding.len());
                        b.abandon(t);
                        if probe && b.state() == BreakerState::HalfOpen {
                            probes_this_round = probes_this_round.saturating_sub(1);
                        }
                    }
                    Op::Advance { ms } => now = now + Duration::from_millis(ms),
                    _ => {}
                }
                prop_assert!(b.probes_in_flight() <= probes);
                if b.state() == BreakerState::HalfOpen {
                    prop_assert!(probes_this_round <= probes);
                    let live_probes = outstanding.iter().filter(|(t, p)| *p && t.generation == b.generation).count();
                    prop_assert_eq!(live_probes as u32, b.probes_in_flight());
                }
            }
        }
    }
}
