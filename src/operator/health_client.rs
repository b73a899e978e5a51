//! Reading the agents' health: fetch each pod's `/healthz/details` with a
//! short timeout, reduce it to a [`Sample`], and turn consecutive samples
//! into the [`PodReport`]s the status aggregates and the per-track
//! [`Metrics`] the canary analysis compares.
//!
//! Owns the fetch and the arithmetic over cumulative counters; what the
//! figures mean is decided in `status` and `canary`. The reader is
//! tolerant: a field the agent does not send is simply unknown, never an
//! error, so agents and operator can be upgraded in any order. Invariants:
//! a counter that went backwards (the agent restarted) restarts the delta
//! from zero instead of producing a negative figure; nothing read here is
//! logged with its value (the details never carry secrets, but a URL is
//! still kept out of errors).
//!
//! The fields read from `/healthz/details` (all optional):
//!
//! ```text
//! ready                                   bool
//! dispatcher.level                        "NORMAL" … "CRITICAL"
//! dispatcher.held | dispatcher.queue_depth  messages waiting
//! dispatcher.p95_ms                       recent send p95, all tiers
//! dispatcher.tiers[]: name, breaker ("closed" | "open" | "half_open"),
//!     p95_ms, delivered, failed, rate_limited (cumulative; also accepted
//!     inside a `counters` object)
//! dependencies.<redis|telegram>.status    "ok" or anything else (down)
//! ```
//!
//! The canary analysis needs a latency figure: until the agent reports
//! `p95_ms`, every analysis reads "insufficient data" and a rollout waits
//! (it never passes without data).

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::api::degradation_profile::LevelName;

use super::canary::Metrics;
use super::healing::DependencyHealth;
use super::names::Track;
use super::status::{CircuitState, PodReport};
use super::time::elapsed;

/// One agent pod to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub uid: String,
    pub name: String,
    /// `status.podIP`.
    pub ip: String,
    pub track: Track,
}

/// Why a pod's details could not be read. Carries no URL and no body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed")]
    Connect,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the answer is not JSON")]
    Decode,
}

/// Where health details come from: HTTP in a cluster, canned in tests.
pub trait HealthSource: Send + Sync {
    fn fetch<'a>(&'a self, target: &'a PodTarget) -> BoxFuture<'a, Result<Value, HealthError>>;
}

/// Fetches `http://<podIP>:<port>/healthz/details`.
pub struct HttpHealth {
    client: reqwest::Client,
    port: u16,
    timeout: Duration,
}

impl HttpHealth {
    /// One connection pool for every pod, each request bounded by `timeout`.
    pub fn new(port: u16, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(1)
            .build()?;
        Ok(HttpHealth {
            client,
            port,
            timeout,
        })
    }
}

impl HealthSource for HttpHealth {
    fn fetch<'a>(&'a self, target: &'a PodTarget) -> BoxFuture<'a, Result<Value, HealthError>> {
        Box::pin(async move {
            // An IPv6 pod IP needs brackets in a URL.
            let host = if target.ip.contains(':') {
                format!("[{}]", target.ip)
            } else {
                target.ip.clone()
            };
            let url = format!("http://{host}:{}/healthz/details", self.port);
            let resp = self.client.get(&url).send().await.map_err(|e| {
                if e.is_timeout() {
                    HealthError::Timeout(self.timeout)
                } else {
                    HealthError::Connect
                }
            })?;
            // 503 still carries the details (a store outage is reported so).
            let status = resp.status().as_u16();
            if status != 200 && status != 503 {
                return Err(HealthError::Status(status));
            }
            resp.json::<Value>().await.map_err(|e| {
                if e.is_timeout() {
                    HealthError::Timeout(self.timeout)
                } else {
                    HealthError::Decode
                }
            })
        })
    }
}

/// Cumulative counters of one agent since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub failed: u64,
    pub rate_limited: u64,
}

impl Counters {
    /// Completed attempts.
    pub fn attempts(&self) -> u64 {
        self.delivered
            .saturating_add(self.failed)
            .saturating_add(self.rate_limited)
    }

    /// `self - earlier`, or `self` when any counter went backwards (the
    /// agent restarted, so its counters began again at zero).
    pub fn since(&self, earlier: &Counters) -> Counters {
        if self.delivered < earlier.delivered
            || self.failed < earlier.failed
            || self.rate_limited < earlier.rate_limited
        {
            return *self;
        }
        Counters {
            delivered: self.delivered - earlier.delivered,
            failed: self.failed - earlier.failed,
            rate_limited: self.rate_limited - earlier.rate_limited,
        }
    }

    fn add(&mut self, o: &Counters) {
        self.delivered = self.delivered.saturating_add(o.delivered);
        self.failed = self.failed.saturating_add(o.failed);
        self.rate_limited = self.rate_limited.saturating_add(o.rate_limited);
    }
}

/// One pod's details at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub ready: Option<bool>,
    pub counters: Counters,
    pub p95_ms: Option<u64>,
    pub queue_depth: Option<i64>,
    pub circuit: Option<CircuitState>,
    pub level: Option<LevelName>,
    pub dependencies: DependencyHealth,
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn circuit_of(s: &str) -> Option<CircuitState> {
    let norm: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match norm.as_str() {
        "closed" => Some(CircuitState::Closed),
        "open" => Some(CircuitState::Open),
        "halfopen" => Some(CircuitState::HalfOpen),
        _ => None,
    }
}

fn level_of(s: &str) -> Option<LevelName> {
    serde_json::from_value(Value::String(s.to_ascii_uppercase())).ok()
}

fn dependency_down(deps: &Value, name: &str) -> bool {
    deps.get(name)
        .and_then(|d| d.get("status"))
        .and_then(Value::as_str)
        .is_some_and(|s| s != "ok")
}

/// Read `/healthz/details` for tier `tier`: its own entry in
/// `dispatcher.tiers` when present, else the sum over every entry.
pub fn read_details(details: &Value, tier: &str, at: Timestamp) -> Sample {
    let dispatcher = details.get("dispatcher").unwrap_or(&Value::Null);
    let tiers: Vec<&Value> = dispatcher
        .get("tiers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let own: Vec<&Value> = tiers
        .iter()
        .copied()
        .filter(|t| t.get("name").and_then(Value::as_str) == Some(tier))
        .collect();
    let chosen = if own.is_empty() { tiers } else { own };

    let mut counters = Counters::default();
    let mut circuit: Option<CircuitState> = None;
    let mut p95: Option<u64> = None;
    for t in &chosen {
        // Counters sit on the tier entry itself (the agent's shape) or in a
        // `counters` object.
        let c = t.get("counters").unwrap_or(t);
        counters.add(&Counters {
            delivered: u64_at(c, "delivered").unwrap_or(0),
            failed: u64_at(c, "failed").unwrap_or(0),
            rate_limited: u64_at(c, "rate_limited").unwrap_or(0),
        });
        if let Some(s) = t
            .get("breaker")
            .and_then(Value::as_str)
            .and_then(circuit_of)
        {
            circuit = circuit.max(Some(s));
        }
        if let Some(ms) = u64_at(t, "p95_ms") {
            p95 = p95.max(Some(ms));
        }
    }
    let deps = details.get("dependencies").unwrap_or(&Value::Null);
    Sample {
        at,
        ready: details.get("ready").and_then(Value::as_bool),
        counters,
        p95_ms: p95.or_else(|| u64_at(dispatcher, "p95_ms")),
        queue_depth: dispatcher
            .get("held")
            .or_else(|| dispatcher.get("queue_depth"))
            .and_then(Value::as_i64),
        circuit,
        level: dispatcher
            .get("level")
            .and_then(Value::as_str)
            .and_then(level_of),
        dependencies: DependencyHealth {
            redis_down: dependency_down(deps, "redis"),
            telegram_down: dependency_down(deps, "telegram"),
        },
    }
}

/// What one tier remembers between passes: each pod's previous sample and
/// the counters at the start of the canary's analysis window. Lost on an
/// operator restart, which costs one pass of zero rates and one analysis
/// window restarted — never a wrong verdict.
#[derive(Clone, Debug, Default)]
pub struct HealthHistory {
    last: HashMap<String, Sample>,
    window: Option<(Timestamp, HashMap<String, Counters>)>,
}

impl HealthHistory {
    /// Reports for this pass's samples (rates and ratios over the time since
    /// each pod's previous sample), and remember the samples. Pods that did
    /// not answer this pass are forgotten.
    pub fn observe(&mut self, samples: &[(PodTarget, Sample)]) -> Vec<PodReport> {
        let mut reports = Vec::with_capacity(samples.len());
        let mut next = HashMap::with_capacity(samples.len());
        for (pod, s) in samples {
            let (delta, secs) = match self.last.get(&pod.uid) {
                Some(prev) if s.at > prev.at => (
                    s.counters.since(&prev.counters),
                    elapsed(s.at, prev.at).as_secs_f64(),
                ),
                // First sight: the ratio over the agent's lifetime, no rate.
                _ => (s.counters, 0.0),
            };
            reports.push(PodReport {
                delivered_per_second: if secs > 0.0 {
                    delta.delivered as f64 / secs
                } else {
                    0.0
                },
                delivered: delta.delivered,
                attempted: delta.attempts(),
                p95_ms: s.p95_ms,
                queue_depth: s.queue_depth,
                circuit: s.circuit,
                level: s.level,
                dependencies: s.dependencies,
            });
            next.insert(pod.uid.clone(), s.clone());
        }
        self.last = next;
        reports
    }

    /// Canary and stable figures since `window_start`. A window not seen
    /// before starts now: its baseline is these samples and both tracks read
    /// zero requests (insufficient data, never a verdict).
    pub fn window_metrics(
        &mut self,
        window_start: Timestamp,
        samples: &[(PodTarget, Sample)],
    ) -> (Metrics, Metrics) {
        let baseline = match &self.window {
            Some((start, base)) if *start == window_start => base,
            _ => {
                self.anchor(window_start, samples);
                return (Metrics::default(), Metrics::default());
            }
        };
        let mut out = [Metrics::default(), Metrics::default()];
        for (pod, s) in samples {
            // A pod born inside the window counts from zero.
            let delta = baseline
                .get(&pod.uid)
                .map_or(s.counters, |b| s.counters.since(b));
            let m = &mut out[usize::from(pod.track == Track::Stable)];
            m.requests = m.requests.saturating_add(delta.attempts());
            m.errors = m.errors.saturating_add(delta.failed);
            m.rate_limited_429 = m.rate_limited_429.saturating_add(delta.rate_limited);
            m.p95_ms = m.p95_ms.max(s.p95_ms);
        }
        let [canary, stable] = out;
        (canary, stable)
    }

    /// Start a window at `start` unless it is the one already kept.
    pub fn anchor(&mut self, start: Timestamp, samples: &[(PodTarget, Sample)]) {
        if self.window.as_ref().is_some_and(|(s, _)| *s == start) {
            return;
        }
        let base = samples
            .iter()
            .map(|(p, s)| (p.uid.clone(), s.counters))
            .collect();
        self.window = Some((start, base));
    }

    /// Forget the window (no rollout underway).
    pub fn clear_window(&mut self) {
        self.window = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::time::ts;
    use serde_json::json;

    fn target(uid: &str, track: Track) -> PodTarget {
        PodTarget {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            ip: "10.0.0.1".into(),
            track,
        }
    }

    fn details(delivered: u64, failed: u64, limited: u64) -> Value {
        json!({
            "ready": true,
            "dispatcher": {
                "level": "minor",
                "held": 12,
                "tiers": [
                    {"name": "alerts", "breaker": "half_open", "p95_ms": 180,
                     "counters": {"sent": 999, "delivered": delivered, "failed": failed, "rate_limited": limited}},
                    {"name": "spool", "breaker": "closed",
                     "counters": {"delivered": 5000, "failed": 0, "rate_limited": 0}}
                ]
            },
            "dependencies": {"store": {"status": "ok"}, "redis": {"status": "error", "error": "refused"}}
        })
    }

    #[test]
    fn details_are_read_for_the_named_tier() {
        let s = read_details(&details(100, 2, 1), "alerts", ts(10));
        assert_eq!(
            s.counters,
            Counters {
                delivered: 100,
                failed: 2,
                rate_limited: 1
            }
        );
        assert_eq!(s.circuit, Some(CircuitState::HalfOpen));
        assert_eq!(s.level, Some(LevelName::Minor));
        assert_eq!(s.queue_depth, Some(12));
        assert_eq!(s.p95_ms, Some(180));
        assert!(s.dependencies.redis_down);
        assert!(!s.dependencies.telegram_down);
        // An unknown name sums every tier.
        let all = read_details(&details(100, 2, 1), "other", ts(10));
        assert_eq!(all.counters.delivered, 5100);
        assert_eq!(all.circuit, Some(CircuitState::HalfOpen));
    }

    #[test]
    fn the_agents_flat_tier_entries_are_read() {
        // The shape `herald agent` serves today (src/agent/dispatch_loop.rs).
        let v = json!({
            "ready": true,
            "dispatcher": {"level": "NORMAL", "held": 3, "tiers": [{
                "name": "alerts", "sink": "telegram", "breaker": "half-open",
                "sent": 20, "delivered": 17, "failed": 2, "rate_limited": 1,
                "failed_over": 0, "dead_lettered": 0}]},
            "dependencies": {"store": {"status": "ok"}},
        });
        let s = read_details(&v, "alerts", ts(1));
        assert_eq!(
            s.counters,
            Counters {
                delivered: 17,
                failed: 2,
                rate_limited: 1
            }
        );
        assert_eq!(s.circuit, Some(CircuitState::HalfOpen));
        assert_eq!(s.queue_depth, Some(3));
        assert_eq!(s.p95_ms, None);
    }

    #[test]
    fn missing_fields_are_unknown_not_errors() {
        for v in [
            json!(null),
            json!({}),
            json!({"dispatcher": {"status": "unavailable"}}),
        ] {
            let s = read_details(&v, "t", ts(1));
            assert_eq!(s.counters, Counters::default());
            assert_eq!(s.circuit, None);
            assert_eq!(s.level, None);
            assert_eq!(s.queue_depth, None);
            assert!(!s.dependencies.any_down());
        }
    }

    #[test]
    fn reports_are_deltas_and_survive_an_agent_restart() {
        let mut h = HealthHistory::default();
        let pod = target("u1", Track::Stable);
        let first = h.observe(&[(
            pod.clone(),
            read_details(&details(100, 0, 0), "alerts", ts(0)),
        )]);
        assert_eq!(first[0].delivered_per_second, 0.0);
        assert_eq!(first[0].delivered, 100);
        let second = h.observe(&[(
            pod.clone(),
            read_details(&details(160, 4, 0), "alerts", ts(30)),
        )]);
        assert_eq!(second[0].delivered, 60);
        assert_eq!(second[0].attempted, 64);
        assert!((second[0].delivered_per_second - 2.0).abs() < 1e-9);
        // The agent restarted: counters began again.
        let third = h.observe(&[(pod, read_details(&details(10, 0, 0), "alerts", ts(60)))]);
        assert_eq!(third[0].delivered, 10);
    }

    #[test]
    fn window_metrics_split_tracks_and_start_at_zero() {
        let mut h = HealthHistory::default();
        let c = target("c", Track::Canary);
        let s = target("s", Track::Stable);
        let at = |t, cd, cf, sd| {
            vec![
                (
                    c.clone(),
                    read_details(&details(cd, cf, 1), "alerts", ts(t)),
                ),
                (s.clone(), read_details(&details(sd, 0, 0), "alerts", ts(t))),
            ]
        };
        let (canary, stable) = h.window_metrics(ts(0), &at(0, 10, 1, 100));
        assert_eq!(canary.requests, 0);
        assert_eq!(stable.requests, 0);
        let (canary, stable) = h.window_metrics(ts(0), &at(60, 50, 3, 300));
        assert_eq!(canary.requests, 42);
        assert_eq!(canary.errors, 2);
        assert_eq!(canary.rate_limited_429, 0);
        assert_eq!(canary.p95_ms, Some(180));
        assert_eq!(stable.requests, 200);
        // A new window starts from the counters of the moment it began.
        h.anchor(ts(60), &at(60, 50, 3, 300));
        let (canary, _) = h.window_metrics(ts(60), &at(90, 80, 3, 300));
        assert_eq!(canary.requests, 30);
    }
}
