//! RateLimitPolicy: the limits one bot or endpoint must keep.
//!
//! Defaults are Telegram's published limits read strictly: 30 messages per
//! second per bot, 1 per second per chat, 20 per minute per group, each with
//! a burst of 1 so that no sliding window ever holds more than the limit.

// kube's `printcolumn(...)` repeats `type_`/`json_path` once per column by design.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationString;
use super::policy_status::{PolicyKind, PolicyStatus};

/// Limits for one bot or endpoint, shared by every tier that references it.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    doc = "Limits one bot or endpoint must keep: global, per chat and per group, shared by every tier that references it.",
    namespaced,
    status = "RateLimitPolicyStatus",
    shortname = "rlp",
    category = "herald",
    printcolumn(
        name = "GLOBAL",
        type_ = "integer",
        json_path = ".spec.global.rate",
        description = "Messages allowed per global period"
    ),
    printcolumn(name = "PERIOD", type_ = "string", json_path = ".spec.global.period"),
    printcolumn(name = "PER-CHAT", type_ = "integer", json_path = ".spec.perChat.rate"),
    printcolumn(
        name = "PER-GROUP",
        type_ = "integer",
        json_path = ".spec.perGroup.rate"
    ),
    printcolumn(name = "BACKEND", type_ = "string", json_path = ".spec.backend"),
    printcolumn(
        name = "TIERS",
        type_ = "integer",
        json_path = ".status.tierCount",
        description = "DeliveryTiers that reference it"
    ),
    printcolumn(
        name = "ACCEPTED",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the operator accepted the spec"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.perChat.rate * duration(self.global.period).getMilliseconds() <= self.global.rate * duration(self.perChat.period).getMilliseconds()")
        .message("perChat rate must not exceed the global rate").field_path(".perChat.rate").reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.perGroup.rate * duration(self.global.period).getMilliseconds() <= self.global.rate * duration(self.perGroup.period).getMilliseconds()")
        .message("perGroup rate must not exceed the global rate").field_path(".perGroup.rate").reason(Reason::FieldValueInvalid),
)]
pub struct RateLimitPolicySpec {
    /// Limit for the whole bot (all chats together). Telegram: 30 per 1s.
    #[serde(default = "default_global")]
    pub global: RateLimit,
    /// Limit for any single chat. Telegram: 1 per 1s.
    #[serde(default = "default_per_chat")]
    pub per_chat: RateLimit,
    /// Limit for any single group or channel (negative chat id). Telegram: 20 per 1m.
    #[serde(default = "default_per_group")]
    pub per_group: RateLimit,
    /// Pacing margin so that what arrives at the API keeps the limit despite
    /// send-time jitter.
    #[serde(default)]
    pub pacing: Pacing,
    /// Largest share of the global rate each priority class may use, in
    /// percent. Unset classes may use the whole rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_shares: Option<PriorityShares>,
    /// Where limiter state lives: `local` (one agent) or `redis` (shared by
    /// every replica of the tier, one budget for the bot).
    #[serde(default)]
    pub backend: LimiterBackend,
    /// What an agent does when the shared backend is unreachable:
    /// `local-share` takes only its share of the limit (limit / live agents);
    /// `pause` stops sending until the backend is back.
    #[serde(default)]
    pub fallback: LimiterFallback,
}

/// `rate` messages per `period`, with up to `burst` sent back to back.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.burst >= 1").message("burst must be at least 1").field_path(".burst"),
    validation = Rule::new("duration(self.period) > duration('0s')").message("period must be longer than 0s").field_path(".period"),
)]
pub struct RateLimit {
    /// Messages allowed per period.
    #[schemars(range(min = 1, max = 1000000))]
    pub rate: u32,
    /// Length of the period, e.g. `1s` or `1m`.
    pub period: DurationString,
    /// Messages that may be sent back to back after an idle spell. 1 keeps
    /// every sliding window within `rate`.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: u32,
}

impl RateLimit {
    pub fn new(rate: u32, period: &str, burst: u32) -> Self {
        RateLimit {
            rate,
            period: DurationString::lit(period),
            burst,
        }
    }
}

/// Pacing margin.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    /// Stretch every emission interval by this many percent. 1 % tolerates
    /// 10 ms of arrival jitter on a 1 s window and keeps 99 % of the rate.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 20))]
    pub guard_percent: u32,
    /// The same margin for the per-chat and per-group keys. One chat rarely
    /// binds the bot's throughput, so a wider margin there is nearly free:
    /// 5 % of 1 s tolerates 50 ms of jitter between two sends to one chat.
    #[serde(default = "five")]
    #[schemars(range(min = 0, max = 50))]
    pub chat_guard_percent: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            guard_percent: 1,
            chat_guard_percent: 5,
        }
    }
}

fn five() -> u32 {
    5
}

/// Per-priority shares of the global rate, in percent.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityShares {
    /// Share for critical messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub critical: Option<u32>,
    /// Share for high-priority messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub high: Option<u32>,
    /// Share for normal messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub normal: Option<u32>,
    /// Share for low-priority messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub low: Option<u32>,
}

/// Where limiter state lives.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimiterBackend {
    /// In the agent's memory; right for a single agent.
    #[default]
    Local,
    /// In Redis, one budget shared by all agents.
    Redis,
}

/// Behaviour while the shared limiter backend is unreachable.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimiterFallback {
    /// Each agent keeps limit / live agents locally.
    #[default]
    LocalShare,
    /// Stop sending until the backend is back.
    Pause,
}

/// Observed state of a RateLimitPolicy.
pub type RateLimitPolicyStatus = PolicyStatus<RateLimitPolicySpec>;

impl PolicyKind for RateLimitPolicySpec {
    const STATUS_DOC: &'static str = "Observed state of a RateLimitPolicy.";
    const USED_BY_DOC: &'static str = "DeliveryTiers that reference this policy.";
    const HAS_LEVELS: bool = false;
}

fn one() -> u32 {
    1
}

fn default_global() -> RateLimit {
    RateLimit::new(30, "1s", 1)
}

fn default_per_chat() -> RateLimit {
    RateLimit::new(1, "1s", 1)
}

fn default_per_group() -> RateLimit {
    RateLimit::new(20, "1m", 1)
}

impl Default for RateLimitPolicySpec {
    fn default() -> Self {
        RateLimitPolicySpec {
            global: default_global(),
            per_chat: default_per_chat(),
            per_group: default_per_group(),
            pacing: Pacing::default(),
            priority_shares: None,
            backend: LimiterBackend::Local,
            fallback: LimiterFallback::LocalShare,
        }
    }
}
