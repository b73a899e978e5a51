//! The controller shell: the one place that reads the cluster, calls the
//! pure decisions of this module's siblings, and writes back.
//!
//! Owns the wiring (caches, watches, the kube-runtime `Controller`, leader
//! election, the policy-status writer), one reconcile pass, the error
//! policy, and the RBAC table the manifests in `config/rbac` must match.
//! It decides nothing itself: desired objects come from `desired`, the
//! rollout step from `canary`, restarts from `healing`, status from
//! `status`, and mappings from `index`.
//!
//! A pass over one tier, in order:
//!
//! 1. resolve the references from the caches — the tier's own, and those of
//!    every tier it delivers through (fallbacks and degradation routes,
//!    transitively), recording that reach in the index for the mappers; a
//!    missing one sets the condition and requeues — children are never
//!    touched or deleted;
//! 2. ask the agents for `/healthz/details` (short timeout each);
//! 3. with a rollout, step the canary state machine (state kept on the
//!    canary Deployment's `herald.dev/rollout-state` annotation);
//! 4. apply every child with server-side apply under one manager, forced,
//!    unless nothing changed since the last apply (and no child was
//!    touched, and the resync period has not run out); delete what
//!    `desired` lists for deletion, only when the tier controls it;
//! 5. decide healing, evict through the Eviction API (the PDB holds);
//! 6. compute the status and write it only when it says something new;
//!    publish Events only on transitions.
//!
//! Invariants: every write is a server-side apply with `apiVersion`/`kind`
//! (or a Lease compare-and-swap, or a precondition-guarded delete); no
//! status carries a clock reading except a condition's `lastTransitionTime`
//! on change; nothing reads a cache before it is warm (the controller
//! starts after every store reported ready).
//!
//! This file holds the entry points (`reconcile`, `error_policy`), the
//! mappers and the tier filter, and the RBAC table; the rest is split by
//! job: `pass` (one pass, steps 1–4 and 6, as a list of steps), `gather`
//! (what a pass reads: references, pods and their health, children),
//! `heal` (step 5), `write` (applies, deletes, status, events, policies'
//! status), `run` (the wiring) and `watch` (the watches and which tiers
//! each change wakes).

pub(crate) mod cache;
mod gather;
mod heal;
mod pass;
mod run;
mod watch;
mod write;

pub use run::{RunConfig, RunError, check_crd, prime_index, run};
pub use write::{Note, sync_policy_statuses, transition_notes};

use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::api::DeliveryTier;

use super::context::{Context, backoff_delay};
use super::error::{Error, Result};
use super::hash::Fnv64;
use super::index::{RefKind, TierIndex, TierRef};

// ---------------------------------------------------------------------------
// RBAC: what the code calls, as one table.
// ---------------------------------------------------------------------------

/// One RBAC rule: verbs on resources of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RbacRule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const fn rule(
    api_group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
) -> RbacRule {
    RbacRule {
        api_group,
        resources,
        verbs,
    }
}

/// Cluster-wide rules of the operator's ClusterRole
/// (`config/rbac/role.yaml`); a test keeps the two identical.
///
/// - Children are written with server-side apply, which the API server
///   authorizes as `patch`, and as `create` when the object does not exist.
/// - `get` on ConfigMaps: the agent Role the operator creates grants it,
///   and RBAC lets a subject grant only what it holds itself.
/// - Secrets: `list`/`watch` of metadata only (to see rotations); the
///   operator never reads a Secret's data.
/// - Deployments: `delete` for the canary after `spec.rollout` is removed.
pub const RBAC_RULES: &[RbacRule] = &[
    rule("herald.dev", &["deliverytiers"], &["list", "watch"]),
    rule(
        "herald.dev",
        &[
            "ratelimitpolicies",
            "circuitpolicies",
            "degradationprofiles",
        ],
        &["list", "watch"],
    ),
    rule(
        "herald.dev",
        &[
            "deliverytiers/status",
            "ratelimitpolicies/status",
            "circuitpolicies/status",
            "degradationprofiles/status",
        ],
        &["patch"],
    ),
    rule("", &["secrets"], &["list", "watch"]),
    rule("", &["pods"], &["list", "watch"]),
    rule("", &["pods/eviction"], &["create"]),
    rule(
        "",
        &["configmaps"],
        &["get", "list", "watch", "create", "patch"],
    ),
    rule(
        "",
        &["services", "serviceaccounts", "persistentvolumeclaims"],
        &["list", "watch", "create", "patch"],
    ),
    rule(
        "apps",
        &["deployments"],
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    rule(
        "policy",
        &["poddisruptionbudgets"],
        &["list", "watch", "create", "patch"],
    ),
    rule(
        "rbac.authorization.k8s.io",
        &["roles", "rolebindings"],
        &["list", "watch", "create", "patch"],
    ),
    rule("events.k8s.io", &["events"], &["create", "patch"]),
];

/// Rules of the leader-election Role, in the operator's own namespace
/// (`config/rbac/leader_election_role.yaml`).
pub const LEADER_ELECTION_RULES: &[RbacRule] = &[rule(
    "coordination.k8s.io",
    &["leases"],
    &["get", "create", "update"],
)];

// ---------------------------------------------------------------------------
// Names the shell adds to the core's scheme.
// ---------------------------------------------------------------------------

/// On the canary Deployment: the rollout state as JSON. Kept on a child,
/// not the tier, so writing it never wakes the tier's own watch.
pub const ANNOTATION_ROLLOUT_STATE: &str = "herald.dev/rollout-state";
/// On the stable Deployment: the operator's recent restarts as JSON.
pub const ANNOTATION_RESTARTS: &str = "herald.dev/restarts";
/// Field manager of the restart-history annotation alone, so the main
/// apply (which does not carry it) never removes it.
pub const HEALING_MANAGER: &str = "herald-healing";
/// Selects every object herald creates.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=herald";

// ---------------------------------------------------------------------------
// Mapping and filtering.
// ---------------------------------------------------------------------------

/// The controller's key for a tier.
pub fn tier_key(t: &TierRef) -> ObjectRef<DeliveryTier> {
    ObjectRef::new(&t.name).within(&t.namespace)
}

/// The tiers to reconcile when `(kind, namespace, name)` changes.
pub fn tiers_for(
    index: &RwLock<TierIndex>,
    kind: RefKind,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DeliveryTier>> {
    read(index)
        .tiers_referencing(kind, namespace, name)
        .iter()
        .map(tier_key)
        .collect()
}

/// The tier that controls an object, from its owner references.
pub fn owning_tier(meta: &ObjectMeta) -> Option<ObjectRef<DeliveryTier>> {
    let ns = meta.namespace.as_deref()?;
    let kind = DeliveryTier::kind(&());
    let api_version = DeliveryTier::api_version(&());
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind && o.api_version == api_version)
        .map(|o| ObjectRef::new(&o.name).within(ns))
}

/// What of a tier, when changed, needs a pass: its generation (spec),
/// finalizers, and herald's annotations (the promote/abort gates do not
/// bump the generation). Status and other metadata changes are filtered
/// out, so a status write never wakes the tier again.
pub fn tier_predicate(tier: &DeliveryTier) -> Option<u64> {
    let mut h = Fnv64::default();
    h.write_part(&tier.metadata.generation.unwrap_or(0).to_le_bytes());
    for f in tier.metadata.finalizers.iter().flatten() {
        h.write_part(f.as_bytes());
    }
    for (k, v) in tier.metadata.annotations.iter().flatten() {
        if k.starts_with("herald.dev/") {
            h.write_part(k.as_bytes());
            h.write_part(v.as_bytes());
        }
    }
    Some(h.finish())
}

// ---------------------------------------------------------------------------
// Reconcile and error policy.
// ---------------------------------------------------------------------------

/// One pass over a tier, bounded by `settings.reconcile_timeout`, counted
/// and timed in the operator's metrics.
pub async fn reconcile(tier: Arc<DeliveryTier>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.count_and_measure();
    let span = crate::telemetry::ReconcileSpan::start(&tier);
    let key = ObjectRef::from_obj(&*tier);
    let limit = ctx.settings.reconcile_timeout;
    let out = match tokio::time::timeout(limit, pass::reconcile_tier(&tier, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(limit)),
    };
    match &out {
        Ok(_) => ctx.reset_failures(&key),
        Err(e) => ctx.metrics.reconcile_failure(e),
    }
    span.finish(out.as_ref().err().map(Error::metric_label));
    out
}

/// After a failed pass: a transient error retries after a delay that
/// doubles with each failure in a row (reset by a success); a permanent one
/// waits long, since only an edit can fix it and an edit wakes the tier.
pub fn error_policy(tier: Arc<DeliveryTier>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*tier);
    let attempt = ctx.record_failure(&key);
    let s = &ctx.settings;
    let delay = if error.is_transient() {
        backoff_delay(attempt, s.backoff_base, s.backoff_max)
    } else {
        s.permanent_retry
    };
    tracing::warn!(
        tier = %key,
        error = %error,
        error_class = error.metric_label(),
        attempt,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
