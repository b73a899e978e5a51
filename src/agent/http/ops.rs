//! Health, readiness, details and metrics.
//!
//! `/healthz`: the process serves HTTP (liveness). `/readyz`: the agent
//! accepts messages (store open, not draining). `/healthz/details`: per-tier
//! state from the dispatch loop, as JSON.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::agent::state::{AppState, DispatchCmd};
use crate::policy::effective::TierLimits;
use crate::store::Store;

pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        let mut body = json!({"status": "ready", "store": state.store.kind()});
        // Still ready while Redis is away: what it already holds is sent
        // within its local share, and ingest accepts into the spill.
        if let Some(spill) = state.store.spill() {
            body["ingest"] = json!(if spill.spilling().await {
                "spill"
            } else {
                "redis"
            });
            body["spill_waiting"] = json!(spill.waiting());
        }
        if let Some(f) = &state.fleet {
            body["redis"] = json!(f.link_state());
            // The entry tier's mode, as the dispatch loop derives it:
            // `paused` when its policy's fallback says so.
            let config = state.config();
            let mode = config.tier(&config.entry_tier).map(|t| {
                TierLimits::now(
                    t.policy.limits,
                    t.policy.limiter_backend,
                    t.policy.limiter_fallback,
                    Some(f.link()),
                )
                .mode
            });
            body["limiter"] = json!(mode.map_or("local-share", |m| m.as_str()));
        }
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let why = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            "draining"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": why})),
        )
            .into_response()
    }
}

/// How long `/healthz/details` waits for the store's counters.
const STORE_STATS_WAIT: Duration = Duration::from_millis(800);

pub async fn details(State(state): State<Arc<AppState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    let snapshot = match state.dispatch.send(DispatchCmd::Snapshot(tx)).await {
        Ok(()) => tokio::time::timeout(Duration::from_millis(800), rx)
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    // Bounded well inside the operator's health timeout (2 s): a Redis
    // whose connection hangs would otherwise hold this answer for a whole
    // command timeout, and the operator would read "no health report"
    // instead of "Redis is down".
    let stats = match tokio::time::timeout(STORE_STATS_WAIT, state.store.stats()).await {
        Ok(stats) => stats,
        Err(_) => Err(crate::store::StoreError::Unavailable(format!(
            "the store did not answer within {} ms",
            STORE_STATS_WAIT.as_millis()
        ))),
    };
    let store = match &stats {
        Ok(s) => json!({"status": "ok", "pending_by_priority": {
            "critical": s.pending_by_priority[0], "high": s.pending_by_priority[1],
            "normal": s.pending_by_priority[2], "low": s.pending_by_priority[3]},
            "in_flight": s.in_flight, "dead": s.dead}),
        Err(e) => json!({"status": "error", "error": e.to_string()}),
    };
    let mut dependencies = json!({"store": store});
    if let Some(telegram) = snapshot.as_ref().and_then(telegram_health) {
        dependencies["telegram"] = telegram;
    }
    let mut body = json!({
        "ready": state.is_ready(),
        "dispatcher": snapshot.unwrap_or_else(|| json!({"status": "unavailable"})),
        "dependencies": dependencies,
    });
    if let Some(f) = &state.fleet {
        // A shared dependency: the operator must not restart pods for it.
        body["dependencies"]["redis"] = if f.connected() {
            json!({"status": "ok", "link": f.link_state()})
        } else {
            json!({"status": "down", "link": f.link_state(), "reason": "Redis does not answer; sending within this agent's local share, accepting into the spill"})
        };
        if let Some(spill) = state.store.spill() {
            body["dependencies"]["redis"]["spill"] = json!({
                "accepting": spill.spilling().await,
                "waiting": spill.waiting(),
            });
        }
        body["fleet"] = json!({
            "agent": f.store.agent_id(),
            "live_agents": f.live(),
            "partitions_held": f.held(),
            "partitions": f.store.partitions(),
            "limit_divisor": f.divisor(),
        });
    }
    let code = if stats.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Telegram as a shared dependency: down when every Telegram tier's breaker
/// is open or the tier is stopped — the API, not this pod, is failing, so
/// the operator must not restart pods for it. `None` without Telegram tiers.
fn telegram_health(snapshot: &Value) -> Option<Value> {
    let tiers: Vec<&Value> = snapshot
        .get("tiers")?
        .as_array()?
        .iter()
        .filter(|t| t.get("sink").and_then(Value::as_str) == Some("telegram"))
        .collect();
    if tiers.is_empty() {
        return None;
    }
    let failing = |t: &&Value| {
        t.get("breaker").and_then(Value::as_str) == Some("open")
            || t.get("stopped").is_some_and(|s| !s.is_null())
    };
    Some(if tiers.iter().all(failing) {
        json!({"status": "down", "reason": "every Telegram tier has its circuit open or is stopped"})
    } else {
        json!({"status": "ok"})
    })
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(m) = state.metrics() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "metrics_disabled", "field": "spec.metrics.enabled", "message": "metrics are switched off in this agent's config"}})),
        )
            .into_response();
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": {"code": "not_found", "field": "", "message": "no such route"}}),
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(name: &str, sink: &str, breaker: &str) -> Value {
        json!({"name": name, "sink": sink, "breaker": breaker, "stopped": null})
    }

    #[test]
    fn telegram_is_down_only_when_every_telegram_tier_fails() {
        let snap = |tiers: Vec<Value>| json!({ "tiers": tiers });
        let status = |v: Option<Value>| v.map(|v| v["status"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            status(telegram_health(&snap(vec![tier("a", "webhook", "open")]))),
            None
        );
        assert_eq!(
            status(telegram_health(&snap(vec![
                tier("a", "telegram", "open"),
                tier("b", "telegram", "half_open"),
                tier("w", "webhook", "open"),
            ]))),
            Some("ok".into())
        );
        let mut stopped = tier("b", "telegram", "closed");
        stopped["stopped"] = json!("unauthorized");
        assert_eq!(
            status(telegram_health(&snap(vec![
                tier("a", "telegram", "open"),
                stopped
            ]))),
            Some("down".into())
        );
    }
}
