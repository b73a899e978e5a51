//! The canary rollout as a pure state machine, and the exact split of queue
//! partitions between the two tracks.
//!
//! Owns the decision of each pass: start, analyse, advance, pause for the
//! manual gate or by hand, resume, promote, abort, retry. It leaves to the caller reading metrics
//! (counts over the analysis window, see [`RolloutState::window_start`]),
//! persisting the state, and applying the actions. Rules:
//!
//! - A rollout starts when the desired pod revision differs from what the
//!   stable Deployment runs. Before the first deploy, or with zero replicas,
//!   or without steps, the revision is promoted at once.
//! - Each `analysis.interval` the canary is compared with stable and with
//!   the absolute thresholds. Fewer than [`MIN_REQUESTS`] canary requests,
//!   or no latency figure, is *insufficient data*: the window keeps
//!   growing and the rollout waits — it never fails for lack of data, and
//!   never advances without one passed analysis in the step. Errors are
//!   judged before latency (a canary whose every send fails has no latency
//!   to report), and [`CONCLUSIVE_ERRORS`] failed sends above the error
//!   threshold fail it even under [`MIN_REQUESTS`]: a canary that fails
//!   opens its breaker and then sends too little to ever reach the minimum.
//! - Error-rate checks allow [`ERROR_GRACE`] error: one failed send in a
//!   small window is noise, not a verdict. With that, a stable error rate of
//!   zero is handled without a special case: the canary fails the relative
//!   check at its second error. The relative check is skipped when stable
//!   itself has too few requests (at 100 % weight it has none); the
//!   absolute thresholds still apply.
//! - One failed analysis aborts. Abort is sticky until the desired revision
//!   changes; a desired revision equal to stable's again ends it (rollback).
//! - A new desired revision during a rollout restarts it at step 0.
//! - With `autoPromote: false` the rollout pauses after the last step until
//!   `herald.dev/promote` names the revision; a promote during the steps
//!   skips the rest. `herald.dev/abort` aborts; it wins over promote.
//! - `herald.dev/pause` naming the revision holds the canary at its step
//!   and weight: it does not advance and is not promoted by the steps. The
//!   analysis keeps running while paused, and a failed one still aborts:
//!   a pause must never keep a bad canary serving. A promote or an abort
//!   still acts. Resuming (the annotation gone or naming another revision)
//!   moves the step's start forward by the paused time, so the step's
//!   `pause` counts only time spent running.
//! - `herald.dev/retry` naming an aborted revision starts its canary again
//!   at step 0. Its value is `<revision>` or `<revision>@<request>`; the
//!   state keeps the value it acted on, so each request acts once and a
//!   retried canary that aborts again stays aborted until a new request.
//!   A retry waits while `herald.dev/abort` or `herald.dev/promote` names
//!   the revision: either would end the new attempt at once.
//!
//! Actions: `SetWeight`, `ScaleCanary` and `SetCondition` describe the
//! desired state and come on every pass; `Promote` comes on the transition
//! and on every pass until stable runs the revision; `Abort` and every
//! `EmitEvent` come only on a transition, so events are never repeated.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::conditions::types;
use crate::api::delivery_tier::{CanaryAnalysis, RolloutSpec};

use crate::engine::partition::partition_split;

use super::condition::{CondStatus, ConditionSpec};
use super::inputs::{CanaryTrack, Tracks};
use super::time::{after, elapsed};

/// Fewest canary requests in a window for an analysis to count.
pub const MIN_REQUESTS: u64 = 30;
/// Canary errors tolerated by the error-rate checks, whatever the rates.
pub const ERROR_GRACE: u64 = 1;
/// Failed canary sends that decide an analysis with fewer than
/// [`MIN_REQUESTS`] requests, when their rate is above the threshold: as
/// many as a breaker's default `minimumCalls`, which opens it.
pub const CONCLUSIVE_ERRORS: u64 = 10;

/// Canary pods for a weight: `replicas × weight / 100` rounded up, at least
/// one while the canary has any weight, never more than `replicas`.
pub fn canary_replicas(replicas: u32, weight: u32) -> u32 {
    if weight == 0 || replicas == 0 {
        return 0;
    }
    let n = (u64::from(replicas) * u64::from(weight.min(100))).div_ceil(100);
    u32::try_from(n).unwrap_or(replicas).clamp(1, replicas)
}

/// Delivery figures of one track over the analysis window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Send attempts.
    pub requests: u64,
    /// Attempts that failed (not counting 429s).
    pub errors: u64,
    /// 95th percentile send latency; `None` when unknown.
    pub p95_ms: Option<u64>,
    /// 429 answers received.
    pub rate_limited_429: u64,
}

/// What one pass knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryInput {
    pub now: Timestamp,
    /// The pod revision the stable Deployment runs (its template's
    /// `herald.dev/pod-revision`); `None` before the first deploy.
    pub stable_revision: Option<String>,
    /// The pod revision the tier asks for now.
    pub desired_revision: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// Queue partitions (`spec.store.redis.partitions`).
    pub partitions: u32,
    /// Canary figures since [`RolloutState::window_start`].
    pub canary_metrics: Option<Metrics>,
    /// Stable figures over the same window.
    pub stable_metrics: Option<Metrics>,
    /// `herald.dev/promote` names the desired revision.
    pub manual_promote: bool,
    /// `herald.dev/abort` names the desired revision.
    pub manual_abort: bool,
    /// `herald.dev/pause` names the desired revision.
    pub manual_pause: bool,
    /// `herald.dev/retry`'s value, when it names the desired revision.
    pub retry: Option<String>,
}

/// Where a rollout stands. Serializable, so the caller can keep it in the
/// tier's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum RolloutState {
    /// No rollout has run; stable runs what it runs.
    #[default]
    Stable,
    /// Stepping through `spec.rollout.steps`.
    Progressing(Progress),
    /// Analysis passed after the last step; waiting for the manual gate.
    Paused(Progress),
    /// The revision was handed to stable.
    Promoted { revision: String, at: Timestamp },
    /// The revision was withdrawn; stable keeps the old one.
    Aborted {
        revision: String,
        reason: String,
        at: Timestamp,
        /// The `herald.dev/retry` value that started the attempt that
        /// aborted, so that value does not start another.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_request: Option<String>,
    },
}

/// A rollout underway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The pod revision the canary runs.
    pub revision: String,
    /// Index into `steps`.
    pub step: u32,
    /// The step's weight, percent.
    pub weight: u32,
    pub step_started_at: Timestamp,
    /// Start of the current analysis window.
    pub window_start: Timestamp,
    /// Analyses passed in this step.
    pub analyses_passed: u32,
    /// Outcome of the latest analysis in this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisOutcome>,
    /// What the latest analysis in this step compared, shown in the
    /// CanaryAnalysis condition (and so by `herald rollout status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_figures: Option<Figures>,
    /// Since when `herald.dev/pause` holds the canary; `None` when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Timestamp>,
    /// The `herald.dev/retry` value that started this attempt, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_request: Option<String>,
}

/// The figures one analysis compared: the canary's, and stable's when it
/// reported any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub canary: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Metrics>,
}

impl std::fmt::Display for Figures {
    /// `canary 0.50% errors (1 of 200 sends), p95 140ms; stable 0.10% (1 of 1000), p95 120ms`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let track = |m: &Metrics| {
            let errors = m.errors.min(m.requests);
            let percent = if m.requests == 0 {
                0.0
            } else {
                errors as f64 * 100.0 / m.requests as f64
            };
            let p95 = m
                .p95_ms
                .map_or_else(|| "no latency".to_owned(), |ms| format!("p95 {ms}ms"));
            format!(
                "{percent:.2}% errors ({errors} of {} sends), {p95}",
                m.requests
            )
        };
        write!(f, "canary {}", track(&self.canary))?;
        if let Some(s) = &self.stable {
            write!(f, "; stable {}", track(s))?;
        }
        Ok(())
    }
}

/// Outcome of an analysis that did not abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AnalysisOutcome {
    Passed,
    InsufficientData,
}

/// Kubernetes event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// What the caller does after a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanaryAction {
    /// The canary's share of partitions, percent.
    SetWeight(u32),
    /// Canary Deployment replicas.
    ScaleCanary(u32),
    /// Stable takes `revision` (the desired template).
    Promote {
        revision: String,
    },
    /// Canary to zero, stable back to every partition.
    Abort {
        reason: String,
    },
    EmitEvent {
        type_: EventType,
        reason: &'static str,
        message: String,
    },
    SetCondition(ConditionSpec),
}

/// Verdict of one analysis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    InsufficientData(&'static str),
    Fail(String),
}

/// Compare canary with stable and the thresholds over a window of length
/// `window`. See the module doc for the rules.
pub fn analyse(
    a: &CanaryAnalysis,
    canary: Option<&Metrics>,
    stable: Option<&Metrics>,
    window: Duration,
) -> Verdict {
    let Some(c) = canary.filter(|c| c.requests > 0) else {
        return Verdict::InsufficientData("the canary made fewer than 30 sends in the window");
    };
    let errors = c.errors.min(c.requests);
    let rate = errors as f64 / c.requests as f64;
    let max_percent = finite_or(a.max_error_rate_percent, 1.0).clamp(0.0, 100.0);
    let above_threshold = errors > ERROR_GRACE && rate * 100.0 > max_percent;
    let enough = c.requests >= MIN_REQUESTS || errors >= CONCLUSIVE_ERRORS;
    if above_threshold && enough {
        return Verdict::Fail(format!(
            "canary error rate {:.2}% ({errors} of {} sends) is above maxErrorRatePercent {max_percent}%",
            rate * 100.0,
            c.requests
        ));
    }
    if c.requests < MIN_REQUESTS {
        return Verdict::InsufficientData("the canary made fewer than 30 sends in the window");
    }
    if let Some(s) = stable.filter(|s| s.requests >= MIN_REQUESTS) {
        let stable_rate = s.errors.min(s.requests) as f64 / s.requests as f64;
        let ratio = finite_or(a.max_error_rate_ratio, 1.1).max(1.0);
        let allowed = ratio * stable_rate * c.requests as f64;
        if errors > ERROR_GRACE && errors as f64 > allowed {
            return Verdict::Fail(format!(
                "canary error rate {:.2}% is above {ratio} × stable's {:.2}%",
                rate * 100.0,
                stable_rate * 100.0
            ));
        }
    }
    let Some(p95) = c.p95_ms else {
        return Verdict::InsufficientData("the canary reported no latency");
    };
    let max_p95 = u64::try_from(a.max_p95_latency.get().as_millis()).unwrap_or(u64::MAX);
    if p95 > max_p95 {
        return Verdict::Fail(format!(
            "canary p95 latency {p95}ms is above maxP95Latency {}",
            a.max_p95_latency
        ));
    }
    let interval = a.interval.get().as_secs_f64();
    let intervals = if interval > 0.0 {
        (window.as_secs_f64() / interval).ceil().max(1.0) as u64
    } else {
        1
    };
    let allowed_429 = u64::from(a.max429s).saturating_mul(intervals);
    if c.rate_limited_429 > allowed_429 {
        return Verdict::Fail(format!(
            "canary got {} answers 429, more than max429s {} per interval",
            c.rate_limited_429, a.max429s
        ));
    }
    Verdict::Pass
}

fn finite_or(x: f64, default: f64) -> f64 {
    if x.is_finite() { x } else { default }
}

/// Event reasons.
pub mod reasons {
    pub const DEPLOYED: &str = "Deployed";
    pub const STARTED: &str = "RolloutStarted";
    pub const RESTARTED: &str = "RolloutRestarted";
    pub const STEP: &str = "RolloutStepAdvanced";
    pub const PAUSED: &str = "RolloutPaused";
    pub const RESUMED: &str = "RolloutResumed";
    pub const RETRIED: &str = "RolloutRetried";
    pub const PROMOTED: &str = "RolloutPromoted";
    pub const ABORTED: &str = "RolloutAborted";
    pub const CANCELLED: &str = "RolloutCancelled";
}

/// One pass of the state machine.
pub fn step(
    state: &RolloutState,
    spec: &RolloutSpec,
    input: &CanaryInput,
) -> (RolloutState, Vec<CanaryAction>) {
    let mut acts = Vec::new();
    let desired = input.desired_revision.as_str();
    let stable_runs_desired = input.stable_revision.as_deref() == Some(desired);

    let next = match state {
        RolloutState::Progressing(p) | RolloutState::Paused(p) if p.revision == desired => {
            let paused = matches!(state, RolloutState::Paused(_));
            advance(p, paused, spec, input, &mut acts)
        }
        RolloutState::Progressing(p) | RolloutState::Paused(p) => {
            if stable_runs_desired {
                event(
                    &mut acts,
                    EventType::Normal,
                    reasons::CANCELLED,
                    format!(
                        "desired revision is back to stable's {desired}; canary of {} withdrawn",
                        p.revision
                    ),
                );
                RolloutState::Stable
            } else {
                start(spec, input, reasons::RESTARTED, &mut acts)
            }
        }
        RolloutState::Aborted {
            revision,
            retry_request,
            ..
        } if revision == desired => match &input.retry {
            Some(request)
                if retry_request.as_ref() != Some(request)
                    && !input.manual_abort
                    && !input.manual_promote =>
            {
                let mut next = start(spec, input, reasons::RETRIED, &mut acts);
                if let RolloutState::Progressing(p) = &mut next {
                    p.retry_request = Some(request.clone());
                }
                next
            }
            _ => state.clone(),
        },
        RolloutState::Promoted { revision, .. } if revision == desired => {
            if !stable_runs_desired {
                acts.push(CanaryAction::Promote {
                    revision: desired.to_owned(),
                });
            }
            state.clone()
        }
        RolloutState::Stable | RolloutState::Promoted { .. } | RolloutState::Aborted { .. } => {
            if stable_runs_desired {
                RolloutState::Stable
            } else {
                start(spec, input, reasons::STARTED, &mut acts)
            }
        }
    };

    let weight = next.canary_weight();
    acts.push(CanaryAction::SetWeight(weight));
    acts.push(CanaryAction::ScaleCanary(canary_replicas(
        input.replicas,
        weight,
    )));
    acts.push(CanaryAction::SetCondition(analysis_condition(&next, spec)));
    (next, acts)
}

fn event(acts: &mut Vec<CanaryAction>, type_: EventType, reason: &'static str, message: String) {
    acts.push(CanaryAction::EmitEvent {
        type_,
        reason,
        message,
    });
}

fn start(
    spec: &RolloutSpec,
    input: &CanaryInput,
    reason: &'static str,
    acts: &mut Vec<CanaryAction>,
) -> RolloutState {
    let desired = input.desired_revision.clone();
    let direct = if input.stable_revision.is_none() {
        Some("first revision of the tier")
    } else if input.replicas == 0 {
        Some("no replicas to compare")
    } else if spec.steps.is_empty() {
        Some("the rollout has no steps")
    } else {
        None
    };
    if let Some(why) = direct {
        event(
            acts,
            EventType::Normal,
            reasons::DEPLOYED,
            format!("revision {desired} deployed without a canary: {why}"),
        );
        return promote(desired, input.now, acts);
    }
    let weight = spec.steps[0].weight;
    event(
        acts,
        EventType::Normal,
        reason,
        format!(
            "canary of revision {desired} at {weight}% (step 1/{})",
            spec.steps.len()
        ),
    );
    RolloutState::Progressing(Progress {
        revision: desired,
        step: 0,
        weight,
        step_started_at: input.now,
        window_start: input.now,
        analyses_passed: 0,
        last_analysis: None,
        last_figures: None,
        paused_at: None,
        retry_request: None,
    })
}

fn promote(revision: String, now: Timestamp, acts: &mut Vec<CanaryAction>) -> RolloutState {
    acts.push(CanaryAction::Promote {
        revision: revision.clone(),
    });
    RolloutState::Promoted { revision, at: now }
}

fn abort(
    p: Progress,
    reason: String,
    now: Timestamp,
    acts: &mut Vec<CanaryAction>,
) -> RolloutState {
    let revision = p.revision;
    event(
        acts,
        EventType::Warning,
        reasons::ABORTED,
        format!("revision {revision} aborted: {reason}"),
    );
    acts.push(CanaryAction::Abort {
        reason: reason.clone(),
    });
    RolloutState::Aborted {
        revision,
        reason,
        at: now,
        retry_request: p.retry_request,
    }
}

fn advance(
    p: &Progress,
    paused: bool,
    spec: &RolloutSpec,
    input: &CanaryInput,
    acts: &mut Vec<CanaryAction>,
) -> RolloutState {
    let now = input.now;
    let mut p = p.clone();
    if input.manual_abort {
        return abort(p, "aborted by hand".to_owned(), now, acts);
    }
    if input.manual_promote {
        event(
            acts,
            EventType::Normal,
            reasons::PROMOTED,
            format!(
                "revision {} promoted by hand at {}% (step {})",
                p.revision,
                p.weight,
                p.step + 1
            ),
        );
        return promote(p.revision, now, acts);
    }
    let Some(last) = spec.steps.len().checked_sub(1) else {
        return promote(p.revision, now, acts);
    };
    // The steps may have been edited during the rollout.
    let index = (p.step as usize).min(last);
    p.step = index as u32;
    p.weight = spec.steps[index].weight;
    hold_by_hand(&mut p, input, spec.steps.len(), acts);

    // A step whose weight gives the canary no partition has nothing to
    // analyse; it only holds for its pause.
    let vacuous = partition_split(input.partitions, p.weight).0 == 0;
    let window = elapsed(now, p.window_start);
    if !vacuous && window >= spec.analysis.interval.get() {
        let verdict = analyse(
            &spec.analysis,
            input.canary_metrics.as_ref(),
            input.stable_metrics.as_ref(),
            window,
        );
        // Without canary figures the last ones stand (they say "last").
        if let Some(canary) = input.canary_metrics {
            p.last_figures = Some(Figures {
                canary,
                stable: input.stable_metrics,
            });
        }
        match verdict {
            Verdict::Fail(why) => return abort(p, why, now, acts),
            Verdict::Pass => {
                p.analyses_passed = p.analyses_passed.saturating_add(1);
                p.window_start = now;
                p.last_analysis = Some(AnalysisOutcome::Passed);
            }
            Verdict::InsufficientData(_) => {
                p.last_analysis = Some(AnalysisOutcome::InsufficientData);
            }
        }
    }
    if paused {
        return RolloutState::Paused(p);
    }
    if p.paused_at.is_some() {
        return RolloutState::Progressing(p);
    }
    let held = elapsed(now, p.step_started_at) >= spec.steps[index].pause.get();
    if !(held && (vacuous || p.analyses_passed >= 1)) {
        return RolloutState::Progressing(p);
    }
    if index < last {
        p.step += 1;
        p.weight = spec.steps[index + 1].weight;
        p.step_started_at = now;
        p.window_start = now;
        p.analyses_passed = 0;
        p.last_analysis = None;
        p.last_figures = None;
        event(
            acts,
            EventType::Normal,
            reasons::STEP,
            format!(
                "canary of revision {} at {}% (step {}/{})",
                p.revision,
                p.weight,
                p.step + 1,
                spec.steps.len()
            ),
        );
        return RolloutState::Progressing(p);
    }
    if spec.auto_promote {
        event(
            acts,
            EventType::Normal,
            reasons::PROMOTED,
            format!("revision {} passed every step", p.revision),
        );
        return promote(p.revision, now, acts);
    }
    event(
        acts,
        EventType::Normal,
        reasons::PAUSED,
        format!(
            "revision {} passed every step; promote with the annotation herald.dev/promote={}",
            p.revision, p.revision
        ),
    );
    RolloutState::Paused(p)
}

/// Start or end a pause by hand. The paused time is added to the step's
/// start, so the step's `pause` counts only time the canary ran.
fn hold_by_hand(p: &mut Progress, input: &CanaryInput, steps: usize, acts: &mut Vec<CanaryAction>) {
    let now = input.now;
    match (input.manual_pause, p.paused_at) {
        (true, None) => {
            p.paused_at = Some(now);
            event(
                acts,
                EventType::Normal,
                reasons::PAUSED,
                format!(
                    "canary of revision {} paused by hand at {}% (step {}/{steps})",
                    p.revision,
                    p.weight,
                    p.step + 1
                ),
            );
        }
        (false, Some(since)) => {
            p.step_started_at = after(p.step_started_at, elapsed(now, since));
            p.paused_at = None;
            event(
                acts,
                EventType::Normal,
                reasons::RESUMED,
                format!(
                    "canary of revision {} resumed at {}% (step {}/{steps})",
                    p.revision,
                    p.weight,
                    p.step + 1
                ),
            );
        }
        _ => {}
    }
}

/// `; last: <figures>` when an analysis compared any.
fn figures_suffix(figures: Option<&Figures>) -> String {
    figures.map_or_else(String::new, |f| format!("; last: {f}"))
}

/// The CanaryAnalysis condition for a state.
pub fn analysis_condition(state: &RolloutState, spec: &RolloutSpec) -> ConditionSpec {
    let t = types::CANARY_ANALYSIS;
    let steps = spec.steps.len();
    match state {
        RolloutState::Stable => {
            ConditionSpec::new(t, CondStatus::False, "NoRollout", "no canary is running")
        }
        RolloutState::Progressing(p) => {
            let at = format!("step {}/{steps} at {}%", p.step + 1, p.weight);
            match p.last_analysis {
                None => ConditionSpec::new(
                    t,
                    CondStatus::Unknown,
                    "Pending",
                    format!("{at}: first analysis after {}", spec.analysis.interval),
                ),
                Some(AnalysisOutcome::InsufficientData) => ConditionSpec::new(
                    t,
                    CondStatus::Unknown,
                    "InsufficientData",
                    format!(
                        "{at}: waiting for at least {MIN_REQUESTS} canary sends with latency{}",
                        figures_suffix(p.last_figures.as_ref())
                    ),
                ),
                Some(AnalysisOutcome::Passed) => ConditionSpec::new(
                    t,
                    CondStatus::True,
                    "AnalysisPassing",
                    format!(
                        "{at}: {} analyses passed{}",
                        p.analyses_passed,
                        figures_suffix(p.last_figures.as_ref())
                    ),
                ),
            }
        }
        RolloutState::Paused(p) => ConditionSpec::new(
            t,
            CondStatus::True,
            "AwaitingPromotion",
            format!(
                "revision {} passed every step; annotate herald.dev/promote={} to promote",
                p.revision, p.revision
            ),
        ),
        RolloutState::Promoted { revision, .. } => ConditionSpec::new(
            t,
            CondStatus::True,
            "Promoted",
            format!("revision {revision} promoted"),
        ),
        RolloutState::Aborted {
            revision, reason, ..
        } => ConditionSpec::new(
            t,
            CondStatus::False,
            "Aborted",
            format!("revision {revision} aborted: {reason}"),
        ),
    }
}

impl RolloutState {
    /// The canary's share of partitions, percent.
    pub fn canary_weight(&self) -> u32 {
        match self {
            RolloutState::Progressing(p) | RolloutState::Paused(p) => p.weight,
            _ => 0,
        }
    }

    /// Whether a rollout holds the stable Deployment at its current
    /// template (underway, or aborted).
    pub fn pins_stable(&self) -> bool {
        matches!(
            self,
            RolloutState::Progressing(_) | RolloutState::Paused(_) | RolloutState::Aborted { .. }
        )
    }

    /// Start of the window the next analysis covers; the caller measures
    /// metrics from here to `now`.
    pub fn window_start(&self) -> Option<Timestamp> {
        match self {
            RolloutState::Progressing(p) | RolloutState::Paused(p) => Some(p.window_start),
            _ => None,
        }
    }

    /// When a pass could next change something (requeue hint). A resume
    /// wakes the controller by itself, so a paused step waits only for
    /// its analysis.
    pub fn next_check_at(&self, spec: &RolloutSpec) -> Option<Timestamp> {
        let interval = spec.analysis.interval.get();
        match self {
            RolloutState::Progressing(p) if p.paused_at.is_none() => {
                let analysis = after(p.window_start, interval);
                let pause = spec
                    .steps
                    .get(p.step as usize)
                    .map(|s| after(p.step_started_at, s.pause.get()));
                Some(pause.map_or(analysis, |t| t.min(analysis)))
            }
            RolloutState::Progressing(p) | RolloutState::Paused(p) => {
                Some(after(p.window_start, interval))
            }
            _ => None,
        }
    }

    /// `Analysing`, `Paused` (at the manual gate or by hand), `Promoted` or
    /// `Aborted`; `None` at rest before any rollout.
    pub fn verdict(&self) -> Option<&'static str> {
        match self {
            RolloutState::Stable => None,
            RolloutState::Progressing(p) if p.paused_at.is_none() => Some("Analysing"),
            RolloutState::Progressing(_) | RolloutState::Paused(_) => Some("Paused"),
            RolloutState::Promoted { .. } => Some("Promoted"),
            RolloutState::Aborted { .. } => Some("Aborted"),
        }
    }

    /// One line for `kubectl get tier`, e.g. `50% analysing`.
    pub fn summary(&self) -> Option<String> {
        match self {
            RolloutState::Stable => None,
            RolloutState::Progressing(p) if p.paused_at.is_none() => {
                Some(format!("{}% analysing", p.weight))
            }
            RolloutState::Progressing(p) | RolloutState::Paused(p) => {
                Some(format!("{}% paused", p.weight))
            }
            RolloutState::Promoted { .. } => Some("promoted".to_owned()),
            RolloutState::Aborted { .. } => Some("aborted".to_owned()),
        }
    }

    /// How the two Deployments run in this state. `live_stable` is the
    /// template the stable Deployment runs now; it is kept while the state
    /// pins stable.
    pub fn tracks(&self, replicas: u32, live_stable: Option<&PodTemplateSpec>) -> Tracks {
        let weight = self.canary_weight();
        Tracks {
            stable_template: if self.pins_stable() {
                live_stable.cloned()
            } else {
                None
            },
            canary: Some(CanaryTrack {
                replicas: canary_replicas(replicas, weight),
                weight,
            }),
        }
    }
}

/// Whether a gate annotation applies to `revision`: it must name it, so a
/// promote left over from an earlier rollout never promotes a later one.
pub fn gate_names(annotation: Option<&str>, revision: &str) -> bool {
    annotation.is_some_and(|v| v.trim() == revision)
}

/// The retry request in `herald.dev/retry` when it is for `revision`:
/// `<revision>` or `<revision>@<request>`. The whole value is the
/// request, so a new `@<request>` asks again for the same revision.
pub fn retry_request(annotation: Option<&str>, revision: &str) -> Option<String> {
    let value = annotation?.trim();
    let named = value.split_once('@').map_or(value, |(r, _)| r);
    (named == revision).then(|| value.to_owned())
}

#[cfg(test)]
mod tests;
