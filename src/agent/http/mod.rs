//! The agent's HTTP surface, one router: native ingest (`/v1/messages`),
//! the Bot API drop-in (`/bot<token>/<method>`), health and metrics, and
//! the admin API under `/admin` (bearer token). `server` is the accept
//! loop in front of it (connection cap, header timeout), `edge` what every
//! request passes through (body deadline, JSON for every refusal).

pub mod admin;
pub mod botapi;
pub mod edge;
pub mod native;
pub mod ops;
pub mod server;
pub mod stand_in;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

use crate::agent::state::AppState;

/// Build the router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config().agent.ingest.max_body_bytes as usize;
    Router::new()
        .route("/v1/messages", post(native::accept))
        .route("/v1/messages/{id}", get(native::status))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/healthz/details", get(ops::details))
        .route("/metrics", get(ops::metrics))
        .nest("/admin", admin::router(state.clone()))
        .route("/{bot_path}/{method}", any(botapi::handle))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::layer,
        ))
        .with_state(state)
}
