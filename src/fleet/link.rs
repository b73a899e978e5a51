//! The agent's link to Redis as a pure state machine: connected, lost
//! with a jittered backoff before the next attempt, or reconnecting; and
//! how many agents are assumed to share a limit meanwhile.
//!
//! Owns: [`LinkState`] and [`RedisLink`]. Leaves to others: what a tier
//! does with the link (`policy::effective`), the calls that succeed or
//! fail (the partition task, the dispatch loop).
//!
//! Invariant: the divisor never drops below the replicas the tier is
//! configured for, so an agent that never saw Redis still takes only its
//! share.

use std::time::Duration;

use crate::engine::retry::{BackoffStrategy, Jitter, RetryPolicy};
use crate::engine::{Instant, SplitMix64};
use crate::policy::effective::Link;

/// The agent's link to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// The last call succeeded: decisions go to the shared limiter.
    Connected,
    /// Calls fail; the next reconnect attempt is due at `retry_at`.
    Lost { since: Instant, retry_at: Instant },
    /// A reconnect attempt (e.g. a heartbeat) is under way.
    Reconnecting { since: Instant, attempt: u32 },
}

/// The link's state machine: pure, time and randomness passed in.
///
/// Starts `Reconnecting` (the first connection is an attempt). Any success
/// makes it `Connected`; a failure makes it `Lost` with the next attempt
/// after an exponential, jittered backoff; [`RedisLink::begin_attempt`]
/// turns a due `Lost` into `Reconnecting`. While not connected, the agent
/// should not touch Redis for decisions (each would wait out the deadline)
/// but probe it only when an attempt is due.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisLink {
    state: LinkState,
    /// Replicas the tier is configured for: a floor for the divisor, so an
    /// agent that never saw Redis still takes only its share.
    floor: u32,
    last_known_live: u32,
    failures: u32,
    backoff: RetryPolicy,
    /// How long a reconnected link settles (see
    /// [`crate::policy::effective::LimiterMode::Settling`]).
    settle: Duration,
    /// Until when the link settles; `None` before the first connection,
    /// which follows no local-share sends and needs no settling.
    settle_until: Option<Instant>,
}

impl RedisLink {
    /// Backoff 100 ms doubling to 10 s, equal jitter.
    pub const DEFAULT_BACKOFF: RetryPolicy = RetryPolicy {
        strategy: BackoffStrategy::Exponential,
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        multiplier: 2.0,
        jitter: Jitter::Equal,
        max_attempts: u32::MAX,
        max_elapsed: None,
        honour_retry_after: false,
    };

    /// The link of an agent starting at `now`, connecting for the first time.
    pub fn new(expected_replicas: u32, now: Instant) -> RedisLink {
        RedisLink {
            state: LinkState::Reconnecting {
                since: now,
                attempt: 1,
            },
            floor: expected_replicas.max(1),
            last_known_live: expected_replicas.max(1),
            failures: 0,
            backoff: RedisLink::DEFAULT_BACKOFF,
            settle: Duration::ZERO,
            settle_until: None,
        }
    }

    /// How long the link settles after it returns: the lease TTL plus
    /// [`crate::policy::effective::SETTLE_MARGIN`], for the fleet's links.
    pub fn with_settle(self, settle: Duration) -> RedisLink {
        RedisLink { settle, ..self }
    }

    /// Another backoff (only strategy, delays and jitter are used).
    pub fn with_backoff(self, backoff: RetryPolicy) -> RedisLink {
        RedisLink { backoff, ..self }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// `connected`, `lost` or `reconnecting`.
    pub const fn state_name(&self) -> &'static str {
        match self.state {
            LinkState::Connected => "connected",
            LinkState::Lost { .. } => "lost",
            LinkState::Reconnecting { .. } => "reconnecting",
        }
    }

    pub fn last_known_live(&self) -> u32 {
        self.last_known_live
    }

    /// Agents assumed to share the limit while Redis is away.
    pub fn divisor(&self) -> u32 {
        self.last_known_live.max(self.floor)
    }

    /// What a tier's limits need to know of the link at `now` (see
    /// [`crate::policy::effective::TierLimits::now`]).
    pub fn for_limits(&self, now: Instant) -> Link {
        let connected = self.state == LinkState::Connected;
        Link {
            connected,
            divisor: self.divisor(),
            settling: connected && self.settle_until.is_some_and(|until| now < until),
        }
    }

    /// A call to Redis succeeded at `now`. Coming back from a loss, the
    /// link settles: other agents may still be on their local shares.
    pub fn connected(&mut self, now: Instant) {
        if self.state != LinkState::Connected {
            // The first connection follows no local-share sends, unless
            // the agent started while Redis was away.
            let came_back = self.settle_until.is_some() || self.failures > 0;
            self.settle_until = Some(if came_back { now + self.settle } else { now });
        }
        self.state = LinkState::Connected;
        self.failures = 0;
    }

    /// A heartbeat at `now` answered `live` agents (this one included).
    pub fn observed_live(&mut self, live: u32, now: Instant) {
        self.connected(now);
        self.last_known_live = live.max(1);
    }

    /// A call failed with [`SharedError::is_unavailable`] at `now`: answers
    /// when to attempt again.
    pub fn failed(&mut self, now: Instant, rng: &mut SplitMix64) -> Instant {
        self.failures = self.failures.saturating_add(1);
        let since = match self.state {
            LinkState::Connected => now,
            LinkState::Lost { since, .. } | LinkState::Reconnecting { since, .. } => since,
        };
        let retry_at = now + self.backoff.backoff(self.failures, None, rng);
        self.state = LinkState::Lost { since, retry_at };
        retry_at
    }

    /// When the next reconnect attempt is due, while `Lost`.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            LinkState::Lost { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }

    /// Starts a reconnect attempt if one is due at `now`; true when the
    /// agent should probe Redis (e.g. send a heartbeat) now.
    pub fn begin_attempt(&mut self, now: Instant) -> bool {
        match self.state {
            LinkState::Lost { since, retry_at } if now >= retry_at => {
                self.state = LinkState::Reconnecting {
                    since,
                    attempt: self.failures.saturating_add(1),
                };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::rate_limit_policy::{LimiterBackend, LimiterFallback};
    use crate::policy::effective::{LimiterMode, tier_mode};

    /// Long after any settling the tests set up.
    const T_LATE: Instant = Instant::from_secs(1_000_000);

    /// The mode a Redis-backed tier with `fallback` takes on this link,
    /// once any settling is over.
    fn mode(link: &RedisLink, fallback: LimiterFallback) -> LimiterMode {
        tier_mode(LimiterBackend::Redis, fallback, link.for_limits(T_LATE))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The link's mode follows the last event; delays stay in bounds.
        #[test]
        fn the_link_state_machine_holds_its_invariants(
            events in proptest::collection::vec((0u8..4, 0u64..2_000, 0u32..20), 1..60),
            seed in any::<u64>(),
            pause in any::<bool>(),
            replicas in 1u32..10,
        ) {
            let fallback = if pause { LimiterFallback::Pause } else { LimiterFallback::LocalShare };
            let mut now = Instant::from_secs(1);
            let mut link = RedisLink::new(replicas, now);
            let mut rng = SplitMix64::new(seed);
            for (kind, dt_ms, live) in events {
                now = now + Duration::from_millis(dt_ms);
                match kind {
                    0 => link.connected(now),
                    1 => link.observed_live(live, now),
                    2 => {
                        let at = link.failed(now, &mut rng);
                        prop_assert!(at >= now && at <= now + RedisLink::DEFAULT_BACKOFF.max_delay);
                        prop_assert_eq!(link.retry_at(), Some(at));
                    }
                    _ => {
                        let due = link.retry_at().is_some_and(|at| now >= at);
                        prop_assert_eq!(link.begin_attempt(now), due);
                    }
                }
                prop_assert!(link.divisor() >= replicas.max(1));
                let mode = mode(&link, fallback);
                match link.state() {
                    LinkState::Connected => prop_assert_eq!(mode, LimiterMode::Shared),
                    _ if pause => prop_assert_eq!(mode, LimiterMode::Paused),
                    _ => prop_assert_eq!(mode, LimiterMode::LocalShare { divisor: link.divisor() }),
                }
            }
        }
    }

    #[test]
    fn the_link_backs_off_exponentially_and_recovers() {
        let t0 = Instant::from_secs(10);
        let backoff = RetryPolicy {
            jitter: Jitter::None,
            ..RedisLink::DEFAULT_BACKOFF
        };
        let mut link = RedisLink::new(3, t0).with_backoff(backoff);
        assert_eq!(link.state_name(), "reconnecting");
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::LocalShare { divisor: 3 }
        );
        link.observed_live(5, t0);
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::Shared
        );
        assert_eq!(mode(&link, LimiterFallback::LocalShare).as_str(), "shared");
        let mut rng = SplitMix64::new(1);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let at = link.failed(now, &mut rng);
            delays.push(at.since(now).as_millis());
            assert!(!link.begin_attempt(at - Duration::from_nanos(1)));
            assert!(link.begin_attempt(at));
            assert_eq!(link.state_name(), "reconnecting");
            now = at;
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]
        );
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::LocalShare { divisor: 5 }
        );
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare).as_str(),
            "local-share"
        );
        let LinkState::Reconnecting { since, attempt } = link.state() else {
            panic!("{:?}", link.state())
        };
        assert_eq!((since, attempt), (t0, 10));
        link.connected(now);
        assert_eq!(link.state(), LinkState::Connected);
        // The count restarts after a success.
        let at = link.failed(now, &mut rng);
        assert_eq!(at.since(now), Duration::from_millis(100));
        let paused = RedisLink::new(1, t0);
        assert_eq!(mode(&paused, LimiterFallback::Pause).as_str(), "paused");
    }

    #[test]
    fn a_link_that_comes_back_settles_and_a_first_connection_does_not() {
        let t0 = Instant::from_secs(10);
        let settle = Duration::from_secs(12);
        let settling = |link: &RedisLink, at: Instant| link.for_limits(at).settling;
        let mut link = RedisLink::new(3, t0).with_settle(settle);
        link.observed_live(3, t0);
        assert!(!settling(&link, t0));
        let mut rng = SplitMix64::new(1);
        let lost = t0 + Duration::from_secs(60);
        link.failed(lost, &mut rng);
        assert!(!settling(&link, lost), "a lost link does not settle");
        let back = lost + Duration::from_secs(5);
        link.observed_live(3, back);
        assert!(settling(&link, back));
        assert!(settling(&link, back + settle - Duration::from_nanos(1)));
        assert!(!settling(&link, back + settle));
        // Heartbeats while connected do not restart the settling time.
        link.observed_live(3, back + Duration::from_secs(4));
        assert!(!settling(&link, back + settle));
        // An agent that started while Redis was away was on its share.
        let mut late = RedisLink::new(3, t0).with_settle(settle);
        late.failed(t0, &mut rng);
        late.observed_live(3, t0 + Duration::from_secs(2));
        assert!(settling(&late, t0 + Duration::from_secs(3)));
        assert_eq!(
            tier_mode(
                LimiterBackend::Redis,
                LimiterFallback::LocalShare,
                late.for_limits(t0 + Duration::from_secs(3))
            ),
            LimiterMode::Settling { divisor: 3 }
        );
    }
}
