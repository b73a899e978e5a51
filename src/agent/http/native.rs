//! `POST /v1/messages` (one message or `{"messages": [...]}`) and
//! `GET /v1/messages/{id}` (404 for any well-formed UUID it does not hold).
//!
//! A batch is all-or-nothing: one bad message refuses the batch, naming
//! `messages[i].field`, and nothing is stored. 202 means committed to disk.

use std::sync::Arc;
use std::time::Instant as WallInstant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::agent::ingest::IngestError;
use crate::agent::ingest::message::{Context, parse_native};
use crate::agent::state::{AppState, DispatchCmd};
use crate::clock::now_ms;
use crate::store::{MessageId, MessageState, NewMessage, Store, StoredMessage};

pub async fn accept(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(m) = state.metrics() {
                m.rejected.with_label_values(&["api", e.code]).inc();
            }
            e.into_response()
        }
    }
}

async fn accept_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IngestError> {
    let started = WallInstant::now();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(
            IngestError::invalid("", "send JSON with Content-Type: application/json")
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        );
    }
    let body = body.map_err(|e| {
        let too_large = e.status() == StatusCode::PAYLOAD_TOO_LARGE;
        IngestError::invalid(
            "",
            if too_large {
                "request body too large"
            } else {
                "unreadable body"
            },
        )
        .with_status(
            e.status(),
            if too_large {
                "body_too_large"
            } else {
                "bad_body"
            },
        )
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        IngestError::invalid(
            "",
            format!("malformed JSON at line {} column {}", e.line(), e.column()),
        )
        .with_status(StatusCode::BAD_REQUEST, "malformed_json")
    })?;
    let messages = parse_messages(state, &value)?;
    admit(state, &messages)?;
    let stored = store_batch(state, messages, "api").await?;
    if let Some(m) = state.metrics() {
        m.accept_seconds.observe(started.elapsed().as_secs_f64());
    }
    let accepted: Vec<Value> = stored
        .iter()
        .map(|(m, dup)| json!({"id": m.id.to_string(), "correlation_id": m.msg.correlation_id, "duplicate": dup}))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": accepted})),
    )
        .into_response())
}

fn parse_messages(state: &AppState, value: &Value) -> Result<Vec<NewMessage>, IngestError> {
    let config = state.config();
    let tiers = config.tier_names();
    let fresh = || MessageId::generate().to_string();
    let ctx = Context {
        bot: &config.entry_tier,
        known_tiers: &tiers,
        fresh_correlation_id: &fresh,
    };
    let max = config.agent.ingest.max_batch as usize;
    match value.get("messages") {
        Some(Value::Array(items)) if value.as_object().is_some_and(|o| o.len() == 1) => {
            if items.is_empty() {
                return Err(IngestError::invalid(
                    "messages",
                    "must hold at least one message",
                ));
            }
            if items.len() > max {
                return Err(IngestError::invalid(
                    "messages",
                    format!("holds {} messages; at most {max} per request", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_native(v, &ctx).map_err(|e| e.at_index(i)))
                .collect()
        }
        Some(Value::Array(_)) => Err(IngestError::unknown(
            value
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "messages").cloned())
                .unwrap_or_default(),
        )),
        Some(_) => Err(IngestError::invalid("messages", "must be an array")),
        None => Ok(vec![parse_native(value, &ctx)?]),
    }
}

/// Degradation and shutdown decide whether new messages may enter.
pub fn admit(state: &AppState, messages: &[NewMessage]) -> Result<(), IngestError> {
    let overloaded = |field: String, why: String, retry_after: u64| IngestError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "overloaded",
        field,
        message: why,
        retry_after: Some(retry_after.max(1)),
    };
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(overloaded(
            String::new(),
            "the agent is shutting down".into(),
            5,
        ));
    }
    let gate = state.gate();
    if gate.refuse_all {
        return Err(overloaded(
            String::new(),
            format!("degradation level {} refuses new messages", gate.level),
            gate.retry_after_secs,
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let field = if messages.len() > 1 {
            format!("messages[{i}].priority")
        } else {
            "priority".into()
        };
        if gate.shed.contains(&m.priority) {
            return Err(overloaded(
                field,
                format!(
                    "degradation level {} sheds {} priority",
                    gate.level, m.priority
                ),
                gate.retry_after_secs,
            ));
        }
    }
    Ok(())
}

/// Commit `messages` durably, then hand the new ones to the dispatcher.
/// Returns each stored message and whether it was a duplicate.
pub async fn store_batch(
    state: &AppState,
    messages: Vec<NewMessage>,
    source: &str,
) -> Result<Vec<(StoredMessage, bool)>, IngestError> {
    store_batch_then(state, messages, source, |_| ()).await
}

/// [`store_batch`], running `before_dispatch` on the stored messages before
/// the dispatcher can see them: a Bot API caller registers its waiter there,
/// since the dispatcher may finish a message (and tell its waiters) before
/// the caller would get to register after this returns.
pub async fn store_batch_then(
    state: &AppState,
    messages: Vec<NewMessage>,
    source: &str,
    before_dispatch: impl FnOnce(&[(StoredMessage, bool)]),
) -> Result<Vec<(StoredMessage, bool)>, IngestError> {
    let now = now_ms();
    let results = state.store.accept(messages.clone(), now).await;
    let mut out = Vec::with_capacity(results.len());
    let mut fresh = Vec::new();
    for (msg, r) in messages.into_iter().zip(results) {
        let a = r.map_err(|e| {
            tracing::error!(error = %e, "store refused a batch");
            IngestError::invalid(
                "",
                "the queue could not store the message; nothing was accepted",
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        })?;
        let stored = StoredMessage {
            id: a.id,
            msg,
            state: MessageState::Pending,
            attempts: Vec::new(),
            created_ms: now,
            updated_ms: now,
            next_attempt_ms: None,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: None,
        };
        if a.duplicate_of {
            if let Some(m) = state.metrics() {
                m.duplicates.inc();
            }
        } else {
            if let Some(m) = state.metrics() {
                m.accepted
                    .with_label_values(&[&stored.msg.bot, stored.msg.priority.as_str(), source])
                    .inc();
            }
            fresh.push(stored.clone());
            crate::telemetry::message_accepted(&stored, source);
        }
        out.push((stored, a.duplicate_of));
    }
    before_dispatch(&out);
    // The messages are durable already; if the loop is gone (shutdown)
    // they are picked up from the store at the next start. On Redis the
    // holder of each message's partition reads it from the feed instead.
    if !fresh.is_empty() && state.store.enqueues_locally() {
        let _ = state.dispatch.send(DispatchCmd::Enqueue(fresh)).await;
    }
    Ok(out)
}

pub async fn status(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let no_such = || {
        IngestError::invalid("id", "no such message")
            .with_status(StatusCode::NOT_FOUND, "not_found")
            .into_response()
    };
    let Ok(id) = id.parse::<MessageId>() else {
        // herald issues only UUIDv7 ids, but any other UUID (v1, v4, nil)
        // is a well-formed id of no message here, not a bad request.
        if uuid::Uuid::parse_str(&id).is_ok() {
            return no_such();
        }
        return IngestError::invalid("id", "not a herald message id").into_response();
    };
    match state.store.get(id).await {
        Ok(Some(m)) => axum::Json(message_json(&m)).into_response(),
        Ok(None) => no_such(),
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            IngestError::invalid("", "the queue is unavailable")
                .with_status(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                .into_response()
        }
    }
}

/// The public view of a stored message (no parameters: they may be private).
pub fn message_json(m: &StoredMessage) -> Value {
    json!({
        "id": m.id.to_string(),
        "state": m.state.as_str(),
        "correlation_id": m.msg.correlation_id,
        "chat_id": m.msg.chat_id.to_string(),
        "method": m.msg.method,
        "priority": m.msg.priority.as_str(),
        "message_type": m.msg.message_type,
        "attempts": m.attempts.iter().map(|a| json!({
            "at_ms": a.at_ms, "tier": a.tier, "outcome": a.outcome, "error": a.error
        })).collect::<Vec<_>>(),
        "last_error": m.attempts.iter().rev().find_map(|a| a.error.clone()),
        "tier": m.delivered_tier.clone().or_else(|| m.in_flight_tier.clone()),
        "dead_reason": m.dead_reason,
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
    })
}
