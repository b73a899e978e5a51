//! The status of a DeliveryTier and of the policies, computed from what the
//! controller observed, and the test for whether it changed.
//!
//! Owns phase, conditions and the printer-column strings. Invariant: the
//! status is a function of the tier (its generation and previous status)
//! and [`Observed`]; `observed.now` is used only as the
//! `lastTransitionTime` of a condition whose status changed. Figures are
//! rounded for display (one decimal, whole milliseconds), which also keeps
//! status writes down to real changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::api::circuit_policy::CircuitPolicyStatus;
use crate::api::conditions::types;
use crate::api::degradation_profile::{DegradationProfileStatus, LevelName};
use crate::api::delivery_tier::{CanaryStatus, DeliveryTierStatus, RestartRecord};
use crate::api::policy_status::PolicyStatus;
use crate::api::rate_limit_policy::RateLimitPolicyStatus;
use crate::api::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};

use super::canary::{RolloutState, analysis_condition};
use super::condition::{CondStatus, ConditionSpec, eq_ignoring_time, stamp_all};
use super::healing::{Dependency, DependencyHealth};
use super::index::MissingRef;
use super::names;

/// Replica counts of one Deployment (from its status; spec for desired).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub desired: i32,
    pub ready: i32,
    /// Pods already on the current template.
    pub updated: i32,
    /// The Deployment says it is still rolling out and within its progress
    /// deadline (condition Progressing=True with a reason other than
    /// NewReplicaSetAvailable). Pods missing then are pods still coming up,
    /// not a degradation; past the deadline it turns false.
    pub rolling_out: bool,
}

impl ReplicaCounts {
    /// The counts of a Deployment: desired from its spec, the rest from
    /// its status.
    pub fn of_deployment(d: &Deployment) -> ReplicaCounts {
        let status = d.status.as_ref();
        ReplicaCounts {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            rolling_out: rolling_out(d),
        }
    }
}

/// Whether a Deployment is still rolling out within its progress deadline,
/// as `kubectl rollout status` reads it: its controller has not yet seen
/// the latest spec, or its Progressing condition is True for a reason other
/// than a completed rollout (NewReplicaSetAvailable).
fn rolling_out(d: &Deployment) -> bool {
    let Some(status) = d.status.as_ref() else {
        return true;
    };
    if status.observed_generation < d.metadata.generation {
        return true;
    }
    status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"))
        .is_some_and(|c| {
            c.status == "True" && c.reason.as_deref() != Some("NewReplicaSetAvailable")
        })
}

/// Breaker state as agents report it; ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half-open",
            CircuitState::Open => "open",
        }
    }
}

/// One pod's `/healthz/details`, reduced to what the status shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodReport {
    /// Delivered messages per second, recent.
    pub delivered_per_second: f64,
    /// Delivered and attempted over the same recent period.
    pub delivered: u64,
    pub attempted: u64,
    pub p95_ms: Option<u64>,
    /// The queue depth this pod sees (the shared queue's, with Redis).
    pub queue_depth: Option<i64>,
    pub circuit: Option<CircuitState>,
    pub level: Option<LevelName>,
    pub dependencies: DependencyHealth,
}

/// The tier's health, over all pods that reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthSummary {
    pub pods_reporting: usize,
    /// Sum over pods.
    pub delivery_rate: f64,
    /// Σ delivered / Σ attempted; `None` with no attempts.
    pub success_ratio: Option<f64>,
    /// The worst pod's p95 (a percentile cannot be averaged).
    pub p95_ms: Option<u64>,
    /// The largest depth seen: with a shared queue every pod sees the same
    /// queue, so summing would count it several times.
    pub queue_depth: Option<i64>,
    /// The worst breaker.
    pub circuit: Option<CircuitState>,
    /// The highest level.
    pub level: Option<LevelName>,
    /// Outages most pods agree on.
    pub dependencies: DependencyHealth,
}

/// Combine pods' reports; `None` when no pod reported.
pub fn aggregate(reports: &[PodReport]) -> Option<HealthSummary> {
    if reports.is_empty() {
        return None;
    }
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let attempted: u64 = reports.iter().map(|r| r.attempted).sum();
    let deps: Vec<DependencyHealth> = reports.iter().map(|r| r.dependencies).collect();
    Some(HealthSummary {
        pods_reporting: reports.len(),
        delivery_rate: reports
            .iter()
            .map(|r| r.delivered_per_second)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .sum(),
        success_ratio: (attempted > 0).then(|| delivered.min(attempted) as f64 / attempted as f64),
        p95_ms: reports.iter().filter_map(|r| r.p95_ms).max(),
        queue_depth: reports.iter().filter_map(|r| r.queue_depth).max(),
        circuit: reports.iter().filter_map(|r| r.circuit).max(),
        level: reports.iter().filter_map(|r| r.level).max(),
        dependencies: DependencyHealth::shared(&deps),
    })
}

/// What the controller observed for one tier.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// Stamped on conditions whose status changed, and nowhere else.
    pub now: Timestamp,
    /// The stable Deployment, if it exists.
    pub stable: Option<ReplicaCounts>,
    /// The canary Deployment, if it exists.
    pub canary: Option<ReplicaCounts>,
    /// Aggregated pod reports; `None` when no pod answered.
    pub health: Option<HealthSummary>,
    /// The rollout state; `None` when the tier has no rollout.
    pub rollout: Option<&'a RolloutState>,
    pub missing_refs: &'a [MissingRef],
    /// Why the tier's objects cannot be built (spec invalid), if so.
    pub desired_error: Option<String>,
    /// A restart made in this pass; else the previous record is kept.
    pub last_restart: Option<RestartRecord>,
    /// The config revision applied in this pass; else the previous is kept.
    pub config_revision: Option<String>,
}

/// Phases, as `status.phase` spells them.
pub mod phases {
    pub const PENDING: &str = "Pending";
    pub const PROGRESSING: &str = "Progressing";
    pub const READY: &str = "Ready";
    pub const DEGRADED: &str = "Degraded";
    pub const FAILED: &str = "Failed";
}

/// Replica totals over both tracks.
struct Counts {
    stable: ReplicaCounts,
    desired: i32,
    ready: i32,
}

impl Counts {
    fn of(tier: &DeliveryTier, o: &Observed<'_>) -> Counts {
        // Before the Deployment exists, the tier still asks for spec.replicas.
        let spec_replicas = i32::try_from(tier.spec.replicas).unwrap_or(i32::MAX);
        let stable = o.stable.unwrap_or(ReplicaCounts {
            desired: spec_replicas,
            ..ReplicaCounts::default()
        });
        let canary = o.canary.unwrap_or_default();
        Counts {
            stable,
            desired: stable.desired.saturating_add(canary.desired),
            ready: stable.ready.saturating_add(canary.ready),
        }
    }
}

/// The tier's status.
pub fn tier_status(tier: &DeliveryTier, o: &Observed<'_>) -> DeliveryTierStatus {
    let previous = tier.status.as_ref();
    let generation = tier.metadata.generation;
    let counts = Counts::of(tier, o);
    let health = o.health.as_ref();

    let ready = ready_condition(o, &counts);
    let progressing = progressing_condition(tier, o, &counts);
    let degraded = degraded_condition(o, &counts);
    let dependency = dependency_condition(health);
    let phase = phase(tier, o, &counts, degraded.status, progressing.status);
    let mut specs = vec![ready, progressing, degraded, dependency];
    if let (Some(state), Some(spec)) = (o.rollout, tier.spec.rollout.as_ref()) {
        specs.push(analysis_condition(state, spec));
    }

    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    DeliveryTierStatus {
        observed_generation: generation,
        conditions: stamp_all(&specs, previous_conditions, o.now, generation),
        phase: Some(phase.to_owned()),
        ready: Some(format!("{}/{}", counts.ready, counts.desired)),
        ready_replicas: o.stable.map(|_| counts.ready),
        replicas: Some(counts.desired),
        selector: tier.metadata.name.as_deref().map(pod_selector),
        delivery_rate: health.map(|h| format_rate(h.delivery_rate)),
        success_ratio: health.and_then(|h| h.success_ratio).map(format_percent),
        p95_latency: health.and_then(|h| h.p95_ms).map(format_latency),
        queue_depth: health.and_then(|h| h.queue_depth),
        circuit: health
            .and_then(|h| h.circuit)
            .map(|c| c.as_str().to_owned()),
        degradation_level: health
            .and_then(|h| h.level)
            .map(|l| level_str(l).to_owned()),
        canary: o.rollout.and_then(canary_status),
        last_restart: o
            .last_restart
            .clone()
            .or_else(|| previous.and_then(|p| p.last_restart.clone())),
        config_revision: o
            .config_revision
            .clone()
            .or_else(|| previous.and_then(|p| p.config_revision.clone())),
    }
}

/// The label selector of every agent pod of `tier`, both tracks, as the
/// scale subresource's `status.selector` string (`k=v,k=v`, sorted).
pub fn pod_selector(tier: &str) -> String {
    names::tier_selector(tier)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Failed when the spec cannot be realised; Pending until an agent has
/// been ready once; then the worst of Degraded, Progressing, Ready.
fn phase(
    tier: &DeliveryTier,
    o: &Observed<'_>,
    c: &Counts,
    degraded: CondStatus,
    progressing: CondStatus,
) -> &'static str {
    let was_pending = tier
        .status
        .as_ref()
        .and_then(|p| p.phase.as_deref())
        .is_none_or(|p| p == phases::PENDING);
    if o.desired_error.is_some() || !o.missing_refs.is_empty() {
        phases::FAILED
    } else if o.stable.is_none() || (c.desired > 0 && c.ready == 0 && was_pending) {
        phases::PENDING
    } else if degraded == CondStatus::True {
        phases::DEGRADED
    } else if progressing == CondStatus::True {
        phases::PROGRESSING
    } else {
        phases::READY
    }
}

/// Ready: can the tier deliver at all?
fn ready_condition(o: &Observed<'_>, c: &Counts) -> ConditionSpec {
    let (ready, desired) = (c.ready, c.desired);
    let (status, reason, message) = if let Some(e) = &o.desired_error {
        (CondStatus::False, "InvalidSpec", e.clone())
    } else if !o.missing_refs.is_empty() {
        (
            CondStatus::False,
            "MissingReference",
            missing_message(o.missing_refs),
        )
    } else if o.stable.is_none() {
        (
            CondStatus::False,
            "DeploymentPending",
            "the agent Deployment does not exist yet".to_owned(),
        )
    } else if desired == 0 {
        (
            CondStatus::True,
            "ScaledToZero",
            "the tier is scaled to zero replicas".to_owned(),
        )
    } else if ready >= desired {
        (
            CondStatus::True,
            "AllReplicasReady",
            format!("{ready}/{desired} agents ready"),
        )
    } else if ready > 0 {
        (
            CondStatus::True,
            "ReplicasPartiallyReady",
            format!("{ready}/{desired} agents ready"),
        )
    } else {
        (
            CondStatus::False,
            "NoReplicasReady",
            format!("0/{desired} agents ready"),
        )
    };
    cond(types::READY, status, reason, message)
}

/// The Progressing condition's reason while `herald rollout pause` holds
/// the canary; `herald rollout status` tells it from the manual gate by it.
pub const MANUAL_PAUSE: &str = "ManualPause";

/// Progressing: is a change rolling out (canary or plain rolling update)?
fn progressing_condition(tier: &DeliveryTier, o: &Observed<'_>, c: &Counts) -> ConditionSpec {
    let steps = tier.spec.rollout.as_ref().map_or(0, |r| r.steps.len());
    let s = c.stable;
    let (status, reason, message) = match o.rollout {
        Some(RolloutState::Progressing(p) | RolloutState::Paused(p)) if p.paused_at.is_some() => (
            CondStatus::True,
            MANUAL_PAUSE,
            format!(
                "canary of revision {} paused by hand at {}% (step {}/{steps}); herald rollout resume continues it",
                p.revision,
                p.weight,
                p.step + 1
            ),
        ),
        Some(RolloutState::Progressing(p)) => (
            CondStatus::True,
            "CanaryProgressing",
            format!(
                "canary of revision {} at {}% (step {}/{steps})",
                p.revision,
                p.weight,
                p.step + 1
            ),
        ),
        Some(RolloutState::Paused(p)) => (
            CondStatus::True,
            "AwaitingPromotion",
            format!("revision {} awaits herald.dev/promote", p.revision),
        ),
        _ if o.stable.is_some() && (s.updated < s.desired || s.ready < s.desired) => (
            CondStatus::True,
            "RollingUpdate",
            format!(
                "{}/{} agents updated, {} ready",
                s.updated, s.desired, s.ready
            ),
        ),
        Some(RolloutState::Aborted { revision, .. }) => (
            CondStatus::False,
            "RolloutAborted",
            format!("revision {revision} was aborted"),
        ),
        _ => (
            CondStatus::False,
            "Complete",
            "the agents run the desired revision".to_owned(),
        ),
    };
    cond(types::PROGRESSING, status, reason, message)
}

/// Degraded: every known cause, worst first; the first names the reason.
fn degraded_condition(o: &Observed<'_>, c: &Counts) -> ConditionSpec {
    let mut causes: Vec<(&'static str, String)> = Vec::new();
    if let Some(e) = &o.desired_error {
        causes.push(("InvalidSpec", e.clone()));
    }
    if !o.missing_refs.is_empty() {
        causes.push(("MissingReference", missing_message(o.missing_refs)));
    }
    if let Some(RolloutState::Aborted {
        revision, reason, ..
    }) = o.rollout
    {
        causes.push((
            "RolloutAborted",
            format!("revision {revision} aborted: {reason}"),
        ));
    }
    // Like a Deployment: agents missing during a rollout that is still
    // within its progress deadline are agents still starting.
    let rolling_out = c.stable.rolling_out || o.canary.is_some_and(|k| k.rolling_out);
    if o.stable.is_some() && c.ready < c.desired && !rolling_out {
        causes.push((
            "ReplicasUnavailable",
            format!("{}/{} agents ready", c.ready, c.desired),
        ));
    }
    if let Some(h) = &o.health {
        if h.dependencies.any_down() {
            causes.push((
                "DependencyDegraded",
                format!("{} unavailable", deps_text(&h.dependencies.down())),
            ));
        }
        if h.circuit == Some(CircuitState::Open) {
            causes.push(("CircuitOpen", "the circuit breaker is open".to_owned()));
        }
        if let Some(level) = h.level.filter(|l| *l > LevelName::Normal) {
            causes.push((
                "DegradationLevel",
                format!("degradation level {}", level_str(level)),
            ));
        }
    }
    match causes.first() {
        Some((reason, _)) => cond(
            types::DEGRADED,
            CondStatus::True,
            reason,
            causes
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => cond(
            types::DEGRADED,
            CondStatus::False,
            "AsExpected",
            "no known problem",
        ),
    }
}

/// DependencyDegraded: an outage most agents agree on; healing restarts
/// nothing while it is True.
fn dependency_condition(health: Option<&HealthSummary>) -> ConditionSpec {
    let t = types::DEPENDENCY_DEGRADED;
    let Some(h) = health else {
        return cond(
            t,
            CondStatus::Unknown,
            "NoHealthReports",
            "no agent reported its health",
        );
    };
    let down = h.dependencies.down();
    let (status, reason) = match down.as_slice() {
        [] => (CondStatus::False, "DependenciesHealthy"),
        [Dependency::Redis] => (CondStatus::True, "RedisUnavailable"),
        [Dependency::Telegram] => (CondStatus::True, "TelegramUnavailable"),
        _ => (CondStatus::True, "DependenciesUnavailable"),
    };
    let message = if down.is_empty() {
        "no shared dependency is reported down".to_owned()
    } else {
        format!(
            "most agents cannot reach {}; pods are not restarted",
            deps_text(&down)
        )
    };
    cond(t, status, reason, message)
}

fn cond(
    type_: &'static str,
    status: CondStatus,
    reason: &'static str,
    message: impl Into<String>,
) -> ConditionSpec {
    ConditionSpec::new(type_, status, reason, message)
}

fn missing_message(refs: &[MissingRef]) -> String {
    refs.iter()
        .map(|r| format!("{} {:?} ({}) not found", r.kind, r.name, r.field))
        .collect::<Vec<_>>()
        .join("; ")
}

fn deps_text(deps: &[Dependency]) -> String {
    deps.iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

fn level_str(level: LevelName) -> &'static str {
    match level {
        LevelName::Normal => "NORMAL",
        LevelName::Minor => "MINOR",
        LevelName::Moderate => "MODERATE",
        LevelName::Severe => "SEVERE",
        LevelName::Critical => "CRITICAL",
    }
}

/// The `canary` block of the status; `None` before any rollout.
pub fn canary_status(state: &RolloutState) -> Option<CanaryStatus> {
    let (step, weight, revision) = match state {
        RolloutState::Progressing(p) | RolloutState::Paused(p) => {
            (p.step, p.weight, p.revision.clone())
        }
        RolloutState::Promoted { revision, .. } | RolloutState::Aborted { revision, .. } => {
            (0, 0, revision.clone())
        }
        RolloutState::Stable => (0, 0, String::new()),
    };
    Some(CanaryStatus {
        step,
        weight,
        verdict: state.verdict()?.to_owned(),
        summary: state.summary()?,
        revision: Some(revision).filter(|r| !r.is_empty()),
    })
}

/// `29.4/s`: one decimal; nonsense reads as zero.
pub fn format_rate(per_second: f64) -> String {
    let r = if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        0.0
    };
    format!("{r:.1}/s")
}

/// `99.8%`: rounded *down* to one decimal, so 99.96 % never shows as 100 %.
pub fn format_percent(ratio: f64) -> String {
    let r = if ratio.is_finite() {
        ratio.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let tenths = (r * 1000.0 + 1e-9).floor() / 10.0;
    format!("{tenths:.1}%")
}

/// `180ms` below ten seconds, `12.3s` from there.
pub fn format_latency(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Whether a newly computed status says something the stored one does not;
/// `lastTransitionTime` alone never counts.
pub fn status_changed(old: &DeliveryTierStatus, new: &DeliveryTierStatus) -> bool {
    new.changed_from(old)
}

/// Comparing statuses while ignoring condition timestamps.
pub trait StatusDiff {
    fn changed_from(&self, old: &Self) -> bool;
}

impl StatusDiff for DeliveryTierStatus {
    fn changed_from(&self, old: &Self) -> bool {
        let strip = |s: &DeliveryTierStatus| DeliveryTierStatus {
            conditions: Vec::new(),
            ..s.clone()
        };
        strip(self) != strip(old) || !eq_ignoring_time(&self.conditions, &old.conditions)
    }
}

impl<K> StatusDiff for PolicyStatus<K> {
    fn changed_from(&self, old: &Self) -> bool {
        self.observed_generation != old.observed_generation
            || self.used_by != old.used_by
            || self.tier_count != old.tier_count
            || self.level_count != old.level_count
            || !eq_ignoring_time(&self.conditions, &old.conditions)
    }
}

/// A policy that decoded is accepted: the API server already enforced its
/// schema and CEL rules, and the operator adds none of its own.
fn accepted(
    generation: Option<i64>,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    now: Timestamp,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    stamp_all(
        &[cond(
            types::ACCEPTED,
            CondStatus::True,
            "Valid",
            "the spec is valid",
        )],
        previous,
        now,
        generation,
    )
}

/// Status of a policy of any kind: accepted at its generation, with
/// `used_by` from the index and, for a profile, its level count.
fn policy_status<K>(
    metadata: &ObjectMeta,
    previous: Option<&PolicyStatus<K>>,
    level_count: Option<u32>,
    used_by: Vec<String>,
    now: Timestamp,
) -> PolicyStatus<K> {
    let generation = metadata.generation;
    let previous = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    PolicyStatus::new(
        generation,
        accepted(generation, previous, now),
        level_count,
        used_by,
    )
}

/// Status of a RateLimitPolicy; `used_by` from the index.
pub fn rate_limit_policy_status(
    policy: &RateLimitPolicy,
    used_by: Vec<String>,
    now: Timestamp,
) -> RateLimitPolicyStatus {
    policy_status(&policy.metadata, policy.status.as_ref(), None, used_by, now)
}

/// Status of a CircuitPolicy; `used_by` from the index.
pub fn circuit_policy_status(
    policy: &CircuitPolicy,
    used_by: Vec<String>,
    now: Timestamp,
) -> CircuitPolicyStatus {
    policy_status(&policy.metadata, policy.status.as_ref(), None, used_by, now)
}

/// Status of a DegradationProfile; `used_by` from the index.
pub fn degradation_profile_status(
    profile: &DegradationProfile,
    used_by: Vec<String>,
    now: Timestamp,
) -> DegradationProfileStatus {
    let levels = Some(u32::try_from(profile.spec.levels.len()).unwrap_or(u32::MAX));
    policy_status(
        &profile.metadata,
        profile.status.as_ref(),
        levels,
        used_by,
        now,
    )
}

#[cfg(test)]
mod tests;
