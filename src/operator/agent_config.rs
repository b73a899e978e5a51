//! The agent's config file as the operator writes it into the tier's
//! ConfigMap: one multi-document YAML that `herald agent --config` loads
//! as it is — an `Agent` document ([`AgentSpec`], the agent's own schema),
//! the tier, every tier it can deliver through and the policies they
//! reference ([`reach`](super::reach)) — plus its revision hash.
//!
//! Owns the Agent document, the rendering, and the Secret wiring both
//! sides agree on: a `SecretKeyRef` `name`/`key` reaches the pod as the
//! environment variable the agent looks it up under
//! ([`SecretKeyRef::env_var_name`] with [`SECRET_ENV_PREFIX`], written
//! into the Agent document); [`secret_uses`] lists which keys one agent
//! reads. Leaves to
//! [`reach`](super::reach) which tiers and policies go in, and to
//! [`pod`](super::pod) the container that carries the variables.
//!
//! Invariants: the file passes the agent's strict validation and loads
//! with the pod's environment (a contract test runs the agent's loader on
//! every rendered case); no secret value is ever rendered — the pod gets
//! values through `secretKeyRef` env only; each document carries only
//! `name` and `namespace` from the object's metadata (no uid,
//! resourceVersion or managedFields), so the revision changes exactly when
//! what the agent reads changes.

use serde::{Deserialize, Serialize};

use crate::api::agent::{
    AGENT_KIND, AgentSpec, ConfigMapSource, PartitionAssignment, PartitionRange, SecretSources,
};
use crate::api::delivery_tier::{EmbeddedStoreSpec, StoreKind};
use crate::api::refs::SecretKeyRef;
use crate::api::{API_VERSION, DeliveryTierSpec};
use crate::engine::partition::partition_split;

use super::hash;
use super::inputs::DesiredError;
use super::names;
use super::reach::Reach;
use super::secrets::{SecretRole, secret_refs};

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
/// `secrets.envPrefix` of the Agent document. Secret files are not used in
/// pods: `secrets.dir` keeps the agent's default, which lies inside the
/// ConfigMap mount, where only `config.yaml` exists (a ConfigMap key
/// cannot hold a `/`), so every lookup falls through to the environment.
pub const SECRET_ENV_PREFIX: &str = "HERALD_SECRET_";

/// Environment variables the operator sets on agent containers besides the
/// secrets.
pub mod env {
    /// `stable` or `canary`, from the pod's `herald.dev/track` label.
    pub const TRACK: &str = "HERALD_TRACK";
    pub const POD_NAME: &str = "HERALD_POD_NAME";
    /// Also where the agent finds its ConfigMap's namespace.
    pub const POD_NAMESPACE: &str = "HERALD_POD_NAMESPACE";
}

/// One Secret key an agent reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    /// The tier that references it; `None` for the agent's own.
    pub tier: Option<&'a str>,
    pub role: SecretRole,
    pub secret: &'a SecretKeyRef,
    /// The environment variable carrying it.
    pub var: String,
}

impl SecretUse<'_> {
    /// Where the reference is written, for a missing-reference condition;
    /// another tier's reference names that tier first.
    pub fn field(&self) -> String {
        match self.tier {
            None => self.role.field_path().to_owned(),
            Some(t) => format!("DeliveryTier/{t}: {}", self.role.field_path()),
        }
    }
}

/// The Secret keys one agent reads, in order: every secret of its own tier
/// (channel and Redis URL), then the channel secret of each other tier it
/// delivers through. Their stores are not this agent's (it runs its own
/// tier's queue), so their Redis URLs are left out.
pub fn secret_uses<'a>(
    spec: &'a DeliveryTierSpec,
    others: &'a [(String, DeliveryTierSpec)],
) -> Vec<SecretUse<'a>> {
    let own = secret_refs(spec)
        .into_iter()
        .map(|(role, r)| (None, role, r));
    let theirs = others.iter().flat_map(|(name, s)| {
        secret_refs(s)
            .into_iter()
            .filter(|(role, _)| *role != SecretRole::RedisUrl)
            .map(move |(role, r)| (Some(name.as_str()), role, r))
    });
    own.chain(theirs)
        .map(|(tier, role, secret)| SecretUse {
            tier,
            role,
            secret,
            var: secret.env_var_name(SECRET_ENV_PREFIX),
        })
        .collect()
}

/// The pod's secret environment: one variable per Secret key, first use
/// first. Two different keys that would arrive in the same variable (the
/// name mangling folds case and `-`/`.` into `_`) are an error: one of
/// them would silently read the other's value.
pub fn secret_env<'a>(
    uses: &[SecretUse<'a>],
) -> Result<Vec<(String, &'a SecretKeyRef)>, DesiredError> {
    let mut out: Vec<(String, &'a SecretKeyRef)> = Vec::new();
    for u in uses {
        match out.iter().find(|(var, _)| *var == u.var) {
            None => out.push((u.var.clone(), u.secret)),
            Some((_, r)) if *r == u.secret => {}
            Some((var, r)) => {
                return Err(DesiredError::SecretVariableClash {
                    var: var.clone(),
                    first: format!("{}/{}", r.name, r.key),
                    second: format!("{}/{}", u.secret.name, u.secret.key),
                });
            }
        }
    }
    Ok(out)
}

/// The embedded queue file of a tier, `None` for a redis store. The API's
/// default is read from the type rather than restated.
pub fn embedded_queue_path(spec: &DeliveryTierSpec) -> Result<Option<String>, DesiredError> {
    if spec.store.kind != StoreKind::Embedded {
        return Ok(None);
    }
    let path = match &spec.store.embedded {
        Some(e) => e.path.clone(),
        None => {
            serde_json::from_value::<EmbeddedStoreSpec>(serde_json::json!({}))
                .map_err(|e| DesiredError::Render(e.to_string()))?
                .path
        }
    };
    Ok(Some(path))
}

/// Where a Redis tier's agent keeps its spill (the accepts made while Redis
/// does not answer): the pod's `/tmp` emptyDir, the one writable place
/// without a claim. It outlives a container restart (kill -9, OOM), not the
/// pod; the spill is imported as soon as Redis answers, so it holds only
/// what an outage left behind.
pub const SPILL_PATH: &str = "/tmp/herald-spill/spill.redb";

/// `metadata` of a rendered document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The agent document: how this agent runs, as opposed to what it delivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: DocumentMeta,
    pub spec: AgentSpec,
}

/// Partition assignment for a canary weight (percent). Stable owns
/// `[0, n)`, canary `[n, total)`, so the two are disjoint and cover every
/// partition.
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
    /// The other tiers and the policies, complete
    /// ([`reach::complete`](super::reach::complete)).
    pub reach: &'a Reach,
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

/// The agent document for a tier. Every field the operator does not set
/// keeps the agent's default (and is written out, so the file says what
/// the agent runs with).
pub fn agent_document(input: &ConfigInput<'_>) -> Result<AgentDocument, DesiredError> {
    let partitions = match (&input.spec.store.kind, &input.spec.store.redis) {
        (StoreKind::Redis, Some(redis)) => {
            Some(assign_partitions(redis.partitions, input.canary_weight))
        }
        _ => None,
    };
    let defaults = AgentSpec::default();
    Ok(AgentDocument {
        api_version: API_VERSION.to_owned(),
        kind: AGENT_KIND.to_owned(),
        metadata: DocumentMeta {
            name: input.tier_name.to_owned(),
            namespace: Some(input.namespace.to_owned()),
        },
        spec: AgentSpec {
            listen: POD_LISTEN.to_owned(),
            entry_tier: Some(input.tier_name.to_owned()),
            store_path: embedded_queue_path(input.spec)?.unwrap_or_else(|| SPILL_PATH.to_owned()),
            secrets: SecretSources {
                env_prefix: SECRET_ENV_PREFIX.to_owned(),
                ..SecretSources::default()
            },
            config_map: Some(ConfigMapSource {
                // The pod's own namespace, from HERALD_POD_NAMESPACE.
                namespace: None,
                name: names::config_map_name(input.tier_name),
                key: CONFIG_KEY.to_owned(),
            }),
            track_env: Some(env::TRACK.to_owned()),
            partitions,
            ..defaults
        },
    })
}

/// Render the config file: Agent, the agent's DeliveryTier, the other
/// tiers in walk order, then the policies — RateLimitPolicies,
/// CircuitPolicies, DegradationProfiles, each in walk order. A policy the
/// walk did not reach is not in `reach`, so it is left out.
pub fn render(input: &ConfigInput<'_>) -> Result<AgentConfig, DesiredError> {
    let meta = |name: &str| DocumentMeta {
        name: name.to_owned(),
        namespace: Some(input.namespace.to_owned()),
    };
    let yaml_err = |e: serde_saphyr::SerializeError| DesiredError::Render(e.to_string());
    let mut docs = vec![
        serde_saphyr::to_string(&agent_document(input)?).map_err(yaml_err)?,
        doc("DeliveryTier", meta(input.tier_name), input.spec).map_err(yaml_err)?,
    ];
    let r = input.reach;
    for (name, spec) in &r.tiers {
        docs.push(doc("DeliveryTier", meta(name), spec).map_err(yaml_err)?);
    }
    for (name, spec) in &r.rate_limits {
        docs.push(doc("RateLimitPolicy", meta(name), spec).map_err(yaml_err)?);
    }
    for (name, spec) in &r.circuits {
        docs.push(doc("CircuitPolicy", meta(name), spec).map_err(yaml_err)?);
    }
    for (name, spec) in &r.degradations {
        docs.push(doc("DegradationProfile", meta(name), spec).map_err(yaml_err)?);
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

fn doc<S: Serialize>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CircuitPolicySpec, RateLimitPolicySpec};
    use crate::operator::inputs::ResolvedPolicies;
    use crate::operator::reach;

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
            rate_limits: [("limits".to_owned(), RateLimitPolicySpec::default())].into(),
            ..ResolvedPolicies::default()
        }
    }

    fn reach_of(spec: &DeliveryTierSpec, p: &ResolvedPolicies) -> Reach {
        reach::complete("alerts", spec, p).unwrap()
    }

    fn input<'a>(spec: &'a DeliveryTierSpec, r: &'a Reach, w: u32) -> ConfigInput<'a> {
        ConfigInput {
            tier_name: "alerts",
            namespace: "ns",
            spec,
            reach: r,
            canary_weight: w,
        }
    }

    fn kinds(yaml: &str) -> Vec<&str> {
        yaml.lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect()
    }

    #[test]
    fn renders_agent_tier_and_referenced_policies_in_order() {
        let s = redis_tier();
        let mut p = policies();
        // Resolved but not referenced: left out.
        p.circuits
            .insert("other".into(), CircuitPolicySpec::default());
        let r = reach_of(&s, &p);
        let cfg = render(&input(&s, &r, 0)).unwrap();
        assert_eq!(
            kinds(&cfg.yaml),
            ["Agent", "DeliveryTier", "RateLimitPolicy"],
            "{}",
            cfg.yaml
        );
        assert_eq!(cfg.yaml.matches("\n---\n").count(), 2);
        assert!(
            cfg.yaml.contains("envPrefix: HERALD_SECRET_"),
            "{}",
            cfg.yaml
        );
        assert!(cfg.yaml.contains("entryTier: alerts"), "{}", cfg.yaml);
        assert!(!cfg.yaml.contains("null"), "{}", cfg.yaml);
    }

    #[test]
    fn other_tiers_and_their_policies_follow_the_agents_own() {
        let mut s = redis_tier();
        s.fallback_tiers = vec!["spare".into()];
        let mut p = policies();
        p.tiers.insert(
            "spare".into(),
            spec(serde_json::json!({
                "channel": "spool", "spool": {"path": "/s"},
                "circuitPolicyRef": {"name": "cp"},
                "rateLimitPolicyRef": {"name": "limits"},
            })),
        );
        p.circuits.insert("cp".into(), CircuitPolicySpec::default());
        let r = reach_of(&s, &p);
        let cfg = render(&input(&s, &r, 0)).unwrap();
        assert_eq!(
            kinds(&cfg.yaml),
            [
                "Agent",
                "DeliveryTier",
                "DeliveryTier",
                "RateLimitPolicy",
                "CircuitPolicy"
            ],
            "{}",
            cfg.yaml
        );
        assert!(cfg.yaml.contains("name: spare"));
    }

    #[test]
    fn the_agent_document_round_trips() {
        let s = redis_tier();
        let r = reach_of(&s, &policies());
        let cfg = render(&input(&s, &r, 50)).unwrap();
        let first = cfg.yaml.split("---\n").next().unwrap();
        let doc: AgentDocument = serde_saphyr::from_str(first).unwrap();
        assert_eq!(doc, agent_document(&input(&s, &r, 50)).unwrap());
        let spec = &doc.spec;
        assert_eq!(spec.entry_tier.as_deref(), Some("alerts"));
        assert_eq!(spec.listen, POD_LISTEN);
        assert_eq!(spec.secrets.env_prefix, SECRET_ENV_PREFIX);
        assert_eq!(spec.track_env.as_deref(), Some(env::TRACK));
        let cm = spec.config_map.as_ref().unwrap();
        assert_eq!(
            (cm.namespace.as_deref(), cm.name.as_str(), cm.key.as_str()),
            (None, "alerts-config", CONFIG_KEY)
        );
        // A redis tier spills on the pod's writable scratch volume.
        assert_eq!(spec.store_path, SPILL_PATH);
        assert!(spec.store_path.starts_with("/tmp/"));
        let parts = spec.partitions.as_ref().unwrap();
        assert_eq!((parts.stable.len(), parts.canary.len()), (5, 5));
    }

    #[test]
    fn an_embedded_tier_points_the_agent_at_its_queue_file() {
        let s = spec(serde_json::json!({"channel": "spool", "spool": {"path": "/s"}}));
        let r = reach_of(&s, &ResolvedPolicies::default());
        let doc = agent_document(&input(&s, &r, 0)).unwrap();
        assert_eq!(Some(doc.spec.store_path), embedded_queue_path(&s).unwrap());
        assert!(doc.spec.partitions.is_none());
        let s = spec(serde_json::json!({
            "channel": "spool", "spool": {"path": "/s"},
            "store": {"type": "embedded", "embedded": {"path": "/data/q.redb"}},
        }));
        let doc = agent_document(&input(&s, &r, 0)).unwrap();
        assert_eq!(doc.spec.store_path, "/data/q.redb");
    }

    #[test]
    fn revision_is_deterministic_and_follows_content() {
        let s = redis_tier();
        let p = policies();
        let r = reach_of(&s, &p);
        let a = render(&input(&s, &r, 0)).unwrap();
        let b = render(&input(&s, &r, 0)).unwrap();
        assert_eq!(a, b);
        let mut p2 = policies();
        if let Some(rl) = p2.rate_limits.get_mut("limits") {
            rl.global.rate = 20;
        }
        let r2 = reach_of(&s, &p2);
        assert_ne!(render(&input(&s, &r2, 0)).unwrap().revision, a.revision);
        assert_ne!(render(&input(&s, &r, 10)).unwrap().revision, a.revision);
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
    }

    #[test]
    fn secret_variables_use_the_agents_naming_once_per_key() {
        let own = redis_tier();
        let others = vec![
            (
                "hook".to_owned(),
                spec(serde_json::json!({
                    "channel": "webhook",
                    "webhook": {"url": "https://x", "hmacSecretRef": {"name": "hook-keys", "key": "hmac.v1"}},
                    "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "other-redis", "key": "url"}}},
                })),
            ),
            // The same bot token as the agent's own tier.
            (
                "twin".to_owned(),
                spec(serde_json::json!({
                    "channel": "telegram",
                    "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
                })),
            ),
        ];
        let uses = secret_uses(&own, &others);
        let got: Vec<(Option<&str>, &str, String)> = uses
            .iter()
            .map(|u| (u.tier, u.var.as_str(), u.field()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    None,
                    "HERALD_SECRET_BOT_TOKEN",
                    "spec.telegram.tokenSecretRef.name".to_owned()
                ),
                (
                    None,
                    "HERALD_SECRET_REDIS_URL",
                    "spec.store.redis.urlSecretRef.name".to_owned()
                ),
                (
                    Some("hook"),
                    "HERALD_SECRET_HOOK_KEYS_HMAC_V1",
                    "DeliveryTier/hook: spec.webhook.hmacSecretRef.name".to_owned()
                ),
                (
                    Some("twin"),
                    "HERALD_SECRET_BOT_TOKEN",
                    "DeliveryTier/twin: spec.telegram.tokenSecretRef.name".to_owned()
                ),
            ]
        );
        for u in &uses {
            assert_eq!(u.var, u.secret.env_var_name(SECRET_ENV_PREFIX));
        }
        let vars: Vec<String> = secret_env(&uses)
            .unwrap()
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(
            vars,
            [
                "HERALD_SECRET_BOT_TOKEN",
                "HERALD_SECRET_REDIS_URL",
                "HERALD_SECRET_HOOK_KEYS_HMAC_V1"
            ]
        );
    }

    #[test]
    fn two_keys_folding_into_one_variable_are_refused() {
        let own = spec(serde_json::json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "a-b", "key": "c"}},
        }));
        let others = vec![(
            "other".to_owned(),
            spec(serde_json::json!({
                "channel": "telegram",
                "telegram": {"tokenSecretRef": {"name": "a", "key": "b-c"}},
            })),
        )];
        let err = secret_env(&secret_uses(&own, &others)).unwrap_err();
        assert_eq!(
            err,
            DesiredError::SecretVariableClash {
                var: "HERALD_SECRET_A_B_C".into(),
                first: "a-b/c".into(),
                second: "a/b-c".into(),
            }
        );
    }
}
