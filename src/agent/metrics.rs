//! The agent's Prometheus metrics. Every name is listed in docs/metrics.md.
//!
//! Labels are tier names, priorities, message types, outcome classes and
//! reasons from fixed vocabularies — never tokens, chat ids or message text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All agent metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub accepted: IntCounterVec,
    pub rejected: IntCounterVec,
    pub duplicates: IntCounter,
    pub attempts: IntCounterVec,
    pub delivered: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub retries: IntCounterVec,
    pub held: IntCounterVec,
    pub failovers: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGauge,
    pub oldest_age_seconds: IntGauge,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub health_score: IntGaugeVec,
    pub degradation_level: IntGauge,
    pub dead_letters: IntGauge,
    pub bulkhead_in_use: IntGaugeVec,
    pub send_seconds: HistogramVec,
    pub delivery_seconds: HistogramVec,
    pub accept_seconds: Histogram,
    pub config_reloads: IntCounterVec,
    pub fleet_agents: IntGauge,
    pub fleet_partitions: IntGauge,
    pub redis_up: IntGauge,
    pub limiter_mode: IntGaugeVec,
    pub shared_refusals: IntCounterVec,
    pub sends_repaced: IntCounterVec,
    pub shared_late_slots: IntCounterVec,
    pub spill_waiting: IntGauge,
    pub spill_messages: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
            let _ = r.register(Box::new(g.clone()));
            g
        };
        let in_flight = plain_gauge("herald_in_flight", "Sends currently in flight.");
        let oldest_age_seconds = plain_gauge(
            "herald_oldest_message_age_seconds",
            "Age of the oldest waiting message.",
        );
        let degradation_level = plain_gauge(
            "herald_degradation_level",
            "Degradation level: 0 NORMAL, 1 MINOR, 2 MODERATE, 3 SEVERE, 4 CRITICAL.",
        );
        let dead_letters = plain_gauge(
            "herald_dead_letters",
            "Dead letters held in the store, waiting for a retry or a purge.",
        );
        let fleet_agents = plain_gauge(
            "herald_fleet_agents",
            "Live agents sharing this agent's Redis queue, at the last heartbeat.",
        );
        let fleet_partitions = plain_gauge(
            "herald_fleet_partitions_held",
            "Redis queue partitions this agent holds the lease of.",
        );
        let redis_up = plain_gauge(
            "herald_redis_up",
            "1 while the last Redis call succeeded, 0 while Redis is unreachable (Redis store only).",
        );
        let spill_waiting = plain_gauge(
            "herald_spill_waiting",
            "Messages accepted into the local spill while Redis did not answer, not yet moved to Redis.",
        );
        let duplicates = IntCounter::new(
            "herald_duplicates_total",
            "Messages answered with an earlier id because of their idempotency key.",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = r.register(Box::new(duplicates.clone()));
        let accept_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_accept_seconds",
                "Time from request to durable accept.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = r.register(Box::new(accept_seconds.clone()));
        Metrics {
            accepted: counter(
                &r,
                "herald_messages_accepted_total",
                "Messages accepted durably.",
                &["tier", "priority", "source"],
            ),
            rejected: counter(
                &r,
                "herald_messages_rejected_total",
                "Messages refused at ingest.",
                &["source", "code"],
            ),
            duplicates,
            attempts: counter(
                &r,
                "herald_send_attempts_total",
                "Send attempts by tier and outcome class.",
                &["tier", "class"],
            ),
            delivered: counter(
                &r,
                "herald_messages_delivered_total",
                "Messages delivered.",
                &["tier", "priority", "message_type"],
            ),
            dead_lettered: counter(
                &r,
                "herald_messages_dead_lettered_total",
                "Messages dead-lettered.",
                &["tier", "reason"],
            ),
            rate_limited: counter(
                &r,
                "herald_rate_limited_total",
                "429 answers received from a sink.",
                &["tier"],
            ),
            retries: counter(
                &r,
                "herald_retries_scheduled_total",
                "Retries scheduled.",
                &["tier"],
            ),
            held: counter(
                &r,
                "herald_messages_held_total",
                "Messages held to wait out an outage: every tier they could take failed them with its own fault.",
                &["tier"],
            ),
            failovers: counter(
                &r,
                "herald_failovers_total",
                "Messages moved to another tier.",
                &["from", "to"],
            ),
            queue_depth: gauge(
                &r,
                "herald_queue_depth",
                "Messages waiting, by priority.",
                &["priority"],
            ),
            in_flight,
            oldest_age_seconds,
            breaker_state: gauge(
                &r,
                "herald_circuit_state",
                "Breaker state per tier: 0 closed, 1 half-open, 2 open.",
                &["tier"],
            ),
            breaker_transitions: counter(
                &r,
                "herald_circuit_transitions_total",
                "Breaker transitions.",
                &["tier", "to"],
            ),
            health_score: gauge(
                &r,
                "herald_tier_health_score",
                "Tier health score 0-100.",
                &["tier"],
            ),
            degradation_level,
            dead_letters,
            bulkhead_in_use: gauge(
                &r,
                "herald_bulkhead_in_use",
                "Bulkhead slots in use by message type.",
                &["message_type"],
            ),
            send_seconds: histogram(
                &r,
                "herald_send_seconds",
                "Duration of one send attempt.",
                &["tier"],
                LATENCY_BUCKETS.to_vec(),
            ),
            delivery_seconds: histogram(
                &r,
                "herald_delivery_seconds",
                "Time from acceptance to delivery.",
                &["tier", "priority"],
                LATENCY_BUCKETS.to_vec(),
            ),
            accept_seconds,
            config_reloads: counter(
                &r,
                "herald_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            fleet_agents,
            fleet_partitions,
            redis_up,
            limiter_mode: gauge(
                &r,
                "herald_limiter_mode",
                "1 for the limiter each tier uses now: shared (Redis), settling, local-share or paused.",
                &["tier", "mode"],
            ),
            shared_refusals: counter(
                &r,
                "herald_shared_limiter_refusals_total",
                "Sends the shared (Redis) limiter refused and put back to wait.",
                &["tier"],
            ),
            sends_repaced: counter(
                &r,
                "herald_sends_repaced_total",
                "Sends whose task started late, or right behind late ones, and waited for their turn under the tier's limits.",
                &["tier"],
            ),
            shared_late_slots: counter(
                &r,
                "herald_shared_limiter_late_slots_total",
                "Shared (Redis) slots given up because the send could have left after its slot: the agent woke late, or the decision came back slower than its usual round trip. The send asks again at once.",
                &["tier"],
            ),
            spill_waiting,
            spill_messages: counter(
                &r,
                "herald_spill_messages_total",
                "Messages through the Redis outage spill: spilled, then imported, already_there (Redis had taken it after all) or duplicate (its idempotency key was taken meanwhile).",
                &["outcome"],
            ),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::new();
        // Touch every vector so it renders.
        m.accepted.with_label_values(&["t", "normal", "api"]).inc();
        m.rejected
            .with_label_values(&["api", "invalid_field"])
            .inc();
        m.attempts.with_label_values(&["t", "transient"]).inc();
        m.delivered
            .with_label_values(&["t", "normal", "default"])
            .inc();
        m.dead_lettered.with_label_values(&["t", "permanent"]).inc();
        m.rate_limited.with_label_values(&["t"]).inc();
        m.retries.with_label_values(&["t"]).inc();
        m.failovers.with_label_values(&["a", "b"]).inc();
        m.queue_depth.with_label_values(&["normal"]).set(1);
        m.breaker_state.with_label_values(&["t"]).set(0);
        m.breaker_transitions
            .with_label_values(&["t", "open"])
            .inc();
        m.health_score.with_label_values(&["t"]).set(100);
        m.bulkhead_in_use.with_label_values(&["alert"]).set(0);
        m.send_seconds.with_label_values(&["t"]).observe(0.1);
        m.delivery_seconds
            .with_label_values(&["t", "normal"])
            .observe(0.1);
        m.config_reloads.with_label_values(&["ok"]).inc();
        m.limiter_mode.with_label_values(&["t", "shared"]).set(1);
        m.shared_refusals.with_label_values(&["t"]).inc();
        m.sends_repaced.with_label_values(&["t"]).inc();
        m.shared_late_slots.with_label_values(&["t"]).inc();
        m.spill_messages.with_label_values(&["spilled"]).inc();
        let text = m.render();
        let doc = include_str!("../../docs/metrics.md");
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        names.sort();
        assert!(names.len() >= 20, "{names:?}");
        for n in names {
            assert!(
                doc.contains(&format!("`{n}`")),
                "{n} is missing from docs/metrics.md"
            );
        }
    }
}
