//! The Redis store: the shared `Store` contract suite (`store/contract.rs`)
//! on a real `redis-server` per test, and what only Redis has (a restart on
//! its data, the indexes and counters the scripts keep).
//!
//! A missing `redis-server` fails these tests; they never skip.

use std::time::Duration;

use super::server::{Persistence, RedisServer};
use super::{RedisOptions, RedisStore};
use crate::engine::Priority;
use crate::store::contract::{self, Backend, Settings, contract_tests};
pub(super) use crate::store::contract::{accept_one, attempt, keyed};
use crate::store::record::tests::sample_new;
use crate::store::{
    ChatRef, DeadFilter, DeadSelection, MessageId, MessageState, NewMessage, Store,
};

pub(super) const PARTITIONS: u32 = 8;

pub(super) fn start(persistence: Persistence) -> RedisServer {
    RedisServer::start(persistence)
        .expect("redis-server must be installed: tests that need Redis fail rather than skip")
}

pub(super) fn options(server: &RedisServer, agent: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: "t".into(),
        partitions: PARTITIONS,
        ..RedisOptions::new(server.url(), agent)
    }
}

pub(super) async fn connect(server: &RedisServer, agent: &str) -> RedisStore {
    RedisStore::connect(options(server, agent)).await.unwrap()
}

/// Takes and loads every partition, as an agent alone in the fleet would;
/// the delivery-side writes need the leases.
pub(super) async fn take_all(store: &RedisStore) {
    for p in 0..store.partitions() {
        assert!(store.acquire(p).await.unwrap().is_some(), "partition {p}");
        store.pending_in(p).await.unwrap();
    }
}

/// A `redis-server` of its own, with agents connecting to it.
pub(super) struct Redis {
    server: RedisServer,
    settings: Settings,
}

impl Redis {
    fn options(&self, agent: &str) -> RedisOptions {
        let defaults = options(&self.server, agent);
        RedisOptions {
            idempotency_ttl: self
                .settings
                .idempotency_ttl
                .unwrap_or(defaults.idempotency_ttl),
            max_record_bytes: self
                .settings
                .max_record_bytes
                .unwrap_or(defaults.max_record_bytes),
            ..defaults
        }
    }
}

impl Backend for Redis {
    type S = RedisStore;

    /// Redis expires idempotency keys itself.
    const SWEEPS_KEYS: bool = false;

    /// One agent alone, holding every partition.
    async fn start(settings: Settings) -> (Self, RedisStore) {
        let backend = Redis {
            server: start(Persistence::None),
            settings,
        };
        let store = RedisStore::connect(backend.options("solo")).await.unwrap();
        take_all(&store).await;
        (backend, store)
    }

    /// Another agent on the same queue, holding nothing yet.
    async fn another(&self, name: &str) -> RedisStore {
        RedisStore::connect(self.options(name)).await.unwrap()
    }

    /// Keys expire on the server's clock: wait the TTL out.
    async fn after_ttl(&self, first_ms: u64, ttl: Duration) -> u64 {
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        first_ms + u64::try_from(ttl.as_millis()).unwrap()
    }
}

contract_tests!(Redis:
    accept_pending_in_flight_delivered,
    retry_keeps_attempts_and_schedule,
    finished_messages_refuse_further_transitions,
    idempotency_key_returns_the_first_id_within_its_ttl,
    dead_letters_list_retry_and_purge,
    dead_letters_page_past_many_letters_and_limits,
    an_oversized_message_is_refused_alone,
    empty_batch_touches_nothing,
);

#[tokio::test]
async fn readdress_follows_a_migrated_group() {
    let (_server, store) = contract::readdress_follows_a_migrated_group::<Redis>().await;
    // It stays in the partition it was accepted into.
    let pending = store.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    let id = pending[0].id;
    let home = store.partition_of(&ChatRef::Id(-42));
    let loaded = store.pending_in(home).await.unwrap();
    assert_eq!(loaded.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_of_one_key_from_two_agents_store_one_message() {
    contract::concurrent_accepts_of_one_key_store_one_message::<Redis>().await;
}

#[tokio::test]
async fn cleanup_removes_old_deliveries() {
    contract::cleanup_removes_old_deliveries_and_expired_keys::<Redis>().await;
}

#[tokio::test]
async fn accepted_messages_survive_a_redis_restart() {
    let mut server = start(Persistence::AofAlways);
    let store = RedisStore::connect(RedisOptions {
        lease_ttl: Duration::from_millis(300),
        ..options(&server, "crashed")
    })
    .await
    .unwrap();
    take_all(&store).await;
    let ids: Vec<MessageId> = store
        .accept(vec![sample_new(1), sample_new(2), keyed(3, "k")], 1)
        .await
        .into_iter()
        .map(|a| a.unwrap().id)
        .collect();
    store.mark_in_flight(ids[0], "p".into(), 2).await.unwrap();
    store
        .record_dead_letter(ids[1], attempt(3, "permanent"), "bad".into())
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    drop(store);

    server.restart().expect("restart redis-server");
    // The leases outlive the restart too; the next agent waits them out.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let store = connect(&server, "next").await;
    take_all(&store).await;
    let open: Vec<MessageId> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(open, [ids[0], ids[2]]);
    // The interrupted send came back as pending, durably.
    let m = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
    let dead = store.list_dead(DeadFilter::default()).await.unwrap();
    assert_eq!(dead[0].id, ids[1]);
    let after = store.stats().await.unwrap();
    assert_eq!(after.open_total(), before.open_total());
    assert_eq!(after.in_flight, 0);
    assert_eq!(after.dead, 1);
    // The idempotency key survived as well.
    let again = store.accept(vec![keyed(3, "k")], 4).await;
    assert_eq!(again[0].clone().unwrap().id, ids[2]);
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    Accept(i64, Priority),
    MarkInFlight(usize),
    Delivered(usize),
    Retry(usize),
    DeadLetter(usize),
    RetryDead(usize),
    Purge(usize),
    Readdress(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let pick = 0usize..16;
    prop_oneof![
        3 => (0i64..6, proptest::sample::select(Priority::ALL.to_vec()))
            .prop_map(|(chat, p)| Step::Accept(chat, p)),
        2 => pick.clone().prop_map(Step::MarkInFlight),
        1 => pick.clone().prop_map(Step::Delivered),
        1 => pick.clone().prop_map(Step::Retry),
        1 => pick.clone().prop_map(Step::DeadLetter),
        1 => pick.clone().prop_map(Step::RetryDead),
        1 => pick.clone().prop_map(Step::Purge),
        1 => pick.prop_map(Step::Readdress),
    ]
}

/// Whatever the history, the counters and indexes agree with the records:
/// stats equal the states of the messages, `pending` lists exactly the
/// open ones and `list_dead` exactly the dead ones.
#[test]
fn indexes_and_counters_follow_the_records_through_any_history() {
    use proptest::test_runner::{Config, TestRunner};
    let server = start(Persistence::None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let cases = std::sync::atomic::AtomicU32::new(0);
    let history = proptest::collection::vec(step(), 1..40);
    let result = runner.run(&history, |steps| {
        let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(async {
            let store = RedisStore::connect(RedisOptions {
                key_prefix: format!("case{case}"),
                ..options(&server, "solo")
            })
            .await
            .unwrap();
            take_all(&store).await;
            let mut ids: Vec<MessageId> = Vec::new();
            for (n, step) in steps.iter().enumerate() {
                let t = 10 + n as u64;
                let id = |i: &usize| ids.get(i % ids.len().max(1)).copied();
                // Refusals (wrong state, purged id) are part of the history.
                match step {
                    Step::Accept(chat, priority) => {
                        let m = NewMessage {
                            priority: *priority,
                            ..sample_new(*chat)
                        };
                        ids.push(accept_one(&store, m, t).await);
                    }
                    Step::MarkInFlight(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.mark_in_flight(id, "p".into(), t).await;
                        }
                    }
                    Step::Delivered(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.record_delivered(id, "p".into(), None, t).await;
                        }
                    }
                    Step::Retry(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.record_retry(id, attempt(t, "transient"), t + 5).await;
                        }
                    }
                    Step::DeadLetter(i) => {
                        if let Some(id) = id(i) {
                            let _ = store
                                .record_dead_letter(id, attempt(t, "permanent"), "r".into())
                                .await;
                        }
                    }
                    Step::RetryDead(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.retry_dead(DeadSelection::One(id)).await;
                        }
                    }
                    Step::Purge(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.purge_dead(DeadSelection::One(id)).await;
                        }
                    }
                    Step::Readdress(i) => {
                        if let Some(id) = id(i) {
                            let _ = store.readdress(id, ChatRef::Id(99)).await;
                        }
                    }
                }
            }
            let mut expected = crate::store::StoreStats::default();
            let mut open = Vec::new();
            let mut dead = Vec::new();
            for id in &ids {
                let Some(m) = store.get(*id).await.unwrap() else {
                    continue;
                };
                match m.state {
                    MessageState::Pending => {
                        expected.pending_by_priority[m.msg.priority.index()] += 1
                    }
                    MessageState::InFlight => expected.in_flight += 1,
                    MessageState::DeadLettered => expected.dead += 1,
                    MessageState::Delivered => expected.delivered_retained += 1,
                }
                if m.state.is_open() {
                    open.push(m.id);
                } else if m.state == MessageState::DeadLettered {
                    dead.push(m.id);
                }
            }
            open.sort();
            dead.sort();
            assert_eq!(store.stats().await.unwrap(), expected);
            let dead_listed: Vec<MessageId> = store
                .list_dead(DeadFilter::default())
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(dead_listed, dead);
            // Reloading turns in-flight messages into pending ones, so it
            // comes last.
            let listed: Vec<MessageId> = store
                .pending()
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(listed, open);
            assert_eq!(store.stats().await.unwrap().in_flight, 0);
        });
        Ok(())
    });
    result.unwrap();
}

/// Prints accept throughput and Redis memory per queued message; run with
/// `cargo test -- --ignored --nocapture measure_redis_queue` (add
/// `--release` for the client's real speed).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a test"]
async fn measure_redis_queue() {
    const TASKS: usize = 8;
    const BATCHES: usize = 125;
    const BATCH: usize = 100;
    let server = start(Persistence::AofEverySec);
    for keyed in [false, true] {
        let prefix = if keyed { "keyed" } else { "plain" };
        let store = RedisStore::connect(RedisOptions {
            key_prefix: prefix.into(),
            partitions: 64,
            ..options(&server, "bench")
        })
        .await
        .unwrap();
        let mut conn = store.conn().await.unwrap();
        let used = |info: String| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        let _: () = ::redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let before = used(
            ::redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await
                .unwrap(),
        );
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..BATCHES {
                    let batch = (0..BATCH)
                        .map(|i| NewMessage {
                            idempotency_key: keyed.then(|| format!("{task}-{b}-{i}")),
                            ..sample_new((task * BATCHES * BATCH + b * BATCH + i) as i64)
                        })
                        .collect();
                    for answer in store.accept(batch, 1).await {
                        answer.unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        let total = (TASKS * BATCHES * BATCH) as u64;
        let stats: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let evalsha = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("cmdstat_evalsha: none")
            .to_owned();
        let after_accept = used(
            ::redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await
                .unwrap(),
        );
        // A holder's load trims each partition's feed.
        take_all(&store).await;
        let after_load = used(
            ::redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await
                .unwrap(),
        );
        let sample = store.pending_in(0).await.unwrap().remove(0);
        let message_key = store.inner.keys.message(sample.id);
        let record: Vec<u8> = ::redis::cmd("GET")
            .arg(&message_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let usage: u64 = ::redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&message_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        println!(
            "{prefix}: {total} msgs ({TASKS} tasks x {BATCHES} batches of {BATCH}) in {elapsed:?} = {:.0} msg/s; {evalsha}",
            total as f64 / elapsed.as_secs_f64()
        );
        println!(
            "{prefix}: stored value {} B, its key {usage} B; used_memory per queued message: {:.0} B with the feed untrimmed, {:.0} B once a holder loaded it",
            record.len(),
            (after_accept - before) as f64 / total as f64,
            (after_load - before) as f64 / total as f64,
        );
    }
}
