//! The sandbox's whole state and the answer to one Bot API request, given
//! the instant it arrived.
//!
//! Owns the order in which a request is checked (below), message ids, the
//! sandbox clock, reset and fault replacement. Leaves the window rule to
//! `limits`, fault decisions to `faults`, tallies to `counters`, shapes to
//! `reply` and HTTP to `server`.
//!
//! Order of checks for a request on `/bot<token>/<method>` arriving at `now`:
//! dark period (502) -> token (401; a first segment not starting with `bot`
//! is 404) -> method (404) -> injected 500 -> unreadable parameters (400/413)
//! -> `getMe` answers here -> missing or invalid parameters (400) -> the judge
//! (429) -> chat faults: not found (400), migrated (400 + migrate_to_chat_id),
//! blocked (403) -> delivered. So faults and malformed requests never reach
//! the judge, and every send that does reach it is counted in its windows,
//! including ones later answered with a chat fault.
//!
//! Invariant: `answer` is synchronous and reads no clock; the caller holds
//! the lock and passes `tokio::time::Instant::now()` taken under it, so
//! arrivals are judged in the order they were stamped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::SandboxError;
use super::config::{SandboxConfig, bot_id_of};
use super::counters::{Counters, DeliveredMessage, Recorder, Refusal};
use super::faults::{ChatFault, FaultsConfig, Injector};
use super::limits::{Cause, Judge, Verdict};
use super::params::{ParamError, Params, Value};
use super::reply::{self, Reply, Sent, SentMessage};

const MAX_TEXT_CHARS: usize = 4096;
const MAX_CAPTION_CHARS: usize = 1024;

/// Maps tokio instants to Unix time: anchored at start (or reset) so that
/// paused-time tests see Unix times advance with virtual time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix: Duration,
}

impl Clock {
    fn new(now: Instant) -> Self {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: now,
            start_unix,
        }
    }

    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// Nanoseconds since the start: the message log's clock.
    fn arrival_ns(&self, at: Instant) -> u64 {
        u64::try_from(self.since_start(at).as_nanos()).unwrap_or(u64::MAX)
    }

    fn unix(&self, at: Instant) -> Duration {
        self.start_unix.saturating_add(self.since_start(at))
    }
}

/// The supported methods, matched case-insensitively like the Bot API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    GetMe,
    SendMessage,
    SendPhoto,
    SendDocument,
}

impl Method {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "getme" => Some(Method::GetMe),
            "sendmessage" => Some(Method::SendMessage),
            "sendphoto" => Some(Method::SendPhoto),
            "senddocument" => Some(Method::SendDocument),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::GetMe => "getMe",
            Method::SendMessage => "sendMessage",
            Method::SendPhoto => "sendPhoto",
            Method::SendDocument => "sendDocument",
        }
    }
}

/// The state shared by the HTTP handlers and the in-process handle.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    max_body_bytes: usize,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Shared {
            max_body_bytes: state.config.max_body_bytes,
            state: Mutex::new(state),
        }
    }

    /// The state; a handler that panicked mid-update cannot wedge the sandbox.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// Everything behind the lock.
#[derive(Debug)]
pub struct State {
    config: SandboxConfig,
    judge: Judge,
    injector: Injector,
    recorder: Recorder,
    clock: Clock,
    /// Next message id per chat, like Telegram's per-chat numbering.
    message_ids: HashMap<i64, i64>,
}

impl State {
    pub fn new(config: SandboxConfig, now: Instant) -> Result<Self, SandboxError> {
        config.validate()?;
        Ok(State {
            judge: Judge::new(config.limits),
            injector: Injector::new(config.faults.clone(), now),
            recorder: Recorder::new(config.max_messages_kept),
            clock: Clock::new(now),
            message_ids: HashMap::new(),
            config,
        })
    }

    pub fn counters(&self) -> Counters {
        self.recorder.snapshot()
    }

    pub fn messages_since(&self, since: u64) -> Vec<DeliveredMessage> {
        self.recorder.messages_since(since)
    }

    pub fn faults(&self) -> &FaultsConfig {
        self.injector.config()
    }

    /// Replaces the faults; dark periods count from `now`, the dice restart
    /// from the new seed.
    pub fn set_faults(&mut self, faults: FaultsConfig, now: Instant) -> Result<(), SandboxError> {
        faults.validate()?;
        self.injector = Injector::new(faults, now);
        Ok(())
    }

    /// Forgets all traffic (windows, bans, counters, messages, message ids)
    /// and restarts the clock and the dice; keeps the current faults.
    pub fn reset(&mut self, now: Instant) {
        self.judge = Judge::new(self.config.limits);
        self.recorder = Recorder::new(self.config.max_messages_kept);
        self.clock = Clock::new(now);
        self.message_ids.clear();
        self.injector = Injector::new(self.injector.config().clone(), now);
    }

    /// Latency to add before the next request arrives.
    pub fn latency(&mut self) -> Duration {
        self.injector.latency()
    }

    /// The answer to one Bot API request. `bot_segment` is the first path
    /// segment (`bot<token>`), `method` the second.
    pub fn answer(
        &mut self,
        now: Instant,
        bot_segment: &str,
        method: &str,
        params: Result<Params, ParamError>,
    ) -> Reply {
        self.recorder.request();
        if self.injector.is_dark(now) {
            let reply = Reply::bad_gateway();
            self.recorder.error_status(reply.status, true);
            return reply;
        }
        let reply = self.answer_when_up(now, bot_segment, method, params);
        if !reply.is_ok() && reply.status != 429 {
            self.recorder.error_status(reply.status, false);
        }
        reply
    }

    fn answer_when_up(
        &mut self,
        now: Instant,
        bot_segment: &str,
        method: &str,
        params: Result<Params, ParamError>,
    ) -> Reply {
        let Some(token) = bot_segment.strip_prefix("bot") else {
            return Reply::not_found();
        };
        let Some(bot_id) = self.accept(token) else {
            return Reply::unauthorized();
        };
        let Some(method) = Method::parse(method) else {
            return Reply::not_found();
        };
        if self.injector.fails() {
            return Reply::internal();
        }
        let params = match params {
            Ok(p) => p,
            Err(ParamError::Json) => return Reply::bad_request("can't parse JSON object"),
            Err(ParamError::Multipart) => {
                return Reply::bad_request("can't parse multipart/form-data");
            }
            Err(ParamError::TooLarge) => return Reply::too_large(),
        };
        if method == Method::GetMe {
            return Reply::ok(reply::bot_user(bot_id));
        }
        let chat_id = match chat_id(&params) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let send = match Send::from_params(method, &params) {
            Ok(send) => send,
            Err(reply) => return reply,
        };

        self.recorder.attempt(chat_id);
        if let Verdict::Refused { retry_after, cause } = self.judge.judge(bot_id, chat_id, now) {
            let started_ban = self.judge.limits().flood_ban && cause != Cause::FloodBan;
            let cause_label = match cause {
                Cause::PerBot => "per_bot",
                Cause::PerChat => "per_chat",
                Cause::PerGroup => "per_group",
                Cause::FloodBan => "flood_ban",
            };
            let refusal = Refusal {
                chat_id,
                cause: cause_label.to_owned(),
                text: send.text().to_owned(),
                arrival_ns: self.clock.arrival_ns(now),
            };
            self.recorder.rejected_429(refusal, started_ban);
            tracing::debug!(
                bot_id,
                chat_id,
                retry_after,
                ?cause,
                "sandbox refused a send"
            );
            return Reply::too_many_requests(retry_after);
        }
        match self.injector.chat_fault(chat_id) {
            Some(ChatFault::NotFound) => return Reply::bad_request("chat not found"),
            Some(ChatFault::MigratedTo(to)) => return Reply::migrated(to),
            Some(ChatFault::Blocked) => return Reply::blocked(),
            None => {}
        }
        self.deliver(now, bot_id, chat_id, method, &send)
    }

    /// The bot id for an accepted token, `None` for any other.
    fn accept(&self, token: &str) -> Option<u64> {
        let listed =
            self.config.tokens.is_empty() || self.config.tokens.iter().any(|t| t.expose() == token);
        if listed { bot_id_of(token) } else { None }
    }

    fn deliver(
        &mut self,
        now: Instant,
        bot_id: u64,
        chat_id: i64,
        method: Method,
        send: &Send<'_>,
    ) -> Reply {
        let next = self.message_ids.entry(chat_id).or_insert(1);
        let message_id = *next;
        *next += 1;
        let unix = self.clock.unix(now);
        let arrival_ns = self.clock.arrival_ns(now);
        let unix_ms = u64::try_from(unix.as_millis()).unwrap_or(u64::MAX);
        let seq = self.recorder.delivered(
            DeliveredMessage {
                seq: 0,
                bot_id,
                chat_id,
                message_id,
                method: method.name().to_owned(),
                text: send.text().to_owned(),
                arrival_unix_ms: unix_ms,
                arrival_ns,
            },
            now,
        );
        let file_unique = format!("{bot_id}-{seq}");
        let kind = match *send {
            Send::Text(text) => Sent::Text(text),
            Send::Photo { caption } => Sent::Photo {
                caption,
                file_unique,
            },
            Send::Document { caption, file_name } => Sent::Document {
                caption,
                file_name,
                file_unique,
            },
        };
        let message = SentMessage {
            bot_id,
            chat_id,
            message_id,
            date: unix.as_secs(),
            kind,
        };
        Reply::ok(message.to_json())
    }
}

fn chat_id(params: &Params) -> Result<i64, Reply> {
    let raw = params.text("chat_id").map(str::trim).unwrap_or("");
    if raw.is_empty() {
        return Err(Reply::bad_request("chat_id is empty"));
    }
    // "@username" and anything else that is not a number name no chat the
    // sandbox knows.
    raw.parse::<i64>()
        .map_err(|_| Reply::bad_request("chat not found"))
}

/// A validated send.
enum Send<'a> {
    Text(&'a str),
    Photo {
        caption: Option<&'a str>,
    },
    Document {
        caption: Option<&'a str>,
        file_name: Option<&'a str>,
    },
}

impl<'a> Send<'a> {
    fn from_params(method: Method, params: &'a Params) -> Result<Self, Reply> {
        let caption = params.text("caption");
        if caption.is_some_and(|c| c.chars().count() > MAX_CAPTION_CHARS) {
            return Err(Reply::bad_request("message caption is too long"));
        }
        match method {
            Method::SendMessage => {
                let text = params.text("text").unwrap_or("");
                if text.trim().is_empty() {
                    return Err(Reply::bad_request("message text is empty"));
                }
                if text.chars().count() > MAX_TEXT_CHARS {
                    return Err(Reply::bad_request("message is too long"));
                }
                Ok(Send::Text(text))
            }
            Method::SendPhoto => {
                if !params.has_file("photo") {
                    return Err(Reply::bad_request("there is no photo in the request"));
                }
                Ok(Send::Photo { caption })
            }
            Method::SendDocument => {
                if !params.has_file("document") {
                    return Err(Reply::bad_request("there is no document in the request"));
                }
                let file_name = match params.get("document") {
                    Some(Value::File { name, .. }) => name.as_deref(),
                    _ => None,
                };
                Ok(Send::Document { caption, file_name })
            }
            Method::GetMe => Err(Reply::not_found()),
        }
    }

    fn text(&self) -> &'a str {
        match *self {
            Send::Text(t) => t,
            Send::Photo { caption } | Send::Document { caption, .. } => caption.unwrap_or(""),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sandbox::config::BotToken;

    const TOKEN: &str = "bot123:secret";

    fn state(config: SandboxConfig) -> (State, Instant) {
        let t0 = Instant::now();
        (State::new(config, t0).unwrap(), t0)
    }

    fn send(chat: &str, text: &str) -> Result<Params, ParamError> {
        let mut p = Params::default();
        p.insert("chat_id", Value::Text(chat.into()));
        p.insert("text", Value::Text(text.into()));
        Ok(p)
    }

    #[test]
    fn delivers_with_per_chat_message_ids_and_logs_in_order() {
        let (mut s, t0) = state(SandboxConfig::default());
        let a = s.answer(t0, TOKEN, "sendMessage", send("5", "one"));
        let b = s.answer(t0, TOKEN, "sendmessage", send("6", "two"));
        let c = s.answer(
            t0 + Duration::from_secs(1),
            TOKEN,
            "SENDMESSAGE",
            send("5", "three"),
        );
        assert_eq!(a.body["result"]["message_id"], 1);
        assert_eq!(b.body["result"]["message_id"], 1);
        assert_eq!(c.body["result"]["message_id"], 2);
        assert_eq!(c.body["result"]["text"], "three");
        let log = s.messages_since(0);
        let texts: Vec<&str> = log.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(log[2].arrival_ns, 1_000_000_000);
        assert_eq!(log[2].arrival_unix_ms - log[0].arrival_unix_ms, 1_000);
        assert_eq!(s.counters().delivered, 3);
    }

    #[test]
    fn tokens_outside_the_configured_set_are_unauthorized() {
        let (mut s, t0) = state(SandboxConfig {
            tokens: vec![BotToken::from("123:secret")],
            ..SandboxConfig::default()
        });
        assert_eq!(
            s.answer(t0, "bot123:other", "getMe", Ok(Params::default()))
                .status,
            401
        );
        assert_eq!(
            s.answer(t0, "123:secret", "getMe", Ok(Params::default()))
                .status,
            404
        );
        let me = s.answer(t0, TOKEN, "getMe", Ok(Params::default()));
        assert_eq!(me.body["result"]["id"], 123);
        let (mut any, t0) = state(SandboxConfig::default());
        assert_eq!(
            any.answer(t0, "botnot-a-token", "getMe", Ok(Params::default()))
                .status,
            401
        );
        assert_eq!(any.counters().unauthorized_401, 1);
    }

    #[test]
    fn validation_errors_use_telegrams_descriptions_and_skip_the_judge() {
        let (mut s, t0) = state(SandboxConfig::default());
        let desc = |r: Reply| r.body["description"].as_str().unwrap_or("").to_owned();
        assert_eq!(
            desc(s.answer(t0, TOKEN, "sendMessage", send("5", "  "))),
            "Bad Request: message text is empty"
        );
        assert_eq!(
            desc(s.answer(t0, TOKEN, "sendMessage", send("", "x"))),
            "Bad Request: chat_id is empty"
        );
        assert_eq!(
            desc(s.answer(t0, TOKEN, "sendMessage", send("@name", "x"))),
            "Bad Request: chat not found"
        );
        assert_eq!(
            desc(s.answer(t0, TOKEN, "sendPhoto", send("5", "x"))),
            "Bad Request: there is no photo in the request"
        );
        assert_eq!(
            desc(s.answer(t0, TOKEN, "sendMessage", Err(ParamError::Json))),
            "Bad Request: can't parse JSON object"
        );
        assert_eq!(
            s.answer(t0, TOKEN, "sendSticker", send("5", "x")).status,
            404
        );
        // None of these occupied chat 5's window.
        assert!(s.answer(t0, TOKEN, "sendMessage", send("5", "ok")).is_ok());
        assert_eq!(s.counters().errors_4xx, 6);
    }

    #[test]
    fn chat_faults_answer_after_the_judge_counted_the_attempt() {
        let (mut s, t0) = state(SandboxConfig {
            faults: FaultsConfig {
                blocked_chats: vec![7],
                unknown_chats: vec![8],
                migrated_chats: BTreeMap::from([(-9, -1_000_000_000_009)]),
                ..FaultsConfig::default()
            },
            ..SandboxConfig::default()
        });
        let blocked = s.answer(t0, TOKEN, "sendMessage", send("7", "x"));
        assert_eq!(blocked.status, 403);
        assert_eq!(
            blocked.body["description"],
            "Forbidden: bot was blocked by the user"
        );
        assert_eq!(
            s.answer(t0, TOKEN, "sendMessage", send("8", "x")).status,
            400
        );
        let migrated = s.answer(t0, TOKEN, "sendMessage", send("-9", "x"));
        assert_eq!(
            migrated.body["parameters"]["migrate_to_chat_id"],
            -1_000_000_000_009_i64
        );
        // The blocked attempt holds chat 7's slot for a second.
        assert_eq!(
            s.answer(t0, TOKEN, "sendMessage", send("7", "x")).status,
            429
        );
        // That 429 banned the bot for 1 s.
        let later = t0 + Duration::from_secs(1);
        let ok = s.answer(later, TOKEN, "sendMessage", send("-1000000000009", "x"));
        assert_eq!(ok.body["result"]["chat"]["type"], "supergroup");
    }

    #[test]
    fn refusal_is_a_429_with_retry_after_and_bans_the_bot() {
        let (mut s, t0) = state(SandboxConfig::default());
        assert!(s.answer(t0, TOKEN, "sendMessage", send("5", "a")).is_ok());
        let r = s.answer(t0, TOKEN, "sendMessage", send("5", "b"));
        assert_eq!(r.status, 429);
        assert_eq!(r.body["parameters"]["retry_after"], 1);
        assert_eq!(r.body["description"], "Too Many Requests: retry after 1");
        assert_eq!(
            s.answer(t0, TOKEN, "sendMessage", send("6", "c")).status,
            429
        );
        assert!(
            s.answer(
                t0 + Duration::from_secs(1),
                TOKEN,
                "sendMessage",
                send("6", "d")
            )
            .is_ok()
        );
        let c = s.counters();
        assert_eq!((c.rejected_429, c.flood_bans, c.delivered), (2, 1, 2));
        assert_eq!(c.by_chat[&5].attempts, 2);
        let refused: Vec<_> = c
            .refusals
            .iter()
            .map(|r| (r.chat_id, r.cause.as_str(), r.text.as_str(), r.arrival_ns))
            .collect();
        assert_eq!(
            refused,
            [(5, "per_chat", "b", 0), (6, "flood_ban", "c", 0)],
            "each refusal is kept with its cause, text and arrival"
        );
    }

    #[test]
    fn dark_and_injected_errors_never_reach_the_judge() {
        let (mut s, t0) = state(SandboxConfig {
            faults: FaultsConfig {
                dark: true,
                ..FaultsConfig::default()
            },
            ..SandboxConfig::default()
        });
        let r = s.answer(t0, "nonsense", "x", Ok(Params::default()));
        assert_eq!(r.status, 502);
        s.set_faults(
            FaultsConfig {
                error_rate: 1.0,
                ..FaultsConfig::default()
            },
            t0,
        )
        .unwrap();
        assert_eq!(
            s.answer(t0, TOKEN, "sendMessage", send("5", "x")).status,
            500
        );
        s.set_faults(FaultsConfig::default(), t0).unwrap();
        assert!(s.answer(t0, TOKEN, "sendMessage", send("5", "x")).is_ok());
        let c = s.counters();
        assert_eq!((c.errors_5xx, c.dark_502, c.requests), (2, 1, 3));
    }

    #[test]
    fn reset_forgets_traffic_but_keeps_faults() {
        let (mut s, t0) = state(SandboxConfig {
            faults: FaultsConfig {
                blocked_chats: vec![1],
                ..FaultsConfig::default()
            },
            ..SandboxConfig::default()
        });
        assert!(s.answer(t0, TOKEN, "sendMessage", send("5", "x")).is_ok());
        s.reset(t0);
        assert_eq!(s.counters(), Counters::default());
        assert!(s.answer(t0, TOKEN, "sendMessage", send("5", "x")).is_ok());
        assert_eq!(s.messages_since(0)[0].message_id, 1);
        assert_eq!(
            s.answer(t0, TOKEN, "sendMessage", send("1", "x")).status,
            403
        );
    }

    #[test]
    fn documents_and_photos_carry_their_caption_into_the_log() {
        let (mut s, t0) = state(SandboxConfig::default());
        let mut p = Params::default();
        p.insert("chat_id", Value::Text("5".into()));
        p.insert(
            "document",
            Value::File {
                name: Some("r.pdf".into()),
                size: 3,
            },
        );
        p.insert("caption", Value::Text("report".into()));
        let r = s.answer(t0, TOKEN, "sendDocument", Ok(p));
        assert_eq!(r.body["result"]["document"]["file_name"], "r.pdf");
        assert_eq!(r.body["result"]["caption"], "report");
        assert_eq!(s.messages_since(0)[0].text, "report");
        assert_eq!(s.messages_since(0)[0].method, "sendDocument");
    }
}
