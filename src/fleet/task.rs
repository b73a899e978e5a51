//! One agent's place among the agents of its tier on a shared Redis queue:
//! the [`Fleet`] handle and its partition task.
//!
//! Owns: the partition task — heartbeat, rebalance (release what another
//! agent now owns, acquire and load what this one now owns, renew the
//! rest), the partitions' feed into the dispatch loop, and handing every
//! lease over on SIGTERM — plus the link state the dispatch loop reads to
//! pick a limiter. Leaves to others: the queue itself and the lease rules
//! ([`RedisStore`]), the assignment ([`super::assignment`]), what a tier's
//! limits come to ([`crate::policy::effective`]), pacing and sending (the
//! agent's dispatch loop, reached through [`Dispatch`]).
//!
//! Invariant: a message reaches this agent's dispatcher only from a
//! partition it holds the lease of, first through `pending_in` once the
//! lease was taken (and, for a partition taken over from a holder whose
//! lease ran out, its handover grace passed), then through the feed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::engine::{Instant, SplitMix64};
use crate::policy::effective::{Link, SETTLE_MARGIN};
use crate::store::StoredMessage;
use crate::store::redis::RedisStore;

use super::answer_delay::RoundTripFloor;
use super::assignment::{CanarySplit, owned_partitions};
use super::link::{LinkState, RedisLink};
use super::membership::{AgentId, LiveAgent, Membership, Track};
use super::shared_limiter::{ConnectOptions, SharedError, SharedLimiter};

/// Where the agent's name comes from: the operator sets it to the pod name.
pub const AGENT_ID_ENV: &str = "HERALD_POD_NAME";

/// This process's name among the tier's agents: the pod name in a cluster,
/// else host and process id (unique among running processes of one host).
pub fn agent_id() -> String {
    if let Ok(name) = std::env::var(AGENT_ID_ENV)
        && AgentId::new(&name).is_ok()
    {
        return name;
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && AgentId::new(h).is_ok())
        .unwrap_or_else(|| "agent".to_owned());
    format!("{host}-{}", std::process::id())
}

/// What an agent brings to its fleet, read from its config by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOptions {
    /// The entry tier, whose agents share the queue.
    pub tier: String,
    /// Replicas the tier is configured for: the floor of the limit divisor.
    pub replicas: u32,
    /// Which Deployment this agent belongs to during a rollout.
    pub track: Track,
}

/// Where the partition task hands its partitions' messages: the agent's
/// dispatch loop, which alone schedules and sends them.
pub trait Dispatch: Send + Sync {
    /// Messages of a partition this agent holds, to schedule.
    fn enqueue(&self, msgs: Vec<StoredMessage>) -> impl Future<Output = ()> + Send;

    /// Takes a partition's waiting messages out of the dispatcher; answers
    /// how many, or `None` when the loop is gone.
    fn drop_partition(&self, partition: u32) -> impl Future<Output = Option<usize>> + Send;

    /// What the last heartbeat found: live agents and partitions held.
    fn observed(&self, agents: u32, partitions: u32);

    /// The canary's weight as the agent's config says now
    /// ([`super::assignment::canary_weight`]), `None` without a rollout.
    /// Read at every rebalance: a rollout starts and ends by a config
    /// reload in agents that joined before it, and every agent must see
    /// the same split.
    fn canary_weight(&self) -> Option<u32>;
}

/// The shared side of an agent on the Redis store.
pub struct Fleet {
    pub store: RedisStore,
    pub limiter: SharedLimiter,
    membership: Membership,
    link: Mutex<RedisLink>,
    rng: Mutex<SplitMix64>,
    epoch: std::time::Instant,
    live: AtomicU32,
    held: AtomicU32,
    /// Partitions taken lately, with the wall-clock ms until which their
    /// messages wait (see [`hold_back`]): the load's and the feed's alike.
    quiet: Mutex<BTreeMap<u32, u64>>,
    /// Partitions taken over from a holder whose lease ran out, with when
    /// their load is due ([`RedisStore::load_wait`]).
    due_loads: Mutex<BTreeMap<u32, tokio::time::Instant>>,
    /// Round trips of shared decisions, for [`Fleet::answer_delay`].
    round_trips: Mutex<RoundTripFloor>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.store)
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Joins the tier's agents on the queue `store` with its own
    /// connection for decisions and heartbeats. Redis need not answer yet:
    /// the link starts as reconnecting and the partition task's heartbeats
    /// attach the agent when it does.
    pub fn join(
        store: RedisStore,
        url: &str,
        prefix: &str,
        options: FleetOptions,
    ) -> Result<Fleet, SharedError> {
        let limiter = SharedLimiter::connect_lazy(url, prefix, ConnectOptions::default())?;
        let me = LiveAgent {
            id: AgentId::new(store.agent_id())?,
            track: options.track,
        };
        let membership = Membership::new(
            limiter.connection(),
            prefix,
            &options.tier,
            me,
            store.lease_ttl(),
            ConnectOptions::default(),
        )?;
        let replicas = options.replicas.max(1);
        let settle = store.lease_ttl() + SETTLE_MARGIN;
        let epoch = std::time::Instant::now();
        Ok(Fleet {
            store,
            limiter,
            membership,
            link: Mutex::new(RedisLink::new(replicas, Instant::ZERO).with_settle(settle)),
            rng: Mutex::new(SplitMix64::new(now_ms())),
            epoch,
            live: AtomicU32::new(0),
            held: AtomicU32::new(0),
            quiet: Mutex::new(BTreeMap::new()),
            due_loads: Mutex::new(BTreeMap::new()),
            round_trips: Mutex::new(RoundTripFloor::default()),
        })
    }

    fn now(&self) -> Instant {
        Instant::ZERO + self.epoch.elapsed()
    }

    fn with_link<T>(&self, f: impl FnOnce(&mut RedisLink) -> T) -> T {
        match self.link.lock() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Records the round trip of a shared decision; answers how late its
    /// slot may be at most for having come back slower than usual
    /// ([`RoundTripFloor::observe`]).
    pub fn answer_delay(&self, round_trip: Duration) -> Duration {
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(round_trip)
    }

    /// A Redis call failed as unavailable: decisions fall back until a
    /// heartbeat gets through again.
    pub fn failed(&self) {
        let now = self.now();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        self.with_link(|l| l.failed(now, &mut rng));
    }

    /// `connected`, `lost` or `reconnecting`.
    pub fn link_state(&self) -> &'static str {
        self.with_link(|l| l.state_name())
    }

    pub fn connected(&self) -> bool {
        self.with_link(|l| l.state() == LinkState::Connected)
    }

    /// Agents assumed to share each bot-wide limit.
    pub fn divisor(&self) -> u32 {
        self.with_link(|l| l.divisor())
    }

    /// Whether Redis answers and how many agents share a limit, read
    /// together: what [`crate::policy::effective::TierLimits::now`] needs.
    pub fn link(&self) -> Link {
        let now = self.now();
        self.with_link(|l| l.for_limits(now))
    }

    /// Live agents at the last heartbeat (0 before the first).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    fn set_quiet(&self, partition: u32, until_ms: u64) {
        let mut quiet = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        quiet.retain(|_, until| *until > now);
        quiet.insert(partition, until_ms);
    }

    /// Until when a partition's messages wait, if it was taken lately.
    fn quiet_until(&self, partition: u32) -> Option<u64> {
        let quiet = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        quiet.get(&partition).copied().filter(|u| *u > now_ms())
    }

    fn due_loads(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, tokio::time::Instant>> {
        self.due_loads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions this agent holds.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }
}

/// How often the partition task heartbeats and renews: five times per
/// lease, so a lost round trip or two never costs a lease, and a dead
/// agent's partitions move within a fifth of a lease after it expired.
fn round(fleet: &Fleet) -> Duration {
    (fleet.store.lease_ttl() / 5).max(Duration::from_millis(50))
}

/// The partition task: runs until `stop`, then returns without releasing
/// (the dispatch loop may still be finishing sends; [`hand_over`] releases
/// after it).
pub async fn run<D: Dispatch>(
    dispatch: Arc<D>,
    fleet: Arc<Fleet>,
    quiet: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let round = round(&fleet);
    let mut next_beat = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if tokio::time::Instant::now() >= next_beat {
            rebalance(dispatch.as_ref(), &fleet, quiet).await;
            next_beat = tokio::time::Instant::now() + round;
        }
        let next_load = load_due(dispatch.as_ref(), &fleet, quiet).await;
        let wake = next_load.map_or(next_beat, |at| at.min(next_beat));
        let wait = wake
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_millis(500));
        tokio::select! {
            fed = fleet.store.new_messages(wait) => match fed {
                Ok(found) if !found.is_empty() => {
                    // A message accepted just after the load must not
                    // overtake the load's quiet wait (nor its chat's order).
                    let msgs = found
                        .into_iter()
                        .map(|(p, m)| match fleet.quiet_until(p) {
                            Some(until) => hold_back_one(m, until),
                            None => m,
                        })
                        .collect();
                    dispatch.enqueue(msgs).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "queue feed failed");
                    fleet.failed();
                    tokio::select! {
                        _ = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
                        _ = stop.changed() => return,
                    }
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// One heartbeat and the partition changes it calls for.
async fn rebalance(dispatch: &impl Dispatch, fleet: &Fleet, quiet: Duration) {
    // Whatever Redis says (or fails to say): a lease not renewed in time
    // may be another agent's now, so its messages leave the dispatcher
    // until the lease is taken again, which reloads them.
    let lapsed: BTreeSet<u32> = fleet.store.lapsed().into_iter().collect();
    for &p in &lapsed {
        drop_partition(dispatch, p).await;
    }
    let live = match fleet.membership.heartbeat().await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed; keeping the partitions held");
            fleet.failed();
            return;
        }
    };
    let count = u32::try_from(live.len()).unwrap_or(u32::MAX);
    let now = fleet.now();
    fleet.with_link(|l| l.observed_live(count, now));
    fleet.live.store(count, Ordering::Relaxed);
    let ids: Vec<AgentId> = live.iter().map(|a| a.id.clone()).collect();
    let canary = dispatch
        .canary_weight()
        .map(|w| CanarySplit::from_live(&live, w));
    let me = &fleet.membership.me().id;
    let owned: BTreeSet<u32> =
        owned_partitions(fleet.store.partitions(), &ids, canary.as_ref(), me)
            .into_iter()
            .collect();
    let held: BTreeSet<u32> = fleet.store.held().into_iter().map(|(p, _)| p).collect();
    for &p in held.union(&lapsed).filter(|p| !owned.contains(p)) {
        drop_partition(dispatch, p).await;
        if let Err(e) = fleet.store.release(p).await {
            tracing::warn!(partition = p, error = %e, "could not release a partition");
        }
    }
    for &p in held.intersection(&owned) {
        match fleet.store.renew(p).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(partition = p, "lease lost to another agent");
                drop_partition(dispatch, p).await;
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "lease renewal failed");
                fleet.failed();
            }
        }
    }
    for &p in owned.difference(&held) {
        match fleet.store.acquire(p).await {
            Ok(Some(_)) => match fleet.store.load_wait(p) {
                Some(wait) if !wait.is_zero() => {
                    tracing::info!(
                        partition = p,
                        wait_ms = millis(wait),
                        "partition taken over from a holder whose lease ran out; \
                         loading it once that holder could record its last sends"
                    );
                    fleet
                        .due_loads()
                        .insert(p, tokio::time::Instant::now() + wait);
                }
                _ => load(dispatch, fleet, p, quiet).await,
            },
            // Its previous holder's lease is still live: next round.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "could not take a partition");
                fleet.failed();
            }
        }
    }
    let now_held = u32::try_from(fleet.store.held().len()).unwrap_or(u32::MAX);
    fleet.held.store(now_held, Ordering::Relaxed);
    dispatch.observed(count, now_held);
}

/// Loads a partition just taken and hands its messages to the dispatcher.
async fn load(dispatch: &impl Dispatch, fleet: &Fleet, p: u32, quiet: Duration) {
    fleet.due_loads().remove(&p);
    match fleet.store.pending_in(p).await {
        Ok(msgs) => {
            tracing::info!(partition = p, messages = msgs.len(), "partition taken");
            let until = now_ms() + millis(quiet);
            fleet.set_quiet(p, until);
            dispatch.enqueue(hold_back(msgs, until)).await;
        }
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "could not load a partition");
            let _ = fleet.store.release(p).await;
        }
    }
}

/// Loads the partitions whose handover grace has passed (forgetting those
/// no longer held); answers when the next one is due.
async fn load_due(
    dispatch: &impl Dispatch,
    fleet: &Fleet,
    quiet: Duration,
) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now();
    let due: Vec<u32> = {
        let mut loads = fleet.due_loads();
        loads.retain(|p, _| fleet.store.may_send(*p));
        loads
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect()
    };
    for p in due {
        load(dispatch, fleet, p, quiet).await;
    }
    fleet.due_loads().values().min().copied()
}

/// A partition's previous holder may have sent to its chats a moment ago,
/// and chat limits are not shared: its messages wait `quiet` (one full cell
/// of the slowest chat limit) before their first send here.
fn hold_back(msgs: Vec<StoredMessage>, until_ms: u64) -> Vec<StoredMessage> {
    msgs.into_iter()
        .map(|m| hold_back_one(m, until_ms))
        .collect()
}

fn hold_back_one(mut m: StoredMessage, until_ms: u64) -> StoredMessage {
    m.next_attempt_ms = Some(m.next_attempt_ms.unwrap_or(0).max(until_ms));
    m
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes the partition's waiting messages out of this agent's dispatcher.
async fn drop_partition(dispatch: &impl Dispatch, partition: u32) {
    if let Some(dropped) = dispatch.drop_partition(partition).await {
        tracing::info!(partition, dropped, "partition handed over");
    }
}

/// On SIGTERM, after the dispatch loop drained: give every partition back
/// and leave the live set, so the other agents take over at their next
/// heartbeat instead of after the lease runs out.
pub async fn hand_over(fleet: &Fleet) {
    for (p, _) in fleet.store.held() {
        if let Err(e) = fleet.store.release(p).await {
            tracing::warn!(partition = p, error = %e, "could not release a partition");
        }
    }
    if let Err(e) = fleet.membership.leave().await {
        tracing::warn!(error = %e, "could not leave the live set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_partition_waits_its_quiet_period() {
        let m = |next: Option<u64>| StoredMessage {
            id: crate::store::MessageId::generate(),
            msg: crate::store::record::tests::sample_new(1),
            state: crate::store::MessageState::Pending,
            attempts: Vec::new(),
            created_ms: 0,
            updated_ms: 0,
            next_attempt_ms: next,
            in_flight_tier: None,
            delivered_tier: None,
            receipt: None,
            dead_reason: None,
        };
        let out = hold_back(vec![m(None), m(Some(500)), m(Some(9_000))], 1_000);
        let next: Vec<_> = out.iter().map(|m| m.next_attempt_ms).collect();
        assert_eq!(next, vec![Some(1_000), Some(1_000), Some(9_000)]);
    }
}
