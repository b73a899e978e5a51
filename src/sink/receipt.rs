//! Delivery receipts: telling a producer, at the `callback_url` it gave,
//! that its message was delivered or dead-lettered.
//!
//! Request: `POST <callback_url>` with the JSON body
//! `{"id","correlation_id","state":"delivered"|"dead_lettered","tier",
//! "attempts","receipt"|"reason","at"}` (`receipt`: the channel's answer,
//! e.g. Telegram's message; `reason`: why it was dead-lettered; `at`: RFC
//! 3339 UTC of the final state) and the same headers and HMAC signature as
//! the webhook sink (`super::signing`) when a key is configured.
//!
//! Delivery: best effort, bounded, and never in the way of messages.
//! [`ReceiptSender::send`] returns at once; a background task per receipt
//! tries up to the retry policy's attempts on timeouts, transport errors,
//! 408, 429 and 5xx, and gives up on any other status. Default: 5 tries,
//! waits of 1, 2, 4 and 8 s (exponential, capped at 30 s, each jittered into
//! its upper half), a `Retry-After` honoured up to 5 minutes.
//! At most `max_concurrent` requests are in flight (default 64; a task
//! waiting out its backoff holds no slot) and at most `max_pending`
//! receipts exist at once (default 4096): beyond that a receipt is dropped
//! and counted rather than queued without bound or blocking the dispatcher.
//! Receipts do not survive a restart: the message's final state in the
//! store is the record of truth.
//!
//! Owns the receipt document, the retry loop and the bounds. Leaves deciding
//! when a receipt is due to the dispatcher and the retry arithmetic to
//! `crate::engine::retry`.
//!
//! Invariant: only absolute http(s) URLs are called; a callback URL is never
//! logged beyond scheme, host, port and path; the pending count returns to 0
//! when every task has ended, however it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use super::http;
use super::signing::{DEFAULT_SIGNATURE_HEADER, MESSAGE_ID_HEADER, Signer, TIMESTAMP_HEADER};
use super::{Secret, SinkError};
use crate::engine::retry::{BackoffStrategy, Jitter, RetryDecision, RetryInput, RetryPolicy};
use crate::engine::{Instant, SplitMix64};
use crate::store::record::{MessageId, MessageState, StoredMessage};

/// Longest `Retry-After` a callback may impose; a receipt is not worth more.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The final state a receipt reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiptState {
    Delivered,
    DeadLettered,
}

impl ReceiptState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Delivered => "delivered",
            ReceiptState::DeadLettered => "dead_lettered",
        }
    }
}

/// One receipt, as the dispatcher hands it over.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    pub message_id: MessageId,
    pub correlation_id: String,
    pub state: ReceiptState,
    /// The tier that delivered it, or that made the last attempt.
    pub tier: Option<String>,
    pub attempts: u32,
    /// When delivered: the channel's answer.
    pub receipt: Option<Value>,
    /// When dead-lettered: why.
    pub reason: Option<String>,
    /// When the final state was reached, unix milliseconds.
    pub at_ms: u64,
}

impl Receipt {
    /// The receipt of a message in a final state; `None` while it is open.
    pub fn from_stored(m: &StoredMessage) -> Option<Self> {
        let state = match m.state {
            MessageState::Delivered => ReceiptState::Delivered,
            MessageState::DeadLettered => ReceiptState::DeadLettered,
            MessageState::Pending | MessageState::InFlight => return None,
        };
        let tier = match state {
            ReceiptState::Delivered => m.delivered_tier.clone(),
            ReceiptState::DeadLettered => m.attempts.last().map(|a| a.tier.clone()),
        };
        Some(Receipt {
            message_id: m.id,
            correlation_id: m.msg.correlation_id.clone(),
            state,
            tier,
            attempts: u32::try_from(m.attempts.len()).unwrap_or(u32::MAX),
            receipt: m.receipt.clone(),
            reason: m.dead_reason.clone(),
            at_ms: m.updated_ms,
        })
    }

    /// The JSON body posted to the callback.
    pub fn document(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Document<'a> {
            id: &'a MessageId,
            correlation_id: &'a str,
            state: &'static str,
            tier: Option<&'a str>,
            attempts: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            receipt: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            at: String,
        }
        let delivered = self.state == ReceiptState::Delivered;
        let doc = Document {
            id: &self.message_id,
            correlation_id: &self.correlation_id,
            state: self.state.as_str(),
            tier: self.tier.as_deref(),
            attempts: self.attempts,
            receipt: delivered.then_some(self.receipt.as_ref().unwrap_or(&Value::Null)),
            reason: (!delivered).then_some(self.reason.as_deref().unwrap_or("")),
            at: rfc3339(self.at_ms),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

fn rfc3339(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

/// How receipts are sent.
#[derive(Clone, Debug)]
pub struct ReceiptConfig {
    /// Sign receipts with this key (same scheme as the webhook sink).
    pub hmac_key: Option<Secret>,
    pub signature_header: String,
    /// Tries and backoff; `max_attempts` counts the first try.
    pub retry: RetryPolicy,
    /// One try, connect to last byte.
    pub timeout: Duration,
    /// Requests in flight at once.
    pub max_concurrent: usize,
    /// Receipts accepted and not yet finished; more are dropped.
    pub max_pending: usize,
    /// Seeds the backoff jitter (mixed with each message id).
    pub seed: u64,
}

impl Default for ReceiptConfig {
    fn default() -> Self {
        ReceiptConfig {
            hmac_key: None,
            signature_header: DEFAULT_SIGNATURE_HEADER.to_owned(),
            retry: RetryPolicy {
                strategy: BackoffStrategy::Exponential,
                initial: Duration::from_secs(1),
                max_delay: Duration::from_secs(30),
                multiplier: 2.0,
                // Never retry almost at once: a callback that failed needs
                // a moment.
                jitter: Jitter::Equal,
                max_attempts: 5,
                max_elapsed: None,
                honour_retry_after: true,
            },
            timeout: Duration::from_secs(10),
            max_concurrent: 64,
            max_pending: 4096,
            seed: 0x5EED_4EC3,
        }
    }
}

/// Why a receipt was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRefused {
    #[error("callback URL refused: {0}")]
    BadUrl(&'static str),
    #[error("receipt dropped: {0} receipts already pending")]
    QueueFull(usize),
    #[error("receipt dropped: no async runtime to send it from")]
    NoRuntime,
}

/// Counters since the sender was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiptStats {
    /// Answered 2xx.
    pub sent: u64,
    /// Given up: a final status or out of tries.
    pub failed: u64,
    /// Not taken: too many pending.
    pub dropped: u64,
    /// Not taken: the callback URL was not http(s).
    pub refused: u64,
    /// Tries after the first.
    pub retries: u64,
    /// Accepted and not yet finished.
    pub pending: usize,
}

/// Sends receipts in the background. Cheap to clone; clones share bounds and
/// counters.
#[derive(Clone, Debug)]
pub struct ReceiptSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    signer: Option<Signer>,
    signature_header: HeaderName,
    retry: RetryPolicy,
    timeout: Duration,
    max_pending: usize,
    seed: u64,
    permits: Semaphore,
    pending: AtomicUsize,
    idle: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
}

impl ReceiptSender {
    pub fn new(client: reqwest::Client, config: ReceiptConfig) -> Result<Self, SinkError> {
        let signature_header =
            HeaderName::from_bytes(config.signature_header.as_bytes()).map_err(|_| {
                SinkError::Invalid {
                    what: "receipt signature header",
                    why: "not a valid HTTP header name",
                }
            })?;
        config.retry.validate().map_err(|_| SinkError::Invalid {
            what: "receipt retry policy",
            why: "invalid backoff settings",
        })?;
        let signer = match &config.hmac_key {
            Some(key) if key.is_empty() => {
                return Err(SinkError::Invalid {
                    what: "receipt HMAC key",
                    why: "it is empty",
                });
            }
            Some(key) => Some(
                Signer::new(key.expose().as_bytes()).ok_or(SinkError::Invalid {
                    what: "receipt HMAC key",
                    why: "rejected as a key",
                })?,
            ),
            None => None,
        };
        Ok(ReceiptSender {
            inner: Arc::new(Inner {
                client,
                signer,
                signature_header,
                retry: config.retry,
                timeout: config.timeout,
                max_pending: config.max_pending.max(1),
                seed: config.seed,
                permits: Semaphore::new(config.max_concurrent.max(1)),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        })
    }

    /// Takes `receipt` for `callback_url` and returns at once; the sending
    /// happens in a spawned task. Must be called within a tokio runtime.
    pub fn send(&self, callback_url: &str, receipt: Receipt) -> Result<(), ReceiptRefused> {
        let inner = &self.inner;
        let url = match http::parse_http_url(callback_url) {
            Ok(url) => url,
            Err(why) => {
                inner.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ReceiptRefused::BadUrl(why));
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(ReceiptRefused::NoRuntime);
        };
        let before = inner.pending.fetch_add(1, Ordering::SeqCst);
        let slot = PendingSlot(Arc::clone(inner));
        if before >= inner.max_pending {
            drop(slot);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(ReceiptRefused::QueueFull(before));
        }
        let body = Bytes::from(receipt.document());
        runtime.spawn(deliver(slot, url, receipt.message_id, body));
        Ok(())
    }

    pub fn stats(&self) -> ReceiptStats {
        let i = &self.inner;
        ReceiptStats {
            sent: i.sent.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            refused: i.refused.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            pending: i.pending.load(Ordering::SeqCst),
        }
    }

    /// Resolves once no receipt is pending (for draining on shutdown; bound
    /// it with a timeout).
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One pending receipt; releases its count however the task ends.
struct PendingSlot(Arc<Inner>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What one try tells the loop.
enum Try {
    Done,
    Retry {
        retry_after: Option<Duration>,
        why: String,
    },
    GiveUp(String),
}

async fn deliver(slot: PendingSlot, url: reqwest::Url, id: MessageId, body: Bytes) {
    let inner = &slot.0;
    let started = tokio::time::Instant::now();
    let bits = id.as_u128();
    let mut rng = SplitMix64::new(inner.seed ^ (bits as u64) ^ ((bits >> 64) as u64));
    let mut prev_delay = None;
    let mut attempt: u32 = 0;
    let why = loop {
        attempt += 1;
        let outcome = {
            let Ok(_permit) = inner.permits.acquire().await else {
                break "sender closed".to_owned();
            };
            try_once(inner, &url, &id, &body).await
        };
        let (retry_after, why) = match outcome {
            Try::Done => {
                inner.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message_id = %id, attempt, "delivery receipt sent");
                return;
            }
            Try::GiveUp(why) => break why,
            Try::Retry { retry_after, why } => (retry_after, why),
        };
        let elapsed = started.elapsed();
        let now = Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        let input = RetryInput {
            attempt,
            prev_delay,
            elapsed,
            retry_after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            breaker_open_until: None,
            now,
        };
        match inner.retry.next_delay(&input, &mut rng) {
            RetryDecision::GiveUp(_) => break why,
            RetryDecision::RetryAt { at, delay } => {
                prev_delay = Some(delay);
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(at.since(now)).await;
            }
        }
    };
    inner.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        message_id = %id,
        callback = %http::redacted_url(&url),
        attempts = attempt,
        reason = %why,
        "delivery receipt abandoned"
    );
}

async fn try_once(inner: &Inner, url: &reqwest::Url, id: &MessageId, body: &Bytes) -> Try {
    let timestamp = http::unix_now().to_string();
    let mut request = inner
        .client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(MESSAGE_ID_HEADER, id.to_string())
        .header(TIMESTAMP_HEADER, &timestamp);
    if let Some(signer) = &inner.signer
        && let Ok(value) = HeaderValue::from_str(&signer.sign(&timestamp, body))
    {
        request = request.header(inner.signature_header.clone(), value);
    }
    let exchange = async {
        let response = request.body(body.clone()).send().await?;
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers(), SystemTime::now());
        // The answer is not needed; reading it lets the connection be reused.
        let _ = http::read_capped(response, 16 * 1024).await;
        Ok::<_, reqwest::Error>((status, retry_after))
    };
    match tokio::time::timeout(inner.timeout, exchange).await {
        Err(_) => Try::Retry {
            retry_after: None,
            why: "timeout".into(),
        },
        Ok(Err(err)) => Try::Retry {
            retry_after: None,
            why: http::describe(err),
        },
        Ok(Ok((status, retry_after))) => match status {
            200..=299 => Try::Done,
            429 => Try::Retry {
                retry_after: retry_after.map(Duration::from_secs),
                why: "HTTP 429".into(),
            },
            408 | 500..=599 => Try::Retry {
                retry_after: None,
                why: format!("HTTP {status}"),
            },
            _ => Try::GiveUp(format!("HTTP {status}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::signing::verify_signature;
    use axum::Router;
    use axum::body::Bytes as AxumBytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use tokio::net::TcpListener;

    const KEY: &str = "receipt-key-secret";
    /// A hang guard only: tests wait for completion, never assert on time.
    const GUARD: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct Callback {
        /// Statuses to answer, in order; 200 once exhausted.
        script: Mutex<VecDeque<u16>>,
        seen: Mutex<Vec<(Value, bool)>>,
        /// `/slow` waits for this before answering.
        release: Notify,
    }

    impl Callback {
        fn record(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
            let get = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let valid = verify_signature(
                KEY.as_bytes(),
                &get(TIMESTAMP_HEADER),
                body,
                &get(DEFAULT_SIGNATURE_HEADER),
            ) && get(MESSAGE_ID_HEADER).len() == 36;
            let doc = serde_json::from_slice(body).unwrap_or(Value::Null);
            self.seen.lock().unwrap().push((doc, valid));
            let status = self.script.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
    }

    async fn callback() -> (Arc<Callback>, String) {
        let cb = Arc::new(Callback::default());
        let app = Router::new()
            .route(
                "/cb",
                post(
                    |State(cb): State<Arc<Callback>>, h: HeaderMap, b: AxumBytes| async move {
                        cb.record(&h, &b)
                    },
                ),
            )
            .route(
                "/slow",
                post(
                    |State(cb): State<Arc<Callback>>, h: HeaderMap, b: AxumBytes| async move {
                        cb.release.notified().await;
                        cb.record(&h, &b)
                    },
                ),
            )
            .with_state(Arc::clone(&cb));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (cb, base)
    }

    fn quick_config() -> ReceiptConfig {
        ReceiptConfig {
            hmac_key: Some(Secret::new(KEY)),
            retry: RetryPolicy {
                initial: Duration::from_millis(10),
                max_delay: Duration::from_millis(40),
                jitter: Jitter::None,
                max_attempts: 3,
                ..ReceiptConfig::default().retry
            },
            ..ReceiptConfig::default()
        }
    }

    fn sender(config: ReceiptConfig) -> ReceiptSender {
        ReceiptSender::new(http::http_client().unwrap(), config).unwrap()
    }

    fn delivered() -> Receipt {
        Receipt {
            message_id: MessageId::generate(),
            correlation_id: "corr-1".into(),
            state: ReceiptState::Delivered,
            tier: Some("primary".into()),
            attempts: 2,
            receipt: Some(json!({"message_id": 77})),
            reason: None,
            at_ms: 1_700_000_000_000,
        }
    }

    async fn drained(s: &ReceiptSender) {
        tokio::time::timeout(GUARD, s.idle()).await.unwrap();
    }

    #[tokio::test]
    async fn delivers_a_signed_receipt() {
        let (cb, base) = callback().await;
        let s = sender(quick_config());
        let r = delivered();
        s.send(&format!("{base}/cb"), r.clone()).unwrap();
        drained(&s).await;
        let seen = cb.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (doc, valid) = &seen[0];
        assert!(*valid, "signature did not verify");
        assert_eq!(
            doc,
            &json!({"id": r.message_id.to_string(), "correlation_id": "corr-1",
                    "state": "delivered", "tier": "primary", "attempts": 2,
                    "receipt": {"message_id": 77}, "at": "2023-11-14T22:13:20Z"})
        );
        let stats = s.stats();
        assert_eq!((stats.sent, stats.failed, stats.pending), (1, 0, 0));
    }

    #[tokio::test]
    async fn retries_after_a_server_error_and_gives_up_on_a_final_status() {
        let (cb, base) = callback().await;
        cb.script.lock().unwrap().extend([500, 503]);
        let s = sender(quick_config());
        s.send(&format!("{base}/cb"), delivered()).unwrap();
        drained(&s).await;
        assert_eq!(cb.seen.lock().unwrap().len(), 3);
        assert!(cb.seen.lock().unwrap().iter().all(|(_, v)| *v));
        assert_eq!((s.stats().sent, s.stats().retries), (1, 2));

        // Out of tries: three 500s with max_attempts 3.
        cb.script.lock().unwrap().extend([500, 500, 500]);
        s.send(&format!("{base}/cb"), delivered()).unwrap();
        drained(&s).await;
        assert_eq!(cb.seen.lock().unwrap().len(), 6);
        assert_eq!(s.stats().failed, 1);

        // A 400 is final at once.
        cb.script.lock().unwrap().push_back(400);
        s.send(&format!("{base}/cb"), delivered()).unwrap();
        drained(&s).await;
        assert_eq!(cb.seen.lock().unwrap().len(), 7);
        assert_eq!((s.stats().sent, s.stats().failed), (1, 2));
    }

    #[tokio::test]
    async fn dead_letter_receipts_carry_the_reason() {
        let (cb, base) = callback().await;
        let s = sender(quick_config());
        let r = Receipt {
            state: ReceiptState::DeadLettered,
            receipt: None,
            reason: Some("bad request".into()),
            ..delivered()
        };
        s.send(&format!("{base}/cb"), r).unwrap();
        drained(&s).await;
        let (doc, _) = cb.seen.lock().unwrap()[0].clone();
        assert_eq!(doc["state"], "dead_lettered");
        assert_eq!(doc["reason"], "bad request");
        assert!(doc.get("receipt").is_none());
    }

    #[tokio::test]
    async fn refuses_callbacks_that_are_not_http() {
        let s = sender(quick_config());
        for url in [
            "",
            "ftp://example/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "/relative/path",
            "gopher://h/",
        ] {
            assert!(
                matches!(s.send(url, delivered()), Err(ReceiptRefused::BadUrl(_))),
                "{url}"
            );
        }
        assert_eq!(s.stats().refused, 6);
        assert_eq!(s.stats().pending, 0);
    }

    #[tokio::test]
    async fn drops_beyond_the_pending_bound_instead_of_blocking() {
        let (cb, base) = callback().await;
        let s = sender(ReceiptConfig {
            max_pending: 1,
            max_concurrent: 1,
            ..quick_config()
        });
        s.send(&format!("{base}/slow"), delivered()).unwrap();
        assert_eq!(
            s.send(&format!("{base}/cb"), delivered()),
            Err(ReceiptRefused::QueueFull(1))
        );
        assert_eq!(s.stats().dropped, 1);
        // Let the slow one answer once it has arrived.
        let released = async {
            loop {
                cb.release.notify_waiters();
                if !cb.seen.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(GUARD, released).await.unwrap();
        drained(&s).await;
        assert_eq!((s.stats().sent, s.stats().pending), (1, 0));
        // Room again.
        s.send(&format!("{base}/cb"), delivered()).unwrap();
        drained(&s).await;
        assert_eq!(s.stats().sent, 2);
    }

    #[test]
    fn receipts_from_stored_messages() {
        use crate::store::record::{Attempt, ChatRef, NewMessage};
        let mut m = StoredMessage {
            id: MessageId::generate(),
            msg: NewMessage {
                chat_id: ChatRef::Id(1),
                method: "sendMessage".into(),
                params: serde_json::Map::new(),
                priority: crate::engine::Priority::Normal,
                message_type: "t".into(),
                idempotency_key: None,
                correlation_id: "c".into(),
                callback_url: Some("http://127.0.0.1:1/cb".into()),
                not_before: None,
                tier: None,
                bot: "b".into(),
            },
            state: MessageState::Pending,
            attempts: vec![Attempt {
                at_ms: 5,
                tier: "backup".into(),
                outcome: "permanent".into(),
                error: None,
            }],
            created_ms: 1,
            updated_ms: 9,
            next_attempt_ms: None,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: Some("bad request".into()),
        };
        assert_eq!(Receipt::from_stored(&m), None);
        m.state = MessageState::DeadLettered;
        let r = Receipt::from_stored(&m).unwrap();
        assert_eq!(r.tier.as_deref(), Some("backup"));
        assert_eq!((r.attempts, r.at_ms), (1, 9));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert!(!rfc3339(u64::MAX).is_empty());
    }

    #[test]
    fn default_schedule_is_five_tries_from_one_second() {
        let policy = ReceiptConfig::default().retry;
        let mut rng = SplitMix64::new(9);
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (4, 8)] {
            let d = policy.backoff(attempt, None, &mut rng);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        let last = RetryInput {
            attempt: 5,
            ..RetryInput::first(Instant::ZERO)
        };
        assert!(matches!(
            policy.next_delay(&last, &mut rng),
            RetryDecision::GiveUp(_)
        ));
    }

    #[test]
    fn config_is_checked() {
        let c = http::http_client().unwrap();
        let bad_header = ReceiptConfig {
            signature_header: "bad header".into(),
            ..ReceiptConfig::default()
        };
        assert!(ReceiptSender::new(c.clone(), bad_header).is_err());
        let empty_key = ReceiptConfig {
            hmac_key: Some(Secret::new("")),
            ..ReceiptConfig::default()
        };
        assert!(ReceiptSender::new(c.clone(), empty_key).is_err());
        let s = ReceiptSender::new(c, quick_config()).unwrap();
        assert!(!format!("{s:?}").contains(KEY));
    }
}
