//! Degradation: the agent's load level and what each level turns off.
//!
//! Owns: the five levels NORMAL < MINOR < MODERATE < SEVERE < CRITICAL, the
//! level computed from [`Signals`] (entry and exit thresholds with
//! hysteresis, a minimum dwell time, a manual override), the [`Actions`] each
//! level takes, the ingest verdict, and validation of a profile with errors
//! that name the field (`levels[2].exit.queueDepth`). Leaves to others:
//! measuring the signals (scheduler, health, breakers), applying the actions
//! (ingest answers 503 + Retry-After, the dispatcher passes the admitted
//! classes to the scheduler, scales its concurrency and routes tiers), and
//! parsing the DegradationProfile resource into [`DegradationConfig`].
//!
//! Invariant: escalation is immediate — the highest level whose entry
//! thresholds any signal reaches; de-escalation is one configured level at a
//! time, only once every signal is at or below the current level's exit
//! thresholds and the level has been held for its `min_dwell`. So without an
//! override the level never drops sooner than `min_dwell` after it was
//! entered, and recovery re-enables shed classes and concurrency in steps
//! rather than in one burst onto a dependency that just came back. A manual
//! override replaces the effective level; the computed level keeps following
//! the signals underneath and is where the level returns when the override
//! is cleared or expires.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::engine::scheduler::PrioritySet;
use crate::engine::selector::Route;
use crate::engine::{Instant, Priority};

/// Degradation level, least to most degraded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    #[default]
    Normal,
    Minor,
    Moderate,
    Severe,
    Critical,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Minor,
        Level::Moderate,
        Level::Severe,
        Level::Critical,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "NORMAL",
            Level::Minor => "MINOR",
            Level::Moderate => "MODERATE",
            Level::Severe => "SEVERE",
            Level::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of NORMAL, MINOR, MODERATE, SEVERE, CRITICAL (any case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown degradation level {0:?}: expected NORMAL, MINOR, MODERATE, SEVERE or CRITICAL")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// The signals a level is computed from, sampled by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Messages held (queued or out).
    pub queue_depth: u64,
    /// Age of the oldest held message.
    pub oldest_age: Duration,
    /// Failed attempts / attempts over the recent window, 0..=1. NaN (no
    /// attempts) counts as 0.
    pub error_rate: f64,
    pub p95_latency: Duration,
    /// Tiers whose breaker is open.
    pub open_breakers: u32,
}

/// One of the five signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    QueueDepth,
    OldestAge,
    ErrorRate,
    P95Latency,
    OpenBreakers,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::QueueDepth,
        Signal::OldestAge,
        Signal::ErrorRate,
        Signal::P95Latency,
        Signal::OpenBreakers,
    ];

    /// The field name in the DegradationProfile resource.
    pub const fn field(self) -> &'static str {
        match self {
            Signal::QueueDepth => "queueDepth",
            Signal::OldestAge => "oldestAge",
            Signal::ErrorRate => "errorRate",
            Signal::P95Latency => "p95Latency",
            Signal::OpenBreakers => "openBreakers",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

impl Signals {
    /// A signal as a number: counts as they are, durations in seconds.
    pub fn value(&self, signal: Signal) -> f64 {
        match signal {
            Signal::QueueDepth => self.queue_depth as f64,
            Signal::OldestAge => self.oldest_age.as_secs_f64(),
            Signal::ErrorRate if self.error_rate.is_nan() => 0.0,
            Signal::ErrorRate => self.error_rate,
            Signal::P95Latency => self.p95_latency.as_secs_f64(),
            Signal::OpenBreakers => f64::from(self.open_breakers),
        }
    }
}

/// Per-signal thresholds; `None` means the signal plays no part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub queue_depth: Option<u64>,
    pub oldest_age: Option<Duration>,
    pub error_rate: Option<f64>,
    pub p95_latency: Option<Duration>,
    pub open_breakers: Option<u32>,
}

impl Thresholds {
    /// A threshold as a number, in the units of [`Signals::value`].
    pub fn value(&self, signal: Signal) -> Option<f64> {
        match signal {
            Signal::QueueDepth => self.queue_depth.map(|v| v as f64),
            Signal::OldestAge => self.oldest_age.map(|d| d.as_secs_f64()),
            Signal::ErrorRate => self.error_rate,
            Signal::P95Latency => self.p95_latency.map(|d| d.as_secs_f64()),
            Signal::OpenBreakers => self.open_breakers.map(f64::from),
        }
    }

    /// The signal reaching its threshold by the widest margin (value /
    /// threshold), if any reaches one.
    fn reached(&self, signals: &Signals) -> Option<(Signal, f64, f64)> {
        Signal::ALL
            .into_iter()
            .filter_map(|s| {
                let t = self.value(s)?;
                let v = signals.value(s);
                (v >= t).then_some((s, v, t))
            })
            .max_by(|a, b| margin(a.1, a.2).total_cmp(&margin(b.1, b.2)))
    }

    /// Every configured signal is at or below its threshold.
    fn all_at_or_below(&self, signals: &Signals) -> bool {
        Signal::ALL
            .into_iter()
            .all(|s| self.value(s).is_none_or(|t| signals.value(s) <= t))
    }
}

fn margin(value: f64, threshold: f64) -> f64 {
    if threshold > 0.0 {
        value / threshold
    } else {
        f64::INFINITY
    }
}

/// What a level turns off.
#[derive(Clone, Debug, PartialEq)]
pub struct Actions {
    /// Classes refused at ingest and held back (kept queued, not sent).
    pub shed: PrioritySet,
    /// Message types refused at ingest and held back.
    pub paused_types: Vec<String>,
    /// Multiplier on each bulkhead's and the dispatcher's concurrency, 0..=1.
    pub concurrency_factor: f64,
    /// Passed to [`crate::engine::selector::select`].
    pub route: Route,
    /// Refuse all ingest except the classes in `ingest_exempt`.
    pub refuse_ingest: bool,
    pub ingest_exempt: PrioritySet,
    /// Retry-After sent with a refusal.
    pub retry_after: Duration,
}

impl Default for Actions {
    /// NORMAL: everything on.
    fn default() -> Self {
        Actions {
            shed: PrioritySet::EMPTY,
            paused_types: Vec::new(),
            concurrency_factor: 1.0,
            route: Route::Normal,
            refuse_ingest: false,
            ingest_exempt: PrioritySet::EMPTY,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl Actions {
    /// Classes the scheduler may hand out at this level.
    pub fn dispatchable(&self) -> PrioritySet {
        PrioritySet::ALL.minus(self.shed)
    }

    /// Whether a message type is paused.
    pub fn is_paused(&self, message_type: &str) -> bool {
        self.paused_types.iter().any(|t| t == message_type)
    }
}

/// One level above NORMAL.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelSpec {
    pub level: Level,
    /// The level is entered when any signal reaches its entry threshold.
    pub entry: Thresholds,
    /// The level may be left when every signal is at or below its exit
    /// threshold; each must be below the entry threshold (hysteresis).
    pub exit: Thresholds,
    /// Least time at the level before it may be left downwards.
    pub min_dwell: Duration,
    pub actions: Actions,
}

/// A degradation profile: levels above NORMAL, in order. A level not listed
/// is never entered. NORMAL always has [`Actions::default`].
#[derive(Clone, Debug, PartialEq)]
pub struct DegradationConfig {
    pub levels: Vec<LevelSpec>,
}

impl Default for DegradationConfig {
    fn default() -> Self {
        let secs = Duration::from_secs;
        let t = |qd, age, err, p95, open| Thresholds {
            queue_depth: Some(qd),
            oldest_age: Some(secs(age)),
            error_rate: Some(err),
            p95_latency: Some(secs(p95)),
            open_breakers: Some(open),
        };
        let low = PrioritySet::EMPTY.with(Priority::Low);
        let low_normal = low.with(Priority::Normal);
        DegradationConfig {
            levels: vec![
                LevelSpec {
                    level: Level::Minor,
                    entry: t(10_000, 30, 0.05, 2, 1),
                    exit: t(5_000, 15, 0.02, 1, 0),
                    min_dwell: secs(30),
                    actions: Actions {
                        concurrency_factor: 0.75,
                        ..Actions::default()
                    },
                },
                LevelSpec {
                    level: Level::Moderate,
                    entry: t(50_000, 120, 0.15, 5, 2),
                    exit: t(25_000, 60, 0.08, 3, 1),
                    min_dwell: secs(60),
                    actions: Actions {
                        shed: low,
                        concurrency_factor: 0.5,
                        retry_after: secs(10),
                        ..Actions::default()
                    },
                },
                LevelSpec {
                    level: Level::Severe,
                    entry: t(200_000, 600, 0.30, 10, 3),
                    exit: t(100_000, 300, 0.20, 6, 2),
                    min_dwell: secs(120),
                    actions: Actions {
                        shed: low_normal,
                        concurrency_factor: 0.25,
                        route: Route::Fallback,
                        retry_after: secs(30),
                        ..Actions::default()
                    },
                },
                LevelSpec {
                    level: Level::Critical,
                    entry: t(500_000, 1800, 0.50, 30, 4),
                    exit: t(300_000, 900, 0.35, 20, 3),
                    min_dwell: secs(300),
                    actions: Actions {
                        shed: low_normal,
                        concurrency_factor: 0.25,
                        route: Route::Spool,
                        refuse_ingest: true,
                        ingest_exempt: PrioritySet::EMPTY.with(Priority::Critical),
                        retry_after: secs(60),
                        ..Actions::default()
                    },
                },
            ],
        }
    }
}

/// One problem in a profile, at a field path such as `levels[2].exit.queueDepth`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    pub path: String,
    pub problem: String,
}

/// Every problem found in a profile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid degradation profile: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<FieldError>);

impl DegradationConfig {
    /// Checks the profile; lists every problem, each naming its field.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: String, problem: String| errors.push(FieldError { path, problem });
        for (i, spec) in self.levels.iter().enumerate() {
            let at = format!("levels[{i}]");
            if spec.level == Level::Normal {
                err(
                    format!("{at}.level"),
                    "NORMAL is the baseline and takes no thresholds".into(),
                );
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &self.levels[p])
                && spec.level <= prev.level
            {
                err(
                    format!("{at}.level"),
                    format!(
                        "{} must come after {} (levels in order, each once)",
                        spec.level, prev.level
                    ),
                );
            }
            if Signal::ALL.iter().all(|s| spec.entry.value(*s).is_none()) {
                err(
                    format!("{at}.entry"),
                    "needs at least one signal threshold".into(),
                );
            }
            for s in Signal::ALL {
                let f = s.field();
                let (entry, exit) = (spec.entry.value(s), spec.exit.value(s));
                for (side, v) in [("entry", entry), ("exit", exit)] {
                    if let Some(v) = v {
                        let bad = !v.is_finite() || v < 0.0 || (s == Signal::ErrorRate && v > 1.0);
                        if bad {
                            let range = if s == Signal::ErrorRate {
                                "0..=1"
                            } else {
                                "non-negative"
                            };
                            err(format!("{at}.{side}.{f}"), format!("{v} is not {range}"));
                        }
                    }
                }
                match (entry, exit) {
                    (Some(_), None) => err(
                        format!("{at}.exit.{f}"),
                        format!("required because entry.{f} is set"),
                    ),
                    (None, Some(_)) => err(
                        format!("{at}.exit.{f}"),
                        format!("set but entry.{f} is not"),
                    ),
                    (Some(en), Some(ex)) if ex >= en => err(
                        format!("{at}.exit.{f}"),
                        format!("{ex} must be below entry.{f} ({en})"),
                    ),
                    _ => {}
                }
                if let Some(en) = entry {
                    let lower = self.levels[..i]
                        .iter()
                        .enumerate()
                        .rev()
                        .find_map(|(j, l)| l.entry.value(s).map(|v| (j, v)));
                    if let Some((j, v)) = lower.filter(|&(_, v)| en < v) {
                        err(
                            format!("{at}.entry.{f}"),
                            format!(
                                "{en} is below levels[{j}].entry.{f} ({v}): a higher level must not trigger first"
                            ),
                        );
                    }
                }
            }
            let a = &spec.actions;
            if !(a.concurrency_factor > 0.0 && a.concurrency_factor <= 1.0) {
                err(
                    format!("{at}.actions.concurrencyFactor"),
                    format!("{} is outside (0, 1]", a.concurrency_factor),
                );
            }
            if a.shed.contains(Priority::Critical) {
                err(
                    format!("{at}.actions.shed"),
                    "critical messages cannot be shed".into(),
                );
            }
            if a.retry_after < Duration::from_secs(1) {
                err(
                    format!("{at}.actions.retryAfter"),
                    "must be at least 1s (Retry-After is whole seconds)".into(),
                );
            }
            for (k, t) in a.paused_types.iter().enumerate() {
                if t.is_empty() {
                    err(
                        format!("{at}.actions.pausedTypes[{k}]"),
                        "must not be empty".into(),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Why the level changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cause {
    /// `signal` reached `threshold` (the widest margin among those that did).
    Signal {
        signal: Signal,
        value: f64,
        threshold: f64,
    },
    /// Every signal was at or below the exit thresholds for the dwell time.
    Recovered,
    /// An operator set the level.
    Override,
    /// An operator cleared the override.
    OverrideCleared,
    /// The override's `until` passed.
    OverrideExpired,
}

/// A change of the effective level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelChange {
    pub from: Level,
    pub to: Level,
    pub at: Instant,
    pub cause: Cause,
}

/// Ingest refused because of the level; answer 503 with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("degraded to {level}: {reason}; retry after {}s", retry_after.as_secs())]
pub struct Refusal {
    pub level: Level,
    pub reason: RefusalReason,
    pub retry_after: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The level refuses all ingest but exempt classes.
    Overloaded,
    /// The message's class is shed.
    Shed(Priority),
    /// The message's type is paused.
    Paused(String),
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::Overloaded => f.write_str("ingest is refused"),
            RefusalReason::Shed(p) => write!(f, "{p} priority is shed"),
            RefusalReason::Paused(t) => write!(f, "message type {t:?} is paused"),
        }
    }
}

/// The level state machine. Call [`Degrader::evaluate`] once per second.
#[derive(Clone, Debug)]
pub struct Degrader {
    /// Indexed by `Level::index()`; `None` for levels not configured.
    specs: [Option<LevelSpec>; 5],
    normal: Actions,
    auto: Level,
    auto_since: Instant,
    manual: Option<(Level, Option<Instant>)>,
    since: Instant,
}

impl Degrader {
    /// Starts at NORMAL.
    pub fn new(config: DegradationConfig) -> Result<Self, ConfigErrors> {
        let mut d = Degrader {
            specs: Default::default(),
            normal: Actions::default(),
            auto: Level::Normal,
            auto_since: Instant::ZERO,
            manual: None,
            since: Instant::ZERO,
        };
        d.reconfigure(config)?;
        Ok(d)
    }

    /// Swaps the profile (config reload), keeping the current level when it
    /// is still configured, else the nearest configured level below it.
    pub fn reconfigure(&mut self, config: DegradationConfig) -> Result<(), ConfigErrors> {
        config.validate()?;
        let mut specs: [Option<LevelSpec>; 5] = Default::default();
        for spec in config.levels {
            let i = spec.level.index();
            specs[i] = Some(spec);
        }
        self.specs = specs;
        self.auto = self.configured_at_or_below(self.auto);
        Ok(())
    }

    fn configured_at_or_below(&self, level: Level) -> Level {
        Level::ALL[..=level.index()]
            .iter()
            .rev()
            .copied()
            .find(|l| *l == Level::Normal || self.specs[l.index()].is_some())
            .unwrap_or(Level::Normal)
    }

    /// The effective level: the override if one is active, else the
    /// computed level.
    pub fn level(&self) -> Level {
        self.manual.map_or(self.auto, |(l, _)| l)
    }

    /// The level computed from the signals, whatever the override.
    pub fn auto_level(&self) -> Level {
        self.auto
    }

    /// The active override and its expiry.
    pub fn override_level(&self) -> Option<(Level, Option<Instant>)> {
        self.manual
    }

    /// When the effective level was last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The actions of the effective level.
    pub fn actions(&self) -> &Actions {
        self.actions_for(self.level())
    }

    /// The actions of a level; an unconfigured level acts like the nearest
    /// configured level below it (an override may name any level).
    pub fn actions_for(&self, level: Level) -> &Actions {
        match &self.specs[self.configured_at_or_below(level).index()] {
            Some(spec) => &spec.actions,
            None => &self.normal,
        }
    }

    /// Whether ingest accepts a message of this class and type now.
    pub fn admits_ingest(&self, priority: Priority, message_type: &str) -> Result<(), Refusal> {
        let a = self.actions();
        let refuse = |reason| {
            Err(Refusal {
                level: self.level(),
                reason,
                retry_after: a.retry_after,
            })
        };
        if a.refuse_ingest && !a.ingest_exempt.contains(priority) {
            return refuse(RefusalReason::Overloaded);
        }
        if a.shed.contains(priority) {
            return refuse(RefusalReason::Shed(priority));
        }
        if a.is_paused(message_type) {
            return refuse(RefusalReason::Paused(message_type.to_owned()));
        }
        Ok(())
    }

    /// Forces the level until `until` (or until cleared). The computed
    /// level keeps tracking the signals underneath.
    pub fn set_override(
        &mut self,
        now: Instant,
        level: Level,
        until: Option<Instant>,
    ) -> Option<LevelChange> {
        let from = self.level();
        self.manual = Some((level, until));
        self.changed(from, now, Cause::Override)
    }

    /// Returns to the computed level.
    pub fn clear_override(&mut self, now: Instant) -> Option<LevelChange> {
        let from = self.level();
        self.manual = None;
        self.changed(from, now, Cause::OverrideCleared)
    }

    fn changed(&mut self, from: Level, now: Instant, cause: Cause) -> Option<LevelChange> {
        let to = self.level();
        (to != from).then(|| {
            self.since = now;
            LevelChange {
                from,
                to,
                at: now,
                cause,
            }
        })
    }

    /// Recomputes the level from the signals at `now`; returns the change of
    /// the effective level, if any.
    pub fn evaluate(&mut self, now: Instant, signals: &Signals) -> Option<LevelChange> {
        let from = self.level();
        let mut cause = None;
        if let Some((_, Some(until))) = self.manual
            && until <= now
        {
            self.manual = None;
            cause = Some(Cause::OverrideExpired);
        }
        if let Some(auto_cause) = self.step(now, signals) {
            cause = cause.or(Some(auto_cause));
        }
        self.changed(from, now, cause.unwrap_or(Cause::Recovered))
    }

    /// One move of the computed level, if due.
    fn step(&mut self, now: Instant, signals: &Signals) -> Option<Cause> {
        let up = self.specs[self.auto.index() + 1..]
            .iter()
            .flatten()
            .rev()
            .find_map(|spec| spec.entry.reached(signals).map(|r| (spec.level, r)));
        if let Some((level, (signal, value, threshold))) = up {
            self.auto = level;
            self.auto_since = now;
            return Some(Cause::Signal {
                signal,
                value,
                threshold,
            });
        }
        let spec = self.specs[self.auto.index()].as_ref()?;
        let dwelt = now.since(self.auto_since) >= spec.min_dwell;
        let below = self.auto.index().checked_sub(1).map(|i| Level::ALL[i])?;
        if dwelt && spec.exit.all_at_or_below(signals) {
            self.auto = self.configured_at_or_below(below);
            self.auto_since = now;
            return Some(Cause::Recovered);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    fn depth(n: u64) -> Signals {
        Signals {
            queue_depth: n,
            ..Signals::default()
        }
    }

    fn degrader() -> Degrader {
        Degrader::new(DegradationConfig::default()).unwrap()
    }

    #[test]
    fn default_profile_is_valid_and_level_names_round_trip() {
        assert!(DegradationConfig::default().validate().is_ok());
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
            assert_eq!(l.as_str().to_lowercase().parse::<Level>(), Ok(l));
        }
        assert!("PANIC".parse::<Level>().is_err());
    }

    #[test]
    fn escalates_at_once_to_the_highest_level_reached() {
        let mut d = degrader();
        assert_eq!(d.evaluate(at(1), &depth(9_999)), None);
        let c = d.evaluate(at(2), &depth(250_000)).unwrap();
        assert_eq!((c.from, c.to, c.at), (Level::Normal, Level::Severe, at(2)));
        assert_eq!(
            c.cause,
            Cause::Signal {
                signal: Signal::QueueDepth,
                value: 250_000.0,
                threshold: 200_000.0
            }
        );
        assert_eq!(d.actions().route, Route::Fallback);
        assert_eq!(
            d.actions().dispatchable(),
            PrioritySet::ALL
                .without(Priority::Low)
                .without(Priority::Normal)
        );
    }

    #[test]
    fn de_escalates_one_level_per_dwell_below_exit_only() {
        let mut d = degrader();
        d.evaluate(at(0), &depth(60_000)); // MODERATE, dwell 60 s, exit 25k
        // Between exit and entry: hysteresis holds the level.
        assert_eq!(d.evaluate(at(100), &depth(30_000)), None);
        assert_eq!(d.evaluate(at(30), &depth(0)), None, "dwell not over");
        let c = d.evaluate(at(60), &depth(0)).unwrap();
        assert_eq!(
            (c.from, c.to, c.cause),
            (Level::Moderate, Level::Minor, Cause::Recovered)
        );
        assert_eq!(d.evaluate(at(89), &depth(0)), None, "MINOR's own dwell");
        assert_eq!(d.evaluate(at(90), &depth(0)).unwrap().to, Level::Normal);
        // Escalation ignores dwell.
        assert_eq!(d.evaluate(at(91), &depth(10_000)).unwrap().to, Level::Minor);
    }

    #[test]
    fn unlisted_levels_are_skipped() {
        let mut cfg = DegradationConfig::default();
        cfg.levels
            .retain(|l| matches!(l.level, Level::Moderate | Level::Critical));
        let mut d = Degrader::new(cfg).unwrap();
        assert_eq!(d.evaluate(at(0), &depth(20_000)), None);
        assert_eq!(
            d.evaluate(at(1), &depth(60_000)).unwrap().to,
            Level::Moderate
        );
        assert_eq!(d.evaluate(at(100), &depth(0)).unwrap().to, Level::Normal);
        // An override to an unlisted level acts like the level below it.
        d.set_override(at(101), Level::Severe, None);
        assert_eq!(d.actions(), d.actions_for(Level::Moderate));
    }

    #[test]
    fn override_wins_until_it_expires_or_is_cleared() {
        let mut d = degrader();
        let c = d
            .set_override(at(10), Level::Critical, Some(at(70)))
            .unwrap();
        assert_eq!((c.to, c.cause), (Level::Critical, Cause::Override));
        assert_eq!(d.since(), at(10));
        // Signals move the computed level underneath.
        assert_eq!(d.evaluate(at(20), &depth(60_000)), None);
        assert_eq!(d.auto_level(), Level::Moderate);
        let c = d.evaluate(at(70), &depth(60_000)).unwrap();
        assert_eq!(
            (c.from, c.to, c.cause),
            (Level::Critical, Level::Moderate, Cause::OverrideExpired)
        );
        d.set_override(at(80), Level::Normal, None);
        assert_eq!(d.level(), Level::Normal);
        assert_eq!(d.override_level(), Some((Level::Normal, None)));
        let c = d.clear_override(at(90)).unwrap();
        assert_eq!((c.to, c.cause), (Level::Moderate, Cause::OverrideCleared));
        assert_eq!(d.clear_override(at(91)), None);
    }

    #[test]
    fn ingest_verdicts() {
        let mut d = degrader();
        assert_eq!(d.admits_ingest(Priority::Low, "text"), Ok(()));
        d.set_override(at(0), Level::Moderate, None);
        let r = d.admits_ingest(Priority::Low, "text").unwrap_err();
        assert_eq!(r.reason, RefusalReason::Shed(Priority::Low));
        assert_eq!(
            r.to_string(),
            "degraded to MODERATE: low priority is shed; retry after 10s"
        );
        assert!(d.admits_ingest(Priority::Normal, "text").is_ok());
        d.set_override(at(0), Level::Critical, None);
        assert_eq!(
            d.admits_ingest(Priority::High, "x").unwrap_err().reason,
            RefusalReason::Overloaded
        );
        assert_eq!(d.admits_ingest(Priority::Critical, "x"), Ok(()));

        let mut cfg = DegradationConfig::default();
        cfg.levels[0].actions.paused_types = vec!["photo".into()];
        let mut d = Degrader::new(cfg).unwrap();
        d.set_override(at(0), Level::Minor, None);
        assert_eq!(
            d.admits_ingest(Priority::Critical, "photo")
                .unwrap_err()
                .reason,
            RefusalReason::Paused("photo".into())
        );
        assert!(d.admits_ingest(Priority::Critical, "text").is_ok());
    }

    #[test]
    fn validation_names_each_field() {
        let mut cfg = DegradationConfig::default();
        cfg.levels[2].exit.queue_depth = Some(300_000);
        cfg.levels[1].exit.error_rate = None;
        cfg.levels[0].entry.error_rate = Some(1.5);
        cfg.levels[3].entry.p95_latency = Some(Duration::from_secs(1));
        cfg.levels[3].exit.p95_latency = Some(Duration::from_millis(500));
        cfg.levels[1].actions.concurrency_factor = 0.0;
        cfg.levels[1].actions.shed = PrioritySet::ALL;
        cfg.levels[0].actions.retry_after = Duration::ZERO;
        let errors = cfg.validate().unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "levels[0].entry.errorRate",
                "levels[0].actions.retryAfter",
                "levels[1].exit.errorRate",
                "levels[1].entry.errorRate",
                "levels[1].actions.concurrencyFactor",
                "levels[1].actions.shed",
                "levels[2].exit.queueDepth",
                "levels[3].entry.p95Latency",
            ]
        );
        assert!(
            errors.to_string().contains(
                "levels[2].exit.queueDepth: 300000 must be below entry.queueDepth (200000)"
            )
        );

        let mut cfg = DegradationConfig::default();
        cfg.levels.swap(0, 1);
        cfg.levels.push(LevelSpec {
            level: Level::Normal,
            ..cfg.levels[0].clone()
        });
        cfg.levels[2].entry = Thresholds::default();
        cfg.levels[2].exit = Thresholds::default();
        let errors = cfg.validate().unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"levels[1].level"), "{errors}");
        assert!(paths.contains(&"levels[4].level"), "{errors}");
        assert!(paths.contains(&"levels[2].entry"), "{errors}");
        assert!(Degrader::new(cfg).is_err());
    }

    #[test]
    fn reconfigure_keeps_or_lowers_the_level() {
        let mut d = degrader();
        d.evaluate(at(0), &depth(250_000));
        assert_eq!(d.level(), Level::Severe);
        let mut cfg = DegradationConfig::default();
        cfg.levels.retain(|l| l.level != Level::Severe);
        d.reconfigure(cfg).unwrap();
        assert_eq!(d.level(), Level::Moderate);
        let mut bad = DegradationConfig::default();
        bad.levels[0].min_dwell = Duration::ZERO;
        bad.levels[0].exit.open_breakers = Some(5);
        assert!(d.reconfigure(bad).is_err());
        assert_eq!(d.level(), Level::Moderate);
    }

    fn arb_signals() -> impl Strategy<Value = Signals> {
        // Calm samples half the time, so recoveries happen as often as storms.
        prop_oneof![Just(Signals::default()), storm()]
    }

    fn storm() -> impl Strategy<Value = Signals> {
        (
            0..700_000u64,
            0..2400u64,
            0.0..0.7f64,
            0..40_000u64,
            0..6u32,
        )
            .prop_map(|(q, age, e, p, o)| Signals {
                queue_depth: q,
                oldest_age: Duration::from_secs(age),
                error_rate: e,
                p95_latency: Duration::from_millis(p),
                open_breakers: o,
            })
    }

    proptest! {
        /// Without an override, the level never drops sooner than the left
        /// level's dwell after it was entered, drops one configured level at
        /// a time, and only rises when a signal reached an entry threshold.
        #[test]
        fn never_oscillates_faster_than_the_dwell(
            steps in proptest::collection::vec((1..90u64, arb_signals()), 1..200),
        ) {
            let cfg = DegradationConfig::default();
            let mut d = Degrader::new(cfg.clone()).unwrap();
            let dwell = |l: Level| cfg.levels.iter().find(|s| s.level == l).map(|s| s.min_dwell).unwrap();
            let mut now = Instant::from_secs(1);
            let mut entered = now;
            for (dt, signals) in steps {
                now = now + Duration::from_secs(dt);
                let Some(c) = d.evaluate(now, &signals) else { continue };
                prop_assert_eq!(c.at, now);
                if c.to < c.from {
                    prop_assert!(now.since(entered) >= dwell(c.from), "left {} after {:?}", c.from, now.since(entered));
                    prop_assert_eq!(c.to.index() + 1, c.from.index());
                    prop_assert_eq!(c.cause, Cause::Recovered);
                } else {
                    let is_signal = matches!(c.cause, Cause::Signal { value, threshold, .. } if value >= threshold);
                    prop_assert!(is_signal);
                }
                entered = now;
            }
        }
    }
}
