//! Which agents of one tier are alive, who owns which queue partition, and
//! and whether Redis answers.
//!
//! Owns: heartbeats in a sorted set scored by expiry on the server's clock
//! (one Lua script refreshes this agent, drops the expired and answers the
//! live list), leaving on SIGTERM, the partition assignment (rendezvous
//! hashing with an exact canary share), and the [`RedisLink`] state machine
//! that says whether Redis answers. Leaves to others: leases on the
//! partitions (the queue store), the canary weight (the operator), the
//! local share of a limit (`policy::effective`), timers and sleeping (the
//! agent).
//!
//! Invariants: every partition has exactly one owner whenever one agent is
//! alive; the canary track gets exactly the operator's share
//! ([`crate::engine::partition::partition_split`]); one agent joining or
//! leaving moves only partitions to or from that agent.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::engine::partition::partition_split;
use crate::engine::retry::{BackoffStrategy, Jitter, RetryPolicy};
use crate::engine::{Instant, SplitMix64};
use crate::policy::effective::Link;

use super::shared_limiter::{ConnectOptions, SharedError, check_name, within};

const HEARTBEAT_LUA: &str = include_str!("lua/membership_heartbeat.lua");

/// One agent (pod) of a tier: its pod name, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

impl AgentId {
    /// 1-253 letters, digits, '.', '_' or '-' (a pod name fits).
    pub fn new(id: &str) -> Result<AgentId, SharedError> {
        let ok = !id.is_empty()
            && id.len() <= 253
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(AgentId(id.to_owned()))
        } else {
            Err(SharedError::InvalidName {
                what: "agent id",
                max: 253,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which Deployment an agent belongs to during a rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Track {
    #[default]
    Stable,
    Canary,
}

/// A live agent as the heartbeat set lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LiveAgent {
    pub id: AgentId,
    pub track: Track,
}

impl LiveAgent {
    fn member(&self) -> String {
        let t = match self.track {
            Track::Stable => 's',
            Track::Canary => 'c',
        };
        format!("{t}:{}", self.id)
    }

    /// Members written by another herald version are skipped, not fatal.
    fn parse(member: &str) -> Option<LiveAgent> {
        let (t, id) = member.split_once(':')?;
        let track = match t {
            "s" => Track::Stable,
            "c" => Track::Canary,
            _ => return None,
        };
        Some(LiveAgent {
            id: AgentId::new(id).ok()?,
            track,
        })
    }
}

/// This agent's heartbeat in the live set of one tier.
#[derive(Clone)]
pub struct Membership {
    conn: ConnectionManager,
    key: String,
    me: LiveAgent,
    ttl: Duration,
    deadline: Duration,
    script: Arc<Script>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("key", &self.key)
            .field("me", &self.me)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A heartbeat lives `ttl` (server time); beat every `ttl / 3` or so.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        tier: &str,
        me: LiveAgent,
        ttl: Duration,
        options: ConnectOptions,
    ) -> Result<Membership, SharedError> {
        check_name("key prefix", prefix)?;
        check_name("tier", tier)?;
        Ok(Membership {
            conn,
            key: format!("{prefix}:members:{tier}"),
            me,
            ttl: ttl.max(Duration::from_millis(1)),
            deadline: options.deadline,
            script: Arc::new(Script::new(HEARTBEAT_LUA)),
        })
    }

    pub fn me(&self) -> &LiveAgent {
        &self.me
    }

    /// Refreshes this agent and answers every live agent, sorted by id.
    pub async fn heartbeat(&self) -> Result<Vec<LiveAgent>, SharedError> {
        self.heartbeat_at(None).await
    }

    /// Drops this agent from the live set at once (SIGTERM), so the others
    /// take its partitions without waiting for the heartbeat to expire.
    pub async fn leave(&self) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&self.key).arg(self.me.member());
        let _: i64 = within(self.deadline, cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    pub(crate) async fn heartbeat_at(
        &self,
        now_us: Option<u64>,
    ) -> Result<Vec<LiveAgent>, SharedError> {
        let ttl_us = u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX);
        let mut inv = self.script.key(&self.key);
        inv.arg(self.me.member())
            .arg(ttl_us.min(super::shared_limiter::MAX_MICROS))
            .arg(now_us.map(|n| n.to_string()).unwrap_or_default());
        let mut conn = self.conn.clone();
        let members: Vec<String> = within(self.deadline, inv.invoke_async(&mut conn)).await?;
        let mut live: Vec<LiveAgent> = members.iter().filter_map(|m| LiveAgent::parse(m)).collect();
        live.sort();
        live.dedup_by(|a, b| a.id == b.id);
        Ok(live)
    }
}

/// The canary's share during a rollout: which agents run the canary and
/// the weight in percent the operator set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanarySplit {
    pub canary_agents: BTreeSet<AgentId>,
    pub weight_percent: u32,
}

impl CanarySplit {
    /// The split as the heartbeat set shows it.
    pub fn from_live(live: &[LiveAgent], weight_percent: u32) -> CanarySplit {
        CanarySplit {
            canary_agents: live
                .iter()
                .filter(|a| a.track == Track::Canary)
                .map(|a| a.id.clone())
                .collect(),
            weight_percent,
        }
    }
}

/// The owner of each of `partitions` queue partitions, as an index into
/// `live`; empty when no agent is alive.
///
/// Rendezvous hashing: a partition goes to the live agent with the highest
/// stable hash of (partition, agent). An agent joining takes only
/// partitions it now wins; one leaving gives away only its own. With a
/// canary, exactly `partition_split(partitions, weight).0` partitions (the
/// ones ranking highest on a hash of the partition alone, so a larger
/// weight keeps the canary's earlier partitions) go to canary agents and
/// the rest to stable agents; a track without live agents leaves all
/// partitions to the other.
pub fn assign_partitions(
    partitions: u32,
    live: &[AgentId],
    canary: Option<&CanarySplit>,
) -> Vec<usize> {
    if live.is_empty() {
        return Vec::new();
    }
    let hashes: Vec<u64> = live.iter().map(|a| fnv1a(a.as_str().as_bytes())).collect();
    let is_canary: Vec<bool> = live
        .iter()
        .map(|a| canary.is_some_and(|c| c.canary_agents.contains(a)))
        .collect();
    let canary_live = is_canary.iter().filter(|&&c| c).count();
    let stable_live = live.len() - canary_live;
    let canary_count = match canary {
        Some(_) if canary_live == 0 => 0,
        Some(_) if stable_live == 0 => partitions,
        Some(c) => partition_split(partitions, c.weight_percent).0,
        None => 0,
    };
    let on_canary = canary_partitions(partitions, canary_count);
    (0..partitions)
        .map(|p| {
            let track = on_canary[p as usize];
            let mut best: Option<(u64, &AgentId, usize)> = None;
            for (i, a) in live.iter().enumerate() {
                if is_canary[i] != track {
                    continue;
                }
                let w = weight(p, hashes[i]);
                if best.is_none_or(|(bw, bid, _)| (w, a) > (bw, bid)) {
                    best = Some((w, a, i));
                }
            }
            best.map_or(0, |(_, _, i)| i)
        })
        .collect()
}

/// The partitions `me` owns, ascending.
pub fn owned_partitions(
    partitions: u32,
    live: &[AgentId],
    canary: Option<&CanarySplit>,
    me: &AgentId,
) -> Vec<u32> {
    let owners = assign_partitions(partitions, live, canary);
    (0..partitions)
        .zip(owners)
        .filter(|&(_, o)| live.get(o) == Some(me))
        .map(|(p, _)| p)
        .collect()
}

/// Which partitions go to the canary: the `count` highest on a hash of the
/// partition number.
fn canary_partitions(partitions: u32, count: u32) -> Vec<bool> {
    let mut ranked: Vec<(u64, u32)> = (0..partitions)
        .map(|p| (mix(u64::from(p) ^ 0xC0A2_71E5_5EED_0001), p))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let mut on = vec![false; partitions as usize];
    for &(_, p) in ranked.iter().take(count as usize) {
        on[p as usize] = true;
    }
    on
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over all 64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn weight(partition: u32, agent_hash: u64) -> u64 {
    mix(agent_hash ^ mix(u64::from(partition).wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// The agent's link to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// The last call succeeded: decisions go to the shared limiter.
    Connected,
    /// Calls fail; the next reconnect attempt is due at `retry_at`.
    Lost { since: Instant, retry_at: Instant },
    /// A reconnect attempt (e.g. a heartbeat) is under way.
    Reconnecting { since: Instant, attempt: u32 },
}

/// The link's state machine: pure, time and randomness passed in.
///
/// Starts `Reconnecting` (the first connection is an attempt). Any success
/// makes it `Connected`; a failure makes it `Lost` with the next attempt
/// after an exponential, jittered backoff; [`RedisLink::begin_attempt`]
/// turns a due `Lost` into `Reconnecting`. While not connected, the agent
/// should not touch Redis for decisions (each would wait out the deadline)
/// but probe it only when an attempt is due.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisLink {
    state: LinkState,
    /// Replicas the tier is configured for: a floor for the divisor, so an
    /// agent that never saw Redis still takes only its share.
    floor: u32,
    last_known_live: u32,
    failures: u32,
    backoff: RetryPolicy,
}

impl RedisLink {
    /// Backoff 100 ms doubling to 10 s, equal jitter.
    pub const DEFAULT_BACKOFF: RetryPolicy = RetryPolicy {
        strategy: BackoffStrategy::Exponential,
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        multiplier: 2.0,
        jitter: Jitter::Equal,
        max_attempts: u32::MAX,
        max_elapsed: None,
        honour_retry_after: false,
    };

    /// The link of an agent starting at `now`, connecting for the first time.
    pub fn new(expected_replicas: u32, now: Instant) -> RedisLink {
        RedisLink {
            state: LinkState::Reconnecting {
                since: now,
                attempt: 1,
            },
            floor: expected_replicas.max(1),
            last_known_live: expected_replicas.max(1),
            failures: 0,
            backoff: RedisLink::DEFAULT_BACKOFF,
        }
    }

    /// Another backoff (only strategy, delays and jitter are used).
    pub fn with_backoff(self, backoff: RetryPolicy) -> RedisLink {
        RedisLink { backoff, ..self }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// `connected`, `lost` or `reconnecting`.
    pub const fn state_name(&self) -> &'static str {
        match self.state {
            LinkState::Connected => "connected",
            LinkState::Lost { .. } => "lost",
            LinkState::Reconnecting { .. } => "reconnecting",
        }
    }

    pub fn last_known_live(&self) -> u32 {
        self.last_known_live
    }

    /// Agents assumed to share the limit while Redis is away.
    pub fn divisor(&self) -> u32 {
        self.last_known_live.max(self.floor)
    }

    /// What a tier's limits need to know of the link (see
    /// [`crate::policy::effective::TierLimits::now`]).
    pub fn for_limits(&self) -> Link {
        Link {
            connected: self.state == LinkState::Connected,
            divisor: self.divisor(),
        }
    }

    /// A call to Redis succeeded.
    pub fn connected(&mut self) {
        self.state = LinkState::Connected;
        self.failures = 0;
    }

    /// A heartbeat answered `live` agents (this one included).
    pub fn observed_live(&mut self, live: u32) {
        self.connected();
        self.last_known_live = live.max(1);
    }

    /// A call failed with [`SharedError::is_unavailable`] at `now`: answers
    /// when to attempt again.
    pub fn failed(&mut self, now: Instant, rng: &mut SplitMix64) -> Instant {
        self.failures = self.failures.saturating_add(1);
        let since = match self.state {
            LinkState::Connected => now,
            LinkState::Lost { since, .. } | LinkState::Reconnecting { since, .. } => since,
        };
        let retry_at = now + self.backoff.backoff(self.failures, None, rng);
        self.state = LinkState::Lost { since, retry_at };
        retry_at
    }

    /// When the next reconnect attempt is due, while `Lost`.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            LinkState::Lost { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }

    /// Starts a reconnect attempt if one is due at `now`; true when the
    /// agent should probe Redis (e.g. send a heartbeat) now.
    pub fn begin_attempt(&mut self, now: Instant) -> bool {
        match self.state {
            LinkState::Lost { since, retry_at } if now >= retry_at => {
                self.state = LinkState::Reconnecting {
                    since,
                    attempt: self.failures.saturating_add(1),
                };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::api::rate_limit_policy::{LimiterBackend, LimiterFallback};
    use crate::policy::effective::{LimiterMode, tier_mode};
    use crate::store::redis::server::{Persistence, RedisServer};
    use crate::store::redis::shared_limiter::connect;

    const BASE_US: u64 = 1_700_000_000_000_000;

    /// The mode a Redis-backed tier with `fallback` takes on this link.
    fn mode(link: &RedisLink, fallback: LimiterFallback) -> LimiterMode {
        let l = link.for_limits();
        tier_mode(LimiterBackend::Redis, fallback, l.connected, l.divisor)
    }

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn ids(n: usize, salt: u64) -> Vec<AgentId> {
        (0..n)
            .map(|i| id(&format!("herald-{salt:x}-{i}")))
            .collect()
    }

    fn moved(
        a: &[usize],
        live_a: &[AgentId],
        b: &[usize],
        live_b: &[AgentId],
    ) -> Vec<(AgentId, AgentId)> {
        a.iter()
            .zip(b)
            .filter(|&(&x, &y)| live_a[x] != live_b[y])
            .map(|(&x, &y)| (live_a[x].clone(), live_b[y].clone()))
            .collect()
    }

    /// A generous tail allowance for a binomial count with mean `mean`:
    /// more than six standard deviations above it.
    fn allowance(mean: u32) -> usize {
        (6.0 * f64::from(mean).sqrt()).ceil() as usize + 6
    }

    fn arb_agents() -> impl Strategy<Value = Vec<AgentId>> {
        proptest::collection::btree_set("[a-z0-9]{1,12}", 1..12)
            .prop_map(|s| s.into_iter().map(|x| id(&format!("herald-{x}"))).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_partition_has_one_owner_and_the_canary_its_exact_share(
            partitions in 0u32..300,
            live in arb_agents(),
            canary_mask in any::<u64>(),
            weight in 0u32..=100,
        ) {
            let canary_agents: BTreeSet<AgentId> = live
                .iter()
                .enumerate()
                .filter(|(i, _)| canary_mask >> (i % 64) & 1 == 1)
                .map(|(_, a)| a.clone())
                .collect();
            let split = CanarySplit { canary_agents: canary_agents.clone(), weight_percent: weight };
            let owners = assign_partitions(partitions, &live, Some(&split));
            prop_assert_eq!(owners.len(), partitions as usize);
            prop_assert!(owners.iter().all(|&o| o < live.len()));
            let on_canary = owners.iter().filter(|&&o| canary_agents.contains(&live[o])).count() as u32;
            let canaries = canary_agents.len();
            let expected = if canaries == 0 {
                0
            } else if canaries == live.len() {
                partitions
            } else {
                partition_split(partitions, weight).0
            };
            prop_assert_eq!(on_canary, expected);
            // Each agent's own list agrees with the table.
            let mut all: Vec<u32> = live
                .iter()
                .flat_map(|me| owned_partitions(partitions, &live, Some(&split), me))
                .collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..partitions).collect::<Vec<_>>());
            // Without a canary, the same holds and nobody is special.
            let plain = assign_partitions(partitions, &live, None);
            prop_assert_eq!(plain.len(), partitions as usize);
        }

        /// A join moves partitions only to the newcomer, a leave only away
        /// from the leaver; how many is the leaver's (or newcomer's) load,
        /// about P/N.
        #[test]
        fn one_join_or_leave_moves_only_that_agents_partitions(
            partitions in 1u32..300,
            live in arb_agents(),
            newcomer in "[a-z0-9]{1,12}",
        ) {
            let y = id(&format!("new-{newcomer}"));
            let n = live.len() as u32;
            let before = assign_partitions(partitions, &live, None);
            let mut joined = live.clone();
            joined.push(y.clone());
            let after = assign_partitions(partitions, &joined, None);
            let m = moved(&before, &live, &after, &joined);
            prop_assert!(m.iter().all(|(_, to)| *to == y));
            prop_assert!(m.len() <= partitions.div_ceil(n) as usize + allowance(partitions.div_ceil(n + 1)));
            // Leaving is the reverse; take the first agent out as well.
            let x = live[0].clone();
            let left: Vec<AgentId> = live[1..].to_vec();
            if !left.is_empty() {
                let after = assign_partitions(partitions, &left, None);
                let m = moved(&before, &live, &after, &left);
                prop_assert!(m.iter().all(|(from, _)| *from == x));
                prop_assert!(m.len() <= partitions.div_ceil(n) as usize + allowance(partitions.div_ceil(n)));
            }
        }

        /// Within a track, a join or leave moves only that agent's
        /// partitions and the canary keeps its exact share.
        #[test]
        fn canary_churn_stays_within_its_track(
            partitions in 2u32..200,
            stable in arb_agents(),
            weight in 1u32..100,
        ) {
            let canaries = [id("canary-a"), id("canary-b")];
            let split = CanarySplit {
                canary_agents: canaries.iter().cloned().collect(),
                weight_percent: weight,
            };
            let mut live = stable.clone();
            live.extend(canaries.iter().cloned());
            let mut fewer = stable.clone();
            fewer.push(canaries[0].clone());
            let a = assign_partitions(partitions, &live, Some(&split));
            let b = assign_partitions(partitions, &fewer, Some(&split));
            let m = moved(&a, &live, &b, &fewer);
            prop_assert!(m.iter().all(|(from, to)| *from == canaries[1] && *to == canaries[0]));
            // A larger weight keeps every canary partition of the smaller.
            let more = CanarySplit { weight_percent: weight + 1, ..split.clone() };
            let c = assign_partitions(partitions, &live, Some(&more));
            for p in 0..partitions as usize {
                if split.canary_agents.contains(&live[a[p]]) {
                    prop_assert!(more.canary_agents.contains(&live[c[p]]));
                }
            }
        }

        /// The link's mode follows the last event; delays stay in bounds.
        #[test]
        fn the_link_state_machine_holds_its_invariants(
            events in proptest::collection::vec((0u8..4, 0u64..2_000, 0u32..20), 1..60),
            seed in any::<u64>(),
            pause in any::<bool>(),
            replicas in 1u32..10,
        ) {
            let fallback = if pause { LimiterFallback::Pause } else { LimiterFallback::LocalShare };
            let mut now = Instant::from_secs(1);
            let mut link = RedisLink::new(replicas, now);
            let mut rng = SplitMix64::new(seed);
            for (kind, dt_ms, live) in events {
                now = now + Duration::from_millis(dt_ms);
                match kind {
                    0 => link.connected(),
                    1 => link.observed_live(live),
                    2 => {
                        let at = link.failed(now, &mut rng);
                        prop_assert!(at >= now && at <= now + RedisLink::DEFAULT_BACKOFF.max_delay);
                        prop_assert_eq!(link.retry_at(), Some(at));
                    }
                    _ => {
                        let due = link.retry_at().is_some_and(|at| now >= at);
                        prop_assert_eq!(link.begin_attempt(now), due);
                    }
                }
                prop_assert!(link.divisor() >= replicas.max(1));
                let mode = mode(&link, fallback);
                match link.state() {
                    LinkState::Connected => prop_assert_eq!(mode, LimiterMode::Shared),
                    _ if pause => prop_assert_eq!(mode, LimiterMode::Paused),
                    _ => prop_assert_eq!(mode, LimiterMode::LocalShare { divisor: link.divisor() }),
                }
            }
        }
    }

    /// On average a join moves P/(N+1) partitions: rendezvous balances in
    /// expectation. Deterministic: fixed names.
    #[test]
    fn joins_move_about_one_nth_on_average() {
        let partitions = 64;
        for n in [1usize, 2, 4, 8] {
            let mut total = 0usize;
            let trials = 200u64;
            for salt in 0..trials {
                let live = ids(n, salt);
                let mut joined = live.clone();
                joined.push(id(&format!("joiner-{salt}")));
                let a = assign_partitions(partitions, &live, None);
                let b = assign_partitions(partitions, &joined, None);
                total += moved(&a, &live, &b, &joined).len();
            }
            let mean = total as f64 / trials as f64;
            let ideal = f64::from(partitions) / (n as f64 + 1.0);
            assert!(
                (mean - ideal).abs() < ideal * 0.1,
                "n {n}: mean {mean}, ideal {ideal}"
            );
        }
    }

    #[test]
    fn assignment_is_stable_and_order_free() {
        let live = ids(5, 1);
        let a = assign_partitions(64, &live, None);
        let mut rev = live.clone();
        rev.reverse();
        let b = assign_partitions(64, &rev, None);
        for p in 0..64 {
            assert_eq!(live[a[p]], rev[b[p]]);
        }
        // Pinned (computed independently): the hash must not change between
        // builds or versions, or a rolling upgrade would reshuffle every
        // partition.
        assert_eq!(fnv1a(b"herald"), 0x2ebe_4b14_3dd9_fb7f);
        assert_eq!(
            assign_partitions(8, &ids(3, 0xfeed), None),
            [2, 1, 1, 0, 2, 1, 1, 2]
        );
        assert!(assign_partitions(4, &[], None).is_empty());
        assert!(owned_partitions(4, &[], None, &live[0]).is_empty());
    }

    #[test]
    fn the_link_backs_off_exponentially_and_recovers() {
        let t0 = Instant::from_secs(10);
        let backoff = RetryPolicy {
            jitter: Jitter::None,
            ..RedisLink::DEFAULT_BACKOFF
        };
        let mut link = RedisLink::new(3, t0).with_backoff(backoff);
        assert_eq!(link.state_name(), "reconnecting");
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::LocalShare { divisor: 3 }
        );
        link.observed_live(5);
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::Shared
        );
        assert_eq!(mode(&link, LimiterFallback::LocalShare).as_str(), "shared");
        let mut rng = SplitMix64::new(1);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let at = link.failed(now, &mut rng);
            delays.push(at.since(now).as_millis());
            assert!(!link.begin_attempt(at - Duration::from_nanos(1)));
            assert!(link.begin_attempt(at));
            assert_eq!(link.state_name(), "reconnecting");
            now = at;
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]
        );
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare),
            LimiterMode::LocalShare { divisor: 5 }
        );
        assert_eq!(
            mode(&link, LimiterFallback::LocalShare).as_str(),
            "local-share"
        );
        let LinkState::Reconnecting { since, attempt } = link.state() else {
            panic!("{:?}", link.state())
        };
        assert_eq!((since, attempt), (t0, 10));
        link.connected();
        assert_eq!(link.state(), LinkState::Connected);
        // The count restarts after a success.
        let at = link.failed(now, &mut rng);
        assert_eq!(at.since(now), Duration::from_millis(100));
        let paused = RedisLink::new(1, t0);
        assert_eq!(mode(&paused, LimiterFallback::Pause).as_str(), "paused");
    }

    #[test]
    fn heartbeats_list_the_live_and_forget_the_expired() {
        let server = RedisServer::start(Persistence::None).expect("redis-server");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let opts = ConnectOptions {
                deadline: Duration::from_secs(5),
            };
            let conn = connect(&server.url(), opts).await.unwrap();
            let ttl = Duration::from_secs(3);
            let member = |name: &str, track| {
                let me = LiveAgent {
                    id: id(name),
                    track,
                };
                Membership::new(conn.clone(), "t", "tier-a", me, ttl, opts).unwrap()
            };
            let a = member("pod-b", Track::Stable);
            let b = member("pod-a", Track::Canary);
            let t0 = BASE_US;
            assert_eq!(a.heartbeat_at(Some(t0)).await.unwrap().len(), 1);
            let live = b.heartbeat_at(Some(t0 + 1_000_000)).await.unwrap();
            assert_eq!(
                live,
                vec![
                    LiveAgent {
                        id: id("pod-a"),
                        track: Track::Canary
                    },
                    LiveAgent {
                        id: id("pod-b"),
                        track: Track::Stable
                    },
                ]
            );
            let split = CanarySplit::from_live(&live, 10);
            assert_eq!(split.canary_agents, [id("pod-a")].into_iter().collect());
            // Another version's member is skipped, not fatal.
            let mut c = conn.clone();
            let _: i64 = redis::cmd("ZADD")
                .arg("t:members:tier-a")
                .arg((t0 + 10_000_000).to_string())
                .arg("x:someone")
                .query_async(&mut c)
                .await
                .unwrap();
            // pod-b's heartbeat (t0 + 3 s) has expired at t0 + 3 s.
            let live = b.heartbeat_at(Some(t0 + 3_000_000)).await.unwrap();
            assert_eq!(live.len(), 1);
            assert_eq!(live[0].id, id("pod-a"));
            a.heartbeat_at(Some(t0 + 3_000_000)).await.unwrap();
            a.leave().await.unwrap();
            let live = b.heartbeat_at(Some(t0 + 3_500_000)).await.unwrap();
            assert_eq!(
                live.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
                ["pod-a"]
            );
            // On server time, with the set's own expiry.
            let live = a.heartbeat().await.unwrap();
            assert!(live.iter().any(|l| l.id == id("pod-b")));
            let pttl: i64 = redis::cmd("PTTL")
                .arg("t:members:tier-a")
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(pttl > 3_000 && pttl <= 6_001, "pttl {pttl}");
        });
    }

    #[test]
    fn names_are_checked() {
        assert!(AgentId::new("").is_err());
        assert!(AgentId::new("a:b").is_err());
        assert!(AgentId::new(&"a".repeat(253)).is_ok());
        assert!(AgentId::new(&"a".repeat(254)).is_err());
        assert_eq!(LiveAgent::parse("s:pod-1").unwrap().track, Track::Stable);
        assert_eq!(LiveAgent::parse("c:pod-1").unwrap().member(), "c:pod-1");
        assert!(LiveAgent::parse("pod-1").is_none());
    }
}
