//! The answers the Bot API drop-in gives in Telegram's place — at
//! acceptance, when the wait for delivery runs out, or after a delivery by a
//! tier that is not Telegram — in the shape the Agent's `botApi.answer`
//! asks for.
//!
//! `message` exists because bot libraries (python-telegram-bot, aiogram,
//! teloxide) turn every send's `result` into a `Message` and fail on
//! herald's own `{"herald_id":..}`. The stand-in carries what herald knows
//! (chat, time of acceptance, text or caption); its `message_id` is derived
//! from herald's id, is not Telegram's and must not be used to edit or
//! delete the message.

use serde_json::{Map, Value, json};

use crate::api::agent::BotApiAnswer;
use crate::store::{ChatRef, MessageId, NewMessage};

/// Where the message is when herald answers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Accepted,
    Queued,
    Delivered,
}

impl Standing {
    const fn as_str(self) -> &'static str {
        match self {
            Standing::Accepted => "accepted",
            Standing::Queued => "queued",
            Standing::Delivered => "delivered",
        }
    }
}

/// The `result` of the answer, in the asked shape.
pub fn result(
    shape: BotApiAnswer,
    id: MessageId,
    msg: &NewMessage,
    accepted_ms: u64,
    standing: Standing,
) -> Value {
    match shape {
        BotApiAnswer::Herald => herald(id, standing),
        BotApiAnswer::Message => message(id, msg, accepted_ms, standing),
    }
}

fn herald(id: MessageId, standing: Standing) -> Value {
    json!({"herald_id": id.to_string(), "state": standing.as_str()})
}

fn message(id: MessageId, msg: &NewMessage, accepted_ms: u64, standing: Standing) -> Value {
    let mut m = Map::new();
    m.insert("message_id".into(), json!(stand_in_message_id(id)));
    m.insert("date".into(), json!(accepted_ms / 1000));
    m.insert("chat".into(), chat(&msg.chat_id));
    for key in ["text", "caption"] {
        if let Some(v) = msg.params.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    m.insert("herald_id".into(), json!(id.to_string()));
    m.insert("herald_state".into(), json!(standing.as_str()));
    Value::Object(m)
}

/// A positive 31-bit number from the random tail of herald's id: the same
/// message always gets the same number, and it fits every library's integer
/// type for `message_id`.
pub fn stand_in_message_id(id: MessageId) -> u32 {
    let n = (id.as_u128() & 0x7fff_ffff) as u32;
    n.max(1)
}

/// Telegram's `Chat`: ids above zero are private chats, ids in the -100…
/// range supergroups or channels (herald cannot tell which), other negative
/// ids basic groups. An `@username` names a public channel or supergroup
/// whose numeric id herald does not know: it answers `id` 0 with the
/// username.
fn chat(chat: &ChatRef) -> Value {
    match chat {
        ChatRef::Id(id) => {
            let kind = if *id > 0 {
                "private"
            } else if *id <= -1_000_000_000_000 {
                "supergroup"
            } else {
                "group"
            };
            json!({"id": id, "type": kind})
        }
        ChatRef::Username(name) => json!({
            "id": 0,
            "type": "channel",
            "username": name.trim_start_matches('@'),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::priority::Priority;

    fn new_message(chat_id: ChatRef, params: Value) -> NewMessage {
        NewMessage {
            chat_id,
            method: "sendMessage".into(),
            params: params.as_object().cloned().unwrap_or_default(),
            priority: Priority::Normal,
            message_type: "default".into(),
            idempotency_key: None,
            correlation_id: "c".into(),
            callback_url: None,
            not_before: None,
            tier: None,
            bot: "bot".into(),
        }
    }

    #[test]
    fn herald_shape_names_the_id_and_state() {
        let id = MessageId::generate();
        let m = new_message(ChatRef::Id(42), json!({"text": "hi"}));
        let r = result(
            BotApiAnswer::Herald,
            id,
            &m,
            1_700_000_000_123,
            Standing::Queued,
        );
        assert_eq!(r, json!({"herald_id": id.to_string(), "state": "queued"}));
    }

    #[test]
    fn message_shape_has_what_libraries_require() {
        let id = MessageId::generate();
        let m = new_message(ChatRef::Id(42), json!({"text": "hi", "parse_mode": "HTML"}));
        let r = result(
            BotApiAnswer::Message,
            id,
            &m,
            1_700_000_000_999,
            Standing::Accepted,
        );
        assert_eq!(r["message_id"], json!(stand_in_message_id(id)));
        assert_eq!(r["date"], json!(1_700_000_000u64));
        assert_eq!(r["chat"], json!({"id": 42, "type": "private"}));
        assert_eq!(r["text"], json!("hi"));
        assert_eq!(r["herald_id"], json!(id.to_string()));
        assert_eq!(r["herald_state"], json!("accepted"));
        assert!(r.get("parse_mode").is_none());
    }

    #[test]
    fn chat_kinds_follow_telegrams_id_ranges() {
        assert_eq!(chat(&ChatRef::Id(-42))["type"], "group");
        assert_eq!(chat(&ChatRef::Id(-1_001_234_567_890))["type"], "supergroup");
        let named = chat(&ChatRef::Username("@news".into()));
        assert_eq!(
            named,
            json!({"id": 0, "type": "channel", "username": "news"})
        );
    }

    #[test]
    fn a_caption_stands_in_for_media() {
        let id = MessageId::generate();
        let m = new_message(
            ChatRef::Id(7),
            json!({"photo": "https://example.org/a.png", "caption": "look"}),
        );
        let r = result(BotApiAnswer::Message, id, &m, 0, Standing::Delivered);
        assert_eq!(r["caption"], json!("look"));
        assert!(r.get("text").is_none());
        assert!(r.get("photo").is_none());
    }

    #[test]
    fn stand_in_ids_are_positive_and_stable() {
        for _ in 0..1000 {
            let id = MessageId::generate();
            let n = stand_in_message_id(id);
            assert!(n >= 1 && n <= i32::MAX as u32);
            assert_eq!(n, stand_in_message_id(id));
        }
    }
}
