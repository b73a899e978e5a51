//! Behaviour of the embedded store: the shared `Store` contract suite
//! (`store/contract.rs`) on real files in temporary directories, and what
//! only a file has (reopening, earlier builds' records, the file lock, the
//! spill's chosen ids).

use std::time::Duration;

use super::{EmbeddedOptions, EmbeddedStore};
use crate::engine::Priority;
pub(super) use crate::store::contract::attempt;
use crate::store::contract::{self, Backend, Settings, accept_one, contract_tests};
use crate::store::record::tests::sample_new;
use crate::store::{MessageId, MessageState, NewMessage, Store, StoreError};

pub(super) const DB_FILE: &str = "herald.redb";

pub(super) async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join(DB_FILE), EmbeddedOptions::default())
        .await
        .unwrap()
}

/// A store in a temporary directory, removed with it.
pub(super) struct Embedded {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
}

impl Backend for Embedded {
    type S = EmbeddedStore;

    const SWEEPS_KEYS: bool = true;

    async fn start(settings: Settings) -> (Self, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let defaults = EmbeddedOptions::default();
        let options = EmbeddedOptions {
            idempotency_ttl: settings.idempotency_ttl.unwrap_or(defaults.idempotency_ttl),
            max_record_bytes: settings
                .max_record_bytes
                .unwrap_or(defaults.max_record_bytes),
            ..defaults
        };
        let store = EmbeddedStore::open(dir.path().join(DB_FILE), options)
            .await
            .unwrap();
        let backend = Embedded {
            _dir: dir,
            store: store.clone(),
        };
        (backend, store)
    }

    /// One process owns the file: another store on it is another handle.
    async fn another(&self, _name: &str) -> EmbeddedStore {
        self.store.clone()
    }

    /// Keys expire on the caller's clock: no waiting.
    async fn after_ttl(&self, first_ms: u64, ttl: Duration) -> u64 {
        first_ms + u64::try_from(ttl.as_millis()).unwrap()
    }
}

contract_tests!(Embedded:
    retry_keeps_attempts_and_schedule,
    finished_messages_refuse_further_transitions,
    readdress_follows_a_migrated_group,
    idempotency_key_returns_the_first_id_within_its_ttl,
    dead_letters_list_retry_and_purge,
    dead_letters_page_past_many_letters_and_limits,
    cleanup_removes_old_deliveries_and_expired_keys,
    an_oversized_message_is_refused_alone,
    empty_batch_touches_nothing,
);

#[tokio::test]
async fn accept_pending_in_flight_delivered() {
    let (_dir, store) = contract::accept_pending_in_flight_delivered::<Embedded>().await;
    // One transaction per write call at most; the mark wrote nothing.
    let counts = store.commit_counts();
    assert_eq!(counts.jobs, 3);
    assert!(counts.batches <= 3);
    assert_eq!(counts.failed_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_of_one_key_store_one_message() {
    contract::concurrent_accepts_of_one_key_store_one_message::<Embedded>().await;
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
    // Its own error, so that a starting agent can tell it from a broken
    // file and wait for the other process to close it.
    assert!(matches!(second, Err(StoreError::Locked)));
    drop(store);
    drop(open(&dir).await);
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

#[tokio::test]
async fn the_latest_recorded_outcome_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.last_outcome_ms().await.unwrap(), None);
    let ids: Vec<MessageId> = store
        .accept(vec![sample_new(1), sample_new(2), sample_new(3)], 1)
        .await
        .into_iter()
        .map(|a| a.unwrap().id)
        .collect();
    // Accepts and in-flight marks are not outcomes.
    store.mark_in_flight(ids[0], "p".into(), 2).await.unwrap();
    assert_eq!(store.last_outcome_ms().await.unwrap(), None);
    store
        .record_delivered(ids[0], "p".into(), None, 5_000)
        .await
        .unwrap();
    assert_eq!(store.last_outcome_ms().await.unwrap(), Some(5_000));
    store
        .record_retry(ids[1], contract::attempt(7_000, "transient"), 8_000)
        .await
        .unwrap();
    assert_eq!(store.last_outcome_ms().await.unwrap(), Some(7_000));
    // An outcome stamped earlier (another thread's clock) never moves it back.
    store
        .record_dead_letter(ids[2], contract::attempt(6_000, "permanent"), "x".into())
        .await
        .unwrap();
    assert_eq!(store.last_outcome_ms().await.unwrap(), Some(7_000));
    drop(store);
    let store = open(&dir).await;
    assert_eq!(store.last_outcome_ms().await.unwrap(), Some(7_000));
}
