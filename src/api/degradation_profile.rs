//! DegradationProfile: how a tier sheds load as things get worse.
//!
//! Five levels, NORMAL < MINOR < MODERATE < SEVERE < CRITICAL. A level is
//! entered when any of its entry thresholds is reached and left when every
//! signal is back below its exit thresholds, after a minimum dwell time.

// kube's `printcolumn(...)` repeats `type_`/`json_path` once per column by design.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationString;
use super::policy_status::{PolicyKind, PolicyStatus};
use crate::engine::Priority;

/// Levels, thresholds and actions for graceful degradation.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "DegradationProfile",
    doc = "Degradation levels MINOR to CRITICAL: when to enter and leave each, and what to shed while in it.",
    namespaced,
    status = "DegradationProfileStatus",
    shortname = "dgp",
    category = "herald",
    printcolumn(
        name = "LEVELS",
        type_ = "integer",
        json_path = ".status.levelCount",
        description = "Levels defined above NORMAL"
    ),
    printcolumn(name = "DWELL", type_ = "string", json_path = ".spec.minDwell"),
    printcolumn(
        name = "OVERRIDE",
        type_ = "string",
        json_path = ".spec.override.level"
    ),
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
    validation = Rule::new("['MINOR', 'MODERATE', 'SEVERE', 'CRITICAL'].filter(l, self.levels.exists(x, x.level == l)) == self.levels.map(x, x.level)")
        .message("levels must be listed once each, in order MINOR, MODERATE, SEVERE, CRITICAL").field_path(".levels").reason(Reason::FieldValueInvalid),
)]
pub struct DegradationProfileSpec {
    /// The levels above NORMAL, in increasing order of severity.
    #[serde(default = "default_levels")]
    #[schemars(length(max = 4))]
    pub levels: Vec<LevelSpec>,
    /// Least time spent in a level before stepping down again.
    #[serde(default = "default_min_dwell")]
    pub min_dwell: DurationString,
    /// How often signals are evaluated.
    #[serde(default = "default_interval")]
    pub evaluation_interval: DurationString,
    /// Pin the level by hand (also settable through the admin API).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "override")]
    pub manual_override: Option<ManualOverride>,
}

impl Default for DegradationProfileSpec {
    fn default() -> Self {
        DegradationProfileSpec {
            levels: default_levels(),
            min_dwell: default_min_dwell(),
            evaluation_interval: default_interval(),
            manual_override: None,
        }
    }
}

/// A degradation level name.
#[derive(
    JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum LevelName {
    Normal,
    Minor,
    Moderate,
    Severe,
    Critical,
}

/// One level: when to enter it, when to leave it, what to do while in it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.level != 'NORMAL'").message("NORMAL is implicit and cannot be configured").field_path(".level"),
    validation = Rule::new("has(self.entry.queueDepth) || has(self.entry.oldestAge) || has(self.entry.errorRatePercent) || has(self.entry.p95Latency) || has(self.entry.openBreakers)")
        .message("entry needs at least one threshold").field_path(".entry"),
    validation = Rule::new("!has(self.exit.queueDepth) || (has(self.entry.queueDepth) && self.exit.queueDepth < self.entry.queueDepth)")
        .message("exit.queueDepth must be below entry.queueDepth").field_path(".exit.queueDepth"),
    validation = Rule::new("!has(self.exit.oldestAge) || (has(self.entry.oldestAge) && duration(self.exit.oldestAge) < duration(self.entry.oldestAge))")
        .message("exit.oldestAge must be below entry.oldestAge").field_path(".exit.oldestAge"),
    validation = Rule::new("!has(self.exit.errorRatePercent) || (has(self.entry.errorRatePercent) && self.exit.errorRatePercent < self.entry.errorRatePercent)")
        .message("exit.errorRatePercent must be below entry.errorRatePercent").field_path(".exit.errorRatePercent"),
    validation = Rule::new("!has(self.exit.p95Latency) || (has(self.entry.p95Latency) && duration(self.exit.p95Latency) < duration(self.entry.p95Latency))")
        .message("exit.p95Latency must be below entry.p95Latency").field_path(".exit.p95Latency"),
    validation = Rule::new("!has(self.exit.openBreakers) || (has(self.entry.openBreakers) && self.exit.openBreakers < self.entry.openBreakers)")
        .message("exit.openBreakers must be below entry.openBreakers").field_path(".exit.openBreakers"),
)]
pub struct LevelSpec {
    /// MINOR, MODERATE, SEVERE or CRITICAL.
    pub level: LevelName,
    /// Enter this level when any of these is reached.
    pub entry: Thresholds,
    /// Leave this level when every signal is at or below these. An unset
    /// exit threshold defaults to 80 % of its entry threshold.
    #[serde(default)]
    pub exit: Thresholds,
    /// What changes while this level is active.
    #[serde(default)]
    pub actions: Actions,
}

/// Signal thresholds; unset signals are not considered.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Messages waiting in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000000))]
    pub queue_depth: Option<u64>,
    /// Age of the oldest waiting message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age: Option<DurationString>,
    /// Failed attempts, percent of all attempts in the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub error_rate_percent: Option<u32>,
    /// 95th percentile delivery latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency: Option<DurationString>,
    /// Circuit breakers currently open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub open_breakers: Option<u32>,
}

/// Actions applied while a level is active.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actions {
    /// Priorities refused at ingest and held back in the scheduler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub shed_priorities: Vec<PriorityName>,
    /// Message types held back in the queue (not dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub pause_message_types: Vec<String>,
    /// Share of normal send concurrency kept, in percent.
    #[serde(default = "hundred")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency_percent: u32,
    /// Send through this tier (by name) instead of the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub route_to: Option<String>,
    /// Answer new messages with 503 and Retry-After.
    #[serde(default)]
    pub refuse_ingest: bool,
    /// Retry-After sent with refusals.
    #[serde(default = "default_retry_after")]
    pub retry_after: DurationString,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            shed_priorities: Vec::new(),
            pause_message_types: Vec::new(),
            concurrency_percent: 100,
            route_to: None,
            refuse_ingest: false,
            retry_after: default_retry_after(),
        }
    }
}

/// A priority, as written in YAML.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    Critical,
    High,
    Normal,
    Low,
}

impl From<PriorityName> for Priority {
    fn from(p: PriorityName) -> Priority {
        match p {
            PriorityName::Critical => Priority::Critical,
            PriorityName::High => Priority::High,
            PriorityName::Normal => Priority::Normal,
            PriorityName::Low => Priority::Low,
        }
    }
}

/// A level pinned by hand.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManualOverride {
    /// The level to hold.
    pub level: LevelName,
    /// Why, for the status and the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Observed state of a DegradationProfile.
pub type DegradationProfileStatus = PolicyStatus<DegradationProfileSpec>;

impl PolicyKind for DegradationProfileSpec {
    const STATUS_DOC: &'static str = "Observed state of a DegradationProfile.";
    const USED_BY_DOC: &'static str = "DeliveryTiers that reference this profile.";
    const HAS_LEVELS: bool = true;
}

fn hundred() -> u32 {
    100
}
fn default_min_dwell() -> DurationString {
    DurationString::lit("30s")
}
fn default_interval() -> DurationString {
    DurationString::lit("1s")
}
fn default_retry_after() -> DurationString {
    DurationString::lit("30s")
}

fn level(level: LevelName, entry: (u64, &str), exit: (u64, &str), actions: Actions) -> LevelSpec {
    LevelSpec {
        level,
        entry: Thresholds {
            queue_depth: Some(entry.0),
            oldest_age: Some(DurationString::lit(entry.1)),
            ..Thresholds::default()
        },
        exit: Thresholds {
            queue_depth: Some(exit.0),
            oldest_age: Some(DurationString::lit(exit.1)),
            ..Thresholds::default()
        },
        actions,
    }
}

/// A ladder sized for one Telegram bot (30 msg/s drains ~100k messages an hour).
fn default_levels() -> Vec<LevelSpec> {
    vec![
        level(
            LevelName::Minor,
            (5_000, "5m"),
            (2_500, "2m"),
            Actions::default(),
        ),
        level(
            LevelName::Moderate,
            (20_000, "15m"),
            (10_000, "8m"),
            Actions {
                shed_priorities: vec![PriorityName::Low],
                ..Actions::default()
            },
        ),
        level(
            LevelName::Severe,
            (50_000, "30m"),
            (30_000, "20m"),
            Actions {
                shed_priorities: vec![PriorityName::Low, PriorityName::Normal],
                concurrency_percent: 50,
                ..Actions::default()
            },
        ),
        level(
            LevelName::Critical,
            (100_000, "1h"),
            (60_000, "40m"),
            Actions {
                shed_priorities: vec![PriorityName::Low, PriorityName::Normal],
                concurrency_percent: 50,
                refuse_ingest: true,
                ..Actions::default()
            },
        ),
    ]
}
