//! The agent's config file as the operator writes it into the tier's
//! ConfigMap: one multi-document YAML holding an `Agent` document, the tier,
//! and the policies it references — the same documents a standalone
//! `herald run -f` reads — plus its revision hash.
//!
//! Owns the `Agent` document (how the pod finds its secrets, its track and
//! its partitions) and the rendering. Invariants: no secret value is ever
//! rendered — Secrets appear as (name, key, environment variable) and the
//! pod receives the value through `secretKeyRef` env; each document carries
//! only `name` and `namespace` from the object's metadata (no uid,
//! resourceVersion or managedFields), so the revision changes exactly when
//! what the agent reads changes.

use serde::{Deserialize, Serialize};

use crate::api::delivery_tier::{Channel, StoreKind};
use crate::api::refs::SecretKeyRef;
use crate::api::{API_VERSION, DeliveryTierSpec};

use super::canary::partition_split;
use super::desired::{DesiredError, ResolvedPolicies};
use super::hash;
use super::index::RefKind;

/// Key of the config file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the ConfigMap is mounted in agent pods.
pub const CONFIG_DIR: &str = "/etc/herald";
/// The file the agent is started with.
pub const CONFIG_PATH: &str = "/etc/herald/config.yaml";
/// The agent's one port: ingest, admin, health and `/metrics`.
pub const HTTP_PORT: u16 = 8080;
/// In a pod the agent must be reachable from the Service, so it listens on
/// every interface (tests and `herald run` keep 127.0.0.1).
pub const POD_LISTEN: &str = "0.0.0.0:8080";
/// `kind` of the agent document.
pub const AGENT_KIND: &str = "Agent";

/// Environment variables the operator sets on agent containers.
pub mod env {
    /// `stable` or `canary`, from the pod's `herald.dev/track` label.
    pub const TRACK: &str = "HERALD_TRACK";
    pub const POD_NAME: &str = "HERALD_POD_NAME";
    pub const POD_NAMESPACE: &str = "HERALD_POD_NAMESPACE";
    /// The ConfigMap to watch for hot reload through the API.
    pub const CONFIG_MAP: &str = "HERALD_CONFIG_MAP";
}

/// What a Secret referenced by a tier is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretRole {
    TelegramToken,
    WebhookHmac,
    RedisUrl,
}

impl SecretRole {
    /// The environment variable carrying the value in agent pods. Fixed per
    /// role, so a change of Secret name changes only the `secretKeyRef`.
    pub const fn env(self) -> &'static str {
        match self {
            SecretRole::TelegramToken => "HERALD_TELEGRAM_TOKEN",
            SecretRole::WebhookHmac => "HERALD_WEBHOOK_HMAC",
            SecretRole::RedisUrl => "HERALD_REDIS_URL",
        }
    }

    /// Where the reference is written in a DeliveryTier.
    pub const fn field_path(self) -> &'static str {
        match self {
            SecretRole::TelegramToken => "spec.telegram.tokenSecretRef.name",
            SecretRole::WebhookHmac => "spec.webhook.hmacSecretRef.name",
            SecretRole::RedisUrl => "spec.store.redis.urlSecretRef.name",
        }
    }
}

/// The Secrets a tier uses, in role order: the channel's own secret (only
/// for the channel in use) and the Redis URL (only for a redis store).
pub fn secret_refs(spec: &DeliveryTierSpec) -> Vec<(SecretRole, &SecretKeyRef)> {
    let mut out = Vec::new();
    match spec.channel {
        Channel::Telegram => {
            if let Some(r) = spec
                .telegram
                .as_ref()
                .and_then(|t| t.token_secret_ref.as_ref())
            {
                out.push((SecretRole::TelegramToken, r));
            }
        }
        Channel::Webhook => {
            if let Some(r) = spec
                .webhook
                .as_ref()
                .and_then(|w| w.hmac_secret_ref.as_ref())
            {
                out.push((SecretRole::WebhookHmac, r));
            }
        }
        Channel::Spool => {}
    }
    if spec.store.kind == StoreKind::Redis
        && let Some(r) = &spec.store.redis
    {
        out.push((SecretRole::RedisUrl, &r.url_secret_ref));
    }
    out
}

/// `metadata` of a rendered document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The agent document: how this agent runs, as opposed to what it delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: DocumentMeta,
    pub spec: AgentSpec,
}

/// Settings of one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The DeliveryTier this agent delivers for.
    pub tier: String,
    /// Address the HTTP server binds.
    pub listen: String,
    /// Where each referenced Secret key is found in this agent's
    /// environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretEnv>,
    /// Environment variable holding this pod's track (`stable`/`canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_env: Option<String>,
    /// Which queue partitions each track owns (redis store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionAssignment>,
}

/// A Secret key and the environment variable that carries its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub name: String,
    pub key: String,
    pub env: String,
}

/// Queue partitions per track. Stable owns `[0, n)`, canary `[n, total)`,
/// so the two ranges are disjoint and cover every partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub total: u32,
    pub stable: PartitionRange,
    pub canary: PartitionRange,
}

/// Half-open range of partition numbers, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub start: u32,
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

/// Partition assignment for a canary weight (percent).
pub fn assign_partitions(total: u32, canary_weight: u32) -> PartitionAssignment {
    let (_, stable) = partition_split(total, canary_weight);
    PartitionAssignment {
        total,
        stable: PartitionRange {
            start: 0,
            end: stable,
        },
        canary: PartitionRange {
            start: stable,
            end: total,
        },
    }
}

/// The rendered config file and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub yaml: String,
    /// FNV-1a 64 of `yaml`, 16 hex digits.
    pub revision: String,
}

/// What goes into the config file.
#[derive(Clone, Copy, Debug)]
pub struct ConfigInput<'a> {
    pub tier_name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a DeliveryTierSpec,
    pub policies: &'a ResolvedPolicies,
    /// The canary's share of partitions in percent (0 when none runs).
    pub canary_weight: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a, S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: DocumentMeta,
    spec: &'a S,
}

/// The agent document for a tier.
pub fn agent_document(input: &ConfigInput<'_>) -> AgentDocument {
    let secrets = secret_refs(input.spec)
        .into_iter()
        .map(|(role, r)| SecretEnv {
            name: r.name.clone(),
            key: r.key.clone(),
            env: role.env().to_owned(),
        })
        .collect();
    let partitions = match (&input.spec.store.kind, &input.spec.store.redis) {
        (StoreKind::Redis, Some(redis)) => {
            Some(assign_partitions(redis.partitions, input.canary_weight))
        }
        _ => None,
    };
    AgentDocument {
        api_version: API_VERSION.to_owned(),
        kind: AGENT_KIND.to_owned(),
        metadata: DocumentMeta {
            name: input.tier_name.to_owned(),
            namespace: Some(input.namespace.to_owned()),
        },
        spec: AgentSpec {
            tier: input.tier_name.to_owned(),
            listen: POD_LISTEN.to_owned(),
            secrets,
            track_env: Some(env::TRACK.to_owned()),
            partitions,
        },
    }
}

/// Render the config file: Agent, DeliveryTier, then each referenced
/// policy in the order RateLimitPolicy, CircuitPolicy, DegradationProfile.
/// A referenced policy missing from `policies` is an error (the caller
/// keeps the old ConfigMap and sets a condition); a resolved policy the
/// tier does not reference is left out.
pub fn render(input: &ConfigInput<'_>) -> Result<AgentConfig, DesiredError> {
    let meta = |name: &str| DocumentMeta {
        name: name.to_owned(),
        namespace: Some(input.namespace.to_owned()),
    };
    let yaml_err = |e: serde_saphyr::SerializeError| DesiredError::Render(e.to_string());
    let mut docs = vec![
        serde_saphyr::to_string(&agent_document(input)).map_err(yaml_err)?,
        serde_saphyr::to_string(&Document {
            api_version: API_VERSION,
            kind: "DeliveryTier",
            metadata: meta(input.tier_name),
            spec: input.spec,
        })
        .map_err(yaml_err)?,
    ];
    let spec = input.spec;
    let p = input.policies;
    if let Some(r) = &spec.rate_limit_policy_ref {
        let s = p
            .rate_limit
            .as_ref()
            .ok_or_else(|| missing(RefKind::RateLimitPolicy, &r.name))?;
        docs.push(policy_doc("RateLimitPolicy", meta(&r.name), s).map_err(yaml_err)?);
    }
    if let Some(r) = &spec.circuit_policy_ref {
        let s = p
            .circuit
            .as_ref()
            .ok_or_else(|| missing(RefKind::CircuitPolicy, &r.name))?;
        docs.push(policy_doc("CircuitPolicy", meta(&r.name), s).map_err(yaml_err)?);
    }
    if let Some(r) = &spec.degradation_profile_ref {
        let s = p
            .degradation
            .as_ref()
            .ok_or_else(|| missing(RefKind::DegradationProfile, &r.name))?;
        docs.push(policy_doc("DegradationProfile", meta(&r.name), s).map_err(yaml_err)?);
    }
    let mut yaml = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        yaml.push_str(d);
        if !d.ends_with('\n') {
            yaml.push('\n');
        }
    }
    let revision = hash::revision([yaml.as_bytes()]);
    Ok(AgentConfig { yaml, revision })
}

fn policy_doc<S: Serialize>(
    kind: &'static str,
    metadata: DocumentMeta,
    spec: &S,
) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&Document {
        api_version: API_VERSION,
        kind,
        metadata,
        spec,
    })
}

fn missing(kind: RefKind, name: &str) -> DesiredError {
    let field = match kind {
        RefKind::RateLimitPolicy => "spec.rateLimitPolicyRef.name",
        RefKind::CircuitPolicy => "spec.circuitPolicyRef.name",
        RefKind::DegradationProfile => "spec.degradationProfileRef.name",
        RefKind::Secret | RefKind::DeliveryTier => "spec",
    };
    DesiredError::MissingReference {
        kind,
        name: name.to_owned(),
        field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CircuitPolicySpec, RateLimitPolicySpec};

    fn spec(json: serde_json::Value) -> DeliveryTierSpec {
        serde_json::from_value(json).unwrap()
    }

    fn redis_tier() -> DeliveryTierSpec {
        spec(serde_json::json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
            "rateLimitPolicyRef": {"name": "limits"},
            "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "partitions": 10}},
            "replicas": 3,
        }))
    }

    fn policies() -> ResolvedPolicies {
        ResolvedPolicies {
            rate_limit: Some(RateLimitPolicySpec::default()),
            ..ResolvedPolicies::default()
        }
    }

    fn input<'a>(spec: &'a DeliveryTierSpec, p: &'a ResolvedPolicies, w: u32) -> ConfigInput<'a> {
        ConfigInput {
            tier_name: "alerts",
            namespace: "ns",
            spec,
            policies: p,
            canary_weight: w,
        }
    }

    #[test]
    fn renders_agent_tier_and_referenced_policies_in_order() {
        let s = redis_tier();
        let mut p = policies();
        // Resolved but not referenced: left out.
        p.circuit = Some(CircuitPolicySpec::default());
        let cfg = render(&input(&s, &p, 0)).unwrap();
        let kinds: Vec<&str> = cfg
            .yaml
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds,
            ["Agent", "DeliveryTier", "RateLimitPolicy"],
            "{}",
            cfg.yaml
        );
        assert_eq!(cfg.yaml.matches("\n---\n").count(), 2);
        assert!(cfg.yaml.contains("env: HERALD_TELEGRAM_TOKEN"));
        assert!(cfg.yaml.contains("env: HERALD_REDIS_URL"));
    }

    #[test]
    fn the_agent_document_round_trips() {
        let s = redis_tier();
        let p = policies();
        let cfg = render(&input(&s, &p, 50)).unwrap();
        let first = cfg.yaml.split("---\n").next().unwrap();
        let doc: AgentDocument = serde_saphyr::from_str(first).unwrap();
        assert_eq!(doc, agent_document(&input(&s, &p, 50)));
        let parts = doc.spec.partitions.unwrap();
        assert_eq!((parts.stable.len(), parts.canary.len()), (5, 5));
    }

    #[test]
    fn revision_is_deterministic_and_follows_content() {
        let s = redis_tier();
        let p = policies();
        let a = render(&input(&s, &p, 0)).unwrap();
        let b = render(&input(&s, &p, 0)).unwrap();
        assert_eq!(a, b);
        let mut p2 = policies();
        if let Some(rl) = p2.rate_limit.as_mut() {
            rl.global.rate = 20;
        }
        assert_ne!(render(&input(&s, &p2, 0)).unwrap().revision, a.revision);
        assert_ne!(render(&input(&s, &p, 10)).unwrap().revision, a.revision);
    }

    #[test]
    fn a_referenced_policy_that_is_not_resolved_is_an_error() {
        let s = redis_tier();
        let err = render(&input(&s, &ResolvedPolicies::default(), 0)).unwrap_err();
        assert!(matches!(
            err,
            DesiredError::MissingReference {
                kind: RefKind::RateLimitPolicy,
                ..
            }
        ));
    }

    #[test]
    fn secret_refs_follow_the_channel_and_the_store() {
        let s = spec(serde_json::json!({
            "channel": "webhook",
            "webhook": {"url": "https://x", "hmacSecretRef": {"name": "h", "key": "k"}},
            "telegram": {"tokenSecretRef": {"name": "unused", "key": "t"}},
            "store": {"type": "embedded", "redis": {"urlSecretRef": {"name": "unused-redis", "key": "u"}}},
        }));
        let refs: Vec<_> = secret_refs(&s)
            .into_iter()
            .map(|(r, s)| (r, s.name.as_str()))
            .collect();
        assert_eq!(refs, [(SecretRole::WebhookHmac, "h")]);
        let p = ResolvedPolicies::default();
        assert!(agent_document(&input(&s, &p, 0)).spec.partitions.is_none());
    }
}
