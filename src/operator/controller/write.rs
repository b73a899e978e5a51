//! Writing to the cluster: server-side apply of the children, guarded
//! deletes, status (tiers and policies), and Events on transitions.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};
use crate::operator::condition::truncate;
use crate::operator::context::Context;
use crate::operator::desired::{ChildKind, DesiredObjects};
use crate::operator::error::{Error, Result};
use crate::operator::index::RefKind;
use crate::operator::metrics::PHASES;
use crate::operator::names::MANAGER;
use crate::operator::status::{self, Observed, StatusDiff};

use super::read;

/// Server-side apply of a whole child under herald's manager. `force`
/// because these are herald's own objects: a field someone else took is
/// taken back (that is the drift correction).
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.meta().name.as_deref().ok_or(Error::MalformedObject {
        kind: "child object",
        field: "metadata.name",
    })?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

pub(super) struct Applied {
    pub stable: Deployment,
    pub canary: Option<Deployment>,
    pub pdb: PodDisruptionBudget,
}

/// Apply every child in dependency order: identity and configuration
/// before the workloads that use them.
pub(super) async fn apply_all(client: &Client, ns: &str, d: &DesiredObjects) -> Result<Applied> {
    apply::<ServiceAccount>(client, ns, &d.service_account).await?;
    apply::<Role>(client, ns, &d.role).await?;
    apply::<RoleBinding>(client, ns, &d.role_binding).await?;
    apply::<ConfigMap>(client, ns, &d.config_map).await?;
    for c in &d.claims {
        apply::<PersistentVolumeClaim>(client, ns, c).await?;
    }
    let stable = apply::<Deployment>(client, ns, &d.stable).await?;
    let canary = match &d.canary {
        Some(c) => Some(apply::<Deployment>(client, ns, c).await?),
        None => None,
    };
    apply::<Service>(client, ns, &d.service).await?;
    let pdb = apply::<PodDisruptionBudget>(client, ns, &d.pdb).await?;
    Ok(Applied {
        stable,
        canary,
        pdb,
    })
}

/// Delete a child the tier no longer wants — only if the tier controls it
/// (a same-named object of someone else's is left alone), and only that
/// very object (uid precondition). `true` when something was deleted.
pub(super) async fn delete_owned(
    ctx: &Context,
    ns: &str,
    kind: ChildKind,
    name: &str,
    tier_uid: &str,
) -> Result<bool> {
    match kind {
        ChildKind::Deployment => {
            let Some(live) = ctx.stores.deployments.get(&ObjectRef::new(name).within(ns)) else {
                return Ok(false);
            };
            let ours = live
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == tier_uid);
            if !ours || tier_uid.is_empty() {
                return Ok(false);
            }
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let dp = DeleteParams::background().preconditions(Preconditions {
                uid: live.metadata.uid.clone(),
                resource_version: None,
            });
            match api.delete(name, &dp).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Write the tier's status if it says something new; publish an event per
/// condition transition; keep the phase gauge.
pub(super) async fn publish_status(
    tier: &DeliveryTier,
    ctx: &Context,
    observed: &Observed<'_>,
) -> Result<()> {
    let key = ObjectRef::from_obj(tier);
    let new = status::tier_status(tier, observed);
    let changed = match &tier.status {
        None => true,
        Some(old) => status::status_changed(old, &new),
    };
    if changed {
        let api: Api<DeliveryTier> = Api::namespaced(
            ctx.client.clone(),
            tier.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let body = json!({
            "apiVersion": DeliveryTier::api_version(&()),
            "kind": DeliveryTier::kind(&()),
            "status": new,
        });
        api.patch_status(
            &tier.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        ctx.metrics
            .status_writes
            .with_label_values(&["DeliveryTier"])
            .inc();
        ctx.memory(&key, |m| m.last_status = Some(new.clone()));
        for note in transition_notes(tier.status.as_ref(), &new) {
            publish(ctx, tier, note).await;
        }
    }
    if let Some(p) = new
        .phase
        .as_deref()
        .and_then(|p| PHASES.iter().find(|x| **x == p))
    {
        ctx.set_phase(&key, p);
    }
    Ok(())
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

impl Note {
    pub(super) fn normal(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Note {
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub(super) fn warning(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Note {
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Events for the conditions whose status changed between two statuses,
/// and for `Ready` turning to a reason that means the tier cannot run at
/// all (a missing reference, an invalid spec) even if it was not ready
/// before. A first status is otherwise not news: a new tier is not ready
/// yet, and says so in its conditions.
pub fn transition_notes(
    old: Option<&crate::api::delivery_tier::DeliveryTierStatus>,
    new: &crate::api::delivery_tier::DeliveryTierStatus,
) -> Vec<Note> {
    use crate::api::conditions::types;
    const CANNOT_RUN: [&str; 2] = ["MissingReference", "InvalidSpec"];
    // (type, the status that is good news)
    let watched = [
        (types::READY, "True"),
        (types::DEGRADED, "False"),
        (types::DEPENDENCY_DEGRADED, "False"),
    ];
    let mut out = Vec::new();
    for (t, good) in watched {
        let Some(c) = new.conditions.iter().find(|c| c.type_ == t) else {
            continue;
        };
        if c.status == "Unknown" {
            continue;
        }
        let before = old.and_then(|o| o.conditions.iter().find(|x| x.type_ == t));
        let cannot_run = t == types::READY && CANNOT_RUN.contains(&c.reason.as_str());
        let news = match before {
            Some(b) => b.status != c.status || (cannot_run && b.reason != c.reason),
            None => cannot_run,
        };
        if !news {
            continue;
        }
        let message = format!("{t}={}: {}", c.status, c.message);
        out.push(if c.status == good {
            Note::normal(c.reason.clone(), message)
        } else {
            Note::warning(c.reason.clone(), message)
        });
    }
    out
}

/// Publish an event about the tier. Best effort: a failure is logged, never
/// fails the pass (the state is in the status anyway).
pub(super) async fn publish(ctx: &Context, tier: &DeliveryTier, note: Note) {
    publish_about(ctx, &tier.object_ref(&()), None, note).await;
}

pub(super) async fn publish_about(
    ctx: &Context,
    regarding: &ObjectReference,
    secondary: Option<ObjectReference>,
    note: Note,
) {
    let (type_, label) = if note.warning {
        (KubeEventType::Warning, "Warning")
    } else {
        (KubeEventType::Normal, "Normal")
    };
    let ev = KubeEvent {
        type_,
        reason: note.reason.chars().take(128).collect(),
        note: Some(truncate(&note.message, 1024)),
        action: "Reconcile".to_owned(),
        secondary,
    };
    match ctx.recorder.publish(&ev, regarding).await {
        Ok(()) => ctx.metrics.events.with_label_values(&[label]).inc(),
        Err(e) => tracing::warn!(error = %e, reason = %note.reason, "could not publish an event"),
    }
}

// ---------------------------------------------------------------------------
// Policies' status.
// ---------------------------------------------------------------------------

/// Write each policy's status (`observedGeneration`, `Accepted`, `usedBy`
/// from the index) where it changed. Returns how many were written.
pub async fn sync_policy_statuses(ctx: &Context) -> Result<usize> {
    let now = ctx.now();
    let mut n = 0;
    n += sync_kind(
        ctx,
        &ctx.stores.rate_limits,
        RefKind::RateLimitPolicy,
        |p: &RateLimitPolicy, used| status::rate_limit_policy_status(p, used, now),
        |p| p.status.as_ref(),
    )
    .await?;
    n += sync_kind(
        ctx,
        &ctx.stores.circuits,
        RefKind::CircuitPolicy,
        |p: &CircuitPolicy, used| status::circuit_policy_status(p, used, now),
        |p| p.status.as_ref(),
    )
    .await?;
    n += sync_kind(
        ctx,
        &ctx.stores.degradations,
        RefKind::DegradationProfile,
        |p: &DegradationProfile, used| status::degradation_profile_status(p, used, now),
        |p| p.status.as_ref(),
    )
    .await?;
    Ok(n)
}

async fn sync_kind<K, S>(
    ctx: &Context,
    store: &Store<K>,
    kind: RefKind,
    compute: impl Fn(&K, Vec<String>) -> S,
    current: impl Fn(&K) -> Option<&S>,
) -> Result<usize>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + 'static,
    S: StatusDiff + Serialize,
{
    let mut pending = Vec::new();
    {
        let index = read(&ctx.index);
        for p in store.state() {
            let ns = p.namespace().unwrap_or_default();
            let name = p.name_any();
            let new = compute(&p, index.used_by(kind, &ns, &name));
            let changed = current(&p).is_none_or(|old| new.changed_from(old));
            if changed {
                pending.push((ns, name, new));
            }
        }
    }
    let mut written = 0;
    for (ns, name, new) in pending {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": new,
        });
        match api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                written += 1;
                ctx.metrics
                    .status_writes
                    .with_label_values(&[kind.as_str()])
                    .inc();
            }
            // Deleted meanwhile: its status no longer matters.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}
