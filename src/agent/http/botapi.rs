//! The Telegram Bot API drop-in: `/bot<token>/<method>`, so an existing bot
//! moves onto herald by changing its API base URL.
//!
//! Send methods (`sendMessage`, `sendPhoto`, `sendDocument`) are queued
//! under the token's tier. By default the call waits (bounded by
//! `botApi.waitForDelivery`) and returns Telegram's own status and body;
//! with `X-Herald-Async: 1` or `botApi.asyncAccept` it answers at
//! acceptance with `{"ok":true,"result":{"herald_id":..}}`, or with a
//! stand-in `Message` under `botApi.answer: message` (`stand_in`). Other methods
//! pass straight through to the tier's API (they are not sends, so the send
//! limits do not apply to them). An unknown token gets 401 like Telegram's;
//! a method name that cannot be a Bot API method (anything but ASCII
//! letters, digits and `_`) gets 404 without reaching the API; a parameter
//! given more than once (query, form, multipart or JSON) gets 400 naming it.
//!
//! herald's own per-message settings come from headers: `X-Herald-Priority`,
//! `X-Herald-Message-Type`, `Idempotency-Key`, `X-Correlation-Id`,
//! `X-Herald-Callback-Url`, `X-Herald-Not-Before`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::agent::http::native::{admit, store_batch_then};
use crate::agent::http::stand_in::{self, Standing};
use crate::agent::ingest::IngestError;
use crate::agent::ingest::message::{Context, HeraldFields, SEND_METHODS, parse_bot_api};
use crate::agent::state::{AppState, Final};
use crate::api::agent::BotApiAnswer;
use crate::sandbox::params::{self, ParamError, Value as ParamValue};
use crate::sink::TelegramSink;
use crate::store::{MessageId, MessageState, Store, StoredMessage};

/// A Telegram-shaped error, with herald's field name alongside.
fn tg_error(status: StatusCode, description: String, field: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "ok": false,
            "error_code": status.as_u16(),
            "description": description,
            "herald": {"field": field},
        })),
    )
        .into_response()
}

fn from_ingest(e: IngestError) -> Response {
    let prefix = match e.status {
        StatusCode::SERVICE_UNAVAILABLE => "Service Unavailable",
        StatusCode::PAYLOAD_TOO_LARGE => "Request Entity Too Large",
        _ => "Bad Request",
    };
    let field_text = if e.field.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.field)
    };
    let mut resp = tg_error(
        e.status,
        format!("{prefix}: {field_text}{}", e.message),
        &e.field,
    );
    if let Some(secs) = e.retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path((bot_path, method)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(token) = bot_path.strip_prefix("bot") else {
        return tg_error(StatusCode::NOT_FOUND, "Not Found".into(), "");
    };
    let config = state.config();
    let Some(tier) = config.tier_for_token(token) else {
        if let Some(m) = state.metrics() {
            m.rejected
                .with_label_values(&["botapi", "unauthorized"])
                .inc();
        }
        return tg_error(StatusCode::UNAUTHORIZED, "Unauthorized".into(), "");
    };
    if !is_method_name(&method) {
        return tg_error(
            StatusCode::NOT_FOUND,
            "Not Found: method not found".into(),
            "method",
        );
    }
    let tier_name = tier.policy.name.clone();
    let headers = req.headers().clone();
    let max_body = config.agent.ingest.max_body_bytes as usize;
    let params = match params::read(req, max_body).await {
        Ok(p) => p,
        Err(ParamError::TooLarge) => {
            return tg_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request Entity Too Large".into(),
                "",
            );
        }
        Err(ParamError::Json) => {
            return tg_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: can't parse JSON object".into(),
                "",
            );
        }
        Err(ParamError::Multipart) => {
            return tg_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: malformed multipart body".into(),
                "",
            );
        }
    };
    if let Some(name) = params.repeated() {
        return tg_error(
            StatusCode::BAD_REQUEST,
            format!("Bad Request: {name}: given more than once; send each parameter once"),
            name,
        );
    }
    let mut map = Map::new();
    for (k, v) in params.iter() {
        match v {
            ParamValue::Text(t) => {
                map.insert(k.clone(), Value::String(t.clone()));
            }
            ParamValue::File { .. } => {
                return tg_error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Bad Request: {k}: file uploads are not queued by herald; send a URL or file_id"
                    ),
                    k,
                );
            }
        }
    }
    let canonical = SEND_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(&method));
    match canonical {
        Some(m) => send(&state, &headers, &tier_name, m, map).await,
        None => passthrough(&state, &tier_name, &method, map).await,
    }
}

/// Bot API method names are short words of ASCII letters, digits and `_`
/// (`sendMessage`, `getUpdates`); anything else is no method, and must not
/// be pasted into an upstream URL.
fn is_method_name(method: &str) -> bool {
    (1..=64).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn send(
    state: &AppState,
    headers: &HeaderMap,
    tier: &str,
    method: &str,
    params: Map<String, Value>,
) -> Response {
    let herald = match HeraldFields::from_strs(
        header_str(headers, "x-herald-priority"),
        header_str(headers, "x-herald-message-type"),
        header_str(headers, "idempotency-key"),
        header_str(headers, "x-correlation-id"),
        header_str(headers, "x-herald-callback-url"),
        header_str(headers, "x-herald-not-before"),
        None,
    ) {
        Ok(h) => h,
        Err(e) => return from_ingest(e),
    };
    let config = state.config();
    let parsed = {
        let tiers = config.tier_names();
        let fresh = || MessageId::generate().to_string();
        let ctx = Context {
            bot: tier,
            known_tiers: &tiers,
            fresh_correlation_id: &fresh,
        };
        parse_bot_api(method, params, &herald, &ctx)
    };
    let msg = match parsed {
        Ok(m) => m,
        Err(e) => {
            if let Some(m) = state.metrics() {
                m.rejected.with_label_values(&["botapi", e.code]).inc();
            }
            return from_ingest(e);
        }
    };
    if let Err(e) = admit(state, std::slice::from_ref(&msg)) {
        if let Some(m) = state.metrics() {
            m.rejected.with_label_values(&["botapi", e.code]).inc();
        }
        return from_ingest(e);
    }
    let asynchronous =
        config.agent.bot_api.async_accept || header_str(headers, "x-herald-async") == Some("1");
    let shape = match header_str(headers, "x-herald-answer") {
        None => config.agent.bot_api.answer,
        Some(v) if v.eq_ignore_ascii_case("herald") => BotApiAnswer::Herald,
        Some(v) if v.eq_ignore_ascii_case("message") => BotApiAnswer::Message,
        Some(_) => {
            return tg_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: X-Herald-Answer: expected herald or message".into(),
                "X-Herald-Answer",
            );
        }
    };
    let wait = config.agent.bot_api.wait_for_delivery.get();
    let mut waiter = None;
    let register = |stored: &[(StoredMessage, bool)]| {
        if !asynchronous {
            waiter = stored.first().map(|(m, _)| state.wait_for(m.id));
        }
    };
    let stored = match store_batch_then(state, vec![msg], "botapi", register).await {
        Ok(mut v) => match v.pop() {
            Some((m, _)) => m,
            None => {
                return tg_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error".into(),
                    "",
                );
            }
        },
        Err(e) => return from_ingest(e),
    };
    let id = stored.id;
    let Some(waiter) = waiter else {
        return stand_in(shape, &stored, Standing::Accepted);
    };
    let answer = wait_for_delivery(state, shape, &stored, waiter, wait).await;
    state.forget_waiters(id);
    answer
}

/// How often a waiting call reads the message's state from a shared store,
/// where the agent holding the chat's partition may be another one.
const SHARED_POLL: Duration = Duration::from_millis(200);

/// The message's end as this agent's dispatcher reports it, or — on Redis,
/// where another agent may send it — as the store records it; `queued`
/// when `wait` runs out first.
async fn wait_for_delivery(
    state: &AppState,
    shape: BotApiAnswer,
    accepted: &StoredMessage,
    waiter: oneshot::Receiver<Final>,
    wait: Duration,
) -> Response {
    let id = accepted.id;
    let finished = || async {
        match state.store.get(id).await {
            Ok(Some(m)) if !m.state.is_open() => Some(m),
            _ => None,
        }
    };
    // The delivery may have finished before the waiter was registered.
    if let Some(m) = finished().await {
        return from_stored(shape, &m);
    }
    let poll = if state.store.enqueues_locally() {
        wait
    } else {
        SHARED_POLL
    };
    let deadline = tokio::time::Instant::now() + wait;
    tokio::pin!(waiter);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            r = &mut waiter => {
                if let Ok(f) = r {
                    return from_final(shape, accepted, f);
                }
                break;
            }
            _ = tokio::time::sleep(poll.min(left)) => {
                if let Some(m) = finished().await {
                    return from_stored(shape, &m);
                }
                if left <= poll {
                    break;
                }
            }
        }
    }
    match finished().await {
        Some(m) => from_stored(shape, &m),
        None => stand_in(shape, accepted, Standing::Queued),
    }
}

/// herald's answer in Telegram's place: 202, since Telegram has not
/// answered (yet, or at all for a fallback tier).
fn stand_in(shape: BotApiAnswer, m: &StoredMessage, standing: Standing) -> Response {
    let result = stand_in::result(shape, m.id, &m.msg, m.created_ms, standing);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"ok": true, "result": result})),
    )
        .into_response()
}

fn raw(status: Option<u16>, body: Option<bytes::Bytes>) -> Option<Response> {
    let status = StatusCode::from_u16(status?).ok()?;
    let body = body?;
    Some((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn from_final(shape: BotApiAnswer, accepted: &StoredMessage, f: Final) -> Response {
    if let Some(r) = raw(f.status, f.body.clone()) {
        return r;
    }
    if f.delivered {
        return stand_in(shape, accepted, Standing::Delivered);
    }
    tg_error(
        StatusCode::BAD_REQUEST,
        format!(
            "Bad Request: not delivered: {}",
            f.reason.unwrap_or_default()
        ),
        "",
    )
}

fn from_stored(shape: BotApiAnswer, m: &StoredMessage) -> Response {
    match m.state {
        MessageState::Delivered => match &m.receipt {
            Some(r) => axum::Json(json!({"ok": true, "result": r})).into_response(),
            None => stand_in(shape, m, Standing::Delivered),
        },
        _ => tg_error(
            StatusCode::BAD_REQUEST,
            format!(
                "Bad Request: not delivered: {}",
                m.dead_reason.clone().unwrap_or_default()
            ),
            "",
        ),
    }
}

async fn passthrough(
    state: &AppState,
    tier: &str,
    method: &str,
    params: Map<String, Value>,
) -> Response {
    let config = state.config();
    let Some(t) = config.tier(tier) else {
        return tg_error(StatusCode::UNAUTHORIZED, "Unauthorized".into(), "");
    };
    let (Some(tg), Some(token)) = (t.policy.spec.telegram.as_ref(), t.secrets.bot_token.clone())
    else {
        return tg_error(StatusCode::NOT_FOUND, "Not Found".into(), "");
    };
    let sink = match TelegramSink::new(state.http.clone(), &tg.api_url, token) {
        Ok(s) => s,
        Err(e) => {
            return tg_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Internal Server Error: {e}"),
                "",
            );
        }
    };
    // getUpdates long-polls; allow its own timeout plus a margin.
    let timeout = params
        .get("timeout")
        .and_then(|v| {
            v.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(v.as_u64())
        })
        .map(|s| Duration::from_secs(s.min(600) + 10))
        .unwrap_or(t.policy.per_attempt_timeout);
    let result = sink.passthrough(method, &params, timeout).await;
    raw(result.status, result.body).unwrap_or_else(|| {
        tg_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "Bad Gateway: {}",
                result.detail.unwrap_or_else(|| "no answer".into())
            ),
            "",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bot_api_words_are_method_names() {
        for ok in ["getMe", "sendMessage", "set_my_commands", "a1"] {
            assert!(is_method_name(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "../../admin/report",
            "getMe?x=1",
            "get Me",
            "getMe/",
            "getMé",
            "get%4De",
            long.as_str(),
        ] {
            assert!(!is_method_name(bad), "{bad}");
        }
    }
}
