//! The Telegram sink: one Bot API call per attempt, `POST
//! {api_url}/bot{token}/{method}` with a JSON body (the parameters plus
//! `chat_id`), and Telegram's answer reported untouched.
//!
//! Owns building the call, reading the answer and mapping it to an
//! [`Outcome`] (error bodies through `taxonomy::parse_telegram_error`).
//! Leaves pacing to the limiter — this sink never waits, retries or throttles,
//! so every 429 and its `retry_after` reach herald — and classification to
//! the taxonomy.
//!
//! Invariants: a message counts as delivered only on a 2xx whose body is a
//! Bot API `{"ok":true,...}`; the token lives only in the sink's [`Secret`]
//! and in the URL of the request in flight — errors are described without
//! the URL and scrubbed of the token, and `Debug` shows the base URL only.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::http::{self, CappedBody};
use super::{Delivery, Secret, SinkError, SinkResult};
use crate::engine::taxonomy::{Outcome, TelegramError, TransportKind, parse_telegram_error};

/// Largest answer read. Bot API answers are small JSON documents; the cap
/// only guards memory against a misconfigured `api_url`.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Longest method name passed through; Bot API names are short.
const MAX_METHOD_LEN: usize = 64;

/// Sends messages through the Bot API (or the sandbox, or any look-alike).
#[derive(Clone)]
pub struct TelegramSink {
    client: reqwest::Client,
    /// `api_url` without a trailing `/`; no token.
    base: String,
    token: Secret,
}

impl TelegramSink {
    /// `api_url` is the Bot API base, e.g. `https://api.telegram.org` (a
    /// path prefix is kept: a reverse proxy may serve it under one).
    pub fn new(client: reqwest::Client, api_url: &str, token: Secret) -> Result<Self, SinkError> {
        let url = http::parse_http_url(api_url).map_err(|why| SinkError::Invalid {
            what: "telegram.apiUrl",
            why,
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SinkError::Invalid {
                what: "telegram.apiUrl",
                why: "user info is not allowed",
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(SinkError::Invalid {
                what: "telegram.apiUrl",
                why: "a query or fragment is not allowed",
            });
        }
        if !token_is_url_safe(token.expose()) {
            return Err(SinkError::InvalidToken);
        }
        Ok(TelegramSink {
            client,
            base: url.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends `delivery` with its method: the parameters plus `chat_id`.
    pub async fn send(&self, delivery: &Delivery, timeout: Duration) -> SinkResult {
        let mut body = delivery.params.clone();
        // The record keeps chat_id apart; the chat in the delivery wins.
        body.insert("chat_id".into(), json!(delivery.chat));
        self.call(&delivery.method, &body, timeout).await
    }

    /// Any other Bot API method (`getMe`, `getChat`, ...) for the drop-in
    /// endpoint: the same call, answered with Telegram's raw body. JSON
    /// parameters only; file uploads are not passed through.
    pub async fn passthrough(
        &self,
        method: &str,
        params: &Map<String, Value>,
        timeout: Duration,
    ) -> SinkResult {
        self.call(method, params, timeout).await
    }

    async fn call(
        &self,
        method: &str,
        params: &Map<String, Value>,
        timeout: Duration,
    ) -> SinkResult {
        if !method_is_valid(method) {
            return refused_method();
        }
        let body = match serde_json::to_vec(params) {
            Ok(b) => b,
            Err(_) => {
                return SinkResult::failed(
                    refused("Bad Request: parameters are not serializable"),
                    "unserializable params",
                );
            }
        };
        let url = format!("{}/bot{}/{}", self.base, self.token.expose(), method);
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = http::read_capped(response, MAX_ANSWER_BYTES).await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => SinkResult::timed_out(timeout),
            Ok(Err(err)) => {
                let (outcome, detail) = http::failure(err);
                SinkResult::failed(outcome, http::scrub(detail, self.token.expose()))
            }
            Ok(Ok((status, body))) => {
                let mut result = interpret(status, body);
                result.detail = result.detail.map(|d| http::scrub(d, self.token.expose()));
                result
            }
        }
    }
}

impl fmt::Debug for TelegramSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramSink")
            .field("api_url", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Turns Telegram's answer into a result.
fn interpret(status: u16, answer: CappedBody) -> SinkResult {
    let CappedBody { bytes, complete } = answer;
    if !complete {
        return SinkResult {
            status: Some(status),
            ..SinkResult::failed(
                Outcome::Transport(TransportKind::Other),
                format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            )
        };
    }
    let mut result = SinkResult {
        outcome: Outcome::Delivered,
        status: Some(status),
        body: Some(bytes.clone()),
        receipt: None,
        detail: None,
    };
    if (200..300).contains(&status) {
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        match parsed
            .as_ref()
            .and_then(|v| v.get("ok"))
            .and_then(Value::as_bool)
        {
            Some(true) => {
                result.receipt = parsed.and_then(|mut v| v.get_mut("result").map(Value::take));
            }
            Some(false) => {
                let body = parse_telegram_error(&bytes);
                result.detail = Some(detail_of(status, body.as_ref()));
                result.outcome = Outcome::Http { status, body };
            }
            // A 2xx that is not the Bot API talking (a portal, a wrong
            // api_url) proves nothing was sent: never count it delivered.
            None => {
                result.outcome = Outcome::Transport(TransportKind::Other);
                result.detail = Some(format!("HTTP {status} answer is not a Bot API response"));
            }
        }
        return result;
    }
    let body = parse_telegram_error(&bytes);
    result.detail = Some(detail_of(status, body.as_ref()));
    result.outcome = Outcome::Http { status, body };
    result
}

fn detail_of(status: u16, body: Option<&TelegramError>) -> String {
    match body {
        Some(b) if !b.description.is_empty() => format!("HTTP {status}: {}", b.description),
        _ => format!("HTTP {status}"),
    }
}

/// Bot API method names are ASCII letters and digits (`sendMessage`); any
/// other character could reshape the request path.
fn method_is_valid(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Bot tokens are `<digits>:<letters, digits, '_' and '-'>`; be a little
/// lenient on shape but refuse anything that would change the URL.
fn token_is_url_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

fn refused(description: &str) -> Outcome {
    Outcome::Http {
        status: 400,
        body: Some(TelegramError {
            error_code: 400,
            description: description.into(),
            retry_after: None,
            migrate_to_chat_id: None,
        }),
    }
}

/// Refused before sending, shaped like a Bot API 400 so the taxonomy dead
/// letters it (a 404, Telegram's answer to an unknown method, would stop
/// the whole tier). `status` stays `None`: nothing was sent.
fn refused_method() -> SinkResult {
    SinkResult::failed(
        refused("Bad Request: invalid method name"),
        "invalid Bot API method name",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::taxonomy::{Action, Class};
    use crate::sandbox::{BotToken, FaultsConfig, Sandbox, SandboxConfig, WindowLimit};
    use crate::store::record::{ChatRef, MessageId};
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    const TOKEN: &str = "123456:AAH-very_secret-token0";
    const SECRET_PART: &str = "AAH-very_secret-token0";
    const T: Duration = Duration::from_secs(10);

    fn delivery(chat: i64, text: &str) -> Delivery {
        let mut params = Map::new();
        params.insert("text".into(), json!(text));
        Delivery {
            message_id: MessageId::generate(),
            correlation_id: "corr".into(),
            chat: ChatRef::Id(chat),
            method: "sendMessage".into(),
            params,
            attempt: 1,
        }
    }

    fn sink(base: &str, token: &str) -> TelegramSink {
        TelegramSink::new(http::http_client().unwrap(), base, Secret::new(token)).unwrap()
    }

    /// Every printable trace of a result, to grep for the token.
    fn traces(r: &SinkResult) -> String {
        let body = r
            .body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        format!("{r:?} {r:#?} {:?} {body:?}", r.detail)
    }

    fn assert_no_token(text: &str) {
        assert!(!text.contains(SECRET_PART), "token leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }

    async fn sandbox(config: SandboxConfig) -> crate::sandbox::SandboxHandle {
        Sandbox::start(config).await.unwrap()
    }

    #[tokio::test]
    async fn delivers_and_returns_the_message_as_receipt() {
        let sb = sandbox(SandboxConfig::default()).await;
        let s = sink(&sb.base_url(), TOKEN);
        let r = s.send(&delivery(42, "hello"), T).await;
        assert!(r.is_delivered(), "{r:?}");
        assert_eq!(r.status, Some(200));
        let receipt = r.receipt.as_ref().unwrap();
        assert!(receipt["message_id"].as_i64().is_some(), "{receipt}");
        assert_eq!(receipt["chat"]["id"], 42);
        assert_eq!(receipt["text"], "hello");
        // The raw body is Telegram's own answer, byte for byte.
        let raw: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(raw["ok"], true);
        assert_eq!(&raw["result"], receipt);
        let seen = sb.messages(0);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].chat_id, seen[0].text.as_str()), (42, "hello"));
        assert_no_token(&traces(&r));
        assert_no_token(&format!("{s:?}"));
    }

    #[tokio::test]
    async fn a_second_send_within_the_window_is_a_429_with_retry_after() {
        let mut config = SandboxConfig::default();
        // An hour-long window: the second send is refused however slow the machine.
        config.limits.per_chat = WindowLimit::new(1, 3_600_000);
        let sb = sandbox(config).await;
        let s = sink(&sb.base_url(), TOKEN);
        assert!(s.send(&delivery(7, "one"), T).await.is_delivered());
        let r = s.send(&delivery(7, "two"), T).await;
        let Outcome::Http {
            status: 429,
            body: Some(body),
        } = &r.outcome
        else {
            panic!("{r:?}");
        };
        assert!(body.retry_after.is_some_and(|s| s >= 1), "{body:?}");
        assert_eq!(r.status, Some(429));
        assert!(matches!(
            r.classify().unwrap().action,
            Action::Wait(w) if w >= Duration::from_secs(1)
        ));
        assert_no_token(&traces(&r));
    }

    #[tokio::test]
    async fn chat_faults_come_back_as_telegram_said_them() {
        let sb = sandbox(SandboxConfig::default()).await;
        sb.set_faults(FaultsConfig {
            blocked_chats: vec![5],
            migrated_chats: BTreeMap::from([(-5, -1_000_000_000_005)]),
            ..FaultsConfig::default()
        })
        .unwrap();
        let s = sink(&sb.base_url(), TOKEN);

        let blocked = s.send(&delivery(5, "x"), T).await;
        assert!(
            matches!(&blocked.outcome, Outcome::Http { status: 403, body: Some(b) }
                if b.description.contains("blocked")),
            "{blocked:?}"
        );
        assert_eq!(
            blocked.classify().unwrap().class,
            Class::RecipientUnreachable
        );

        let migrated = s.send(&delivery(-5, "x"), T).await;
        assert!(
            matches!(&migrated.outcome, Outcome::Http { status: 400, body: Some(b) }
                if b.migrate_to_chat_id == Some(-1_000_000_000_005)),
            "{migrated:?}"
        );
        assert_eq!(
            migrated.classify().unwrap().action,
            Action::Readdress(-1_000_000_000_005)
        );
        assert_no_token(&traces(&blocked));
        assert_no_token(&traces(&migrated));
    }

    #[tokio::test]
    async fn server_errors_dark_periods_and_bad_tokens() {
        let sb = sandbox(SandboxConfig {
            tokens: vec![BotToken::new(TOKEN)],
            ..SandboxConfig::default()
        })
        .await;
        let s = sink(&sb.base_url(), TOKEN);

        sb.set_faults(FaultsConfig {
            error_rate: 1.0,
            ..FaultsConfig::default()
        })
        .unwrap();
        let r = s.send(&delivery(1, "x"), T).await;
        assert!(
            matches!(r.outcome, Outcome::Http { status: 500, .. }),
            "{r:?}"
        );
        assert_eq!(r.classify().unwrap().action, Action::Retry);

        sb.set_faults(FaultsConfig {
            dark: true,
            ..FaultsConfig::default()
        })
        .unwrap();
        let r = s.send(&delivery(1, "x"), T).await;
        assert!(
            matches!(r.outcome, Outcome::Http { status: 502, .. }),
            "{r:?}"
        );
        assert_eq!(r.classify().unwrap().class, Class::Transient);

        sb.set_faults(FaultsConfig::default()).unwrap();
        let stranger = sink(&sb.base_url(), "999:not-the-configured-token");
        let r = stranger.send(&delivery(1, "x"), T).await;
        assert!(
            matches!(r.outcome, Outcome::Http { status: 401, .. }),
            "{r:?}"
        );
        assert_eq!(r.classify().unwrap().action, Action::StopTier);
        assert!(!traces(&r).contains("not-the-configured-token"));
    }

    #[tokio::test]
    async fn a_slow_api_is_a_timeout() {
        let sb = sandbox(SandboxConfig::default()).await;
        sb.set_faults(FaultsConfig {
            latency_ms: 60_000,
            ..FaultsConfig::default()
        })
        .unwrap();
        let s = sink(&sb.base_url(), TOKEN);
        let r = s.send(&delivery(1, "x"), Duration::from_millis(200)).await;
        assert_eq!(r.outcome, Outcome::Timeout, "{r:?}");
        assert_eq!(r.status, None);
        assert_no_token(&traces(&r));
    }

    #[tokio::test]
    async fn passthrough_answers_with_telegrams_body() {
        let sb = sandbox(SandboxConfig::default()).await;
        let s = sink(&format!("{}/", sb.base_url()), TOKEN);
        let r = s.passthrough("getMe", &Map::new(), T).await;
        assert!(r.is_delivered(), "{r:?}");
        assert_eq!(r.receipt.as_ref().unwrap()["id"], 123456);
        // Unknown to the sandbox: its own 404 body comes back.
        let r = s.passthrough("getUpdates", &Map::new(), T).await;
        assert_eq!(r.status, Some(404));
        let raw: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(raw["description"], "Not Found");
        // Methods that would reshape the path are refused locally, as a 400.
        for bad in ["", "../getMe", "getMe?x=1", "send/Message", "sendMessage#"] {
            let r = s.passthrough(bad, &Map::new(), T).await;
            assert_eq!(r.status, None, "{bad}");
            assert_eq!(
                r.classify().unwrap().action,
                Action::DeadLetter,
                "{bad}: {r:?}"
            );
        }
        assert_eq!(sb.counters().requests, 2);
    }

    #[tokio::test]
    async fn transport_failures_are_classified_and_never_show_the_token() {
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let s = sink(&format!("http://{addr}"), TOKEN);
        let r = s.send(&delivery(1, "x"), T).await;
        assert_eq!(
            r.outcome,
            Outcome::Transport(TransportKind::Connect),
            "{r:?}"
        );
        assert!(r.detail.as_ref().is_some_and(|d| !d.is_empty()));
        assert_no_token(&traces(&r));

        // A peer that hangs up without answering.
        let hangup = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hangup.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (conn, _) = hangup.accept().await.unwrap();
                drop(conn);
            }
        });
        let s = sink(&format!("http://{addr}"), TOKEN);
        let r = s.send(&delivery(1, "x"), T).await;
        assert!(
            matches!(r.outcome, Outcome::Transport(TransportKind::Reset)),
            "{r:?}"
        );
        assert_no_token(&traces(&r));

        // TLS to a plain-HTTP server: the handshake fails.
        let sb = sandbox(SandboxConfig::default()).await;
        let https = sb.base_url().replace("http://", "https://");
        let s = sink(&https, TOKEN);
        let r = s.send(&delivery(1, "x"), T).await;
        assert_eq!(r.outcome, Outcome::Transport(TransportKind::Tls), "{r:?}");
        assert_no_token(&traces(&r));
        server.abort();
    }

    #[tokio::test]
    async fn non_bot_api_answers_are_never_delivered() {
        use axum::{Router, routing::any};
        let app = Router::new()
            .route("/portal/{*rest}", any(|| async { "<html>welcome</html>" }))
            .route(
                "/big/{*rest}",
                any(|| async { "x".repeat(MAX_ANSWER_BYTES + 1) }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let r = sink(&format!("http://{addr}/portal"), TOKEN)
            .send(&delivery(1, "x"), T)
            .await;
        assert_eq!(r.outcome, Outcome::Transport(TransportKind::Other), "{r:?}");
        assert_eq!(r.status, Some(200));
        let r = sink(&format!("http://{addr}/big"), TOKEN)
            .send(&delivery(1, "x"), T)
            .await;
        assert_eq!(r.outcome, Outcome::Transport(TransportKind::Other), "{r:?}");
        assert_no_token(&traces(&r));
        server.abort();
    }

    #[test]
    fn construction_rejects_unsafe_urls_and_tokens() {
        let c = http::http_client().unwrap();
        let new = |url: &str, token: &str| TelegramSink::new(c.clone(), url, Secret::new(token));
        assert!(new("https://api.telegram.org", TOKEN).is_ok());
        assert!(new("ftp://api.telegram.org", TOKEN).is_err());
        assert!(new("https://u:p@api.telegram.org", TOKEN).is_err());
        assert!(new("https://api.telegram.org/?x=1", TOKEN).is_err());
        for bad in ["", "1:a/b", "1:a?b", "1:a b", "1:a#b", "1:a%2F"] {
            let err = new("https://api.telegram.org", bad).unwrap_err();
            assert!(matches!(err, SinkError::InvalidToken), "{bad}");
        }
        let err = new("https://api.telegram.org", "1:sec/ret").unwrap_err();
        assert!(!err.to_string().contains("sec/ret"));
    }
}
