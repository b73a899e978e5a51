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
use serde_json::json;
use tokio::sync::oneshot;

use crate::agent::state::{AppState, DispatchCmd};
use crate::store::Store;

pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
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

pub async fn details(State(state): State<Arc<AppState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    let snapshot = match state.dispatch.send(DispatchCmd::Snapshot(tx)).await {
        Ok(()) => tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    let stats = state.store.stats().await;
    let store = match &stats {
        Ok(s) => json!({"status": "ok", "pending_by_priority": {
            "critical": s.pending_by_priority[0], "high": s.pending_by_priority[1],
            "normal": s.pending_by_priority[2], "low": s.pending_by_priority[3]},
            "in_flight": s.in_flight, "dead": s.dead}),
        Err(e) => json!({"status": "error", "error": e.to_string()}),
    };
    let body = json!({
        "ready": state.is_ready(),
        "dispatcher": snapshot.unwrap_or_else(|| json!({"status": "unavailable"})),
        "dependencies": {"store": store},
    });
    let code = if stats.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
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
