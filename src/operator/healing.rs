//! Self-healing decisions: which unhealthy agent pods to restart now, which
//! to leave alone for a while, and when restarting would not help at all.
//!
//! Owns the rules; the caller observes pods, remembers the operator's past
//! restarts, and performs a restart (preferably through the Eviction API,
//! so the API server enforces the PodDisruptionBudget as well). Rules, in
//! order:
//!
//! 1. With healing disabled, nothing.
//! 2. A shared dependency down (Redis or Telegram, reported by most pods)
//!    yields only `DependencyDegraded`: restarting pods cannot fix Redis,
//!    and a restart storm makes the recovery worse.
//! 3. A pod not ready for less than `unhealthyAfter` waits. A new pod's
//!    clock starts only after the termination grace period of the pod it
//!    may replace ([`unhealthy_clock`]): until that one is killed, the new
//!    one can be waiting for what it holds.
//! 4. A pod the operator restarted before waits `backoff × 2^(n-1)`
//!    (capped at `maxBackoff`) after its n-th restart.
//! 5. At most `restartBudget` restarts in any `budgetWindow`, tier-wide;
//!    when it is spent, `BudgetExhausted` says until when.
//! 6. While a pod of the tier is still terminating, nothing else is
//!    restarted: the restart in progress is not over until the old pod is
//!    gone, and its replacement may be waiting for what the old one still
//!    holds (the embedded queue's file, a Redis lease). Evicting the
//!    replacement then only starts a chain of restarts.
//! 7. Never more restarts of *ready* pods in one pass than the PDB's
//!    allowed disruptions. A pod that is not ready is not counted healthy
//!    by the PDB (evicting it costs the budget nothing, and the agents'
//!    PDB sets `unhealthyPodEvictionPolicy: AlwaysAllow`), so with one
//!    replica — where the PDB allows 0 while the pod is down — the
//!    operator can still replace it.
//!
//! Invariant: the output is a function of the input; pods are considered
//! longest-unhealthy first, then by name.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::delivery_tier::HealingSpec;

use super::time::{after, before, elapsed};

/// What the caller knows about one agent pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub name: String,
    pub ready: bool,
    /// Since when the pod has been not ready (or failing `/healthz`).
    pub unhealthy_since: Option<Timestamp>,
    /// The operator's last restart of this pod.
    pub last_restart: Option<Timestamp>,
    /// How many times the operator restarted this pod.
    pub restarts_by_operator: u32,
}

/// The termination grace period of agent pods (Kubernetes' default, which
/// the operator keeps): how long a pod being replaced may still hold what
/// its replacement needs.
pub const PREDECESSOR_GRACE: Duration = Duration::from_secs(30);

/// When a not-ready pod's unhealthy clock starts: when it turned not ready
/// (its creation, if it never was), but never before `created + grace`.
/// `None` when the pod's times are unknown.
pub fn unhealthy_clock(
    turned_not_ready: Option<Timestamp>,
    created: Option<Timestamp>,
    grace: Duration,
) -> Option<Timestamp> {
    let since = turned_not_ready.or(created)?;
    Some(match created {
        Some(c) => since.max(after(c, grace)),
        None => since,
    })
}

/// Dependencies the agents share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DependencyHealth {
    pub redis_down: bool,
    pub telegram_down: bool,
}

/// A shared dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    Redis,
    Telegram,
}

impl Dependency {
    pub const fn as_str(self) -> &'static str {
        match self {
            Dependency::Redis => "Redis",
            Dependency::Telegram => "Telegram",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DependencyHealth {
    pub fn any_down(&self) -> bool {
        self.redis_down || self.telegram_down
    }

    /// The dependencies down, Redis first.
    pub fn down(&self) -> Vec<Dependency> {
        let mut out = Vec::new();
        if self.redis_down {
            out.push(Dependency::Redis);
        }
        if self.telegram_down {
            out.push(Dependency::Telegram);
        }
        out
    }

    /// The outage the tier shares: a dependency counts as down when more
    /// than half of the pods that reported say so. One pod alone that
    /// cannot reach Redis is that pod's problem; most pods agreeing is
    /// Redis's.
    pub fn shared(reports: &[DependencyHealth]) -> DependencyHealth {
        let n = reports.len();
        let majority = |count: usize| n > 0 && count * 2 > n;
        DependencyHealth {
            redis_down: majority(reports.iter().filter(|r| r.redis_down).count()),
            telegram_down: majority(reports.iter().filter(|r| r.telegram_down).count()),
        }
    }
}

/// Everything one decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealingInput<'a> {
    pub now: Timestamp,
    pub spec: &'a HealingSpec,
    pub pods: Vec<PodHealth>,
    /// When the operator restarted any pod of this tier (at least the last
    /// `budgetWindow`; older entries are ignored).
    pub recent_restarts: Vec<Timestamp>,
    /// `status.disruptionsAllowed` of the tier's PDB.
    pub pdb_allowed_disruptions: u32,
    /// The shared outage, from [`DependencyHealth::shared`].
    pub dependency: DependencyHealth,
    /// Pods of this tier that are shutting down (deletion requested).
    pub terminating: usize,
}

/// Why a pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Not yet unhealthy for `unhealthyAfter`.
    NotUnhealthyLongEnough,
    /// Restarted recently; its backoff has not run out.
    Backoff,
    /// The PodDisruptionBudget allows no further disruption now.
    DisruptionBudget,
    /// Another pod of the tier is still terminating.
    RestartInProgress,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitReason::NotUnhealthyLongEnough => "not yet unhealthy for unhealthyAfter",
            WaitReason::Backoff => "restarted recently; backing off",
            WaitReason::DisruptionBudget => "the PodDisruptionBudget allows no disruption now",
            WaitReason::RestartInProgress => "another pod of the tier is still terminating",
        })
    }
}

/// A healing decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealingAction {
    Restart {
        pod: String,
        reason: String,
    },
    /// `until` is when waiting ends, when known.
    Wait {
        pod: String,
        until: Option<Timestamp>,
        why: WaitReason,
    },
    /// Set the DependencyDegraded condition; restart nothing.
    DependencyDegraded {
        which: Vec<Dependency>,
    },
    /// The restart budget is spent until `until`.
    BudgetExhausted {
        until: Timestamp,
    },
}

/// Wait after the n-th restart of a pod: `backoff × 2^(n-1)`, capped at
/// `maxBackoff`.
pub fn backoff(spec: &HealingSpec, restarts: u32) -> Duration {
    let base = spec.backoff.get();
    let cap = spec.max_backoff.get().max(base);
    let doublings = restarts.saturating_sub(1).min(63);
    base.checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .map_or(cap, |d| d.min(cap))
}

/// Decide this pass's healing actions.
pub fn decide(input: &HealingInput<'_>) -> Vec<HealingAction> {
    let spec = input.spec;
    let now = input.now;
    if !spec.enabled {
        return Vec::new();
    }
    if input.dependency.any_down() {
        return vec![HealingAction::DependencyDegraded {
            which: input.dependency.down(),
        }];
    }
    let mut unhealthy: Vec<(&PodHealth, Timestamp)> = input
        .pods
        .iter()
        .filter_map(|p| p.unhealthy_since.map(|t| (p, t)))
        .collect();
    unhealthy.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.name.cmp(&b.0.name)));

    let mut out = Vec::new();
    let mut eligible = Vec::new();
    for (pod, since) in unhealthy {
        let due = after(since, spec.unhealthy_after.get());
        if now < due {
            out.push(HealingAction::Wait {
                pod: pod.name.clone(),
                until: Some(due),
                why: WaitReason::NotUnhealthyLongEnough,
            });
            continue;
        }
        if let Some(last) = pod.last_restart {
            let until = after(last, backoff(spec, pod.restarts_by_operator.max(1)));
            if now < until {
                out.push(HealingAction::Wait {
                    pod: pod.name.clone(),
                    until: Some(until),
                    why: WaitReason::Backoff,
                });
                continue;
            }
        }
        eligible.push((pod, since));
    }
    if eligible.is_empty() {
        return out;
    }
    if input.terminating > 0 {
        out.extend(eligible.into_iter().map(|(pod, _)| HealingAction::Wait {
            pod: pod.name.clone(),
            until: None,
            why: WaitReason::RestartInProgress,
        }));
        return out;
    }

    let window = spec.budget_window.get();
    let window_start = before(now, window);
    let mut in_window: Vec<Timestamp> = input
        .recent_restarts
        .iter()
        .copied()
        .filter(|t| *t > window_start)
        .collect();
    in_window.sort();
    let budget = spec.restart_budget as usize;
    let mut remaining = budget.saturating_sub(in_window.len());
    let mut disruptions = input.pdb_allowed_disruptions as usize;

    if remaining == 0 {
        // The oldest restart in the window is the first to leave it.
        let until = in_window.first().map_or(now, |t| after(*t, window));
        out.push(HealingAction::BudgetExhausted { until });
        return out;
    }
    for (pod, since) in eligible {
        if remaining == 0 {
            let until = in_window.first().map_or(now, |t| after(*t, window));
            out.push(HealingAction::BudgetExhausted { until });
            break;
        }
        if pod.ready {
            if disruptions == 0 {
                out.push(HealingAction::Wait {
                    pod: pod.name.clone(),
                    until: None,
                    why: WaitReason::DisruptionBudget,
                });
                continue;
            }
            disruptions -= 1;
        }
        remaining -= 1;
        in_window.push(now);
        out.push(HealingAction::Restart {
            pod: pod.name.clone(),
            reason: format!(
                "not ready for {} (unhealthyAfter {})",
                human(elapsed(now, since)),
                spec.unhealthy_after
            ),
        });
    }
    out
}

/// `95s` → `1m35s`: whole seconds, for messages.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// The earliest `until` among the actions: when to look again.
pub fn next_check_at(actions: &[HealingAction]) -> Option<Timestamp> {
    actions
        .iter()
        .filter_map(|a| match a {
            HealingAction::Wait { until, .. } => *until,
            HealingAction::BudgetExhausted { until } => Some(*until),
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests;
