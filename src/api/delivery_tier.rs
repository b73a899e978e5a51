//! DeliveryTier: one delivery path (Telegram, webhook or spool), the policies
//! it runs under, where its queue lives, and how the operator runs it.
//!
//! `kubectl get tier` reads the status: channel, phase, ready replicas,
//! delivery rate, success ratio, circuit state, degradation level, canary
//! (and with `-o wide` the Ready condition's message). The scale
//! subresource maps `spec.replicas` to `status.replicas` with
//! `status.selector`, so `kubectl scale tier` and an HPA work on the tier.

// kube's `printcolumn(...)` repeats `type_`/`json_path` once per column by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationString;
use super::conditions::{Conditions, conditions_schema};
use super::pod_template::PodTemplate;
use super::refs::{LocalRef, SecretKeyRef};

/// A delivery path and how to run it.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "DeliveryTier",
    doc = "One delivery path (telegram, webhook or spool), the policies it runs under, its queue store, and how the operator runs its agent pods.",
    namespaced,
    status = "DeliveryTierStatus",
    shortname = "tier",
    shortname = "tiers",
    shortname = "dt",
    category = "herald",
    printcolumn(name = "CHANNEL", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.ready", description = "Ready replicas / desired replicas"),
    printcolumn(name = "RATE", type_ = "string", json_path = ".status.deliveryRate", description = "Messages delivered per second"),
    printcolumn(name = "SUCCESS", type_ = "string", json_path = ".status.successRatio"),
    printcolumn(name = "CIRCUIT", type_ = "string", json_path = ".status.circuit"),
    printcolumn(name = "LEVEL", type_ = "string", json_path = ".status.degradationLevel"),
    printcolumn(name = "CANARY", type_ = "string", json_path = ".status.canary.summary"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "MESSAGE", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", description = "The Ready condition's message", priority = 1),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("a tier name must be a DNS-1035 label (lowercase letters, digits and '-', at most 63 characters, starting with a letter): it names the tier's Service").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.spec.fallbackTiers) || !(self.metadata.name in self.spec.fallbackTiers)")
        .message("a tier cannot fall back to itself").field_path(".spec.fallbackTiers").reason(Reason::FieldValueInvalid)
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.channel != 'telegram' || (has(self.telegram) && has(self.telegram.tokenSecretRef))")
        .message("a telegram channel requires telegram.tokenSecretRef").field_path(".telegram").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.channel != 'webhook' || (has(self.webhook) && has(self.webhook.url))")
        .message("a webhook channel requires webhook.url").field_path(".webhook").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.channel != 'spool' || (has(self.spool) && has(self.spool.path))")
        .message("a spool channel requires spool.path").field_path(".spool").reason(Reason::FieldValueRequired),
    validation = Rule::new("(self.replicas <= 1 && !has(self.rollout)) || self.store.type == 'redis'")
        .message("replicas > 1 or a rollout requires store.type redis: agents must share one queue").field_path(".store.type").reason(Reason::FieldValueInvalid),
)]
pub struct DeliveryTierSpec {
    /// Where messages go: `telegram`, `webhook` or `spool`.
    pub channel: Channel,
    /// Telegram settings; required when channel is `telegram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramSpec>,
    /// Webhook settings; required when channel is `webhook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Spool settings; required when channel is `spool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolSpec>,
    /// Preference among tiers: higher is tried first.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: u32,
    /// Health score (0–100) below which this tier is skipped while another can deliver.
    #[serde(default = "default_health_floor")]
    #[schemars(range(min = 0, max = 100))]
    pub health_floor: u32,
    /// The RateLimitPolicy this tier sends under (Telegram defaults when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_policy_ref: Option<LocalRef>,
    /// The CircuitPolicy for breaker, retries, timeouts and bulkheads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_policy_ref: Option<LocalRef>,
    /// The DegradationProfile for load shedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation_profile_ref: Option<LocalRef>,
    /// Tiers (by name) to try, in order, when this one cannot deliver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 253)))]
    pub fallback_tiers: Vec<String>,
    /// Where the durable queue lives.
    #[serde(default)]
    pub store: StoreSpec,
    /// Agent pods to run (operator only).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: u32,
    /// Agent image; the operator's own image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Compute resources for each agent pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Settings merged into the agent pods (scheduling, pull secrets,
    /// security context, extra env and volumes), over the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
    /// Canary rollout of changes to what the pods run; without it pods roll at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Restarting unhealthy pods.
    #[serde(default)]
    pub healing: HealingSpec,
}

/// Delivery channel.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Telegram,
    Webhook,
    Spool,
}

/// Telegram Bot API settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelegramSpec {
    /// The Secret key holding the bot token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Bot API base URL; point it at `herald sandbox` to test offline.
    #[serde(default = "default_api_url")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub api_url: String,
}

/// Webhook settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// URL that receives each message as a JSON POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: Option<String>,
    /// Secret key for the HMAC-SHA256 signature of each body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeyRef>,
    /// Header carrying the signature.
    #[serde(default = "default_signature_header")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub signature_header: String,
}

/// Spool settings: messages written as files, the last resort that never drops.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSpec {
    /// Directory the message files are written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
}

/// Where the durable queue lives.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'redis' || has(self.redis)")
        .message("store.type redis requires store.redis").field_path(".redis").reason(Reason::FieldValueRequired),
)]
pub struct StoreSpec {
    /// `embedded` (a file in the pod, one replica) or `redis` (shared).
    #[serde(rename = "type", default)]
    pub kind: StoreKind,
    /// Embedded store settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedStoreSpec>,
    /// Redis store settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStoreSpec>,
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            kind: StoreKind::Embedded,
            embedded: None,
            redis: None,
        }
    }
}

/// Queue store kind.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
    Redis,
}

/// Embedded store settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedStoreSpec {
    /// File holding the queue.
    #[serde(default = "default_store_path")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// Redis store settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStoreSpec {
    /// The Secret key holding the Redis URL (it may carry a password).
    pub url_secret_ref: SecretKeyRef,
    /// Queue partitions; each is owned by one agent at a time.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 4096))]
    pub partitions: u32,
    /// Prefix for every key herald writes.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1, max = 64))]
    pub key_prefix: String,
}

/// Canary rollout.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.steps.map(s, s.weight).isSorted() && self.steps.all(s, self.steps.filter(t, t.weight == s.weight).size() == 1)")
        .message("steps weights must be strictly increasing").field_path(".steps").reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.steps[size(self.steps) - 1].weight == 100")
        .message("the last step must have weight 100").field_path(".steps").reason(Reason::FieldValueInvalid),
)]
pub struct RolloutSpec {
    /// Steps, each giving the canary a share of the queue partitions.
    #[schemars(length(min = 1, max = 10))]
    pub steps: Vec<RolloutStep>,
    /// Canary analysis run at every step.
    #[serde(default)]
    pub analysis: CanaryAnalysis,
    /// Promote automatically when analysis passes; otherwise wait for
    /// `herald rollout promote` (the `herald.dev/promote` annotation).
    #[serde(default = "yes")]
    pub auto_promote: bool,
}

/// One canary step.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Share of queue partitions for the canary, in percent.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
    /// How long to hold and analyse this step before the next.
    #[serde(default = "default_step_pause")]
    pub pause: DurationString,
}

/// Canary analysis thresholds.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// How often canary and stable metrics are compared.
    #[serde(default = "default_analysis_interval")]
    pub interval: DurationString,
    /// Largest allowed canary error rate as a multiple of stable's.
    #[serde(default = "default_error_ratio")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_error_rate_ratio: f64,
    /// Largest allowed canary error rate in percent, whatever stable does.
    #[serde(default = "default_max_error_percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_error_rate_percent: f64,
    /// Largest allowed canary p95 delivery latency.
    #[serde(default = "default_max_p95")]
    pub max_p95_latency: DurationString,
    /// 429 answers allowed per analysis interval.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub max429s: u32,
}

impl Default for CanaryAnalysis {
    fn default() -> Self {
        CanaryAnalysis {
            interval: default_analysis_interval(),
            max_error_rate_ratio: default_error_ratio(),
            max_error_rate_percent: default_max_error_percent(),
            max_p95_latency: default_max_p95(),
            max429s: 0,
        }
    }
}

/// Restarting unhealthy pods.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.maxBackoff) >= duration(self.backoff)")
        .message("maxBackoff must be at least backoff").field_path(".maxBackoff").reason(Reason::FieldValueInvalid),
)]
pub struct HealingSpec {
    /// Restart pods at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A pod unhealthy this long is restarted.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: DurationString,
    /// Restarts allowed per budget window for the whole tier.
    #[serde(default = "default_restart_budget")]
    #[schemars(range(min = 0, max = 100))]
    pub restart_budget: u32,
    /// The window the budget counts over.
    #[serde(default = "default_budget_window")]
    pub budget_window: DurationString,
    /// Wait after a restart before the same pod may be restarted again; doubles each time.
    #[serde(default = "default_backoff")]
    pub backoff: DurationString,
    /// Cap for the doubling backoff.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: DurationString,
}

impl Default for HealingSpec {
    fn default() -> Self {
        HealingSpec {
            enabled: true,
            unhealthy_after: default_unhealthy_after(),
            restart_budget: default_restart_budget(),
            budget_window: default_budget_window(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// Observed state of a DeliveryTier.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTierStatus {
    /// The generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, DependencyDegraded, CanaryAnalysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
    /// Pending, Progressing, Ready, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Ready replicas over desired, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Pods passing their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Agent pods the tier's Deployments ask for, both tracks (the scale
    /// subresource's current replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Label selector of every agent pod of the tier, e.g.
    /// `app.kubernetes.io/name=herald,herald.dev/tier=alerts` (the scale
    /// subresource's selector, which an HorizontalPodAutoscaler reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub selector: Option<String>,
    /// Delivered messages per second, e.g. `29.4/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_rate: Option<String>,
    /// Delivered over attempted, e.g. `99.8%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_ratio: Option<String>,
    /// 95th percentile delivery latency, e.g. `180ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency: Option<String>,
    /// Messages waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// Breaker state: closed, open or half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// Current degradation level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation_level: Option<String>,
    /// Canary rollout progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The last restart the operator made, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<RestartRecord>,
    /// Hash of the agent configuration the pods should be running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
}

/// Canary progress.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Index of the current step.
    pub step: u32,
    /// Canary share of queue partitions, percent.
    pub weight: u32,
    /// Analysing, Paused (at the manual gate or by `herald rollout
    /// pause`), Promoted or Aborted.
    pub verdict: String,
    /// One-line summary for `kubectl get tier`, e.g. `50% analysing`.
    pub summary: String,
    /// The pod revision under rollout, or the one aborted: what `herald
    /// rollout promote|abort|pause|retry` writes into the
    /// `herald.dev/promote` / `abort` / `pause` / `retry` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// A restart made by the operator.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    /// The pod restarted.
    pub pod: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

fn yes() -> bool {
    true
}
fn default_priority() -> u32 {
    100
}
fn default_health_floor() -> u32 {
    20
}
fn default_replicas() -> u32 {
    1
}
fn default_api_url() -> String {
    "https://api.telegram.org".to_owned()
}
fn default_signature_header() -> String {
    "X-Herald-Signature".to_owned()
}
fn default_store_path() -> String {
    "/var/lib/herald/queue.redb".to_owned()
}
fn default_partitions() -> u32 {
    64
}
fn default_key_prefix() -> String {
    "herald".to_owned()
}
fn default_step_pause() -> DurationString {
    DurationString::lit("5m")
}
fn default_analysis_interval() -> DurationString {
    DurationString::lit("1m")
}
fn default_error_ratio() -> f64 {
    1.1
}
fn default_max_error_percent() -> f64 {
    1.0
}
fn default_max_p95() -> DurationString {
    DurationString::lit("500ms")
}
fn default_unhealthy_after() -> DurationString {
    DurationString::lit("60s")
}
fn default_restart_budget() -> u32 {
    3
}
fn default_budget_window() -> DurationString {
    DurationString::lit("1h")
}
fn default_backoff() -> DurationString {
    DurationString::lit("30s")
}
fn default_max_backoff() -> DurationString {
    DurationString::lit("10m")
}
