//! The operator's own Prometheus metrics, and the small HTTP server that
//! serves them with `/healthz` and `/readyz`.
//!
//! Owns metric names and the drop guard that times every reconcile; the
//! controller decides when to count. Labels come from fixed vocabularies —
//! [`Error::metric_label`](super::error::Error::metric_label) and the
//! phase names of [`status::phases`](super::status::phases) — never from a
//! tier's name or spec, so cardinality does not grow with the cluster.
//! Every name is listed in docs/metrics.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, HistogramTimer, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::error::Error;
use super::status::phases;

/// Prefix of every operator metric.
pub const PREFIX: &str = "herald_operator";

/// Every phase `tiers_by_phase` reports, so a phase with no tier reads 0
/// instead of vanishing.
pub const PHASES: [&str; 5] = [
    phases::PENDING,
    phases::PROGRESSING,
    phases::READY,
    phases::DEGRADED,
    phases::FAILED,
];

/// The operator's metrics, in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Reconciles that failed, by error label.
    pub failures: IntCounterVec,
    /// Wall time of each reconcile, every exit path included.
    pub duration: Histogram,
    /// Tiers per `status.phase`.
    pub tiers_by_phase: IntGaugeVec,
    /// Events published, by type (Normal, Warning).
    pub events: IntCounterVec,
    /// Pods the operator restarted through the Eviction API.
    pub restarts: IntCounter,
    /// Status writes (tiers and policies), by kind.
    pub status_writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease (or runs without one).
    pub leader: IntGauge,
    /// Canary rollouts aborted, by analysis or by hand. Without a tier
    /// label: the tier's `RolloutAborted` condition names it.
    pub rollouts_aborted: IntCounter,
}

/// Seconds; reconciles are mostly API round trips, with the agents' health
/// fetches bounded by their own timeout.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some(PREFIX.to_owned()), None)
            .unwrap_or_else(|e| unreachable!("the prefix is statically valid: {e}"));
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "Wall time of one DeliveryTier reconcile.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("histogram is statically valid: {e}"));
        let _ = r.register(Box::new(duration.clone()));
        let tiers_by_phase = IntGaugeVec::new(
            Opts::new("tiers_by_phase", "DeliveryTiers per status.phase."),
            &["phase"],
        )
        .unwrap_or_else(|e| unreachable!("gauge is statically valid: {e}"));
        let _ = r.register(Box::new(tiers_by_phase.clone()));
        for p in PHASES {
            tiers_by_phase.with_label_values(&[p]).set(0);
        }
        let leader = IntGauge::new(
            "leader",
            "1 while this replica holds the leader Lease (or runs without election).",
        )
        .unwrap_or_else(|e| unreachable!("gauge is statically valid: {e}"));
        let _ = r.register(Box::new(leader.clone()));
        Metrics {
            reconciles: counter(&r, "reconciles_total", "DeliveryTier reconciles started."),
            failures: counter_vec(
                &r,
                "reconcile_errors_total",
                "DeliveryTier reconciles that failed, by error class.",
                &["error"],
            ),
            duration,
            tiers_by_phase,
            events: counter_vec(
                &r,
                "events_total",
                "Kubernetes Events published, by type.",
                &["type"],
            ),
            restarts: counter(
                &r,
                "pod_restarts_total",
                "Agent pods evicted by self-healing.",
            ),
            status_writes: counter_vec(
                &r,
                "status_writes_total",
                "Status subresource writes, by kind.",
                &["kind"],
            ),
            leader,
            rollouts_aborted: counter(
                &r,
                "rollouts_aborted_total",
                "Canary rollouts aborted, by analysis or by hand.",
            ),
            registry: r,
        }
    }

    /// Count a reconcile and time it until the guard drops.
    pub fn count_and_measure(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            _timer: self.duration.start_timer(),
        }
    }

    /// Count a failed reconcile.
    pub fn reconcile_failure(&self, error: &Error) {
        self.failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }

    /// Set `tiers_by_phase` from a count per phase; phases not named read 0.
    pub fn set_phases(&self, counts: &HashMap<&'static str, i64>) {
        for p in PHASES {
            let n = counts.get(p).copied().unwrap_or(0);
            self.tiers_by_phase.with_label_values(&[p]).set(n);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Records a reconcile's duration when dropped, whatever path it left by.
pub struct ReconcileTimer {
    _timer: HistogramTimer,
}

/// What `/readyz` answers: ready once the operator checked its CRDs and
/// either leads with warm caches or stands by for the Lease.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    ready: Readiness,
}

/// `/metrics`, `/healthz` and `/readyz` on one router.
pub fn router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, ready })
}

async fn render_metrics(State(s): State<ServerState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(s): State<ServerState>) -> Response {
    if s.ready.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// Serve `router` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::index::RefKind;

    #[test]
    fn failures_are_labelled_by_class_never_by_name() {
        let m = Metrics::new();
        m.reconcile_failure(&Error::MissingReference {
            kind: RefKind::Secret,
            name: "tier-with-a-secret-name".into(),
            field: "spec.telegram.tokenSecretRef.name".into(),
        });
        m.reconcile_failure(&Error::Timeout(std::time::Duration::from_secs(1)));
        let text = m.render();
        assert!(
            text.contains("herald_operator_reconcile_errors_total{error=\"missing_reference\"} 1")
        );
        assert!(text.contains("herald_operator_reconcile_errors_total{error=\"timeout\"} 1"));
        assert!(!text.contains("tier-with-a-secret-name"));
    }

    #[test]
    fn the_guard_times_every_exit_path() {
        let m = Metrics::new();
        {
            let _t = m.count_and_measure();
        }
        fn failing(m: &Metrics) -> Result<(), ()> {
            let _t = m.count_and_measure();
            Err(())
        }
        let r = failing(&m);
        assert!(r.is_err());
        let text = m.render();
        assert!(text.contains("herald_operator_reconciles_total 2"));
        assert!(text.contains("herald_operator_reconcile_duration_seconds_count 2"));
    }

    #[test]
    fn every_phase_is_reported_even_at_zero() {
        let m = Metrics::new();
        m.set_phases(&HashMap::from([(phases::READY, 3), (phases::FAILED, 1)]));
        let text = m.render();
        for p in PHASES {
            assert!(
                text.contains(&format!("herald_operator_tiers_by_phase{{phase=\"{p}\"}}")),
                "{p}"
            );
        }
        assert!(text.contains("herald_operator_tiers_by_phase{phase=\"Ready\"} 3"));
        assert!(text.contains("herald_operator_tiers_by_phase{phase=\"Pending\"} 0"));
    }

    #[tokio::test]
    async fn the_server_answers_health_and_metrics() {
        let m = Metrics::new();
        let ready = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(m.clone(), ready.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        ready.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("herald_operator_leader"));
        server.abort();
    }
}
