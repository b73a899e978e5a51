//! The Redis store against the contract in `store/mod.rs`, on a real
//! `redis-server` per test (the same cases as the embedded store's tests,
//! where the contract allows the same answers).
//!
//! A missing `redis-server` fails these tests; they never skip.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::server::{Persistence, RedisServer};
use super::{RedisOptions, RedisStore};
use crate::engine::Priority;
use crate::store::record::tests::sample_new;
use crate::store::{
    Attempt, ChatRef, DeadFilter, DeadSelection, MessageId, MessageState, NewMessage, Store,
    StoreError,
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

/// One agent alone, holding every partition.
async fn sole_agent(server: &RedisServer) -> RedisStore {
    let store = connect(server, "solo").await;
    take_all(&store).await;
    store
}

pub(super) fn keyed(chat: i64, key: &str) -> NewMessage {
    NewMessage {
        idempotency_key: Some(key.into()),
        ..sample_new(chat)
    }
}

pub(super) fn attempt(at_ms: u64, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        tier: "primary".into(),
        outcome: outcome.into(),
        error: Some(format!("{outcome} error")),
    }
}

pub(super) async fn accept_one(store: &RedisStore, m: NewMessage, now_ms: u64) -> MessageId {
    let mut answers = store.accept(vec![m], now_ms).await;
    assert_eq!(answers.len(), 1);
    answers.remove(0).unwrap().id
}

#[tokio::test]
async fn accept_pending_in_flight_delivered() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let answers = store
        .accept(vec![sample_new(1), sample_new(2), sample_new(3)], 100)
        .await;
    let ids: Vec<MessageId> = answers.into_iter().map(|a| a.unwrap().id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids sort by creation");

    let pending = store.pending().await.unwrap();
    assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(pending.iter().all(|m| m.state == MessageState::Pending));
    assert_eq!(pending[1].msg, sample_new(2));
    assert_eq!(pending[1].created_ms, 100);

    store
        .mark_in_flight(ids[0], "primary".into(), 110)
        .await
        .unwrap();
    let m = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::InFlight);
    assert_eq!(m.in_flight_tier.as_deref(), Some("primary"));
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 1);
    assert_eq!(stats.pending_by_priority[Priority::Normal.index()], 2);

    let receipt = json!({"message_id": 42});
    store
        .record_delivered(ids[0], "primary".into(), Some(receipt.clone()), 120)
        .await
        .unwrap();
    let m = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Delivered);
    assert_eq!(m.receipt, Some(receipt));
    assert_eq!(m.delivered_tier.as_deref(), Some("primary"));
    assert_eq!(m.in_flight_tier, None);
    assert_eq!(m.attempts.len(), 1);
    assert_eq!(m.attempts[0].outcome, "delivered");

    // A repeated delivery report (after a crash, say) changes nothing.
    store
        .record_delivered(ids[0], "other".into(), None, 130)
        .await
        .unwrap();
    assert_eq!(store.get(ids[0]).await.unwrap().unwrap(), m);

    assert_eq!(store.pending().await.unwrap().len(), 2);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.delivered_retained, 1);
    assert_eq!(stats.open_total(), 2);
    assert!(store.get(MessageId::generate()).await.unwrap().is_none());
}

#[tokio::test]
async fn retry_keeps_attempts_and_schedule() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let m = NewMessage {
        not_before: Some(500),
        priority: Priority::High,
        ..sample_new(1)
    };
    let id = accept_one(&store, m, 100).await;
    assert_eq!(
        store.get(id).await.unwrap().unwrap().next_attempt_ms,
        Some(500)
    );
    store
        .mark_in_flight(id, "primary".into(), 500)
        .await
        .unwrap();
    store
        .record_retry(id, attempt(510, "transient"), 2_000)
        .await
        .unwrap();
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.next_attempt_ms, Some(2_000));
    assert_eq!(m.attempts, vec![attempt(510, "transient")]);
    assert_eq!(m.updated_ms, 510);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending_by_priority[Priority::High.index()], 1);
    assert_eq!(stats.in_flight, 0);
    // The schedule survives a reload by the next holder.
    let loaded = store.pending().await.unwrap();
    assert_eq!(loaded[0].next_attempt_ms, Some(2_000));
}

#[tokio::test]
async fn finished_messages_refuse_further_transitions() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let id = accept_one(&store, sample_new(1), 1).await;
    store
        .record_dead_letter(id, attempt(2, "permanent"), "bad request".into())
        .await
        .unwrap();
    let refused = store.mark_in_flight(id, "primary".into(), 3).await;
    assert!(matches!(
        refused,
        Err(StoreError::InvalidState {
            state: MessageState::DeadLettered,
            ..
        })
    ));
    assert!(
        store
            .record_delivered(id, "primary".into(), None, 3)
            .await
            .is_err()
    );
    assert!(store.readdress(id, ChatRef::Id(9)).await.is_err());
    assert!(
        store
            .record_retry(id, attempt(3, "transient"), 9)
            .await
            .is_err()
    );
    let unknown = MessageId::generate();
    assert_eq!(
        store.mark_in_flight(unknown, "p".into(), 1).await,
        Err(StoreError::NotFound(unknown))
    );
    assert!(matches!(
        store.retry_dead(DeadSelection::One(unknown)).await,
        Err(StoreError::NotFound(_))
    ));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.dead, stats.open_total()), (1, 0));
}

#[tokio::test]
async fn readdress_follows_a_migrated_group() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let id = accept_one(&store, sample_new(-42), 1).await;
    store.readdress(id, ChatRef::Id(-100_042)).await.unwrap();
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.msg.chat_id, ChatRef::Id(-100_042));
    assert_eq!(m.state, MessageState::Pending);
    // It stays in the partition it was accepted into.
    let home = store.partition_of(&ChatRef::Id(-42));
    let loaded = store.pending_in(home).await.unwrap();
    assert_eq!(loaded.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_id_within_its_ttl() {
    let server = start(Persistence::None);
    let ttl = Duration::from_millis(300);
    let store = RedisStore::connect(RedisOptions {
        idempotency_ttl: ttl,
        ..options(&server, "solo")
    })
    .await
    .unwrap();
    take_all(&store).await;
    let first = store.accept(vec![keyed(1, "k")], 100).await;
    let first = first[0].clone().unwrap();
    assert!(!first.duplicate_of);

    let again = store
        .accept(vec![keyed(2, "k"), keyed(3, "other")], 101)
        .await;
    assert_eq!(again[0].clone().unwrap().id, first.id);
    assert!(again[0].clone().unwrap().duplicate_of);
    assert!(!again[1].clone().unwrap().duplicate_of);

    // The same key twice in one batch is one message.
    let twice = store.accept(vec![keyed(4, "z"), keyed(5, "z")], 102).await;
    let (a, b) = (twice[0].clone().unwrap(), twice[1].clone().unwrap());
    assert_eq!(a.id, b.id);
    assert!(!a.duplicate_of && b.duplicate_of);
    assert_eq!(store.pending().await.unwrap().len(), 3);

    // An empty key is a key too.
    let empty = store.accept(vec![keyed(6, ""), keyed(7, "")], 102).await;
    assert_eq!(empty[0].clone().unwrap().id, empty[1].clone().unwrap().id);
    assert!(empty[1].clone().unwrap().duplicate_of);
    assert_eq!(store.pending().await.unwrap().len(), 4);

    // Still a duplicate after delivery.
    store
        .record_delivered(first.id, "p".into(), None, 103)
        .await
        .unwrap();
    let after = store.accept(vec![keyed(1, "k")], 104).await;
    assert_eq!(after[0].clone().unwrap().id, first.id);

    // Past the TTL (on the server's clock) the key names a new message.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let later = store.accept(vec![keyed(1, "k")], 105).await;
    let later = later[0].clone().unwrap();
    assert!(!later.duplicate_of);
    assert_ne!(later.id, first.id);
    let again = store.accept(vec![keyed(1, "k")], 106).await;
    assert_eq!(again[0].clone().unwrap().id, later.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_of_one_key_from_two_agents_store_one_message() {
    let server = start(Persistence::None);
    let agents = [connect(&server, "a").await, connect(&server, "b").await];
    let mut tasks = Vec::new();
    for chat in 0..16 {
        let store = agents[chat as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            store.accept(vec![keyed(chat, "race")], 10).await
        }));
    }
    let mut ids = HashSet::new();
    let mut originals = 0;
    for task in tasks {
        let answer = task.await.unwrap().remove(0).unwrap();
        ids.insert(answer.id);
        originals += usize::from(!answer.duplicate_of);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(originals, 1);
    take_all(&agents[0]).await;
    assert_eq!(agents[0].pending().await.unwrap().len(), 1);
}

#[tokio::test]
async fn dead_letters_list_retry_and_purge() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let mut ids = Vec::new();
    for (chat, bot) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        let m = NewMessage {
            bot: bot.into(),
            ..sample_new(chat)
        };
        ids.push(accept_one(&store, m, 1).await);
    }
    let reasons = [
        "blocked by user",
        "bad request",
        "blocked by user",
        "chat not found",
    ];
    for (id, reason) in ids.iter().zip(reasons) {
        store
            .record_dead_letter(*id, attempt(5, "permanent"), reason.into())
            .await
            .unwrap();
    }
    assert_eq!(store.stats().await.unwrap().dead, 4);
    assert!(store.pending().await.unwrap().is_empty());

    let all = store.list_dead(DeadFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0].attempts.len(), 1);
    assert_eq!(all[0].dead_reason.as_deref(), Some("blocked by user"));
    let blocked = store
        .list_dead(DeadFilter {
            reason_contains: Some("blocked".into()),
            ..DeadFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        blocked.iter().map(|m| m.id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    let page = store
        .list_dead(DeadFilter {
            bot: Some("b".into()),
            limit: Some(1),
            ..DeadFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, ids[2]);
    let next = store
        .list_dead(DeadFilter {
            bot: Some("b".into()),
            after: Some(page[0].id),
            ..DeadFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(next.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[3]]);

    // Retry one: back to pending, due now, attempts kept.
    let retried = store.retry_dead(DeadSelection::One(ids[1])).await.unwrap();
    assert_eq!(retried, [ids[1]]);
    let m = store.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.attempts.len(), 1);
    assert_eq!(m.dead_reason, None);
    assert_eq!(m.next_attempt_ms, None);
    // A pending message is not a dead letter.
    assert!(matches!(
        store.purge_dead(DeadSelection::One(ids[1])).await,
        Err(StoreError::InvalidState { .. })
    ));

    // Retry by filter.
    let filter = DeadFilter {
        bot: Some("b".into()),
        reason_contains: Some("not found".into()),
        ..DeadFilter::default()
    };
    let retried = store
        .retry_dead(DeadSelection::Filter(filter))
        .await
        .unwrap();
    assert_eq!(retried, [ids[3]]);

    // Purge the rest.
    assert_eq!(store.purge_dead(DeadSelection::All).await.unwrap(), 2);
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert!(
        store
            .list_dead(DeadFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.dead, 0);
    assert_eq!(stats.open_total(), 2);
    let open: Vec<MessageId> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(open, [ids[1], ids[3]]);
}

#[tokio::test]
async fn dead_letters_page_past_many_letters_and_limits() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    // More than one index page (256), to walk the paging.
    let batch: Vec<NewMessage> = (0..300).map(sample_new).collect();
    let ids: Vec<MessageId> = store
        .accept(batch, 1)
        .await
        .into_iter()
        .map(|a| a.unwrap().id)
        .collect();
    for id in &ids {
        store
            .record_dead_letter(*id, attempt(2, "permanent"), "gone".into())
            .await
            .unwrap();
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let listed = store.list_dead(DeadFilter::default()).await.unwrap();
    assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), sorted);
    let limited = DeadFilter {
        limit: Some(270),
        ..DeadFilter::default()
    };
    let retried = store
        .retry_dead(DeadSelection::Filter(limited))
        .await
        .unwrap();
    assert_eq!(retried, sorted[..270]);
    assert_eq!(store.purge_dead(DeadSelection::All).await.unwrap(), 30);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.dead, 0);
    assert_eq!(stats.pending_by_priority[Priority::Normal.index()], 270);
}

#[tokio::test]
async fn cleanup_removes_old_deliveries() {
    let server = start(Persistence::None);
    let store = sole_agent(&server).await;
    let old = accept_one(&store, keyed(1, "old"), 1_000).await;
    let young = accept_one(&store, keyed(2, "young"), 5_000).await;
    let waiting = accept_one(&store, sample_new(3), 1_000).await;
    store
        .record_delivered(old, "p".into(), None, 2_000)
        .await
        .unwrap();
    store
        .record_delivered(young, "p".into(), None, 6_000)
        .await
        .unwrap();

    let retention = Duration::from_millis(3_000);
    let ttl = Duration::from_millis(4_000);
    let counts = store.cleanup(5_000, retention, ttl).await.unwrap();
    assert_eq!(counts.delivered_removed, 1);
    // Redis expires idempotency keys itself.
    assert_eq!(counts.idempotency_removed, 0);
    assert!(!counts.more);
    assert!(store.get(old).await.unwrap().is_none());
    assert!(store.get(young).await.unwrap().is_some());
    assert!(store.get(waiting).await.unwrap().is_some(), "never pending");
    assert_eq!(store.stats().await.unwrap().delivered_retained, 1);

    // Nothing left to do at the same time; a clock before the retention
    // window removes nothing either.
    let counts = store.cleanup(5_000, retention, ttl).await.unwrap();
    assert_eq!(counts.delivered_removed, 0);
    let counts = store.cleanup(10, retention, ttl).await.unwrap();
    assert_eq!(counts.delivered_removed, 0);
}

#[tokio::test]
async fn an_oversized_message_is_refused_alone() {
    let server = start(Persistence::None);
    let store = RedisStore::connect(RedisOptions {
        max_record_bytes: 2_048,
        ..options(&server, "solo")
    })
    .await
    .unwrap();
    take_all(&store).await;
    let mut big = keyed(2, "big");
    big.params.insert("text".into(), json!("x".repeat(4_096)));
    let answers = store
        .accept(vec![sample_new(1), big, sample_new(3)], 1)
        .await;
    assert!(answers[0].is_ok() && answers[2].is_ok());
    assert!(matches!(answers[1], Err(StoreError::TooLarge { .. })));
    assert_eq!(store.pending().await.unwrap().len(), 2);
    // The refused message's key was not taken.
    let retry = store.accept(vec![keyed(2, "big")], 2).await;
    assert!(!retry[0].clone().unwrap().duplicate_of);
    // A transition that would grow a record past the limit is refused too.
    let id = answers[0].clone().unwrap().id;
    let huge = Attempt {
        error: Some("e".repeat(4_096)),
        ..attempt(3, "transient")
    };
    assert!(matches!(
        store.record_retry(id, huge, 10).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.get(id).await.unwrap().unwrap().attempts.len(), 0);
}

#[tokio::test]
async fn empty_batch_touches_nothing() {
    let server = start(Persistence::None);
    let store = connect(&server, "solo").await;
    assert!(store.accept(Vec::new(), 1).await.is_empty());
    assert_eq!(store.stats().await.unwrap(), Default::default());
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
        let mut conn = store.conn();
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
