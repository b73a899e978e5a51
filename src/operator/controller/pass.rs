//! One pass over one tier: read the caches and the agents, step the
//! rollout, apply, heal, and report. The order and its reasons are in the
//! parent module's doc.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::{
    CircuitPolicySpec, DegradationProfileSpec, DeliveryTier, DeliveryTierSpec, RateLimitPolicySpec,
};
use crate::operator::agent_config::secret_uses;
use crate::operator::canary::{
    self, CanaryAction, CanaryInput, EventType, RolloutState, gate_names,
};
use crate::operator::context::{Context, Stores};
use crate::operator::desired::{DesiredObjects, desired_objects, desired_objects_with};
use crate::operator::error::{Error, Result};
use crate::operator::hash::Fnv64;
use crate::operator::health_client::{HealthSource, PodTarget, Sample, read_details};
use crate::operator::index::{MissingRef, RefKind, Reference};
use crate::operator::inputs::{DesiredError, ResolvedPolicies};
use crate::operator::names::{self, Track};
use crate::operator::reach::{self, Specs};
use crate::operator::status::{self, Observed, ReplicaCounts};
use crate::operator::time::elapsed;

use super::ANNOTATION_ROLLOUT_STATE;
use super::heal::heal;
use super::write::{Note, apply_all, delete_owned, publish, publish_status};
struct Live {
    stable: Option<Arc<Deployment>>,
    canary: Option<Arc<Deployment>>,
    pdb: Option<Arc<PodDisruptionBudget>>,
}

fn live_children(stores: &Stores, ns: &str, tier: &str) -> Live {
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

pub(super) async fn reconcile_tier(tier: &DeliveryTier, ctx: &Context) -> Result<Action> {
    let malformed = |field| Error::MalformedObject {
        kind: "DeliveryTier",
        field,
    };
    let ns = tier
        .metadata
        .namespace
        .as_deref()
        .ok_or(malformed("metadata.namespace"))?;
    let name = tier
        .metadata
        .name
        .as_deref()
        .ok_or(malformed("metadata.name"))?;
    if tier.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes
        // them. Nothing here holds up the deletion.
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(tier);
    let now = ctx.now();
    let mut view = None;
    let tier = with_remembered_status(tier, ctx, &key, &mut view);

    let (policies, missing) = resolve(tier, ns, name, ctx);
    let pods = tier_pods(&ctx.stores.pods, ns, name);
    let samples = sample_health(ctx, name, &pods, now).await;
    let reports = ctx.memory(&key, |m| m.health.observe(&samples));
    let health = status::aggregate(&reports);
    let live = live_children(&ctx.stores, ns, name);

    if !missing.is_empty() {
        if let Some(first) = missing.first() {
            ctx.metrics.reconcile_failure(&Error::MissingReference {
                kind: first.kind,
                name: first.name.clone(),
                field: first.field.clone(),
            });
        }
        let observed = Observed {
            now,
            stable: live.stable.as_deref().map(ReplicaCounts::of_deployment),
            canary: live.canary.as_deref().map(ReplicaCounts::of_deployment),
            health,
            rollout: None,
            missing_refs: &missing,
            desired_error: None,
            last_restart: None,
            config_revision: None,
        };
        publish_status(tier, ctx, &observed).await?;
        return Ok(Action::requeue(ctx.settings.permanent_retry));
    }

    let at_rest = match desired_objects(tier, &policies, &ctx.options) {
        Ok(d) => d,
        Err(e) => return invalid_spec(tier, ctx, e, &live, health, now).await,
    };

    let mut rollout: Option<RolloutState> = None;
    let mut canary_actions = Vec::new();
    let desired = match &tier.spec.rollout {
        None => {
            ctx.memory(&key, |m| {
                m.rollout = None;
                m.health.clear_window();
            });
            at_rest
        }
        Some(spec) => {
            let prior = ctx
                .memory(&key, |m| m.rollout.clone())
                .or_else(|| live.canary.as_deref().and_then(stored_rollout))
                .unwrap_or_default();
            let (canary_metrics, stable_metrics) = match prior.window_start() {
                Some(ws) => {
                    let (c, s) = ctx.memory(&key, |m| m.health.window_metrics(ws, &samples));
                    (Some(c), Some(s))
                }
                None => (None, None),
            };
            let annotation = |k: &str| {
                tier.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .map(String::as_str)
            };
            let input = CanaryInput {
                now,
                stable_revision: live.stable.as_deref().and_then(pod_revision_of),
                desired_revision: at_rest.pod_revision.clone(),
                replicas: tier.spec.replicas,
                partitions: tier.spec.store.redis.as_ref().map_or(1, |r| r.partitions),
                canary_metrics,
                stable_metrics,
                manual_promote: gate_names(
                    annotation(names::ANNOTATION_PROMOTE),
                    &at_rest.pod_revision,
                ),
                manual_abort: gate_names(
                    annotation(names::ANNOTATION_ABORT),
                    &at_rest.pod_revision,
                ),
            };
            let (next, actions) = canary::step(&prior, spec, &input);
            ctx.memory(&key, |m| match next.window_start() {
                Some(ws) => m.health.anchor(ws, &samples),
                None => m.health.clear_window(),
            });
            // The cache keeps no pod specs; a pinned stable track needs
            // its whole template, so it is read from the API.
            let live_template = match (&live.stable, next.pins_stable()) {
                (Some(_), true) => {
                    let name = names::deployment_name(name, Track::Stable);
                    super::cache::stable_template(&ctx.client, ns, &name).await?
                }
                _ => None,
            };
            let tracks = next.tracks(tier.spec.replicas, live_template.as_ref());
            let mut d = match desired_objects_with(tier, &policies, &ctx.options, &tracks) {
                Ok(d) => d,
                Err(e) => return invalid_spec(tier, ctx, e, &live, health, now).await,
            };
            if let Some(c) = d.canary.as_mut() {
                let state = serde_json::to_string(&next)
                    .map_err(|e| DesiredError::Render(e.to_string()))?;
                c.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_ROLLOUT_STATE.to_owned(), state);
            }
            canary_actions = actions;
            rollout = Some(next);
            d
        }
    };

    // Apply, unless the same objects were applied recently and no child
    // was touched since.
    let digest = objects_digest(&desired)?;
    let touched = ctx.take_dirty(&key);
    let resync = ctx.settings.resync;
    let fresh = ctx.memory(&key, |m| {
        m.applied
            .as_ref()
            .is_some_and(|(d, at)| *d == digest && elapsed(now, *at) < resync)
    }) && live.stable.is_some()
        && live.pdb.is_some()
        && (desired.canary.is_none() || live.canary.is_some());
    let (stable, canary_dep, pdb) = if touched || !fresh {
        // Forget the last apply first: if this one fails half-way, the
        // next pass must apply again whatever the digest says.
        ctx.memory(&key, |m| m.applied = None);
        let applied = apply_all(&ctx.client, ns, &desired).await?;
        ctx.memory(&key, |m| {
            m.applied = Some((digest, now));
            m.rollout = rollout.clone();
        });
        (Some(applied.stable), applied.canary, Some(applied.pdb))
    } else {
        (
            live.stable.as_deref().cloned(),
            live.canary.as_deref().cloned(),
            live.pdb.as_deref().cloned(),
        )
    };
    let uid = tier.metadata.uid.as_deref().unwrap_or_default();
    for (kind, child) in &desired.delete {
        if delete_owned(ctx, ns, *kind, child, uid).await? {
            publish(
                ctx,
                tier,
                Note::normal(
                    "CanaryRemoved",
                    format!("deleted Deployment {child}: the tier has no rollout"),
                ),
            )
            .await;
        }
    }

    let heal = heal(
        tier,
        ctx,
        ns,
        &pods,
        stable.as_ref(),
        pdb.as_ref(),
        &health,
        now,
    )
    .await?;

    let observed = Observed {
        now,
        stable: stable.as_ref().map(ReplicaCounts::of_deployment),
        canary: canary_dep.as_ref().map(ReplicaCounts::of_deployment),
        health,
        rollout: rollout.as_ref(),
        missing_refs: &[],
        desired_error: None,
        last_restart: heal.last_restart.clone(),
        config_revision: Some(desired.config_revision.clone()),
    };
    let previous_revision = tier.status.as_ref().and_then(|s| s.config_revision.clone());
    publish_status(tier, ctx, &observed).await?;
    if previous_revision.as_deref() != Some(desired.config_revision.as_str()) {
        let note = match previous_revision {
            None => Note::normal(
                "Created",
                format!(
                    "applied the agent objects (config revision {})",
                    desired.config_revision
                ),
            ),
            Some(old) => Note::normal(
                "ConfigChanged",
                format!("agent config revision {old} → {}", desired.config_revision),
            ),
        };
        publish(ctx, tier, note).await;
    }
    for a in canary_actions {
        if let CanaryAction::EmitEvent {
            type_,
            reason,
            message,
        } = a
        {
            let note = match type_ {
                EventType::Normal => Note::normal(reason, message),
                EventType::Warning => Note::warning(reason, message),
            };
            publish(ctx, tier, note).await;
        }
    }

    // Come back when something is due: the next canary analysis, the end of
    // a healing wait, fresh health figures, or the resync.
    let mut next = if pods.is_empty() {
        ctx.settings.resync
    } else {
        ctx.settings.status_interval
    };
    let due = [
        rollout
            .as_ref()
            .zip(tier.spec.rollout.as_ref())
            .and_then(|(s, spec)| s.next_check_at(spec)),
        heal.next_check,
    ];
    for at in due.into_iter().flatten() {
        next = next.min(elapsed(at, now).max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(next))
}

/// The tier as last written by this process, when the cache has not
/// caught up with that status write yet (a status newer than ours — another
/// replica led meanwhile — wins).
fn with_remembered_status<'a>(
    tier: &'a DeliveryTier,
    ctx: &Context,
    key: &ObjectRef<DeliveryTier>,
    view: &'a mut Option<DeliveryTier>,
) -> &'a DeliveryTier {
    let Some(mine) = ctx.memory(key, |m| m.last_status.clone()) else {
        return tier;
    };
    let cached = tier.status.as_ref().map(|s| s.observed_generation);
    if cached.is_some_and(|g| g > mine.observed_generation) || tier.status.as_ref() == Some(&mine) {
        return tier;
    }
    view.insert(DeliveryTier {
        status: Some(mine),
        ..tier.clone()
    })
}

/// The spec cannot be realised: say so in the status, touch nothing.
async fn invalid_spec(
    tier: &DeliveryTier,
    ctx: &Context,
    e: DesiredError,
    live: &Live,
    health: Option<status::HealthSummary>,
    now: Timestamp,
) -> Result<Action> {
    let error = Error::Desired(e);
    ctx.metrics.reconcile_failure(&error);
    let message = match &error {
        Error::Desired(d) => d.to_string(),
        other => other.to_string(),
    };
    let observed = Observed {
        now,
        stable: live.stable.as_deref().map(ReplicaCounts::of_deployment),
        canary: live.canary.as_deref().map(ReplicaCounts::of_deployment),
        health,
        rollout: None,
        missing_refs: &[],
        desired_error: Some(message),
        last_restart: None,
        config_revision: None,
    };
    publish_status(tier, ctx, &observed).await?;
    Ok(Action::requeue(ctx.settings.permanent_retry))
}

/// What the tier's agents need, from the caches: the tiers they deliver
/// through with every policy those reference ([`reach`]), and the
/// versions of the Secrets the pods read — plus the references whose
/// target is not there. Records the reach in the index, missing tiers
/// included, so that a change to any of them (or their appearance) maps
/// back to this tier.
fn resolve(
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
fn tier_pods(pods: &Store<Pod>, ns: &str, tier: &str) -> Vec<Arc<Pod>> {
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

async fn sample_health(
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

fn pod_revision_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_POD_REVISION)
        .cloned()
}

/// The rollout state persisted on the canary Deployment; an unreadable
/// one (written by another version) is logged and read as `Stable`, which
/// restarts the analysis rather than inventing a verdict.
fn stored_rollout(canary: &Deployment) -> Option<RolloutState> {
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

/// Hash of everything about to be applied, in apply order.
fn objects_digest(d: &DesiredObjects) -> Result<String> {
    fn part<T: Serialize>(h: &mut Fnv64, t: &T) -> Result<()> {
        let bytes = serde_json::to_vec(t).map_err(|e| DesiredError::Render(e.to_string()))?;
        h.write_part(&bytes);
        Ok(())
    }
    let mut h = Fnv64::default();
    part(&mut h, &d.service_account)?;
    part(&mut h, &d.role)?;
    part(&mut h, &d.role_binding)?;
    part(&mut h, &d.config_map)?;
    for c in &d.claims {
        part(&mut h, c)?;
    }
    part(&mut h, &d.stable)?;
    part(&mut h, &d.canary)?;
    part(&mut h, &d.service)?;
    part(&mut h, &d.pdb)?;
    Ok(h.hex())
}
