//! One pass over one tier: read the caches and the agents, step the
//! rollout, apply, heal, and report. The order and its reasons are in the
//! parent module's doc.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;

use crate::api::DeliveryTier;
use crate::operator::canary::{
    self, CanaryAction, CanaryInput, EventType, RolloutState, gate_names,
};
use crate::operator::context::{Context, Settings};
use crate::operator::desired::{DesiredObjects, desired_objects, desired_objects_with};
use crate::operator::error::{Error, Result};
use crate::operator::hash::Fnv64;
use crate::operator::health_client::{PodTarget, Sample};
use crate::operator::index::MissingRef;
use crate::operator::inputs::{DesiredError, ResolvedPolicies};
use crate::operator::names::{self, Track};
use crate::operator::status::{self, Observed, ReplicaCounts};
use crate::operator::time::elapsed;

use super::ANNOTATION_ROLLOUT_STATE;
use super::gather::{Live, live_children, resolve, sample_health, stored_rollout, tier_pods};
use super::heal::{Healed, heal};
use super::write::{Note, apply_all, delete_owned, publish, publish_status};
/// One pass over `tier`, as the list of steps in the parent module's doc.
pub(super) async fn reconcile_tier(tier: &DeliveryTier, ctx: &Context) -> Result<Action> {
    let (ns, name) = identity(tier)?;
    if tier.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes
        // them. Nothing here holds up the deletion.
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(tier);
    let mut view = None;
    let pass = Pass {
        tier: with_remembered_status(tier, ctx, &key, &mut view),
        ctx,
        key,
        ns,
        name,
        now: ctx.now(),
    };

    // 1. The references, from the caches.
    let (policies, missing) = resolve(pass.tier, ns, name, ctx);
    // 2. The agents' health and the children as they are.
    let seen = pass.observe().await;
    if !missing.is_empty() {
        return pass.missing_references(&missing, seen).await;
    }
    // 3. What to apply, with the rollout stepped.
    let planned = match pass.plan(&policies, &seen).await? {
        Ok(p) => p,
        Err(e) => return pass.invalid_spec(e, seen).await,
    };
    // 4. Apply (unless nothing changed), delete what goes.
    let applied = pass.apply(&planned, &seen.live).await?;
    pass.delete_leftovers(&planned.desired).await?;
    // 5. Heal.
    let healed = heal(
        pass.tier,
        ctx,
        ns,
        &seen.pods,
        applied.stable.as_ref(),
        applied.pdb.as_ref(),
        &seen.health,
        pass.now,
    )
    .await?;
    // 6. Report: the status when it says something new, Events on
    // transitions.
    pass.report(&planned, &applied, &healed, seen.health)
        .await?;
    Ok(Action::requeue(next_pass(
        &ctx.settings,
        seen.pods.is_empty(),
        planned
            .rollout
            .as_ref()
            .zip(pass.tier.spec.rollout.as_ref())
            .and_then(|(s, spec)| s.next_check_at(spec)),
        healed.next_check,
        pass.now,
    )))
}

/// The tier's namespace and name; a tier without them is malformed.
fn identity(tier: &DeliveryTier) -> Result<(&str, &str)> {
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
    Ok((ns, name))
}

/// What every step of one pass over one tier reads.
struct Pass<'a> {
    /// The tier, with the status this process wrote last if the cache
    /// lags behind it.
    tier: &'a DeliveryTier,
    ctx: &'a Context,
    key: ObjectRef<DeliveryTier>,
    ns: &'a str,
    name: &'a str,
    /// One reading of the clock for the whole pass.
    now: Timestamp,
}

/// What the pass found in the cluster and the agents.
struct Seen {
    pods: Vec<Arc<Pod>>,
    samples: Vec<(PodTarget, Sample)>,
    health: Option<status::HealthSummary>,
    live: Live,
}

/// The objects to apply in this pass and the rollout they carry.
struct Planned {
    desired: DesiredObjects,
    /// The rollout state after this pass's step; `None` without a rollout.
    rollout: Option<RolloutState>,
    /// What the step asked for besides the objects (its Events).
    canary_actions: Vec<CanaryAction>,
}

/// The children as they stand after the apply step.
struct Applied {
    stable: Option<Deployment>,
    canary: Option<Deployment>,
    pdb: Option<PodDisruptionBudget>,
}

impl Pass<'_> {
    /// Asks the tier's agents for their health (remembered per pod) and
    /// reads the children from the caches.
    async fn observe(&self) -> Seen {
        let ctx = self.ctx;
        let pods = tier_pods(&ctx.stores.pods, self.ns, self.name);
        let samples = sample_health(ctx, self.name, &pods, self.now).await;
        let reports = ctx.memory(&self.key, |m| m.health.observe(&samples));
        Seen {
            health: status::aggregate(&reports),
            live: live_children(&ctx.stores, self.ns, self.name),
            pods,
            samples,
        }
    }

    /// A reference points nowhere: say so in the status and come back
    /// later; the children are never touched.
    async fn missing_references(&self, missing: &[MissingRef], seen: Seen) -> Result<Action> {
        let ctx = self.ctx;
        if let Some(first) = missing.first() {
            ctx.metrics.reconcile_failure(&Error::MissingReference {
                kind: first.kind,
                name: first.name.clone(),
                field: first.field.clone(),
            });
        }
        let observed = Observed {
            now: self.now,
            stable: seen
                .live
                .stable
                .as_deref()
                .map(ReplicaCounts::of_deployment),
            canary: seen
                .live
                .canary
                .as_deref()
                .map(ReplicaCounts::of_deployment),
            health: seen.health,
            rollout: None,
            missing_refs: missing,
            desired_error: None,
            last_restart: None,
            config_revision: None,
        };
        publish_status(self.tier, ctx, &observed).await?;
        Ok(Action::requeue(ctx.settings.permanent_retry))
    }

    /// The spec cannot be realised: say so in the status, touch nothing.
    async fn invalid_spec(&self, e: DesiredError, seen: Seen) -> Result<Action> {
        let ctx = self.ctx;
        let error = Error::Desired(e);
        ctx.metrics.reconcile_failure(&error);
        let message = match &error {
            Error::Desired(d) => d.to_string(),
            other => other.to_string(),
        };
        let observed = Observed {
            now: self.now,
            stable: seen
                .live
                .stable
                .as_deref()
                .map(ReplicaCounts::of_deployment),
            canary: seen
                .live
                .canary
                .as_deref()
                .map(ReplicaCounts::of_deployment),
            health: seen.health,
            rollout: None,
            missing_refs: &[],
            desired_error: Some(message),
            last_restart: None,
            config_revision: None,
        };
        publish_status(self.tier, ctx, &observed).await?;
        Ok(Action::requeue(ctx.settings.permanent_retry))
    }

    /// The objects at rest; with a rollout, the state machine stepped and
    /// the objects rendered for the tracks it asks for.
    async fn plan(
        &self,
        policies: &ResolvedPolicies,
        seen: &Seen,
    ) -> Result<std::result::Result<Planned, DesiredError>> {
        let (tier, ctx, key) = (self.tier, self.ctx, &self.key);
        let at_rest = match desired_objects(tier, policies, &ctx.options) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let Some(spec) = &tier.spec.rollout else {
            ctx.memory(key, |m| {
                m.rollout = None;
                m.health.clear_window();
            });
            return Ok(Ok(Planned {
                desired: at_rest,
                rollout: None,
                canary_actions: Vec::new(),
            }));
        };
        let live = &seen.live;
        let prior = ctx
            .memory(key, |m| m.rollout.clone())
            .or_else(|| live.canary.as_deref().and_then(stored_rollout))
            .unwrap_or_default();
        let (canary_metrics, stable_metrics) = match prior.window_start() {
            Some(ws) => {
                let (c, s) = ctx.memory(key, |m| m.health.window_metrics(ws, &seen.samples));
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
            now: self.now,
            stable_revision: live.stable.as_deref().and_then(names::pod_revision_of),
            desired_revision: at_rest.pod_revision.clone(),
            replicas: tier.spec.replicas,
            partitions: tier.spec.store.redis.as_ref().map_or(1, |r| r.partitions),
            canary_metrics,
            stable_metrics,
            manual_promote: gate_names(
                annotation(names::ANNOTATION_PROMOTE),
                &at_rest.pod_revision,
            ),
            manual_abort: gate_names(annotation(names::ANNOTATION_ABORT), &at_rest.pod_revision),
            manual_pause: gate_names(annotation(names::ANNOTATION_PAUSE), &at_rest.pod_revision),
            retry: canary::retry_request(
                annotation(names::ANNOTATION_RETRY),
                &at_rest.pod_revision,
            ),
        };
        let (next, actions) = canary::step(&prior, spec, &input);
        ctx.memory(key, |m| match next.window_start() {
            Some(ws) => m.health.anchor(ws, &seen.samples),
            None => m.health.clear_window(),
        });
        // The cache keeps no pod specs; a pinned stable track needs its
        // whole template, so it is read from the API.
        let live_template = match (&live.stable, next.pins_stable()) {
            (Some(_), true) => {
                let name = names::deployment_name(self.name, Track::Stable);
                super::cache::stable_template(&ctx.client, self.ns, &name).await?
            }
            _ => None,
        };
        let tracks = next.tracks(tier.spec.replicas, live_template.as_ref());
        let mut desired = match desired_objects_with(tier, policies, &ctx.options, &tracks) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(c) = desired.canary.as_mut() {
            let state =
                serde_json::to_string(&next).map_err(|e| DesiredError::Render(e.to_string()))?;
            c.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(ANNOTATION_ROLLOUT_STATE.to_owned(), state);
        }
        Ok(Ok(Planned {
            desired,
            rollout: Some(next),
            canary_actions: actions,
        }))
    }

    /// Applies the planned objects, unless the same objects were applied
    /// recently and no child was touched since.
    async fn apply(&self, planned: &Planned, live: &Live) -> Result<Applied> {
        let (ctx, key, now) = (self.ctx, &self.key, self.now);
        let desired = &planned.desired;
        let digest = objects_digest(desired)?;
        let touched = ctx.take_dirty(key);
        let last = ctx.memory(key, |m| m.applied.clone());
        if !touched
            && up_to_date(
                last.as_ref(),
                &digest,
                now,
                ctx.settings.resync,
                live,
                desired.canary.is_some(),
            )
        {
            return Ok(Applied {
                stable: live.stable.as_deref().cloned(),
                canary: live.canary.as_deref().cloned(),
                pdb: live.pdb.as_deref().cloned(),
            });
        }
        // Forget the last apply first: if this one fails half-way, the
        // next pass must apply again whatever the digest says.
        ctx.memory(key, |m| m.applied = None);
        let applied = apply_all(&ctx.client, self.ns, desired).await?;
        ctx.memory(key, |m| {
            m.applied = Some((digest, now));
            m.rollout = planned.rollout.clone();
        });
        Ok(Applied {
            stable: Some(applied.stable),
            canary: applied.canary,
            pdb: Some(applied.pdb),
        })
    }

    /// Deletes the children `desired` lists for deletion that the tier
    /// controls, with an Event for each.
    async fn delete_leftovers(&self, desired: &DesiredObjects) -> Result<()> {
        let uid = self.tier.metadata.uid.as_deref().unwrap_or_default();
        for (kind, child) in &desired.delete {
            if delete_owned(self.ctx, self.ns, *kind, child, uid).await? {
                publish(
                    self.ctx,
                    self.tier,
                    Note::normal(
                        "CanaryRemoved",
                        format!("deleted Deployment {child}: the tier has no rollout"),
                    ),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Writes the status if it says something new, then the Events of
    /// this pass: a new config revision and what the rollout step
    /// announced.
    async fn report(
        &self,
        planned: &Planned,
        applied: &Applied,
        healed: &Healed,
        health: Option<status::HealthSummary>,
    ) -> Result<()> {
        let (tier, ctx) = (self.tier, self.ctx);
        let desired = &planned.desired;
        let observed = Observed {
            now: self.now,
            stable: applied.stable.as_ref().map(ReplicaCounts::of_deployment),
            canary: applied.canary.as_ref().map(ReplicaCounts::of_deployment),
            health,
            rollout: planned.rollout.as_ref(),
            missing_refs: &[],
            desired_error: None,
            last_restart: healed.last_restart.clone(),
            config_revision: Some(desired.config_revision.clone()),
        };
        let previous_revision = tier.status.as_ref().and_then(|s| s.config_revision.clone());
        publish_status(tier, ctx, &observed).await?;
        if let Some(note) = config_note(previous_revision, &desired.config_revision) {
            publish(ctx, tier, note).await;
        }
        for note in canary_notes(&planned.canary_actions) {
            publish(ctx, tier, note).await;
        }
        // `Abort` comes once per abort, like its event.
        for a in &planned.canary_actions {
            if matches!(a, CanaryAction::Abort { .. }) {
                ctx.metrics.rollouts_aborted.inc();
            }
        }
        Ok(())
    }
}

/// Whether the children stand as the last apply left them: the same
/// objects (by digest), applied within the resync period, and every child
/// they include still there (the canary only when one is wanted).
fn up_to_date(
    last: Option<&(String, Timestamp)>,
    digest: &str,
    now: Timestamp,
    resync: Duration,
    live: &Live,
    wants_canary: bool,
) -> bool {
    last.is_some_and(|(d, at)| d == digest && elapsed(now, *at) < resync)
        && live.stable.is_some()
        && live.pdb.is_some()
        && (!wants_canary || live.canary.is_some())
}

/// The Event of a config revision this pass applied, if it is new.
fn config_note(previous: Option<String>, applied: &str) -> Option<Note> {
    match previous {
        Some(old) if old == applied => None,
        None => Some(Note::normal(
            "Created",
            format!("applied the agent objects (config revision {applied})"),
        )),
        Some(old) => Some(Note::normal(
            "ConfigChanged",
            format!("agent config revision {old} → {applied}"),
        )),
    }
}

/// The Events a rollout step asked for, in its order.
fn canary_notes(actions: &[CanaryAction]) -> Vec<Note> {
    actions
        .iter()
        .filter_map(|a| match a {
            CanaryAction::EmitEvent {
                type_: EventType::Normal,
                reason,
                message,
            } => Some(Note::normal(*reason, message.clone())),
            CanaryAction::EmitEvent {
                type_: EventType::Warning,
                reason,
                message,
            } => Some(Note::warning(*reason, message.clone())),
            _ => None,
        })
        .collect()
}

/// When to come back: the next canary analysis, the end of a healing wait,
/// fresh health figures while agents run, or the resync — whichever comes
/// first, and not within a second.
fn next_pass(
    settings: &Settings,
    no_pods: bool,
    rollout_check: Option<Timestamp>,
    healing_check: Option<Timestamp>,
    now: Timestamp,
) -> Duration {
    let mut next = if no_pods {
        settings.resync
    } else {
        settings.status_interval
    };
    for at in [rollout_check, healing_check].into_iter().flatten() {
        next = next.min(elapsed(at, now).max(Duration::from_secs(1)));
    }
    next
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::time::{after, ts};

    fn live(stable: bool, canary: bool, pdb: bool) -> Live {
        let deployment = || Arc::new(Deployment::default());
        Live {
            stable: stable.then(deployment),
            canary: canary.then(deployment),
            pdb: pdb.then(|| Arc::new(PodDisruptionBudget::default())),
        }
    }

    #[test]
    fn the_same_objects_applied_lately_are_not_applied_again() {
        let resync = Duration::from_secs(600);
        let at = ts(1_000);
        let last = Some(("d1".to_owned(), at));
        let soon = after(at, Duration::from_secs(599));
        let all = live(true, true, true);
        assert!(up_to_date(last.as_ref(), "d1", soon, resync, &all, true));
        // Other objects, no apply yet, or the resync period over: apply.
        assert!(!up_to_date(last.as_ref(), "d2", soon, resync, &all, true));
        assert!(!up_to_date(None, "d1", soon, resync, &all, true));
        let late = after(at, resync);
        assert!(!up_to_date(last.as_ref(), "d1", late, resync, &all, true));
        // A child gone from the cluster is put back.
        let no_pdb = live(true, true, false);
        assert!(!up_to_date(
            last.as_ref(),
            "d1",
            soon,
            resync,
            &no_pdb,
            true
        ));
        let no_stable = live(false, true, true);
        assert!(!up_to_date(
            last.as_ref(),
            "d1",
            soon,
            resync,
            &no_stable,
            true
        ));
        // The canary counts only when one is wanted.
        let no_canary = live(true, false, true);
        assert!(!up_to_date(
            last.as_ref(),
            "d1",
            soon,
            resync,
            &no_canary,
            true
        ));
        assert!(up_to_date(
            last.as_ref(),
            "d1",
            soon,
            resync,
            &no_canary,
            false
        ));
    }

    #[test]
    fn a_pass_comes_back_at_the_first_thing_due_and_not_within_a_second() {
        let s = Settings::default();
        let now = ts(1_000);
        // Nothing due: the resync without agents, fresh health with them.
        assert_eq!(next_pass(&s, true, None, None, now), s.resync);
        assert_eq!(next_pass(&s, false, None, None, now), s.status_interval);
        // The sooner of an analysis and a healing wait.
        let in_10s = after(now, Duration::from_secs(10));
        let in_20s = after(now, Duration::from_secs(20));
        assert_eq!(
            next_pass(&s, false, Some(in_20s), Some(in_10s), now),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_pass(&s, true, Some(in_20s), None, now),
            Duration::from_secs(20)
        );
        // Something overdue comes back after a second, not at once.
        assert_eq!(
            next_pass(&s, false, Some(ts(900)), None, now),
            Duration::from_secs(1)
        );
        // Never later than the requeue without anything due.
        let far = after(now, Duration::from_secs(86_400));
        assert_eq!(next_pass(&s, true, Some(far), None, now), s.resync);
    }

    #[test]
    fn a_config_revision_is_announced_once() {
        let created = config_note(None, "r1").unwrap();
        assert_eq!(created.reason, "Created");
        assert!(created.message.contains("r1"), "{created:?}");
        assert!(!created.warning);
        assert_eq!(config_note(Some("r1".into()), "r1"), None);
        let changed = config_note(Some("r1".into()), "r2").unwrap();
        assert_eq!(changed.reason, "ConfigChanged");
        assert_eq!(changed.message, "agent config revision r1 → r2");
    }

    #[test]
    fn a_rollout_step_announces_only_its_events() {
        let actions = [
            CanaryAction::SetWeight(10),
            CanaryAction::EmitEvent {
                type_: EventType::Normal,
                reason: "CanaryStarted",
                message: "10 %".into(),
            },
            CanaryAction::ScaleCanary(1),
            CanaryAction::EmitEvent {
                type_: EventType::Warning,
                reason: "CanaryAborted",
                message: "errors".into(),
            },
        ];
        assert_eq!(
            canary_notes(&actions),
            [
                Note::normal("CanaryStarted", "10 %"),
                Note::warning("CanaryAborted", "errors"),
            ]
        );
    }
}
