//! Behaviour of the embedded store against the contract in `store/mod.rs`,
//! on real files in temporary directories.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::{EmbeddedOptions, EmbeddedStore};
use crate::engine::Priority;
use crate::store::record::tests::sample_new;
use crate::store::{
    Attempt, ChatRef, DeadFilter, DeadSelection, MessageId, MessageState, NewMessage, Store,
    StoreError,
};

pub(super) const DB_FILE: &str = "herald.redb";

pub(super) async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join(DB_FILE), EmbeddedOptions::default())
        .await
        .unwrap()
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

pub(super) async fn accept_one(store: &EmbeddedStore, m: NewMessage, now_ms: u64) -> MessageId {
    let mut answers = store.accept(vec![m], now_ms).await;
    assert_eq!(answers.len(), 1);
    answers.remove(0).unwrap().id
}

#[tokio::test]
async fn accept_pending_in_flight_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let batch = vec![sample_new(1), sample_new(2), sample_new(3)];
    let answers = store.accept(batch, 100).await;
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

    let pending = store.pending().await.unwrap();
    assert_eq!(pending.len(), 2);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.delivered_retained, 1);
    assert_eq!(stats.open_total(), 2);
    assert!(store.get(MessageId::generate()).await.unwrap().is_none());
    // One transaction per write call at most; the mark wrote nothing.
    let counts = store.commit_counts();
    assert_eq!(counts.jobs, 3);
    assert!(counts.batches <= 3);
    assert_eq!(counts.failed_batches, 0);
}

#[tokio::test]
async fn retry_keeps_attempts_and_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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
}

#[tokio::test]
async fn finished_messages_refuse_further_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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
    let unknown = MessageId::generate();
    assert_eq!(
        store.mark_in_flight(unknown, "p".into(), 1).await,
        Err(StoreError::NotFound(unknown))
    );
    assert!(matches!(
        store.retry_dead(DeadSelection::One(unknown)).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn readdress_follows_a_migrated_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let id = accept_one(&store, sample_new(-42), 1).await;
    store.readdress(id, ChatRef::Id(-100_042)).await.unwrap();
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.msg.chat_id, ChatRef::Id(-100_042));
    assert_eq!(m.state, MessageState::Pending);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_id_within_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        idempotency_ttl: Duration::from_millis(1_000),
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path().join(DB_FILE), options)
        .await
        .unwrap();
    let first = store.accept(vec![keyed(1, "k")], 100).await;
    let first = first[0].clone().unwrap();
    assert!(!first.duplicate_of);

    let again = store
        .accept(vec![keyed(2, "k"), keyed(3, "other")], 900)
        .await;
    assert_eq!(again[0].clone().unwrap().id, first.id);
    assert!(again[0].clone().unwrap().duplicate_of);
    assert!(!again[1].clone().unwrap().duplicate_of);

    // The same key twice in one batch is one message.
    let twice = store.accept(vec![keyed(4, "z"), keyed(5, "z")], 900).await;
    let (a, b) = (twice[0].clone().unwrap(), twice[1].clone().unwrap());
    assert_eq!(a.id, b.id);
    assert!(!a.duplicate_of && b.duplicate_of);
    assert_eq!(store.pending().await.unwrap().len(), 3);

    // Still a duplicate after delivery.
    store
        .record_delivered(first.id, "p".into(), None, 950)
        .await
        .unwrap();
    let after = store.accept(vec![keyed(1, "k")], 999).await;
    assert_eq!(after[0].clone().unwrap().id, first.id);

    // Past the TTL the key names a new message.
    let later = store.accept(vec![keyed(1, "k")], 1_100).await;
    let later = later[0].clone().unwrap();
    assert!(!later.duplicate_of);
    assert_ne!(later.id, first.id);
    let again = store.accept(vec![keyed(1, "k")], 1_200).await;
    assert_eq!(again[0].clone().unwrap().id, later.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_of_one_key_store_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut tasks = Vec::new();
    for chat in 0..16 {
        let store = store.clone();
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
    assert_eq!(store.pending().await.unwrap().len(), 1);
}

#[tokio::test]
async fn dead_letters_list_retry_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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
}

#[tokio::test]
async fn reopen_turns_in_flight_back_into_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ids: Vec<MessageId> = store
        .accept(vec![sample_new(1), sample_new(2), sample_new(3)], 1)
        .await
        .into_iter()
        .map(|a| a.unwrap().id)
        .collect();
    store.mark_in_flight(ids[0], "p".into(), 2).await.unwrap();
    store.mark_in_flight(ids[1], "p".into(), 2).await.unwrap();
    store
        .record_delivered(ids[1], "p".into(), None, 3)
        .await
        .unwrap();
    // Reported as pending even before the reopen.
    let pending = store.pending().await.unwrap();
    assert!(pending.iter().all(|m| m.state == MessageState::Pending));
    drop(store);

    let store = open(&dir).await;
    let pending = store.pending().await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    let m = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.in_flight_tier, None);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.pending_by_priority[Priority::Normal.index()], 2);
    assert_eq!(stats.delivered_retained, 1);
}

#[tokio::test]
async fn cleanup_removes_old_deliveries_and_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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
    assert_eq!(counts.idempotency_removed, 1);
    assert!(!counts.more);
    assert!(store.get(old).await.unwrap().is_none());
    assert!(store.get(young).await.unwrap().is_some());
    assert!(store.get(waiting).await.unwrap().is_some(), "never pending");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.delivered_retained, 1);

    // The expired key is free again; the young one still deduplicates.
    let reused = store.accept(vec![keyed(1, "old")], 5_000).await;
    assert!(!reused[0].clone().unwrap().duplicate_of);
    let dup = store.accept(vec![keyed(2, "young")], 5_000).await;
    assert_eq!(dup[0].clone().unwrap().id, young);

    // Nothing left to do at the same time; a clock before the retention
    // window removes nothing either.
    let counts = store.cleanup(5_000, retention, ttl).await.unwrap();
    assert_eq!(
        (counts.delivered_removed, counts.idempotency_removed),
        (0, 0)
    );
    let counts = store.cleanup(10, retention, ttl).await.unwrap();
    assert_eq!(
        (counts.delivered_removed, counts.idempotency_removed),
        (0, 0)
    );
}

#[tokio::test]
async fn an_oversized_message_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        max_record_bytes: 2_048,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path().join(DB_FILE), options)
        .await
        .unwrap();
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
}

#[tokio::test]
async fn a_record_left_in_flight_by_an_earlier_build_opens_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let store = open(&dir).await;
    let id = accept_one(&store, sample_new(1), 1).await;
    drop(store);
    // What builds before the in-memory marks wrote at every send.
    {
        use super::layout;
        use crate::store::record;
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut messages = txn.open_table(layout::MESSAGES).unwrap();
            let mut m = layout::load(&messages, id).unwrap().unwrap();
            m.state = MessageState::InFlight;
            m.in_flight_tier = Some("primary".into());
            let bytes = record::encode(&m).unwrap();
            messages.insert(id.as_u128(), bytes.as_slice()).unwrap();
            let mut counters = txn.open_table(layout::COUNTERS).unwrap();
            counters.insert("pending.normal", 0).unwrap();
            counters.insert("in_flight", 1).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = open(&dir).await;
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.in_flight_tier, None);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.pending_by_priority[Priority::Normal.index()], 1);
    // And it is open to a new send.
    store.mark_in_flight(id, "p".into(), 2).await.unwrap();
    assert_eq!(store.stats().await.unwrap().in_flight, 1);
}

#[tokio::test]
async fn quick_repair_stores_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        quick_repair: true,
        ..EmbeddedOptions::default()
    };
    let path = dir.path().join(DB_FILE);
    let store = EmbeddedStore::open(&path, options).await.unwrap();
    let id = accept_one(&store, sample_new(1), 1).await;
    store.mark_in_flight(id, "p".into(), 2).await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(&path, options).await.unwrap();
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.state, MessageState::Pending);
}

#[tokio::test]
async fn the_file_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let second = EmbeddedStore::open(dir.path().join(DB_FILE), EmbeddedOptions::default()).await;
    assert!(matches!(second, Err(StoreError::Storage(_))));
    drop(store);
    drop(open(&dir).await);
}

#[tokio::test]
async fn empty_batch_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert!(store.accept(Vec::new(), 1).await.is_empty());
    assert_eq!(store.stats().await.unwrap(), Default::default());
}

/// Prints accept throughput; run with
/// `cargo test --release -- --ignored --nocapture measure_accept_throughput`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a test"]
async fn measure_accept_throughput() {
    // One task alone pays one fsync per accept: the baseline group commit beats.
    for (tasks, per_call, calls_per_task) in [(1i64, 1usize, 200usize), (64, 1, 200), (64, 100, 20)]
    {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let started = std::time::Instant::now();
        let mut handles = Vec::new();
        for task in 0..tasks {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for call in 0..calls_per_task {
                    let batch = (0..per_call)
                        .map(|i| NewMessage {
                            idempotency_key: Some(format!("{task}-{call}-{i}")),
                            ..sample_new(task)
                        })
                        .collect();
                    for answer in store.accept(batch, 1).await {
                        answer.unwrap();
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        let elapsed = started.elapsed();
        let total = tasks as usize * per_call * calls_per_task;
        let counts = store.commit_counts();
        println!(
            "{tasks} tasks x {calls_per_task} accepts of {per_call}: {total} msgs in {elapsed:?} \
             = {:.0} msg/s; {} commits, {:.1} accepts/commit",
            total as f64 / elapsed.as_secs_f64(),
            counts.batches,
            counts.jobs as f64 / counts.batches as f64,
        );
    }
}

#[tokio::test]
async fn chosen_ids_pages_and_removal_for_the_spill() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ids: Vec<MessageId> = (0..3).map(|_| MessageId::generate()).collect();
    let keyed = NewMessage {
        idempotency_key: Some("k".into()),
        ..sample_new(3)
    };
    let batch = vec![
        (ids[0], sample_new(1)),
        (ids[1], sample_new(2)),
        (ids[2], keyed.clone()),
    ];
    let answers = store.accept_as(batch, 100).await;
    let got: Vec<MessageId> = answers.iter().map(|a| a.as_ref().unwrap().id).collect();
    assert_eq!(got, ids, "the chosen ids are kept");
    // The same id again is refused; a known key answers the first id.
    let again = store.accept_as(vec![(ids[0], sample_new(1))], 200).await;
    assert!(matches!(again[0], Err(StoreError::InvalidState { .. })));
    let dup = store
        .accept_as(vec![(MessageId::generate(), keyed.clone())], 200)
        .await;
    assert_eq!(dup[0].as_ref().unwrap().id, ids[2]);
    assert!(dup[0].as_ref().unwrap().duplicate_of);

    let first = store.open_page(None, 2).await.unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..2]);
    let rest = store.open_page(Some(ids[1]), 10).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[2..]);

    assert_eq!(
        store
            .remove(vec![ids[0], ids[2], MessageId::generate()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.stats().await.unwrap().open_total(), 1);
    assert!(store.get(ids[2]).await.unwrap().is_none());
    // The key outlives its record until it expires.
    let after = store.accept(vec![keyed], 300).await;
    assert!(after[0].as_ref().unwrap().duplicate_of);
}
