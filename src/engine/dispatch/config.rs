//! What a [`super::Dispatcher`] is built from: the tiers of one route and
//! the dispatcher-wide knobs, in engine types only.
//!
//! Owns: [`DispatchConfig`], [`TierConfig`], their validation and
//! [`DispatchError`]. Leaves to others: reading resources and resolving
//! policies (`crate::policy`; `crate::sim::tiers` bridges a `ConfigSet` into
//! this type).
//!
//! Invariant: a config that passes [`DispatchConfig::validate`] never makes
//! the dispatcher panic: every limit, breaker, retry policy, scheduler weight,
//! health setting and degradation profile in it has passed its own module's
//! validation, and every tier index it holds is in range.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::breaker::{BreakerConfig, BreakerConfigError, Window};
use crate::engine::bulkhead::BulkheadConfig;
use crate::engine::degradation::{ConfigErrors, DegradationConfig};
use crate::engine::health::{HealthConfig, HealthConfigError};
use crate::engine::limiter::{LimitError, Limits};
use crate::engine::retry::{RetryPolicy, RetryPolicyError};
use crate::engine::scheduler::{SchedulerConfig, SchedulerConfigError};
use crate::engine::selector::SelectorConfig;

/// Most tiers one dispatcher routes over (fallback lists hold at most 8
/// names, so a chain of a few tiers fits with room to spare).
pub const MAX_TIERS: usize = 16;

/// How long a message may wait out outages before it is dead-lettered,
/// unless the config says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What kind of sink a tier sends to; decides which limits apply per chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sink {
    /// Telegram Bot API: global, per-chat and per-group limits apply.
    Telegram,
    /// An HTTP endpoint: only the global limit and priority shares apply —
    /// it has no chats of its own.
    Webhook,
    /// Files on disk: the last resort; no breaker, always selectable.
    Spool,
}

impl Sink {
    pub const fn as_str(self) -> &'static str {
        match self {
            Sink::Telegram => "telegram",
            Sink::Webhook => "webhook",
            Sink::Spool => "spool",
        }
    }
}

/// One tier as the dispatcher runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TierConfig {
    /// Unique within the config; state survives a reload under the same name.
    pub name: String,
    pub sink: Sink,
    /// Preference among primary tiers: higher is tried first (the API's
    /// `DeliveryTier.spec.priority`).
    pub priority: u32,
    /// 0..=100: below this health score the tier is skipped.
    pub health_floor: u8,
    pub limits: Limits,
    pub breaker: BreakerConfig,
    pub retry: RetryPolicy,
    /// Handed out as each [`super::SendOrder`]'s deadline.
    pub per_attempt_timeout: Duration,
    /// No retry is scheduled later than this after the first attempt (on
    /// top of the retry policy's own `max_elapsed`).
    pub overall_timeout: Duration,
    /// Per message type; types without an entry are unbounded.
    pub bulkheads: BTreeMap<String, BulkheadConfig>,
}

impl TierConfig {
    /// A tier with the engine defaults (Telegram limits, default breaker and
    /// retry policy, 10 s per attempt, 1 h overall, no bulkheads).
    pub fn new(name: &str, sink: Sink) -> Self {
        TierConfig {
            name: name.to_owned(),
            sink,
            priority: 100,
            health_floor: 0,
            limits: Limits::default(),
            breaker: BreakerConfig::default(),
            retry: RetryPolicy::default(),
            per_attempt_timeout: Duration::from_secs(10),
            overall_timeout: Duration::from_secs(3600),
            bulkheads: BTreeMap::new(),
        }
    }
}

/// Everything a dispatcher needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatchConfig {
    /// The tiers of the route. Tiers not listed in `fallbacks` are primary.
    pub tiers: Vec<TierConfig>,
    /// Fallback order, as indices into `tiers`.
    pub fallbacks: Vec<usize>,
    pub scheduler: SchedulerConfig,
    /// The entry tier's degradation profile: the level is dispatcher-wide.
    pub degradation: DegradationConfig,
    /// Health scoring of every tier; its window is also the window of the
    /// error-rate and p95 signals.
    pub health: HealthConfig,
    pub selector: SelectorConfig,
    /// Breakers kept per (tier, chat) for chat-scoped errors.
    pub chat_breaker: BreakerConfig,
    /// Sends out at once, over all tiers, before degradation's
    /// concurrency factor.
    pub max_in_flight: u32,
    /// How long a chat stays marked unreachable on a tier after a 403 or
    /// "chat not found" (a user may unblock the bot).
    pub unreachable_ttl: Duration,
    /// Same error class across this many distinct chats of a tier within
    /// `correlation_window` raises one escalation.
    pub correlation_window: Duration,
    pub correlation_chats: usize,
    /// A message held through an outage (every tier it could take failed
    /// it with the tier's fault) is dead-lettered once it is this old; zero
    /// dead-letters it at once instead of holding it.
    pub max_age: Duration,
}

impl DispatchConfig {
    /// `tiers` with the given fallback order and defaults for the rest.
    pub fn new(tiers: Vec<TierConfig>, fallbacks: Vec<usize>) -> Self {
        DispatchConfig {
            tiers,
            fallbacks,
            scheduler: SchedulerConfig::default(),
            degradation: DegradationConfig::default(),
            health: HealthConfig::default(),
            selector: SelectorConfig::default(),
            chat_breaker: default_chat_breaker(),
            max_in_flight: 256,
            unreachable_ttl: Duration::from_secs(3600),
            correlation_window: Duration::from_secs(60),
            correlation_chats: 5,
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// Checks everything the dispatcher relies on; names the tier at fault.
    pub fn validate(&self) -> Result<(), DispatchError> {
        if self.tiers.is_empty() {
            return Err(DispatchError::NoTiers);
        }
        if self.tiers.len() > MAX_TIERS {
            return Err(DispatchError::TooManyTiers {
                count: self.tiers.len(),
            });
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if self.tiers[..i].iter().any(|o| o.name == t.name) {
                return Err(DispatchError::DuplicateTier(t.name.clone()));
            }
            let tier = || t.name.clone();
            t.limits
                .validate()
                .map_err(|source| DispatchError::Limits {
                    tier: tier(),
                    source,
                })?;
            t.breaker
                .validate()
                .map_err(|source| DispatchError::Breaker {
                    tier: tier(),
                    source,
                })?;
            t.retry.validate().map_err(|source| DispatchError::Retry {
                tier: tier(),
                source,
            })?;
            if t.health_floor > 100 {
                return Err(DispatchError::HealthFloor {
                    tier: tier(),
                    floor: t.health_floor,
                });
            }
        }
        for (pos, &f) in self.fallbacks.iter().enumerate() {
            if f >= self.tiers.len() || self.fallbacks[..pos].contains(&f) {
                return Err(DispatchError::Fallback { index: f });
            }
        }
        if self.fallbacks.len() == self.tiers.len() {
            return Err(DispatchError::NoPrimary);
        }
        self.chat_breaker
            .validate()
            .map_err(|source| DispatchError::Breaker {
                tier: "(chat breakers)".to_owned(),
                source,
            })?;
        self.scheduler.validate()?;
        self.degradation.validate()?;
        self.health.validate()?;
        if self.max_in_flight == 0 {
            return Err(DispatchError::MaxInFlight);
        }
        Ok(())
    }
}

/// A chat breaker opens after a few chat-scoped failures and stays open
/// long: a chat that refuses the bot rarely changes its mind within seconds.
fn default_chat_breaker() -> BreakerConfig {
    BreakerConfig {
        window: Window::Count(10),
        minimum_calls: 3,
        failure_rate_threshold: 0.5,
        slow_call_duration: Duration::ZERO,
        slow_call_rate_threshold: 1.0,
        open_base: Duration::from_secs(30),
        open_max: Duration::from_secs(600),
        half_open_probes: 1,
    }
}

/// A configuration the dispatcher cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    #[error("no delivery tiers configured")]
    NoTiers,
    #[error("{count} tiers in one route; at most {MAX_TIERS} are supported")]
    TooManyTiers { count: usize },
    #[error("tier {0:?} is listed twice")]
    DuplicateTier(String),
    #[error("fallback index {index} is out of range or listed twice")]
    Fallback { index: usize },
    #[error("every tier is a fallback: at least one primary tier is needed")]
    NoPrimary,
    #[error("tier {0:?} is not configured")]
    UnknownTier(String),
    #[error("tier {tier:?}: limits: {source}")]
    Limits {
        tier: String,
        #[source]
        source: LimitError,
    },
    #[error("tier {tier:?}: breaker: {source}")]
    Breaker {
        tier: String,
        #[source]
        source: BreakerConfigError,
    },
    #[error("tier {tier:?}: retry: {source}")]
    Retry {
        tier: String,
        #[source]
        source: RetryPolicyError,
    },
    #[error("tier {tier:?}: health floor {floor} is above 100")]
    HealthFloor { tier: String, floor: u8 },
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerConfigError),
    #[error(transparent)]
    Degradation(#[from] ConfigErrors),
    #[error("health: {0}")]
    Health(#[from] HealthConfigError),
    #[error("maxInFlight must be at least 1")]
    MaxInFlight,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let t = |n: &str| TierConfig::new(n, Sink::Telegram);
        assert_eq!(
            DispatchConfig::new(vec![], vec![]).validate(),
            Err(DispatchError::NoTiers)
        );
        assert_eq!(
            DispatchConfig::new(vec![t("a"), t("a")], vec![]).validate(),
            Err(DispatchError::DuplicateTier("a".into()))
        );
        assert_eq!(
            DispatchConfig::new(vec![t("a")], vec![0]).validate(),
            Err(DispatchError::NoPrimary)
        );
        assert_eq!(
            DispatchConfig::new(vec![t("a"), t("b")], vec![1, 1]).validate(),
            Err(DispatchError::Fallback { index: 1 })
        );
        let mut bad = t("a");
        bad.limits.global.rate = 0;
        assert!(matches!(
            DispatchConfig::new(vec![bad], vec![]).validate(),
            Err(DispatchError::Limits { .. })
        ));
        let mut c = DispatchConfig::new(vec![t("a"), t("b")], vec![1]);
        assert_eq!(c.validate(), Ok(()));
        c.max_in_flight = 0;
        assert_eq!(c.validate(), Err(DispatchError::MaxInFlight));
    }
}
