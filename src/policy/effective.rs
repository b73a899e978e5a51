//! What limits a tier's agent applies right now: the one place that answers
//! it, from the tier's configured limits, its policy's limiter backend and
//! fallback, and the agent's link to the other agents.
//!
//! Owns every adjustment the agent makes to a configured limit:
//! - the limiter mode: shared through Redis, a local share, or paused;
//! - the local share of each bot-wide limit while the agents cannot
//!   coordinate ([`local_share`]);
//! - the wider guard on bot-wide keys decided in Redis ([`fleet_guarded`]);
//! - how long a shared decision may hold a send the local limiter already
//!   admitted ([`SendDelay`]);
//! - the quiet periods after a restart ([`restart_quiet`], shortened by
//!   what the store shows: [`start_quiet`]) and after a
//!   tier changes mode ([`switch_quiet`]).
//!
//! Leaves to others: GCRA itself (`engine::limiter`), asking Redis and
//! watching the link (`fleet`), timers and sending (the agent's dispatch
//! loop).
//!
//! Invariants: pure (no clock, no I/O); the local shares of `n` agents
//! together never admit more than the whole limit in any window of at least
//! its period; a shared wait never outlasts the chat key's guard.

use std::time::Duration;

use crate::api::rate_limit_policy::{LimiterBackend, LimiterFallback};
use crate::engine::limiter::{Guard, Limit, Limits};

/// Which limiter a tier uses now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimiterMode {
    /// The fleet's shared limiter in Redis, for the bot-wide keys.
    Shared,
    /// Just back from a lost link: the shared limiter, and this agent's
    /// local share of `divisor` as well. Other agents may still be on their
    /// local shares, which Redis never sees; while each agent keeps to its
    /// share the fleet stays within the limit whatever mix of modes it is
    /// in. Lasts the lease TTL after the link returned: by then every other
    /// agent has reconnected too, or its leases have lapsed and it sends
    /// nothing.
    Settling { divisor: u32 },
    /// The local engine limiter with [`local_share_limits`] of `divisor`.
    LocalShare { divisor: u32 },
    /// Nothing may be sent.
    Paused,
}

impl LimiterMode {
    /// For `/readyz`, `/healthz/details` and a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimiterMode::Shared => "shared",
            LimiterMode::Settling { .. } => "settling",
            LimiterMode::LocalShare { .. } => "local-share",
            LimiterMode::Paused => "paused",
        }
    }
}

/// The agent's link to the other agents of its tier, as far as limits care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Redis answers: decisions can be shared.
    pub connected: bool,
    /// Agents assumed to share each bot-wide limit.
    pub divisor: u32,
    /// Connected again after a loss, within the settling time.
    pub settling: bool,
}

/// The limiter a tier uses now: the shared one while Redis answers and the
/// tier's policy asks for it; otherwise the local engine limiter with this
/// agent's share of every bot-wide limit, so that the agents together stay
/// within it — or nothing at all, when the policy says `pause`.
pub fn tier_mode(backend: LimiterBackend, fallback: LimiterFallback, link: Link) -> LimiterMode {
    let Link {
        connected,
        divisor,
        settling,
    } = link;
    match (backend, connected, fallback) {
        (LimiterBackend::Redis, true, _) if settling => LimiterMode::Settling {
            divisor: divisor.max(1),
        },
        (LimiterBackend::Redis, true, _) => LimiterMode::Shared,
        (LimiterBackend::Redis, false, LimiterFallback::Pause) => LimiterMode::Paused,
        _ => LimiterMode::LocalShare {
            divisor: divisor.max(1),
        },
    }
}

/// What one tier applies now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierLimits {
    /// The tier's limits as its policy sets them.
    pub configured: Limits,
    pub mode: LimiterMode,
    /// What the local (engine) limiter enforces: the configured limits, or
    /// this agent's share of their bot-wide keys. A share too small to
    /// admit anything stays whole here.
    pub local: Limits,
}

/// What a send passes after the local limiter admitted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing more: the local limiter is the whole limit (or its share).
    Open,
    /// Nothing leaves.
    Paused,
    /// A decision of the shared limiter.
    Shared(Box<SharedLimits>),
}

/// What a send asks of the shared limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedLimits {
    /// The configured limits, fleet-guarded; only their bot-wide keys are
    /// asked.
    pub limits: Limits,
    /// How long the decision may hold the send.
    pub delay: SendDelay,
}

impl TierLimits {
    /// The one question the agent asks: what `configured` comes to for a
    /// tier with this backend and fallback, given the link (`None`: no
    /// other agents, the embedded store).
    pub fn now(
        configured: Limits,
        backend: LimiterBackend,
        fallback: LimiterFallback,
        link: Option<Link>,
    ) -> TierLimits {
        let mode = match link {
            Some(l) => tier_mode(backend, fallback, l),
            None => LimiterMode::LocalShare { divisor: 1 },
        };
        TierLimits::in_mode(configured, mode)
    }

    /// `configured` under a given mode.
    pub fn in_mode(configured: Limits, mode: LimiterMode) -> TierLimits {
        let local = match mode {
            LimiterMode::LocalShare { divisor } | LimiterMode::Settling { divisor }
                if divisor > 1 =>
            {
                let share = local_share_limits(&configured, divisor);
                if share.validate().is_ok() {
                    share
                } else {
                    configured
                }
            }
            _ => configured,
        };
        TierLimits {
            configured,
            mode,
            local,
        }
    }

    /// What a send of this tier passes after the local limiter.
    pub fn gate(&self) -> Gate {
        match self.mode {
            LimiterMode::LocalShare { .. } => Gate::Open,
            LimiterMode::Paused => Gate::Paused,
            LimiterMode::Shared | LimiterMode::Settling { .. } => {
                Gate::Shared(Box::new(SharedLimits {
                    limits: fleet_guarded(self.configured),
                    delay: SendDelay::for_limits(&self.configured),
                }))
            }
        }
    }
}

/// How long after the link returns an agent stays [`LimiterMode::Settling`]
/// beyond the lease TTL: two periods of Telegram's bot-wide limit, so that
/// the last local-only send of an agent that never reconnected (its leases
/// lapse within the lease TTL) has left every one-second window before any
/// agent sends above its share again.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(2);

/// One full cell of a limit: its emission interval plus its burst
/// tolerance. After that long without a send, the key is as fresh as a
/// new limiter assumes.
fn full_cell(l: &Limit) -> Duration {
    let c = l.cell();
    Duration::from_nanos(c.interval.saturating_add(c.tolerance))
}

/// How long a restarted agent waits before its first send. The limiter's
/// memory died with the old process while the API's windows did not; after
/// one full cell of the slowest key, every key is as fresh as the limiter
/// assumes. For Telegram's limits that is the group key: 3 s. At most
/// 10 minutes.
pub fn restart_quiet<'a>(tiers: impl IntoIterator<Item = &'a Limits>) -> Duration {
    tiers
        .into_iter()
        .flat_map(|l| [Some(l.global), l.per_chat, l.per_group])
        .flatten()
        .map(|l| full_cell(&l))
        .max()
        .unwrap_or_default()
        .min(Duration::from_secs(600))
}

/// How long a starting agent on its own store waits before its first send,
/// given what the store shows. The whole `quiet` ([`restart_quiet`]) while
/// messages are still open: one of them may have been sent an instant
/// before the restart without its outcome being recorded. Otherwise every
/// send happened no later than the latest recorded outcome, so only what is
/// left of `quiet` after it (nothing for a store that never recorded one;
/// the whole of it if the clock went back).
pub fn start_quiet(
    quiet: Duration,
    open_messages: bool,
    last_outcome_ms: Option<u64>,
    now_ms: u64,
) -> Duration {
    if open_messages {
        return quiet;
    }
    match last_outcome_ms {
        None => Duration::ZERO,
        Some(at) => quiet.saturating_sub(Duration::from_millis(now_ms.saturating_sub(at))),
    }
}

/// How long to wait before sending when tiers changed mode, the longest of
/// the tiers that changed:
/// - from shared decisions to a local share (or a pause): one whole period
///   of the bot-wide key. The local cells never saw the other agents'
///   sends, so this agent's share starts only when every window holding
///   them has passed;
/// - between a local share and settling, and from settling to shared:
///   nothing. The local limiter keeps this agent to its share across the
///   change, and settling agents' sends are in Redis too;
/// - any other change: one full bot-wide cell (a fresh limiter's burst).
pub fn switch_quiet(before: &[TierLimits], after: &[TierLimits]) -> Duration {
    before
        .iter()
        .zip(after)
        .map(|(old, new)| {
            let global = &old.configured.global;
            match (old.mode, new.mode) {
                (a, b) if a == b => Duration::ZERO,
                (LimiterMode::Shared, LimiterMode::LocalShare { .. } | LimiterMode::Paused) => {
                    full_cell(global).max(global.period)
                }
                (LimiterMode::LocalShare { .. }, LimiterMode::Settling { .. })
                | (
                    LimiterMode::Settling { .. },
                    LimiterMode::LocalShare { .. } | LimiterMode::Shared,
                ) => Duration::ZERO,
                _ => full_cell(global),
            }
        })
        .max()
        .unwrap_or_default()
}

/// This agent's part of `limit` when `last_known_live` agents share it
/// without a common store.
///
/// [`Limit::split`] stretches the period `n` times, but each share keeps a
/// burst of at least 1, so `n` agents can together admit `n` cells at once
/// where the whole limit allows only `burst`. This removes that excess `e`
/// from the rate before splitting: `n` shares of `rate - e` cells per
/// `n·period` admit, in any window `W >= period`, at most
/// `floor((rate - e)·W/period) + burst + e <= floor(rate·W/period) + burst`.
/// When `e >= rate` no positive rate keeps that promise and the share is
/// rate 0: the agent admits nothing and waits for Redis.
pub fn local_share(limit: Limit, last_known_live: u32) -> Limit {
    let n = last_known_live.max(1);
    let burst = limit.burst.max(1);
    let share_burst = (burst / n).max(1);
    let excess = (u64::from(n) * u64::from(share_burst)).saturating_sub(u64::from(burst));
    let rate = u64::from(limit.rate).saturating_sub(excess);
    Limit {
        rate: u32::try_from(rate).unwrap_or(0),
        ..limit
    }
    .split(n)
}

/// The local share of a tier's limits. Only the bot-wide keys (global and
/// priority shares) are split: a chat or group lives in one partition,
/// owned by one agent, so its limits stay whole.
pub fn local_share_limits(limits: &Limits, last_known_live: u32) -> Limits {
    Limits {
        global: local_share(limits.global, last_known_live),
        shares: limits
            .shares
            .map(|s| s.map(|l| local_share(l, last_known_live))),
        ..*limits
    }
}

/// The guard of a bot-wide key decided in Redis, in percent of its
/// interval, at least. Sends of several agents reach the API with more
/// spread than one process's (a Redis round trip and two schedulers between
/// the decision and the wire): 3 agents, a sandbox and Redis on 2 loaded
/// cores compressed 30 gaps by up to 10 ms routinely and by more than
/// 20 ms about once in 3,000 sends. A guard of `g` percent absorbs one send
/// arriving up to `10 * g` ms behind its slot while the others keep theirs;
/// 3 % (30 ms) drew a per-bot 429 when two sends arrived 51 ms and 18 ms
/// behind their slots, together; the cause was a slow Redis answer, now
/// counted as lateness by the send gate (`fleet::answer_delay`). 4 %
/// absorbs 40 ms of what remains (the wire, a stall after the last check)
/// and keeps 96 % of the limit, which the fleet's utilization promise
/// (95 %) still allows.
pub const FLEET_GUARD_PERCENT: u32 = 4;

/// `limits` with the bot-wide keys' guard raised to [`FLEET_GUARD_PERCENT`]
/// where it is smaller.
pub fn fleet_guarded(limits: Limits) -> Limits {
    let wider = |l: Limit| {
        let w = l.with_guard(Guard::percent(FLEET_GUARD_PERCENT));
        if w.cell().interval > l.cell().interval {
            w
        } else {
            l
        }
    };
    Limits {
        global: wider(limits.global),
        shares: limits.shares.map(|s| s.map(wider)),
        ..limits
    }
}

/// How far ahead a shared decision may reserve a slot at most (less when
/// the chat guard is thinner, see [`SendDelay`]): enough that agents
/// queue for the next global slot instead of polling for it, short enough
/// that a send never sleeps long on a reservation.
pub const SHARED_HORIZON: Duration = Duration::from_millis(50);

/// How late after its reserved slot a send may still leave. A quarter of
/// the 40 ms that the fleet guard gives a one-second window, leaving the
/// rest to the wire.
pub const SHARED_LATE_LIMIT: Duration = Duration::from_millis(10);

/// How long the shared decision may hold a send that the local limiter
/// already admitted.
///
/// The local limiter charged the chat's cell at admission; the chat's next
/// message may leave one guarded interval later with no wait at all. If
/// this one left more than the chat key's guard after its admission, the
/// two would reach the API closer than the chat limit allows. So the
/// reservation horizon plus the allowed lateness stay within the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendDelay {
    /// How far ahead the shared decision may reserve a slot.
    pub horizon: Duration,
    /// How late after its reserved slot the send may still leave.
    pub late: Duration,
}

impl SendDelay {
    /// For a tier's limits: the smallest guard of its chat and group keys
    /// bounds the delay; without such keys the defaults apply.
    pub fn for_limits(limits: &Limits) -> SendDelay {
        let guard = [limits.per_chat, limits.per_group]
            .into_iter()
            .flatten()
            .map(|l| Duration::from_nanos(l.cell().interval).saturating_sub(l.nominal_interval()))
            .min();
        let Some(guard) = guard else {
            return SendDelay {
                horizon: SHARED_HORIZON,
                late: SHARED_LATE_LIMIT,
            };
        };
        // Half the guard for lateness at most, and a fifth kept for the
        // decision's round trip and the timer.
        let late = SHARED_LATE_LIMIT.min(guard / 2);
        let horizon = SHARED_HORIZON.min(guard.saturating_sub(late).saturating_sub(guard / 5));
        SendDelay { horizon, late }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::rate_limit_policy::RateLimitPolicySpec;
    use crate::engine::clock::duration_nanos;
    use crate::engine::limiter::{Decision, Key, Limiter};
    use crate::engine::{Instant, SplitMix64};

    fn link(connected: bool, settling: bool, divisor: u32) -> Link {
        Link {
            connected,
            divisor,
            settling,
        }
    }

    fn up(divisor: u32) -> Link {
        link(true, false, divisor)
    }

    fn down(divisor: u32) -> Link {
        link(false, false, divisor)
    }

    #[test]
    fn tiers_share_through_redis_only_when_asked_and_reachable() {
        use LimiterBackend::{Local, Redis};
        use LimiterFallback::{LocalShare, Pause};
        assert_eq!(tier_mode(Redis, LocalShare, up(3)), LimiterMode::Shared);
        assert_eq!(tier_mode(Redis, Pause, up(3)), LimiterMode::Shared);
        assert_eq!(
            tier_mode(Redis, LocalShare, down(3)),
            LimiterMode::LocalShare { divisor: 3 }
        );
        assert_eq!(tier_mode(Redis, Pause, down(3)), LimiterMode::Paused);
        // Back from a loss: shared decisions, and this agent's share too.
        for fallback in [LocalShare, Pause] {
            assert_eq!(
                tier_mode(Redis, fallback, link(true, true, 3)),
                LimiterMode::Settling { divisor: 3 }
            );
        }
        // Settling means nothing while the link is down.
        assert_eq!(
            tier_mode(Redis, LocalShare, link(false, true, 3)),
            LimiterMode::LocalShare { divisor: 3 }
        );
        // A local limiter on a shared queue takes its share even with Redis up.
        for connected in [true, false] {
            for fallback in [LocalShare, Pause] {
                assert_eq!(
                    tier_mode(Local, fallback, link(connected, connected, 0)),
                    LimiterMode::LocalShare { divisor: 1 }
                );
            }
        }
    }

    #[test]
    fn a_tier_applies_its_share_its_pause_or_the_fleet_gate() {
        use LimiterBackend::{Local, Redis};
        use LimiterFallback::{LocalShare, Pause};
        let limits = crate::policy::limits(&RateLimitPolicySpec::default());
        let settling = Some(link(true, true, 3));
        let up = Some(up(3));
        let down = Some(down(3));
        // Alone (the embedded store): the whole limit, nothing to ask.
        let alone = TierLimits::now(limits, Redis, Pause, None);
        assert_eq!(alone.mode, LimiterMode::LocalShare { divisor: 1 });
        assert_eq!((alone.local, alone.gate()), (limits, Gate::Open));
        // Shared: the local limiter keeps the whole limit and the fleet
        // decides the bot-wide keys, with the wider guard.
        let shared = TierLimits::now(limits, Redis, LocalShare, up);
        assert_eq!(shared.local, limits);
        assert_eq!(
            shared.gate(),
            Gate::Shared(Box::new(SharedLimits {
                limits: fleet_guarded(limits),
                delay: SendDelay::for_limits(&limits),
            }))
        );
        // Settling: the fleet decides, and the local limiter keeps this
        // agent to its share meanwhile.
        let settle = TierLimits::now(limits, Redis, LocalShare, settling);
        assert_eq!(settle.local, local_share_limits(&limits, 3));
        assert_eq!(settle.gate(), shared.gate());
        // Redis lost: a third of each bot-wide key, or nothing at all.
        let share = TierLimits::now(limits, Redis, LocalShare, down);
        assert_eq!(share.local, local_share_limits(&limits, 3));
        assert_eq!(share.gate(), Gate::Open);
        let paused = TierLimits::now(limits, Redis, Pause, down);
        assert_eq!((paused.local, paused.gate()), (limits, Gate::Paused));
        // A local backend on a shared queue takes its share with Redis up.
        let local = TierLimits::now(limits, Local, Pause, up);
        assert_eq!(local.local, local_share_limits(&limits, 3));
        // A share too small to admit anything stays whole.
        let mut one = limits;
        one.global = Limit::per_second(1, 1);
        let thin = TierLimits::in_mode(one, LimiterMode::LocalShare { divisor: 2 });
        assert!(local_share_limits(&one, 2).validate().is_err());
        assert_eq!(thin.local, one);
    }

    #[test]
    fn a_start_waits_only_for_sends_that_may_be_in_the_window() {
        let quiet = Duration::from_millis(3_150);
        // Open messages: one may have gone out unrecorded just before.
        assert_eq!(start_quiet(quiet, true, None, 10_000), quiet);
        assert_eq!(start_quiet(quiet, true, Some(0), 10_000), quiet);
        // Nothing ever sent: no wait.
        assert_eq!(start_quiet(quiet, false, None, 10_000), Duration::ZERO);
        // The rest of the cell after the latest outcome.
        assert_eq!(
            start_quiet(quiet, false, Some(9_000), 10_000),
            Duration::from_millis(2_150)
        );
        assert_eq!(
            start_quiet(quiet, false, Some(6_850), 10_000),
            Duration::ZERO
        );
        assert_eq!(start_quiet(quiet, false, Some(1), 10_000), Duration::ZERO);
        // A clock that went back counts as no time passed.
        assert_eq!(start_quiet(quiet, false, Some(12_000), 10_000), quiet);
    }

    #[test]
    fn quiet_periods_cover_what_the_new_limiter_never_saw() {
        let limits = crate::policy::limits(&RateLimitPolicySpec::default());
        // Telegram's defaults: the group key (20 a minute) is the slowest.
        assert_eq!(
            restart_quiet([&limits]),
            full_cell(&limits.per_group.unwrap())
        );
        // 3 s, and the policy's 5 % pacing guard on top.
        assert_eq!(restart_quiet([&limits]), Duration::from_millis(3_150));
        assert_eq!(restart_quiet(std::iter::empty()), Duration::ZERO);
        let mut slow = limits;
        slow.global = Limit::per_second(1, 1);
        slow.global.period = Duration::from_secs(3_600);
        assert_eq!(restart_quiet([&slow]), Duration::from_secs(600));
        // Leaving shared decisions for a local share waits out the
        // bot-wide key's whole period; a local share going back to shared
        // decisions one full cell; settling's changes nothing.
        let shared = TierLimits::in_mode(limits, LimiterMode::Shared);
        let share = TierLimits::in_mode(limits, LimiterMode::LocalShare { divisor: 2 });
        let settling = TierLimits::in_mode(limits, LimiterMode::Settling { divisor: 2 });
        let paused = TierLimits::in_mode(limits, LimiterMode::Paused);
        assert_eq!(switch_quiet(&[shared], &[shared]), Duration::ZERO);
        assert_eq!(
            switch_quiet(&[shared, shared], &[shared, share]),
            Duration::from_secs(1)
        );
        assert_eq!(switch_quiet(&[shared], &[paused]), Duration::from_secs(1));
        assert_eq!(switch_quiet(&[share], &[shared]), full_cell(&limits.global));
        assert_eq!(switch_quiet(&[share], &[settling]), Duration::ZERO);
        assert_eq!(switch_quiet(&[settling], &[shared]), Duration::ZERO);
        assert_eq!(switch_quiet(&[settling], &[share]), Duration::ZERO);
    }

    #[test]
    fn a_shared_wait_never_outlasts_the_chat_guard() {
        // The policy defaults: a 5 % guard on the 1/s chat key, 50 ms.
        let mut limits = crate::policy::limits(&RateLimitPolicySpec::default());
        let d = SendDelay::for_limits(&limits);
        assert_eq!(d.late, SHARED_LATE_LIMIT);
        assert!(d.horizon + d.late < Duration::from_millis(50), "{d:?}");
        assert!(d.horizon >= Duration::from_millis(20), "{d:?}");
        // A thin 1 % chat guard (10 ms) leaves 5 ms of lateness and less
        // than that of horizon.
        limits.per_chat = limits.per_chat.map(|l| l.with_guard(Guard::percent(1)));
        let d = SendDelay::for_limits(&limits);
        assert_eq!(d.late, Duration::from_millis(5));
        assert!(d.horizon + d.late < Duration::from_millis(10), "{d:?}");
        // Without chat or group keys the defaults apply.
        limits.per_chat = None;
        limits.per_group = None;
        let d = SendDelay::for_limits(&limits);
        assert_eq!((d.horizon, d.late), (SHARED_HORIZON, SHARED_LATE_LIMIT));
    }

    #[test]
    fn the_fleet_guard_only_widens() {
        let limits = crate::policy::limits(&RateLimitPolicySpec::default());
        let g = fleet_guarded(limits);
        assert!(g.global.cell().interval > limits.global.cell().interval);
        assert_eq!(
            (g.per_chat, g.per_group),
            (limits.per_chat, limits.per_group)
        );
        let mut wide = limits;
        wide.global = wide.global.with_guard(Guard::percent(10));
        assert_eq!(fleet_guarded(wide).global, wide.global);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For every window of at least the period, `n` local shares
        /// together admit at most what the whole limit does, counted with
        /// the GCRA bound `floor(W / T) + burst` of each share.
        #[test]
        fn local_shares_never_sum_above_the_limit(
            rate in 1u32..200,
            period_ms in 1u64..120_000,
            burst in 1u32..20,
            n in 1u32..80,
            guard_ppm in 0u32..30_000,
            stretch in 0u64..5_000,
        ) {
            let limit = Limit {
                rate,
                period: Duration::from_millis(period_ms),
                burst,
                guard: Guard::Fraction { ppm: guard_ppm },
            };
            let share = local_share(limit, n);
            if n == 1 {
                prop_assert_eq!(share, limit);
            }
            let c = share.cell();
            let p = duration_nanos(limit.period);
            for w in [p, p + 1, p + p / 3, 2 * p - 1, 2 * p, p + p * stretch / 100, 10 * p] {
                let whole = u64::from(rate) * w / p + u64::from(burst);
                let shares = if c.never {
                    0
                } else {
                    u64::from(n) * (w / c.interval + u64::from(share.burst))
                };
                prop_assert!(shares <= whole, "n {} window {}: shares {} > whole {}", n, w, shares, whole);
            }
        }
    }

    /// Most sends of `sends` (sorted, ns) in any closed window of `w` ns.
    fn most_in_window(sends: &[u64], w: u64) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..sends.len() {
            while sends[hi] - sends[lo] > w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    /// A Redis outage shorter than the lease TTL, on `n` greedy agents that
    /// reconnect up to `stagger_ms` apart (the link's jittered backoff):
    /// every send an agent makes, in ns, merged and sorted. `settle`: the
    /// agents pass through [`LimiterMode::Settling`] when the link returns,
    /// as the fleet's links do; otherwise they go straight back to
    /// [`LimiterMode::Shared`].
    fn outage_sends(seed: u64, n: u32, outage_ms: u64, stagger_ms: u64, settle: bool) -> Vec<u64> {
        const LEASE_TTL: Duration = Duration::from_secs(10);
        let ms = |v: u64| Instant::from_nanos(v * 1_000_000);
        let configured = Limits::default();
        let mut rng = SplitMix64::new(seed);
        let outage = ms(3_000);
        let back = outage + Duration::from_millis(outage_ms);
        let end = back + LEASE_TTL + SETTLE_MARGIN + Duration::from_secs(3);
        let mut redis = Limiter::new();
        let mut sends = Vec::new();
        let mut agents: Vec<(Limiter, Instant, Instant, Option<LimiterMode>)> = (0..n)
            .map(|_| {
                let reconnect = back + Duration::from_millis(rng.below(stagger_ms + 1));
                let start = ms(rng.below(30));
                (Limiter::new(), reconnect, start, None)
            })
            .collect();
        // Time-ordered greedy attempts of every agent.
        while let Some((i, _)) = agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.2 < end)
            .min_by_key(|(_, a)| a.2)
        {
            let (local, reconnect, now, last_mode) = &mut agents[i];
            let t = *now;
            *now = t + Duration::from_nanos(500_000 + rng.below(2_500_000));
            let link = Link {
                connected: t < outage || t >= *reconnect,
                divisor: n,
                settling: settle && t >= *reconnect && t < *reconnect + LEASE_TTL + SETTLE_MARGIN,
            };
            let tier = TierLimits::now(
                configured,
                LimiterBackend::Redis,
                LimiterFallback::LocalShare,
                Some(link),
            );
            if *last_mode != Some(tier.mode) {
                if let Some(before) = *last_mode {
                    let quiet = switch_quiet(&[TierLimits::in_mode(configured, before)], &[tier]);
                    *now = (t + quiet).max(*now);
                }
                *last_mode = Some(tier.mode);
                continue;
            }
            let local_check = [(Key::Global, &tier.local.global)];
            let admitted = match tier.gate() {
                Gate::Paused => false,
                Gate::Open => local.check(t, &local_check) == Decision::Admit,
                Gate::Shared(shared) => {
                    let shared_check = [(Key::Global, &shared.limits.global)];
                    if local.peek(t, &local_check) == Decision::Admit
                        && redis.peek(t, &shared_check) == Decision::Admit
                    {
                        local.check(t, &local_check);
                        redis.check(t, &shared_check);
                        true
                    } else {
                        false
                    }
                }
            };
            // An agent whose link stayed down past the lease TTL has lost
            // its partitions: it has nothing to send.
            let leased = *reconnect < outage + LEASE_TTL || t < outage + LEASE_TTL;
            if admitted && leased {
                sends.push(t.as_nanos());
            }
        }
        sends.sort_unstable();
        sends
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the outage's length and however far apart the agents
        /// reconnect, no one-second window holds more than the bot-wide
        /// limit while the fleet goes from shared to local shares and back.
        #[test]
        fn the_fleet_keeps_the_limit_across_a_redis_outage(
            seed in any::<u64>(),
            n in 2u32..5,
            outage_ms in 200u64..8_000,
            stagger_ms in 0u64..4_000,
        ) {
            let sends = outage_sends(seed, n, outage_ms, stagger_ms, true);
            let limit = Limits::default().global;
            let second = duration_nanos(limit.period);
            prop_assert!(
                most_in_window(&sends, second) <= limit.rate as usize,
                "{} sends in one second", most_in_window(&sends, second)
            );
            // Nearly the whole rate is used before and after the outage.
            prop_assert!(sends.len() as u64 >= u64::from(limit.rate) * 3 * 9 / 10);
        }
    }

    /// The test above has teeth: going straight back to shared decisions,
    /// an agent that reconnects first sends at the whole rate while the
    /// others still send their local shares, which Redis never sees.
    #[test]
    fn without_settling_a_staggered_return_breaks_the_limit() {
        let limit = Limits::default().global;
        let second = duration_nanos(limit.period);
        let broken = (0..20)
            .filter(|&seed| {
                let sends = outage_sends(seed, 3, 5_000, 2_000, false);
                most_in_window(&sends, second) > limit.rate as usize
            })
            .count();
        assert!(broken >= 10, "only {broken} of 20 runs broke the limit");
    }

    /// Simulated: `n` agents with local shares, random phases and greedy
    /// senders; the merged sends keep the whole limit on windows of one
    /// and two periods.
    #[test]
    fn local_shares_hold_when_agents_send_greedily() {
        let limit = Limit::TELEGRAM_GLOBAL;
        let p = duration_nanos(limit.period);
        for n in 1..=12u32 {
            let share = local_share(limit, n);
            let mut rng = SplitMix64::new(u64::from(n));
            let mut sends = Vec::new();
            for _ in 0..n {
                let mut l = Limiter::new();
                let mut t = rng.below(p);
                while t < 10 * p {
                    if l.check(Instant::from_nanos(t), &[(Key::Global, &share)]) == Decision::Admit
                    {
                        sends.push(t);
                    }
                    t += 1 + rng.below(3_000_000);
                }
            }
            sends.sort_unstable();
            for w in [p, 2 * p] {
                let whole = (u64::from(limit.rate) * w / p + u64::from(limit.burst)) as usize;
                let mut lo = 0;
                for hi in 0..sends.len() {
                    while sends[hi] - sends[lo] > w {
                        lo += 1;
                    }
                    assert!(hi - lo < whole, "n {n}: {} sends in {w} ns", hi - lo + 1);
                }
            }
            // The price of no coordination: n - 1 cells per period.
            assert_eq!(share.rate, 30 - (n - 1));
        }
        // Too many agents for the per-chat limit: a share admits nothing.
        assert_eq!(local_share(Limit::TELEGRAM_CHAT, 2).rate, 0);
        assert!(local_share(Limit::TELEGRAM_CHAT, 2).cell().never);
    }

    #[test]
    fn local_share_limits_split_only_bot_wide_keys() {
        let mut limits = Limits::default();
        limits.shares[0] = Some(Limit::per_second(10, 1));
        let s = local_share_limits(&limits, 3);
        assert_eq!(s.global, local_share(limits.global, 3));
        assert_eq!(s.shares[0], Some(local_share(Limit::per_second(10, 1), 3)));
        assert_eq!(s.shares[1], None);
        assert_eq!(
            (s.per_chat, s.per_group),
            (limits.per_chat, limits.per_group)
        );
        assert_eq!(local_share_limits(&limits, 1), limits);
    }
}
