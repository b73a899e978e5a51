//! The webhook sink: each attempt POSTs the message as JSON to one URL,
//! signed with HMAC-SHA256 when the tier has a key.
//!
//! Request: body [`Delivery::document`] —
//! `{"id","correlation_id","chat_id","method","params","attempt"}` — with
//! `Content-Type: application/json`, `X-Herald-Message-Id: <id>`,
//! `X-Herald-Timestamp: <unix seconds>` and, with a key, the signature
//! header (default `X-Herald-Signature`) `sha256=<hex HMAC-SHA256(key,
//! timestamp + "." + body)>`; see `super::signing` for the receiver's side
//! and [`verify_signature`].
//!
//! Answer: 2xx is delivered (a JSON answer becomes the receipt); 429 is rate
//! limited, its `Retry-After` (seconds or HTTP-date) becoming `retry_after`;
//! 5xx and 408 are transient; any other status is reported as is and the
//! taxonomy treats it as permanent (401/404 stop the tier: a wrong secret or
//! URL). Redirects are not followed.
//!
//! Owns the request shape and the status mapping. Leaves retries and
//! classification to the dispatcher and the taxonomy.
//!
//! Invariant: the key never leaves the [`Signer`]; errors and `Debug` show
//! the URL without user info or query.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::Value;

use super::http::{self, CappedBody};
use super::signing::Signer;
pub use super::signing::{
    DEFAULT_SIGNATURE_HEADER, MESSAGE_ID_HEADER, TIMESTAMP_HEADER, verify_signature,
};
use super::{Delivery, Secret, SinkError, SinkResult};
use crate::engine::taxonomy::{Outcome, TelegramError, parse_telegram_error};

/// Receivers answer briefly; keep at most this much of an answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Posts messages to one webhook URL.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Shared: a keyed HMAC state is a few hundred bytes.
    signer: Option<Arc<Signer>>,
    signature_header: HeaderName,
}

impl WebhookSink {
    /// `hmac_secret`: sign every request with it; `None` sends unsigned.
    /// `signature_header`: the header carrying the signature.
    pub fn new(
        client: reqwest::Client,
        url: &str,
        hmac_secret: Option<Secret>,
        signature_header: &str,
    ) -> Result<Self, SinkError> {
        let url = http::parse_http_url(url).map_err(|why| SinkError::Invalid {
            what: "webhook.url",
            why,
        })?;
        let signature_header =
            HeaderName::from_bytes(signature_header.as_bytes()).map_err(|_| {
                SinkError::Invalid {
                    what: "webhook.signatureHeader",
                    why: "not a valid HTTP header name",
                }
            })?;
        let signer = match hmac_secret {
            None => None,
            Some(secret) if secret.is_empty() => {
                return Err(SinkError::Invalid {
                    what: "webhook HMAC secret",
                    why: "it is empty",
                });
            }
            Some(secret) => Some(Arc::new(Signer::new(secret.expose().as_bytes()).ok_or(
                SinkError::Invalid {
                    what: "webhook HMAC secret",
                    why: "rejected as a key",
                },
            )?)),
        };
        Ok(WebhookSink {
            client,
            url,
            signer,
            signature_header,
        })
    }

    pub async fn send(&self, delivery: &Delivery, timeout: Duration) -> SinkResult {
        let body = delivery.document();
        let timestamp = http::unix_now().to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(MESSAGE_ID_HEADER, delivery.message_id.to_string())
            .header(TIMESTAMP_HEADER, &timestamp);
        if let Some(signer) = &self.signer {
            let signature = signer.sign(&timestamp, &body);
            if let Ok(value) = HeaderValue::from_str(&signature) {
                request = request.header(self.signature_header.clone(), value);
            }
        }
        let exchange = async {
            let response = request.body(body).send().await?;
            let status = response.status().as_u16();
            let retry_after = http::retry_after(response.headers(), SystemTime::now());
            let answer = http::read_capped(response, MAX_ANSWER_BYTES).await?;
            Ok::<_, reqwest::Error>((status, retry_after, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => SinkResult::timed_out(timeout),
            Ok(Err(err)) => {
                let (outcome, detail) = http::failure(err);
                SinkResult::failed(outcome, detail)
            }
            Ok(Ok((status, retry_after, answer))) => interpret(status, retry_after, answer),
        }
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &http::redacted_url(&self.url))
            .field("signed", &self.signer.is_some())
            .field("signature_header", &self.signature_header)
            .finish_non_exhaustive()
    }
}

fn interpret(status: u16, retry_after: Option<u64>, answer: CappedBody) -> SinkResult {
    let bytes = answer.bytes;
    if (200..300).contains(&status) {
        let receipt = if answer.complete {
            serde_json::from_slice::<Value>(&bytes).ok()
        } else {
            None
        };
        return SinkResult {
            outcome: Outcome::Delivered,
            status: Some(status),
            body: Some(bytes),
            receipt,
            detail: None,
        };
    }
    // A receiver may answer in the Bot API's shape; otherwise the status
    // says it all, plus Retry-After for a 429.
    let mut body = parse_telegram_error(&bytes);
    if status == 429 {
        let b = body.get_or_insert_with(|| TelegramError {
            error_code: 429,
            description: "Too Many Requests".into(),
            ..TelegramError::default()
        });
        b.retry_after = b.retry_after.or(retry_after);
    }
    SinkResult {
        outcome: Outcome::Http { status, body },
        status: Some(status),
        body: Some(bytes),
        receipt: None,
        detail: Some(format!("webhook answered HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::taxonomy::{Action, Class};
    use crate::store::record::{ChatRef, MessageId};
    use axum::Router;
    use axum::body::Bytes as AxumBytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Map, json};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    const KEY: &str = "whsec-very-secret-key";
    const T: Duration = Duration::from_secs(10);

    /// What the receiver answers next, and what it saw.
    #[derive(Default)]
    struct Receiver {
        answer: Mutex<(u16, Option<&'static str>)>,
        seen: Mutex<Vec<(HeaderMap, Vec<u8>, bool)>>,
    }

    async fn receive(
        State(rx): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: AxumBytes,
    ) -> Response {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let valid = verify_signature(
            KEY.as_bytes(),
            &get(TIMESTAMP_HEADER),
            &body,
            &get("x-test-signature"),
        );
        rx.seen
            .lock()
            .unwrap()
            .push((headers.clone(), body.to_vec(), valid));
        let (status, retry_after) = *rx.answer.lock().unwrap();
        let status = StatusCode::from_u16(status).unwrap();
        let mut response = if status.is_success() {
            (status, axum::Json(json!({"stored": true}))).into_response()
        } else {
            (status, "nope").into_response()
        };
        if let Some(ra) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", ra.parse().unwrap());
        }
        response
    }

    async fn receiver() -> (Arc<Receiver>, String, tokio::task::JoinHandle<()>) {
        let rx = Arc::new(Receiver::default());
        *rx.answer.lock().unwrap() = (200, None);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&rx));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (rx, url, task)
    }

    fn delivery() -> Delivery {
        let mut params = Map::new();
        params.insert("text".into(), json!("hello"));
        Delivery {
            message_id: MessageId::generate(),
            correlation_id: "corr-9".into(),
            chat: ChatRef::Id(-100),
            method: "sendMessage".into(),
            params,
            attempt: 3,
        }
    }

    fn sink(url: &str, key: Option<&str>) -> WebhookSink {
        WebhookSink::new(
            http::http_client().unwrap(),
            url,
            key.map(Secret::new),
            "X-Test-Signature",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn delivers_a_signed_document() {
        let (rx, url, task) = receiver().await;
        let s = sink(&url, Some(KEY));
        let d = delivery();
        let r = s.send(&d, T).await;
        assert!(r.is_delivered(), "{r:?}");
        assert_eq!(r.status, Some(200));
        assert_eq!(r.receipt, Some(json!({"stored": true})));
        let seen = rx.seen.lock().unwrap();
        let (headers, body, valid) = &seen[0];
        assert!(*valid, "signature did not verify");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers[MESSAGE_ID_HEADER], d.message_id.to_string());
        let ts: u64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
        assert!(ts > 1_600_000_000);
        let doc: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            doc,
            json!({"id": d.message_id.to_string(), "correlation_id": "corr-9",
                   "chat_id": -100, "method": "sendMessage",
                   "params": {"text": "hello"}, "attempt": 3})
        );
        let shown = format!("{s:?} {r:?}");
        assert!(!shown.contains(KEY), "{shown}");
        task.abort();
    }

    #[tokio::test]
    async fn maps_statuses_to_outcomes() {
        let (rx, url, task) = receiver().await;
        let s = sink(&url, Some(KEY));

        *rx.answer.lock().unwrap() = (429, Some("7"));
        let r = s.send(&delivery(), T).await;
        assert!(
            matches!(&r.outcome, Outcome::Http { status: 429, body: Some(b) }
                if b.retry_after == Some(7)),
            "{r:?}"
        );
        assert_eq!(
            r.classify().unwrap().action,
            Action::Wait(Duration::from_secs(7))
        );

        *rx.answer.lock().unwrap() = (500, None);
        let r = s.send(&delivery(), T).await;
        assert_eq!(r.classify().unwrap().action, Action::Retry, "{r:?}");

        *rx.answer.lock().unwrap() = (408, None);
        let r = s.send(&delivery(), T).await;
        assert_eq!(r.classify().unwrap().class, Class::Transient, "{r:?}");

        *rx.answer.lock().unwrap() = (400, None);
        let r = s.send(&delivery(), T).await;
        let c = r.classify().unwrap();
        assert_eq!((c.class, c.action), (Class::Permanent, Action::DeadLetter));
        assert_eq!(r.body.as_deref(), Some(&b"nope"[..]));

        *rx.answer.lock().unwrap() = (422, None);
        let r = s.send(&delivery(), T).await;
        assert_eq!(r.classify().unwrap().class, Class::Permanent, "{r:?}");

        assert_eq!(rx.seen.lock().unwrap().len(), 5);
        assert!(rx.seen.lock().unwrap().iter().all(|(_, _, valid)| *valid));
        task.abort();
    }

    #[tokio::test]
    async fn unsigned_without_a_key() {
        let (rx, url, task) = receiver().await;
        let r = sink(&url, None).send(&delivery(), T).await;
        assert!(r.is_delivered());
        let seen = rx.seen.lock().unwrap();
        assert!(!seen[0].0.contains_key("x-test-signature"));
        assert!(!seen[0].2);
        task.abort();
    }

    #[tokio::test]
    async fn a_dead_receiver_is_a_connect_failure_without_the_url_query() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let s = sink(&format!("http://{addr}/hook?token=qsecret"), Some(KEY));
        let r = s.send(&delivery(), T).await;
        assert!(matches!(r.outcome, Outcome::Transport(_)), "{r:?}");
        let shown = format!("{s:?} {r:?}");
        assert!(!shown.contains("qsecret"), "{shown}");
    }

    #[test]
    fn construction_checks() {
        let c = http::http_client().unwrap();
        assert!(WebhookSink::new(c.clone(), "mailto:x@y", None, "X-Sig").is_err());
        assert!(WebhookSink::new(c.clone(), "http://h/", None, "bad header").is_err());
        assert!(WebhookSink::new(c.clone(), "http://h/", Some(Secret::new("")), "X").is_err());
        assert!(WebhookSink::new(c, "https://h/x", None, DEFAULT_SIGNATURE_HEADER).is_ok());
    }
}
