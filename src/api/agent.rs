//! `Agent`: the one document of a standalone agent's config file that is not
//! a custom resource — where to listen, where the queue lives, where secrets
//! come from. It sits beside the herald documents in the same YAML file and
//! is checked by `herald validate` with the same strictness (its schema is
//! generated the way kube generates CRD schemas).
//!
//! In a cluster the operator writes this document into the tier's ConfigMap.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationString;
use super::refs::SecretKeyRef;

/// The `kind` of the agent document.
pub const AGENT_KIND: &str = "Agent";

/// The header that carries the admin token where `Authorization` cannot:
/// through the Kubernetes API server's service proxy, which keeps
/// `Authorization` for its own login.
pub const ADMIN_TOKEN_HEADER: &str = "x-herald-admin-token";

/// Settings of one agent process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Address of the HTTP server (ingest, Bot API drop-in, health, metrics,
    /// admin). Read at start; a reload that changes it is refused.
    #[serde(default = "default_listen")]
    #[schemars(length(min = 1, max = 256))]
    pub listen: String,
    /// The tier messages enter when they name none; by default the tier with
    /// the highest priority that is not another tier's fallback. Its queue
    /// is opened at start; a reload that changes it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub entry_tier: Option<String>,
    /// Embedded queue file (used when the entry tier's store is embedded).
    /// Read at start; a reload that changes it is refused.
    #[serde(default = "default_store_path")]
    #[schemars(length(min = 1, max = 4096))]
    pub store_path: String,
    /// Where `secretRef`s are looked up.
    #[serde(default)]
    pub secrets: SecretSources,
    /// Bearer token for `/admin`; the admin API is off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_ref: Option<SecretKeyRef>,
    /// How the Telegram Bot API drop-in endpoint answers.
    #[serde(default)]
    pub bot_api: BotApiSpec,
    /// Ingest limits.
    #[serde(default)]
    pub ingest: IngestSpec,
    /// How the HTTP server treats connections: read timeouts and a cap.
    #[serde(default)]
    pub http: HttpSpec,
    /// A directory watched for message files; off when unset. Read at start; a reload that changes it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub spool_source: Option<String>,
    /// How long delivered records and idempotency keys are kept.
    #[serde(default = "default_retention")]
    pub retention: DurationString,
    /// Time allowed on SIGTERM to finish in-flight sends before exiting.
    /// Read at start; a reload that changes it is refused.
    #[serde(default = "default_grace")]
    pub shutdown_grace: DurationString,
    /// Prometheus metrics at `/metrics`.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// In a cluster: the ConfigMap this config came from, watched through
    /// the API so an edit is live within 2 s (the mounted file lags by up
    /// to a minute). Set by the operator; unset for standalone agents.
    /// Read at start; a reload that changes it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    /// Environment variable holding this pod's track (`stable`/`canary`).
    /// Read at start; a reload that changes it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub track_env: Option<String>,
    /// Which queue partitions each track owns (Redis store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionAssignment>,
    /// Redis store only: how long a queue partition stays with an agent
    /// that stopped renewing it (killed, frozen, cut off) before another
    /// agent takes it over. Agents renew three times per period. Read at start; a reload that changes it is refused.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: DurationString,
    /// How long a message may wait out outages. A message that every tier
    /// failed with the tier's own fault (5xx, timeouts, refused
    /// connections, TLS, a bad token) is held and tried again, never
    /// dead-lettered for it, until it is this old; then it is dead-lettered
    /// with the reason `max_age` (`0s`: at once, never held). Refusals of
    /// the message itself (400, a chat that blocked the bot) dead-letter it
    /// at once.
    #[serde(default = "default_max_message_age")]
    pub max_message_age: DurationString,
}

/// A ConfigMap key holding the agent's config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// Namespace of the ConfigMap; the pod's own when unset (read from
    /// `HERALD_POD_NAMESPACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Queue partitions per track. Stable owns `[stable.start, stable.end)`,
/// canary `[canary.start, canary.end)`; the two are disjoint and cover
/// `0..total`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionAssignment {
    #[schemars(range(min = 1, max = 4096))]
    pub total: u32,
    pub stable: PartitionRange,
    pub canary: PartitionRange,
}

/// Half-open range of partition numbers, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRange {
    #[schemars(range(max = 4096))]
    pub start: u32,
    #[schemars(range(max = 4096))]
    pub end: u32,
}

impl PartitionRange {
    pub fn len(self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Metrics switch (read at start; a reload that changes it is refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Collect and serve metrics. Off only for measuring their cost. Read at start; a reload that changes it is refused.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec { enabled: true }
    }
}

fn yes() -> bool {
    true
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            listen: default_listen(),
            entry_tier: None,
            store_path: default_store_path(),
            secrets: SecretSources::default(),
            admin_token_ref: None,
            bot_api: BotApiSpec::default(),
            ingest: IngestSpec::default(),
            http: HttpSpec::default(),
            spool_source: None,
            retention: default_retention(),
            shutdown_grace: default_grace(),
            metrics: MetricsSpec::default(),
            config_map: None,
            track_env: None,
            partitions: None,
            lease_ttl: default_lease_ttl(),
            max_message_age: default_max_message_age(),
        }
    }
}

/// Secret lookup: first the file `<dir>/<name>/<key>` (the layout of a
/// mounted Kubernetes Secret), then the environment variable
/// `<envPrefix><NAME>_<KEY>` (upper-cased, non-alphanumerics as `_`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSources {
    /// Directory of mounted secrets.
    #[serde(default = "default_secrets_dir")]
    #[schemars(length(min = 1, max = 4096))]
    pub dir: String,
    /// Prefix of environment variables holding secrets.
    #[serde(default = "default_env_prefix")]
    #[schemars(length(max = 64))]
    pub env_prefix: String,
}

impl Default for SecretSources {
    fn default() -> Self {
        SecretSources {
            dir: default_secrets_dir(),
            env_prefix: default_env_prefix(),
        }
    }
}

/// Telegram Bot API drop-in behaviour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotApiSpec {
    /// Answer send methods at acceptance instead of waiting for delivery
    /// (a request can also ask with the header `X-Herald-Async: 1`).
    #[serde(default)]
    pub async_accept: bool,
    /// Longest wait for a delivery before answering 202-style
    /// `{"ok":true,"result":{"herald_id":...}}`.
    #[serde(default = "default_wait")]
    pub wait_for_delivery: DurationString,
    /// The body of a send method's answer when herald answers before (or
    /// without) Telegram's: at acceptance, when the wait runs out, or after a
    /// delivery by a webhook or spool tier. `herald`:
    /// `{"ok":true,"result":{"herald_id":..,"state":..}}`; `message`: a
    /// Telegram `Message` (chat, date, text or caption) whose `message_id`
    /// is not Telegram's, for libraries that parse every answer as a
    /// `Message`. A request can ask with the header `X-Herald-Answer`.
    #[serde(default)]
    pub answer: BotApiAnswer,
}

/// The shape of an answer herald gives in Telegram's place.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotApiAnswer {
    #[default]
    Herald,
    Message,
}

impl Default for BotApiSpec {
    fn default() -> Self {
        BotApiSpec {
            async_accept: false,
            wait_for_delivery: default_wait(),
            answer: BotApiAnswer::Herald,
        }
    }
}

/// Ingest limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSpec {
    /// Messages per batch request.
    #[serde(default = "default_max_batch")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_batch: u32,
    /// Largest request body in bytes. Read at start; a reload that changes it is refused.
    #[serde(default = "default_max_body")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_body_bytes: u32,
}

impl Default for IngestSpec {
    fn default() -> Self {
        IngestSpec {
            max_batch: default_max_batch(),
            max_body_bytes: default_max_body(),
        }
    }
}

/// The HTTP server's defences against slow and numerous clients.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.headerReadTimeout) >= duration('100ms') && duration(self.headerReadTimeout) <= duration('10m')")
        .message("headerReadTimeout must be between 100ms and 10m").field_path(".headerReadTimeout").reason(Reason::FieldValueInvalid),
    validation = Rule::new("duration(self.bodyReadTimeout) >= duration('100ms') && duration(self.bodyReadTimeout) <= duration('1h')")
        .message("bodyReadTimeout must be between 100ms and 1h").field_path(".bodyReadTimeout").reason(Reason::FieldValueInvalid),
)]
pub struct HttpSpec {
    /// Time a client has to send a request's line and headers, counted from
    /// when the agent starts waiting for them; also how long an idle
    /// keep-alive connection is kept. A client that runs out of it is
    /// disconnected without an answer. Applies to new connections after a
    /// reload.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: DurationString,
    /// Time a client has to send a request's whole body, counted from the
    /// end of its headers; past it the request is answered 408 and the
    /// connection closed. Applies to new requests after a reload.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: DurationString,
    /// Open connections served at once. At the cap the agent stops
    /// accepting: new connections wait in the listen queue (the kernel's
    /// backlog; past it they are refused by the kernel) until one closes,
    /// while open connections keep working. Read at start; a reload that
    /// changes it is refused.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
}

impl Default for HttpSpec {
    fn default() -> Self {
        HttpSpec {
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_read_timeout() -> DurationString {
    DurationString::lit("10s")
}
fn default_body_read_timeout() -> DurationString {
    DurationString::lit("30s")
}
fn default_max_connections() -> u32 {
    10_000
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_store_path() -> String {
    "herald-data/queue.redb".to_owned()
}
fn default_secrets_dir() -> String {
    "/etc/herald/secrets".to_owned()
}
fn default_env_prefix() -> String {
    "HERALD_SECRET_".to_owned()
}
fn default_retention() -> DurationString {
    DurationString::lit("24h")
}
fn default_lease_ttl() -> DurationString {
    DurationString::lit("10s")
}
fn default_max_message_age() -> DurationString {
    DurationString::lit("24h")
}
fn default_grace() -> DurationString {
    DurationString::lit("10s")
}
fn default_wait() -> DurationString {
    DurationString::lit("30s")
}
fn default_max_batch() -> u32 {
    1000
}
fn default_max_body() -> u32 {
    1024 * 1024
}

/// The structural schema of an Agent document (`{spec: AgentSpec}`), made
/// with the settings kube uses for CRDs so one checker serves both.
pub fn agent_document_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    let spec = generator.into_root_schema_for::<AgentSpec>();
    let mut spec = serde_json::to_value(spec).unwrap_or_default();
    if let Some(o) = spec.as_object_mut() {
        o.remove("title");
        o.remove("$schema");
    }
    serde_json::json!({
        "type": "object",
        "required": ["spec"],
        "properties": {"spec": spec}
    })
}
