//! The error taxonomy: what a delivery outcome means and what to do next.
//!
//! Owns: mapping an HTTP status, a Telegram error body, a transport failure
//! or a timeout to a [`Classification`] (class, severity, action, whether it
//! counts toward the breaker and whether it concerns one chat only); reading
//! Telegram's error body; correlating one class across many chats into a
//! single tier-level [`Escalation`]. Leaves to others: carrying the action
//! out (dispatcher, store, limiter pause, breaker) and alerting.
//!
//! Invariant: reads no clock; every outcome but a delivery maps to exactly
//! one classification; a correlated burst escalates once per quiet period.
//!
//! Severity scale (1 = routine, 10 = page someone now): readdress 1,
//! recipient gone 2, bad request 3, other 4xx 4, rate limited 4, timeout and
//! 502/503/504 5, other 5xx, connection and unexpected statuses 6, TLS 7,
//! unknown endpoint (404) 9, bad token (401) 10.

use std::collections::VecDeque;

use std::hash::Hash;
use std::time::Duration;

use crate::engine::{FastMap, Instant};

/// Longest description kept from an error body; Telegram's are far shorter.
const MAX_DESCRIPTION: usize = 512;
/// Wait after a 429 that did not say how long.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// Telegram's answer when `ok` is false.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TelegramError {
    /// 0 when the body did not carry a usable code.
    pub error_code: u16,
    pub description: String,
    /// Seconds, from `parameters.retry_after`. A webhook sink may fill it
    /// from a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// From `parameters.migrate_to_chat_id`: the group became a supergroup.
    pub migrate_to_chat_id: Option<i64>,
}

/// How a request failed below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Dns,
    Connect,
    Tls,
    /// Reset or closed mid-exchange.
    Reset,
    Other,
}

/// What happened to one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Delivered,
    Http {
        status: u16,
        body: Option<TelegramError>,
    },
    Transport(TransportKind),
    Timeout,
}

impl Outcome {
    /// Nothing answered at all (refused, unresolvable, or silent until the
    /// attempt's deadline): the tier is down for every message, not for
    /// this one, so a message with another tier to take it moves on at
    /// once instead of waiting out a backoff here.
    pub fn tier_unreachable(&self) -> bool {
        matches!(
            self,
            Outcome::Timeout | Outcome::Transport(TransportKind::Connect | TransportKind::Dns)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    RateLimited,
    Transient,
    Permanent,
    RecipientUnreachable,
    Critical,
}

impl Class {
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::RateLimited => "rate_limited",
            Class::Transient => "transient",
            Class::Permanent => "permanent",
            Class::RecipientUnreachable => "recipient_unreachable",
            Class::Critical => "critical",
        }
    }

    /// The usual severity of the class, for escalations.
    pub const fn base_severity(self) -> u8 {
        match self {
            Class::RateLimited => 4,
            Class::Transient => 5,
            Class::Permanent => 3,
            Class::RecipientUnreachable => 2,
            Class::Critical => 10,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Pause the bot for this long, then send again (no attempt burned).
    Wait(Duration),
    /// Retry on the same tier per the retry policy.
    Retry,
    /// Retrying this tier is pointless for now; try the next tier.
    FailOver,
    /// Never retry; keep it with its error.
    DeadLetter,
    /// Resend to this chat instead.
    Readdress(i64),
    /// The tier cannot work (bad token): stop it and alert.
    StopTier,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Wait(_) => "wait",
            Action::Retry => "retry",
            Action::FailOver => "fail_over",
            Action::DeadLetter => "dead_letter",
            Action::Readdress(_) => "readdress",
            Action::StopTier => "stop_tier",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Classification {
    pub class: Class,
    /// 1..=10.
    pub severity: u8,
    pub action: Action,
    /// Record it as a failure on the breaker.
    pub counts_toward_breaker: bool,
    /// It concerns this chat only (mark unreachable, chat breaker), not the tier.
    pub chat_scoped: bool,
    /// A fixed, secret-free label for logs and metrics.
    pub reason: &'static str,
}

const fn c(
    class: Class,
    severity: u8,
    action: Action,
    counts_toward_breaker: bool,
    chat_scoped: bool,
    reason: &'static str,
) -> Classification {
    Classification {
        class,
        severity,
        action,
        counts_toward_breaker,
        chat_scoped,
        reason,
    }
}

/// Descriptions of a 400 that mean this chat cannot be reached by this bot.
const UNREACHABLE_400: &[&str] = &[
    "chat not found",
    "user not found",
    "peer_id_invalid",
    "chat_write_forbidden",
    "not enough rights",
    "have no rights",
    "bot was kicked",
    "bot is not a member",
    "group chat was deleted",
    "user is deactivated",
];

/// What to do about `outcome`; `None` when it was delivered.
pub fn classify(outcome: &Outcome) -> Option<Classification> {
    use Action::*;
    use Class::*;
    match outcome {
        Outcome::Delivered => None,
        Outcome::Timeout => Some(c(Transient, 5, Retry, true, false, "timeout")),
        Outcome::Transport(kind) => Some(match kind {
            TransportKind::Dns => c(Transient, 6, Retry, true, false, "dns failure"),
            TransportKind::Connect => c(Transient, 6, Retry, true, false, "connection failed"),
            TransportKind::Reset => c(Transient, 6, Retry, true, false, "connection reset"),
            TransportKind::Tls => c(Transient, 7, FailOver, true, false, "tls failure"),
            TransportKind::Other => c(Transient, 6, Retry, true, false, "transport error"),
        }),
        Outcome::Http { status, body } => classify_http(*status, body.as_ref()),
    }
}

#[expect(
    clippy::match_overlapping_arm,
    reason = "specific codes first, then their class, reads like the table it is"
)]
fn classify_http(status: u16, body: Option<&TelegramError>) -> Option<Classification> {
    use Action::*;
    use Class::*;
    // Telegram answers errors with the matching HTTP status; a 2xx carrying
    // an error body is judged by the body.
    let code = match body {
        Some(b) if (200..300).contains(&status) && b.error_code >= 400 => b.error_code,
        _ => status,
    };
    let description = body.map_or("", |b| b.description.as_str());
    Some(match code {
        200..=299 => return None,
        429 => {
            let wait = body
                .and_then(|b| b.retry_after.or_else(|| retry_after_in(&b.description)))
                .map_or(DEFAULT_RATE_LIMIT_WAIT, |s| Duration::from_secs(s.max(1)));
            c(RateLimited, 4, Wait(wait), false, false, "rate limited")
        }
        400 => {
            if let Some(to) = body.and_then(|b| b.migrate_to_chat_id) {
                c(Permanent, 1, Readdress(to), false, true, "group migrated")
            } else if UNREACHABLE_400
                .iter()
                .any(|n| contains_ignore_case(description, n))
            {
                c(
                    RecipientUnreachable,
                    2,
                    DeadLetter,
                    false,
                    true,
                    "chat unreachable",
                )
            } else {
                c(Permanent, 3, DeadLetter, false, false, "bad request")
            }
        }
        401 => c(
            Critical,
            10,
            StopTier,
            false,
            false,
            "unauthorized: bad bot token",
        ),
        403 => c(
            RecipientUnreachable,
            2,
            DeadLetter,
            false,
            true,
            "forbidden by recipient",
        ),
        404 => c(
            Critical,
            9,
            StopTier,
            false,
            false,
            "not found: bad token or endpoint",
        ),
        408 => c(Transient, 5, Retry, true, false, "request timeout"),
        400..=499 => c(Permanent, 4, DeadLetter, false, false, "client error"),
        502..=504 => c(Transient, 5, Retry, true, false, "gateway unavailable"),
        500..=599 => c(Transient, 6, Retry, true, false, "server error"),
        _ => c(Transient, 6, Retry, true, false, "unexpected status"),
    })
}

/// `N` from "... retry after N", Telegram's wording in 429 descriptions.
fn retry_after_in(description: &str) -> Option<u64> {
    const MARK: &[u8] = b"retry after ";
    let bytes = description.as_bytes();
    let at = bytes
        .windows(MARK.len())
        .position(|w| w.eq_ignore_ascii_case(MARK))?;
    let digits = &bytes[at + MARK.len()..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Read a Bot API error body (`{"ok":false,"error_code":..,"description":..,
/// "parameters":{..}}`). `None` when it is not JSON or says `ok: true`.
/// Fields of the wrong type are skipped rather than failing the whole body.
pub fn parse_telegram_error(body: &[u8]) -> Option<TelegramError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    if obj.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    let error_code = obj.get("error_code").and_then(serde_json::Value::as_u64);
    let description = obj.get("description").and_then(serde_json::Value::as_str);
    if error_code.is_none() && description.is_none() {
        return None;
    }
    let params = obj.get("parameters");
    let param = |name: &str| params.and_then(|p| p.get(name));
    Some(TelegramError {
        error_code: error_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
        description: truncate(description.unwrap_or(""), MAX_DESCRIPTION).to_owned(),
        retry_after: param("retry_after").and_then(serde_json::Value::as_u64),
        migrate_to_chat_id: param("migrate_to_chat_id").and_then(serde_json::Value::as_i64),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One alert for a class of error seen across many chats of a tier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Escalation<T> {
    pub tier: T,
    pub class: Class,
    /// Distinct chats that showed the class within the window.
    pub chats: usize,
    /// The earliest of those observations.
    pub since: Instant,
    pub at: Instant,
    /// The class's base severity raised by 3, at most 10.
    pub severity: u8,
}

#[derive(Clone, Debug, Default)]
struct Track {
    /// Observations within the window, oldest first.
    recent: VecDeque<(Instant, Option<i64>)>,
    /// Observations per chat in `recent`.
    per_chat: FastMap<Option<i64>, u32>,
    escalated: bool,
    last: Instant,
}

/// Folds the same class showing up across many chats into one escalation
/// per tier, instead of one alert per message.
#[derive(Clone, Debug)]
pub struct Correlator<T> {
    pub window: Duration,
    /// Distinct chats within `window` that escalate (0 acts as 1).
    pub chats_threshold: usize,
    tracks: FastMap<(T, Class), Track>,
}

impl<T> Default for Correlator<T> {
    /// Five distinct chats within a minute: more than a coincidence, few
    /// enough to alert while the cause is still fresh.
    fn default() -> Self {
        Correlator {
            window: Duration::from_secs(60),
            chats_threshold: 5,
            tracks: FastMap::default(),
        }
    }
}

impl<T: Hash + Eq + Clone> Correlator<T> {
    pub fn new(window: Duration, chats_threshold: usize) -> Self {
        Correlator {
            window,
            chats_threshold,
            tracks: FastMap::default(),
        }
    }

    /// Note a classified failure. Returns an escalation the first time
    /// `chats_threshold` distinct chats (no chat counts as one) show `class`
    /// within `window`; then stays silent until the class has been quiet for a
    /// whole window. Observations should come in time order.
    pub fn observe(
        &mut self,
        now: Instant,
        tier: &T,
        class: Class,
        chat: Option<i64>,
    ) -> Option<Escalation<T>> {
        let window = self.window;
        let track = self.tracks.entry((tier.clone(), class)).or_default();
        if track.escalated {
            if now.since(track.last) < window {
                track.last = track.last.max(now);
                return None;
            }
            track.escalated = false;
        }
        while let Some(&(t, old)) = track.recent.front() {
            if now.since(t) <= window {
                break;
            }
            track.recent.pop_front();
            if let Some(n) = track.per_chat.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    track.per_chat.remove(&old);
                }
            }
        }
        track.recent.push_back((now, chat));
        *track.per_chat.entry(chat).or_insert(0) += 1;
        track.last = track.last.max(now);
        let chats = track.per_chat.len();
        if chats < self.chats_threshold.max(1) {
            return None;
        }
        let since = track.recent.front().map_or(now, |(t, _)| *t);
        track.escalated = true;
        track.recent.clear();
        track.per_chat.clear();
        Some(Escalation {
            tier: tier.clone(),
            class,
            chats,
            since,
            at: now,
            severity: (class.base_severity() + 3).min(10),
        })
    }

    /// Is this tier's class escalated and not yet quiet for a window?
    pub fn is_escalated(&self, now: Instant, tier: &T, class: Class) -> bool {
        self.tracks
            .get(&(tier.clone(), class))
            .is_some_and(|t| t.escalated && now.since(t.last) < self.window)
    }

    /// Forget classes quiet for a whole window (their state equals fresh).
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.tracks.len();
        let window = self.window;
        self.tracks.retain(|_, t| now.since(t.last) < window);
        before - self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> Outcome {
        Outcome::Http {
            status,
            body: parse_telegram_error(body.as_bytes()),
        }
    }

    fn class_of(o: &Outcome) -> (Class, Action, bool, bool) {
        let c = classify(o).unwrap();
        assert!((1..=10).contains(&c.severity));
        (c.class, c.action, c.counts_toward_breaker, c.chat_scoped)
    }

    #[test]
    fn parses_bot_api_error_bodies() {
        let e = parse_telegram_error(
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
        )
        .unwrap();
        assert_eq!(e.error_code, 429);
        assert_eq!(e.retry_after, Some(7));
        let e = parse_telegram_error(
            br#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#,
        )
        .unwrap();
        assert_eq!(e.migrate_to_chat_id, Some(-1_001_234_567_890));
        assert_eq!(parse_telegram_error(br#"{"ok":true,"result":{}}"#), None);
        assert_eq!(parse_telegram_error(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(parse_telegram_error(b"[]"), None);
        let odd = parse_telegram_error(br#"{"ok":false,"error_code":"x","description":7}"#);
        assert_eq!(odd, None);
        let long = format!(
            r#"{{"ok":false,"error_code":400,"description":"{}"}}"#,
            "é".repeat(400)
        );
        let e = parse_telegram_error(long.as_bytes()).unwrap();
        assert!(e.description.len() <= MAX_DESCRIPTION);
    }

    #[test]
    fn rate_limits_wait_for_retry_after() {
        let (class, action, counts, scoped) = class_of(&http(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35","parameters":{"retry_after":35}}"#,
        ));
        assert_eq!(class, Class::RateLimited);
        assert_eq!(action, Action::Wait(Duration::from_secs(35)));
        assert!(!counts && !scoped);
        // From the description when parameters are missing, else 1 s.
        let (_, action, ..) = class_of(&http(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 12"}"#,
        ));
        assert_eq!(action, Action::Wait(Duration::from_secs(12)));
        assert_eq!(retry_after_in("RETRY AFTER 3s"), Some(3));
        assert_eq!(retry_after_in("retry after soon"), None);
        assert_eq!(retry_after_in("retry after 99999999999999999999999"), None);
        let (_, action, ..) = class_of(&Outcome::Http {
            status: 429,
            body: None,
        });
        assert_eq!(action, Action::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn transient_failures_retry_and_count() {
        for o in [
            Outcome::Timeout,
            Outcome::Transport(TransportKind::Connect),
            Outcome::Transport(TransportKind::Dns),
            Outcome::Transport(TransportKind::Reset),
            http(502, "Bad Gateway"),
            http(
                500,
                r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#,
            ),
        ] {
            let (class, action, counts, scoped) = class_of(&o);
            assert_eq!(
                (class, action, counts, scoped),
                (Class::Transient, Action::Retry, true, false),
                "{o:?}"
            );
        }
        let (_, action, ..) = class_of(&Outcome::Transport(TransportKind::Tls));
        assert_eq!(action, Action::FailOver);
    }

    #[test]
    fn permanent_and_chat_scoped_errors() {
        let bad = http(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#,
        );
        assert_eq!(
            class_of(&bad),
            (Class::Permanent, Action::DeadLetter, false, false)
        );
        let missing = http(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        );
        assert_eq!(
            class_of(&missing),
            (Class::RecipientUnreachable, Action::DeadLetter, false, true)
        );
        let blocked = http(
            403,
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
        );
        assert_eq!(
            class_of(&blocked),
            (Class::RecipientUnreachable, Action::DeadLetter, false, true)
        );
        let migrated = http(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-100777}}"#,
        );
        assert_eq!(
            class_of(&migrated),
            (Class::Permanent, Action::Readdress(-100_777), false, true)
        );
    }

    #[test]
    fn critical_errors_stop_the_tier() {
        for status in [401, 404] {
            let c = classify(&http(
                status,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
            ))
            .unwrap();
            assert_eq!((c.class, c.action), (Class::Critical, Action::StopTier));
            assert!(c.severity >= 9);
        }
    }

    #[test]
    fn delivered_and_odd_statuses() {
        assert_eq!(classify(&Outcome::Delivered), None);
        assert_eq!(classify(&http(200, r#"{"ok":true,"result":{}}"#)), None);
        // A 200 carrying an error body is judged by the body.
        let c = classify(&http(
            200,
            r#"{"ok":false,"error_code":403,"description":"Forbidden"}"#,
        ))
        .unwrap();
        assert_eq!(c.class, Class::RecipientUnreachable);
        for status in [0, 100, 302, 418, 600, u16::MAX] {
            let c = classify(&Outcome::Http { status, body: None }).unwrap();
            assert!((1..=10).contains(&c.severity));
        }
    }

    #[test]
    fn correlator_escalates_once_and_rearms_after_quiet() {
        let window = Duration::from_secs(60);
        let mut k: Correlator<u32> = Correlator::new(window, 3);
        let s = Instant::from_secs;
        assert_eq!(k.observe(s(0), &1, Class::Transient, Some(10)), None);
        // Same chat again does not add a chat.
        assert_eq!(k.observe(s(1), &1, Class::Transient, Some(10)), None);
        // Other tiers and classes are separate.
        assert_eq!(k.observe(s(2), &2, Class::Transient, Some(11)), None);
        assert_eq!(k.observe(s(2), &1, Class::Permanent, Some(11)), None);
        assert_eq!(k.observe(s(3), &1, Class::Transient, Some(11)), None);
        let e = k.observe(s(4), &1, Class::Transient, Some(12)).unwrap();
        assert_eq!((e.chats, e.since, e.at, e.severity), (3, s(0), s(4), 8));
        assert!(k.is_escalated(s(5), &1, Class::Transient));
        // Still noisy: silent, and the quiet period restarts each time.
        for (t, chat) in [(30, 13), (80, 14), (130, 15)] {
            assert_eq!(k.observe(s(t), &1, Class::Transient, Some(chat)), None);
        }
        // Quiet for a window: re-armed, escalates again.
        assert!(!k.is_escalated(s(191), &1, Class::Transient));
        assert_eq!(k.observe(s(191), &1, Class::Transient, Some(1)), None);
        assert_eq!(k.observe(s(192), &1, Class::Transient, Some(2)), None);
        assert!(k.observe(s(193), &1, Class::Transient, Some(3)).is_some());
    }

    #[test]
    fn correlator_forgets_chats_outside_the_window() {
        let mut k: Correlator<u32> = Correlator::new(Duration::from_secs(10), 3);
        let s = Instant::from_secs;
        assert_eq!(
            k.observe(s(0), &1, Class::RecipientUnreachable, Some(1)),
            None
        );
        assert_eq!(
            k.observe(s(5), &1, Class::RecipientUnreachable, Some(2)),
            None
        );
        assert_eq!(
            k.observe(s(12), &1, Class::RecipientUnreachable, Some(3)),
            None
        );
        assert!(
            k.observe(s(13), &1, Class::RecipientUnreachable, Some(4))
                .is_some()
        );
        assert_eq!(k.evict_idle(s(20)), 0);
        assert_eq!(k.evict_idle(s(23)), 1);
    }
}
