//! The engine's GCRA shared by every agent of a bot through Redis: one Lua
//! script per decision, on the server's clock.
//!
//! Owns: the key layout of limiter state in Redis, the conversion of engine
//! [`Cell`]s to microseconds, the decision and pause scripts, batching
//! decisions into one round trip, and a connection that gives up within a
//! deadline. Leaves to others: which keys a message must pass (the engine's
//! [`Limits::checks`](crate::engine::limiter::Limits::checks)), sleeping until
//! a slot (the agent), what to do while Redis is unreachable
//! ([`super::membership::RedisLink`]).
//!
//! Invariant: with `horizon = 0` a decision is exactly the engine's
//! multi-key [`Cell::step`] on cells converted to microseconds (interval
//! rounded up, tolerance down, so conversion never loosens a limit); a
//! refusal charges nothing; durations are relative to the server's clock,
//! so agents' clock skew does not matter. The Redis URL, which may hold a
//! password, appears in no error and no `Debug` output.
//!
//! # Semantics
//!
//! For the keys `k` of one message, with TATs `tat_k` and tolerances
//! `tau_k`, the script takes `slot = max(now, max_k(tat_k - tau_k))`. If
//! `slot - now <= horizon`, every key is charged as a cell arriving at
//! `slot` (`tat_k := max(tat_k, slot) + T_k`) and the answer is
//! [`SharedDecision::Admitted`] with `wait = slot - now`: the agent sleeps
//! that long and sends. Otherwise nothing is charged and the answer is
//! [`SharedDecision::Refused`] with `retry_after = slot - now`. A positive
//! horizon lets an agent reserve the next global slot while others compete
//! for it, instead of polling. While the bot is paused (a 429's
//! `retry_after`, set by any agent with [`SharedLimiter::pause`]) every
//! decision is refused until the pause ends.
//!
//! A decision that fails with [`SharedError::Timeout`] may still have been
//! charged on the server; the agent then does not send, which errs on the
//! safe side. The scripts read `TIME` before writing, which needs Redis 5
//! or later (effects replication).
//!
//! Lua numbers are doubles; microseconds since 1970 stay below 2^53 (about
//! 285 years) and every duration handed to the script is capped at
//! [`MAX_MICROS`] (about 17 years), so the arithmetic is exact. Keys expire
//! one second after their TAT has passed, when they would decide like fresh
//! keys anyway.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};

use crate::engine::limiter::{Binding, Cell, Key, Limit};

const DECIDE_LUA: &str = include_str!("lua/limiter_decide.lua");
const PAUSE_LUA: &str = include_str!("lua/limiter_pause.lua");

/// Longest duration handed to a script, in µs (2^49, about 17.8 years).
/// Only an interval longer than this is loosened (to this), which no
/// configurable limit reaches.
pub const MAX_MICROS: u64 = 1 << 49;

/// Most keys one decision may check; a message has at most four.
pub const MAX_KEYS: usize = 8;

/// Why a shared decision could not be made. None of these carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the Redis URL is not valid")]
    InvalidUrl,
    /// The value is not repeated: a bot token given by mistake would leak.
    #[error("invalid {what}: use 1 to {max} letters, digits, '.', '_' or '-'")]
    InvalidName { what: &'static str, max: usize },
    #[error("a decision takes 1 to {MAX_KEYS} distinct keys, got {0}")]
    Keys(usize),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("unexpected reply from a limiter script")]
    Reply,
}

impl SharedError {
    /// True when Redis could not be reached or did not answer in time: the
    /// agent should fall back (local share or pause) rather than fail.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SharedError::Timeout(_) => true,
            SharedError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
            }
            _ => false,
        }
    }
}

impl From<redis::RedisError> for SharedError {
    fn from(e: redis::RedisError) -> Self {
        SharedError::Redis(e)
    }
}

/// How the agent talks to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Every call answers within this, or fails with
    /// [`SharedError::Timeout`]; a stopped Redis must not stall pacing.
    pub deadline: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            deadline: Duration::from_millis(250),
        }
    }
}

/// Opens a reconnecting connection to `url`. Shared by the limiter and the
/// membership of one agent.
pub async fn connect(url: &str, options: ConnectOptions) -> Result<ConnectionManager, SharedError> {
    let (client, config) = client_config(url, options)?;
    within(
        options.deadline.saturating_mul(2),
        ConnectionManager::new_with_config(client, config),
    )
    .await
}

/// [`connect`] without waiting for Redis: the connection is made by the
/// first command (and remade after a loss, as always), so an agent can
/// start while Redis is away. Only a malformed URL fails here.
pub fn connect_lazy(url: &str, options: ConnectOptions) -> Result<ConnectionManager, SharedError> {
    let (client, config) = client_config(url, options)?;
    ConnectionManager::new_lazy_with_config(client, config).map_err(SharedError::Redis)
}

fn client_config(
    url: &str,
    options: ConnectOptions,
) -> Result<(redis::Client, ConnectionManagerConfig), SharedError> {
    let client = redis::Client::open(url).map_err(|_| SharedError::InvalidUrl)?;
    // The manager reconnects in the background; few quick retries, because
    // the agent's own link state machine owns the longer backoff.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.deadline))
        .set_connection_timeout(Some(options.deadline))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(options.deadline);
    Ok((client, config))
}

/// Runs `fut` under `deadline`, turning both failures into [`SharedError`].
pub(crate) async fn within<T>(
    deadline: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r.map_err(SharedError::Redis),
        Err(_) => Err(SharedError::Timeout(deadline)),
    }
}

/// Checks a name that becomes part of Redis keys. Bot tokens contain ':'
/// and are refused, so a secret cannot end up in a key by mistake.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), SharedError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SharedError::InvalidName { what, max: 128 })
    }
}

/// A [`Cell`] in whole microseconds, as the script receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MicroCell {
    /// Interval in µs, rounded up from nanoseconds.
    pub interval: u64,
    /// Tolerance in µs, rounded down from nanoseconds.
    pub tolerance: u64,
    pub never: bool,
}

impl MicroCell {
    pub fn from_cell(c: Cell) -> MicroCell {
        MicroCell {
            interval: c.interval.div_ceil(1_000).min(MAX_MICROS),
            tolerance: (c.tolerance / 1_000).min(MAX_MICROS),
            never: c.never,
        }
    }

    /// The same cell for the engine's [`Cell::step`] on microsecond times.
    pub fn as_cell(self) -> Cell {
        Cell {
            interval: self.interval,
            tolerance: self.tolerance,
            never: self.never,
        }
    }
}

/// One decision: the keys of one message, as the engine lists them.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// The bot (or endpoint) whose budget this is: a name, never its token.
    pub bot: &'a str,
    /// Distinct keys with their limits, e.g. `&limits.checks(to, priority)`.
    pub checks: &'a [(Key, &'a Limit)],
    /// How far ahead of now a slot may be reserved; zero is plain GCRA.
    pub horizon: Duration,
}

/// The answer to one [`Ask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedDecision {
    /// Every key was charged for a cell `wait` from now: send then.
    Admitted { wait: Duration },
    /// Nothing was charged. The earliest send could go `retry_after` from
    /// now ([`Duration::MAX`]: never); ask again `horizon` earlier.
    /// `binding` names what sets it.
    Refused {
        retry_after: Duration,
        binding: Binding,
    },
}

/// A decision with the server time it was taken at, in µs since 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Stamped {
    pub decision: SharedDecision,
    pub now_us: u64,
}

/// The bot-wide limiter state in Redis, shared by every agent holding one.
#[derive(Clone)]
pub struct SharedLimiter {
    conn: ConnectionManager,
    prefix: Arc<str>,
    deadline: Duration,
    decide: Arc<Script>,
    pause: Arc<Script>,
}

impl fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// Connects to `url`; every key starts with `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        options: ConnectOptions,
    ) -> Result<SharedLimiter, SharedError> {
        check_name("key prefix", prefix)?;
        let conn = connect(url, options).await?;
        SharedLimiter::new(conn, prefix, options)
    }

    /// [`SharedLimiter::connect`] without waiting for Redis
    /// ([`connect_lazy`]): decisions fail as unavailable until it answers.
    pub fn connect_lazy(
        url: &str,
        prefix: &str,
        options: ConnectOptions,
    ) -> Result<SharedLimiter, SharedError> {
        check_name("key prefix", prefix)?;
        SharedLimiter::new(connect_lazy(url, options)?, prefix, options)
    }

    /// Over an existing connection (e.g. the queue store's).
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        options: ConnectOptions,
    ) -> Result<SharedLimiter, SharedError> {
        check_name("key prefix", prefix)?;
        Ok(SharedLimiter {
            conn,
            prefix: prefix.into(),
            deadline: options.deadline,
            decide: Arc::new(Script::new(DECIDE_LUA)),
            pause: Arc::new(Script::new(PAUSE_LUA)),
        })
    }

    /// The connection, to share with [`super::membership::Membership`].
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// One atomic decision over all keys of `ask`.
    pub async fn decide(&self, ask: Ask<'_>) -> Result<SharedDecision, SharedError> {
        Ok(self.decide_at(ask, None).await?.decision)
    }

    /// Several decisions in one round trip, taken in order; each is atomic
    /// on its own. The answers are in the order of `asks`.
    pub async fn decide_batch(&self, asks: &[Ask<'_>]) -> Result<Vec<SharedDecision>, SharedError> {
        let stamped = self.decide_batch_at(asks, None).await?;
        Ok(stamped.into_iter().map(|s| s.decision).collect())
    }

    /// Pauses every decision of `bot` for `retry_after` from now (server
    /// time), for every agent. Pauses only extend. Answers the time left.
    pub async fn pause(&self, bot: &str, retry_after: Duration) -> Result<Duration, SharedError> {
        self.pause_at(bot, retry_after, None).await
    }

    /// How long `bot` stays paused, if it is.
    pub async fn paused_for(&self, bot: &str) -> Result<Option<Duration>, SharedError> {
        let left = self.pause_at(bot, Duration::ZERO, None).await?;
        Ok((!left.is_zero()).then_some(left))
    }

    pub(crate) async fn decide_at(
        &self,
        ask: Ask<'_>,
        now_us: Option<u64>,
    ) -> Result<Stamped, SharedError> {
        let cmd = self.decide_cmd(&ask, now_us)?;
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = within(self.deadline, async {
            match cmd.query_async(&mut conn).await {
                Err(e) if is_noscript(&e) => {
                    self.decide.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await?;
        parse_decision(&reply, ask.checks)
    }

    pub(crate) async fn decide_batch_at(
        &self,
        asks: &[Ask<'_>],
        now_us: Option<u64>,
    ) -> Result<Vec<Stamped>, SharedError> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = asks
            .iter()
            .map(|a| self.decide_cmd(a, now_us))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pipe = redis::pipe();
        for cmd in &cmds {
            pipe.add_command(cmd.clone());
        }
        pipe.ignore_errors();
        let mut conn = self.conn.clone();
        let mut replies: Vec<RedisResult<Vec<i64>>> =
            within(self.deadline, pipe.query_async(&mut conn)).await?;
        // A Redis that restarted (or a SCRIPT FLUSH) forgot the script: load
        // it and run again only the decisions that did not run.
        if replies
            .iter()
            .any(|r| matches!(r, Err(e) if is_noscript(e)))
        {
            within(self.deadline, self.decide.load_async(&mut conn)).await?;
            let mut again = redis::pipe();
            again.ignore_errors();
            let missed: Vec<usize> = (0..replies.len())
                .filter(|&i| matches!(&replies[i], Err(e) if is_noscript(e)))
                .collect();
            for &i in &missed {
                again.add_command(cmds[i].clone());
            }
            let retried: Vec<RedisResult<Vec<i64>>> =
                within(self.deadline, again.query_async(&mut conn)).await?;
            for (i, r) in missed.into_iter().zip(retried) {
                replies[i] = r;
            }
        }
        if replies.len() != asks.len() {
            return Err(SharedError::Reply);
        }
        replies
            .into_iter()
            .zip(asks)
            .map(|(r, a)| parse_decision(&r?, a.checks))
            .collect()
    }

    pub(crate) async fn pause_at(
        &self,
        bot: &str,
        retry_after: Duration,
        now_us: Option<u64>,
    ) -> Result<Duration, SharedError> {
        check_name("bot", bot)?;
        let mut inv = self.pause.key(self.pause_key(bot));
        inv.arg(micros(retry_after)).arg(override_arg(now_us));
        let mut conn = self.conn.clone();
        let left: i64 = within(self.deadline, inv.invoke_async(&mut conn)).await?;
        Ok(Duration::from_micros(u64::try_from(left).unwrap_or(0)))
    }

    fn decide_cmd(&self, ask: &Ask<'_>, now_us: Option<u64>) -> Result<redis::Cmd, SharedError> {
        check_name("bot", ask.bot)?;
        let n = ask.checks.len();
        if n == 0 || n > MAX_KEYS {
            return Err(SharedError::Keys(n));
        }
        // A repeated key would need the engine's sequential charging inside
        // one decision; the engine's checks never repeat one.
        for (i, (k, _)) in ask.checks.iter().enumerate() {
            if ask.checks[..i].iter().any(|(j, _)| j == k) {
                return Err(SharedError::Keys(n));
            }
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.decide.get_hash()).arg(n + 1);
        cmd.arg(self.pause_key(ask.bot));
        for (key, _) in ask.checks {
            cmd.arg(self.limit_key(ask.bot, key));
        }
        cmd.arg(micros(ask.horizon)).arg(override_arg(now_us));
        for (_, limit) in ask.checks {
            let c = MicroCell::from_cell(limit.cell());
            cmd.arg(c.interval).arg(c.tolerance).arg(u8::from(c.never));
        }
        Ok(cmd)
    }

    /// `{prefix}:lim:{bot}:...`: the braces keep one bot's keys in one
    /// Redis Cluster slot, as a multi-key script requires.
    fn limit_key(&self, bot: &str, key: &Key) -> String {
        let p = &self.prefix;
        match key {
            Key::Global => format!("{p}:lim:{{{bot}}}:g"),
            Key::Chat(id) => format!("{p}:lim:{{{bot}}}:c:{id}"),
            Key::Group(id) => format!("{p}:lim:{{{bot}}}:gr:{id}"),
            Key::Share(prio) => format!("{p}:lim:{{{bot}}}:s:{}", prio.index()),
        }
    }

    fn pause_key(&self, bot: &str) -> String {
        format!("{}:lim:{{{bot}}}:pause", self.prefix)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_MICROS)
}

fn override_arg(now_us: Option<u64>) -> String {
    now_us.map(|n| n.to_string()).unwrap_or_default()
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn parse_decision(reply: &[i64], checks: &[(Key, &Limit)]) -> Result<Stamped, SharedError> {
    let &[code, delta, index, now] = reply else {
        return Err(SharedError::Reply);
    };
    let delta = Duration::from_micros(u64::try_from(delta).map_err(|_| SharedError::Reply)?);
    let now_us = u64::try_from(now).map_err(|_| SharedError::Reply)?;
    let key_at = |i: i64| -> Result<Key, SharedError> {
        usize::try_from(i - 1)
            .ok()
            .and_then(|i| checks.get(i))
            .map(|(k, _)| *k)
            .ok_or(SharedError::Reply)
    };
    let decision = match code {
        1 => SharedDecision::Admitted { wait: delta },
        0 => SharedDecision::Refused {
            retry_after: delta,
            binding: Binding::Rate(key_at(index)?),
        },
        2 => SharedDecision::Refused {
            retry_after: delta,
            binding: Binding::PausedAll,
        },
        3 => SharedDecision::Refused {
            retry_after: Duration::MAX,
            binding: Binding::Rate(key_at(index)?),
        },
        _ => return Err(SharedError::Reply),
    };
    Ok(Stamped { decision, now_us })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use crate::engine::limiter::{Guard, Limiter, Limits, Recipient};
    use crate::engine::{Instant, Priority};
    use crate::store::redis::server::{Persistence, RedisServer};

    /// A virtual "now" of the magnitude of real server time (2023), so the
    /// doubles inside Lua are exercised as in production.
    const BASE_US: u64 = 1_700_000_000_000_000;

    /// Generous: the machine is shared and tests run in parallel.
    const OPTS: ConnectOptions = ConnectOptions {
        deadline: Duration::from_secs(5),
    };

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn server() -> RedisServer {
        RedisServer::start(Persistence::None).expect("redis-server")
    }

    async fn limiter(s: &RedisServer) -> SharedLimiter {
        SharedLimiter::connect(&s.url(), "t", OPTS).await.unwrap()
    }

    fn ask<'a>(bot: &'a str, checks: &'a [(Key, &'a Limit)], horizon: Duration) -> Ask<'a> {
        Ask {
            bot,
            checks,
            horizon,
        }
    }

    fn arb_limit() -> impl Strategy<Value = Limit> {
        (
            prop_oneof![12 => 1u32..50, 1 => Just(0u32)],
            1u64..3_000,
            1u32..6,
            prop_oneof![
                Just(Guard::None),
                (0u64..20).prop_map(|ms| Guard::Fixed(Duration::from_millis(ms))),
                (0u32..50_000).prop_map(|ppm| Guard::Fraction { ppm }),
            ],
        )
            .prop_map(|(rate, period_ms, burst, guard)| Limit {
                rate,
                period: Duration::from_millis(period_ms),
                burst,
                guard,
            })
    }

    #[test]
    fn micro_cells_never_loosen() {
        let c = Limit::TELEGRAM_GLOBAL.cell();
        let m = MicroCell::from_cell(c);
        assert!(m.interval * 1_000 >= c.interval);
        assert!(m.tolerance * 1_000 <= c.tolerance);
        let odd = Cell {
            interval: 1_001,
            tolerance: 1_999,
            never: false,
        };
        let m = MicroCell::from_cell(odd);
        assert_eq!((m.interval, m.tolerance), (2, 1));
        let huge = MicroCell::from_cell(Limit::per_second(0, 1).cell());
        assert!(huge.never);
        assert_eq!(huge.interval, MAX_MICROS);
    }

    /// With horizon 0 the script decides exactly as the engine's multi-key
    /// `Cell::step` on the same µs cells; with a horizon, as that model
    /// charging every key at the slot.
    #[test]
    fn script_matches_engine_step() {
        let server = server();
        let rt = runtime();
        let lim = rt.block_on(limiter(&server));
        let bots = AtomicU64::new(0);
        let mut runner = TestRunner::new(Config {
            cases: 40,
            ..Config::default()
        });
        let strategy = (
            arb_limit(),
            arb_limit(),
            arb_limit(),
            prop_oneof![Just(0u64), 0u64..200_000],
            proptest::collection::vec((0u64..300_000, 0i64..3, any::<bool>()), 1..40),
        );
        runner
            .run(&strategy, |(global, chat, group, horizon_us, steps)| {
                let bot = format!("eq{}", bots.fetch_add(1, Ordering::Relaxed));
                let mut tats: HashMap<Key, u64> = HashMap::new();
                let mut now = BASE_US;
                for (dt, c, in_group) in steps {
                    now += dt;
                    let mut checks = vec![(Key::Global, &global), (Key::Chat(c), &chat)];
                    if in_group {
                        checks.push((Key::Group(c), &group));
                    }
                    let cell = |l: &Limit| MicroCell::from_cell(l.cell()).as_cell();
                    // The engine's rule: the latest refusal wins, the first
                    // key on a tie; `slot` is when every key admits.
                    let mut slot = now;
                    let mut binding = None;
                    for (k, l) in &checks {
                        let tat = tats.get(k).copied().unwrap_or(0);
                        if let Err(at) = cell(l).step(now, tat)
                            && binding.is_none_or(|(a, _)| at > a)
                        {
                            binding = Some((at, *k));
                            slot = slot.max(at);
                        }
                    }
                    let expected = match binding {
                        Some((u64::MAX, k)) => SharedDecision::Refused {
                            retry_after: Duration::MAX,
                            binding: Binding::Rate(k),
                        },
                        Some((_, k)) if slot - now > horizon_us => SharedDecision::Refused {
                            retry_after: Duration::from_micros(slot - now),
                            binding: Binding::Rate(k),
                        },
                        _ => {
                            for (k, l) in &checks {
                                let tat = tats.entry(*k).or_insert(0);
                                *tat = cell(l).step(slot, *tat).expect("admits at the slot");
                            }
                            SharedDecision::Admitted {
                                wait: Duration::from_micros(slot - now),
                            }
                        }
                    };
                    let a = ask(&bot, &checks, Duration::from_micros(horizon_us));
                    let got = rt.block_on(lim.decide_at(a, Some(now))).unwrap();
                    prop_assert_eq!(got.decision, expected);
                    prop_assert_eq!(got.now_us, now);
                }
                Ok(())
            })
            .unwrap();
    }

    /// The engine's own `Limiter::check` and the script agree on a
    /// Telegram-like workload (horizon 0, µs instants).
    #[test]
    fn script_matches_limiter_check_on_telegram_like_limits() {
        let server = server();
        let rt = runtime();
        let lim = rt.block_on(limiter(&server));
        // Chat and group defaults have whole-µs cells; the global default
        // (33 666 668 ns) does not, so a global limit that does stands in.
        let limits = Limits {
            global: Limit {
                rate: 32,
                guard: Guard::Fixed(Duration::from_micros(333)),
                ..Limit::TELEGRAM_GLOBAL
            },
            ..Limits::default()
        };
        for l in [limits.global, Limit::TELEGRAM_CHAT, Limit::TELEGRAM_GROUP] {
            let c = l.cell();
            assert_eq!(MicroCell::from_cell(c).interval * 1_000, c.interval);
        }
        let mut local = Limiter::new();
        let mut rng = crate::engine::SplitMix64::new(7);
        let mut now_us = 0u64;
        for _ in 0..300 {
            now_us += rng.below(40_000);
            let chat = rng.below(4) as i64 - 2;
            let to = if chat < 0 {
                Recipient::Group(chat)
            } else {
                Recipient::Chat(chat)
            };
            let checks = limits.checks(to, Priority::Normal);
            let engine = local.check(Instant::from_nanos(now_us * 1_000), &checks);
            let a = ask("tg", &checks, Duration::ZERO);
            let got = rt
                .block_on(lim.decide_at(a, Some(BASE_US + now_us)))
                .unwrap()
                .decision;
            match engine {
                crate::engine::limiter::Decision::Admit => {
                    assert_eq!(
                        got,
                        SharedDecision::Admitted {
                            wait: Duration::ZERO
                        }
                    )
                }
                crate::engine::limiter::Decision::Refuse { retry_at, binding } => {
                    assert_eq!(
                        got,
                        SharedDecision::Refused {
                            retry_after: Duration::from_nanos(retry_at.as_nanos() - now_us * 1_000),
                            binding,
                        }
                    )
                }
            }
        }
    }

    #[test]
    fn a_refusal_on_the_chat_key_charges_nothing() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let global = Limit::per_second(10, 1);
            let chat = Limit::per_second(1, 1);
            let one = [(Key::Global, &global), (Key::Chat(1), &chat)];
            let two = [(Key::Global, &global), (Key::Chat(2), &chat)];
            let t0 = BASE_US;
            let d = lim
                .decide_at(ask("b", &one, Duration::ZERO), Some(t0))
                .await;
            assert_eq!(
                d.unwrap().decision,
                SharedDecision::Admitted {
                    wait: Duration::ZERO
                }
            );
            let mut conn = lim.connection();
            let gkey = lim.limit_key("b", &Key::Global);
            let before: String = redis::cmd("GET")
                .arg(&gkey)
                .query_async(&mut conn)
                .await
                .unwrap();
            let d = lim
                .decide_at(ask("b", &one, Duration::ZERO), Some(t0 + 150_000))
                .await
                .unwrap();
            assert_eq!(
                d.decision,
                SharedDecision::Refused {
                    retry_after: Duration::from_millis(850),
                    binding: Binding::Rate(Key::Chat(1)),
                }
            );
            let after: String = redis::cmd("GET")
                .arg(&gkey)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(before, after);
            assert_eq!(after, (t0 + 100_000).to_string());
            // Another chat still gets the global slot the refusal left.
            let d = lim
                .decide_at(ask("b", &two, Duration::ZERO), Some(t0 + 150_000))
                .await
                .unwrap();
            assert_eq!(
                d.decision,
                SharedDecision::Admitted {
                    wait: Duration::ZERO
                }
            );
            // A horizon too short for the chat's slot charges nothing either.
            let d = lim
                .decide_at(
                    ask("b", &one, Duration::from_millis(500)),
                    Some(t0 + 200_000),
                )
                .await
                .unwrap();
            assert!(matches!(d.decision, SharedDecision::Refused { .. }));
            let g: String = redis::cmd("GET")
                .arg(&gkey)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(g, (t0 + 250_000).to_string());
        });
    }

    #[test]
    fn the_pause_is_shared_and_only_extends() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let a = limiter(&server).await;
            let b = limiter(&server).await;
            let g = Limit::per_second(30, 1);
            let checks = [(Key::Global, &g)];
            let t0 = BASE_US;
            let left = a
                .pause_at("bot", Duration::from_secs(5), Some(t0))
                .await
                .unwrap();
            assert_eq!(left, Duration::from_secs(5));
            let d = b.decide_at(
                ask("bot", &checks, Duration::from_secs(60)),
                Some(t0 + 1_000_000),
            );
            assert_eq!(
                d.await.unwrap().decision,
                SharedDecision::Refused {
                    retry_after: Duration::from_secs(4),
                    binding: Binding::PausedAll,
                }
            );
            // A shorter pause does not cut the longer one short.
            let left = b
                .pause_at("bot", Duration::from_secs(1), Some(t0 + 1_000_000))
                .await
                .unwrap();
            assert_eq!(left, Duration::from_secs(4));
            let other = b.decide_at(ask("other", &checks, Duration::ZERO), Some(t0));
            assert!(matches!(
                other.await.unwrap().decision,
                SharedDecision::Admitted { .. }
            ));
            let d = b.decide_at(ask("bot", &checks, Duration::ZERO), Some(t0 + 5_000_000));
            assert!(matches!(
                d.await.unwrap().decision,
                SharedDecision::Admitted { .. }
            ));

            // On server time: one agent's 429 pauses the other.
            assert_eq!(b.paused_for("live").await.unwrap(), None);
            let left = a.pause("live", Duration::from_secs(30)).await.unwrap();
            assert!(left > Duration::ZERO && left <= Duration::from_secs(30));
            let seen = b.paused_for("live").await.unwrap().unwrap();
            assert!(seen <= left);
            let d = b
                .decide(ask("live", &checks, Duration::ZERO))
                .await
                .unwrap();
            let SharedDecision::Refused {
                retry_after,
                binding: Binding::PausedAll,
            } = d
            else {
                panic!("{d:?}")
            };
            assert!(retry_after <= seen);
        });
    }

    /// Two agents share a global 30/s key for about two seconds, each
    /// reserving slots up to 50 ms ahead and sleeping until them. Checked on
    /// the server-time slots, not on wall time.
    #[test]
    fn two_agents_share_one_global_budget() {
        let server = server();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let global = Limit::per_second(30, 1);
        let interval = MicroCell::from_cell(global.cell()).interval;
        let slots = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let lim = limiter(&server).await;
                tasks.push(tokio::spawn(async move {
                    let checks = [(Key::Global, &global)];
                    let horizon = Duration::from_millis(50);
                    let mut slots = Vec::new();
                    let mut first = None;
                    for _ in 0..2_000 {
                        let s = lim
                            .decide_at(ask("hammer", &checks, horizon), None)
                            .await
                            .unwrap();
                        let start = *first.get_or_insert(s.now_us);
                        if s.now_us > start + 2_000_000 {
                            break;
                        }
                        match s.decision {
                            SharedDecision::Admitted { wait } => {
                                slots.push(s.now_us + wait.as_micros() as u64);
                                tokio::time::sleep(wait).await;
                            }
                            SharedDecision::Refused { retry_after, .. } => {
                                let nap = retry_after.saturating_sub(horizon);
                                tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
                            }
                        }
                    }
                    slots
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        let mut slots = slots;
        slots.sort_unstable();
        assert!(slots.len() > 2, "admitted {}", slots.len());
        for w in slots.windows(2) {
            assert!(
                w[1] - w[0] >= interval,
                "slots {} and {} too close",
                w[0],
                w[1]
            );
        }
        let window = 1_000_000;
        let mut lo = 0;
        for hi in 0..slots.len() {
            while slots[hi] - slots[lo] > window {
                lo += 1;
            }
            assert!(hi - lo < 31, "{} slots in one second", hi - lo + 1);
        }
    }

    #[test]
    fn a_batch_decides_in_order_in_one_round_trip() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let chat = Limit::per_second(1, 2);
            let g = Limit::per_second(30, 1);
            let a = [(Key::Chat(5), &chat)];
            let b = [(Key::Global, &g), (Key::Chat(6), &chat)];
            let asks = [
                ask("x", &a, Duration::ZERO),
                ask("x", &a, Duration::ZERO),
                ask("x", &a, Duration::ZERO),
                ask("y", &b, Duration::ZERO),
                ask("x", &a, Duration::from_secs(2)),
            ];
            let got = lim.decide_batch_at(&asks, Some(BASE_US)).await.unwrap();
            let got: Vec<_> = got.into_iter().map(|s| s.decision).collect();
            let admitted = |ms| SharedDecision::Admitted {
                wait: Duration::from_millis(ms),
            };
            assert_eq!(
                got,
                vec![
                    admitted(0),
                    admitted(0),
                    SharedDecision::Refused {
                        retry_after: Duration::from_secs(1),
                        binding: Binding::Rate(Key::Chat(5)),
                    },
                    admitted(0),
                    admitted(1_000),
                ]
            );
            assert!(lim.decide_batch(&[]).await.unwrap().is_empty());
        });
    }

    #[test]
    fn a_forgotten_script_is_loaded_again() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let g = Limit::per_second(1_000, 10);
            let checks = [(Key::Global, &g)];
            let a = ask("f", &checks, Duration::ZERO);
            lim.decide(a).await.unwrap();
            let mut conn = lim.connection();
            let flush = || redis::cmd("SCRIPT").arg("FLUSH").to_owned();
            let _: () = flush().query_async(&mut conn).await.unwrap();
            lim.decide(a).await.unwrap();
            let _: () = flush().query_async(&mut conn).await.unwrap();
            let got = lim.decide_batch(&[a, a, a]).await.unwrap();
            assert_eq!(got.len(), 3);
            let _: () = flush().query_async(&mut conn).await.unwrap();
            assert_eq!(lim.paused_for("f").await.unwrap(), None);
        });
    }

    #[test]
    fn idle_keys_expire_after_their_tat() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let chat = Limit::per_second(1, 1);
            let checks = [(Key::Chat(9), &chat)];
            lim.decide(ask("e", &checks, Duration::ZERO)).await.unwrap();
            let mut conn = lim.connection();
            let ttl: i64 = redis::cmd("PTTL")
                .arg(lim.limit_key("e", &Key::Chat(9)))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 1_000 && ttl <= 2_001, "ttl {ttl}");
            lim.pause("e", Duration::from_secs(3)).await.unwrap();
            let ttl: i64 = redis::cmd("PTTL")
                .arg(lim.pause_key("e"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 3_000 && ttl <= 4_001, "ttl {ttl}");
        });
    }

    #[test]
    fn bad_input_is_refused_before_redis() {
        let server = server();
        let rt = runtime();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let g = Limit::per_second(1, 1);
            let token = "123456:AAH-secret-token";
            let e = lim
                .decide(ask(token, &[(Key::Global, &g)], Duration::ZERO))
                .await
                .unwrap_err();
            assert!(matches!(e, SharedError::InvalidName { what: "bot", .. }));
            assert!(!format!("{e} {e:?}").contains("secret"));
            let e = lim.decide(ask("b", &[], Duration::ZERO)).await.unwrap_err();
            assert!(matches!(e, SharedError::Keys(0)));
            let twice = [(Key::Global, &g), (Key::Global, &g)];
            let e = lim
                .decide(ask("b", &twice, Duration::ZERO))
                .await
                .unwrap_err();
            assert!(matches!(e, SharedError::Keys(2)));
            assert!(!e.is_unavailable());
        });
    }

    #[test]
    fn the_url_and_its_password_stay_out_of_errors_and_debug() {
        let rt = runtime();
        rt.block_on(async {
            let opts = ConnectOptions {
                deadline: Duration::from_millis(300),
            };
            for url in [
                "redis://:hunter2-pw@127.0.0.1:1/",
                "redis://user:hunter2-pw@[::1",
                "nonsense://hunter2-pw",
            ] {
                let e = SharedLimiter::connect(url, "p", opts).await.unwrap_err();
                let shown = format!("{e} {e:?} {:?}", std::error::Error::source(&e));
                assert!(!shown.contains("hunter2"), "{shown}");
            }
        });
        let server = server();
        rt.block_on(async {
            let lim = limiter(&server).await;
            let shown = format!("{lim:?}");
            assert!(!shown.contains("127.0.0.1"), "{shown}");
        });
    }

    /// A stopped or killed Redis is reported as unavailable within the
    /// deadline, and the same handle works again once Redis is back.
    #[test]
    fn an_unreachable_redis_is_unavailable_then_recovers() {
        let mut server = server();
        let rt = runtime();
        rt.block_on(async {
            let opts = ConnectOptions {
                deadline: Duration::from_millis(200),
            };
            let lim = SharedLimiter::connect(&server.url(), "u", opts)
                .await
                .unwrap();
            let g = Limit::per_second(1_000, 10);
            let checks = [(Key::Global, &g)];
            let a = ask("u", &checks, Duration::ZERO);
            lim.decide(a).await.unwrap();
            server.pause().unwrap();
            let e = lim.decide(a).await.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
            server.resume().unwrap();
            assert!(eventually(&lim, a).await);
            server.kill().unwrap();
            let e = lim.decide(a).await.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
            server.restart().unwrap();
            // The restarted Redis has no scripts: the handle loads them.
            assert!(eventually(&lim, a).await);
        });
    }

    /// Bounded retries: the connection manager reconnects in the background.
    async fn eventually(lim: &SharedLimiter, a: Ask<'_>) -> bool {
        for _ in 0..50 {
            if lim.decide(a).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Decisions per second: the shared limiter through a local Redis
    /// (sequential, batched, concurrent on one multiplexed connection)
    /// against the in-memory `Limiter::check`. Run with
    /// `cargo test shared_limiter_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; prints figures"]
    fn shared_limiter_throughput() {
        let server = server();
        let rt = runtime();
        let limits = Limits::default();
        let n: u64 = 20_000;
        let checks_for =
            |i: u64| limits.checks(Recipient::Group(-(i as i64 % 1_000)), Priority::Normal);
        let lim = rt.block_on(limiter(&server));

        let started = std::time::Instant::now();
        rt.block_on(async {
            for i in 0..n {
                let c = checks_for(i);
                lim.decide(ask("bench", &c, Duration::ZERO)).await.unwrap();
            }
        });
        let sequential = n as f64 / started.elapsed().as_secs_f64();

        let batch = 100;
        let started = std::time::Instant::now();
        rt.block_on(async {
            for b in 0..n / batch {
                let checks: Vec<_> = (0..batch).map(|i| checks_for(b * batch + i)).collect();
                let asks: Vec<_> = checks
                    .iter()
                    .map(|c| ask("bench2", c, Duration::ZERO))
                    .collect();
                lim.decide_batch(&asks).await.unwrap();
            }
        });
        let batched = n as f64 / started.elapsed().as_secs_f64();

        let tasks = 32;
        let started = std::time::Instant::now();
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..tasks {
                let lim = lim.clone();
                set.spawn(async move {
                    let limits = Limits::default();
                    for i in 0..n / tasks {
                        let c = limits.checks(
                            Recipient::Group(-((t * 1_000 + i) as i64)),
                            Priority::Normal,
                        );
                        lim.decide(ask("bench3", &c, Duration::ZERO)).await.unwrap();
                    }
                });
            }
            while set.join_next().await.is_some() {}
        });
        let concurrent = n as f64 / started.elapsed().as_secs_f64();

        let local_n: u64 = 1_000_000;
        let mut local = Limiter::new();
        let started = std::time::Instant::now();
        let mut admitted = 0u64;
        for i in 0..local_n {
            let c = checks_for(i);
            if local.check(Instant::from_nanos(i * 1_000), &c)
                == crate::engine::limiter::Decision::Admit
            {
                admitted += 1;
            }
        }
        let local_rate = local_n as f64 / started.elapsed().as_secs_f64();
        println!(
            "decisions/s: redis sequential {sequential:.0}, redis batched(100) {batched:.0}, \
             redis concurrent({tasks} tasks, 1 conn) {concurrent:.0}, local Limiter::check {local_rate:.0} \
             (admitted {admitted}); local/sequential {:.0}x, local/batched {:.0}x",
            local_rate / sequential,
            local_rate / batched,
        );
    }
}
