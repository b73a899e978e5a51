//! The Bot API's answers, shaped like Telegram's: `{"ok":true,"result":...}`
//! or `{"ok":false,"error_code":N,"description":...,"parameters":{...}}`,
//! with the HTTP status equal to `error_code`.
//!
//! Owns the wording and shape of every answer the sandbox gives on a bot
//! route. Leaves deciding which answer to give to `state`.
//!
//! Invariant: nothing here ever includes a token.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Lowest supergroup/channel id: Telegram prefixes them with -100.
const SUPERGROUP_BELOW: i64 = -1_000_000_000_000;

/// One answer: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(result: Value) -> Self {
        Reply {
            status: 200,
            body: json!({ "ok": true, "result": result }),
        }
    }

    pub fn error(code: u16, description: &str) -> Self {
        Reply {
            status: code,
            body: json!({ "ok": false, "error_code": code, "description": description }),
        }
    }

    fn with_parameters(code: u16, description: &str, parameters: Value) -> Self {
        let mut reply = Reply::error(code, description);
        if let Some(body) = reply.body.as_object_mut() {
            body.insert("parameters".into(), parameters);
        }
        reply
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        Reply::with_parameters(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
            json!({ "retry_after": retry_after }),
        )
    }

    pub fn migrated(to: i64) -> Self {
        Reply::with_parameters(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            json!({ "migrate_to_chat_id": to }),
        )
    }

    pub fn bad_request(what: &str) -> Self {
        Reply::error(400, &format!("Bad Request: {what}"))
    }

    pub fn unauthorized() -> Self {
        Reply::error(401, "Unauthorized")
    }

    pub fn blocked() -> Self {
        Reply::error(403, "Forbidden: bot was blocked by the user")
    }

    pub fn not_found() -> Self {
        Reply::error(404, "Not Found")
    }

    pub fn too_large() -> Self {
        Reply::error(413, "Request Entity Too Large")
    }

    pub fn internal() -> Self {
        Reply::error(500, "Internal Server Error")
    }

    /// What a dark period answers: the front end is up, Telegram behind it is not.
    pub fn bad_gateway() -> Self {
        Reply::error(502, "Bad Gateway")
    }

    pub fn is_ok(&self) -> bool {
        self.status == 200
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body)).into_response()
    }
}

/// The chat object for an id: positive ids are private chats, -100... ids
/// supergroups, other negative ids basic groups.
pub fn chat(id: i64) -> Value {
    if id > 0 {
        json!({ "id": id, "type": "private", "first_name": "Sandbox user" })
    } else if id <= SUPERGROUP_BELOW {
        json!({ "id": id, "type": "supergroup", "title": "Sandbox supergroup" })
    } else {
        json!({ "id": id, "type": "group", "title": "Sandbox group" })
    }
}

/// The bot's own user object, as `getMe` and `message.from` show it.
pub fn bot_user(bot_id: u64) -> Value {
    json!({
        "id": bot_id,
        "is_bot": true,
        "first_name": "herald sandbox",
        "username": format!("herald_sandbox_{bot_id}_bot"),
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
    })
}

/// The `Message` object of a delivered send.
pub struct SentMessage<'a> {
    pub bot_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    pub date: u64,
    pub kind: Sent<'a>,
}

/// What was sent, with the parameters that shape the result.
pub enum Sent<'a> {
    Text(&'a str),
    Photo {
        caption: Option<&'a str>,
        file_unique: String,
    },
    Document {
        caption: Option<&'a str>,
        file_name: Option<&'a str>,
        file_unique: String,
    },
}

impl SentMessage<'_> {
    pub fn to_json(&self) -> Value {
        let mut from = bot_user(self.bot_id);
        if let Some(user) = from.as_object_mut() {
            user.retain(|k, _| matches!(k.as_str(), "id" | "is_bot" | "first_name" | "username"));
        }
        let mut message = json!({
            "message_id": self.message_id,
            "from": from,
            "chat": chat(self.chat_id),
            "date": self.date,
        });
        let Some(fields) = message.as_object_mut() else {
            return message;
        };
        let (caption, extra) = match &self.kind {
            Sent::Text(text) => (None, ("text", json!(text))),
            Sent::Photo {
                caption,
                file_unique,
            } => (
                *caption,
                (
                    "photo",
                    json!([{
                        "file_id": format!("sandbox-photo-{file_unique}"),
                        "file_unique_id": file_unique,
                        "width": 90, "height": 90, "file_size": 1024,
                    }]),
                ),
            ),
            Sent::Document {
                caption,
                file_name,
                file_unique,
            } => {
                let mut doc = json!({
                    "file_id": format!("sandbox-document-{file_unique}"),
                    "file_unique_id": file_unique,
                });
                if let (Some(name), Some(d)) = (file_name, doc.as_object_mut()) {
                    d.insert("file_name".into(), json!(name));
                }
                (*caption, ("document", doc))
            }
        };
        fields.insert(extra.0.into(), extra.1);
        if let Some(caption) = caption.filter(|c| !c.is_empty()) {
            fields.insert("caption".into(), json!(caption));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_match_the_bot_api() {
        assert_eq!(
            Reply::too_many_requests(3).body,
            json!({"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3",
                   "parameters":{"retry_after":3}})
        );
        let migrated = Reply::migrated(-1_001_234);
        assert_eq!(migrated.status, 400);
        assert_eq!(
            migrated.body["parameters"]["migrate_to_chat_id"],
            -1_001_234
        );
        assert_eq!(
            Reply::bad_request("chat not found").body["description"],
            "Bad Request: chat not found"
        );
        assert_eq!(
            Reply::not_found().body,
            json!({"ok":false,"error_code":404,"description":"Not Found"})
        );
    }

    #[test]
    fn chat_types_follow_the_id() {
        assert_eq!(chat(5)["type"], "private");
        assert_eq!(chat(-5)["type"], "group");
        assert_eq!(chat(-1_001_234_567_890)["type"], "supergroup");
    }

    #[test]
    fn text_message_shape() {
        let m = SentMessage {
            bot_id: 7,
            chat_id: 5,
            message_id: 1,
            date: 1_700_000_000,
            kind: Sent::Text("hi"),
        }
        .to_json();
        assert_eq!(m["message_id"], 1);
        assert_eq!(m["chat"]["id"], 5);
        assert_eq!(m["text"], "hi");
        assert_eq!(m["from"]["is_bot"], true);
        assert!(m.get("caption").is_none());
    }

    #[test]
    fn photo_message_has_photo_sizes_and_caption() {
        let m = SentMessage {
            bot_id: 7,
            chat_id: -5,
            message_id: 2,
            date: 1,
            kind: Sent::Photo {
                caption: Some("look"),
                file_unique: "u1".into(),
            },
        }
        .to_json();
        assert_eq!(m["photo"][0]["file_unique_id"], "u1");
        assert_eq!(m["caption"], "look");
    }
}
