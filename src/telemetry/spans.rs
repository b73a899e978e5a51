//! What each herald span says: its name, kind, times, attributes and error
//! label, as plain data with no OpenTelemetry type in it.
//!
//! Owns the choice of attributes — the one place to review for what leaves
//! the process in a trace. Leaves to `otel` the ids, the sampling and the
//! translation into the SDK's span records; compiled in every build so its
//! tests run without the `otel` feature.
//!
//! Invariant (tested): attributes are built only from ids, names, enums,
//! numbers and fixed labels. Never from message parameters, receipts, sink
//! error details or response bodies (they may quote user data), and never
//! from tier settings (URLs and tokens live there).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::delivery_tier::Channel;
use crate::engine::dispatch::Verdict;
use crate::engine::taxonomy::Outcome;
use crate::store::StoredMessage;
use crate::telemetry::{AttemptEnd, AttemptOf};

/// The span kinds herald uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The message entering the queue (the root of a message's trace).
    Producer,
    /// A call out to a sink.
    Client,
    Internal,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// One finished span, before ids are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: &'static str,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// A fixed label when the operation failed (the span's error status).
    pub error: Option<&'static str>,
}

fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

fn int(v: impl TryInto<i64>) -> Value {
    Value::Int(v.try_into().unwrap_or(i64::MAX))
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The root span of a message: from the start of the batch that accepted it
/// (`created_ms`) to `end`, when it was durable.
pub fn message(msg: &StoredMessage, source: &str, end: SystemTime) -> Plan {
    let n = &msg.msg;
    let mut attributes = vec![
        ("herald.message_id", s(msg.id.to_string())),
        ("herald.correlation_id", s(n.correlation_id.as_str())),
        ("herald.chat_id", s(n.chat_id.to_string())),
        ("herald.priority", s(n.priority.as_str())),
        ("herald.message_type", s(n.message_type.as_str())),
        ("herald.method", s(n.method.as_str())),
        ("herald.bot", s(n.bot.as_str())),
        ("herald.source", s(source)),
    ];
    if let Some(tier) = &n.tier {
        attributes.push(("herald.tier", s(tier.as_str())));
    }
    Plan {
        name: "message",
        kind: Kind::Producer,
        start: at_ms(msg.created_ms).min(end),
        end,
        attributes,
        error: None,
    }
}

/// What became of the message after an attempt, as a fixed label.
pub fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Delivered => "delivered",
        Verdict::RetryAt(_) => "retry",
        Verdict::Held(_) => "held",
        Verdict::FailedOver { .. } => "failover",
        Verdict::DeadLetter { .. } => "dead_letter",
        Verdict::Readdressed { .. } => "readdressed",
    }
}

pub fn channel_label(c: Channel) -> &'static str {
    match c {
        Channel::Telegram => "telegram",
        Channel::Webhook => "webhook",
        Channel::Spool => "spool",
    }
}

/// One attempt, ending at `at` after `end.latency`.
pub fn attempt(
    msg: AttemptOf<'_>,
    channel: Option<Channel>,
    end: &AttemptEnd<'_>,
    at: SystemTime,
) -> Plan {
    let AttemptEnd {
        attempt,
        result,
        class,
        verdict,
        latency,
    } = *end;
    let outcome = &result.outcome;
    let start = at.checked_sub(latency).unwrap_or(at);
    // Waiting since acceptance, or since the previous attempt ended (its
    // backoff included): the time the queue, limiter and breaker took.
    let waiting_since = msg
        .earlier
        .last()
        .map_or(msg.created_ms, |a| a.at_ms.max(msg.created_ms));
    let mut attributes = vec![
        ("herald.message_id", s(msg.id.to_string())),
        ("herald.correlation_id", s(msg.correlation_id)),
        ("herald.attempt", int(msg.earlier.len().saturating_add(1))),
        ("herald.tier", s(attempt.tier.as_str())),
        ("herald.outcome", s(verdict_label(verdict))),
        (
            "herald.queue_wait_ms",
            int(ms_of(start).saturating_sub(waiting_since)),
        ),
    ];
    if let Some(c) = channel {
        attributes.push(("herald.sink", s(channel_label(c))));
    }
    if let Some(code) = result.status {
        attributes.push(("http.response.status_code", int(code)));
    }
    if let Some(c) = &class {
        attributes.push(("herald.error_class", s(c.class.as_str())));
        attributes.push(("herald.error_reason", s(c.reason)));
    }
    if let Outcome::Http { body: Some(e), .. } = outcome
        && let Some(secs) = e.retry_after
    {
        attributes.push(("herald.retry_after_s", int(secs)));
    }
    if let Verdict::DeadLetter { reason } = verdict {
        attributes.push(("herald.dead_letter_reason", s(reason.label())));
    }
    Plan {
        name: "attempt",
        kind: Kind::Client,
        start,
        end: at,
        attributes,
        error: class.map(|c| c.class.as_str()),
    }
}

/// One operator reconcile of a tier.
pub fn reconcile(
    namespace: &str,
    name: &str,
    generation: Option<i64>,
    start: SystemTime,
    end: SystemTime,
    error: Option<&'static str>,
) -> Plan {
    let mut attributes = vec![
        ("k8s.namespace.name", s(namespace)),
        ("herald.tier", s(name)),
        (
            "herald.outcome",
            s(if error.is_some() { "error" } else { "ok" }),
        ),
    ];
    if let Some(g) = generation {
        attributes.push(("herald.generation", int(g)));
    }
    if let Some(e) = error {
        attributes.push(("herald.error_class", s(e)));
    }
    Plan {
        name: "reconcile",
        kind: Kind::Internal,
        start: start.min(end),
        end,
        attributes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Priority;
    use crate::engine::dispatch::DeadLetterReason;
    use crate::engine::taxonomy::{TelegramError, classify};
    use crate::sink::SinkResult;
    use crate::store::Attempt;
    use crate::store::{ChatRef, MessageId, MessageState, NewMessage};

    const TOKEN: &str = "123456:AAHsecretSECRETsecret";
    const PRIVATE: &str = "private-text-of-the-user";

    fn stored() -> StoredMessage {
        let mut params = serde_json::Map::new();
        params.insert("text".into(), PRIVATE.into());
        params.insert("token".into(), TOKEN.into());
        StoredMessage {
            id: MessageId::generate(),
            msg: NewMessage {
                chat_id: ChatRef::Id(42),
                method: "sendMessage".into(),
                params,
                priority: Priority::High,
                message_type: "alert".into(),
                idempotency_key: Some(PRIVATE.into()),
                correlation_id: "corr-1".into(),
                callback_url: Some(format!("https://hooks.example/{TOKEN}")),
                not_before: None,
                tier: Some("primary".into()),
                bot: "ops-bot".into(),
            },
            state: MessageState::Pending,
            attempts: vec![Attempt {
                at_ms: 1_700_000_000_500,
                tier: "primary".into(),
                outcome: "transient".into(),
                error: Some(format!("HTTP 502 from https://api.example/bot{TOKEN}")),
            }],
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_000,
            next_attempt_ms: None,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: Some(serde_json::json!({ "text": PRIVATE })),
            dead_reason: None,
        }
    }

    fn attribute(plan: &Plan, key: &str) -> Option<Value> {
        plan.attributes
            .iter()
            .find(|(n, _)| *n == key)
            .map(|(_, v)| v.clone())
    }

    fn leaks(plan: &Plan) -> Vec<String> {
        plan.attributes
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Str(t) if t.contains(TOKEN) || t.contains(PRIVATE) => Some(k.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_root_span_carries_the_ids_and_nothing_private() {
        let m = stored();
        let p = message(&m, "api", at_ms(1_700_000_000_020));
        assert_eq!(p.name, "message");
        assert_eq!(p.start, at_ms(1_700_000_000_000));
        let get = |k| attribute(&p, k);
        assert_eq!(get("herald.correlation_id"), Some(s("corr-1")));
        assert_eq!(get("herald.message_id"), Some(s(m.id.to_string())));
        assert_eq!(get("herald.priority"), Some(s("high")));
        assert_eq!(get("herald.tier"), Some(s("primary")));
        assert!(leaks(&p).is_empty(), "leaked into {:?}", leaks(&p));
    }

    #[test]
    fn an_attempt_names_its_outcome_and_nothing_private() {
        let m = stored();
        let a = Attempt {
            at_ms: 1_700_000_002_000,
            tier: "primary".into(),
            outcome: "rate_limited".into(),
            error: Some(format!("Too Many Requests for {TOKEN}: {PRIVATE}")),
        };
        let result = SinkResult {
            outcome: Outcome::Http {
                status: 429,
                body: Some(TelegramError {
                    error_code: 429,
                    description: format!("Too Many Requests {PRIVATE}"),
                    retry_after: Some(3),
                    migrate_to_chat_id: None,
                }),
            },
            status: Some(429),
            body: Some(format!("{{\"description\":\"{PRIVATE}\"}}").into()),
            receipt: Some(serde_json::json!({ "token": TOKEN })),
            detail: Some(format!("Too Many Requests for {TOKEN}")),
        };
        let end = at_ms(1_700_000_002_000);
        let verdict = Verdict::DeadLetter {
            reason: DeadLetterReason::Refused {
                reason: "bad request",
            },
        };
        let p = attempt(
            (&m).into(),
            Some(Channel::Telegram),
            &AttemptEnd {
                attempt: &a,
                result: &result,
                class: classify(&result.outcome),
                verdict: &verdict,
                latency: Duration::from_millis(250),
            },
            end,
        );
        let get = |k| attribute(&p, k);
        assert_eq!(get("herald.attempt"), Some(Value::Int(2)));
        assert_eq!(get("herald.outcome"), Some(s("dead_letter")));
        assert_eq!(get("herald.sink"), Some(s("telegram")));
        assert_eq!(get("herald.retry_after_s"), Some(Value::Int(3)));
        assert_eq!(get("http.response.status_code"), Some(Value::Int(429)));
        assert_eq!(get("herald.error_class"), Some(s("rate_limited")));
        // Started 250 ms before the end, 1 250 ms after the first attempt.
        assert_eq!(get("herald.queue_wait_ms"), Some(Value::Int(1_250)));
        assert_eq!(p.error, Some("rate_limited"));
        assert!(leaks(&p).is_empty(), "leaked into {:?}", leaks(&p));
    }

    #[test]
    fn a_delivered_attempt_is_not_an_error() {
        let mut m = stored();
        m.attempts.clear();
        let a = Attempt {
            at_ms: 0,
            tier: "primary".into(),
            outcome: "delivered".into(),
            error: None,
        };
        let result = SinkResult {
            outcome: Outcome::Delivered,
            status: Some(200),
            body: None,
            receipt: None,
            detail: None,
        };
        let p = attempt(
            (&m).into(),
            None,
            &AttemptEnd {
                attempt: &a,
                result: &result,
                class: classify(&result.outcome),
                verdict: &Verdict::Delivered,
                latency: Duration::from_millis(100),
            },
            at_ms(1_700_000_000_100),
        );
        assert_eq!(p.error, None);
        assert_eq!(p.start, at_ms(1_700_000_000_000));
        let get = |k| attribute(&p, k);
        assert_eq!(get("herald.attempt"), Some(Value::Int(1)));
        assert_eq!(get("herald.outcome"), Some(s("delivered")));
    }

    #[test]
    fn a_reconcile_span_says_how_it_ended() {
        let t = at_ms(1_700_000_000_000);
        let ok = reconcile(
            "apps",
            "primary",
            Some(3),
            t,
            t + Duration::from_millis(5),
            None,
        );
        assert_eq!(ok.error, None);
        assert!(ok.attributes.contains(&("herald.outcome", s("ok"))));
        let bad = reconcile("apps", "primary", None, t, t, Some("kube_api"));
        assert_eq!(bad.error, Some("kube_api"));
        assert!(
            bad.attributes
                .contains(&("herald.error_class", s("kube_api")))
        );
    }
}
