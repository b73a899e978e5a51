//! The messages the loop holds: store ids mapped to the dispatcher's dense
//! ids, each message's record and its chain of store writes, and a queue
//! partition's messages taken in and out on the Redis store.

use tokio::task::JoinHandle;

use crate::engine::Priority;
use crate::engine::dispatch::QueuedMessage;
use crate::store::{Attempt, ChatRef, MessageId, StoredMessage};
use crate::telemetry::AttemptOf;

use super::DispatchLoop;
use super::held_params::HeldParams;

/// A stable negative key for a `@username` chat: usernames are channels or
/// public groups, so they get the (stricter) group limit.
fn chat_key(chat: &ChatRef) -> i64 {
    match chat {
        ChatRef::Id(id) => *id,
        ChatRef::Username(name) => {
            // FNV-1a over the lower-cased name, folded into a range no real
            // Telegram id uses (below -2^62).
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in name.to_ascii_lowercase().bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            -(1i64 << 62) - i64::try_from(h >> 2).unwrap_or(0)
        }
    }
}

/// What the loop keeps of a waiting message: what sending it, recording
/// its attempts, its metrics and its caller need. The rest of its record
/// (idempotency key, bot, receipt fields, ...) stays in the store; the
/// receipt is read back from there.
#[derive(Debug)]
pub(super) struct HeldRecord {
    pub(super) id: MessageId,
    pub(super) chat_id: ChatRef,
    pub(super) method: String,
    pub(super) correlation_id: String,
    pub(super) priority: Priority,
    pub(super) message_type: String,
    pub(super) created_ms: u64,
    pub(super) attempts: Vec<Attempt>,
    pub(super) wants_receipt: bool,
}

impl HeldRecord {
    fn of(m: StoredMessage) -> Self {
        HeldRecord {
            id: m.id,
            wants_receipt: m.msg.callback_url.is_some(),
            chat_id: m.msg.chat_id,
            method: m.msg.method,
            correlation_id: m.msg.correlation_id,
            priority: m.msg.priority,
            message_type: m.msg.message_type,
            created_ms: m.created_ms,
            attempts: m.attempts,
        }
    }

    pub(super) fn attempt_of(&self) -> AttemptOf<'_> {
        AttemptOf {
            id: self.id,
            correlation_id: &self.correlation_id,
            created_ms: self.created_ms,
            earlier: &self.attempts,
        }
    }
}

pub(super) struct Held {
    /// Boxed: the map of held messages keeps spare slots, so an inline
    /// record would cost up to twice its size with a large backlog.
    pub(super) msg: Box<HeldRecord>,
    pub(super) params: HeldParams,
    /// The last store write for this message, awaited before its next send.
    pub(super) persist: Option<JoinHandle<()>>,
    /// Its queue partition, on the Redis store (fixed at accept, even if
    /// the message is readdressed later).
    pub(super) partition: Option<u32>,
    /// Handed to a sink and not finished yet.
    pub(super) sending: bool,
}

/// Run `next` after `previous` finished.
pub(super) fn chain(
    previous: Option<JoinHandle<()>>,
    next: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(p) = previous {
            let _ = p.await;
        }
        next.await;
    })
}

impl DispatchLoop {
    pub(super) fn enqueue(&mut self, msgs: Vec<StoredMessage>) {
        let now = self.now();
        for mut m in msgs {
            if self.ids.contains_key(&m.id) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let ty = self.d.message_type(&m.msg.message_type);
            let not_before = m
                .next_attempt_ms
                .or(m.msg.not_before)
                .map(|ms| self.at_unix_ms(ms));
            let q = QueuedMessage {
                id,
                chat: chat_key(&m.msg.chat_id),
                priority: m.msg.priority,
                message_type: ty,
                enqueued_at: self.at_unix_ms(m.created_ms).min(now),
                not_before,
                attempts_so_far: u32::try_from(m.attempts.len()).unwrap_or(u32::MAX),
                first_attempt_at: m.attempts.first().map(|a| self.at_unix_ms(a.at_ms)),
            };
            if let Err(e) = self.d.enqueue(now, q) {
                tracing::error!(error = %e, "dispatcher refused a message");
                continue;
            }
            self.ids.insert(m.id, id);
            let partition = self
                .fleet
                .as_ref()
                .map(|f| f.store.partition_of(&m.msg.chat_id));
            self.held.insert(
                id,
                Held {
                    params: HeldParams::take(&mut m.msg.params),
                    msg: Box::new(HeldRecord::of(m)),
                    persist: None,
                    partition,
                    sending: false,
                },
            );
        }
    }

    /// The partition of message `id` when this agent may not send from it.
    pub(super) fn lapsed_partition(&self, id: u64) -> Option<u32> {
        let fleet = self.fleet.as_ref()?;
        let p = self.held.get(&id)?.partition?;
        (!fleet.store.may_send(p)).then_some(p)
    }

    /// Forgets the waiting messages of a partition another agent takes;
    /// those in flight finish here (their writes are fenced if late).
    pub(super) fn drop_partition(&mut self, partition: u32) -> usize {
        let ids: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.partition == Some(partition) && !h.sending)
            .map(|(&id, _)| id)
            .collect();
        for id in &ids {
            let _ = self.d.remove(*id);
            if let Some(h) = self.held.remove(id) {
                self.ids.remove(&h.msg.id);
            }
        }
        ids.len()
    }
}
