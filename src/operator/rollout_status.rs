//! `herald rollout status TIER`: what a tier's canary rollout is doing, as
//! a few lines of text, and whether it has finished.
//!
//! Owns the reading (the tier, and the pod revision its stable Deployment
//! runs) and the formatting. The formatting is a pure function of what was
//! read, so a watcher can compare blocks and print only changes. It shows
//! only what the operator writes: `status.canary`, the conditions, and the
//! stable Deployment's `herald.dev/pod-revision`. Delivery figures
//! (rate, p95) are left out on purpose: they change on every status write,
//! and a watcher would print a new block for each.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client};

use crate::api::DeliveryTier;
use crate::api::conditions::types;

use super::names::{self, Track};

/// One reading of a tier's rollout.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub tier: DeliveryTier,
    /// What the stable Deployment runs; `None` when it does not exist yet.
    pub stable_revision: Option<String>,
    /// Why the stable Deployment could not be read (e.g. RBAC), when it
    /// could not: the rest of the status is still worth showing.
    pub stable_unreadable: Option<String>,
}

/// How a rollout ended, for a watcher's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No rollout is underway (none configured, or none started).
    Settled,
    /// The revision under rollout became stable.
    Promoted,
    /// The revision was withdrawn; stable keeps the old one.
    Aborted,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("DeliveryTier {namespace}/{tier} not found")]
    NotFound { namespace: String, tier: String },
    #[error("reading DeliveryTier {namespace}/{tier}: {source}")]
    Api {
        namespace: String,
        tier: String,
        #[source]
        source: kube::Error,
    },
}

/// Read `tier` and the revision its stable Deployment runs.
pub async fn read(client: Client, namespace: &str, tier: &str) -> Result<Snapshot, StatusError> {
    let api: Api<DeliveryTier> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(tier)
        .await
        .map_err(|source| StatusError::Api {
            namespace: namespace.to_owned(),
            tier: tier.to_owned(),
            source,
        })?
        .ok_or_else(|| StatusError::NotFound {
            namespace: namespace.to_owned(),
            tier: tier.to_owned(),
        })?;
    Ok(with_stable_revision(client, namespace, found).await)
}

/// Complete a tier already read (e.g. from a watch) with its stable
/// revision. A Deployment that cannot be read is noted, not fatal: a user
/// allowed to read tiers may not be allowed to read Deployments.
pub async fn with_stable_revision(client: Client, namespace: &str, tier: DeliveryTier) -> Snapshot {
    let name = tier.metadata.name.clone().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let deployment = names::deployment_name(&name, Track::Stable);
    let (stable_revision, stable_unreadable) = match api.get_opt(&deployment).await {
        Ok(d) => (d.as_ref().and_then(names::pod_revision_of), None),
        Err(e) => (None, Some(format!("reading Deployment {deployment}: {e}"))),
    };
    Snapshot {
        tier,
        stable_revision,
        stable_unreadable,
    }
}

/// Whether the operator has written a status for the tier's current spec.
/// Until it has, the status may describe the rollout before last, which a
/// watcher must not take for the end of the one just started.
pub fn observed(tier: &DeliveryTier) -> bool {
    let status_generation = tier.status.as_ref().and_then(|s| s.observed_generation);
    match (tier.metadata.generation, status_generation) {
        (Some(want), Some(seen)) => seen >= want,
        // An API server always sets the generation of a custom resource;
        // without one there is nothing to wait for.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// The rollout's end, once the operator has observed the current spec;
/// `None` while it is underway (analysing, or waiting at the gate).
pub fn outcome(tier: &DeliveryTier) -> Option<Outcome> {
    if !observed(tier) {
        return None;
    }
    let canary = tier.status.as_ref().and_then(|s| s.canary.as_ref());
    match canary.map(|c| c.verdict.as_str()) {
        None => Some(Outcome::Settled),
        Some("Promoted") => Some(Outcome::Promoted),
        Some("Aborted") => Some(Outcome::Aborted),
        // Analysing, Paused, or a verdict a newer operator added: wait.
        Some(_) => None,
    }
}

/// The rollout as lines of text, labels aligned.
pub fn lines(s: &Snapshot) -> Vec<String> {
    let tier = &s.tier;
    let status = tier.status.as_ref();
    let mut rows: Vec<(&str, String)> = Vec::new();
    let namespace = tier.metadata.namespace.as_deref().unwrap_or_default();
    let name = tier.metadata.name.as_deref().unwrap_or_default();
    rows.push(("Tier", format!("{namespace}/{name}")));
    rows.push((
        "Phase",
        status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "unknown (no status yet)".to_owned()),
    ));
    if !observed(tier) {
        rows.push((
            "Operator",
            format!(
                "has not yet acted on generation {} (the status below is older)",
                tier.metadata.generation.unwrap_or_default()
            ),
        ));
    }
    let steps = tier.spec.rollout.as_ref().map(|r| r.steps.len());
    let canary = status.and_then(|s| s.canary.as_ref());
    let revision = canary.and_then(|c| c.revision.as_deref()).unwrap_or("?");
    match canary {
        None if steps.is_none() => rows.push((
            "Rollout",
            "none: spec.rollout is unset, pod changes roll at once".to_owned(),
        )),
        None => rows.push(("Rollout", "none in progress".to_owned())),
        Some(c) => match c.verdict.as_str() {
            "Analysing" | "Paused" => {
                let of = steps.map_or(String::new(), |n| format!(" of {n}"));
                // The verdict is the same at the manual gate and after
                // `herald rollout pause`; only the latter needs a resume.
                let by_hand = condition(tier, types::PROGRESSING)
                    .is_some_and(|p| p.reason == super::status::MANUAL_PAUSE);
                let verdict = if by_hand {
                    format!("{} (manual)", c.verdict)
                } else {
                    c.verdict.clone()
                };
                rows.push((
                    "Rollout",
                    format!(
                        "{verdict}, step {}{of}, canary weight {}%",
                        c.step.saturating_add(1),
                        c.weight
                    ),
                ));
                rows.push(("Canary", format!("revision {revision}")));
            }
            "Promoted" => rows.push((
                "Rollout",
                format!("none in progress; the last one promoted revision {revision}"),
            )),
            "Aborted" => rows.push((
                "Rollout",
                format!(
                    "Aborted: revision {revision} was withdrawn, stable serves every partition"
                ),
            )),
            other => rows.push(("Rollout", format!("{other} ({})", c.summary))),
        },
    }
    let stable = match (&s.stable_revision, &s.stable_unreadable) {
        (Some(r), _) => format!("revision {r}"),
        (None, Some(why)) => format!("unknown ({why})"),
        (None, None) => "no stable Deployment yet".to_owned(),
    };
    rows.push(("Stable", stable));
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    for (label, kind) in [
        ("Analysis", types::CANARY_ANALYSIS),
        ("Ready", types::READY),
        ("Progressing", types::PROGRESSING),
        ("Degraded", types::DEGRADED),
    ] {
        if let Some(c) = conditions.iter().find(|c| c.type_ == kind) {
            rows.push((label, condition_text(c)));
        }
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    rows.into_iter()
        .map(|(label, value)| format!("{:<width$} {value}", format!("{label}:")))
        .collect()
}

fn condition<'a>(tier: &'a DeliveryTier, kind: &str) -> Option<&'a Condition> {
    tier.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
}

/// `True, AllReplicasReady: 3/3 agents ready`.
fn condition_text(c: &Condition) -> String {
    if c.message.is_empty() {
        format!("{}, {}", c.status, c.reason)
    } else {
        format!("{}, {}: {}", c.status, c.reason, c.message)
    }
}

#[cfg(test)]
mod tests;
