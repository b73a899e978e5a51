//! The admin API under `/admin`, behind `Authorization: Bearer <token>`
//! (or `X-Herald-Admin-Token: <token>`, which passes the Kubernetes API
//! server's service proxy).
//! Off (404) when no admin token is configured; a missing or wrong token is
//! 401 and the answer never hints at the token. The scheme is matched
//! without regard to case (`bearer` works), as RFC 7235 says. A bad query
//! parameter is refused in herald's error shape, naming it.
//!
//! Routes: `POST /breaker/{tier}/reset`, `POST /degradation` (`{"level":..}`),
//! `DELETE /degradation`, `GET /dlq`, `POST /dlq/retry`, `POST /dlq/purge`
//! (`{"id":..}` or `{"reason":..,"bot":..}` or `{"all":true}`), `GET /report`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::agent::config::constant_time_eq;
use crate::agent::http::native::message_json;
use crate::agent::ingest::IngestError;
use crate::agent::state::{AppState, DispatchCmd};
use crate::api::agent::ADMIN_TOKEN_HEADER;
use crate::store::{DeadFilter, DeadSelection, MessageId, Store};

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/breaker/{tier}/reset", post(reset_breaker))
        .route("/degradation", post(set_degradation))
        .route("/degradation", delete(clear_degradation))
        .route("/dlq", get(list_dead))
        .route("/dlq/retry", post(retry_dead))
        .route("/dlq/purge", post(purge_dead))
        .route("/report", get(report))
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let config = state.config();
    let Some(token) = config.admin_token.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is off: set adminTokenRef",
        );
    };
    let headers = req.headers();
    // `X-Herald-Admin-Token` is for `--tier` calls through the Kubernetes
    // API server's proxy, which keeps `Authorization` for its own login.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| {
            headers
                .get(ADMIN_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// case does not matter.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "field": "", "message": message}})),
    )
        .into_response()
}

async fn ask<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> DispatchCmd,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    state.dispatch.send(make(tx)).await.ok()?;
    tokio::time::timeout(std::time::Duration::from_secs(5), rx)
        .await
        .ok()?
        .ok()
}

async fn reset_breaker(State(state): State<Arc<AppState>>, Path(tier): Path<String>) -> Response {
    match ask(&state, |tx| DispatchCmd::ResetBreaker(tier.clone(), tx)).await {
        Some(Ok(())) => axum::Json(json!({"tier": tier, "breaker": "closed"})).into_response(),
        Some(Err(e)) => IngestError::invalid("tier", e)
            .with_status(StatusCode::NOT_FOUND, "not_found")
            .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the dispatcher did not answer",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    level: String,
}

async fn set_degradation(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let parsed: Result<LevelBody, _> = serde_json::from_slice(&body);
    let Ok(b) = parsed else {
        return IngestError::invalid(
            "level",
            "send {\"level\": \"NORMAL|MINOR|MODERATE|SEVERE|CRITICAL\"}",
        )
        .into_response();
    };
    match ask(&state, |tx| DispatchCmd::Degrade(Some(b.level.clone()), tx)).await {
        Some(Ok(())) => axum::Json(json!({"level": b.level, "override": true})).into_response(),
        Some(Err(e)) => IngestError::invalid("level", e).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the dispatcher did not answer",
        ),
    }
}

async fn clear_degradation(State(state): State<Arc<AppState>>) -> Response {
    match ask(&state, |tx| DispatchCmd::Degrade(None, tx)).await {
        Some(Ok(())) => axum::Json(json!({"override": false})).into_response(),
        Some(Err(e)) => IngestError::invalid("level", e).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the dispatcher did not answer",
        ),
    }
}

/// `GET /dlq`'s query: `bot`, `reason`, `limit` (at most 1000 are
/// listed), `after` (a message id), each at most once.
fn filter_of(query: Option<&str>) -> Result<DeadFilter, IngestError> {
    let mut filter = DeadFilter {
        bot: None,
        reason_contains: None,
        limit: None,
        after: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            return Err(IngestError::invalid(
                name.into_owned(),
                "given more than once",
            ));
        }
        seen.push(name.clone().into_owned());
        match name.as_ref() {
            "bot" => filter.bot = Some(value.into_owned()),
            "reason" => filter.reason_contains = Some(value.into_owned()),
            "limit" => {
                let n = value.parse::<usize>().map_err(|_| {
                    IngestError::invalid("limit", "must be a whole number from 0 to 1000")
                })?;
                filter.limit = Some(n);
            }
            "after" => {
                filter.after = Some(
                    value
                        .parse::<MessageId>()
                        .map_err(|_| IngestError::invalid("after", "not a message id"))?,
                );
            }
            other => return Err(IngestError::unknown(other)),
        }
    }
    filter.limit = Some(filter.limit.unwrap_or(100).min(1000));
    Ok(filter)
}

async fn list_dead(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let filter = match filter_of(q.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match state.store.list_dead(filter).await {
        Ok(list) => {
            axum::Json(json!({"dead_letters": list.iter().map(message_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    id: Option<String>,
    bot: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    all: bool,
}

fn selection(body: &Bytes) -> Result<DeadSelection, IngestError> {
    let b: SelectionBody = serde_json::from_slice(body).map_err(|e| {
        IngestError::invalid(
            "",
            format!("send {{\"id\":..}}, {{\"reason\":..}} or {{\"all\":true}}: {e}"),
        )
    })?;
    match (b.id, b.all, b.bot.is_some() || b.reason.is_some()) {
        (Some(id), false, false) => {
            Ok(DeadSelection::One(id.parse().map_err(|_| {
                IngestError::invalid("id", "not a message id")
            })?))
        }
        (None, true, false) => Ok(DeadSelection::All),
        (None, false, true) => Ok(DeadSelection::Filter(DeadFilter {
            bot: b.bot,
            reason_contains: b.reason,
            limit: None,
            after: None,
        })),
        _ => Err(IngestError::invalid(
            "",
            "give exactly one of id, all, or a filter (bot/reason)",
        )),
    }
}

async fn retry_dead(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let sel = match selection(&body) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ids = match state.store.retry_dead(sel).await {
        Ok(ids) => ids,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            );
        }
    };
    let mut requeued = Vec::new();
    for id in &ids {
        if let Ok(Some(m)) = state.store.get(*id).await {
            requeued.push(m);
        }
    }
    // On Redis the revived messages reach their partition's holder
    // through the feed.
    if state.store.enqueues_locally() {
        let _ = state.dispatch.send(DispatchCmd::Enqueue(requeued)).await;
    }
    axum::Json(json!({"requeued": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()}))
        .into_response()
}

async fn purge_dead(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let sel = match selection(&body) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match state.store.purge_dead(sel).await {
        Ok(n) => axum::Json(json!({"purged": n})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
}

async fn report(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = ask(&state, DispatchCmd::Snapshot)
        .await
        .unwrap_or(Value::Null);
    let stats = state.store.stats().await.ok();
    axum::Json(json!({
        "dispatcher": snapshot,
        "store": stats.map(|s| json!({"pending": s.pending_by_priority, "in_flight": s.in_flight, "dead": s.dead, "delivered_retained": s.delivered_retained})),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer xyz"), Some("xyz"));
        assert_eq!(bearer_token("bearer xyz"), Some("xyz"));
        assert_eq!(bearer_token("BEARER  xyz"), Some("xyz"));
        assert_eq!(bearer_token("Basic xyz"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerxyz"), None);
    }

    #[test]
    fn bad_dlq_parameters_are_named() {
        let field = |q: &str| filter_of(Some(q)).err().map(|e| e.field);
        assert_eq!(field("limit=-1"), Some("limit".to_owned()));
        assert_eq!(field("limit=x"), Some("limit".to_owned()));
        assert_eq!(field("after=nope"), Some("after".to_owned()));
        assert_eq!(field("colour=red"), Some("colour".to_owned()));
        assert_eq!(field("bot=a&bot=b"), Some("bot".to_owned()));
        let ok = filter_of(Some("limit=5000&bot=a&reason=x")).ok();
        assert_eq!(ok.and_then(|f| f.limit), Some(1000));
        assert_eq!(filter_of(None).ok().and_then(|f| f.limit), Some(100));
    }
}
