//! Turning what producers send into a `NewMessage`: the native JSON shape
//! (`POST /v1/messages`) and Bot API parameters (the drop-in endpoint).
//! Pure: no I/O; every refusal names its field.
//!
//! Limits are Telegram's: text 1–4096 characters, captions up to 1024,
//! `chat_id` an integer or `@username`.

use serde_json::{Map, Value};

use super::error::IngestError;
use crate::engine::Priority;
use crate::store::{ChatRef, NewMessage};

pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_CAPTION_CHARS: usize = 1024;

/// Bot API methods that herald queues; other methods pass through.
pub const SEND_METHODS: [&str; 3] = ["sendMessage", "sendPhoto", "sendDocument"];

/// Fields of the native shape that are herald's own, not Telegram's.
const HERALD_FIELDS: [&str; 7] = [
    "priority",
    "message_type",
    "idempotency_key",
    "correlation_id",
    "callback_url",
    "not_before",
    "tier",
];

/// Telegram fields accepted in the native shape and passed through.
const TELEGRAM_FIELDS: [&str; 10] = [
    "chat_id",
    "text",
    "photo",
    "document",
    "caption",
    "parse_mode",
    "disable_notification",
    "protect_content",
    "reply_markup",
    "message_thread_id",
];

/// What the caller fills in around a parsed message.
pub struct Context<'a> {
    /// The bot (entry tier) messages belong to.
    pub bot: &'a str,
    /// Tiers a message may name.
    pub known_tiers: &'a [String],
    /// Correlation id used when the producer gives none.
    pub fresh_correlation_id: &'a dyn Fn() -> String,
}

/// Parse one message of the native shape.
pub fn parse_native(value: &Value, ctx: &Context<'_>) -> Result<NewMessage, IngestError> {
    let Some(obj) = value.as_object() else {
        return Err(IngestError::invalid("", "a message must be a JSON object"));
    };
    for key in obj.keys() {
        if !HERALD_FIELDS.contains(&key.as_str()) && !TELEGRAM_FIELDS.contains(&key.as_str()) {
            return Err(IngestError::unknown(key.as_str()));
        }
    }
    let kinds: Vec<&str> = ["text", "photo", "document"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let method = match kinds.as_slice() {
        ["text"] => "sendMessage",
        ["photo"] => "sendPhoto",
        ["document"] => "sendDocument",
        [] => return Err(IngestError::missing("text")),
        _ => {
            return Err(IngestError::invalid(
                kinds[1],
                "give exactly one of text, photo or document",
            ));
        }
    };
    let mut params = Map::new();
    for key in TELEGRAM_FIELDS.iter().filter(|k| **k != "chat_id") {
        if let Some(v) = obj.get(*key) {
            params.insert((*key).to_owned(), v.clone());
        }
    }
    let chat_id = chat_ref(obj.get("chat_id"))?;
    check_params(method, &params)?;
    finish(
        method,
        chat_id,
        params,
        &HeraldFields::from_native(obj)?,
        ctx,
    )
}

/// Parse Bot API parameters for a send method (the drop-in endpoint).
/// Herald's own fields come from headers and are passed in `herald`.
pub fn parse_bot_api(
    method: &str,
    mut params: Map<String, Value>,
    herald: &HeraldFields,
    ctx: &Context<'_>,
) -> Result<NewMessage, IngestError> {
    let chat_id = chat_ref(params.remove("chat_id").as_ref())?;
    check_params(method, &params)?;
    finish(method, chat_id, params, herald, ctx)
}

fn finish(
    method: &str,
    chat_id: ChatRef,
    params: Map<String, Value>,
    herald: &HeraldFields,
    ctx: &Context<'_>,
) -> Result<NewMessage, IngestError> {
    if let Some(t) = &herald.tier
        && !ctx.known_tiers.iter().any(|k| k == t)
    {
        return Err(IngestError::invalid("tier", format!("unknown tier {t:?}")));
    }
    Ok(NewMessage {
        chat_id,
        method: method.to_owned(),
        params,
        priority: herald.priority,
        message_type: herald.message_type.clone(),
        idempotency_key: herald.idempotency_key.clone(),
        correlation_id: herald
            .correlation_id
            .clone()
            .unwrap_or_else(|| (ctx.fresh_correlation_id)()),
        callback_url: herald.callback_url.clone(),
        not_before: herald.not_before_ms,
        tier: herald.tier.clone(),
        bot: ctx.bot.to_owned(),
    })
}

/// herald's own per-message settings, from JSON fields or HTTP headers.
#[derive(Debug, Clone, Default)]
pub struct HeraldFields {
    pub priority: Priority,
    pub message_type: String,
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<String>,
    pub callback_url: Option<String>,
    pub not_before_ms: Option<u64>,
    pub tier: Option<String>,
}

impl HeraldFields {
    fn from_native(obj: &Map<String, Value>) -> Result<Self, IngestError> {
        let text = |k: &str| -> Result<Option<&str>, IngestError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(IngestError::invalid(k, "must be a string")),
            }
        };
        HeraldFields::from_strs(
            text("priority")?,
            text("message_type")?,
            text("idempotency_key")?,
            text("correlation_id")?,
            text("callback_url")?,
            text("not_before")?,
            text("tier")?,
        )
    }

    /// Check each field; the names are the native shape's.
    #[allow(clippy::too_many_arguments)]
    pub fn from_strs(
        priority: Option<&str>,
        message_type: Option<&str>,
        idempotency_key: Option<&str>,
        correlation_id: Option<&str>,
        callback_url: Option<&str>,
        not_before: Option<&str>,
        tier: Option<&str>,
    ) -> Result<Self, IngestError> {
        let priority = match priority {
            None => Priority::Normal,
            Some(p) => p
                .parse()
                .map_err(|e: crate::engine::priority::UnknownPriority| {
                    IngestError::invalid("priority", e.to_string())
                })?,
        };
        let message_type = match message_type {
            None => "default".to_owned(),
            Some(t) if is_message_type(t) => t.to_owned(),
            Some(_) => {
                return Err(IngestError::invalid(
                    "message_type",
                    "must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
                ));
            }
        };
        let bounded = |field: &str, v: Option<&str>, max: usize| match v {
            Some(s)
                if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) =>
            {
                Err(IngestError::invalid(
                    field,
                    format!("must be 1-{max} printable characters"),
                ))
            }
            other => Ok(other.map(str::to_owned)),
        };
        let idempotency_key = bounded("idempotency_key", idempotency_key, 256)?;
        let correlation_id = bounded("correlation_id", correlation_id, 128)?;
        let callback_url = bounded("callback_url", callback_url, 2048)?;
        if let Some(u) = &callback_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(IngestError::invalid(
                "callback_url",
                "must be an http(s) URL",
            ));
        }
        let not_before_ms =
            match not_before {
                None => None,
                Some(s) => {
                    let ts: jiff::Timestamp = s.parse().map_err(|_| {
                        IngestError::invalid(
                            "not_before",
                            "must be an RFC 3339 timestamp such as 2026-11-25T15:00:00Z",
                        )
                    })?;
                    Some(u64::try_from(ts.as_millisecond()).map_err(|_| {
                        IngestError::invalid("not_before", "must not be before 1970")
                    })?)
                }
            };
        let tier = bounded("tier", tier, 253)?;
        Ok(HeraldFields {
            priority,
            message_type,
            idempotency_key,
            correlation_id,
            callback_url,
            not_before_ms,
            tier,
        })
    }
}

fn is_message_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn chat_ref(v: Option<&Value>) -> Result<ChatRef, IngestError> {
    match v {
        None | Some(Value::Null) => Err(IngestError::missing("chat_id")),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|id| *id != 0)
            .map(ChatRef::Id)
            .ok_or_else(|| {
                IngestError::invalid("chat_id", "must be a non-zero integer or @username")
            }),
        Some(Value::String(s)) => s
            .trim()
            .parse::<ChatRef>()
            .ok()
            .filter(|c| *c != ChatRef::Id(0))
            .ok_or_else(|| {
                IngestError::invalid("chat_id", "must be a non-zero integer or @username")
            }),
        Some(_) => Err(IngestError::invalid(
            "chat_id",
            "must be a non-zero integer or @username",
        )),
    }
}

fn string_param<'a>(
    params: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, IngestError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(IngestError::invalid(key, "must be a string")),
    }
}

/// Telegram's own limits, checked before accepting so that a message that
/// can never be delivered is refused now rather than dead-lettered later.
fn check_params(method: &str, params: &Map<String, Value>) -> Result<(), IngestError> {
    match method {
        "sendMessage" => {
            let text = string_param(params, "text")?.ok_or_else(|| IngestError::missing("text"))?;
            if text.trim().is_empty() {
                return Err(IngestError::invalid("text", "must not be empty"));
            }
            let n = text.chars().count();
            if n > MAX_TEXT_CHARS {
                return Err(IngestError::invalid(
                    "text",
                    format!("is {n} characters; Telegram allows at most {MAX_TEXT_CHARS}"),
                ));
            }
        }
        "sendPhoto" | "sendDocument" => {
            let field = if method == "sendPhoto" {
                "photo"
            } else {
                "document"
            };
            let media = string_param(params, field)?.ok_or_else(|| IngestError::missing(field))?;
            if media.trim().is_empty() || media.len() > 2048 {
                return Err(IngestError::invalid(
                    field,
                    "must be an http(s) URL or a Telegram file_id of at most 2048 characters",
                ));
            }
            if let Some(c) = string_param(params, "caption")?
                && c.chars().count() > MAX_CAPTION_CHARS
            {
                return Err(IngestError::invalid(
                    "caption",
                    format!("Telegram allows at most {MAX_CAPTION_CHARS} characters"),
                ));
            }
        }
        other => {
            return Err(IngestError::invalid(
                "method",
                format!("{other} is not a send method herald queues"),
            ));
        }
    }
    if let Some(mode) = string_param(params, "parse_mode")?
        && !matches!(mode, "HTML" | "MarkdownV2" | "Markdown")
    {
        return Err(IngestError::invalid(
            "parse_mode",
            "must be HTML, MarkdownV2 or Markdown",
        ));
    }
    for flag in ["disable_notification", "protect_content"] {
        if let Some(v) = params.get(flag)
            && !v.is_boolean()
            && !matches!(v.as_str(), Some("true" | "false"))
        {
            return Err(IngestError::invalid(flag, "must be a boolean"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx_tiers() -> Vec<String> {
        vec!["primary".into(), "spool".into()]
    }

    fn parse(v: Value) -> Result<NewMessage, IngestError> {
        let tiers = ctx_tiers();
        let fresh = || "cid".to_owned();
        parse_native(
            &v,
            &Context {
                bot: "primary",
                known_tiers: &tiers,
                fresh_correlation_id: &fresh,
            },
        )
    }

    #[test]
    fn a_good_message_parses_with_defaults() {
        let m = parse(json!({"chat_id": 42, "text": "hi", "priority": "high"})).unwrap();
        assert_eq!(m.method, "sendMessage");
        assert_eq!(m.chat_id, ChatRef::Id(42));
        assert_eq!(m.priority, Priority::High);
        assert_eq!(m.message_type, "default");
        assert_eq!(m.correlation_id, "cid");
        assert_eq!(m.params["text"], "hi");
        let m =
            parse(json!({"chat_id": "@news", "photo": "https://x/y.png", "caption": "c"})).unwrap();
        assert_eq!(m.method, "sendPhoto");
        let m =
            parse(json!({"chat_id": "-100123", "text": "x", "not_before": "2026-11-25T15:00:00Z"}))
                .unwrap();
        assert_eq!(m.chat_id, ChatRef::Id(-100123));
        assert!(m.not_before.is_some());
    }

    #[test]
    fn each_bad_field_is_named() {
        let long = "x".repeat(4097);
        let cases = [
            (json!({"text": "hi"}), "chat_id"),
            (json!({"chat_id": 1}), "text"),
            (json!({"chat_id": 1, "text": "   "}), "text"),
            (json!({"chat_id": 1, "text": long}), "text"),
            (json!({"chat_id": "bob", "text": "x"}), "chat_id"),
            (json!({"chat_id": 0, "text": "x"}), "chat_id"),
            (json!({"chat_id": 1.5, "text": "x"}), "chat_id"),
            (
                json!({"chat_id": 1, "text": "x", "priority": "urgent"}),
                "priority",
            ),
            (
                json!({"chat_id": 1, "text": "x", "not_before": "tomorrow"}),
                "not_before",
            ),
            (
                json!({"chat_id": 1, "text": "x", "message_type": "Bad Type"}),
                "message_type",
            ),
            (
                json!({"chat_id": 1, "text": "x", "callback_url": "ftp://x"}),
                "callback_url",
            ),
            (
                json!({"chat_id": 1, "text": "x", "tier": "nowhere"}),
                "tier",
            ),
            (
                json!({"chat_id": 1, "text": "x", "parse_mode": "BBCode"}),
                "parse_mode",
            ),
            (
                json!({"chat_id": 1, "text": "x", "colour": "red"}),
                "colour",
            ),
            (json!({"chat_id": 1, "text": "x", "photo": "u"}), "photo"),
            (
                json!({"chat_id": 1, "photo": "u", "caption": "c".repeat(1025)}),
                "caption",
            ),
            (json!({"chat_id": 1, "text": 5}), "text"),
            (
                json!({"chat_id": 1, "text": "x", "idempotency_key": ""}),
                "idempotency_key",
            ),
            (
                json!({"chat_id": 1, "text": "x", "disable_notification": "maybe"}),
                "disable_notification",
            ),
            (json!([1, 2]), ""),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.field, field, "{v}: {e:?}");
            assert_eq!(e.status, 400);
        }
    }
}
