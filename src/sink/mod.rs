//! Delivery sinks: the last step of the data path, where one attempt of one
//! message leaves herald — to the Telegram Bot API, to a webhook, or into a
//! spool directory — plus delivery receipts to a producer's callback URL.
//!
//! Owns: making one attempt and reporting what happened as a [`SinkResult`]
//! (an [`Outcome`] for the taxonomy, the raw answer for the Bot API drop-in
//! endpoint, Telegram's `result` as the receipt). Leaves to others: deciding
//! what the outcome means (`crate::engine::taxonomy`), retries, limits and
//! breakers (the engine and the dispatcher), resolving secrets (the agent
//! hands in [`Secret`] values), and durability (the store).
//!
//! Invariants: `send` never panics and never returns early without a
//! result — every failure, local or remote, is an [`Outcome`]; one attempt
//! is bounded by the timeout the caller passes (expiry is
//! [`Outcome::Timeout`]); no token or HMAC key appears in a result, an error,
//! a log line or a `Debug` output.
//!
//! # Decision: a thin HTTP client, not teloxide
//!
//! The Telegram sink is a small `reqwest` client rather than teloxide (which
//! DESIGN §7 lists): the Bot API drop-in endpoint must hand Telegram's own
//! response body back byte for byte and pass arbitrary methods through, and
//! herald must see every 429 and its `retry_after` itself — its limiter pauses
//! the whole bot — instead of a library's built-in throttling and retrying.
//! One `reqwest::Client` ([`http_client`]) with rustls and connection pooling
//! serves every sink and the receipt sender.
//!
//! Files: `secret` (the redacting wrapper), `signing` (the HMAC scheme),
//! `http` (client, error mapping), `telegram`, `webhook`, `spool`, `receipt`.

mod http;
pub mod receipt;
pub mod secret;
pub mod signing;
pub mod spool;
pub mod telegram;
pub mod webhook;

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

pub use http::http_client;
pub use receipt::{
    Receipt, ReceiptConfig, ReceiptRefused, ReceiptSender, ReceiptState, ReceiptStats,
};
pub use secret::Secret;
pub use signing::{Signer, verify_signature};
pub use spool::SpoolSink;
pub use telegram::TelegramSink;
pub use webhook::WebhookSink;

use crate::api::delivery_tier::{Channel, DeliveryTierSpec};
use crate::engine::taxonomy::{self, Classification, Outcome};
use crate::store::record::{ChatRef, MessageId, StoredMessage};

/// One attempt to deliver one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub message_id: MessageId,
    pub correlation_id: String,
    /// Where to send; the dispatcher may readdress a migrated group.
    pub chat: ChatRef,
    /// The Bot API method, e.g. `sendMessage`.
    pub method: String,
    /// The method's parameters without `chat_id`.
    pub params: Map<String, Value>,
    /// 1 for the first attempt.
    pub attempt: u32,
}

impl Delivery {
    /// The next attempt of a stored message.
    pub fn from_stored(m: &StoredMessage) -> Self {
        Delivery {
            message_id: m.id,
            correlation_id: m.msg.correlation_id.clone(),
            chat: m.msg.chat_id.clone(),
            method: m.msg.method.clone(),
            params: m.msg.params.clone(),
            attempt: u32::try_from(m.attempts.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        }
    }

    /// The JSON document the webhook posts and the spool writes:
    /// `{"id","correlation_id","chat_id","method","params","attempt"}`.
    pub fn document(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Document<'a> {
            id: &'a MessageId,
            correlation_id: &'a str,
            chat_id: &'a ChatRef,
            method: &'a str,
            params: &'a Map<String, Value>,
            attempt: u32,
        }
        let doc = Document {
            id: &self.message_id,
            correlation_id: &self.correlation_id,
            chat_id: &self.chat,
            method: &self.method,
            params: &self.params,
            attempt: self.attempt,
        };
        // Serializing these types cannot fail: string keys, no maps with
        // non-string keys, no custom errors.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// What one attempt produced.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkResult {
    pub outcome: Outcome,
    /// The HTTP status received, if an answer arrived.
    pub status: Option<u16>,
    /// The raw response body (capped), for the Bot API drop-in endpoint.
    pub body: Option<Bytes>,
    /// On success: Telegram's `result`, the webhook's JSON answer, or the
    /// spool file name.
    pub receipt: Option<Value>,
    /// A short, secret-free description of a failure, for logs and the
    /// attempt record.
    pub detail: Option<String>,
}

impl SinkResult {
    pub fn is_delivered(&self) -> bool {
        self.outcome == Outcome::Delivered
    }

    /// What the taxonomy makes of the outcome; `None` when delivered.
    pub fn classify(&self) -> Option<Classification> {
        taxonomy::classify(&self.outcome)
    }

    pub(crate) fn failed(outcome: Outcome, detail: impl Into<String>) -> Self {
        SinkResult {
            outcome,
            status: None,
            body: None,
            receipt: None,
            detail: Some(detail.into()),
        }
    }

    pub(crate) fn timed_out(timeout: Duration) -> Self {
        SinkResult::failed(
            Outcome::Timeout,
            format!("no complete answer within {} ms", timeout.as_millis()),
        )
    }
}

/// Secrets a tier's sink needs, resolved by the agent.
#[derive(Clone, Debug, Default)]
pub struct TierSecrets {
    /// For `telegram`: the bot token.
    pub bot_token: Option<Secret>,
    /// For `webhook`: the HMAC key; requests are unsigned without it.
    pub hmac_secret: Option<Secret>,
    /// For `store.type redis`: the URL, which may carry a password.
    pub redis_url: Option<Secret>,
}

/// A sink could not be built from its settings. Never carries a secret or a
/// URL (URLs may hold credentials).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("channel {channel} requires `{field}` settings")]
    MissingSettings {
        channel: &'static str,
        field: &'static str,
    },
    #[error("{0} is referenced but no value was resolved for it")]
    MissingSecret(&'static str),
    #[error("the bot token has characters a Bot API URL cannot carry")]
    InvalidToken,
    #[error("{what} is invalid: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The sink of one tier.
#[derive(Clone, Debug)]
pub enum Sink {
    Telegram(TelegramSink),
    Webhook(WebhookSink),
    Spool(SpoolSink),
}

impl Sink {
    /// Builds the sink a tier's spec describes, with its secrets already
    /// resolved. `client` is the shared [`http_client`].
    pub fn from_spec(
        spec: &DeliveryTierSpec,
        secrets: TierSecrets,
        client: &reqwest::Client,
    ) -> Result<Self, SinkError> {
        match spec.channel {
            Channel::Telegram => {
                let t = spec.telegram.as_ref().ok_or(SinkError::MissingSettings {
                    channel: "telegram",
                    field: "telegram",
                })?;
                let token = secrets
                    .bot_token
                    .ok_or(SinkError::MissingSecret("telegram.tokenSecretRef"))?;
                TelegramSink::new(client.clone(), &t.api_url, token).map(Sink::Telegram)
            }
            Channel::Webhook => {
                let w = spec.webhook.as_ref().ok_or(SinkError::MissingSettings {
                    channel: "webhook",
                    field: "webhook",
                })?;
                let url = w.url.as_deref().ok_or(SinkError::MissingSettings {
                    channel: "webhook",
                    field: "webhook.url",
                })?;
                if w.hmac_secret_ref.is_some() && secrets.hmac_secret.is_none() {
                    return Err(SinkError::MissingSecret("webhook.hmacSecretRef"));
                }
                WebhookSink::new(
                    client.clone(),
                    url,
                    secrets.hmac_secret,
                    &w.signature_header,
                )
                .map(Sink::Webhook)
            }
            Channel::Spool => {
                let path = spec.spool.as_ref().and_then(|s| s.path.as_deref()).ok_or(
                    SinkError::MissingSettings {
                        channel: "spool",
                        field: "spool.path",
                    },
                )?;
                SpoolSink::new(path).map(Sink::Spool)
            }
        }
    }

    pub fn channel(&self) -> Channel {
        match self {
            Sink::Telegram(_) => Channel::Telegram,
            Sink::Webhook(_) => Channel::Webhook,
            Sink::Spool(_) => Channel::Spool,
        }
    }

    /// Makes one attempt, bounded by `timeout`.
    pub async fn send(&self, delivery: &Delivery, timeout: Duration) -> SinkResult {
        match self {
            Sink::Telegram(s) => s.send(delivery, timeout).await,
            Sink::Webhook(s) => s.send(delivery, timeout).await,
            Sink::Spool(s) => s.send(delivery, timeout).await,
        }
    }

    /// The Telegram sink, for the drop-in endpoint's pass-through calls.
    pub fn as_telegram(&self) -> Option<&TelegramSink> {
        match self {
            Sink::Telegram(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::delivery_tier::{SpoolSpec, TelegramSpec, WebhookSpec};
    use crate::api::refs::SecretKeyRef;
    use crate::store::record::{Attempt, MessageState, NewMessage};
    use serde_json::json;

    fn spec(channel: Channel) -> DeliveryTierSpec {
        serde_json::from_value(json!({ "channel": channel })).unwrap()
    }

    fn secret_ref() -> SecretKeyRef {
        SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn builds_each_channel_and_names_what_is_missing() {
        let client = http_client().unwrap();
        let mut s = spec(Channel::Telegram);
        let err = Sink::from_spec(&s, TierSecrets::default(), &client).unwrap_err();
        assert!(err.to_string().contains("telegram"), "{err}");
        s.telegram = Some(TelegramSpec {
            token_secret_ref: Some(secret_ref()),
            api_url: "https://api.telegram.org".into(),
        });
        let err = Sink::from_spec(&s, TierSecrets::default(), &client).unwrap_err();
        assert!(matches!(err, SinkError::MissingSecret(_)));
        let secrets = TierSecrets {
            bot_token: Some(Secret::new("1:abc")),
            ..TierSecrets::default()
        };
        let sink = Sink::from_spec(&s, secrets, &client).unwrap();
        assert_eq!(sink.channel(), Channel::Telegram);
        assert!(sink.as_telegram().is_some());

        let mut w = spec(Channel::Webhook);
        w.webhook = Some(WebhookSpec {
            url: Some("http://127.0.0.1:9/hook".into()),
            hmac_secret_ref: Some(secret_ref()),
            signature_header: "X-Sig".into(),
        });
        let err = Sink::from_spec(&w, TierSecrets::default(), &client).unwrap_err();
        assert!(matches!(err, SinkError::MissingSecret(_)));
        let secrets = TierSecrets {
            hmac_secret: Some(Secret::new("k")),
            ..TierSecrets::default()
        };
        assert_eq!(
            Sink::from_spec(&w, secrets, &client).unwrap().channel(),
            Channel::Webhook
        );

        let mut p = spec(Channel::Spool);
        assert!(Sink::from_spec(&p, TierSecrets::default(), &client).is_err());
        p.spool = Some(SpoolSpec {
            path: Some("/var/spool/herald".into()),
        });
        let sink = Sink::from_spec(&p, TierSecrets::default(), &client).unwrap();
        assert_eq!(sink.channel(), Channel::Spool);
        assert!(sink.as_telegram().is_none());
    }

    #[test]
    fn delivery_from_stored_and_its_document() {
        let mut params = Map::new();
        params.insert("text".into(), json!("hi"));
        let id = MessageId::generate();
        let stored = StoredMessage {
            id,
            msg: NewMessage {
                chat_id: ChatRef::Username("@news".into()),
                method: "sendMessage".into(),
                params,
                priority: crate::engine::Priority::Normal,
                message_type: "t".into(),
                idempotency_key: None,
                correlation_id: "corr".into(),
                callback_url: None,
                not_before: None,
                tier: None,
                bot: "main".into(),
            },
            state: MessageState::InFlight,
            attempts: vec![Attempt {
                at_ms: 1,
                tier: "a".into(),
                outcome: "transient".into(),
                error: None,
            }],
            created_ms: 1,
            updated_ms: 1,
            next_attempt_ms: None,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: None,
        };
        let d = Delivery::from_stored(&stored);
        assert_eq!(d.attempt, 2);
        let doc: Value = serde_json::from_slice(&d.document()).unwrap();
        assert_eq!(
            doc,
            json!({"id": id.to_string(), "correlation_id": "corr", "chat_id": "@news",
                   "method": "sendMessage", "params": {"text": "hi"}, "attempt": 2})
        );
    }
}
