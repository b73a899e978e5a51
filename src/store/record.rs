//! The message record: what a producer hands the store ([`NewMessage`]), what
//! the store keeps ([`StoredMessage`]) and how a record is laid out on disk.
//!
//! Owns the record types and their versioned byte encoding. Leaves to others:
//! where records live (the backends) and what the fields mean for delivery
//! (the engine and the agent).
//!
//! Encoding: one format byte, then the payload. Format `1` is a JSON object
//! with the field names of the private `wire` structs below; JSON because the
//! Bot API parameters are free-form JSON already, so a binary format would
//! gain little and lose readability with `redb`-dumping tools. Invariant:
//! every format byte ever written stays decodable — a change of layout gets a
//! new format byte and a new decoder beside the old one, never an edit of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::engine::Priority;

/// The format byte of records this build writes.
pub const FORMAT_JSON_V1: u8 = 1;

/// A message's identity: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh id; ids made by one process are strictly increasing.
    pub fn generate() -> Self {
        MessageId(Uuid::now_v7())
    }

    /// The id's 128 bits, most significant first; the store's key order.
    pub const fn as_u128(self) -> u128 {
        self.0.as_u128()
    }

    /// Rebuilds an id from [`MessageId::as_u128`]; `None` unless it is a UUIDv7.
    pub fn from_u128(bits: u128) -> Option<Self> {
        let uuid = Uuid::from_u128(bits);
        (uuid.get_version_num() == 7).then_some(MessageId(uuid))
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The text was not a UUIDv7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (expected a UUIDv7): {0:?}")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .ok()
            .and_then(|u| MessageId::from_u128(u.as_u128()))
            .ok_or_else(|| BadMessageId(s.chars().take(64).collect()))
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a message goes: a numeric chat id or a public `@username`, as the
/// Bot API's `chat_id` accepts either.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChatRef {
    Id(i64),
    /// Kept with its leading `@`.
    Username(String),
}

/// The text was neither an integer nor an `@username`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a chat reference (expected an integer or @username): {0:?}")]
pub struct BadChatRef(pub String);

impl FromStr for ChatRef {
    type Err = BadChatRef;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<i64>() {
            return Ok(ChatRef::Id(id));
        }
        let valid_name = s.strip_prefix('@').is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if valid_name {
            Ok(ChatRef::Username(s.to_owned()))
        } else {
            Err(BadChatRef(s.chars().take(64).collect()))
        }
    }
}

impl fmt::Display for ChatRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatRef::Id(id) => write!(f, "{id}"),
            ChatRef::Username(name) => f.write_str(name),
        }
    }
}

impl Serialize for ChatRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ChatRef::Id(id) => s.serialize_i64(*id),
            ChatRef::Username(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for ChatRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Id(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Id(id) => Ok(ChatRef::Id(id)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A message as a producer submits it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    pub chat_id: ChatRef,
    /// The Bot API method, e.g. `sendMessage`, `sendPhoto`.
    pub method: String,
    /// The method's parameters without `chat_id`.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub priority: Priority,
    pub message_type: String,
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
    pub callback_url: Option<String>,
    /// Not to be sent before this time (unix ms).
    pub not_before: Option<u64>,
    /// The tier the producer asked for, if any.
    pub tier: Option<String>,
    /// The bot (tier group) this message belongs to; a name, never a token.
    pub bot: String,
}

/// Where a stored message is in its life. `Delivered` and `DeadLettered`
/// are final; only an operator's `retry_dead` leaves `DeadLettered`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageState {
    Pending,
    InFlight,
    Delivered,
    DeadLettered,
}

impl MessageState {
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::InFlight => "in_flight",
            MessageState::Delivered => "delivered",
            MessageState::DeadLettered => "dead_lettered",
        }
    }

    /// Whether the message still waits for delivery (pending or in flight).
    pub const fn is_open(self) -> bool {
        matches!(self, MessageState::Pending | MessageState::InFlight)
    }

    fn parse(s: &str) -> Option<Self> {
        [
            MessageState::Pending,
            MessageState::InFlight,
            MessageState::Delivered,
            MessageState::DeadLettered,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery attempt and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: u64,
    pub tier: String,
    /// The classified outcome, e.g. `delivered`, `rate_limited`, `transient`.
    pub outcome: String,
    pub error: Option<String>,
}

/// A message as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub msg: NewMessage,
    pub state: MessageState,
    pub attempts: Vec<Attempt>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When the next attempt is due; `None` means now.
    pub next_attempt_ms: Option<u64>,
    /// The tier of the attempt under way; set by `mark_in_flight`, cleared by
    /// the transition that ends the attempt.
    pub in_flight_tier: Option<String>,
    pub delivered_tier: Option<String>,
    /// The receiving API's answer (Telegram's `result`).
    pub receipt: Option<serde_json::Value>,
    pub dead_reason: Option<String>,
}

impl StoredMessage {
    /// `msg` as accepted under `id` at `now_ms`: pending, no attempt yet,
    /// first due at its `not_before`.
    pub fn accepted(id: MessageId, msg: NewMessage, now_ms: u64) -> Self {
        StoredMessage {
            id,
            next_attempt_ms: msg.not_before,
            msg,
            state: MessageState::Pending,
            attempts: Vec::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: None,
        }
    }
}

/// A record's bytes could not be turned back into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("unknown record format byte {0}")]
    UnknownFormat(u8),
    /// Deliberately carries no record content: records may hold user data.
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Encodes `m` in the current format ([`FORMAT_JSON_V1`]).
pub fn encode(m: &StoredMessage) -> Result<Vec<u8>, RecordError> {
    let wire = wire::RecordV1Ref::of(m);
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_JSON_V1);
    serde_json::to_writer(&mut out, &wire).map_err(json_error)?;
    Ok(out)
}

/// Decodes a record written by any format this build knows; `id` is the
/// record's key, which the payload does not repeat.
pub fn decode(id: MessageId, bytes: &[u8]) -> Result<StoredMessage, RecordError> {
    let (&format, payload) = bytes.split_first().ok_or(RecordError::Empty)?;
    match format {
        FORMAT_JSON_V1 => {
            let wire: wire::RecordV1 = serde_json::from_slice(payload).map_err(json_error)?;
            wire.into_stored(id)
        }
        other => Err(RecordError::UnknownFormat(other)),
    }
}

/// serde_json's messages can quote the offending input; keep only the kind
/// and the position so user data never lands in an error.
fn json_error(e: serde_json::Error) -> RecordError {
    RecordError::Malformed(format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    ))
}

/// The on-disk shapes. Frozen per format byte: add a `RecordV2` rather than
/// edit these.
mod wire {
    use serde::{Deserialize, Serialize};

    use super::{Attempt, ChatRef, MessageId, MessageState, NewMessage, RecordError};
    use super::{Priority, StoredMessage};

    /// Unvalidated on purpose: whatever chat was stored must read back.
    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum ChatV1 {
        Id(i64),
        Username(String),
    }

    /// [`ChatV1`], borrowed.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum ChatV1Ref<'a> {
        Id(i64),
        Username(&'a str),
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct AttemptV1 {
        at_ms: u64,
        tier: String,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct RecordV1 {
        chat_id: ChatV1,
        method: String,
        params: serde_json::Map<String, serde_json::Value>,
        priority: String,
        message_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        correlation_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<String>,
        bot: String,
        state: String,
        attempts: Vec<AttemptV1>,
        created_ms: u64,
        updated_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_flight_tier: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered_tier: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_reason: Option<String>,
    }

    /// [`RecordV1`] borrowed from a message, so that encoding copies
    /// nothing (the copies were a tenth of an encode's cost). Field for
    /// field the same names, order and attributes as `RecordV1`; a test
    /// compares the bytes of both.
    #[derive(Serialize)]
    pub(super) struct RecordV1Ref<'a> {
        chat_id: ChatV1Ref<'a>,
        method: &'a str,
        params: &'a serde_json::Map<String, serde_json::Value>,
        priority: &'static str,
        message_type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<&'a str>,
        correlation_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        callback_url: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        not_before: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tier: Option<&'a str>,
        bot: &'a str,
        state: &'static str,
        attempts: Vec<AttemptV1Ref<'a>>,
        created_ms: u64,
        updated_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_attempt_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        in_flight_tier: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        delivered_tier: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        receipt: Option<&'a serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dead_reason: Option<&'a str>,
    }

    /// [`AttemptV1`], borrowed.
    #[derive(Serialize)]
    pub(super) struct AttemptV1Ref<'a> {
        at_ms: u64,
        tier: &'a str,
        outcome: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    }

    impl<'a> RecordV1Ref<'a> {
        pub(super) fn of(m: &'a StoredMessage) -> Self {
            let n = &m.msg;
            RecordV1Ref {
                chat_id: match &n.chat_id {
                    ChatRef::Id(id) => ChatV1Ref::Id(*id),
                    ChatRef::Username(name) => ChatV1Ref::Username(name),
                },
                method: &n.method,
                params: &n.params,
                priority: n.priority.as_str(),
                message_type: &n.message_type,
                idempotency_key: n.idempotency_key.as_deref(),
                correlation_id: &n.correlation_id,
                callback_url: n.callback_url.as_deref(),
                not_before: n.not_before,
                tier: n.tier.as_deref(),
                bot: &n.bot,
                state: m.state.as_str(),
                attempts: m
                    .attempts
                    .iter()
                    .map(|a| AttemptV1Ref {
                        at_ms: a.at_ms,
                        tier: &a.tier,
                        outcome: &a.outcome,
                        error: a.error.as_deref(),
                    })
                    .collect(),
                created_ms: m.created_ms,
                updated_ms: m.updated_ms,
                next_attempt_ms: m.next_attempt_ms,
                in_flight_tier: m.in_flight_tier.as_deref(),
                delivered_tier: m.delivered_tier.as_deref(),
                receipt: m.receipt.as_ref(),
                dead_reason: m.dead_reason.as_deref(),
            }
        }
    }

    impl RecordV1 {
        /// The owned shape, filled from a message: only to check that
        /// [`RecordV1Ref`] writes the same bytes.
        #[cfg(test)]
        pub(super) fn from_stored(m: &StoredMessage) -> Self {
            let n = &m.msg;
            RecordV1 {
                chat_id: match &n.chat_id {
                    ChatRef::Id(id) => ChatV1::Id(*id),
                    ChatRef::Username(name) => ChatV1::Username(name.clone()),
                },
                method: n.method.clone(),
                params: n.params.clone(),
                priority: n.priority.as_str().to_owned(),
                message_type: n.message_type.clone(),
                idempotency_key: n.idempotency_key.clone(),
                correlation_id: n.correlation_id.clone(),
                callback_url: n.callback_url.clone(),
                not_before: n.not_before,
                tier: n.tier.clone(),
                bot: n.bot.clone(),
                state: m.state.as_str().to_owned(),
                attempts: m
                    .attempts
                    .iter()
                    .map(|a| AttemptV1 {
                        at_ms: a.at_ms,
                        tier: a.tier.clone(),
                        outcome: a.outcome.clone(),
                        error: a.error.clone(),
                    })
                    .collect(),
                created_ms: m.created_ms,
                updated_ms: m.updated_ms,
                next_attempt_ms: m.next_attempt_ms,
                in_flight_tier: m.in_flight_tier.clone(),
                delivered_tier: m.delivered_tier.clone(),
                receipt: m.receipt.clone(),
                dead_reason: m.dead_reason.clone(),
            }
        }

        pub(super) fn into_stored(self, id: MessageId) -> Result<StoredMessage, RecordError> {
            let priority: Priority = self
                .priority
                .parse()
                .map_err(|_| RecordError::Malformed("unknown priority".into()))?;
            let state = MessageState::parse(&self.state)
                .ok_or_else(|| RecordError::Malformed("unknown state".into()))?;
            Ok(StoredMessage {
                id,
                msg: NewMessage {
                    chat_id: match self.chat_id {
                        ChatV1::Id(id) => ChatRef::Id(id),
                        ChatV1::Username(name) => ChatRef::Username(name),
                    },
                    method: self.method,
                    params: self.params,
                    priority,
                    message_type: self.message_type,
                    idempotency_key: self.idempotency_key,
                    correlation_id: self.correlation_id,
                    callback_url: self.callback_url,
                    not_before: self.not_before,
                    tier: self.tier,
                    bot: self.bot,
                },
                state,
                attempts: self
                    .attempts
                    .into_iter()
                    .map(|a| Attempt {
                        at_ms: a.at_ms,
                        tier: a.tier,
                        outcome: a.outcome,
                        error: a.error,
                    })
                    .collect(),
                created_ms: self.created_ms,
                updated_ms: self.updated_ms,
                next_attempt_ms: self.next_attempt_ms,
                in_flight_tier: self.in_flight_tier,
                delivered_tier: self.delivered_tier,
                receipt: self.receipt,
                dead_reason: self.dead_reason,
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    pub(crate) fn sample_new(chat: i64) -> NewMessage {
        let mut params = serde_json::Map::new();
        params.insert("text".into(), json!("hello"));
        NewMessage {
            chat_id: ChatRef::Id(chat),
            method: "sendMessage".into(),
            params,
            priority: Priority::Normal,
            message_type: "alert".into(),
            idempotency_key: None,
            correlation_id: "corr-1".into(),
            callback_url: None,
            not_before: None,
            tier: None,
            bot: "main".into(),
        }
    }

    fn sample_stored() -> StoredMessage {
        StoredMessage {
            id: MessageId::generate(),
            msg: NewMessage {
                chat_id: ChatRef::Username("@news".into()),
                idempotency_key: Some("k1".into()),
                callback_url: Some("http://127.0.0.1:9/cb".into()),
                not_before: Some(5),
                tier: Some("primary".into()),
                priority: Priority::Critical,
                ..sample_new(1)
            },
            state: MessageState::DeadLettered,
            attempts: vec![Attempt {
                at_ms: 10,
                tier: "primary".into(),
                outcome: "permanent".into(),
                error: Some("400 Bad Request".into()),
            }],
            created_ms: 1,
            updated_ms: 10,
            next_attempt_ms: Some(20),
            in_flight_tier: None,
            delivered_tier: Some("primary".into()),
            receipt: Some(json!({"message_id": 7})),
            dead_reason: Some("bad request".into()),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let m = sample_stored();
        let bytes = encode(&m).unwrap();
        assert_eq!(bytes[0], FORMAT_JSON_V1);
        assert_eq!(decode(m.id, &bytes).unwrap(), m);
    }

    #[test]
    fn decodes_a_frozen_v1_record() {
        // Written by the first build; must stay readable forever.
        let payload = br#"{"chat_id":-1001,"method":"sendPhoto","params":{"photo":"x"},
            "priority":"high","message_type":"t","correlation_id":"c","bot":"b",
            "state":"in_flight","attempts":[{"at_ms":3,"tier":"p","outcome":"transient"}],
            "created_ms":1,"updated_ms":3,"in_flight_tier":"p"}"#;
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(payload);
        let id = MessageId::generate();
        let m = decode(id, &bytes).unwrap();
        assert_eq!(m.msg.chat_id, ChatRef::Id(-1001));
        assert_eq!(m.msg.priority, Priority::High);
        assert_eq!(m.state, MessageState::InFlight);
        assert_eq!(m.attempts[0].error, None);
        assert_eq!(m.in_flight_tier.as_deref(), Some("p"));
        assert_eq!(m.msg.idempotency_key, None);
    }

    #[test]
    fn rejects_unknown_formats_and_garbage_without_echoing_it() {
        let id = MessageId::generate();
        assert_eq!(decode(id, &[]), Err(RecordError::Empty));
        assert_eq!(decode(id, &[9, b'{']), Err(RecordError::UnknownFormat(9)));
        let err = decode(id, b"\x01{\"chat_id\":\"secret-ish\"}").unwrap_err();
        assert!(!err.to_string().contains("secret-ish"), "{err}");
        let bad_priority = br#"{"chat_id":1,"method":"m","params":{},"priority":"urgent",
            "message_type":"t","correlation_id":"c","bot":"b","state":"pending",
            "attempts":[],"created_ms":1,"updated_ms":1}"#;
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(bad_priority);
        assert!(matches!(decode(id, &bytes), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn ids_display_parse_and_order() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>(), Ok(a));
        assert_eq!(MessageId::from_u128(a.as_u128()), Some(a));
        assert!("not-a-uuid".parse::<MessageId>().is_err());
        // A valid UUID of another version is not a message id.
        assert!(
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
                .parse::<MessageId>()
                .is_err()
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), a);
    }

    #[test]
    fn chat_refs_parse_display_and_serialize() {
        assert_eq!("-100123".parse(), Ok(ChatRef::Id(-100123)));
        assert_eq!("@chan_1".parse(), Ok(ChatRef::Username("@chan_1".into())));
        assert!("chan".parse::<ChatRef>().is_err());
        assert!("@".parse::<ChatRef>().is_err());
        assert!("@a b".parse::<ChatRef>().is_err());
        assert_eq!(ChatRef::Id(5).to_string(), "5");
        assert_eq!(serde_json::to_string(&ChatRef::Id(5)).unwrap(), "5");
        let from_text: ChatRef = serde_json::from_str("\"42\"").unwrap();
        assert_eq!(from_text, ChatRef::Id(42));
        let name: ChatRef = serde_json::from_str("\"@x\"").unwrap();
        assert_eq!(name.to_string(), "@x");
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.to_vec())
    }

    fn state() -> impl Strategy<Value = MessageState> {
        prop::sample::select(vec![
            MessageState::Pending,
            MessageState::InFlight,
            MessageState::Delivered,
            MessageState::DeadLettered,
        ])
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            chat in prop_oneof![any::<i64>().prop_map(ChatRef::Id),
                                ".{0,20}".prop_map(ChatRef::Username)],
            text in ".*",
            optional in proptest::option::of(("[a-z:/.]{0,20}", any::<u64>(), ".{0,10}")),
            prio in priority(),
            st in state(),
            key in proptest::option::of(".{0,40}"),
            times in (any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>())),
            attempts in proptest::collection::vec(
                (any::<u64>(), "[a-z]{0,8}", ".{0,10}", proptest::option::of(".{0,20}")), 0..4),
        ) {
            let mut params = serde_json::Map::new();
            params.insert("text".into(), json!(text));
            let m = StoredMessage {
                id: MessageId::generate(),
                msg: NewMessage { chat_id: chat, params, priority: prio,
                                  idempotency_key: key, ..sample_new(0) },
                state: st,
                attempts: attempts.into_iter().map(|(at_ms, tier, outcome, error)|
                    Attempt { at_ms, tier, outcome, error }).collect(),
                created_ms: times.0,
                updated_ms: times.1,
                next_attempt_ms: times.2,
                in_flight_tier: None,
                delivered_tier: None,
                receipt: None,
                dead_reason: None,
            };
            let m = match optional {
                None => m,
                Some((url, at, word)) => StoredMessage {
                    msg: NewMessage {
                        callback_url: Some(url),
                        not_before: Some(at),
                        tier: Some(word.clone()),
                        ..m.msg
                    },
                    in_flight_tier: Some(word.clone()),
                    delivered_tier: Some(word.clone()),
                    receipt: Some(json!({"message_id": at, "text": word})),
                    dead_reason: Some(word),
                    ..m
                },
            };
            let bytes = encode(&m).unwrap();
            // The borrowed shape writes exactly what the frozen one does.
            let mut frozen = vec![FORMAT_JSON_V1];
            serde_json::to_writer(&mut frozen, &wire::RecordV1::from_stored(&m)).unwrap();
            prop_assert_eq!(&bytes, &frozen);
            prop_assert_eq!(decode(m.id, &bytes).unwrap(), m);
        }
    }
}
