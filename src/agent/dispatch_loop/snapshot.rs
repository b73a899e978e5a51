//! What the loop tells the rest of the agent every tick: metrics, the
//! ingest gate degradation asks for, and the `/healthz/details` JSON.

use std::collections::HashMap;

use serde_json::json;

use crate::agent::metrics::Metrics;
use crate::agent::state::{AppState, IngestGate};
use crate::engine::dispatch::{Event, Snapshot};
use crate::engine::{Instant, Priority};

use super::DispatchLoop;

impl DispatchLoop {
    pub(super) fn publish(&self, snap: &Snapshot) {
        if let Some(m) = self.state.metrics() {
            publish_metrics(m, snap);
        }
        // Ask the degrader per priority; "default" stands for any type that
        // is not paused by name.
        let mut gate = IngestGate {
            level: snap.level.as_str().to_owned(),
            retry_after_secs: 1,
            ..IngestGate::default()
        };
        let mut refused = 0;
        for p in Priority::ALL {
            if let Err(r) = self.d.admits_ingest(p, "default") {
                refused += 1;
                gate.shed.push(p);
                gate.retry_after_secs = gate.retry_after_secs.max(r.retry_after.as_secs());
            }
        }
        gate.refuse_all = refused == Priority::ALL.len();
        if let Ok(mut g) = self.state.ingest_gate.write() {
            *g = gate;
        }
    }

    pub(super) fn snapshot_json(&self) -> serde_json::Value {
        let now = self.now();
        let s = self.d.snapshot(now);
        let ms = |i: Option<Instant>| i.map(|i| i.since(now).as_millis() as u64);
        json!({
            "level": s.level.as_str(),
            "level_override": s.override_level.map(|(l, _)| l.as_str()),
            "held": s.held,
            "in_flight": s.in_flight,
            "set_aside": s.set_aside,
            "queue_by_priority": {
                "critical": s.queued_by_priority[0], "high": s.queued_by_priority[1],
                "normal": s.queued_by_priority[2], "low": s.queued_by_priority[3]},
            "oldest_age_ms": s.oldest_age.map(|d| d.as_millis() as u64),
            "tiers": s.tiers.iter().enumerate().map(|(i, t)| json!({
                "name": t.name,
                "limiter": self.limits.get(i).filter(|_| self.fleet.is_some()).map_or("local", |l| l.mode.as_str()),
                "sink": t.sink.as_str(),
                "breaker": t.breaker.as_str(),
                "open_for_ms": ms(t.open_until),
                "stopped": t.stopped,
                "health_score": t.health_score,
                "health_floor": t.health_floor,
                "success_ewma": t.ewma,
                "p95_ms": t.p95.map(|d| d.as_millis() as u64),
                "in_flight": t.in_flight,
                "unreachable_chats": t.unreachable_chats,
                "paused_for_ms": ms(t.paused_until),
                "sent": t.counters.sent,
                "delivered": t.counters.delivered,
                "failed": t.counters.failed,
                "rate_limited": t.counters.rate_limited,
                "failed_over": t.counters.failed_over,
                "dead_lettered": t.counters.dead_lettered,
                "held": t.counters.held,
            })).collect::<Vec<_>>(),
        })
    }
}

fn publish_metrics(m: &Metrics, snap: &Snapshot) {
    for p in Priority::ALL {
        m.queue_depth
            .with_label_values(&[p.as_str()])
            .set(i64::try_from(snap.queued_by_priority[p.index()]).unwrap_or(i64::MAX));
    }
    m.oldest_age_seconds
        .set(snap.oldest_age.map(|d| d.as_secs() as i64).unwrap_or(0));
    m.degradation_level.set(snap.level.index() as i64);
    for t in &snap.tiers {
        let state = match t.breaker.as_str() {
            "closed" => 0,
            "half-open" | "half_open" => 1,
            _ => 2,
        };
        m.breaker_state.with_label_values(&[&t.name]).set(state);
        m.health_score
            .with_label_values(&[&t.name])
            .set(i64::from(t.health_score));
    }
    // A type's slots across tiers; bounded types report 0 when idle so a
    // dashboard shows a line, not a gap.
    let mut in_use: HashMap<&str, i64> = HashMap::new();
    for t in &snap.tiers {
        for (ty, used, _) in &t.bulkheads {
            *in_use.entry(ty.as_str()).or_default() += i64::from(*used);
        }
    }
    for (ty, used) in in_use {
        m.bulkhead_in_use.with_label_values(&[ty]).set(used);
    }
}

pub(super) fn log_event(state: &AppState, e: &Event) {
    match e {
        Event::Breaker {
            tier_name,
            chat,
            transition,
            ..
        } => {
            if chat.is_none()
                && let Some(m) = state.metrics()
            {
                m.breaker_transitions
                    .with_label_values(&[tier_name, transition.to.as_str()])
                    .inc();
            }
            tracing::warn!(tier = %tier_name, chat_scoped = chat.is_some(), from = transition.from.as_str(), to = transition.to.as_str(), "circuit breaker transition");
        }
        Event::Level(change) => {
            tracing::warn!(
                from = change.from.as_str(),
                to = change.to.as_str(),
                "degradation level changed"
            );
        }
        other => tracing::warn!(event = ?other, "dispatcher event"),
    }
}
