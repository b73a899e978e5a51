//! What every request passes through before and after its handler: the
//! body's read deadline and the shape of error answers the handlers did not
//! write themselves.
//!
//! Owns: `http.bodyReadTimeout` (counted from the end of the request head;
//! a body still incomplete then is answered 408 and the connection closed),
//! and turning the framework's own refusals — unknown route, wrong method
//! (405), a path or body it could not read — into JSON: herald's
//! `{"error":{"code","field","message"}}`, or Telegram's
//! `{"ok":false,"error_code","description"}` under the Bot API drop-in
//! (`/bot...`). Such answers never echo the request, which may hold a
//! token. Leaves connections and the head's timeout to [`super::server`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::json;
use tokio::time::{Instant, Sleep};

use crate::agent::state::AppState;

/// The body's deadline around the handler, then JSON for bare refusals.
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let timeout = state.config().agent.http.body_read_timeout.get();
    let drop_in = req.uri().path().starts_with("/bot");
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|b| Body::new(Deadline::new(b, timeout, expired.clone())));
    let resp = next.run(req).await;
    if expired.load(Ordering::Relaxed) {
        let mut resp = error(
            StatusCode::REQUEST_TIMEOUT,
            drop_in,
            &format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    as_json(resp, drop_in)
}

/// An error answer that is not JSON (the framework's plain-text rejections,
/// its empty 405) becomes one, keeping its status and headers such as
/// `Allow`.
fn as_json(resp: Response, drop_in: bool) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let message = match status {
        StatusCode::NOT_FOUND => "no such route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => match parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
        {
            Some(allow) => format!("method not allowed here; allowed: {allow}"),
            None => "method not allowed here".to_owned(),
        },
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_owned(),
        StatusCode::BAD_REQUEST => "malformed request (path, query or body)".to_owned(),
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase(),
    };
    let fresh = error(status, drop_in, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.extend(fresh_parts.headers);
    Response::from_parts(parts, body)
}

/// herald's error shape, or Telegram's under the drop-in.
fn error(status: StatusCode, drop_in: bool, message: &str) -> Response {
    if drop_in {
        let reason = status.canonical_reason().unwrap_or("Error");
        return (
            status,
            axum::Json(json!({
                "ok": false,
                "error_code": status.as_u16(),
                "description": format!("{reason}: {message}"),
            })),
        )
            .into_response();
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    (
        status,
        axum::Json(json!({"error": {"code": code, "field": "", "message": message}})),
    )
        .into_response()
}

/// The body's deadline passed before it was complete.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body that fails with [`BodyTimeout`] once `deadline` passes,
/// and says so through `expired`. The timer is armed only when the body
/// has to wait, so bodies already read cost no timer.
struct Deadline {
    inner: Body,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl Deadline {
    fn new(inner: Body, timeout: Duration, expired: Arc<AtomicBool>) -> Self {
        Deadline {
            inner,
            deadline: Instant::now() + timeout,
            sleep: None,
            expired,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn bare_refusals_become_json_in_the_shape_of_their_path() {
        let plain = || {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET,HEAD")],
                "",
            )
                .into_response()
        };
        let r = as_json(plain(), false);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET,HEAD");
        let v = body_of(r).await;
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        let v = body_of(as_json(plain(), true)).await;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error_code"], 405, "{v}");
        // A JSON answer and a success are left alone.
        let ok = (StatusCode::OK, "metrics text").into_response();
        assert!(
            as_json(ok, false)
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_body_slower_than_its_deadline_fails() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let expired = Arc::new(AtomicBool::new(false));
        let body = Deadline::new(
            Body::from_stream(rx),
            Duration::from_millis(50),
            expired.clone(),
        );
        let _ = futures::SinkExt::send(&mut tx, Ok(Bytes::from_static(b"part"))).await;
        let read = axum::body::to_bytes(Body::new(body), 1024).await;
        assert!(read.is_err());
        assert!(expired.load(Ordering::Relaxed));
        drop(tx);
    }
}
