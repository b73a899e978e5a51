//! Retry schedules: when to try a failed delivery again, or to stop.
//!
//! Owns: backoff strategies, jitter, attempt and elapsed-time budgets, and
//! how `retry_after` and an open breaker shape the next attempt. Leaves to
//! others: deciding *whether* an outcome is retryable (the taxonomy), the
//! delay queue that holds the message (store), counting attempts (the caller
//! passes them in).
//!
//! Invariant: reads no clock; randomness only from the caller's
//! [`SplitMix64`]; a backoff delay always lies in `[0, max_delay]` — only an
//! honoured `retry_after`, which is Telegram's demand, may exceed it.
//!
//! Attempts the breaker refused never reached the sink, so the caller should
//! not count them: when the breaker is open the schedule simply waits for its
//! HalfOpen instant. A 429 is handled by the taxonomy's `Wait` and the
//! limiter's pause; pass its `retry_after` here only to reschedule.

use std::time::Duration;

use crate::engine::clock::duration_nanos;
use crate::engine::{Instant, SplitMix64};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackoffStrategy {
    /// `initial · multiplier^(n-1)`.
    #[default]
    Exponential,
    /// `initial · n`.
    Linear,
    /// `initial`.
    Fixed,
    /// `initial · fib(n)` with fib = 1, 1, 2, 3, 5, ...
    Fibonacci,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// The strategy's delay as is.
    None,
    /// Uniform in `[0, d]`: spreads a thundering herd best.
    #[default]
    Full,
    /// `d/2` plus uniform in `[0, d/2]`: never retries almost at once.
    Equal,
    /// Uniform in `[initial, 3 · previous delay]` (capped), independent of
    /// the strategy's curve.
    Decorrelated,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub strategy: BackoffStrategy,
    pub initial: Duration,
    pub max_delay: Duration,
    /// Growth factor of [`BackoffStrategy::Exponential`]; below 1 acts as 1.
    pub multiplier: f64,
    pub jitter: Jitter,
    /// Total attempts, the first included.
    pub max_attempts: u32,
    /// Give up rather than retry later than this after the first attempt.
    pub max_elapsed: Option<Duration>,
    pub honour_retry_after: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            strategy: BackoffStrategy::Exponential,
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::Full,
            max_attempts: 5,
            max_elapsed: None,
            honour_retry_after: true,
        }
    }
}

/// What the schedule needs to know about the message's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryInput {
    /// Attempts made so far, including the one that just failed (≥ 1).
    pub attempt: u32,
    /// The backoff delay chosen last time ([`RetryDecision::RetryAt`]'s
    /// `delay`); used by decorrelated jitter.
    pub prev_delay: Option<Duration>,
    /// Time since the first attempt.
    pub elapsed: Duration,
    /// From the failed response, if it had one.
    pub retry_after: Option<Duration>,
    /// When the tier's breaker turns HalfOpen, if it is Open.
    pub breaker_open_until: Option<Instant>,
    pub now: Instant,
}

impl RetryInput {
    /// The input after the first attempt failed at `now`.
    pub fn first(now: Instant) -> Self {
        RetryInput {
            attempt: 1,
            prev_delay: None,
            elapsed: Duration::ZERO,
            retry_after: None,
            breaker_open_until: None,
            now,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryDecision {
    /// Try again at `at`. `delay` is the backoff part (or the honoured
    /// `retry_after`), without any wait for the breaker: feed it back as
    /// `prev_delay`.
    RetryAt {
        at: Instant,
        delay: Duration,
    },
    GiveUp(GiveUpReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    MaxAttempts {
        attempts: u32,
    },
    /// The next attempt would come after `max_elapsed`.
    MaxElapsed {
        next_at: Duration,
    },
}

impl GiveUpReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::MaxAttempts { .. } => "max_attempts",
            GiveUpReason::MaxElapsed { .. } => "max_elapsed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("multiplier must be a finite number of at least 1")]
    Multiplier,
    #[error("initial delay must not exceed the maximum delay")]
    InitialAboveMax,
    #[error("maxAttempts must be at least 1")]
    MaxAttempts,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(RetryPolicyError::Multiplier);
        }
        if self.initial > self.max_delay {
            return Err(RetryPolicyError::InitialAboveMax);
        }
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::MaxAttempts);
        }
        Ok(())
    }

    /// Retry, and when; or give up.
    pub fn next_delay(&self, input: &RetryInput, rng: &mut SplitMix64) -> RetryDecision {
        let attempt = input.attempt.max(1);
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::MaxAttempts { attempts: attempt });
        }
        let delay = match input.retry_after {
            Some(ra) if self.honour_retry_after => ra,
            _ => self.backoff(attempt, input.prev_delay, rng),
        };
        let mut at = input.now + delay;
        if let Some(half_open) = input.breaker_open_until {
            at = at.max(half_open);
        }
        if let Some(budget) = self.max_elapsed {
            let next_at = input.elapsed.saturating_add(at.since(input.now));
            if next_at > budget {
                return RetryDecision::GiveUp(GiveUpReason::MaxElapsed { next_at });
            }
        }
        RetryDecision::RetryAt { at, delay }
    }

    /// The jittered backoff after `attempt` failed attempts; always within
    /// `[0, max_delay]`.
    pub fn backoff(
        &self,
        attempt: u32,
        prev_delay: Option<Duration>,
        rng: &mut SplitMix64,
    ) -> Duration {
        let cap = duration_nanos(self.max_delay);
        let initial = duration_nanos(self.initial).min(cap);
        let nanos = match self.jitter {
            Jitter::None => self.curve(attempt.max(1), cap),
            Jitter::Full => {
                let d = self.curve(attempt.max(1), cap);
                rng.below(d.saturating_add(1))
            }
            Jitter::Equal => {
                let d = self.curve(attempt.max(1), cap);
                let half = d / 2;
                half + rng.below(d - half + 1)
            }
            Jitter::Decorrelated => {
                let prev = prev_delay.map_or(initial, duration_nanos);
                let hi = prev.saturating_mul(3).min(cap).max(initial);
                initial + rng.below(hi - initial + 1)
            }
        };
        Duration::from_nanos(nanos.min(cap))
    }

    /// The strategy's un-jittered delay in nanoseconds, at most `cap`.
    fn curve(&self, n: u32, cap: u64) -> u64 {
        let initial = duration_nanos(self.initial);
        let d = match self.strategy {
            BackoffStrategy::Fixed => initial,
            BackoffStrategy::Linear => initial.saturating_mul(u64::from(n)),
            BackoffStrategy::Exponential => {
                let m = if self.multiplier.is_finite() {
                    self.multiplier.max(1.0)
                } else {
                    1.0
                };
                let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
                // `as` saturates: an overflowing power becomes u64::MAX.
                (initial as f64 * m.powi(exp)) as u64
            }
            BackoffStrategy::Fibonacci => {
                let (mut a, mut b) = (1u64, 1u64);
                // fib(94) no longer fits in u64: stop there at the latest.
                for _ in 1..n.min(94) {
                    (a, b) = (b, a.saturating_add(b));
                    if initial.saturating_mul(a) >= cap {
                        break;
                    }
                }
                initial.saturating_mul(a)
            }
        };
        d.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain(strategy: BackoffStrategy) -> RetryPolicy {
        RetryPolicy {
            strategy,
            jitter: Jitter::None,
            max_attempts: 100,
            ..RetryPolicy::default()
        }
    }

    fn delays(policy: &RetryPolicy, n: u32) -> Vec<u64> {
        let mut rng = SplitMix64::new(1);
        (1..=n)
            .map(|a| policy.backoff(a, None, &mut rng).as_millis() as u64)
            .collect()
    }

    #[test]
    fn curves() {
        assert_eq!(
            delays(&plain(BackoffStrategy::Exponential), 11),
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(
            delays(&plain(BackoffStrategy::Linear), 4),
            [100, 200, 300, 400]
        );
        assert_eq!(delays(&plain(BackoffStrategy::Fixed), 3), [100, 100, 100]);
        assert_eq!(
            delays(&plain(BackoffStrategy::Fibonacci), 7),
            [100, 100, 200, 300, 500, 800, 1300]
        );
        assert_eq!(delays(&plain(BackoffStrategy::Fibonacci), 200)[199], 30_000);
        assert_eq!(
            delays(&plain(BackoffStrategy::Exponential), 5000)[4999],
            30_000
        );
    }

    #[test]
    fn gives_up_after_max_attempts_and_elapsed() {
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(3);
        let input = RetryInput {
            attempt: 5,
            ..RetryInput::first(Instant::ZERO)
        };
        assert_eq!(
            p.next_delay(&input, &mut rng),
            RetryDecision::GiveUp(GiveUpReason::MaxAttempts { attempts: 5 })
        );
        let p = RetryPolicy {
            max_elapsed: Some(Duration::from_secs(10)),
            jitter: Jitter::None,
            ..RetryPolicy::default()
        };
        let input = RetryInput {
            elapsed: Duration::from_millis(9_950),
            ..RetryInput::first(Instant::ZERO)
        };
        assert!(matches!(
            p.next_delay(&input, &mut rng),
            RetryDecision::GiveUp(GiveUpReason::MaxElapsed { .. })
        ));
    }

    #[test]
    fn retry_after_is_honoured_beyond_max_delay() {
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(3);
        let now = Instant::from_secs(100);
        let input = RetryInput {
            retry_after: Some(Duration::from_secs(45)),
            ..RetryInput::first(now)
        };
        assert_eq!(
            p.next_delay(&input, &mut rng),
            RetryDecision::RetryAt {
                at: Instant::from_secs(145),
                delay: Duration::from_secs(45)
            }
        );
        let ignoring = RetryPolicy {
            honour_retry_after: false,
            ..p
        };
        let RetryDecision::RetryAt { delay, .. } = ignoring.next_delay(&input, &mut rng) else {
            panic!()
        };
        assert!(delay <= Duration::from_millis(100));
    }

    #[test]
    fn open_breaker_defers_to_half_open_without_inflating_delay() {
        let p = RetryPolicy {
            jitter: Jitter::None,
            ..RetryPolicy::default()
        };
        let mut rng = SplitMix64::new(3);
        let input = RetryInput {
            breaker_open_until: Some(Instant::from_secs(8)),
            ..RetryInput::first(Instant::from_secs(1))
        };
        assert_eq!(
            p.next_delay(&input, &mut rng),
            RetryDecision::RetryAt {
                at: Instant::from_secs(8),
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn validation() {
        assert!(RetryPolicy::default().validate().is_ok());
        let bad = RetryPolicy {
            multiplier: f64::NAN,
            ..RetryPolicy::default()
        };
        assert_eq!(bad.validate(), Err(RetryPolicyError::Multiplier));
        // ...and still yields bounded delays.
        let mut rng = SplitMix64::new(9);
        assert!(bad.backoff(40, None, &mut rng) <= bad.max_delay);
    }

    fn arb_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            prop_oneof![
                Just(BackoffStrategy::Exponential),
                Just(BackoffStrategy::Linear),
                Just(BackoffStrategy::Fixed),
                Just(BackoffStrategy::Fibonacci)
            ],
            prop_oneof![
                Just(Jitter::None),
                Just(Jitter::Full),
                Just(Jitter::Equal),
                Just(Jitter::Decorrelated)
            ],
            0u64..5_000,
            0u64..120_000,
            prop_oneof![Just(f64::NAN), Just(0.5), 1.0f64..10.0, Just(f64::INFINITY)],
            1u32..20,
        )
            .prop_map(
                |(strategy, jitter, initial, max, multiplier, max_attempts)| RetryPolicy {
                    strategy,
                    jitter,
                    initial: Duration::from_millis(initial),
                    max_delay: Duration::from_millis(max),
                    multiplier,
                    max_attempts,
                    max_elapsed: None,
                    honour_retry_after: true,
                },
            )
    }

    proptest! {
        /// (c) Every strategy and jitter stays within [0, max_delay]; the
        /// retry instant respects the breaker; retry_after is taken as given.
        #[test]
        fn delays_stay_within_bounds(
            policy in arb_policy(),
            attempt in 0u32..200,
            prev in proptest::option::of(0u64..1_000_000),
            retry_after in proptest::option::of(0u64..600_000),
            breaker in proptest::option::of(0u64..100_000),
            seed in any::<u64>(),
        ) {
            let mut rng = SplitMix64::new(seed);
            let now = Instant::from_secs(1_000);
            let d = policy.backoff(attempt, prev.map(Duration::from_millis), &mut rng);
            prop_assert!(d <= policy.max_delay);
            if policy.jitter == Jitter::Decorrelated {
                prop_assert!(d >= policy.initial.min(policy.max_delay));
            }
            let input = RetryInput {
                attempt,
                prev_delay: prev.map(Duration::from_millis),
                elapsed: Duration::ZERO,
                retry_after: retry_after.map(Duration::from_millis),
                breaker_open_until: breaker.map(|ms| now + Duration::from_millis(ms)),
                now,
            };
            match policy.next_delay(&input, &mut rng) {
                RetryDecision::RetryAt { at, delay } => {
                    prop_assert!(attempt.max(1) < policy.max_attempts);
                    match retry_after {
                        Some(ms) => prop_assert_eq!(delay, Duration::from_millis(ms)),
                        None => prop_assert!(delay <= policy.max_delay),
                    }
                    prop_assert!(at >= now + delay);
                    if let Some(until) = input.breaker_open_until {
                        prop_assert!(at >= until);
                    }
                }
                RetryDecision::GiveUp(_) => prop_assert!(attempt.max(1) >= policy.max_attempts),
            }
        }
    }
}
