//! The [`Store`] contract on Redis: accept, the delivery-side transitions,
//! reads, stats and cleanup.
//!
//! Owns: mapping each `Store` method onto the scripts. Leaves to siblings:
//! dead-letter operations (`dead.rs`), the read–decide–write cycle
//! (`write.rs`), loading partitions (`feed.rs`).
//!
//! Which writes are fenced: `mark_in_flight`, `record_delivered`,
//! `record_retry`, `record_dead_letter` and `readdress` succeed only for
//! the current holder of the message's partition lease
//! ([`StoreError::Fenced`] otherwise, with nothing written). `accept` and
//! the operator's actions (`retry_dead`, `purge_dead`, `cleanup`) need no
//! lease.
//!
//! Durability: an answer means Redis applied the whole change; whether it
//! survives a crash of the Redis host is Redis's persistence setting (see
//! [`super::Durability`] and docs/decisions.md, "Redis queue layout").

use std::time::Duration;

use ::redis::Value;

use super::keys::{id_hex, parse_id, partition_of, split_stored};
use super::reply::{bad_reply, millis, redis_error, reply_bytes, reply_int};
use super::rules::{self, SLOTS, slot_of};
use super::store::RedisStore;
use super::write::Fence;
use crate::store::record::{self, ChatRef, MessageId, MessageState, NewMessage, StoredMessage};
use crate::store::{
    Accepted, Attempt, CleanupCounts, DeadFilter, DeadSelection, Store, StoreError, StoreStats,
};

/// One message's arguments to `lua/accept.lua`: partition, id, marked
/// idempotency key, record, stats slot.
type NewArgs = (u32, String, String, Vec<u8>, &'static str);

/// Delivered messages one `cleanup` call removes at most, so one script
/// never holds Redis for long.
const CLEANUP_BATCH: usize = 2_000;

impl Store for RedisStore {
    /// One script call for the whole batch: one round trip, applied whole.
    /// Ids grow in accept order within each partition, whatever the agents'
    /// clocks say (see `lua/accept.lua`).
    async fn accept(
        &self,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        let batch = batch
            .into_iter()
            .map(|msg| (MessageId::generate(), msg))
            .collect();
        self.accept_as(batch, now_ms).await
    }

    /// The open messages of the partitions this handle holds (see
    /// [`RedisStore::pending_in`], which this runs for each), oldest id
    /// first. Holding no partition, it answers nothing.
    async fn pending(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let mut found = Vec::new();
        for (partition, _) in self.held() {
            found.extend(self.pending_in(partition).await?);
        }
        found.sort_by_key(|m| m.id);
        Ok(found)
    }

    /// A candidate id that accept moved (see [`RedisStore::import`]) is
    /// followed to the id it got, so an id the spill handed out still finds
    /// its message.
    async fn get(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        let (stored, alias): (Option<Vec<u8>>, Option<Vec<u8>>) = ::redis::pipe()
            .cmd("GET")
            .arg(self.inner.keys.message(id))
            .cmd("GET")
            .arg(self.inner.keys.alias(id))
            .query_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        let (id, stored) = match (stored, alias) {
            (Some(stored), _) => (id, Some(stored)),
            (None, Some(to)) => {
                let to = parse_id(&to)?;
                let stored: Option<Vec<u8>> = ::redis::cmd("GET")
                    .arg(self.inner.keys.message(to))
                    .query_async(&mut self.conn().await?)
                    .await
                    .map_err(redis_error)?;
                (to, stored)
            }
            (None, None) => (id, None),
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        record::decode(id, split_stored(id, &stored)?.1)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { id, source })
    }

    async fn mark_in_flight(
        &self,
        id: MessageId,
        tier: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.change(id, Fence::Holder, |m| {
            rules::mark_in_flight(m, &tier, now_ms).map(Some)
        })
        .await
        .map(drop)
    }

    async fn record_delivered(
        &self,
        id: MessageId,
        tier: String,
        receipt: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.settle(id, |m| rules::record_delivered(m, &tier, &receipt, now_ms))
            .await
    }

    async fn record_retry(
        &self,
        id: MessageId,
        attempt: Attempt,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        self.change(id, Fence::Holder, |m| {
            rules::record_retry(m, &attempt, next_attempt_ms).map(Some)
        })
        .await
        .map(drop)
    }

    async fn record_dead_letter(
        &self,
        id: MessageId,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), StoreError> {
        self.settle(id, |m| {
            rules::record_dead_letter(m, &attempt, &reason).map(Some)
        })
        .await
    }

    /// The message stays in the partition it was accepted into, so messages
    /// accepted earlier for the old chat keep their order with it; messages
    /// accepted later for the new chat may sit in another partition.
    async fn readdress(&self, id: MessageId, new_chat: ChatRef) -> Result<(), StoreError> {
        self.change(id, Fence::Holder, |m| {
            rules::readdress(m, &new_chat).map(Some)
        })
        .await
        .map(drop)
    }

    async fn list_dead(&self, filter: DeadFilter) -> Result<Vec<StoredMessage>, StoreError> {
        self.scan_dead(&filter).await
    }

    async fn retry_dead(&self, selection: DeadSelection) -> Result<Vec<MessageId>, StoreError> {
        self.act_on_dead(selection, rules::retry_dead).await
    }

    async fn purge_dead(&self, selection: DeadSelection) -> Result<u64, StoreError> {
        let purged = self.act_on_dead(selection, rules::purge_dead).await?;
        Ok(purged.len() as u64)
    }

    /// Removes delivered messages; idempotency keys need no pass here —
    /// Redis expires each key `idempotency_ttl` after its first accept — so
    /// `idempotency_removed` is always 0 and `idempotency_ttl` is unused.
    async fn cleanup(
        &self,
        now_ms: u64,
        delivered_retention: Duration,
        _idempotency_ttl: Duration,
    ) -> Result<CleanupCounts, StoreError> {
        let Some(cutoff) = now_ms.checked_sub(millis(delivered_retention)) else {
            return Ok(CleanupCounts::default());
        };
        let (removed, more): (u64, u64) = self
            .inner
            .scripts
            .cleanup
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(cutoff)
            .arg(CLEANUP_BATCH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        Ok(CleanupCounts {
            delivered_removed: removed,
            idempotency_removed: 0,
            more: more == 1,
        })
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (counts, dead, delivered): (Vec<Option<i64>>, u64, u64) = ::redis::pipe()
            .cmd("HMGET")
            .arg(self.inner.keys.stats())
            .arg(&SLOTS[..])
            .cmd("ZCARD")
            .arg(self.inner.keys.dead())
            .cmd("ZCARD")
            .arg(self.inner.keys.delivered())
            .query_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        let count = |slot: usize| {
            counts
                .get(slot)
                .copied()
                .flatten()
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
        };
        Ok(StoreStats {
            pending_by_priority: [count(0), count(1), count(2), count(3)],
            in_flight: count(4),
            dead,
            delivered_retained: delivered,
        })
    }
}

/// Whether a batch is new (`accept`) or comes back from an agent's spill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Accept,
    Import,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Accept => "a",
            Mode::Import => "i",
        }
    }
}

/// What the accept script found for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    New,
    /// Its idempotency key named an earlier message.
    ByKey,
    /// An import's message was already here (by id or alias).
    Itself,
}

/// How one spilled message fared on import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Added under its own id.
    Added,
    /// Redis already held it: an accept of it had been applied before the
    /// agent gave up waiting, or an earlier import got through.
    AlreadyThere(MessageId),
    /// Its idempotency key names another message, accepted while this one
    /// waited in the spill: that one is delivered instead.
    DuplicateOf(MessageId),
}

impl RedisStore {
    /// [`Store::accept`] under candidate ids the caller chose, so that a
    /// caller who spills the batch elsewhere when Redis does not answer can
    /// later import it under the same ids ([`RedisStore::import`]); a
    /// candidate Redis had to move leaves an alias behind for that.
    pub async fn accept_as(
        &self,
        batch: Vec<(MessageId, NewMessage)>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        let stored = batch
            .into_iter()
            .map(|(id, msg)| StoredMessage::accepted(id, msg, now_ms))
            .collect();
        self.write_new(stored, Mode::Accept)
            .await
            .into_iter()
            .map(|r| {
                r.map(|(id, found)| Accepted {
                    id,
                    duplicate_of: found != Found::New,
                })
            })
            .collect()
    }

    /// Brings spilled messages in under their own ids and accept times,
    /// once: a message Redis already holds (by id, by the alias of a moved
    /// candidate, or by idempotency key) is reported, not added again. The
    /// records must be pending (as the spill holds them).
    pub async fn import(&self, messages: Vec<StoredMessage>) -> Vec<Result<Imported, StoreError>> {
        self.write_new(messages, Mode::Import)
            .await
            .into_iter()
            .map(|r| {
                r.map(|(id, found)| match found {
                    Found::New => Imported::Added,
                    Found::Itself => Imported::AlreadyThere(id),
                    Found::ByKey => Imported::DuplicateOf(id),
                })
            })
            .collect()
    }

    async fn write_new(
        &self,
        batch: Vec<StoredMessage>,
        mode: Mode,
    ) -> Vec<Result<(MessageId, Found), StoreError>> {
        let mut answers: Vec<Option<Result<(MessageId, Found), StoreError>>> =
            Vec::with_capacity(batch.len());
        let mut args: Vec<NewArgs> = Vec::new();
        let mut sent = Vec::new();
        for stored in batch {
            let id = stored.id;
            let partition = partition_of(&stored.msg.chat_id, self.inner.partitions);
            // Marked, so that an empty key is still a key.
            let key = stored
                .msg
                .idempotency_key
                .as_ref()
                .map_or_else(String::new, |k| format!("={k}"));
            let slot =
                slot_of(MessageState::Pending, stored.msg.priority).unwrap_or("pending.normal");
            let refusal = match record::encode(&stored) {
                Err(source) => Some(StoreError::Corrupt { id, source }),
                Ok(bytes) if bytes.len() > self.inner.max_record_bytes => {
                    Some(StoreError::TooLarge {
                        size: bytes.len(),
                        max: self.inner.max_record_bytes,
                    })
                }
                Ok(bytes) => {
                    args.push((partition, id_hex(id), key, bytes, slot));
                    None
                }
            };
            if refusal.is_none() {
                sent.push(answers.len());
            }
            answers.push(refusal.map(Err));
        }
        if !args.is_empty() {
            match self.run_accept(&args, mode).await {
                Ok(accepted) => {
                    for (slot, answer) in sent.iter().zip(accepted) {
                        answers[*slot] = Some(answer);
                    }
                }
                Err(e) => {
                    for slot in &sent {
                        answers[*slot] = Some(Err(e.clone()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(bad_reply("accept"))))
            .collect()
    }
}

impl RedisStore {
    async fn run_accept(
        &self,
        args: &[NewArgs],
        mode: Mode,
    ) -> Result<Vec<Result<(MessageId, Found), StoreError>>, StoreError> {
        let mut call = self.inner.scripts.accept.prepare_invoke();
        call.arg(self.inner.keys.prefix())
            .arg(self.inner.idempotency_ttl_ms)
            .arg(args.len());
        for (partition, id, key, bytes, slot) in args {
            call.arg(partition)
                .arg(id)
                .arg(key)
                .arg(bytes)
                .arg(slot)
                .arg(mode.arg());
        }
        let reply: Vec<Value> = call
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        if reply.len() != args.len() * 2 {
            return Err(bad_reply("accept"));
        }
        reply
            .chunks(2)
            .map(|pair| {
                let id = parse_id(reply_bytes(&pair[0]).ok_or_else(|| bad_reply("accept"))?)?;
                let found = match reply_int(&pair[1]) {
                    Some(0) => Found::New,
                    Some(1) => Found::ByKey,
                    Some(2) => Found::Itself,
                    _ => return Err(bad_reply("accept")),
                };
                Ok(Ok((id, found)))
            })
            .collect()
    }
}
