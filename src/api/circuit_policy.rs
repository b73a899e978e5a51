//! CircuitPolicy: how a tier reacts to failure — breaker, retries, timeouts
//! and bulkheads.
//!
//! Defaults: the breaker opens at 50 % failures over at least 10 calls, stays
//! open 1 s and doubles up to 16 s; retries are exponential 100 ms → 30 s ×2
//! with full jitter, 5 attempts, and honour Telegram's `retry_after`.

// kube's `printcolumn(...)` repeats `type_`/`json_path` once per column by design.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationString;
use super::policy_status::{PolicyKind, PolicyStatus};

/// Breaker, retry, timeout and bulkhead settings for the tiers that use it.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "CircuitPolicy",
    doc = "How a tier reacts to failure: circuit breaker, retries, timeouts and bulkheads.",
    namespaced,
    status = "CircuitPolicyStatus",
    shortname = "cbp",
    category = "herald",
    printcolumn(
        name = "FAILURE-RATE",
        type_ = "integer",
        json_path = ".spec.breaker.failureRateThreshold",
        description = "Failure percentage that opens the breaker"
    ),
    printcolumn(
        name = "MIN-CALLS",
        type_ = "integer",
        json_path = ".spec.breaker.minimumCalls"
    ),
    printcolumn(
        name = "OPEN",
        type_ = "string",
        json_path = ".spec.breaker.openDuration"
    ),
    printcolumn(name = "RETRY", type_ = "string", json_path = ".spec.retry.strategy"),
    printcolumn(
        name = "ATTEMPTS",
        type_ = "integer",
        json_path = ".spec.retry.maxAttempts"
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
pub struct CircuitPolicySpec {
    /// When to stop calling a failing tier, and how to probe it again.
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// How failed attempts are retried.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Deadlines per attempt and per message.
    #[serde(default)]
    pub timeouts: TimeoutSpec,
    /// Concurrency limits per message type, so one type cannot starve another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["messageType"]))]
    pub bulkheads: Vec<BulkheadSpec>,
}

/// Circuit breaker settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.maxOpenDuration) >= duration(self.openDuration)")
        .message("maxOpenDuration must be at least openDuration").field_path(".maxOpenDuration").reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.windowType != 'count' || self.minimumCalls <= self.windowSize")
        .message("minimumCalls cannot exceed windowSize in a count window").field_path(".minimumCalls").reason(Reason::FieldValueInvalid),
)]
pub struct BreakerSpec {
    /// `count`: the last `windowSize` calls; `time`: calls in the last `windowDuration`.
    #[serde(default)]
    pub window_type: WindowType,
    /// Calls in a count window.
    #[serde(default = "default_window_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub window_size: u32,
    /// Length of a time window.
    #[serde(default = "default_window_duration")]
    pub window_duration: DurationString,
    /// Calls needed in the window before the failure rate is judged.
    #[serde(default = "default_minimum_calls")]
    #[schemars(range(min = 1, max = 10000))]
    pub minimum_calls: u32,
    /// Failure percentage at or above which the breaker opens.
    #[serde(default = "default_failure_rate")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_threshold: u32,
    /// A call slower than this counts as slow.
    #[serde(default = "default_slow_call")]
    pub slow_call_duration: DurationString,
    /// Slow-call percentage at or above which the breaker opens.
    #[serde(default = "hundred")]
    #[schemars(range(min = 1, max = 100))]
    pub slow_call_rate_threshold: u32,
    /// How long the breaker stays open the first time.
    #[serde(default = "default_open")]
    pub open_duration: DurationString,
    /// Cap for the open duration, which doubles on each consecutive opening.
    #[serde(default = "default_max_open")]
    pub max_open_duration: DurationString,
    /// Trial calls allowed while half-open; all must succeed to close.
    #[serde(default = "default_probes")]
    #[schemars(range(min = 1, max = 100))]
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            window_type: WindowType::Count,
            window_size: default_window_size(),
            window_duration: default_window_duration(),
            minimum_calls: default_minimum_calls(),
            failure_rate_threshold: default_failure_rate(),
            slow_call_duration: default_slow_call(),
            slow_call_rate_threshold: hundred(),
            open_duration: default_open(),
            max_open_duration: default_max_open(),
            half_open_probes: default_probes(),
        }
    }
}

/// Sliding window kind.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowType {
    #[default]
    Count,
    Time,
}

/// Retry settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.maxDelay) >= duration(self.initialDelay)")
        .message("maxDelay must be at least initialDelay").field_path(".maxDelay").reason(Reason::FieldValueInvalid),
)]
pub struct RetrySpec {
    /// How the delay grows between attempts.
    #[serde(default)]
    pub strategy: RetryStrategy,
    /// Delay before the first retry.
    #[serde(default = "default_initial_delay")]
    pub initial_delay: DurationString,
    /// Largest delay between attempts (a `retry_after` from the API may exceed it).
    #[serde(default = "default_max_delay")]
    pub max_delay: DurationString,
    /// Growth factor for the exponential strategy.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: f64,
    /// Randomisation of each delay, so that retries do not synchronise.
    #[serde(default)]
    pub jitter: Jitter,
    /// Attempts in all, the first included, before the message moves on to
    /// the next tier. With no tier left, a message failed by outages (5xx,
    /// timeouts, refused connections) is held and tried again until the
    /// agent's `maxMessageAge`, not dead-lettered.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<DurationString>,
    /// Wait at least the `retry_after` the API asked for.
    #[serde(default = "yes")]
    pub honor_retry_after: bool,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            strategy: RetryStrategy::Exponential,
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: Jitter::Full,
            max_attempts: default_max_attempts(),
            max_elapsed: None,
            honor_retry_after: true,
        }
    }
}

/// Delay growth between attempts.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryStrategy {
    #[default]
    Exponential,
    Linear,
    Fixed,
    Fibonacci,
}

/// Randomisation applied to each delay.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jitter {
    None,
    #[default]
    Full,
    Equal,
    Decorrelated,
}

/// Timeouts.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.overall) >= duration(self.perAttempt)")
        .message("overall must be at least perAttempt").field_path(".overall").reason(Reason::FieldValueInvalid),
)]
pub struct TimeoutSpec {
    /// Deadline for one attempt.
    #[serde(default = "default_per_attempt")]
    pub per_attempt: DurationString,
    /// Deadline for a message from acceptance to its last attempt.
    #[serde(default = "default_overall")]
    pub overall: DurationString,
    /// Derive the per-attempt deadline from observed latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveTimeout>,
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        TimeoutSpec {
            per_attempt: default_per_attempt(),
            overall: default_overall(),
            adaptive: None,
        }
    }
}

/// Per-attempt deadline = clamp(multiplier × observed p99, min, max).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.max) >= duration(self.min)")
        .message("max must be at least min").field_path(".max").reason(Reason::FieldValueInvalid),
)]
pub struct AdaptiveTimeout {
    /// Factor applied to the observed p99 latency.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0, max = 20.0))]
    pub multiplier: f64,
    /// Lower bound of the derived deadline.
    #[serde(default = "default_adaptive_min")]
    pub min: DurationString,
    /// Upper bound of the derived deadline.
    #[serde(default = "default_per_attempt")]
    pub max: DurationString,
}

/// A concurrency limit for one message type.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkheadSpec {
    /// Message type the limit applies to (as given at ingest), e.g. `alert`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    pub message_type: String,
    /// Sends of this type in flight at once.
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: u32,
    /// How long a message may wait for a slot before it is requeued.
    #[serde(default = "default_max_wait")]
    pub max_wait: DurationString,
}

/// Observed state of a CircuitPolicy.
pub type CircuitPolicyStatus = PolicyStatus<CircuitPolicySpec>;

impl PolicyKind for CircuitPolicySpec {
    const STATUS_DOC: &'static str = "Observed state of a CircuitPolicy.";
    const USED_BY_DOC: &'static str = "DeliveryTiers that reference this policy.";
    const HAS_LEVELS: bool = false;
}

fn yes() -> bool {
    true
}
fn hundred() -> u32 {
    100
}
fn default_window_size() -> u32 {
    20
}
fn default_window_duration() -> DurationString {
    DurationString::lit("60s")
}
fn default_minimum_calls() -> u32 {
    10
}
fn default_failure_rate() -> u32 {
    50
}
fn default_slow_call() -> DurationString {
    DurationString::lit("5s")
}
fn default_open() -> DurationString {
    DurationString::lit("1s")
}
fn default_max_open() -> DurationString {
    DurationString::lit("16s")
}
fn default_probes() -> u32 {
    3
}
fn default_initial_delay() -> DurationString {
    DurationString::lit("100ms")
}
fn default_max_delay() -> DurationString {
    DurationString::lit("30s")
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_attempts() -> u32 {
    5
}
fn default_per_attempt() -> DurationString {
    DurationString::lit("10s")
}
fn default_overall() -> DurationString {
    DurationString::lit("1h")
}
fn default_adaptive_min() -> DurationString {
    DurationString::lit("1s")
}
fn default_max_wait() -> DurationString {
    DurationString::lit("1s")
}
