//! The workload file of `herald simulate`: what producers send, and what
//! goes wrong on the way.
//!
//! Owns the YAML format (strict: an unknown field is an error that names
//! it), its defaults and its validation. Leaves to others: generating the
//! messages (`super::arrivals`) and modelling the sinks (`super::sinks`).
//!
//! ```yaml
//! name: outage
//! messages: 6000              # total produced
//! chats: 400                  # distinct recipients
//! groupShare: 0.1             # share of chats that are groups (20/min each)
//! arrival: {steady: {rate: 20/s}}   # backlog | steady | poisson | bursts
//! priorities: {critical: 5, high: 15, normal: 60, low: 20}   # weights
//! messageTypes: {alert: 90, report: 10}                     # weights
//! chatOrder: roundRobin       # backlog only: roundRobin | consecutive
//! wakeJitter: 2ms             # the send loop wakes up to this late
//! horizon: 2h                 # stop the clock here at the latest
//! telegram: {arrivalJitter: 5ms, perBot: 30, perChat: 1, perGroupPerMinute: 20}
//! faults:
//!   tiers:
//!     alerts-telegram:
//!       errorRate: 0.01
//!       latency: {fixed: 80ms, jitter: 40ms}
//!       outages: [{start: 60s, duration: 60s, mode: refused}]
//!   blockedChats: [3, 17]     # chat numbers (0-based) that blocked the bot
//! ```
//!
//! Invariant: a workload that parses and validates can be simulated: counts
//! are bounded, rates are positive and finite, shares lie in 0..=1.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::api::DurationString;

/// Most messages one simulation takes (memory stays well under 1 GB).
pub const MAX_MESSAGES: u64 = 5_000_000;
/// Most distinct chats.
pub const MAX_CHATS: u64 = 1_000_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Shown in the report; the file name when unset.
    #[serde(default)]
    pub name: Option<String>,
    pub messages: u64,
    pub chats: u64,
    /// Share of the chats that are groups (negative ids; 20/min each).
    #[serde(default)]
    pub group_share: f64,
    pub arrival: Arrival,
    /// Weights per priority; unset: all normal.
    #[serde(default)]
    pub priorities: Option<PriorityWeights>,
    /// Weights per message type name; unset: every message is `default`.
    #[serde(default)]
    pub message_types: BTreeMap<String, u32>,
    /// The latest simulated instant; unset: until every message is settled,
    /// at most 48 h.
    #[serde(default)]
    pub horizon: Option<DurationString>,
    /// How a backlog's messages are spread over the chats.
    #[serde(default)]
    pub chat_order: ChatOrder,
    /// The agent's send loop sleeps on a coarse timer and wakes between 0
    /// and this long after the instant it asked for (uniform, from the
    /// run's seed). Zero: exactly on time.
    #[serde(default = "zero")]
    pub wake_jitter: DurationString,
    #[serde(default)]
    pub telegram: TelegramModel,
    #[serde(default)]
    pub faults: Faults,
}

/// When messages reach herald.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Arrival {
    /// Every message is queued at the start (a restart with a backlog).
    Backlog,
    /// Evenly spaced at `rate`.
    Steady { rate: Rate },
    /// Exponential gaps with mean `1/rate`.
    Poisson { rate: Rate },
    /// `size` messages at once, every `every`.
    Bursts { size: u64, every: DurationString },
}

/// The order of a backlog's messages by chat. Other arrivals pick a chat
/// at random for each message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChatOrder {
    /// Message `i` goes to chat `i mod chats`: every chat has work until
    /// the end.
    #[default]
    RoundRobin,
    /// Each chat's messages back to back: chat 0's first, then chat 1's.
    Consecutive,
}

/// Relative weights of the four priorities.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityWeights {
    #[serde(default)]
    pub critical: u32,
    #[serde(default)]
    pub high: u32,
    #[serde(default)]
    pub normal: u32,
    #[serde(default)]
    pub low: u32,
}

/// The Bot API as modelled: limits counted over sliding windows on the
/// instant each request *arrives*.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelegramModel {
    /// Requests reach Telegram between 0 and this long after they are sent
    /// (uniform); the answer comes back after the tier's latency.
    #[serde(default = "default_arrival_jitter")]
    pub arrival_jitter: DurationString,
    #[serde(default = "default_per_bot")]
    pub per_bot: u32,
    #[serde(default = "one")]
    pub per_chat: u32,
    #[serde(default = "default_per_group")]
    pub per_group_per_minute: u32,
}

impl Default for TelegramModel {
    fn default() -> Self {
        TelegramModel {
            arrival_jitter: default_arrival_jitter(),
            per_bot: default_per_bot(),
            per_chat: 1,
            per_group_per_minute: default_per_group(),
        }
    }
}

fn default_arrival_jitter() -> DurationString {
    DurationString::lit("5ms")
}
fn default_per_bot() -> u32 {
    30
}
fn one() -> u32 {
    1
}
fn default_per_group() -> u32 {
    20
}

/// What goes wrong.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// By tier name (names not in the config are an error).
    #[serde(default)]
    pub tiers: BTreeMap<String, TierFaults>,
    /// Chat numbers (0-based, below `chats`) whose users blocked the bot:
    /// Telegram answers 403 for them.
    #[serde(default)]
    pub blocked_chats: Vec<u64>,
}

/// One tier's sink behaviour.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierFaults {
    /// Share of requests answered with a server error (0..=1).
    #[serde(default)]
    pub error_rate: f64,
    /// Send-to-answer time; a default per sink kind when unset.
    #[serde(default)]
    pub latency: Option<Latency>,
    #[serde(default)]
    pub outages: Vec<Outage>,
}

/// `fixed` plus uniform `0..=jitter`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Latency {
    pub fixed: DurationString,
    #[serde(default = "zero")]
    pub jitter: DurationString,
}

fn zero() -> DurationString {
    DurationString::lit("0s")
}

/// The tier is dark from `start` for `duration`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outage {
    pub start: DurationString,
    pub duration: DurationString,
    #[serde(default)]
    pub mode: OutageMode,
}

/// How a dark tier answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutageMode {
    /// Connection refused at once.
    #[default]
    Refused,
    /// No answer until the attempt's deadline.
    Timeout,
    /// HTTP 503 at once.
    Unavailable,
}

/// Messages per second, written `20/s`, `300/m`, `50000/h` or as a plain
/// number (per second).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        let per_second = match Repr::deserialize(d)? {
            Repr::Number(n) => n,
            Repr::Text(t) => parse_rate(&t).map_err(serde::de::Error::custom)?,
        };
        Ok(Rate { per_second })
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("invalid rate {text:?}: write N/s, N/m or N/h, e.g. 50000/h");
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Ok(n / per)
}

/// A workload that parsed but cannot be simulated; names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WorkloadError {
    pub field: String,
    pub problem: String,
}

impl Workload {
    /// Parses the YAML text; the error carries serde-saphyr's position.
    pub fn parse(text: &str) -> Result<Workload, String> {
        serde_saphyr::from_str::<Workload>(text).map_err(|e| e.to_string())
    }

    pub fn validate(&self, tier_names: &[String]) -> Result<(), WorkloadError> {
        let err = |field: &str, problem: String| {
            Err(WorkloadError {
                field: field.to_owned(),
                problem,
            })
        };
        if self.messages == 0 || self.messages > MAX_MESSAGES {
            return err("messages", format!("must be in 1..={MAX_MESSAGES}"));
        }
        if self.chats == 0 || self.chats > MAX_CHATS {
            return err("chats", format!("must be in 1..={MAX_CHATS}"));
        }
        if !(0.0..=1.0).contains(&self.group_share) {
            return err("groupShare", "must be between 0 and 1".into());
        }
        match &self.arrival {
            Arrival::Backlog => {}
            Arrival::Steady { rate } | Arrival::Poisson { rate } => {
                if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
                    return err("arrival.rate", "must be a positive rate".into());
                }
            }
            Arrival::Bursts { size, every } => {
                if *size == 0 || every.get().is_zero() {
                    return err("arrival.bursts", "size and every must be above zero".into());
                }
            }
        }
        if let Some(p) = &self.priorities
            && [p.critical, p.high, p.normal, p.low]
                .iter()
                .all(|w| *w == 0)
        {
            return err(
                "priorities",
                "at least one weight must be above zero".into(),
            );
        }
        if !self.message_types.is_empty() && self.message_types.values().all(|w| *w == 0) {
            return err(
                "messageTypes",
                "at least one weight must be above zero".into(),
            );
        }
        if self.telegram.per_bot == 0
            || self.telegram.per_chat == 0
            || self.telegram.per_group_per_minute == 0
        {
            return err("telegram", "limits must be at least 1".into());
        }
        for (name, f) in &self.faults.tiers {
            if !tier_names.iter().any(|t| t == name) {
                return err(
                    &format!("faults.tiers.{name}"),
                    format!(
                        "no such tier in the config (have: {})",
                        tier_names.join(", ")
                    ),
                );
            }
            if !(0.0..=1.0).contains(&f.error_rate) {
                return err(
                    &format!("faults.tiers.{name}.errorRate"),
                    "must be between 0 and 1".into(),
                );
            }
        }
        if let Some(c) = self.faults.blocked_chats.iter().find(|c| **c >= self.chats) {
            return err(
                "faults.blockedChats",
                format!("chat {c} is not below chats ({})", self.chats),
            );
        }
        Ok(())
    }

    /// The horizon, or the default cap.
    pub fn horizon(&self) -> Duration {
        self.horizon
            .as_ref()
            .map_or(Duration::from_secs(48 * 3600), DurationString::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_arrival_and_rates() {
        let w = Workload::parse(
            "messages: 10\nchats: 2\narrival: backlog\nfaults: {tiers: {a: {outages: [{start: 1s, duration: 2s}]}}}\n",
        )
        .unwrap();
        assert!(matches!(w.arrival, Arrival::Backlog));
        assert_eq!(w.faults.tiers["a"].outages[0].mode, OutageMode::Refused);
        let w = Workload::parse("messages: 10\nchats: 2\narrival: {steady: {rate: 50000/h}}\n")
            .unwrap();
        let Arrival::Steady { rate } = w.arrival else {
            panic!()
        };
        assert!((rate.per_second - 13.888).abs() < 0.01);
        let w =
            Workload::parse("messages: 10\nchats: 2\narrival: {poisson: {rate: 2.5}}\n").unwrap();
        assert!(matches!(w.arrival, Arrival::Poisson { rate } if rate.per_second == 2.5));
        let w =
            Workload::parse("messages: 10\nchats: 2\narrival: {bursts: {size: 5, every: 1m}}\n")
                .unwrap();
        assert!(matches!(w.arrival, Arrival::Bursts { size: 5, .. }));
        assert!(w.validate(&[]).is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let e =
            Workload::parse("messages: 10\nchats: 2\narrival: backlog\nchatz: 3\n").unwrap_err();
        assert!(e.contains("chatz"), "{e}");
        let e = Workload::parse("messages: 10\nchats: 2\narrival: {steady: {rate: fast}}\n")
            .unwrap_err();
        assert!(e.contains("rate"), "{e}");
        let w = Workload::parse(
            "messages: 10\nchats: 2\narrival: backlog\nfaults: {tiers: {nope: {}}, blockedChats: [1]}\n",
        )
        .unwrap();
        let e = w.validate(&["tg".into()]).unwrap_err();
        assert_eq!(e.field, "faults.tiers.nope");
        let w = Workload::parse("messages: 0\nchats: 2\narrival: backlog\n").unwrap();
        assert_eq!(w.validate(&[]).unwrap_err().field, "messages");
    }
}
