//! Self-healing in the shell: read pod readiness and the restart history,
//! ask `healing::decide`, evict through the Eviction API, remember.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, EvictParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::DeliveryTier;
use crate::api::delivery_tier::RestartRecord;
use crate::operator::context::{Context, RestartEntry};
use crate::operator::error::Result;
use crate::operator::healing::{self, HealingAction, HealingInput, PodHealth};
use crate::operator::inputs::DesiredError;
use crate::operator::names::{self, Track};
use crate::operator::status;
use crate::operator::time::{after, before, rfc3339};

use super::write::{Note, publish, publish_about};
use super::{ANNOTATION_RESTARTS, HEALING_MANAGER};

pub(super) struct Healed {
    pub last_restart: Option<RestartRecord>,
    pub next_check: Option<Timestamp>,
}

fn pod_health(pods: &[Arc<Pod>], history: &[RestartEntry]) -> Vec<PodHealth> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let name = p.name_any();
            let ready_cond = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            let ready = ready_cond.is_some_and(|c| c.status == "True");
            let unhealthy_since = if ready {
                None
            } else {
                healing::unhealthy_clock(
                    ready_cond.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    healing::PREDECESSOR_GRACE,
                )
            };
            let mine: Vec<&RestartEntry> = history.iter().filter(|r| r.pod == name).collect();
            PodHealth {
                last_restart: mine.iter().map(|r| r.at).max(),
                restarts_by_operator: u32::try_from(mine.len()).unwrap_or(u32::MAX),
                name,
                ready,
                unhealthy_since,
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn heal(
    tier: &DeliveryTier,
    ctx: &Context,
    ns: &str,
    pods: &[Arc<Pod>],
    stable: Option<&Deployment>,
    pdb: Option<&PodDisruptionBudget>,
    health: &Option<status::HealthSummary>,
    now: Timestamp,
) -> Result<Healed> {
    let spec = &tier.spec.healing;
    let none = Healed {
        last_restart: None,
        next_check: None,
    };
    if !spec.enabled {
        return Ok(none);
    }
    let key = ObjectRef::from_obj(tier);
    let window_start = before(now, spec.budget_window.get());
    let mut history = ctx
        .memory(&key, |m| m.restarts.clone())
        .or_else(|| stable.and_then(stored_restarts))
        .unwrap_or_default();
    history.retain(|r| r.at > window_start);
    let input = HealingInput {
        now,
        spec,
        pods: pod_health(pods, &history),
        recent_restarts: history.iter().map(|r| r.at).collect(),
        pdb_allowed_disruptions: pdb
            .and_then(|p| p.status.as_ref())
            .map_or(0, |s| u32::try_from(s.disruptions_allowed).unwrap_or(0)),
        dependency: health.as_ref().map(|h| h.dependencies).unwrap_or_default(),
        terminating: pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count(),
    };
    let actions = healing::decide(&input);
    let mut out = Healed {
        last_restart: None,
        next_check: healing::next_check_at(&actions),
    };
    let mut restarted = false;
    let mut exhausted = false;
    for a in actions {
        match a {
            HealingAction::Restart { pod, reason } => {
                if !evict(ctx, ns, &pod).await? {
                    continue;
                }
                restarted = true;
                ctx.metrics.restarts.inc();
                history.push(RestartEntry {
                    pod: pod.clone(),
                    at: now,
                });
                let pod_ref = pods
                    .iter()
                    .find(|p| p.name_any() == pod)
                    .map(|p| p.object_ref(&()));
                publish_about(
                    ctx,
                    &tier.object_ref(&()),
                    pod_ref,
                    Note::warning("PodRestarted", format!("evicted pod {pod}: {reason}")),
                )
                .await;
                out.last_restart = Some(RestartRecord {
                    pod,
                    reason,
                    at: rfc3339(now),
                });
            }
            HealingAction::BudgetExhausted { until } => {
                exhausted = true;
                let first = ctx.memory(&key, |m| !std::mem::replace(&mut m.budget_exhausted, true));
                if first {
                    publish(
                        ctx,
                        tier,
                        Note::warning(
                            "RestartBudgetExhausted",
                            format!(
                                "{} restarts in {}; no further restart before {}",
                                spec.restart_budget,
                                spec.budget_window,
                                rfc3339(until)
                            ),
                        ),
                    )
                    .await;
                }
            }
            HealingAction::Wait { .. } | HealingAction::DependencyDegraded { .. } => {}
        }
    }
    if !exhausted {
        ctx.memory(&key, |m| m.budget_exhausted = false);
    }
    if restarted {
        persist_restarts(ctx, ns, tier, &history).await?;
        // A restarted pod needs a fresh look once it had time to come back.
        let again = after(now, spec.unhealthy_after.get());
        out.next_check = Some(out.next_check.map_or(again, |t| t.min(again)));
    }
    ctx.memory(&key, |m| m.restarts = Some(history));
    Ok(out)
}

fn stored_restarts(d: &Deployment) -> Option<Vec<RestartEntry>> {
    let text = d.metadata.annotations.as_ref()?.get(ANNOTATION_RESTARTS)?;
    serde_json::from_str(text).ok()
}

/// Evict through the Eviction API, which enforces the PDB. `false` when
/// the API refused (429: the budget allows no disruption now) or the pod is
/// already gone.
async fn evict(ctx: &Context, ns: &str, pod: &str) -> Result<bool> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Keep the restart history on the stable Deployment under its own field
/// manager, so it outlives this process (the budget must hold across a
/// leader change).
async fn persist_restarts(
    ctx: &Context,
    ns: &str,
    tier: &DeliveryTier,
    history: &[RestartEntry],
) -> Result<()> {
    let name = names::deployment_name(&tier.name_any(), Track::Stable);
    let text = serde_json::to_string(history).map_err(|e| DesiredError::Render(e.to_string()))?;
    let body = json!({
        "apiVersion": Deployment::api_version(&()),
        "kind": Deployment::kind(&()),
        "metadata": {"name": name, "annotations": {ANNOTATION_RESTARTS: text}},
    });
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(HEALING_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
