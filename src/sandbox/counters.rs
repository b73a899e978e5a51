//! What the sandbox saw: request counters, the densest windows observed among
//! delivered sends, and the log of delivered messages in arrival order.
//!
//! Owns the tallies behind `GET /sandbox/counters` and `GET /sandbox/messages`.
//! Leaves judging to `limits`: the maxima here are measured independently
//! over what was delivered, so a test can check the judge and herald at once.
//!
//! Invariant: maxima use fixed windows (1 s global, per bot and per chat; 60 s
//! per group), half-open like the judge's: sends exactly 1 s apart are never in
//! one window. The message log holds at most `max_kept` entries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const SWEEP_EVERY: u64 = 4096;

/// Per-chat tallies (Bot API sends only).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatCounts {
    pub attempts: u64,
    pub delivered: u64,
    pub rejected_429: u64,
}

/// Snapshot served by `GET /sandbox/counters`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Every request on a `/bot<token>/<method>` route, whatever its answer.
    pub requests: u64,
    /// Sends answered `ok: true`.
    pub delivered: u64,
    pub rejected_429: u64,
    /// Of `rejected_429`: refusals that started a flood ban.
    pub flood_bans: u64,
    /// `rejected_429` by the limit that refused: per_bot, per_chat,
    /// per_group, flood_ban.
    #[serde(default)]
    pub rejected_429_by_cause: BTreeMap<String, u64>,
    /// Injected 500s plus 502s from dark periods.
    pub errors_5xx: u64,
    /// Of `errors_5xx`: 502s from dark periods.
    pub dark_502: u64,
    /// 401 answers (unknown or malformed token).
    pub unauthorized_401: u64,
    /// Other 4xx answers: bad requests, 403 blocked, chat faults, 404.
    pub errors_4xx: u64,
    pub by_chat: BTreeMap<i64, ChatCounts>,
    /// Most delivered sends (all bots) in any half-open 1 s window.
    pub max_global_per_1s: u64,
    /// Most delivered sends by one bot in any 1 s window.
    pub max_per_bot_per_1s: u64,
    /// Most delivered sends by one bot to one chat in any 1 s window.
    pub max_per_chat_per_1s: u64,
    /// Most delivered sends by one bot to one group in any 60 s window.
    pub max_per_group_per_60s: u64,
    pub first_delivery_unix_ms: Option<u64>,
    pub last_delivery_unix_ms: Option<u64>,
    /// The first [`REFUSALS_KEPT`] 429s, for a post-mortem: when each
    /// arrived (on the clock of the message log) and what it carried.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
}

/// How many refusals [`Counters::refusals`] keeps.
pub const REFUSALS_KEPT: usize = 100;

/// One send the judge refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refusal {
    pub chat_id: i64,
    /// per_bot, per_chat, per_group or flood_ban.
    pub cause: String,
    /// The text, or the caption (empty if none).
    pub text: String,
    /// Nanoseconds since the sandbox started or was reset, like
    /// [`DeliveredMessage::arrival_ns`].
    pub arrival_ns: u64,
}

/// One delivered message, as `GET /sandbox/messages` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveredMessage {
    /// 1, 2, 3... in arrival order over the whole sandbox.
    pub seq: u64,
    pub bot_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    /// `sendMessage`, `sendPhoto` or `sendDocument`.
    pub method: String,
    /// The text, or the caption of a photo or document (empty if none).
    pub text: String,
    /// Arrival time, Unix milliseconds (sandbox clock, see `Clock`).
    pub arrival_unix_ms: u64,
    /// Arrival time, nanoseconds since the sandbox started or was reset:
    /// exact enough to recheck the windows.
    pub arrival_ns: u64,
}

/// Arrival instants inside the last `span`, for the running maximum.
#[derive(Debug, Default)]
struct Density {
    stamps: VecDeque<Instant>,
}

impl Density {
    /// Adds `at` and returns how many stamps lie in `(at - span, at]`.
    fn add(&mut self, at: Instant, span: Duration) -> u64 {
        while let Some(front) = self.stamps.front() {
            if front.checked_add(span).is_some_and(|end| end <= at) {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
        self.stamps.push_back(at);
        self.stamps.len() as u64
    }

    fn is_idle(&self, now: Instant, span: Duration) -> bool {
        self.stamps
            .back()
            .is_none_or(|t| t.checked_add(span).is_some_and(|end| end <= now))
    }
}

/// The mutable side: tallies, densities and the message log.
#[derive(Debug)]
pub struct Recorder {
    counters: Counters,
    global: Density,
    per_bot: HashMap<u64, Density>,
    per_chat: HashMap<(u64, i64), Density>,
    per_group: HashMap<(u64, i64), Density>,
    log: VecDeque<DeliveredMessage>,
    next_seq: u64,
    max_kept: usize,
}

impl Recorder {
    pub fn new(max_kept: usize) -> Self {
        Recorder {
            counters: Counters::default(),
            global: Density::default(),
            per_bot: HashMap::new(),
            per_chat: HashMap::new(),
            per_group: HashMap::new(),
            log: VecDeque::new(),
            next_seq: 1,
            max_kept,
        }
    }

    pub fn snapshot(&self) -> Counters {
        self.counters.clone()
    }

    /// Delivered messages with `seq > since`, oldest first.
    pub fn messages_since(&self, since: u64) -> Vec<DeliveredMessage> {
        let start = self.log.partition_point(|m| m.seq <= since);
        self.log.range(start..).cloned().collect()
    }

    pub fn request(&mut self) {
        self.counters.requests += 1;
    }

    pub fn attempt(&mut self, chat: i64) {
        self.counters.by_chat.entry(chat).or_default().attempts += 1;
    }

    pub fn rejected_429(&mut self, refusal: Refusal, started_ban: bool) {
        let (chat, cause) = (refusal.chat_id, refusal.cause.as_str());
        self.counters.rejected_429 += 1;
        *self
            .counters
            .rejected_429_by_cause
            .entry(cause.to_owned())
            .or_default() += 1;
        self.counters.flood_bans += u64::from(started_ban);
        self.counters.by_chat.entry(chat).or_default().rejected_429 += 1;
        if self.counters.refusals.len() < REFUSALS_KEPT {
            self.counters.refusals.push(refusal);
        }
    }

    pub fn error_status(&mut self, status: u16, dark: bool) {
        let c = &mut self.counters;
        match status {
            401 => c.unauthorized_401 += 1,
            500..=599 => {
                c.errors_5xx += 1;
                c.dark_502 += u64::from(dark);
            }
            400..=499 => c.errors_4xx += 1,
            _ => {}
        }
    }

    /// Records a delivery and returns its sequence number.
    pub fn delivered(&mut self, mut message: DeliveredMessage, at: Instant) -> u64 {
        let (bot, chat) = (message.bot_id, message.chat_id);
        let c = &mut self.counters;
        c.delivered += 1;
        c.by_chat.entry(chat).or_default().delivered += 1;
        c.first_delivery_unix_ms
            .get_or_insert(message.arrival_unix_ms);
        c.last_delivery_unix_ms = Some(message.arrival_unix_ms);

        let n = self.global.add(at, SECOND);
        c.max_global_per_1s = c.max_global_per_1s.max(n);
        let n = self.per_bot.entry(bot).or_default().add(at, SECOND);
        c.max_per_bot_per_1s = c.max_per_bot_per_1s.max(n);
        let n = self
            .per_chat
            .entry((bot, chat))
            .or_default()
            .add(at, SECOND);
        c.max_per_chat_per_1s = c.max_per_chat_per_1s.max(n);
        if chat < 0 {
            let n = self
                .per_group
                .entry((bot, chat))
                .or_default()
                .add(at, MINUTE);
            c.max_per_group_per_60s = c.max_per_group_per_60s.max(n);
        }
        if c.delivered.is_multiple_of(SWEEP_EVERY) {
            self.sweep(at);
        }

        let seq = self.next_seq;
        self.next_seq += 1;
        message.seq = seq;
        if self.max_kept > 0 {
            while self.log.len() >= self.max_kept {
                self.log.pop_front();
            }
            self.log.push_back(message);
        }
        seq
    }

    fn sweep(&mut self, now: Instant) {
        self.per_bot.retain(|_, d| !d.is_idle(now, SECOND));
        self.per_chat.retain(|_, d| !d.is_idle(now, SECOND));
        self.per_group.retain(|_, d| !d.is_idle(now, MINUTE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(bot: u64, chat: i64) -> DeliveredMessage {
        DeliveredMessage {
            seq: 0,
            bot_id: bot,
            chat_id: chat,
            message_id: 1,
            method: "sendMessage".into(),
            text: "hi".into(),
            arrival_unix_ms: 0,
            arrival_ns: 0,
        }
    }

    #[test]
    fn maxima_use_half_open_windows() {
        let t0 = Instant::now();
        let mut r = Recorder::new(10);
        r.delivered(msg(1, 5), t0);
        r.delivered(msg(1, 5), t0 + SECOND);
        assert_eq!(r.snapshot().max_per_chat_per_1s, 1);
        r.delivered(msg(1, 5), t0 + SECOND + Duration::from_millis(999));
        assert_eq!(r.snapshot().max_per_chat_per_1s, 2);
        assert_eq!(r.snapshot().max_global_per_1s, 2);
    }

    #[test]
    fn group_and_bot_maxima_are_per_key() {
        let t0 = Instant::now();
        let mut r = Recorder::new(10);
        for i in 0..3 {
            r.delivered(msg(1, -7), t0 + SECOND * i);
            r.delivered(msg(2, -7), t0 + SECOND * i);
        }
        let c = r.snapshot();
        assert_eq!(c.max_per_group_per_60s, 3);
        assert_eq!(c.max_per_bot_per_1s, 1);
        assert_eq!(c.max_global_per_1s, 2);
        assert_eq!(c.by_chat[&-7].delivered, 6);
    }

    #[test]
    fn log_is_bounded_and_paged_by_seq() {
        let t0 = Instant::now();
        let mut r = Recorder::new(3);
        for _ in 0..5 {
            r.delivered(msg(1, 1), t0);
        }
        let all: Vec<u64> = r.messages_since(0).iter().map(|m| m.seq).collect();
        assert_eq!(all, vec![3, 4, 5]);
        let later: Vec<u64> = r.messages_since(4).iter().map(|m| m.seq).collect();
        assert_eq!(later, vec![5]);
        assert!(r.messages_since(5).is_empty());
    }
}
