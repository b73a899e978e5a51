//! Reading messages and writing their next states: the optimistic
//! read–decide–write cycle every state change of the Redis queue uses.
//!
//! Owns: the cycle. A message is read with its partition's lease in one
//! step (`read.lua`); a rule (`rules.rs`) decides the new record in Rust;
//! `transition.lua` writes it only if the message's version is unchanged
//! and, for the lease holder's writes, only while the lease still carries
//! this handle's token. Several messages can be written in one script, all
//! or none. Leaves to others: the rules themselves and which writes are
//! fenced (`queue.rs`, `dead.rs`, `feed.rs`).
//!
//! Invariant: a fenced write never changes anything once another agent has
//! taken the partition — the token check and the write are one script.

use ::redis::Value;

use super::keys::id_hex;
use super::reply::{bad_reply, redis_error, reply_int};
use super::rules::{Change, slot_of};
use super::store::RedisStore;
use crate::store::StoreError;
use crate::store::record::{self, MessageId, StoredMessage};

/// How often a write is retried when a message changed between its read
/// and its write. Only an operator's dead-letter action can race the
/// holder, so more than a couple of rounds means something is wrong.
pub(super) const WRITE_ROUNDS: usize = 8;

/// Whether a write must come from the partition's lease holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fence {
    /// Delivery-side writes: only the partition's current lease holder.
    Holder,
    /// Operator actions (dead letters): anyone.
    None,
}

/// One message's planned write.
pub(super) struct Write<'a> {
    pub old: &'a StoredMessage,
    /// The version the message had when `old` was read.
    pub version: &'a str,
    /// The holder's token for the message's partition; `None` unfenced.
    pub token: Option<u64>,
    pub change: Change,
}

/// What became of a [`RedisStore::write_all`]; on anything but `Written`
/// nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Written,
    /// The i-th message (from 0) no longer exists.
    Gone(usize),
    /// The i-th message's partition lease is not the writer's.
    Fenced(usize),
    /// The i-th message changed since it was read.
    Changed(usize),
}

/// One message as stored, with the lease of its partition.
struct Raw {
    record: Vec<u8>,
    version: String,
    partition: u32,
    lease_owner: String,
    lease_token: String,
}

impl RedisStore {
    /// Reads a message, asks `rule` what to write, and writes it. Answers
    /// whether anything was written (`rule` may answer `None`: nothing to
    /// do).
    pub(super) async fn change<F>(
        &self,
        id: MessageId,
        fence: Fence,
        mut rule: F,
    ) -> Result<bool, StoreError>
    where
        F: FnMut(&StoredMessage) -> Result<Option<Change>, StoreError>,
    {
        for _ in 0..WRITE_ROUNDS {
            let raw = self.read_raw(id).await?.ok_or(StoreError::NotFound(id))?;
            let token = match fence {
                Fence::Holder => Some(self.check_fence(&raw)?),
                Fence::None => None,
            };
            let old = record::decode(id, &raw.record)
                .map_err(|source| StoreError::Corrupt { id, source })?;
            let Some(change) = rule(&old)? else {
                return Ok(false);
            };
            let write = Write {
                old: &old,
                version: &raw.version,
                token,
                change,
            };
            match self.write_all(std::slice::from_ref(&write)).await? {
                Outcome::Written => return Ok(true),
                Outcome::Gone(_) => return Err(StoreError::NotFound(id)),
                Outcome::Fenced(_) => {
                    if let Some(token) = token {
                        self.lose(raw.partition, token);
                    }
                    return Err(StoreError::Fenced {
                        partition: raw.partition,
                    });
                }
                Outcome::Changed(_) => continue,
            }
        }
        Err(StoreError::Inconsistent(format!(
            "message {id} changed under each of {WRITE_ROUNDS} write attempts"
        )))
    }

    /// Writes all of `writes` in one script, or none of them. Records that
    /// would exceed the size limit refuse the whole call before anything
    /// is sent.
    pub(super) async fn write_all(&self, writes: &[Write<'_>]) -> Result<Outcome, StoreError> {
        let fenced = writes.iter().any(|w| w.token.is_some());
        let mut call = self.inner.scripts.transition.prepare_invoke();
        call.arg(self.inner.keys.prefix())
            .arg(if fenced {
                self.inner.agent_id.as_str()
            } else {
                ""
            })
            .arg(writes.len());
        for w in writes {
            let id = w.old.id;
            let bytes = match &w.change.new {
                Some(new) => {
                    let bytes =
                        record::encode(new).map_err(|source| StoreError::Corrupt { id, source })?;
                    if bytes.len() > self.inner.max_record_bytes {
                        return Err(StoreError::TooLarge {
                            size: bytes.len(),
                            max: self.inner.max_record_bytes,
                        });
                    }
                    bytes
                }
                None => Vec::new(),
            };
            let from = slot_of(w.old.state, w.old.msg.priority);
            let to = w
                .change
                .new
                .as_ref()
                .and_then(|new| slot_of(new.state, new.msg.priority));
            let (from, to) = if from == to { (None, None) } else { (from, to) };
            call.arg(id_hex(id))
                .arg(w.version)
                .arg(w.token.unwrap_or(0))
                .arg(bytes)
                .arg(from.unwrap_or(""))
                .arg(to.unwrap_or(""))
                .arg(w.change.moved.as_str())
                .arg(w.change.score_ms);
        }
        let answer: Vec<Value> = call
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        let at = || {
            answer
                .get(1)
                .and_then(reply_int)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < writes.len())
                .ok_or_else(|| bad_reply("transition"))
        };
        match answer.first().and_then(reply_int) {
            Some(1) => Ok(Outcome::Written),
            Some(0) => Ok(Outcome::Gone(at()?)),
            Some(-1) => Ok(Outcome::Fenced(at()?)),
            Some(-2) => Ok(Outcome::Changed(at()?)),
            _ => Err(bad_reply("transition")),
        }
    }

    /// This handle's token for the message's partition, if the lease read
    /// with the message still carries it; otherwise the lease is lost.
    fn check_fence(&self, raw: &Raw) -> Result<u64, StoreError> {
        let fenced = StoreError::Fenced {
            partition: raw.partition,
        };
        let token = self.token_of(raw.partition).ok_or(fenced.clone())?;
        if raw.lease_owner != self.inner.agent_id || raw.lease_token != token.to_string() {
            self.lose(raw.partition, token);
            return Err(fenced);
        }
        Ok(token)
    }

    async fn read_raw(&self, id: MessageId) -> Result<Option<Raw>, StoreError> {
        let answer: Option<(Vec<u8>, String, String, String, String)> = self
            .inner
            .scripts
            .read
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(id_hex(id))
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        let Some((record, version, partition, lease_owner, lease_token)) = answer else {
            return Ok(None);
        };
        let partition = partition.parse().map_err(|_| bad_reply("read"))?;
        Ok(Some(Raw {
            record,
            version,
            partition,
            lease_owner,
            lease_token,
        }))
    }
}
