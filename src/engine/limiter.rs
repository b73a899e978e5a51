//! GCRA admission per key: the bot-wide limit, each chat, each group and
//! optional per-priority shares.
//!
//! Owns: the arithmetic of the generic cell rate algorithm ([`gcra`]), the
//! per-key state of one bot ([`Limiter`]), the send-time guard and the
//! `retry_after` pause. Leaves to others: choosing which message to try
//! (scheduler), sleeping (agent), sharing state across replicas (the Redis
//! store runs the same arithmetic in one Lua script per decision).
//!
//! Invariant: reads no clock; a refusal charges nothing; in every closed
//! window of length `W` a key admits at most `rate·W/period + burst`.
//!
//! # Semantics
//!
//! A [`Limit`] of `rate` cells per `period` with `burst` has the nominal
//! emission interval `T = period / rate`, rounded *up* to whole nanoseconds so
//! rounding never loosens the limit. The [`Guard`] lengthens it to
//! `T' = T + guard(T)`; the tolerance is `tau = (burst - 1)·T'`. State per key
//! is one number, the theoretical arrival time `TAT` (fresh key: `TAT = 0`).
//! A cell arriving at `now` is admitted iff `now >= TAT - tau`, and then
//! `TAT := max(TAT, now) + T'`; otherwise it is refused and may retry at
//! exactly `TAT - tau`.
//!
//! Bound: if cells are admitted at `t_1 <= ... <= t_k` inside `[s, s + W]`,
//! each admission raises `TAT` by at least `T'` and the first leaves it at
//! `>= s + T'`, so `t_k >= s + (k-1)·T' - tau` and therefore
//! `k <= W/T' + burst <= rate·W/period + burst`.
//!
//! # Why a guard
//!
//! Telegram counts what *arrives*. If each request reaches Telegram after a
//! delay that varies by at most `J`, the arrivals inside a window of length
//! `W` were sent inside a window of length `W + J`, so they number at most
//! `(W + J)/T' + burst`. With a relative guard `g` (`T' = T·(1 + g)`) that is
//! within the nominal limit for every window `W >= J / g`. The measured
//! breaches of a limiter scheduled exactly at the limit were at most 4.3 ms,
//! so the defaults take `J = 10 ms` (twice that) and a 1 s window:
//!
//! - global (30/s): 1 % of `T`, about 0.33 ms per cell, which is 10 ms per
//!   second; a relative guard because an absolute one of a few ms on a 33 ms
//!   interval would cost 10-15 % of throughput;
//! - per chat (1/s) and per group (20/min): an absolute 10 ms per cell, 1 % of
//!   the 1 s chat interval and 0.33 % of the 3 s group interval.
//!
//! Utilization stays at `1 / (1 + g)`: 99 % for the defaults (≥ 98 % needs
//! `g <= 2 %`). Windows shorter than `J / g` (430 ms for 4.3 ms of jitter)
//! are not covered by the guard; Telegram's published limits are per second
//! and per minute.

use std::time::Duration;

use crate::engine::clock::duration_nanos;
use crate::engine::{FastMap, Instant, Priority};

/// How much longer than nominal the emission interval is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Guard {
    /// Pace exactly at the limit (only for sinks that count departures).
    #[default]
    None,
    /// Add this much to every emission interval.
    Fixed(Duration),
    /// Add this fraction of the interval, in parts per million (10 000 = 1 %).
    Fraction { ppm: u32 },
}

impl Guard {
    /// A relative guard of `p` percent.
    pub const fn percent(p: u32) -> Guard {
        Guard::Fraction {
            ppm: p.saturating_mul(10_000),
        }
    }

    /// Extra nanoseconds added to an interval of `t` nanoseconds; rounds up.
    fn extra(self, t: u64) -> u64 {
        match self {
            Guard::None => 0,
            Guard::Fixed(d) => duration_nanos(d),
            Guard::Fraction { ppm } => {
                let scaled = (u128::from(t) * u128::from(ppm)).div_ceil(1_000_000);
                u64::try_from(scaled).unwrap_or(u64::MAX)
            }
        }
    }
}

/// `rate` cells per `period`, with up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: u32,
    pub period: Duration,
    /// Cells that may be admitted back to back after an idle spell; 0 acts
    /// as 1 (rejected by [`Limit::validate`]).
    pub burst: u32,
    pub guard: Guard,
}

/// The default is Telegram's bot-wide limit: see [`Limit::TELEGRAM_GLOBAL`].
impl Default for Limit {
    fn default() -> Self {
        Limit::TELEGRAM_GLOBAL
    }
}

/// A [`Limit`] reduced to the two integers GCRA needs, in nanoseconds.
/// This is what the Redis script receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cell {
    /// `T'`: guarded emission interval. 0 means unlimited.
    pub interval: u64,
    /// `tau = (burst - 1)·T'`.
    pub tolerance: u64,
    /// A zero rate admits nothing.
    pub never: bool,
}

/// A limit that `kubectl apply` or a config file should have rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate must be at least 1")]
    ZeroRate,
    #[error("period must be longer than zero")]
    ZeroPeriod,
    #[error("burst must be at least 1")]
    ZeroBurst,
    #[error("guard fraction {ppm} ppm is above 100 %")]
    GuardTooLarge { ppm: u32 },
}

impl Limit {
    /// About 30 messages per second per bot, paced (no burst), 1 % guard.
    pub const TELEGRAM_GLOBAL: Limit = Limit {
        rate: 30,
        period: Duration::from_secs(1),
        burst: 1,
        guard: Guard::percent(1),
    };

    /// One message per second per chat, 10 ms guard.
    pub const TELEGRAM_CHAT: Limit = Limit {
        rate: 1,
        period: Duration::from_secs(1),
        burst: 1,
        guard: Guard::Fixed(Duration::from_millis(10)),
    };

    /// Twenty messages per minute per group, 10 ms guard.
    pub const TELEGRAM_GROUP: Limit = Limit {
        rate: 20,
        period: Duration::from_secs(60),
        burst: 1,
        guard: Guard::Fixed(Duration::from_millis(10)),
    };

    pub const fn per_second(rate: u32, burst: u32) -> Limit {
        Limit {
            rate,
            period: Duration::from_secs(1),
            burst,
            guard: Guard::None,
        }
    }

    pub const fn with_guard(self, guard: Guard) -> Limit {
        Limit { guard, ..self }
    }

    pub fn validate(&self) -> Result<(), LimitError> {
        if self.rate == 0 {
            return Err(LimitError::ZeroRate);
        }
        if self.period.is_zero() {
            return Err(LimitError::ZeroPeriod);
        }
        if self.burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        if let Guard::Fraction { ppm } = self.guard
            && ppm > 1_000_000
        {
            return Err(LimitError::GuardTooLarge { ppm });
        }
        Ok(())
    }

    /// This replica's part when `replicas` share the limit without a common
    /// store (`fallback: local-share`): the same rate over `replicas` times
    /// the period, so the sum over replicas never exceeds the whole.
    pub fn split(self, replicas: u32) -> Limit {
        let n = replicas.max(1);
        Limit {
            period: self.period.saturating_mul(n),
            burst: (self.burst / n).max(1),
            ..self
        }
    }

    /// The period lengthened by the guard as if it were one interval: the
    /// span a windowed count needs so that arrivals jittered by less than
    /// the guard still fall into windows of `period`.
    pub fn guarded_period(&self) -> Duration {
        let p = duration_nanos(self.period);
        Duration::from_nanos(p.saturating_add(self.guard.extra(p)))
    }

    /// The nominal interval `period / rate`, without guard.
    pub fn nominal_interval(&self) -> Duration {
        Duration::from_nanos(self.nominal_nanos())
    }

    fn nominal_nanos(&self) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        duration_nanos(self.period).div_ceil(u64::from(self.rate))
    }

    pub fn cell(&self) -> Cell {
        let t = self.nominal_nanos();
        let interval = t.saturating_add(self.guard.extra(t));
        let tolerance = interval.saturating_mul(u64::from(self.burst.max(1) - 1));
        Cell {
            interval,
            tolerance,
            never: self.rate == 0,
        }
    }
}

impl Cell {
    /// GCRA on raw nanoseconds: `Ok(new_tat)` when admitted, `Err(retry_at)`
    /// when refused. The Lua script mirrors exactly this.
    pub fn step(self, now: u64, tat: u64) -> Result<u64, u64> {
        if self.never {
            return Err(u64::MAX);
        }
        if tat > now.saturating_add(self.tolerance) {
            return Err(tat - self.tolerance);
        }
        Ok(tat.max(now).saturating_add(self.interval))
    }
}

/// One GCRA decision for one key: `Ok(new_tat)` when a cell arriving at `now`
/// is admitted, `Err(retry_at)` (the earliest admitting instant, with `tat`
/// unchanged) when refused. A fresh key has `tat = Instant::ZERO`.
pub fn gcra(now: Instant, tat: Instant, limit: &Limit) -> Result<Instant, Instant> {
    limit
        .cell()
        .step(now.as_nanos(), tat.as_nanos())
        .map(Instant::from_nanos)
        .map_err(Instant::from_nanos)
}

/// What a limit applies to, within one bot (one [`Limiter`] per bot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Global,
    Chat(i64),
    Group(i64),
    /// A priority class's share of the global rate.
    Share(Priority),
}

/// Whom a message goes to, as far as limits are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A private chat or channel: the per-chat limit applies.
    Chat(i64),
    /// A group or supergroup: per-chat and per-group limits apply.
    Group(i64),
    /// No chat (webhook, spool): only global and share limits apply.
    Unscoped,
}

/// The limits of one bot or endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub global: Limit,
    pub per_chat: Option<Limit>,
    pub per_group: Option<Limit>,
    /// Per-priority ceilings, indexed by [`Priority::index`].
    pub shares: [Option<Limit>; 4],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: Limit::TELEGRAM_GLOBAL,
            per_chat: Some(Limit::TELEGRAM_CHAT),
            per_group: Some(Limit::TELEGRAM_GROUP),
            shares: [None; 4],
        }
    }
}

/// Up to four `(key, limit)` pairs for one message, on the stack.
#[derive(Clone, Copy, Debug)]
pub struct Checks<'a> {
    items: [(Key, &'a Limit); 4],
    len: usize,
}

impl<'a> Checks<'a> {
    pub fn as_slice(&self) -> &[(Key, &'a Limit)] {
        &self.items[..self.len]
    }

    fn push(&mut self, key: Key, limit: &'a Limit) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, limit);
            self.len += 1;
        }
    }
}

impl<'a> std::ops::Deref for Checks<'a> {
    type Target = [(Key, &'a Limit)];
    fn deref(&self) -> &Self::Target {
        self.as_slice()
    }
}

impl Limits {
    /// The keys a message to `recipient` at `priority` must pass, without
    /// allocating: global, then the priority share, chat and group if set.
    pub fn checks(&self, recipient: Recipient, priority: Priority) -> Checks<'_> {
        let mut c = Checks {
            items: [(Key::Global, &self.global); 4],
            len: 1,
        };
        if let Some(share) = &self.shares[priority.index()] {
            c.push(Key::Share(priority), share);
        }
        let chat = match recipient {
            Recipient::Chat(id) | Recipient::Group(id) => Some(id),
            Recipient::Unscoped => None,
        };
        if let (Some(id), Some(limit)) = (chat, &self.per_chat) {
            c.push(Key::Chat(id), limit);
        }
        if let (Recipient::Group(id), Some(limit)) = (recipient, &self.per_group) {
            c.push(Key::Group(id), limit);
        }
        c
    }

    pub fn validate(&self) -> Result<(), LimitError> {
        self.global.validate()?;
        for limit in [self.per_chat, self.per_group]
            .iter()
            .chain(self.shares.iter())
            .flatten()
        {
            limit.validate()?;
        }
        Ok(())
    }
}

/// Why a check was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// The whole bot is paused after a 429.
    PausedAll,
    /// This key is paused.
    Paused(Key),
    /// This key's rate is exhausted.
    Rate(Key),
}

/// The answer to [`Limiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Every key admitted and was charged.
    Admit,
    /// Nothing was charged. With the state unchanged, every key admits at
    /// `retry_at` and not before; `binding` is the key that sets it.
    Refuse { retry_at: Instant, binding: Binding },
}

/// What [`Limiter::pause`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PauseScope {
    /// Every check, whatever its keys: a 429 on the bot.
    All,
    /// Checks that include this key.
    Key(Key),
}

/// What one admission charged: each key with its TAT before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    items: [(Key, Instant, Instant); 4],
    len: usize,
}

impl Default for Charge {
    fn default() -> Self {
        Charge {
            items: [(Key::Global, Instant::ZERO, Instant::ZERO); 4],
            len: 0,
        }
    }
}

impl Charge {
    fn push(&mut self, key: Key, before: Instant, after: Instant) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, before, after);
            self.len += 1;
        }
    }
}

/// Per-key GCRA state of one bot, in memory.
#[derive(Clone, Debug, Default)]
pub struct Limiter {
    tats: FastMap<Key, Instant>,
    paused_all: Instant,
    paused: FastMap<Key, Instant>,
}

impl Limiter {
    pub fn new() -> Self {
        Limiter::default()
    }

    /// Admit and charge every key, or none. Keys are normally distinct; a
    /// repeated key is charged once per occurrence, in order, and then
    /// `retry_at` is a lower bound rather than exact.
    pub fn check(&mut self, now: Instant, checks: &[(Key, &Limit)]) -> Decision {
        self.check_charged(now, checks).0
    }

    /// [`Limiter::check`], also answering what an admission charged, for
    /// [`Limiter::refund`] if the message is not sent after all.
    pub fn check_charged(&mut self, now: Instant, checks: &[(Key, &Limit)]) -> (Decision, Charge) {
        let decision = self.peek(now, checks);
        let mut charge = Charge::default();
        if decision == Decision::Admit {
            for (key, limit) in checks {
                let tat = self.tats.entry(*key).or_insert(Instant::ZERO);
                if let Ok(next) = gcra(now, *tat, limit) {
                    charge.push(*key, *tat, next);
                    *tat = next;
                }
            }
        }
        (decision, charge)
    }

    /// The earliest instant at or after `now` at which every key admits,
    /// charged as if the cell arrived then: the admission of a cell that
    /// must go, only *when* being open. A second limiter fed with the
    /// instants sends really start replays the first one's decisions
    /// exactly while they start on time, and re-paces them after they
    /// started late, so that lateness that differs from send to send never
    /// bunches them closer than the limits.
    pub fn reserve(&mut self, now: Instant, checks: &[(Key, &Limit)]) -> (Instant, Charge) {
        let mut at = now;
        // `retry_at` is exact unless a key repeats in `checks`; then it is
        // a lower bound, and each round charges nothing and moves on.
        for _ in 0..=checks.len() {
            match self.check_charged(at, checks) {
                (Decision::Admit, charge) => return (at, charge),
                (Decision::Refuse { retry_at, .. }, _) => at = retry_at.max(at),
            }
        }
        // Only a pause could refuse this often, and a limiter that reserves
        // is never paused; charge at the last answer all the same.
        let mut charge = Charge::default();
        for (key, limit) in checks {
            let tat = self.tats.entry(*key).or_insert(Instant::ZERO);
            let next = gcra(at.max(*tat), *tat, limit).unwrap_or(*tat);
            charge.push(*key, *tat, next);
            *tat = next;
        }
        (at, charge)
    }

    /// Takes back an admission that sent nothing (a shared budget refused
    /// it): each key whose TAT is still what the admission left goes back
    /// to what it was before. A key charged again since keeps its state —
    /// undoing one cell under later ones could admit more than the limit.
    pub fn refund(&mut self, charge: &Charge) {
        for &(key, before, after) in charge.items.iter().take(charge.len).rev() {
            if self.tats.get(&key) == Some(&after) {
                if before == Instant::ZERO {
                    self.tats.remove(&key);
                } else {
                    self.tats.insert(key, before);
                }
            }
        }
    }

    /// What [`Limiter::check`] would answer, without charging anything.
    pub fn peek(&self, now: Instant, checks: &[(Key, &Limit)]) -> Decision {
        let mut worst: Option<(Instant, Binding)> = None;
        let mut refuse = |at: Instant, why: Binding| {
            if worst.is_none_or(|(w, _)| at > w) {
                worst = Some((at, why));
            }
        };
        if now < self.paused_all {
            refuse(self.paused_all, Binding::PausedAll);
        }
        for (i, (key, limit)) in checks.iter().enumerate() {
            if let Some(&until) = self.paused.get(key)
                && now < until
            {
                refuse(until, Binding::Paused(*key));
            }
            let tat = self.tentative_tat(now, checks, i);
            if let Err(at) = gcra(now, tat, limit) {
                refuse(at, Binding::Rate(*key));
            }
        }
        match worst {
            None => Decision::Admit,
            Some((retry_at, binding)) => Decision::Refuse { retry_at, binding },
        }
    }

    /// The TAT that `checks[i]` sees once earlier occurrences of the same key
    /// in this check have been charged.
    fn tentative_tat(&self, now: Instant, checks: &[(Key, &Limit)], i: usize) -> Instant {
        let key = checks[i].0;
        let mut tat = self.tats.get(&key).copied().unwrap_or(Instant::ZERO);
        for (k, limit) in &checks[..i] {
            if *k == key {
                tat = gcra(now, tat, limit).unwrap_or(tat);
            }
        }
        tat
    }

    /// Nothing in `scope` admits before `until` (Telegram's `retry_after`).
    /// Pauses only ever extend. After the pause, the ordinary GCRA state
    /// applies, so keep Telegram bursts small.
    pub fn pause(&mut self, scope: PauseScope, until: Instant) {
        match scope {
            PauseScope::All => self.paused_all = self.paused_all.max(until),
            PauseScope::Key(key) => {
                let p = self.paused.entry(key).or_insert(until);
                *p = (*p).max(until);
            }
        }
    }

    /// The bot-wide pause, if one is in force at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        (now < self.paused_all).then_some(self.paused_all)
    }

    /// The stored TAT of `key` (`None`: fresh).
    pub fn tat(&self, key: &Key) -> Option<Instant> {
        self.tats.get(key).copied()
    }

    /// Drop keys whose TAT is not after `now` and expired pauses: a key with
    /// `TAT <= now` decides exactly as a fresh one. Returns how many keys went.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.tats.len();
        self.tats.retain(|_, tat| *tat > now);
        self.paused.retain(|_, until| *until > now);
        before - self.tats.len()
    }

    /// Keys holding state.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn sends_that_started_late_together_are_paced_again() {
        let global = Limit::TELEGRAM_GLOBAL;
        let checks = [(Key::Global, &global)];
        let interval = global.cell().interval;
        let (mut handed, mut starts) = (Limiter::new(), Limiter::new());
        let slots: Vec<Instant> = (0..60)
            .map(|i| Instant::from_nanos(i * interval))
            .inspect(|&at| assert_eq!(handed.check(at, &checks), Decision::Admit))
            .collect();
        // The first ten tasks start together 300 ms late (a busy runtime);
        // the rest on time.
        let late = Instant::from_nanos(300 * MS);
        let reserved: Vec<u64> = slots
            .iter()
            .map(|&slot| starts.reserve(slot.max(late), &checks).0.as_nanos())
            .collect();
        assert!(reserved.windows(2).all(|w| w[1] - w[0] >= interval));
        assert_eq!(reserved[0], 300 * MS);
        // What the API counts: at most 30 in any second.
        assert!(max_in_window(&reserved, 1_000 * MS) <= 30);
    }

    #[test]
    fn a_reservation_waits_out_a_pause() {
        let chat = Limit::per_second(1, 1);
        let mut l = Limiter::new();
        let until = Instant::from_secs(5);
        l.pause(PauseScope::Key(Key::Chat(1)), until);
        l.pause(PauseScope::All, Instant::from_secs(3));
        let checks = [(Key::Global, &chat), (Key::Chat(1), &chat)];
        let (at, _) = l.reserve(Instant::from_secs(1), &checks);
        assert_eq!(at, until);
        assert_eq!(l.tat(&Key::Chat(1)), Some(until + Duration::from_secs(1)));
        // A key twice over a burst of one can never admit at once (a
        // caller's mistake): the reservation still ends, later, charged.
        let twice = [(Key::Chat(2), &chat), (Key::Chat(2), &chat)];
        let (at, _) = l.reserve(Instant::from_secs(10), &twice);
        assert!(at > Instant::from_secs(10));
        assert!(l.tat(&Key::Chat(2)) > Some(at));
    }

    #[test]
    fn a_refund_takes_back_an_untouched_admission_only() {
        let chat = Limit::per_second(1, 1);
        let global = Limit::per_second(30, 1);
        let at = |ms: u64| Instant::ZERO + Duration::from_millis(ms);
        let mut l = Limiter::new();
        let checks = [(Key::Global, &global), (Key::Chat(7), &chat)];
        let (d, charge) = l.check_charged(at(1_000), &checks);
        assert_eq!(d, Decision::Admit);
        // Another chat goes meanwhile: the global key moved, chat 7 did not.
        assert_eq!(
            l.check(at(1_100), &[(Key::Global, &global), (Key::Chat(8), &chat)]),
            Decision::Admit
        );
        let global_after = l.tat(&Key::Global);
        l.refund(&charge);
        assert_eq!(l.tat(&Key::Chat(7)), None, "chat 7 is fresh again");
        assert_eq!(
            l.tat(&Key::Global),
            global_after,
            "the global key keeps both cells"
        );
        assert_eq!(
            l.check(at(1_200), &checks),
            Decision::Admit,
            "chat 7 may send as soon as the global key allows"
        );
        // A refused check charges nothing, so its refund changes nothing.
        let before = l.clone();
        let (d, charge) = l.check_charged(at(1_210), &checks);
        assert!(matches!(d, Decision::Refuse { .. }));
        l.refund(&charge);
        assert_eq!(l.tat(&Key::Chat(7)), before.tat(&Key::Chat(7)));
        assert_eq!(l.tat(&Key::Global), before.tat(&Key::Global));
    }

    const MS: u64 = 1_000_000;

    fn at_ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn cell_rounds_up_and_guards() {
        let c = Limit::per_second(3, 1).cell();
        assert_eq!(c.interval, 333_333_334);
        assert_eq!(c.tolerance, 0);
        let g = Limit::TELEGRAM_GLOBAL.cell();
        assert_eq!(g.interval, 33_333_334 + 333_334);
        let chat = Limit::TELEGRAM_CHAT.cell();
        assert_eq!(chat.interval, 1_010 * MS);
        let b = Limit::per_second(10, 5).cell();
        assert_eq!(b.tolerance, 4 * 100 * MS);
    }

    #[test]
    fn burst_then_paced() {
        let limit = Limit::per_second(10, 3);
        let mut l = Limiter::new();
        let checks = [(Key::Global, &limit)];
        for _ in 0..3 {
            assert_eq!(l.check(at_ms(0), &checks), Decision::Admit);
        }
        assert_eq!(
            l.check(at_ms(0), &checks),
            Decision::Refuse {
                retry_at: at_ms(100),
                binding: Binding::Rate(Key::Global)
            }
        );
        assert!(matches!(
            l.check(at_ms(99), &checks),
            Decision::Refuse { .. }
        ));
        assert_eq!(l.check(at_ms(100), &checks), Decision::Admit);
    }

    #[test]
    fn multi_key_refusal_charges_nothing_and_names_latest() {
        let global = Limit::per_second(10, 1);
        let chat = Limit::per_second(1, 1);
        let mut l = Limiter::new();
        let a = [(Key::Global, &global), (Key::Chat(1), &chat)];
        assert_eq!(l.check(at_ms(0), &a), Decision::Admit);
        let before = l.tat(&Key::Global);
        // Global admits at 100 ms, chat at 1 s: refuse with the later one.
        assert_eq!(
            l.check(at_ms(150), &a),
            Decision::Refuse {
                retry_at: at_ms(1000),
                binding: Binding::Rate(Key::Chat(1))
            }
        );
        assert_eq!(l.tat(&Key::Global), before);
        // Another chat is not held back by chat 1.
        let b = [(Key::Global, &global), (Key::Chat(2), &chat)];
        assert_eq!(l.check(at_ms(150), &b), Decision::Admit);
    }

    #[test]
    fn repeated_key_is_charged_per_occurrence() {
        let limit = Limit::per_second(10, 2);
        let mut l = Limiter::new();
        let twice = [(Key::Global, &limit), (Key::Global, &limit)];
        assert_eq!(l.check(at_ms(0), &twice), Decision::Admit);
        assert_eq!(l.tat(&Key::Global), Some(at_ms(200)));
        assert!(matches!(l.check(at_ms(0), &twice), Decision::Refuse { .. }));
        assert_eq!(l.tat(&Key::Global), Some(at_ms(200)));
    }

    #[test]
    fn pause_all_blocks_everything_until() {
        let limit = Limit::per_second(10, 1);
        let mut l = Limiter::new();
        l.pause(PauseScope::All, at_ms(5_000));
        l.pause(PauseScope::All, at_ms(1_000)); // never shortens
        let c = [(Key::Chat(7), &limit)];
        assert_eq!(
            l.check(at_ms(10), &c),
            Decision::Refuse {
                retry_at: at_ms(5_000),
                binding: Binding::PausedAll
            }
        );
        assert_eq!(l.paused_until(at_ms(10)), Some(at_ms(5_000)));
        assert_eq!(l.check(at_ms(5_000), &c), Decision::Admit);
        assert_eq!(l.paused_until(at_ms(5_000)), None);
    }

    #[test]
    fn pause_key_only_blocks_that_key() {
        let limit = Limit::per_second(10, 1);
        let mut l = Limiter::new();
        l.pause(PauseScope::Key(Key::Chat(1)), at_ms(2_000));
        assert!(matches!(
            l.check(at_ms(0), &[(Key::Chat(1), &limit)]),
            Decision::Refuse {
                binding: Binding::Paused(Key::Chat(1)),
                ..
            }
        ));
        assert_eq!(
            l.check(at_ms(0), &[(Key::Chat(2), &limit)]),
            Decision::Admit
        );
    }

    #[test]
    fn evict_idle_keeps_only_future_tats() {
        let limit = Limit::per_second(1, 1);
        let mut l = Limiter::new();
        l.check(at_ms(0), &[(Key::Chat(1), &limit)]);
        l.check(at_ms(500), &[(Key::Chat(2), &limit)]);
        assert_eq!(l.evict_idle(at_ms(1_000)), 1);
        assert_eq!(l.tat(&Key::Chat(1)), None);
        assert_eq!(l.tat(&Key::Chat(2)), Some(at_ms(1_500)));
    }

    #[test]
    fn degenerate_limits_do_not_panic() {
        let zero_rate = Limit {
            rate: 0,
            ..Limit::per_second(1, 1)
        };
        assert_eq!(gcra(at_ms(0), Instant::ZERO, &zero_rate), Err(Instant::MAX));
        assert_eq!(zero_rate.validate(), Err(LimitError::ZeroRate));
        let zero_period = Limit {
            period: Duration::ZERO,
            ..Limit::per_second(1, 1)
        };
        assert_eq!(gcra(at_ms(0), at_ms(0), &zero_period), Ok(at_ms(0)));
        let zero_burst = Limit::per_second(1, 0);
        assert_eq!(zero_burst.validate(), Err(LimitError::ZeroBurst));
        assert_eq!(gcra(at_ms(0), Instant::ZERO, &zero_burst), Ok(at_ms(1000)));
        let huge = Limit::per_second(1, u32::MAX).with_guard(Guard::Fixed(Duration::MAX));
        assert!(gcra(Instant::MAX, Instant::MAX, &huge).is_ok());
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn checks_build_without_allocating_the_right_keys() {
        let mut limits = Limits::default();
        limits.shares[Priority::Low.index()] = Some(Limit::per_second(10, 1));
        let keys: Vec<Key> = limits
            .checks(Recipient::Group(-5), Priority::Low)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            keys,
            [
                Key::Global,
                Key::Share(Priority::Low),
                Key::Chat(-5),
                Key::Group(-5)
            ]
        );
        assert_eq!(limits.checks(Recipient::Unscoped, Priority::High).len(), 1);
        assert_eq!(limits.checks(Recipient::Chat(3), Priority::High).len(), 2);
    }

    #[test]
    fn split_shares_never_exceed_the_whole() {
        let whole = Limit::per_second(30, 4);
        let part = whole.split(4);
        assert_eq!(part.period, Duration::from_secs(4));
        assert_eq!(part.burst, 1);
        assert_eq!(whole.split(0), Limit { burst: 4, ..whole });
    }

    /// Drains a backlog spread over `chats` chats as fast as allowed and
    /// returns the admissions as (time, chat).
    fn drain_with_chats(limits: &Limits, chats: i64, horizon: Instant) -> Vec<(Instant, i64)> {
        let mut l = Limiter::new();
        let mut now = Instant::ZERO;
        let mut admitted = Vec::new();
        let mut next_chat = 0;
        while now < horizon {
            // Try chats round-robin; after a full round of refusals sleep to
            // the earliest retry.
            let mut earliest = Instant::MAX;
            let mut sent = false;
            for _ in 0..chats {
                let chat = next_chat;
                next_chat = (next_chat + 1) % chats;
                match l.check(now, &limits.checks(Recipient::Chat(chat), Priority::Normal)) {
                    Decision::Admit => {
                        admitted.push((now, chat));
                        sent = true;
                        break;
                    }
                    Decision::Refuse { retry_at, .. } => earliest = earliest.min(retry_at),
                }
            }
            if !sent {
                now = earliest;
            }
        }
        admitted.retain(|(t, _)| *t < horizon);
        admitted
    }

    fn drain(limits: &Limits, chats: i64, horizon: Instant) -> Vec<Instant> {
        drain_with_chats(limits, chats, horizon)
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn unguarded_schedule_breaks_the_limit_under_jitter() {
        // The failure the guard exists for: 31 sends exactly at the limit,
        // the first delayed by 5 ms, arrive within 995 ms, over the nominal
        // bound for a 999 ms window.
        let limits = Limits {
            global: Limit::TELEGRAM_GLOBAL.with_guard(Guard::None),
            ..Limits::default()
        };
        let sends = drain(&limits, 100, Instant::from_millis(1_001));
        let mut arrivals: Vec<u64> = sends.iter().map(|t| t.as_nanos()).collect();
        arrivals[0] += 5 * MS;
        arrivals.sort_unstable();
        let w = 999 * MS;
        assert!(max_in_window(&arrivals, w) > bound(&limits.global, w));
        // The same with the default guard stays within it.
        let guarded = drain(&Limits::default(), 100, Instant::from_millis(1_001));
        let mut arrivals: Vec<u64> = guarded.iter().map(|t| t.as_nanos()).collect();
        arrivals[0] += 5 * MS;
        arrivals.sort_unstable();
        assert!(max_in_window(&arrivals, w) <= bound(&limits.global, w));
    }

    #[test]
    fn default_guard_keeps_utilization_at_least_98_percent() {
        let limits = Limits::default();
        let sent = drain(&limits, 100, Instant::from_secs(60)).len();
        let nominal = 30 * 60;
        let utilization = sent as f64 / nominal as f64;
        assert!(utilization >= 0.98, "utilization {utilization}");
        assert!(sent <= nominal + 1, "sent {sent}");
    }

    /// Largest count of `times` (sorted) in any closed window of `w` nanos.
    fn max_in_window(times: &[u64], w: u64) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] - times[lo] > w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    fn bound(limit: &Limit, w: u64) -> usize {
        // rate·W/period + burst, floored.
        let p = duration_nanos(limit.period);
        (u128::from(limit.rate) * u128::from(w) / u128::from(p)) as usize
            + limit.burst.max(1) as usize
    }

    /// Each key's instants keep `bound` on windows from none to ten periods.
    fn windows_hold(
        per_key: HashMap<Key, Vec<u64>>,
        global: &Limit,
        chat: &Limit,
    ) -> Result<(), TestCaseError> {
        for (key, mut times) in per_key {
            times.sort_unstable();
            let limit = if key == Key::Global { global } else { chat };
            let period = duration_nanos(limit.period);
            for w in [0, period / 3, period, 2 * period + 7, 10 * period] {
                prop_assert!(
                    max_in_window(&times, w) <= bound(limit, w),
                    "key {:?} window {} count {} bound {}",
                    key,
                    w,
                    max_in_window(&times, w),
                    bound(limit, w)
                );
            }
        }
        Ok(())
    }

    fn arb_limit() -> impl Strategy<Value = Limit> {
        (
            1u32..50,
            1u64..3_000,
            1u32..6,
            prop_oneof![
                Just(Guard::None),
                (0u64..20).prop_map(|ms| Guard::Fixed(Duration::from_millis(ms))),
                (0u32..50_000).prop_map(|ppm| Guard::Fraction { ppm }),
            ],
        )
            .prop_map(|(rate, period_ms, burst, guard)| Limit {
                rate,
                period: Duration::from_millis(period_ms),
                burst,
                guard,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// (a) Each key admits at most rate·W/period + burst in any window,
        /// with guards and multi-key checks; refusals charge nothing.
        #[test]
        fn windows_hold_for_every_key(
            global in arb_limit(),
            chat in arb_limit(),
            steps in proptest::collection::vec((0u64..200, 0i64..3), 1..400),
        ) {
            let mut l = Limiter::new();
            let mut now = 0u64;
            let mut per_key: HashMap<Key, Vec<u64>> = HashMap::new();
            for (dt_ms, c) in steps {
                now += dt_ms * MS / 4;
                let checks = [(Key::Global, &global), (Key::Chat(c), &chat)];
                let before = (l.tat(&Key::Global), l.tat(&Key::Chat(c)));
                match l.check(Instant::from_nanos(now), &checks) {
                    Decision::Admit => {
                        per_key.entry(Key::Global).or_default().push(now);
                        per_key.entry(Key::Chat(c)).or_default().push(now);
                    }
                    Decision::Refuse { retry_at, .. } => {
                        prop_assert!(retry_at > Instant::from_nanos(now));
                        prop_assert_eq!(before, (l.tat(&Key::Global), l.tat(&Key::Chat(c))));
                        // Exact: one nanosecond earlier still refuses, at
                        // retry_at everything admits.
                        let probe = l.clone();
                        let early = Instant::from_nanos(retry_at.as_nanos() - 1);
                        prop_assert!(probe.peek(early, &checks) != Decision::Admit);
                        prop_assert_eq!(probe.peek(retry_at, &checks), Decision::Admit);
                    }
                }
            }
            windows_hold(per_key, &global, &chat)?;
        }

        /// Fed the instants a first limiter admitted, a second one reserves
        /// each at that very instant: sends that start on time never wait.
        #[test]
        fn reserving_on_time_sends_never_waits(
            global in arb_limit(),
            chat in arb_limit(),
            steps in proptest::collection::vec((0u64..200, 0i64..3), 1..300),
        ) {
            let (mut first, mut starts) = (Limiter::new(), Limiter::new());
            let mut now = 0u64;
            for (dt_ms, c) in steps {
                now += dt_ms * MS / 4;
                let at = Instant::from_nanos(now);
                let checks = [(Key::Global, &global), (Key::Chat(c), &chat)];
                if first.check(at, &checks) == Decision::Admit {
                    prop_assert_eq!(starts.reserve(at, &checks).0, at);
                }
            }
        }

        /// Whenever sends start, what a reserving limiter lets them start
        /// keeps every window, is never before their start, and never
        /// later than a check would have admitted.
        #[test]
        fn reserved_starts_keep_every_window(
            global in arb_limit(),
            chat in arb_limit(),
            steps in proptest::collection::vec((0u64..200, 0i64..3), 1..300),
        ) {
            let mut l = Limiter::new();
            let mut now = 0u64;
            let mut per_key: HashMap<Key, Vec<u64>> = HashMap::new();
            for (dt_ms, c) in steps {
                now += dt_ms * MS / 4;
                let start = Instant::from_nanos(now);
                let checks = [(Key::Global, &global), (Key::Chat(c), &chat)];
                let expected = match l.peek(start, &checks) {
                    Decision::Admit => start,
                    Decision::Refuse { retry_at, .. } => retry_at,
                };
                let (at, _) = l.reserve(start, &checks);
                prop_assert_eq!(at, expected);
                per_key.entry(Key::Global).or_default().push(at.as_nanos());
                per_key.entry(Key::Chat(c)).or_default().push(at.as_nanos());
            }
            windows_hold(per_key, &global, &chat)?;
        }

        /// Pure single-key GCRA: a refusal names the first admitting instant.
        #[test]
        fn gcra_retry_at_is_exact(limit in arb_limit(), tat in 0u64..10_000_000_000, now in 0u64..10_000_000_000) {
            match gcra(Instant::from_nanos(now), Instant::from_nanos(tat), &limit) {
                Ok(next) => prop_assert!(next > Instant::from_nanos(now.max(tat)) || limit.cell().interval == 0),
                Err(at) => {
                    prop_assert!(at > Instant::from_nanos(now));
                    prop_assert!(gcra(at, Instant::from_nanos(tat), &limit).is_ok());
                }
            }
        }

        /// With the default guards, up to 5 ms of jitter between send and
        /// arrival keeps arrivals within the nominal limits on every window
        /// of at least J/g = 500 ms, globally and per chat.
        #[test]
        fn guarded_arrivals_keep_the_limit(seed in any::<u64>()) {
            let limits = Limits::default();
            let sends = drain_with_chats(&limits, 40, Instant::from_secs(5));
            let mut rng = crate::engine::SplitMix64::new(seed);
            let mut all = Vec::new();
            let mut per_chat: HashMap<i64, Vec<u64>> = HashMap::new();
            for (t, chat) in sends {
                let arrival = t.as_nanos() + rng.below(5 * MS + 1);
                all.push(arrival);
                per_chat.entry(chat).or_default().push(arrival);
            }
            all.sort_unstable();
            let nominal_global = Limit { guard: Guard::None, ..limits.global };
            let nominal_chat = Limit::per_second(1, 1);
            for w in [500 * MS, 1_000 * MS - 1, 1_000 * MS, 1_500 * MS, 2_000 * MS - 1] {
                prop_assert!(max_in_window(&all, w) <= bound(&nominal_global, w));
                for times in per_chat.values_mut() {
                    times.sort_unstable();
                    prop_assert!(max_in_window(times, w) <= bound(&nominal_chat, w));
                }
            }
        }
    }
}
