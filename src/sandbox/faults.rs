//! Fault injection: what is wrong with "Telegram" right now, and the seeded
//! dice that decide which request gets hit.
//!
//! Owns the fault settings (`FaultsConfig`, also the body of
//! `POST /sandbox/faults`), the deterministic RNG and the per-request
//! decisions (dark?, 5xx?, how much latency?, what is wrong with this chat?).
//! Leaves sleeping and answering to `server` and `state`.
//!
//! Invariant: decisions depend only on the settings, the seed, the order of
//! the requests and the instant passed in, so a run is replayable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SandboxError;

/// Longest latency the sandbox will add to one request.
const MAX_LATENCY_MS: u64 = 10 * 60 * 1000;

/// Faults to inject. Default: none. Replaced whole by `POST /sandbox/faults`
/// (fields left out take their defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Seed of the dice for `error_rate` and `jitter_ms`.
    pub seed: u64,
    /// Share of Bot API requests answered 500 Internal Server Error, 0..=1.
    pub error_rate: f64,
    /// Added to every Bot API request before it "arrives".
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Dark now: every Bot API request is answered 502 Bad Gateway.
    pub dark: bool,
    /// Dark periods, measured from the moment these settings took effect.
    pub dark_periods: Vec<DarkPeriod>,
    /// Chats that blocked the bot: 403.
    pub blocked_chats: Vec<i64>,
    /// Groups upgraded to supergroups: old id -> new id (400 with migrate_to_chat_id).
    pub migrated_chats: BTreeMap<i64, i64>,
    /// Chats that do not exist: 400 chat not found.
    pub unknown_chats: Vec<i64>,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        FaultsConfig {
            seed: 0x5EED_F00D,
            error_rate: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            dark: false,
            dark_periods: Vec::new(),
            blocked_chats: Vec::new(),
            migrated_chats: BTreeMap::new(),
            unknown_chats: Vec::new(),
        }
    }
}

/// `[start_ms, start_ms + duration_ms)` after the settings took effect.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DarkPeriod {
    pub start_ms: u64,
    pub duration_ms: u64,
}

impl FaultsConfig {
    pub fn validate(&self) -> Result<(), SandboxError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(SandboxError::Config(
                "faults.error_rate must be within 0..=1".into(),
            ));
        }
        if self.latency_ms.saturating_add(self.jitter_ms) > MAX_LATENCY_MS {
            return Err(SandboxError::Config(format!(
                "faults.latency_ms + faults.jitter_ms must be at most {MAX_LATENCY_MS}"
            )));
        }
        Ok(())
    }
}

/// What is wrong with one chat, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFault {
    NotFound,
    MigratedTo(i64),
    Blocked,
}

/// The live fault state: settings, when they took effect, and the dice.
#[derive(Debug)]
pub struct Injector {
    config: FaultsConfig,
    since: Instant,
    errors: Dice,
    jitter: Dice,
}

impl Injector {
    pub fn new(config: FaultsConfig, now: Instant) -> Self {
        let seed = config.seed;
        Injector {
            config,
            since: now,
            errors: Dice::new(seed),
            jitter: Dice::new(seed ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    pub fn config(&self) -> &FaultsConfig {
        &self.config
    }

    pub fn is_dark(&self, now: Instant) -> bool {
        if self.config.dark {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.since);
        self.config.dark_periods.iter().any(|p| {
            let start = Duration::from_millis(p.start_ms);
            let end = start.saturating_add(Duration::from_millis(p.duration_ms));
            elapsed >= start && elapsed < end
        })
    }

    /// Latency for the next request; draws only when jitter is configured.
    pub fn latency(&mut self) -> Duration {
        let jitter = match self.config.jitter_ms {
            0 => 0,
            j => self.jitter.below(j.saturating_add(1)),
        };
        Duration::from_millis(self.config.latency_ms.saturating_add(jitter))
    }

    /// Whether the next request fails with a 5xx; draws only when the rate is
    /// strictly between 0 and 1, so a rate of 0 or 1 leaves the dice alone.
    pub fn fails(&mut self) -> bool {
        let rate = self.config.error_rate;
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        self.errors.unit() < rate
    }

    pub fn chat_fault(&self, chat: i64) -> Option<ChatFault> {
        let c = &self.config;
        if c.unknown_chats.contains(&chat) {
            Some(ChatFault::NotFound)
        } else if let Some(to) = c.migrated_chats.get(&chat) {
            Some(ChatFault::MigratedTo(*to))
        } else if c.blocked_chats.contains(&chat) {
            Some(ChatFault::Blocked)
        } else {
            None
        }
    }
}

/// xorshift64* — tiny, seedable, plenty for picking which request fails.
#[derive(Debug)]
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        // xorshift must not start at 0.
        Dice(if seed == 0 {
            0xDEAD_BEEF_CAFE_F00D
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n > 0`. The modulo bias is irrelevant at
    /// millisecond jitter.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(config: FaultsConfig) -> (Injector, Instant) {
        let t0 = Instant::now();
        (Injector::new(config, t0), t0)
    }

    #[test]
    fn error_rate_is_roughly_honoured_and_replayable() {
        let config = FaultsConfig {
            error_rate: 0.2,
            seed: 42,
            ..FaultsConfig::default()
        };
        let (mut a, _) = injector(config.clone());
        let (mut b, _) = injector(config);
        let draws_a: Vec<bool> = (0..10_000).map(|_| a.fails()).collect();
        let draws_b: Vec<bool> = (0..10_000).map(|_| b.fails()).collect();
        assert_eq!(draws_a, draws_b);
        let failed = draws_a.iter().filter(|f| **f).count();
        assert!((1_800..=2_200).contains(&failed), "{failed}");
    }

    #[test]
    fn rate_zero_and_one_are_exact() {
        let (mut never, _) = injector(FaultsConfig::default());
        assert!((0..1000).all(|_| !never.fails()));
        let (mut always, _) = injector(FaultsConfig {
            error_rate: 1.0,
            ..FaultsConfig::default()
        });
        assert!((0..1000).all(|_| always.fails()));
    }

    #[test]
    fn latency_stays_within_fixed_plus_jitter() {
        let (mut inj, _) = injector(FaultsConfig {
            latency_ms: 50,
            jitter_ms: 10,
            ..FaultsConfig::default()
        });
        let draws: Vec<Duration> = (0..1000).map(|_| inj.latency()).collect();
        assert!(
            draws
                .iter()
                .all(|d| (50..=60).contains(&(d.as_millis() as u64)))
        );
        assert!(draws.iter().any(|d| d.as_millis() == 50));
        assert!(draws.iter().any(|d| d.as_millis() == 60));
    }

    #[test]
    fn dark_periods_are_half_open_from_when_the_settings_took_effect() {
        let (inj, t0) = injector(FaultsConfig {
            dark_periods: vec![DarkPeriod {
                start_ms: 1_000,
                duration_ms: 500,
            }],
            ..FaultsConfig::default()
        });
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!inj.is_dark(at(999)));
        assert!(inj.is_dark(at(1_000)));
        assert!(inj.is_dark(at(1_499)));
        assert!(!inj.is_dark(at(1_500)));
    }

    #[test]
    fn chat_faults_in_order() {
        let (inj, _) = injector(FaultsConfig {
            blocked_chats: vec![1, 3],
            migrated_chats: BTreeMap::from([(-5, -1_000_000_000_005), (3, 4)]),
            unknown_chats: vec![3, 9],
            ..FaultsConfig::default()
        });
        assert_eq!(inj.chat_fault(1), Some(ChatFault::Blocked));
        assert_eq!(
            inj.chat_fault(-5),
            Some(ChatFault::MigratedTo(-1_000_000_000_005))
        );
        assert_eq!(inj.chat_fault(3), Some(ChatFault::NotFound));
        assert_eq!(inj.chat_fault(2), None);
    }

    #[test]
    fn validation_bounds() {
        let bad = FaultsConfig {
            error_rate: 1.5,
            ..FaultsConfig::default()
        };
        assert!(bad.validate().is_err());
        let nan = FaultsConfig {
            error_rate: f64::NAN,
            ..FaultsConfig::default()
        };
        assert!(nan.validate().is_err());
        assert!(FaultsConfig::default().validate().is_ok());
    }
}
