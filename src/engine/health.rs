//! Health score per tier and a streaming latency summary.
//!
//! Owns: the 0..=100 health score of a tier from its recent outcomes, its
//! latency against a target and its breaker state, and [`LatencyWindow`], a
//! fixed-bucket latency histogram over a sliding window of time slots that the
//! agent, the simulator and degradation's p95 signal share. Leaves to others:
//! the breaker itself (its state comes in as [`BreakerPhase`]), what a floor
//! means (the selector), and exporting the figures (the agent's metrics).
//!
//! Invariant: both structures use bounded memory fixed at construction, read
//! no clock (every call takes `now`), and forget everything older than their
//! window. A reported quantile is never below the true one (at microsecond
//! resolution, up to the ~268 s cap) and at most 1/16 (6.25 %) above it.
//!
//! Score formula (documented for operators in the tier status):
//! ```text
//! S = (successes + prior) / (successes + failures + prior)   (1.0 with no data)
//! L = 1.0                 if p95 <= target or no latency samples
//!     target / p95        otherwise (p95 at twice the target halves the score)
//! score = round(100 * S * L), then: breaker open -> 0, half-open -> min(score, cap)
//! ```
//! `prior` pseudo-successes keep a tier with little traffic from being
//! condemned by one failure; they weigh less as traffic grows.

use std::time::Duration;

use crate::engine::Instant;
use crate::engine::clock::duration_nanos;

/// Breaker state as health sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BreakerPhase {
    #[default]
    Closed,
    HalfOpen,
    Open,
}

/// A window or slot count that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    #[error("window: must be at least 1ms per slot ({window:?} over {slots} slots)")]
    WindowTooShort { window: Duration, slots: u32 },
    #[error("slots: {0} is outside 1..={MAX_SLOTS}")]
    Slots(u32),
    #[error("latencyTarget: must be greater than zero")]
    ZeroTarget,
    #[error("halfOpenCap: {0} is above 100")]
    HalfOpenCap(u8),
}

/// Most time slots a window may have.
pub const MAX_SLOTS: u32 = 3600;

/// Sub-buckets per power of two: 16 gives a relative bucket width of 1/16.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are bucketed in microseconds and capped at 2^28 µs (~268 s).
const MAX_EXP: u32 = 27;
const BUCKETS: usize = (SUB + (MAX_EXP + 1 - SUB_BITS) as u64 * SUB) as usize;
const MAX_MICROS: u64 = (1 << (MAX_EXP + 1)) - 1;

fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// Largest value (µs) that falls into `bucket`.
fn bucket_max(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < SUB {
        return b;
    }
    let exp = (b - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (b - SUB) % SUB;
    ((SUB + sub + 1) << (exp - u64::from(SUB_BITS))) - 1
}

/// Rotates a ring of time slots: slot `e % n` holds epoch `e` (an epoch is
/// `now / slot_len`). Time going backwards is counted in the current slot.
#[derive(Clone, Debug)]
struct SlotRing {
    slot_nanos: u64,
    slots: usize,
    epoch: Option<u64>,
}

impl SlotRing {
    fn new(window: Duration, slots: u32) -> Result<Self, HealthConfigError> {
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(HealthConfigError::Slots(slots));
        }
        let slot_nanos = duration_nanos(window) / u64::from(slots);
        if slot_nanos < 1_000_000 {
            return Err(HealthConfigError::WindowTooShort { window, slots });
        }
        Ok(SlotRing {
            slot_nanos,
            slots: slots as usize,
            epoch: None,
        })
    }

    /// Moves to `now`'s slot and calls `clear` on every slot index whose
    /// epoch fell out of the window; returns the current slot index.
    fn advance(&mut self, now: Instant, mut clear: impl FnMut(usize)) -> usize {
        let target = now.as_nanos() / self.slot_nanos;
        let current = match self.epoch {
            Some(e) if target <= e => e,
            Some(e) => {
                let stale = (target - e).min(self.slots as u64);
                for k in 1..=stale {
                    clear(((e + k) % self.slots as u64) as usize);
                }
                self.epoch = Some(target);
                target
            }
            None => {
                self.epoch = Some(target);
                target
            }
        };
        (current % self.slots as u64) as usize
    }
}

/// Quantiles of the latency window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// Latency histogram over the last `window` (log-linear buckets, 16 per
/// power of two, 1 µs up to ~268 s; larger values count as ~268 s).
/// Memory: `slots * 1.6 KB + 3.2 KB`.
#[derive(Clone, Debug)]
pub struct LatencyWindow {
    ring: SlotRing,
    slots: Vec<Vec<u32>>,
    total: Vec<u64>,
    count: u64,
}

impl LatencyWindow {
    /// A window of `window` split into `slots` slots: data ages out one slot
    /// at a time, so the window is exact to within `window / slots`.
    pub fn new(window: Duration, slots: u32) -> Result<Self, HealthConfigError> {
        let ring = SlotRing::new(window, slots)?;
        Ok(LatencyWindow {
            slots: vec![vec![0; BUCKETS]; ring.slots],
            ring,
            total: vec![0; BUCKETS],
            count: 0,
        })
    }

    fn advance(&mut self, now: Instant) -> usize {
        let (slots, total, count) = (&mut self.slots, &mut self.total, &mut self.count);
        self.ring.advance(now, |i| {
            for (b, n) in slots[i].iter_mut().enumerate() {
                total[b] -= u64::from(*n);
                *count -= u64::from(*n);
                *n = 0;
            }
        })
    }

    pub fn record(&mut self, now: Instant, latency: Duration) {
        let slot = self.advance(now);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let b = bucket_of(micros);
        // A slot saturating at u32::MAX samples (4 billion in one slot) stops
        // counting rather than wrapping.
        if self.slots[slot][b] < u32::MAX {
            self.slots[slot][b] += 1;
            self.total[b] += 1;
            self.count += 1;
        }
    }

    /// Samples inside the window at `now`.
    pub fn count(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.count
    }

    /// The `q` quantile (0..=1, clamped) of the window at `now`; `None` when
    /// the window is empty.
    pub fn quantile(&mut self, now: Instant, q: f64) -> Option<Duration> {
        self.advance(now);
        self.quantile_now(q)
    }

    fn quantile_now(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, n) in self.total.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_max(b)));
            }
        }
        Some(Duration::from_micros(MAX_MICROS))
    }

    /// p50, p95 and p99 of the window at `now`; `None` when empty.
    pub fn summary(&mut self, now: Instant) -> Option<LatencySummary> {
        self.advance(now);
        Some(LatencySummary {
            count: self.count,
            p50: self.quantile_now(0.50)?,
            p95: self.quantile_now(0.95)?,
            p99: self.quantile_now(0.99)?,
        })
    }
}

/// Health scoring knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// How far back outcomes and latencies count.
    pub window: Duration,
    /// Slots the window ages out by.
    pub slots: u32,
    /// The p95 latency a healthy tier stays under.
    pub latency_target: Duration,
    /// Pseudo-successes added to the success ratio.
    pub prior_successes: u32,
    /// Highest score while the breaker is half-open.
    pub half_open_cap: u8,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window: Duration::from_secs(60),
            slots: 12,
            latency_target: Duration::from_secs(1),
            prior_successes: 5,
            half_open_cap: 50,
        }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        SlotRing::new(self.window, self.slots)?;
        if self.latency_target.is_zero() {
            return Err(HealthConfigError::ZeroTarget);
        }
        if self.half_open_cap > 100 {
            return Err(HealthConfigError::HalfOpenCap(self.half_open_cap));
        }
        Ok(())
    }
}

/// A tier's score and what it was made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthReport {
    /// 0..=100.
    pub score: u8,
    /// Outcomes in the window.
    pub successes: u64,
    pub failures: u64,
    /// `S` of the formula.
    pub success_component: f64,
    /// `L` of the formula.
    pub latency_component: f64,
    /// p95 of the window; `None` without latency samples.
    pub p95: Option<Duration>,
    pub breaker: BreakerPhase,
}

/// The formula of this module as a pure function, for callers (e.g. the
/// simulator) that keep their own counts.
pub fn score(
    successes: u64,
    failures: u64,
    p95: Option<Duration>,
    breaker: BreakerPhase,
    config: &HealthConfig,
) -> HealthReport {
    let prior = f64::from(config.prior_successes);
    let total = successes as f64 + failures as f64 + prior;
    let success_component = if total > 0.0 {
        (successes as f64 + prior) / total
    } else {
        1.0
    };
    let latency_component = match p95 {
        Some(p) if p > config.latency_target => {
            config.latency_target.as_secs_f64() / p.as_secs_f64()
        }
        _ => 1.0,
    };
    let raw = (100.0 * success_component * latency_component)
        .round()
        .clamp(0.0, 100.0) as u8;
    let score = match breaker {
        BreakerPhase::Closed => raw,
        BreakerPhase::HalfOpen => raw.min(config.half_open_cap),
        BreakerPhase::Open => 0,
    };
    HealthReport {
        score,
        successes,
        failures,
        success_component,
        latency_component,
        p95,
        breaker,
    }
}

/// Outcomes and latencies of one tier over a sliding window.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    config: HealthConfig,
    ring: SlotRing,
    outcomes: Vec<(u64, u64)>,
    successes: u64,
    failures: u64,
    latency: LatencyWindow,
}

impl HealthTracker {
    pub fn new(config: HealthConfig) -> Result<Self, HealthConfigError> {
        config.validate()?;
        Ok(HealthTracker {
            ring: SlotRing::new(config.window, config.slots)?,
            outcomes: vec![(0, 0); config.slots as usize],
            successes: 0,
            failures: 0,
            latency: LatencyWindow::new(config.window, config.slots)?,
            config,
        })
    }

    fn advance(&mut self, now: Instant) -> usize {
        let (outcomes, s, f) = (&mut self.outcomes, &mut self.successes, &mut self.failures);
        self.ring.advance(now, |i| {
            *s -= outcomes[i].0;
            *f -= outcomes[i].1;
            outcomes[i] = (0, 0);
        })
    }

    /// One attempt's outcome; `latency` when the attempt got an answer (a
    /// timeout has no meaningful latency — it is already a failure).
    pub fn record(&mut self, now: Instant, success: bool, latency: Option<Duration>) {
        let slot = self.advance(now);
        if success {
            self.outcomes[slot].0 += 1;
            self.successes += 1;
        } else {
            self.outcomes[slot].1 += 1;
            self.failures += 1;
        }
        if let Some(l) = latency {
            self.latency.record(now, l);
        }
    }

    /// The score at `now` given the breaker's state.
    pub fn report(&mut self, now: Instant, breaker: BreakerPhase) -> HealthReport {
        self.advance(now);
        let p95 = self.latency.quantile(now, 0.95);
        score(self.successes, self.failures, p95, breaker, &self.config)
    }

    /// The latency window, for p50/p99 and the degradation p95 signal.
    pub fn latency(&mut self) -> &mut LatencyWindow {
        &mut self.latency
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Instant = Instant::from_secs(1000);

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        assert_eq!(BUCKETS, 400);
        let mut prev_max = None;
        for b in 0..BUCKETS {
            let max = bucket_max(b);
            assert_eq!(bucket_of(max), b);
            assert_eq!(
                bucket_of(max + 1).min(BUCKETS - 1),
                (b + 1).min(BUCKETS - 1)
            );
            if let Some(p) = prev_max {
                assert_eq!(bucket_of(p + 1), b);
            }
            prev_max = Some(max);
        }
        assert_eq!(bucket_max(BUCKETS - 1), MAX_MICROS);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_over_a_known_distribution() {
        let mut w = LatencyWindow::new(Duration::from_secs(10), 10).unwrap();
        assert_eq!(w.summary(T0), None);
        for ms in 1..=1000u64 {
            w.record(T0, Duration::from_millis(ms));
        }
        let s = w.summary(T0).unwrap();
        assert_eq!(s.count, 1000);
        for (got, want) in [(s.p50, 500.0), (s.p95, 950.0), (s.p99, 990.0)] {
            let got = got.as_secs_f64() * 1000.0;
            assert!(got >= want && got <= want * 1.0625, "{got} vs {want}");
        }
        assert_eq!(
            w.quantile(T0, 0.0),
            Some(Duration::from_micros(bucket_max(bucket_of(1000))))
        );
    }

    #[test]
    fn the_window_slides_a_slot_at_a_time() {
        let mut w = LatencyWindow::new(Duration::from_secs(10), 10).unwrap();
        w.record(T0, Duration::from_millis(900));
        w.record(T0 + Duration::from_secs(5), Duration::from_millis(10));
        assert_eq!(w.count(T0 + Duration::from_secs(9)), 2);
        let p99 = w.quantile(T0 + Duration::from_secs(10), 0.99).unwrap();
        assert!(
            p99 < Duration::from_millis(11),
            "the 900 ms sample aged out"
        );
        // Time going backwards counts in the current slot, never panics.
        w.record(T0, Duration::from_millis(1));
        assert_eq!(w.count(T0 + Duration::from_secs(10)), 2);
        assert_eq!(w.count(T0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn score_follows_the_formula() {
        let cfg = HealthConfig {
            prior_successes: 0,
            ..HealthConfig::default()
        };
        assert_eq!(score(0, 0, None, BreakerPhase::Closed, &cfg).score, 100);
        assert_eq!(score(90, 10, None, BreakerPhase::Closed, &cfg).score, 90);
        let slow = Some(Duration::from_secs(2));
        assert_eq!(score(90, 10, slow, BreakerPhase::Closed, &cfg).score, 45);
        assert_eq!(score(100, 0, None, BreakerPhase::HalfOpen, &cfg).score, 50);
        assert_eq!(score(100, 0, None, BreakerPhase::Open, &cfg).score, 0);
        let prior = HealthConfig::default();
        assert_eq!(score(0, 1, None, BreakerPhase::Closed, &prior).score, 83);
        assert_eq!(score(0, 95, None, BreakerPhase::Closed, &prior).score, 5);
    }

    #[test]
    fn tracker_forgets_old_failures() {
        let mut t = HealthTracker::new(HealthConfig::default()).unwrap();
        for _ in 0..45 {
            t.record(T0, false, None);
        }
        assert_eq!(t.report(T0, BreakerPhase::Closed).score, 10);
        let later = T0 + Duration::from_secs(61);
        for _ in 0..20 {
            t.record(later, true, Some(Duration::from_millis(120)));
        }
        let r = t.report(later, BreakerPhase::Closed);
        assert_eq!((r.score, r.successes, r.failures), (100, 20, 0));
        assert!(r.p95.unwrap() >= Duration::from_millis(120));
        assert!(t.latency().summary(later).is_some());
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = |c: HealthConfig| HealthTracker::new(c).unwrap_err().to_string();
        let d = HealthConfig::default;
        assert!(bad(HealthConfig { slots: 0, ..d() }).starts_with("slots:"));
        assert!(
            bad(HealthConfig {
                window: Duration::from_micros(5),
                ..d()
            })
            .starts_with("window:")
        );
        assert!(
            bad(HealthConfig {
                latency_target: Duration::ZERO,
                ..d()
            })
            .starts_with("latencyTarget:")
        );
        assert!(
            bad(HealthConfig {
                half_open_cap: 101,
                ..d()
            })
            .starts_with("halfOpenCap:")
        );
    }

    proptest! {
        /// Reported quantiles are never below the exact ones and at most
        /// 1/16 above, for values within the histogram's range.
        #[test]
        fn quantile_error_is_bounded(
            mut samples in proptest::collection::vec(1u64..100_000_000, 1..400),
            q in 0.0..=1.0f64,
        ) {
            let mut w = LatencyWindow::new(Duration::from_secs(60), 6).unwrap();
            for &us in &samples {
                w.record(T0, Duration::from_micros(us));
            }
            samples.sort_unstable();
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            let exact = samples[rank - 1] as f64;
            let got = w.quantile(T0, q).unwrap().as_micros() as f64;
            prop_assert!(got >= exact && got <= exact * 1.0625 + 1.0, "{} vs {}", got, exact);
        }

        /// Scores stay in 0..=100 and respect the breaker.
        #[test]
        fn score_bounds(s in 0u64..10_000, f in 0u64..10_000, p95_ms in proptest::option::of(0u64..100_000), phase in 0..3u8) {
            let breaker = [BreakerPhase::Closed, BreakerPhase::HalfOpen, BreakerPhase::Open][phase as usize];
            let cfg = HealthConfig::default();
            let r = score(s, f, p95_ms.map(Duration::from_millis), breaker, &cfg);
            prop_assert!(r.score <= 100);
            if breaker == BreakerPhase::Open { prop_assert_eq!(r.score, 0); }
            if breaker == BreakerPhase::HalfOpen { prop_assert!(r.score <= cfg.half_open_cap); }
        }
    }
}
