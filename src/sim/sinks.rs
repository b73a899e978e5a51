//! The simulated far side: Telegram's limits as Telegram counts them, and
//! the fault schedule of every tier's sink.
//!
//! Owns: the Bot API model — 30 requests per second per bot, 1 per second
//! per chat, 20 per minute per group (configurable), each a *sliding* window
//! over the instant a request **arrives** (send instant plus up to
//! `arrivalJitter`), answering 429 with `retry_after` (whole seconds, at
//! least 1) when a window is full; the independent measurement of the
//! busiest windows over every arrival; latency, error rate, outages and
//! blocked chats of each sink. Leaves to others: the event loop and the
//! dispatcher, which never see this state.
//!
//! Windows are half-open, `(t − W, t]`: a request arriving at `t` is
//! refused if the window ending at `t` already holds the limit. A refused
//! request does not count toward later windows; every arrival, refused or
//! not, counts in the measured maxima.
//!
//! Invariant: decisions depend only on arrival instants fed in
//! non-decreasing order and on the seeded generator.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::engine::SplitMix64;
use crate::engine::clock::duration_nanos;
use crate::engine::dispatch::Sink;

use super::workload::{Latency, OutageMode, TelegramModel, TierFaults};

const SECOND: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SECOND;

/// Accepted arrivals of one key inside its window.
#[derive(Debug)]
struct Window {
    accepted: VecDeque<u64>,
}

impl Window {
    fn new() -> Self {
        Window {
            accepted: VecDeque::new(),
        }
    }

    /// Would an arrival at `at` fit under `limit` in `(at − w, at]`? If not,
    /// the instant the oldest accepted arrival leaves the window.
    fn check(&mut self, at: u64, w: u64, limit: u32) -> Result<(), u64> {
        while self.accepted.front().is_some_and(|&t| t + w <= at) {
            self.accepted.pop_front();
        }
        if self.accepted.len() >= limit as usize {
            return Err(self.accepted.front().map_or(at, |&t| t + w));
        }
        Ok(())
    }
}

/// The largest count of arrivals in any window of length `w` (half-open).
#[derive(Debug)]
struct Busiest {
    times: VecDeque<u64>,
    max: usize,
}

impl Busiest {
    fn new() -> Self {
        Busiest {
            times: VecDeque::new(),
            max: 0,
        }
    }

    fn record(&mut self, at: u64, w: u64) {
        while self.times.front().is_some_and(|&t| t + w <= at) {
            self.times.pop_front();
        }
        self.times.push_back(at);
        self.max = self.max.max(self.times.len());
    }
}

/// What Telegram answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TelegramAnswer {
    Accepted,
    /// 429 with `retry_after` seconds.
    TooMany {
        retry_after: u64,
    },
}

/// The Bot API's limits and the measured maxima.
#[derive(Debug)]
pub struct Telegram {
    model: TelegramModel,
    bot: Window,
    chats: HashMap<i64, Window>,
    groups: HashMap<i64, Window>,
    busiest_bot: Busiest,
    busiest_chat: HashMap<i64, Busiest>,
    busiest_group: HashMap<i64, Busiest>,
    pub rate_limited: u64,
    pub arrivals: u64,
}

impl Telegram {
    pub fn new(model: TelegramModel) -> Self {
        Telegram {
            model,
            bot: Window::new(),
            chats: HashMap::new(),
            groups: HashMap::new(),
            busiest_bot: Busiest::new(),
            busiest_chat: HashMap::new(),
            busiest_group: HashMap::new(),
            rate_limited: 0,
            arrivals: 0,
        }
    }

    /// A request for `chat` arrives at `at` (ns); negative chats are groups.
    pub fn arrive(&mut self, at: u64, chat: i64) -> TelegramAnswer {
        self.arrivals += 1;
        self.busiest_bot.record(at, SECOND);
        self.busiest_chat
            .entry(chat)
            .or_insert_with(Busiest::new)
            .record(at, SECOND);
        if chat < 0 {
            self.busiest_group
                .entry(chat)
                .or_insert_with(Busiest::new)
                .record(at, MINUTE);
        }
        let mut free_at = None;
        let mut refuse = |r: Result<(), u64>| {
            if let Err(t) = r {
                free_at = Some(free_at.map_or(t, |f: u64| f.max(t)));
            }
        };
        refuse(self.bot.check(at, SECOND, self.model.per_bot));
        let chat_w = self.chats.entry(chat).or_insert_with(Window::new);
        refuse(chat_w.check(at, SECOND, self.model.per_chat));
        if chat < 0 {
            let group_w = self.groups.entry(chat).or_insert_with(Window::new);
            refuse(group_w.check(at, MINUTE, self.model.per_group_per_minute));
        }
        if let Some(t) = free_at {
            self.rate_limited += 1;
            let retry_after = (t.saturating_sub(at)).div_ceil(SECOND).max(1);
            return TelegramAnswer::TooMany { retry_after };
        }
        self.bot.accepted.push_back(at);
        if let Some(w) = self.chats.get_mut(&chat) {
            w.accepted.push_back(at);
        }
        if chat < 0
            && let Some(w) = self.groups.get_mut(&chat)
        {
            w.accepted.push_back(at);
        }
        TelegramAnswer::Accepted
    }

    /// Most arrivals in any 1-s window, for the whole bot.
    pub fn max_global_per_second(&self) -> usize {
        self.busiest_bot.max
    }

    /// Most arrivals in any 1-s window for one chat (groups included).
    pub fn max_chat_per_second(&self) -> usize {
        self.busiest_chat.values().map(|b| b.max).max().unwrap_or(0)
    }

    /// Most arrivals in any 60-s window for one group.
    pub fn max_group_per_minute(&self) -> usize {
        self.busiest_group
            .values()
            .map(|b| b.max)
            .max()
            .unwrap_or(0)
    }

    /// Up to `arrivalJitter` after the send, uniform.
    pub fn arrival_delay(&self, rng: &mut SplitMix64) -> Duration {
        let j = duration_nanos(self.model.arrival_jitter.get());
        Duration::from_nanos(rng.below(j.saturating_add(1)))
    }
}

/// One tier's sink as the workload describes it.
#[derive(Clone, Debug)]
pub struct SinkModel {
    pub sink: Sink,
    fixed: Duration,
    jitter: Duration,
    pub error_rate: f64,
    /// `[start, end)` in ns with how the sink answers meanwhile.
    outages: Vec<(u64, u64, OutageMode)>,
}

impl SinkModel {
    pub fn new(sink: Sink, faults: Option<&TierFaults>) -> Self {
        let (fixed, jitter) = match faults.and_then(|f| f.latency.as_ref()) {
            Some(Latency { fixed, jitter }) => (fixed.get(), jitter.get()),
            None => match sink {
                // Bot API round trips from a nearby region.
                Sink::Telegram => (Duration::from_millis(60), Duration::from_millis(60)),
                Sink::Webhook => (Duration::from_millis(20), Duration::from_millis(20)),
                Sink::Spool => (Duration::from_millis(1), Duration::from_millis(1)),
            },
        };
        SinkModel {
            sink,
            fixed,
            jitter,
            error_rate: faults.map_or(0.0, |f| f.error_rate),
            outages: faults.map_or_else(Vec::new, |f| {
                f.outages
                    .iter()
                    .map(|o| {
                        let start = duration_nanos(o.start.get());
                        (
                            start,
                            start.saturating_add(duration_nanos(o.duration.get())),
                            o.mode,
                        )
                    })
                    .collect()
            }),
        }
    }

    /// Send-to-answer time of one request.
    pub fn latency(&self, rng: &mut SplitMix64) -> Duration {
        let j = duration_nanos(self.jitter);
        self.fixed + Duration::from_nanos(rng.below(j.saturating_add(1)))
    }

    /// The outage in force at `at` (ns), if any.
    pub fn outage(&self, at: u64) -> Option<OutageMode> {
        self.outages
            .iter()
            .find(|(s, e, _)| (*s..*e).contains(&at))
            .map(|o| o.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_refuse_with_retry_after_and_measure_maxima() {
        let mut tg = Telegram::new(TelegramModel::default());
        // 30 different chats within one second are fine, the 31st is not.
        for i in 0..30 {
            assert_eq!(
                tg.arrive(i * 10_000_000, i as i64 + 1),
                TelegramAnswer::Accepted
            );
        }
        assert_eq!(
            tg.arrive(500_000_000, 99),
            TelegramAnswer::TooMany { retry_after: 1 }
        );
        // A second later the first arrival has left the window.
        assert_eq!(tg.arrive(SECOND, 98), TelegramAnswer::Accepted);
        // Per chat: one per second, sliding.
        assert_eq!(
            tg.arrive(SECOND + 1, 98),
            TelegramAnswer::TooMany { retry_after: 1 }
        );
        assert_eq!(tg.max_global_per_second(), 32);
        assert_eq!(tg.max_chat_per_second(), 2);
        assert_eq!(tg.rate_limited, 2);
    }

    #[test]
    fn groups_are_limited_per_minute() {
        let mut tg = Telegram::new(TelegramModel::default());
        for i in 0..20 {
            assert_eq!(tg.arrive(i * 2 * SECOND, -7), TelegramAnswer::Accepted);
        }
        assert_eq!(
            tg.arrive(40 * SECOND, -7),
            TelegramAnswer::TooMany { retry_after: 20 }
        );
        assert_eq!(tg.arrive(60 * SECOND, -7), TelegramAnswer::Accepted);
        assert_eq!(tg.max_group_per_minute(), 21);
    }
}
