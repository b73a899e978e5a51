//! What a pass reads before it decides: the tier's references resolved
//! from the caches (recording its reach in the index), its agent pods and
//! their `/healthz/details`, its children as the caches hold them, and the
//! rollout state kept on the canary Deployment.
//!
//! Leaves every decision to the pass and the pure decision files.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{
    CircuitPolicySpec, DegradationProfileSpec, DeliveryTier, DeliveryTierSpec, RateLimitPolicySpec,
};
use crate::operator::agent_config::secret_uses;
use crate::operator::canary::RolloutState;
use crate::operator::context::{Context, Stores};
use crate::operator::health_client::{HealthSource, PodTarget, Sample, read_details};
use crate::operator::index::{MissingRef, RefKind, Reference};
use crate::operator::inputs::ResolvedPolicies;
use crate::operator::names::{self, Track};
use crate::operator::reach::{self, Specs};

use super::ANNOTATION_ROLLOUT_STATE;

/// The tier's children as the caches hold them.
pub(super) struct Live {
    pub(super) stable: Option<Arc<Deployment>>,
    pub(super) canary: Option<Arc<Deployment>>,
    pub(super) pdb: Option<Arc<PodDisruptionBudget>>,
}

pub(super) fn live_children(stores: &Stores, ns: &str, tier: &str) -> Live {
    let dep = |track| {
        stores
            .deployments
            .get(&ObjectRef::new(&names::deployment_name(tier, track)).within(ns))
    };
    Live {
        stable: dep(Track::Stable),
        canary: dep(Track::Canary),
        pdb: stores
            .pdbs
            .get(&ObjectRef::new(&names::pdb_name(tier)).within(ns)),
    }
}

/// What the tier's agents need, from the caches: the tiers they deliver
/// through with every policy those reference ([`reach`]), and the
/// versions of the Secrets the pods read — plus the references whose
/// target is not there. Records the reach in the index, missing tiers
/// included, so that a change to any of them (or their appearance) maps
/// back to this tier.
pub(super) fn resolve(
    tier: &DeliveryTier,
    ns: &str,
    name: &str,
    ctx: &Context,
) -> (ResolvedPolicies, Vec<MissingRef>) {
    let s = &ctx.stores;
    let reach = reach::walk(name, &tier.spec, &Cached { stores: s, ns });
    super::write(&ctx.index).set_reach(ns, name, reach.visited.clone());
    let mut missing = reach.missing.clone();
    let mut secret_versions = BTreeMap::new();
    for u in secret_uses(&tier.spec, &reach.tiers) {
        let secret = &u.secret.name;
        if secret_versions.contains_key(secret)
            || missing
                .iter()
                .any(|m| m.kind == RefKind::Secret && &m.name == secret)
        {
            continue;
        }
        match get(&s.secrets, (secret.clone(), ns.to_owned())) {
            Some(m) => {
                let version = m.metadata.resource_version.clone().unwrap_or_default();
                secret_versions.insert(secret.clone(), version);
            }
            None => missing.push(Reference {
                kind: RefKind::Secret,
                name: secret.clone(),
                field: u.field(),
            }),
        }
    }
    let mut policies = reach.into_resolved();
    policies.secret_versions = secret_versions;
    (policies, missing)
}

/// The caches of one namespace, as the walk reads them.
struct Cached<'a> {
    stores: &'a Stores,
    ns: &'a str,
}

impl Cached<'_> {
    fn key(&self, name: &str) -> (String, String) {
        (name.to_owned(), self.ns.to_owned())
    }
}

impl Specs for Cached<'_> {
    fn tier(&self, name: &str) -> Option<DeliveryTierSpec> {
        get(&self.stores.tiers, self.key(name)).map(|t| t.spec.clone())
    }
    fn rate_limit(&self, name: &str) -> Option<RateLimitPolicySpec> {
        get(&self.stores.rate_limits, self.key(name)).map(|p| p.spec.clone())
    }
    fn circuit(&self, name: &str) -> Option<CircuitPolicySpec> {
        get(&self.stores.circuits, self.key(name)).map(|p| p.spec.clone())
    }
    fn degradation(&self, name: &str) -> Option<DegradationProfileSpec> {
        get(&self.stores.degradations, self.key(name)).map(|p| p.spec.clone())
    }
}

fn get<K>(store: &Store<K>, (name, ns): (String, String)) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(&name).within(&ns))
}

/// The tier's agent pods in the cache (both tracks).
pub(super) fn tier_pods(pods: &Store<Pod>, ns: &str, tier: &str) -> Vec<Arc<Pod>> {
    let mut out = pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns)
            && p.labels().get(names::LABEL_TIER).map(String::as_str) == Some(tier)
            && p.labels().get(names::LABEL_NAME).map(String::as_str) == Some("herald")
    });
    out.sort_by_key(|p| p.name_any());
    out
}

fn track_of(pod: &Pod) -> Track {
    match pod.labels().get(names::LABEL_TRACK).map(String::as_str) {
        Some("canary") => Track::Canary,
        _ => Track::Stable,
    }
}

/// Pods worth asking: running, addressed, not on their way out.
fn health_targets(pods: &[Arc<Pod>]) -> Vec<PodTarget> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            Some(PodTarget {
                uid: p.metadata.uid.clone()?,
                name: p.name_any(),
                ip: status.pod_ip.clone()?,
                track: track_of(p),
            })
        })
        .collect()
}

pub(super) async fn sample_health(
    ctx: &Context,
    tier: &str,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Vec<(PodTarget, Sample)> {
    let targets = health_targets(pods);
    if targets.is_empty() {
        return Vec::new();
    }
    let health: &dyn HealthSource = ctx.health.as_ref();
    let mut out: Vec<(PodTarget, Sample)> = futures::stream::iter(targets)
        .map(|t| async move {
            let r = health.fetch(&t).await;
            (t, r)
        })
        .buffer_unordered(ctx.settings.health_concurrency.max(1))
        .filter_map(|(t, r)| async move {
            match r {
                Ok(v) => {
                    let s = read_details(&v, tier, now);
                    Some((t, s))
                }
                Err(e) => {
                    tracing::debug!(pod = %t.name, error = %e, "agent health unavailable");
                    None
                }
            }
        })
        .collect()
        .await;
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    out
}

/// The rollout state persisted on the canary Deployment; an unreadable
/// one (written by another version) is logged and read as `Stable`, which
/// restarts the analysis rather than inventing a verdict.
pub(super) fn stored_rollout(canary: &Deployment) -> Option<RolloutState> {
    let text = canary
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_ROLLOUT_STATE)?;
    match serde_json::from_str(text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(deployment = %canary.name_any(), error = %e, "unreadable rollout state; starting over");
            None
        }
    }
}
