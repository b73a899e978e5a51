//! The [`Store`] contract of `store/mod.rs` as one suite of tests, written
//! once and run against every backend: each backend's tests implement
//! [`Backend`] (how to start a fresh queue on it) and run the suite, by
//! name through [`contract_tests!`] or by hand where the backend checks
//! something of its own after the shared steps.
//!
//! The cases are the same on every backend where the contract allows the
//! same answers; where a backend may differ (who expires idempotency keys,
//! whose clock judges their TTL), [`Backend`] says how.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::engine::Priority;
use crate::store::record::tests::sample_new;
use crate::store::{
    Attempt, ChatRef, DeadFilter, DeadSelection, MessageId, MessageState, NewMessage, Store,
    StoreError,
};

/// What a fresh queue is opened with; `None` keeps the backend's default.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Settings {
    pub idempotency_ttl: Option<Duration>,
    pub max_record_bytes: Option<usize>,
}

/// A backend under the contract.
pub(crate) trait Backend: Sized {
    type S: Store + Clone + 'static;

    /// Whether `cleanup` removes expired idempotency keys (`false`: the
    /// backend expires them by itself).
    const SWEEPS_KEYS: bool;

    /// A fresh, empty queue, and one store on it that loads and delivers
    /// every message.
    async fn start(settings: Settings) -> (Self, Self::S);

    /// Another store on the same queue: another agent where the backend
    /// has several, else another handle on the same one.
    async fn another(&self, name: &str) -> Self::S;

    /// The `now_ms` to pass once `ttl` has run out for an idempotency key
    /// first seen at `first_ms`, judged by the backend's clock (the
    /// caller's `now_ms`, or the server's).
    async fn after_ttl(&self, first_ms: u64, ttl: Duration) -> u64;
}

pub(crate) fn keyed(chat: i64, key: &str) -> NewMessage {
    NewMessage {
        idempotency_key: Some(key.into()),
        ..sample_new(chat)
    }
}

pub(crate) fn attempt(at_ms: u64, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        tier: "primary".into(),
        outcome: outcome.into(),
        error: Some(format!("{outcome} error")),
    }
}

pub(crate) async fn accept_one(store: &impl Store, m: NewMessage, now_ms: u64) -> MessageId {
    let mut answers = store.accept(vec![m], now_ms).await;
    assert_eq!(answers.len(), 1);
    answers.remove(0).unwrap().id
}

/// Runs the named cases of the suite as `#[tokio::test]`s of the calling
/// module, against `$backend`.
macro_rules! contract_tests {
    ($backend:ty: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let _ = $crate::store::contract::$case::<$backend>().await;
            }
        )*
    };
}
pub(crate) use contract_tests;

/// Accept, load, mark in flight, deliver; a repeated report changes nothing.
pub(crate) async fn accept_pending_in_flight_delivered<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    (fx, store)
}

pub(crate) async fn retry_keeps_attempts_and_schedule<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    // The schedule survives a reload.
    let loaded = store.pending().await.unwrap();
    assert_eq!(loaded[0].next_attempt_ms, Some(2_000));
    (fx, store)
}

pub(crate) async fn finished_messages_refuse_further_transitions<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    (fx, store)
}

pub(crate) async fn readdress_follows_a_migrated_group<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
    let id = accept_one(&store, sample_new(-42), 1).await;
    store.readdress(id, ChatRef::Id(-100_042)).await.unwrap();
    let m = store.get(id).await.unwrap().unwrap();
    assert_eq!(m.msg.chat_id, ChatRef::Id(-100_042));
    assert_eq!(m.state, MessageState::Pending);
    (fx, store)
}

pub(crate) async fn idempotency_key_returns_the_first_id_within_its_ttl<C: Backend>() -> (C, C::S) {
    let ttl = Duration::from_millis(1_000);
    let (fx, store) = C::start(Settings {
        idempotency_ttl: Some(ttl),
        ..Settings::default()
    })
    .await;
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

    // An empty key is a key too.
    let empty = store.accept(vec![keyed(6, ""), keyed(7, "")], 900).await;
    assert_eq!(empty[0].clone().unwrap().id, empty[1].clone().unwrap().id);
    assert!(empty[1].clone().unwrap().duplicate_of);
    assert_eq!(store.pending().await.unwrap().len(), 4);

    // Still a duplicate after delivery.
    store
        .record_delivered(first.id, "p".into(), None, 950)
        .await
        .unwrap();
    let after = store.accept(vec![keyed(1, "k")], 999).await;
    assert_eq!(after[0].clone().unwrap().id, first.id);

    // Past the TTL (on the backend's clock) the key names a new message.
    let later_ms = fx.after_ttl(100, ttl).await;
    let later = store.accept(vec![keyed(1, "k")], later_ms).await;
    let later = later[0].clone().unwrap();
    assert!(!later.duplicate_of);
    assert_ne!(later.id, first.id);
    let again = store.accept(vec![keyed(1, "k")], later_ms + 100).await;
    assert_eq!(again[0].clone().unwrap().id, later.id);
    (fx, store)
}

/// Run on a multi-threaded runtime: the accepts race for real.
pub(crate) async fn concurrent_accepts_of_one_key_store_one_message<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
    let agents = [fx.another("a").await, fx.another("b").await];
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
    assert_eq!(store.pending().await.unwrap().len(), 1);
    (fx, store)
}

pub(crate) async fn dead_letters_list_retry_and_purge<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    (fx, store)
}

pub(crate) async fn dead_letters_page_past_many_letters_and_limits<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    (fx, store)
}

pub(crate) async fn cleanup_removes_old_deliveries_and_expired_keys<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
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
    // A backend that expires keys by itself has none to remove.
    assert_eq!(counts.idempotency_removed, u64::from(C::SWEEPS_KEYS));
    assert!(!counts.more);
    assert!(store.get(old).await.unwrap().is_none());
    assert!(store.get(young).await.unwrap().is_some());
    assert!(store.get(waiting).await.unwrap().is_some(), "never pending");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.delivered_retained, 1);

    // The expired key is free again; the young one still deduplicates.
    if C::SWEEPS_KEYS {
        let reused = store.accept(vec![keyed(1, "old")], 5_000).await;
        assert!(!reused[0].clone().unwrap().duplicate_of);
    }
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
    (fx, store)
}

pub(crate) async fn an_oversized_message_is_refused_alone<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings {
        max_record_bytes: Some(2_048),
        ..Settings::default()
    })
    .await;
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
    (fx, store)
}

pub(crate) async fn empty_batch_touches_nothing<C: Backend>() -> (C, C::S) {
    let (fx, store) = C::start(Settings::default()).await;
    assert!(store.accept(Vec::new(), 1).await.is_empty());
    assert_eq!(store.stats().await.unwrap(), Default::default());
    (fx, store)
}
