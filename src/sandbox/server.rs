//! The sandbox's HTTP face: the Bot API routes and the `/sandbox/*` control
//! routes, on axum.
//!
//! Owns routing, latency sleeps, body reading and turning answers into HTTP.
//! Leaves every decision to `state`.
//!
//! Routes:
//! - `ANY /bot<token>/<method>`: getMe, sendMessage, sendPhoto, sendDocument;
//!   any other method or path is `404 {"ok":false,"error_code":404,...}`.
//! - `GET /sandbox/counters`: `Counters` as JSON.
//! - `GET /sandbox/messages?since=N`: `{"messages":[..],"last_seq":M}`,
//!   delivered messages with `seq > N` (default 0) in arrival order.
//! - `POST /sandbox/reset`: forget traffic, keep faults.
//! - `GET /sandbox/faults`, `POST /sandbox/faults` (a `FaultsConfig` JSON
//!   body, replacing the current faults whole).
//!
//! Invariant: the arrival instant is read under the state lock, after the
//! injected latency and after the body has been read, so the judge sees
//! arrivals in order. Control routes are never dark, slowed or failed.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::faults::FaultsConfig;
use super::params;
use super::reply::Reply;
use super::state::Shared;

type AppState = Arc<Shared>;

pub fn router(shared: AppState) -> Router {
    let max_body = shared.max_body_bytes();
    Router::new()
        .route("/sandbox/counters", get(counters))
        .route("/sandbox/messages", get(messages))
        .route("/sandbox/reset", post(reset))
        .route("/sandbox/faults", get(get_faults).post(set_faults))
        .route("/{bot}/{method}", any(bot_api))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared)
}

async fn bot_api(
    State(shared): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> Response {
    let Ok(Path((bot, method))) = path else {
        return Reply::not_found().into_response();
    };
    let latency = shared.lock().latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let params = params::read(req, shared.max_body_bytes()).await;
    let reply = shared.lock().answer(Instant::now(), &bot, &method, params);
    // The first path segment carries the token: it is never logged.
    tracing::debug!(%method, status = reply.status, "sandbox bot api request");
    reply.into_response()
}

async fn not_found() -> Response {
    Reply::not_found().into_response()
}

async fn counters(State(shared): State<AppState>) -> Response {
    axum::Json(shared.lock().counters()).into_response()
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn messages(
    State(shared): State<AppState>,
    query: Result<Query<Since>, QueryRejection>,
) -> Response {
    let Ok(Query(Since { since })) = query else {
        return Reply::bad_request("since must be a non-negative integer").into_response();
    };
    let messages = shared.lock().messages_since(since);
    let last_seq = messages.last().map_or(since, |m| m.seq);
    axum::Json(json!({ "messages": messages, "last_seq": last_seq })).into_response()
}

async fn reset(State(shared): State<AppState>) -> Response {
    shared.lock().reset(Instant::now());
    axum::Json(json!({ "ok": true })).into_response()
}

async fn get_faults(State(shared): State<AppState>) -> Response {
    axum::Json(shared.lock().faults().clone()).into_response()
}

async fn set_faults(State(shared): State<AppState>, body: Bytes) -> Response {
    let faults: FaultsConfig = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return Reply::bad_request(&format!("invalid faults: {e}")).into_response(),
    };
    let result = shared.lock().set_faults(faults.clone(), Instant::now());
    match result {
        Ok(()) => axum::Json(json!({ "ok": true, "faults": faults })).into_response(),
        Err(e) => Reply::bad_request(&e.to_string()).into_response(),
    }
}
