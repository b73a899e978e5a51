//! Resolved policy: a DeliveryTier and the policies it references, turned
//! into the engine's configuration types.
//!
//! Owns the mapping from the API's vocabulary (percentages, duration
//! strings, named tiers) to the engine's (fractions, `Duration`s, routes),
//! and the checks only the engine can make (e.g. degradation levels whose
//! entry thresholds go down as severity goes up). Leaves schema and CEL
//! rules to `crate::validate`, which has already run on every input here.

pub mod dispatch;
pub mod effective;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::circuit_policy::{self, CircuitPolicySpec, WindowType};
use crate::api::degradation_profile::{self, DegradationProfileSpec};
use crate::api::delivery_tier::{Channel, DeliveryTierSpec};
use crate::api::rate_limit_policy::{
    LimiterBackend, LimiterFallback, RateLimit, RateLimitPolicySpec,
};
use crate::engine::Priority;
use crate::engine::breaker::{BreakerConfig, Window};
use crate::engine::bulkhead::BulkheadConfig;
use crate::engine::degradation::{self, DegradationConfig, Level};
use crate::engine::limiter::{Guard, Limit, Limits};
use crate::engine::retry::{BackoffStrategy, Jitter, RetryPolicy};
use crate::engine::scheduler::PrioritySet;
use crate::engine::selector::Route;
use crate::validate::{Diagnostic, Object, Report};

/// Everything the agent needs to run one tier.
#[derive(Clone, Debug)]
pub struct TierPolicy {
    pub name: String,
    pub spec: DeliveryTierSpec,
    pub limits: Limits,
    pub limiter_backend: LimiterBackend,
    pub limiter_fallback: LimiterFallback,
    pub breaker: BreakerConfig,
    pub retry: RetryPolicy,
    pub per_attempt_timeout: Duration,
    pub overall_timeout: Duration,
    /// Per message type; types without an entry are unbounded.
    pub bulkheads: BTreeMap<String, BulkheadConfig>,
    pub degradation: DegradationConfig,
}

/// The validated herald objects of one configuration, by name.
#[derive(Clone, Debug, Default)]
pub struct ConfigSet {
    pub tiers: Vec<TierPolicy>,
}

impl ConfigSet {
    /// Resolve every tier of a clean validation report. Engine-level
    /// problems come back as diagnostics at the offending document.
    pub fn resolve(report: &Report) -> Result<ConfigSet, Vec<Diagnostic>> {
        let mut rate_limits = BTreeMap::new();
        let mut circuits = BTreeMap::new();
        let mut profiles = BTreeMap::new();
        let mut channels = BTreeMap::new();
        for o in &report.objects {
            match &o.object {
                Object::RateLimit(p) => {
                    rate_limits.insert(o.name.as_str(), &p.spec);
                }
                Object::Circuit(p) => {
                    circuits.insert(o.name.as_str(), &p.spec);
                }
                Object::Degradation(p) => {
                    profiles.insert(o.name.as_str(), (&p.spec, o));
                }
                Object::Tier(t) => {
                    channels.insert(o.name.as_str(), t.spec.channel);
                }
                Object::Agent(_) => {}
            }
        }
        let default_rl = RateLimitPolicySpec::default();
        let default_cb = CircuitPolicySpec::default();
        let default_dp = DegradationProfileSpec::default();
        let mut tiers = Vec::new();
        let mut errors = Vec::new();
        for o in &report.objects {
            let Object::Tier(t) = &o.object else { continue };
            let spec = &t.spec;
            let rl = spec
                .rate_limit_policy_ref
                .as_ref()
                .and_then(|r| rate_limits.get(r.name.as_str()).copied())
                .unwrap_or(&default_rl);
            let cb = spec
                .circuit_policy_ref
                .as_ref()
                .and_then(|r| circuits.get(r.name.as_str()).copied())
                .unwrap_or(&default_cb);
            let (dp, dp_doc) = match spec
                .degradation_profile_ref
                .as_ref()
                .and_then(|r| profiles.get(r.name.as_str()).copied())
            {
                Some((dp, doc)) => (dp, Some(doc)),
                None => (&default_dp, None),
            };
            let degradation = degradation_config(dp, &|name| channels.get(name).copied());
            if let Err(e) = degradation.validate() {
                let at = dp_doc.unwrap_or(o);
                for f in e.0 {
                    errors.push(at.diag(&format!("spec.{}", f.path), f.problem));
                }
                continue;
            }
            tiers.push(TierPolicy {
                name: o.name.clone(),
                spec: spec.clone(),
                limits: limits(rl),
                limiter_backend: rl.backend,
                limiter_fallback: rl.fallback,
                breaker: breaker(&cb.breaker),
                retry: retry(&cb.retry),
                per_attempt_timeout: cb.timeouts.per_attempt.get(),
                overall_timeout: cb.timeouts.overall.get(),
                bulkheads: cb
                    .bulkheads
                    .iter()
                    .map(|b| {
                        (
                            b.message_type.clone(),
                            BulkheadConfig {
                                max_concurrent: b.max_concurrent,
                                max_wait: b.max_wait.get(),
                            },
                        )
                    })
                    .collect(),
                degradation,
            });
        }
        if errors.is_empty() {
            Ok(ConfigSet { tiers })
        } else {
            Err(errors)
        }
    }

    pub fn tier(&self, name: &str) -> Option<&TierPolicy> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

fn limit(r: &RateLimit, guard: Guard) -> Limit {
    Limit {
        rate: r.rate,
        period: r.period.get(),
        burst: r.burst,
        guard,
    }
}

/// The engine's limits for a RateLimitPolicy. The global key gets
/// `guardPercent`, chat and group keys `chatGuardPercent`. A priority share of p % is
/// the global rate scaled exactly (rate × p per period × 100), burst 1.
pub fn limits(spec: &RateLimitPolicySpec) -> Limits {
    let guard = Guard::percent(spec.pacing.guard_percent);
    let chat_guard = Guard::percent(spec.pacing.chat_guard_percent);
    let global = limit(&spec.global, guard);
    let share = |pct: Option<u32>| {
        pct.filter(|p| *p < 100).map(|p| Limit {
            rate: global.rate.saturating_mul(p),
            period: global.period.saturating_mul(100),
            burst: 1,
            guard,
        })
    };
    let shares = spec.priority_shares.clone().unwrap_or_default();
    Limits {
        global,
        per_chat: Some(limit(&spec.per_chat, chat_guard)),
        per_group: Some(limit(&spec.per_group, chat_guard)),
        shares: [
            share(shares.critical),
            share(shares.high),
            share(shares.normal),
            share(shares.low),
        ],
    }
}

pub fn breaker(spec: &circuit_policy::BreakerSpec) -> BreakerConfig {
    BreakerConfig {
        window: match spec.window_type {
            WindowType::Count => Window::Count(spec.window_size),
            WindowType::Time => Window::Time(spec.window_duration.get()),
        },
        minimum_calls: spec.minimum_calls,
        failure_rate_threshold: f64::from(spec.failure_rate_threshold) / 100.0,
        slow_call_duration: spec.slow_call_duration.get(),
        slow_call_rate_threshold: f64::from(spec.slow_call_rate_threshold) / 100.0,
        open_base: spec.open_duration.get(),
        open_max: spec.max_open_duration.get(),
        half_open_probes: spec.half_open_probes,
    }
}

pub fn retry(spec: &circuit_policy::RetrySpec) -> RetryPolicy {
    use circuit_policy::{Jitter as J, RetryStrategy as S};
    RetryPolicy {
        strategy: match spec.strategy {
            S::Exponential => BackoffStrategy::Exponential,
            S::Linear => BackoffStrategy::Linear,
            S::Fixed => BackoffStrategy::Fixed,
            S::Fibonacci => BackoffStrategy::Fibonacci,
        },
        initial: spec.initial_delay.get(),
        max_delay: spec.max_delay.get(),
        multiplier: spec.multiplier,
        jitter: match spec.jitter {
            J::None => Jitter::None,
            J::Full => Jitter::Full,
            J::Equal => Jitter::Equal,
            J::Decorrelated => Jitter::Decorrelated,
        },
        max_attempts: spec.max_attempts,
        max_elapsed: spec.max_elapsed.as_ref().map(|d| d.get()),
        honour_retry_after: spec.honor_retry_after,
    }
}

fn level(name: degradation_profile::LevelName) -> Level {
    use degradation_profile::LevelName as L;
    match name {
        L::Normal => Level::Normal,
        L::Minor => Level::Minor,
        L::Moderate => Level::Moderate,
        L::Severe => Level::Severe,
        L::Critical => Level::Critical,
    }
}

/// An unset exit threshold is 80 % of its entry threshold, so every level
/// has hysteresis even when the user wrote only entries.
fn thresholds(
    entry: &degradation_profile::Thresholds,
    exit: &degradation_profile::Thresholds,
) -> (degradation::Thresholds, degradation::Thresholds) {
    let e = degradation::Thresholds {
        queue_depth: entry.queue_depth,
        oldest_age: entry.oldest_age.as_ref().map(|d| d.get()),
        error_rate: entry.error_rate_percent.map(|p| f64::from(p) / 100.0),
        p95_latency: entry.p95_latency.as_ref().map(|d| d.get()),
        open_breakers: entry.open_breakers,
    };
    let four_fifths = |d: Duration| d.mul_f64(0.8);
    let x = degradation::Thresholds {
        queue_depth: exit.queue_depth.or(e.queue_depth.map(|q| q * 4 / 5)),
        oldest_age: exit
            .oldest_age
            .as_ref()
            .map(|d| d.get())
            .or(e.oldest_age.map(four_fifths)),
        error_rate: exit
            .error_rate_percent
            .map(|p| f64::from(p) / 100.0)
            .or(e.error_rate.map(|r| r * 0.8)),
        p95_latency: exit
            .p95_latency
            .as_ref()
            .map(|d| d.get())
            .or(e.p95_latency.map(four_fifths)),
        open_breakers: exit
            .open_breakers
            .or(e.open_breakers.map(|b| b.saturating_sub(1))),
    };
    (e, x)
}

/// The engine's degradation ladder. `routeTo` naming a spool tier routes to
/// the spool; naming any other tier routes to the fallback chain.
pub fn degradation_config(
    spec: &DegradationProfileSpec,
    channel_of: &dyn Fn(&str) -> Option<Channel>,
) -> DegradationConfig {
    let levels = spec
        .levels
        .iter()
        .map(|l| {
            let (entry, exit) = thresholds(&l.entry, &l.exit);
            let a = &l.actions;
            let route = match a.route_to.as_deref() {
                None => Route::Normal,
                Some(name) if channel_of(name) == Some(Channel::Spool) => Route::Spool,
                Some(_) => Route::Fallback,
            };
            degradation::LevelSpec {
                level: level(l.level),
                entry,
                exit,
                min_dwell: spec.min_dwell.get(),
                actions: degradation::Actions {
                    shed: a
                        .shed_priorities
                        .iter()
                        .map(|p| Priority::from(*p))
                        .collect(),
                    paused_types: a.pause_message_types.clone(),
                    concurrency_factor: f64::from(a.concurrency_percent) / 100.0,
                    route,
                    refuse_ingest: a.refuse_ingest,
                    ingest_exempt: PrioritySet::EMPTY,
                    retry_after: a.retry_after.get(),
                },
            }
        })
        .collect();
    DegradationConfig { levels }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_sources;

    #[test]
    fn the_full_sample_resolves() {
        let text = include_str!("../../config/samples/full.yaml");
        let report = validate_sources([("full.yaml", text)]);
        assert_eq!(report.error_count(), 0, "{:?}", report.diagnostics);
        let set = ConfigSet::resolve(&report).expect("resolves");
        assert_eq!(set.tiers.len(), 3);
        let t = set.tier("alerts-telegram").unwrap();
        assert_eq!(t.limits.global.rate, 30);
        assert_eq!(t.limits.global.guard, Guard::percent(1));
        assert_eq!(t.breaker.failure_rate_threshold, 0.5);
        assert_eq!(t.retry.max_attempts, 5);
        assert_eq!(t.bulkheads["alert"].max_concurrent, 16);
        // Low may use half the global rate: 30 × 50 per 100 s = 15/s.
        let low = t.limits.shares[Priority::Low.index()].unwrap();
        assert_eq!((low.rate, low.period), (1500, Duration::from_secs(100)));
        let severe = &t.degradation.levels[2];
        assert_eq!(severe.actions.route, Route::Fallback);
        assert_eq!(t.degradation.levels[3].actions.route, Route::Spool);
        t.limits.validate().unwrap();
        t.breaker.validate().unwrap();
        t.retry.validate().unwrap();
    }

    #[test]
    fn engine_rules_come_back_as_diagnostics() {
        let text = "apiVersion: herald.dev/v1alpha1\nkind: DegradationProfile\nmetadata: {name: d}\nspec:\n  levels:\n    - level: MINOR\n      entry: {queueDepth: 100}\n    - level: SEVERE\n      entry: {queueDepth: 10}\n---\napiVersion: herald.dev/v1alpha1\nkind: DeliveryTier\nmetadata: {name: t}\nspec:\n  channel: spool\n  spool: {path: /tmp/x}\n  degradationProfileRef: {name: d}\n";
        let report = validate_sources([("d.yaml", text)]);
        assert_eq!(report.error_count(), 0, "{:?}", report.diagnostics);
        let errors = ConfigSet::resolve(&report).unwrap_err();
        assert!(
            errors.iter().any(|d| d
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with("spec.levels[1].entry"))),
            "{errors:?}"
        );
    }
}
