//! The strict judge: decides whether a send that arrived at `now` is within
//! Telegram's limits, as a pure function of (config, history, now).
//!
//! Owns the sliding windows (per bot, per bot+chat, per bot+group) and the
//! flood ban. Leaves clocks to the caller (arrival instants are passed in) and
//! leaves everything else about a request (auth, faults, validation) to
//! `state`. Shares no code with herald's own limiter on purpose: it is the
//! referee that limiter is tested against.
//!
//! The rule, exactly: a window `(max, W)` holds the arrival instants of the
//! attempts recorded in it. An attempt arriving at `now` fits the window when
//! fewer than `max` recorded instants `t` satisfy `now - W < t <= now` (the
//! window is open on the left: a send exactly `W` after an earlier one no
//! longer sees it; 1 ns earlier it does). It is admitted when it fits every
//! window that applies (the bot's; the chat's; the group's when the chat id is
//! negative) and no flood ban is running. In strict mode every attempt, admitted
//! or refused, is then recorded in all of those windows; otherwise only
//! admitted ones are. A refused attempt's `retry_after` is the whole number of
//! seconds, rounded up and at least 1, until the first instant at which an
//! attempt would fit every window and the ban is over, computed after the
//! refused attempt itself has been recorded. With the flood ban on, a refusal
//! caused by a window bans the bot until `now + retry_after`; a refusal caused
//! by the ban itself does not lengthen it.
//!
//! Invariant: a window stores at most `max` instants (the newest ones), which
//! is all the rule ever reads, so memory is bounded by the limits.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{LimitsConfig, WindowLimit};

/// How often (in judgements) idle windows are swept away.
const SWEEP_EVERY: u64 = 4096;

/// Why an attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    PerBot,
    PerChat,
    PerGroup,
    FloodBan,
}

/// The judge's answer for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// `retry_after` in whole seconds, >= 1; `cause` is the first reason found.
    Refused {
        retry_after: u64,
        cause: Cause,
    },
}

/// The newest arrival instants recorded against one limit.
#[derive(Debug, Default)]
struct Window {
    stamps: VecDeque<Instant>,
}

impl Window {
    /// `Some(instant)` from which an attempt fits again, when it does not fit at `now`.
    fn full_until(&self, limit: WindowLimit, now: Instant) -> Option<Instant> {
        if limit.is_off() || self.stamps.len() < limit.max as usize {
            return None;
        }
        // The max-th newest stamp is the one that must leave the window.
        let oldest_kept = *self.stamps.front()?;
        let free_at = later(oldest_kept, limit.window());
        (free_at > now).then_some(free_at)
    }

    fn record(&mut self, limit: WindowLimit, at: Instant) {
        if limit.is_off() {
            return;
        }
        // Arrivals come in order under the caller's lock; sorting keeps the
        // rule right even if one ever does not.
        let pos = self.stamps.partition_point(|t| *t <= at);
        self.stamps.insert(pos, at);
        while self.stamps.len() > limit.max as usize {
            self.stamps.pop_front();
        }
    }

    fn is_idle(&self, limit: WindowLimit, now: Instant) -> bool {
        self.stamps
            .back()
            .is_none_or(|last| later(*last, limit.window()) <= now)
    }
}

/// `at + d` without a panic path. Validated windows are at most a day, so the
/// fallback is never taken in practice.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

#[derive(Debug, Default)]
struct BotBook {
    sends: Window,
    chats: HashMap<i64, Window>,
    groups: HashMap<i64, Window>,
    banned_until: Option<Instant>,
}

/// All windows of all bots. Keyed by bot id, so no token is ever stored here.
#[derive(Debug)]
pub struct Judge {
    limits: LimitsConfig,
    bots: HashMap<u64, BotBook>,
    judgements: u64,
}

impl Judge {
    pub fn new(limits: LimitsConfig) -> Self {
        Judge {
            limits,
            bots: HashMap::new(),
            judgements: 0,
        }
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// Judges one send by `bot` to `chat` arriving at `now` and records it as
    /// the module rule says.
    pub fn judge(&mut self, bot: u64, chat: i64, now: Instant) -> Verdict {
        self.judgements = self.judgements.wrapping_add(1);
        if self.judgements.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
        let limits = self.limits;
        let book = self.bots.entry(bot).or_default();

        let mut refusal: Option<(Instant, Cause)> = None;
        let mut note = |until: Option<Instant>, cause: Cause| {
            if let Some(until) = until {
                refusal = Some(match refusal {
                    Some((prev, first)) => (prev.max(until), first),
                    None => (until, cause),
                });
            }
        };
        let ban = limits
            .flood_ban
            .then_some(book.banned_until)
            .flatten()
            .filter(|until| *until > now);
        note(ban, Cause::FloodBan);
        note(book.sends.full_until(limits.per_bot, now), Cause::PerBot);
        let chat_until = book
            .chats
            .get(&chat)
            .and_then(|w| w.full_until(limits.per_chat, now));
        note(chat_until, Cause::PerChat);
        let is_group = chat < 0;
        if is_group {
            let group_until = book
                .groups
                .get(&chat)
                .and_then(|w| w.full_until(limits.per_group, now));
            note(group_until, Cause::PerGroup);
        }

        let Some((_, cause)) = refusal else {
            record_all(book, &limits, chat, is_group, now);
            return Verdict::Admitted;
        };
        if limits.strict {
            record_all(book, &limits, chat, is_group, now);
        }
        // Recompute on the history that now includes this attempt.
        let mut free_at = ban.unwrap_or(now);
        for until in [
            book.sends.full_until(limits.per_bot, now),
            book.chats
                .get(&chat)
                .and_then(|w| w.full_until(limits.per_chat, now)),
            book.groups
                .get(&chat)
                .filter(|_| is_group)
                .and_then(|w| w.full_until(limits.per_group, now)),
        ]
        .into_iter()
        .flatten()
        {
            free_at = free_at.max(until);
        }
        let retry_after = whole_seconds_up(free_at.saturating_duration_since(now)).max(1);
        if limits.flood_ban && cause != Cause::FloodBan {
            let until = later(now, Duration::from_secs(retry_after));
            book.banned_until = Some(book.banned_until.map_or(until, |b| b.max(until)));
        }
        Verdict::Refused { retry_after, cause }
    }

    /// Forgets windows that can no longer refuse anything.
    fn sweep(&mut self, now: Instant) {
        let limits = self.limits;
        self.bots.retain(|_, book| {
            book.chats.retain(|_, w| !w.is_idle(limits.per_chat, now));
            book.groups.retain(|_, w| !w.is_idle(limits.per_group, now));
            let banned = book.banned_until.is_some_and(|b| b > now);
            banned
                || !book.chats.is_empty()
                || !book.groups.is_empty()
                || !book.sends.is_idle(limits.per_bot, now)
        });
    }
}

fn record_all(book: &mut BotBook, limits: &LimitsConfig, chat: i64, is_group: bool, now: Instant) {
    book.sends.record(limits.per_bot, now);
    book.chats
        .entry(chat)
        .or_default()
        .record(limits.per_chat, now);
    if is_group {
        book.groups
            .entry(chat)
            .or_default()
            .record(limits.per_group, now);
    }
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: u64 = 1;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn judge() -> Judge {
        Judge::new(LimitsConfig::default())
    }

    fn lenient() -> Judge {
        Judge::new(LimitsConfig {
            strict: false,
            flood_ban: false,
            ..LimitsConfig::default()
        })
    }

    fn refused(v: Verdict) -> (u64, Cause) {
        match v {
            Verdict::Refused { retry_after, cause } => (retry_after, cause),
            Verdict::Admitted => panic!("expected a refusal"),
        }
    }

    #[test]
    fn thirty_first_send_within_a_second_is_refused() {
        let mut j = judge();
        let t0 = Instant::now();
        for chat in 1..=30 {
            let at = t0 + ms(chat as u64 * 10);
            assert_eq!(j.judge(BOT, chat, at), Verdict::Admitted, "chat {chat}");
        }
        let (retry, cause) = refused(j.judge(BOT, 31, t0 + ms(999)));
        assert_eq!(cause, Cause::PerBot);
        assert_eq!(retry, 1);
    }

    #[test]
    fn send_exactly_one_second_after_the_first_is_admitted_and_1ms_early_is_not() {
        let t0 = Instant::now();
        let mut early = lenient();
        let mut exact = lenient();
        for j in [&mut early, &mut exact] {
            assert_eq!(j.judge(BOT, 7, t0), Verdict::Admitted);
        }
        assert!(matches!(
            early.judge(BOT, 7, t0 + ms(999)),
            Verdict::Refused {
                cause: Cause::PerChat,
                ..
            }
        ));
        assert_eq!(exact.judge(BOT, 7, t0 + ms(1000)), Verdict::Admitted);
    }

    #[test]
    fn bot_window_edge_is_exact_to_the_nanosecond() {
        let t0 = Instant::now();
        let mut j = lenient();
        for chat in 1..=30 {
            assert_eq!(j.judge(BOT, chat, t0), Verdict::Admitted);
        }
        let just_before = t0 + Duration::from_nanos(999_999_999);
        assert!(matches!(
            j.judge(BOT, 99, just_before),
            Verdict::Refused { .. }
        ));
        assert_eq!(j.judge(BOT, 99, t0 + ms(1000)), Verdict::Admitted);
    }

    #[test]
    fn refused_attempts_occupy_a_slot_in_strict_mode() {
        let t0 = Instant::now();
        let mut strict = Judge::new(LimitsConfig {
            flood_ban: false,
            ..LimitsConfig::default()
        });
        assert_eq!(strict.judge(BOT, 5, t0), Verdict::Admitted);
        // Refused at 0.5 s; retry_after counts from the refused attempt.
        assert_eq!(
            refused(strict.judge(BOT, 5, t0 + ms(500))),
            (1, Cause::PerChat)
        );
        // 1 s after the first send, but the refused attempt at 0.5 s still counts.
        assert!(matches!(
            strict.judge(BOT, 5, t0 + ms(1000)),
            Verdict::Refused { .. }
        ));
        // That refusal at 1.0 s occupies the window until 2.0 s.
        assert!(matches!(
            strict.judge(BOT, 5, t0 + ms(1999)),
            Verdict::Refused { .. }
        ));
        assert_eq!(strict.judge(BOT, 5, t0 + ms(2999)), Verdict::Admitted);

        let mut lax = lenient();
        assert_eq!(lax.judge(BOT, 5, t0), Verdict::Admitted);
        assert!(matches!(
            lax.judge(BOT, 5, t0 + ms(500)),
            Verdict::Refused { .. }
        ));
        assert_eq!(lax.judge(BOT, 5, t0 + ms(1000)), Verdict::Admitted);
    }

    #[test]
    fn a_chat_refusal_still_costs_a_slot_in_the_bot_window() {
        let t0 = Instant::now();
        let mut j = Judge::new(LimitsConfig {
            flood_ban: false,
            ..LimitsConfig::default()
        });
        assert_eq!(j.judge(BOT, 1, t0), Verdict::Admitted);
        for _ in 0..29 {
            assert!(matches!(j.judge(BOT, 1, t0), Verdict::Refused { .. }));
        }
        // 30 attempts recorded against the bot: a fresh chat is refused too.
        assert_eq!(refused(j.judge(BOT, 2, t0 + ms(1))), (1, Cause::PerBot));
    }

    #[test]
    fn group_takes_twenty_per_minute() {
        let t0 = Instant::now();
        let mut j = Judge::new(LimitsConfig {
            flood_ban: false,
            ..LimitsConfig::default()
        });
        let group = -42;
        for i in 0..20 {
            assert_eq!(
                j.judge(BOT, group, t0 + ms(i * 1000)),
                Verdict::Admitted,
                "{i}"
            );
        }
        // 21st at 20 s: the group window holds sends from 0..19 s; after this
        // refused attempt is recorded the oldest kept is at 1 s, free at 61 s.
        let (retry, cause) = refused(j.judge(BOT, group, t0 + ms(20_000)));
        assert_eq!((retry, cause), (41, Cause::PerGroup));
        // A positive chat id is no group: 21 sends a second apart are fine.
        for i in 0..21 {
            assert_eq!(j.judge(BOT, 42, t0 + ms(i * 1000)), Verdict::Admitted);
        }
        assert_eq!(j.judge(BOT, group, t0 + ms(61_000)), Verdict::Admitted);
    }

    #[test]
    fn group_window_slides_with_admitted_sends_only_when_lenient() {
        let t0 = Instant::now();
        let mut j = lenient();
        for i in 0..20 {
            assert_eq!(j.judge(BOT, -1, t0 + ms(i * 1000)), Verdict::Admitted);
        }
        assert_eq!(refused(j.judge(BOT, -1, t0 + ms(20_000))).0, 40);
        assert!(matches!(
            j.judge(BOT, -1, t0 + ms(59_999)),
            Verdict::Refused { .. }
        ));
        assert_eq!(j.judge(BOT, -1, t0 + ms(60_000)), Verdict::Admitted);
    }

    #[test]
    fn flood_ban_refuses_the_whole_bot_for_retry_after() {
        let t0 = Instant::now();
        let mut j = judge();
        assert_eq!(j.judge(BOT, 1, t0), Verdict::Admitted);
        assert_eq!(refused(j.judge(BOT, 1, t0 + ms(300))), (1, Cause::PerChat));
        // Banned until 1.3 s: another chat is refused by the ban.
        let (retry, cause) = refused(j.judge(BOT, 2, t0 + ms(400)));
        assert_eq!(cause, Cause::FloodBan);
        assert_eq!(retry, 1);
        // The ban's own refusals do not lengthen it.
        assert!(matches!(
            j.judge(BOT, 3, t0 + ms(1299)),
            Verdict::Refused { .. }
        ));
        assert_eq!(j.judge(BOT, 4, t0 + ms(1300)), Verdict::Admitted);
        // Other bots are not banned.
        assert_eq!(j.judge(BOT + 1, 1, t0 + ms(400)), Verdict::Admitted);
    }

    #[test]
    fn retry_after_is_rounded_up_and_honouring_it_is_admitted() {
        let t0 = Instant::now();
        let mut j = Judge::new(LimitsConfig {
            per_chat: WindowLimit::new(1, 2_500),
            ..LimitsConfig::default()
        });
        assert_eq!(j.judge(BOT, 9, t0), Verdict::Admitted);
        let at = t0 + ms(100);
        let (retry, _) = refused(j.judge(BOT, 9, at));
        assert_eq!(retry, 3, "2.5 s from the refused attempt, rounded up");
        assert_eq!(
            j.judge(BOT, 9, at + Duration::from_secs(retry)),
            Verdict::Admitted
        );
    }

    #[test]
    fn bots_and_chats_are_independent() {
        let t0 = Instant::now();
        let mut j = judge();
        assert_eq!(j.judge(1, 10, t0), Verdict::Admitted);
        assert_eq!(j.judge(2, 10, t0), Verdict::Admitted);
        assert_eq!(j.judge(1, 11, t0), Verdict::Admitted);
    }

    #[test]
    fn a_limit_of_zero_switches_the_window_off() {
        let t0 = Instant::now();
        let mut j = Judge::new(LimitsConfig {
            per_chat: WindowLimit::new(0, 0),
            ..LimitsConfig::default()
        });
        for _ in 0..30 {
            assert_eq!(j.judge(BOT, 3, t0), Verdict::Admitted);
        }
    }

    #[test]
    fn sweep_drops_idle_windows_but_keeps_live_ones() {
        let t0 = Instant::now();
        let mut j = lenient();
        for chat in 1..=10 {
            j.judge(BOT, -chat, t0);
        }
        j.sweep(t0 + ms(30_000));
        assert_eq!(j.bots[&BOT].groups.len(), 10, "group windows still live");
        assert!(j.bots[&BOT].chats.is_empty());
        j.sweep(t0 + ms(60_000));
        assert!(j.bots.is_empty());
    }

    #[test]
    fn windows_never_hold_more_than_max_stamps() {
        let t0 = Instant::now();
        let mut j = judge();
        for i in 0..500 {
            j.judge(BOT, -1, t0 + ms(i));
        }
        let book = &j.bots[&BOT];
        assert!(book.sends.stamps.len() <= 30);
        assert!(book.groups[&-1].stamps.len() <= 20);
        assert!(book.chats[&-1].stamps.len() <= 1);
    }

    /// A brute-force reading of the module rule over the full history.
    struct Reference {
        limits: LimitsConfig,
        /// (arrival, chat) of every recorded attempt.
        recorded: Vec<(Instant, i64)>,
        banned_until: Option<Instant>,
    }

    impl Reference {
        /// The windows that apply to `chat`, each with whether it is per chat.
        fn windows(&self, chat: i64) -> Vec<(WindowLimit, bool)> {
            let mut w = vec![(self.limits.per_bot, false), (self.limits.per_chat, true)];
            if chat < 0 {
                w.push((self.limits.per_group, true));
            }
            w
        }

        fn fits(&self, chat: i64, at: Instant) -> bool {
            self.windows(chat).iter().all(|(limit, per_chat)| {
                limit.is_off()
                    || self
                        .recorded
                        .iter()
                        .filter(|(t, c)| (!per_chat || *c == chat) && *t <= at)
                        .filter(|(t, _)| *t + limit.window() > at)
                        .count()
                        < limit.max as usize
            })
        }

        fn judge(&mut self, chat: i64, now: Instant) -> Verdict {
            let banned = self.limits.flood_ban && self.banned_until.is_some_and(|b| b > now);
            let admitted = !banned && self.fits(chat, now);
            if admitted || self.limits.strict {
                self.recorded.push((now, chat));
            }
            if admitted {
                return Verdict::Admitted;
            }
            // Earliest instant from which a new attempt fits and no ban runs.
            let ban_end = self.banned_until.filter(|_| banned).unwrap_or(now);
            let mut candidates: Vec<Instant> = self
                .recorded
                .iter()
                .flat_map(|(t, _)| {
                    [
                        self.limits.per_bot,
                        self.limits.per_chat,
                        self.limits.per_group,
                    ]
                    .map(|l| *t + l.window())
                })
                .chain([now, ban_end])
                .filter(|s| *s >= now.max(ban_end))
                .collect();
            candidates.sort();
            let free_at = candidates
                .into_iter()
                .find(|s| self.fits(chat, *s))
                .unwrap_or(now);
            let retry_after = whole_seconds_up(free_at - now).max(1);
            if self.limits.flood_ban && !banned {
                let until = now + Duration::from_secs(retry_after);
                self.banned_until = Some(self.banned_until.map_or(until, |b| b.max(until)));
            }
            Verdict::Refused {
                retry_after,
                cause: Cause::FloodBan,
            }
        }
    }

    fn same(a: Verdict, b: Verdict) -> bool {
        match (a, b) {
            (Verdict::Admitted, Verdict::Admitted) => true,
            (Verdict::Refused { retry_after: x, .. }, Verdict::Refused { retry_after: y, .. }) => {
                x == y
            }
            _ => false,
        }
    }

    proptest::proptest! {
        #[test]
        fn judge_matches_a_brute_force_reading_of_the_rule(
            steps in proptest::collection::vec((0u64..700, 0usize..4), 1..120),
            strict in proptest::bool::ANY,
            flood_ban in proptest::bool::ANY,
        ) {
            let limits = LimitsConfig {
                per_bot: WindowLimit::new(4, 1_000),
                per_chat: WindowLimit::new(2, 1_500),
                per_group: WindowLimit::new(3, 4_000),
                strict,
                flood_ban,
            };
            let chats = [1, 2, -1, -2];
            let t0 = Instant::now();
            let mut judge = Judge::new(limits);
            let mut reference = Reference { limits, recorded: Vec::new(), banned_until: None };
            let mut now = t0;
            let mut admitted: Vec<(Instant, i64)> = Vec::new();
            for (gap_ms, chat) in steps {
                now += ms(gap_ms);
                let chat = chats[chat];
                let got = judge.judge(BOT, chat, now);
                let want = reference.judge(chat, now);
                proptest::prop_assert!(same(got, want), "at {:?}: {got:?} vs {want:?}", now - t0);
                if got == Verdict::Admitted {
                    admitted.push((now, chat));
                }
            }
            // Whatever was admitted keeps every limit in every window.
            for (i, (t, chat)) in admitted.iter().enumerate() {
                let recent = |limit: WindowLimit, same: &dyn Fn(i64) -> bool| {
                    admitted[..=i]
                        .iter()
                        .filter(|(u, c)| same(*c) && *u + limit.window() > *t)
                        .count()
                };
                proptest::prop_assert!(recent(limits.per_bot, &|_| true) <= 4);
                proptest::prop_assert!(recent(limits.per_chat, &|c| c == *chat) <= 2);
                if *chat < 0 {
                    proptest::prop_assert!(recent(limits.per_group, &|c| c == *chat) <= 3);
                }
            }
        }
    }
}
