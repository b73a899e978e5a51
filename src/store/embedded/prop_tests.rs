//! Random operation sequences against a model: no accepted message is ever
//! lost, every state is the one the model predicts, and the counters, the
//! indexes and the records agree — across reopens too.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{DB_FILE, attempt};
use super::{EmbeddedOptions, EmbeddedStore};
use crate::engine::Priority;
use crate::store::record::tests::sample_new;
use crate::store::{
    ChatRef, DeadFilter, DeadSelection, MessageId, MessageState, NewMessage, Store, StoreStats,
};

const TTL_MS: u64 = 50;
const RETENTION_MS: u64 = 30;

#[derive(Clone, Debug)]
enum Op {
    Accept(Vec<(Option<u8>, Priority)>),
    MarkInFlight(usize),
    Deliver(usize),
    Retry(usize),
    DeadLetter(usize),
    Readdress(usize),
    RetryDeadOne(usize),
    RetryDeadAll,
    PurgeDeadOne(usize),
    Cleanup,
    Advance(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let message = (
        proptest::option::of(0u8..4),
        prop::sample::select(Priority::ALL.to_vec()),
    );
    prop_oneof![
        4 => proptest::collection::vec(message, 1..4).prop_map(Op::Accept),
        3 => any::<usize>().prop_map(Op::MarkInFlight),
        3 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Retry),
        2 => any::<usize>().prop_map(Op::DeadLetter),
        1 => any::<usize>().prop_map(Op::Readdress),
        1 => any::<usize>().prop_map(Op::RetryDeadOne),
        1 => Just(Op::RetryDeadAll),
        1 => any::<usize>().prop_map(Op::PurgeDeadOne),
        1 => Just(Op::Cleanup),
        // Steps of 10 ms land exactly on the TTL and retention edges.
        2 => (0u64..5).prop_map(|n| Op::Advance(n * 10)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Expected {
    state: MessageState,
    priority: Priority,
    /// When it was delivered, for retention.
    delivered_ms: u64,
    chat: ChatRef,
    attempts: usize,
}

#[derive(Default)]
struct Model {
    now: u64,
    /// Every message the store must still have, by id (so in id order).
    messages: BTreeMap<MessageId, Expected>,
    /// Every id ever accepted, in order, for picking targets.
    known: Vec<MessageId>,
    keys: HashMap<u8, (MessageId, u64)>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<MessageId> {
        (!self.known.is_empty()).then(|| self.known[i % self.known.len()])
    }

    fn is(&self, id: MessageId, pred: impl Fn(MessageState) -> bool) -> bool {
        self.messages.get(&id).is_some_and(|e| pred(e.state))
    }

    fn stats(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for e in self.messages.values() {
            match e.state {
                MessageState::Pending => s.pending_by_priority[e.priority.index()] += 1,
                MessageState::InFlight => s.in_flight += 1,
                MessageState::DeadLettered => s.dead += 1,
                MessageState::Delivered => s.delivered_retained += 1,
            }
        }
        s
    }
}

async fn open_at(dir: &tempfile::TempDir) -> EmbeddedStore {
    let options = EmbeddedOptions {
        idempotency_ttl: Duration::from_millis(TTL_MS),
        ..EmbeddedOptions::default()
    };
    EmbeddedStore::open(dir.path().join(DB_FILE), options)
        .await
        .unwrap()
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_at(&dir).await;
    let mut model = Model {
        now: 1_000,
        ..Model::default()
    };
    for op in ops {
        if let Op::Reopen = op {
            drop(store);
            store = open_at(&dir).await;
            for e in model.messages.values_mut() {
                if e.state == MessageState::InFlight {
                    e.state = MessageState::Pending;
                }
            }
        } else {
            apply(&store, &mut model, op).await?;
        }
        check(&store, &model).await?;
    }
    Ok(())
}

async fn apply(store: &EmbeddedStore, model: &mut Model, op: Op) -> Result<(), TestCaseError> {
    let now = model.now;
    let open = |s: MessageState| s.is_open();
    match op {
        Op::Accept(specs) => {
            let batch: Vec<NewMessage> = specs
                .iter()
                .map(|(key, priority)| NewMessage {
                    idempotency_key: key.map(|k| format!("key-{k}")),
                    priority: *priority,
                    ..sample_new(7)
                })
                .collect();
            let answers = store.accept(batch, now).await;
            prop_assert_eq!(answers.len(), specs.len());
            for ((key, priority), answer) in specs.into_iter().zip(answers) {
                let answer = answer.unwrap();
                let live = key
                    .and_then(|k| model.keys.get(&k))
                    .filter(|(_, seen)| seen + TTL_MS > now);
                match live {
                    Some((id, _)) => {
                        prop_assert!(answer.duplicate_of);
                        prop_assert_eq!(answer.id, *id);
                    }
                    None => {
                        prop_assert!(!answer.duplicate_of);
                        if let Some(k) = key {
                            model.keys.insert(k, (answer.id, now));
                        }
                        model.known.push(answer.id);
                        let expected = Expected {
                            state: MessageState::Pending,
                            priority,
                            delivered_ms: 0,
                            chat: ChatRef::Id(7),
                            attempts: 0,
                        };
                        model.messages.insert(answer.id, expected);
                    }
                }
            }
        }
        Op::MarkInFlight(i) | Op::Deliver(i) | Op::Retry(i) | Op::DeadLetter(i) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            let was_delivered = model.is(id, |s| s == MessageState::Delivered);
            let allowed = model.is(id, open);
            let (result, next) = match op {
                Op::MarkInFlight(_) => (
                    store.mark_in_flight(id, "p".into(), now).await,
                    MessageState::InFlight,
                ),
                Op::Deliver(_) => (
                    store.record_delivered(id, "p".into(), None, now).await,
                    MessageState::Delivered,
                ),
                Op::Retry(_) => (
                    store
                        .record_retry(id, attempt(now, "transient"), now + 5)
                        .await,
                    MessageState::Pending,
                ),
                _ => (
                    store
                        .record_dead_letter(id, attempt(now, "permanent"), "why".into())
                        .await,
                    MessageState::DeadLettered,
                ),
            };
            let no_op = was_delivered && next == MessageState::Delivered;
            prop_assert_eq!(result.is_ok(), allowed || no_op, "{:?}", result);
            if allowed && let Some(e) = model.messages.get_mut(&id) {
                e.state = next;
                if next != MessageState::InFlight {
                    e.attempts += 1;
                }
                if next == MessageState::Delivered {
                    e.delivered_ms = now;
                }
            }
        }
        Op::Readdress(i) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            let chat = ChatRef::Username(format!("@moved{i}"));
            let result = store.readdress(id, chat.clone()).await;
            prop_assert_eq!(result.is_ok(), model.is(id, open));
            if let (Ok(()), Some(e)) = (result, model.messages.get_mut(&id)) {
                e.chat = chat;
            }
        }
        Op::RetryDeadOne(i) | Op::PurgeDeadOne(i) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            let dead = model.is(id, |s| s == MessageState::DeadLettered);
            if matches!(op, Op::RetryDeadOne(_)) {
                let result = store.retry_dead(DeadSelection::One(id)).await;
                prop_assert_eq!(result.is_ok(), dead);
                if let Some(e) = model.messages.get_mut(&id).filter(|_| dead) {
                    e.state = MessageState::Pending;
                }
            } else {
                let result = store.purge_dead(DeadSelection::One(id)).await;
                prop_assert_eq!(result.ok(), dead.then_some(1));
                if dead {
                    model.messages.remove(&id);
                }
            }
        }
        Op::RetryDeadAll => {
            let ids = store.retry_dead(DeadSelection::All).await.unwrap();
            let mut expected = Vec::new();
            for (id, e) in &mut model.messages {
                if e.state == MessageState::DeadLettered {
                    e.state = MessageState::Pending;
                    expected.push(*id);
                }
            }
            prop_assert_eq!(ids, expected);
        }
        Op::Cleanup => {
            let retention = Duration::from_millis(RETENTION_MS);
            let ttl = Duration::from_millis(TTL_MS);
            let counts = store.cleanup(now, retention, ttl).await.unwrap();
            let before = model.messages.len();
            model.messages.retain(|_, e| {
                e.state != MessageState::Delivered || e.delivered_ms + RETENTION_MS > now
            });
            let keys_before = model.keys.len();
            model.keys.retain(|_, (_, seen)| *seen + TTL_MS > now);
            prop_assert_eq!(
                counts.delivered_removed as usize,
                before - model.messages.len()
            );
            prop_assert_eq!(
                counts.idempotency_removed as usize,
                keys_before - model.keys.len()
            );
        }
        Op::Advance(ms) => model.now += ms,
        Op::Reopen => unreachable!("handled by run"),
    }
    Ok(())
}

async fn check(store: &EmbeddedStore, model: &Model) -> Result<(), TestCaseError> {
    for (id, e) in &model.messages {
        let stored = store.get(*id).await.unwrap();
        prop_assert!(stored.is_some(), "accepted message {} was lost", id);
        let stored = stored.unwrap();
        prop_assert_eq!(stored.state, e.state, "{}", id);
        prop_assert_eq!(stored.msg.priority, e.priority);
        prop_assert_eq!(&stored.msg.chat_id, &e.chat);
        prop_assert_eq!(stored.attempts.len(), e.attempts);
    }
    for id in &model.known {
        if !model.messages.contains_key(id) {
            prop_assert!(store.get(*id).await.unwrap().is_none());
        }
    }
    prop_assert_eq!(store.stats().await.unwrap(), model.stats());
    let pending: Vec<MessageId> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    let expected: Vec<MessageId> = model
        .messages
        .iter()
        .filter(|(_, e)| e.state.is_open())
        .map(|(id, _)| *id)
        .collect();
    prop_assert_eq!(pending, expected);
    let dead: Vec<MessageId> = store
        .list_dead(DeadFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    let expected: Vec<MessageId> = model
        .messages
        .iter()
        .filter(|(_, e)| e.state == MessageState::DeadLettered)
        .map(|(id, _)| *id)
        .collect();
    prop_assert_eq!(dead, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_never_lose_an_accepted_message(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(ops))?;
    }
}
