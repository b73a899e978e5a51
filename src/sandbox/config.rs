//! The sandbox's configuration: accepted bot tokens, the limits the judge
//! enforces, the faults to inject, and how much history to keep.
//!
//! Owns the serde shape (snake_case, like the Bot API itself), the defaults
//! (Telegram's published limits, strict judging, no faults) and validation.
//! Leaves enforcement to `limits` and fault decisions to `faults`.
//!
//! Invariant: a bot token never leaves this file in readable form through
//! `Debug`, `Display` or an error message; only `BotToken::expose` reads it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SandboxError;
use super::faults::FaultsConfig;

/// Longest window the sandbox accepts; keeps instant arithmetic far from overflow.
const MAX_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Everything the sandbox needs to start. `Default` is Telegram as documented:
/// 30 sends/s per bot, 1/s per chat, 20/min per group, strict, no faults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Tokens answered as valid. Empty: any token shaped `<digits>:<secret>`.
    pub tokens: Vec<BotToken>,
    pub limits: LimitsConfig,
    pub faults: FaultsConfig,
    /// Delivered messages kept for `/sandbox/messages`; older ones are dropped
    /// (0 keeps none; counters are unaffected).
    pub max_messages_kept: usize,
    /// Largest request body read (JSON, form or multipart upload).
    pub max_body_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            tokens: Vec::new(),
            limits: LimitsConfig::default(),
            faults: FaultsConfig::default(),
            max_messages_kept: 100_000,
            max_body_bytes: 20 * 1024 * 1024,
        }
    }
}

impl SandboxConfig {
    /// Rejects a configuration the sandbox cannot honour. Messages name the
    /// field and the position of a bad token, never its text.
    pub fn validate(&self) -> Result<(), SandboxError> {
        for (i, token) in self.tokens.iter().enumerate() {
            if bot_id_of(token.expose()).is_none() {
                return Err(SandboxError::Config(format!(
                    "tokens[{i}] is not of the form <digits>:<secret>"
                )));
            }
        }
        self.limits.validate()?;
        self.faults.validate()
    }
}

/// A bot token: serialized as the plain string, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BotToken(String);

impl BotToken {
    pub fn new(token: impl Into<String>) -> Self {
        BotToken(token.into())
    }

    /// The secret itself, for comparison only; never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for BotToken {
    fn from(token: &str) -> Self {
        BotToken(token.to_owned())
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// The bot id of a token shaped `<digits>:<secret>` (secret: letters, digits,
/// `_`, `-`), or `None`. The id is public (getMe shows it); the secret is not.
pub fn bot_id_of(token: &str) -> Option<u64> {
    let (id, secret) = token.split_once(':')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secret_ok = !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !secret_ok {
        return None;
    }
    id.parse().ok()
}

/// One sliding window: at most `max` attempts in any `window_ms`. `max == 0`
/// switches the window off.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    pub max: u32,
    pub window_ms: u64,
}

impl WindowLimit {
    pub const fn new(max: u32, window_ms: u64) -> Self {
        WindowLimit { max, window_ms }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    pub fn is_off(&self) -> bool {
        self.max == 0
    }

    fn validate(&self, field: &str) -> Result<(), SandboxError> {
        if self.is_off() {
            return Ok(());
        }
        if self.window_ms == 0 || self.window_ms > MAX_WINDOW_MS {
            return Err(SandboxError::Config(format!(
                "limits.{field}.window_ms must be in 1..={MAX_WINDOW_MS}"
            )));
        }
        Ok(())
    }
}

/// The limits the judge enforces, per bot token.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sends by one bot, whatever the chat.
    pub per_bot: WindowLimit,
    /// Sends by one bot to one chat (any chat id).
    pub per_chat: WindowLimit,
    /// Sends by one bot to one group (negative chat id), on top of `per_chat`.
    pub per_group: WindowLimit,
    /// Strict: a refused attempt occupies a slot in every window it touches,
    /// exactly like an admitted one. Off: only admitted sends are recorded.
    pub strict: bool,
    /// After any 429 caused by a window, the whole bot is refused until
    /// `retry_after` has passed.
    pub flood_ban: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_bot: WindowLimit::new(30, 1_000),
            per_chat: WindowLimit::new(1, 1_000),
            per_group: WindowLimit::new(20, 60_000),
            strict: true,
            flood_ban: true,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), SandboxError> {
        self.per_bot.validate("per_bot")?;
        self.per_chat.validate("per_chat")?;
        self.per_group.validate("per_group")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "AAHk-very_secret0";

    #[test]
    fn debug_of_config_never_shows_a_token() {
        let config = SandboxConfig {
            tokens: vec![BotToken::new(format!("123456:{SECRET}"))],
            ..SandboxConfig::default()
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("123456:"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn a_bad_token_is_named_by_position_not_by_text() {
        let config = SandboxConfig {
            tokens: vec!["1:ok".into(), format!("nodigits{SECRET}").as_str().into()],
            ..SandboxConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tokens[1]"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
    }

    #[test]
    fn token_shape() {
        assert_eq!(bot_id_of("123:abc-_D9"), Some(123));
        assert_eq!(bot_id_of(":abc"), None);
        assert_eq!(bot_id_of("123:"), None);
        assert_eq!(bot_id_of("12a:abc"), None);
        assert_eq!(bot_id_of("123:ab/c"), None);
        assert_eq!(bot_id_of("99999999999999999999999:abc"), None);
    }

    #[test]
    fn defaults_are_telegrams_limits_and_strict() {
        let limits = LimitsConfig::default();
        assert_eq!(limits.per_bot, WindowLimit::new(30, 1_000));
        assert_eq!(limits.per_chat, WindowLimit::new(1, 1_000));
        assert_eq!(limits.per_group, WindowLimit::new(20, 60_000));
        assert!(limits.strict && limits.flood_ban);
        assert!(SandboxConfig::default().validate().is_ok());
    }

    #[test]
    fn config_reads_from_json_with_defaults_and_rejects_typos() {
        let config: SandboxConfig = serde_json::from_str(
            r#"{"tokens":["1:a"],"limits":{"per_chat":{"max":2,"window_ms":500}},
                "faults":{"error_rate":0.5,"migrated_chats":{"-5":-1005}}}"#,
        )
        .unwrap();
        assert_eq!(config.limits.per_chat, WindowLimit::new(2, 500));
        assert_eq!(config.limits.per_bot, WindowLimit::new(30, 1_000));
        assert_eq!(config.faults.migrated_chats.get(&-5), Some(&-1005));
        assert!(serde_json::from_str::<SandboxConfig>(r#"{"limit":{}}"#).is_err());
    }

    #[test]
    fn zero_window_is_rejected_unless_the_limit_is_off() {
        let mut config = SandboxConfig::default();
        config.limits.per_group = WindowLimit::new(20, 0);
        assert!(config.validate().is_err());
        config.limits.per_group = WindowLimit::new(0, 0);
        assert!(config.validate().is_ok());
    }
}
