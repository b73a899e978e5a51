//! Import from an agent's spill, on a real `redis-server`: a spilled
//! message comes in once under its own id, whatever happened to the accept
//! the agent gave up on.

use super::Imported;
use super::server::Persistence;
use super::tests::{connect, keyed, start, take_all};
use crate::store::record::tests::sample_new;
use crate::store::{MessageId, MessageState, NewMessage, Store, StoredMessage};

fn spilled(id: MessageId, msg: NewMessage, created_ms: u64) -> StoredMessage {
    StoredMessage::accepted(id, msg, created_ms)
}

#[tokio::test]
async fn an_import_comes_in_once_under_its_own_id() {
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    // Spilled first, so older than what Redis accepts meanwhile.
    let old: Vec<MessageId> = (0..3).map(|_| MessageId::generate()).collect();
    let newer = store.accept(vec![sample_new(7)], 5_000).await;
    let newer = newer[0].as_ref().unwrap().id;

    let batch: Vec<StoredMessage> = old
        .iter()
        .map(|id| spilled(*id, sample_new(7), 1_000))
        .collect();
    let first = store.import(batch.clone()).await;
    assert!(first.iter().all(|r| r == &Ok(Imported::Added)), "{first:?}");
    let again = store.import(batch).await;
    let expected: Vec<_> = old
        .iter()
        .map(|id| Ok(Imported::AlreadyThere(*id)))
        .collect();
    assert_eq!(again, expected);

    let got = store.get(old[0]).await.unwrap().unwrap();
    assert_eq!(
        (got.id, got.created_ms, got.state),
        (old[0], 1_000, MessageState::Pending)
    );

    // The partition delivers in accept sequence: what Redis took first,
    // then the imports in spill order, each once.
    take_all(&store).await;
    let open: Vec<MessageId> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(open.len(), 4);
    let partition = store.partition_of(&sample_new(7).chat_id);
    let order: Vec<MessageId> = store
        .pending_in(partition)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(order, [newer, old[0], old[1], old[2]]);

    // Later accepts still get ids above every id in the partition.
    let later = store.accept(vec![sample_new(7)], 6_000).await;
    assert!(later[0].as_ref().unwrap().id > newer);
}

#[tokio::test]
async fn an_accept_applied_after_the_agent_gave_up_is_not_imported_again() {
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    let earlier = MessageId::generate();
    let later = MessageId::generate();
    // Another agent's newer id lands first, so this candidate is moved.
    let ahead = store.accept_as(vec![(later, sample_new(7))], 1_000).await;
    assert_eq!(ahead[0].as_ref().unwrap().id, later);
    let moved = store.accept_as(vec![(earlier, sample_new(7))], 1_000).await;
    let moved = moved[0].as_ref().unwrap().id;
    assert!(moved > later);

    // The agent never saw that answer and spilled the message as `earlier`.
    let answer = store
        .import(vec![spilled(earlier, sample_new(7), 1_000)])
        .await;
    assert_eq!(answer, [Ok(Imported::AlreadyThere(moved))]);
    // The id the agent handed out still finds the message.
    assert_eq!(store.get(earlier).await.unwrap().unwrap().id, moved);
    assert_eq!(store.stats().await.unwrap().open_total(), 2);
}

#[tokio::test]
async fn an_import_whose_key_was_taken_meanwhile_defers_to_that_message() {
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    let spilled_id = MessageId::generate();
    let taken = store.accept(vec![keyed(7, "order-1")], 1_000).await;
    let taken = taken[0].as_ref().unwrap().id;
    let answer = store
        .import(vec![spilled(spilled_id, keyed(7, "order-1"), 900)])
        .await;
    assert_eq!(answer, [Ok(Imported::DuplicateOf(taken))]);
    assert_eq!(store.get(spilled_id).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().open_total(), 1);

    // An imported key guards later accepts like any other.
    let fresh = MessageId::generate();
    let imported = store
        .import(vec![spilled(fresh, keyed(8, "order-2"), 900)])
        .await;
    assert_eq!(imported, [Ok(Imported::Added)]);
    let retried = store.accept(vec![keyed(8, "order-2")], 2_000).await;
    let retried = retried[0].as_ref().unwrap();
    assert!(retried.duplicate_of);
    assert_eq!(retried.id, fresh);
}
