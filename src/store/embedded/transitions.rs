//! Every state change of the embedded store, applied inside one redb write
//! transaction.
//!
//! Owns the upkeep of the indexes and counters as records change. Leaves
//! to `lifecycle` which change is allowed from which state and what the
//! new record is (the rules the Redis store keeps too), to `groupcommit`
//! when transactions begin and commit, and to `layout` what the tables
//! are.
//!
//! Invariants: an operation either refuses before writing anything (a
//! refusal, see [`StoreError::is_refusal`]) or writes all of its change; every
//! record write goes through [`Tables::put`] or [`Tables::delete`], which keep
//! the indexes and counters in step with the record's state and note each
//! message that opens or closes for the in-memory [`OpenIndex`].
//!
//! No record is ever written `InFlight`: the marks live in the
//! [`OpenIndex`]. Files written by earlier builds may hold `InFlight`
//! records; [`Tables::recover_open`] turns them back into `Pending` at open.
//!
//! [`OpenIndex`]: super::open_index::OpenIndex

use redb::{ReadableTable, Table, WriteTransaction};

use super::layout::{self, SLOTS};
use super::open_index::OpenChange;
use crate::engine::Priority;
use crate::store::lifecycle;
use crate::store::record::{
    self, Attempt, ChatRef, MessageId, MessageState, NewMessage, StoredMessage,
};
use crate::store::{Accepted, CleanupCounts, DeadFilter, DeadSelection, StoreError};

/// How many records one `cleanup` call removes at most, so a large backlog
/// of expired records cannot stall the writer (and every accept) for long.
pub(super) const CLEANUP_BATCH: usize = 10_000;

/// Per-store limits the transitions enforce.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_record_bytes: usize,
    pub idempotency_ttl_ms: u64,
}

/// The store's tables, open for writing in one transaction.
pub(super) struct Tables<'txn> {
    messages: Table<'txn, u128, &'static [u8]>,
    open: Table<'txn, u128, ()>,
    dead: Table<'txn, u128, ()>,
    delivered: Table<'txn, (u64, u128), ()>,
    idempotency: Table<'txn, &'static str, (u128, u64)>,
    idempotency_by_time: Table<'txn, (u64, &'static str), ()>,
    counters: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    /// The latest attempt outcome this transaction records (ms; 0: none),
    /// written once by [`Tables::finish`].
    last_outcome_ms: u64,
    /// Counter changes, written once by [`Tables::finish`].
    deltas: [i64; SLOTS],
    /// Messages opened or closed, for the in-memory index once committed.
    open_changes: Vec<OpenChange>,
    limits: Limits,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction, limits: Limits) -> Result<Self, StoreError> {
        let s = StoreError::storage;
        Ok(Tables {
            messages: txn.open_table(layout::MESSAGES).map_err(s)?,
            open: txn.open_table(layout::OPEN).map_err(s)?,
            dead: txn.open_table(layout::DEAD).map_err(s)?,
            delivered: txn.open_table(layout::DELIVERED).map_err(s)?,
            idempotency: txn.open_table(layout::IDEMPOTENCY).map_err(s)?,
            idempotency_by_time: txn.open_table(layout::IDEMPOTENCY_BY_TIME).map_err(s)?,
            counters: txn.open_table(layout::COUNTERS).map_err(s)?,
            meta: txn.open_table(layout::META).map_err(s)?,
            last_outcome_ms: 0,
            deltas: [0; SLOTS],
            open_changes: Vec::new(),
            limits,
        })
    }

    /// Writes the accumulated counter changes; call once, before commit.
    /// Counters only feed stats, so a count that would go negative (a bug)
    /// is clamped rather than allowed to fail every later write. Answers the
    /// open-set changes, to apply once the transaction has committed.
    pub(super) fn finish(mut self) -> Result<Vec<OpenChange>, StoreError> {
        let counts = layout::read_counters(&self.counters)?;
        for (slot, delta) in self.deltas.iter().enumerate() {
            if *delta == 0 {
                continue;
            }
            let next = counts[slot].saturating_add_signed(*delta);
            self.counters
                .insert(layout::slot_name(slot), next)
                .map_err(StoreError::storage)?;
        }
        if self.last_outcome_ms > 0 {
            let before = self
                .meta
                .get(layout::LAST_OUTCOME_KEY)
                .map_err(StoreError::storage)?
                .map_or(0, |v| v.value());
            if self.last_outcome_ms > before {
                self.meta
                    .insert(layout::LAST_OUTCOME_KEY, self.last_outcome_ms)
                    .map_err(StoreError::storage)?;
            }
        }
        Ok(self.open_changes)
    }

    pub(super) fn accept(
        &mut self,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> Result<Vec<Result<Accepted, StoreError>>, StoreError> {
        let mut answers = Vec::with_capacity(batch.len());
        for msg in batch {
            answers.push(self.accept_one(None, msg, now_ms)?);
        }
        Ok(answers)
    }

    /// [`Tables::accept`] under ids the caller chose (the Redis spill keeps
    /// the id it offered Redis, so that a resync can tell whether Redis took
    /// the message after all). An id already stored is refused.
    pub(super) fn accept_as(
        &mut self,
        batch: Vec<(MessageId, NewMessage)>,
        now_ms: u64,
    ) -> Result<Vec<Result<Accepted, StoreError>>, StoreError> {
        let mut answers = Vec::with_capacity(batch.len());
        for (id, msg) in batch {
            answers.push(self.accept_one(Some(id), msg, now_ms)?);
        }
        Ok(answers)
    }

    /// Deletes the records of `ids` whatever their state, keeping their
    /// idempotency keys until those expire; returns how many existed.
    pub(super) fn remove(&mut self, ids: &[MessageId]) -> Result<u64, StoreError> {
        let mut removed = 0;
        for id in ids {
            if let Some(old) = layout::load(&self.messages, *id)? {
                self.delete(&old)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The outer error fails the transaction, the inner one only this message.
    fn accept_one(
        &mut self,
        preset: Option<MessageId>,
        msg: NewMessage,
        now_ms: u64,
    ) -> Result<Result<Accepted, StoreError>, StoreError> {
        let mut expired_key_seen_ms = None;
        if let Some(key) = msg.idempotency_key.as_deref() {
            let known = self
                .idempotency
                .get(key)
                .map_err(StoreError::storage)?
                .map(|v| v.value());
            if let Some((bits, first_seen_ms)) = known {
                let ttl = self.limits.idempotency_ttl_ms;
                if first_seen_ms.saturating_add(ttl) > now_ms {
                    let id = layout::id_of(bits)?;
                    return Ok(Ok(Accepted {
                        id,
                        duplicate_of: true,
                    }));
                }
                expired_key_seen_ms = Some(first_seen_ms);
            }
        }
        let id = match preset {
            None => self.fresh_id()?,
            Some(id) => {
                if self
                    .messages
                    .get(id.as_u128())
                    .map_err(StoreError::storage)?
                    .is_some()
                {
                    return Ok(Err(StoreError::InvalidState {
                        id,
                        state: MessageState::Pending,
                        op: "accept again under the same id",
                    }));
                }
                id
            }
        };
        let stored = StoredMessage::accepted(id, msg, now_ms);
        if let Err(refusal) = self.put(None, &stored) {
            return if refusal.is_refusal() {
                Ok(Err(refusal))
            } else {
                Err(refusal)
            };
        }
        if let Some(key) = stored.msg.idempotency_key.as_deref() {
            if let Some(old) = expired_key_seen_ms {
                self.idempotency_by_time
                    .remove((old, key))
                    .map_err(StoreError::storage)?;
            }
            self.idempotency
                .insert(key, (id.as_u128(), now_ms))
                .map_err(StoreError::storage)?;
            self.idempotency_by_time
                .insert((now_ms, key), ())
                .map_err(StoreError::storage)?;
        }
        Ok(Ok(Accepted {
            id,
            duplicate_of: false,
        }))
    }

    /// Ids come from a process-monotonic generator; checking for a clash
    /// with a stored id costs one lookup and rules out even a clock gone
    /// backwards across a restart.
    fn fresh_id(&self) -> Result<MessageId, StoreError> {
        for _ in 0..4 {
            let id = MessageId::generate();
            if self
                .messages
                .get(id.as_u128())
                .map_err(StoreError::storage)?
                .is_none()
            {
                return Ok(id);
            }
        }
        Err(StoreError::Inconsistent(
            "could not generate an unused message id".into(),
        ))
    }

    pub(super) fn record_delivered(
        &mut self,
        id: MessageId,
        tier: String,
        receipt: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let old = self.get(id)?;
        let Some(new) = lifecycle::record_delivered(&old, &tier, &receipt, now_ms)? else {
            return Ok(());
        };
        self.outcome_at(now_ms);
        self.put(Some(Indexed::of(&old)), &new)
    }

    pub(super) fn record_retry(
        &mut self,
        id: MessageId,
        attempt: Attempt,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        let old = self.get(id)?;
        let new = lifecycle::record_retry(&old, &attempt, next_attempt_ms)?;
        self.outcome_at(attempt.at_ms);
        self.put(Some(Indexed::of(&old)), &new)?;
        self.open_changes.push(OpenChange::Unmarked(id));
        Ok(())
    }

    pub(super) fn record_dead_letter(
        &mut self,
        id: MessageId,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), StoreError> {
        let old = self.get(id)?;
        let new = lifecycle::record_dead_letter(&old, &attempt, &reason)?;
        self.outcome_at(attempt.at_ms);
        self.put(Some(Indexed::of(&old)), &new)
    }

    /// An attempt that ended at `at_ms` is recorded in this transaction.
    fn outcome_at(&mut self, at_ms: u64) {
        self.last_outcome_ms = self.last_outcome_ms.max(at_ms);
    }

    pub(super) fn readdress(&mut self, id: MessageId, new_chat: ChatRef) -> Result<(), StoreError> {
        let old = self.get(id)?;
        let new = lifecycle::readdress(&old, &new_chat)?;
        self.put(Some(Indexed::of(&old)), &new)
    }

    pub(super) fn retry_dead(
        &mut self,
        selection: DeadSelection,
    ) -> Result<Vec<MessageId>, StoreError> {
        let chosen = self.select_dead(selection)?;
        let mut ids = Vec::with_capacity(chosen.len());
        for old in chosen {
            let new = lifecycle::retry_dead(&old)?;
            self.put(Some(Indexed::of(&old)), &new)?;
            ids.push(new.id);
        }
        Ok(ids)
    }

    pub(super) fn purge_dead(&mut self, selection: DeadSelection) -> Result<u64, StoreError> {
        let chosen = self.select_dead(selection)?;
        for old in &chosen {
            self.delete(old)?;
        }
        Ok(chosen.len() as u64)
    }

    pub(super) fn cleanup(
        &mut self,
        now_ms: u64,
        delivered_retention_ms: u64,
        idempotency_ttl_ms: u64,
    ) -> Result<CleanupCounts, StoreError> {
        let mut counts = CleanupCounts::default();
        if let Some(cutoff) = now_ms.checked_sub(delivered_retention_ms) {
            // Everything delivered at or before `cutoff`.
            let end = (cutoff.saturating_add(1), 0u128);
            let mut expired = Vec::new();
            for entry in self
                .delivered
                .range(..end)
                .map_err(StoreError::storage)?
                .take(CLEANUP_BATCH + 1)
            {
                let (key, _) = entry.map_err(StoreError::storage)?;
                expired.push(key.value().1);
            }
            counts.more |= expired.len() > CLEANUP_BATCH;
            expired.truncate(CLEANUP_BATCH);
            for bits in expired {
                let old = layout::load_indexed(&self.messages, layout::id_of(bits)?)?;
                self.delete(&old)?;
                counts.delivered_removed += 1;
            }
        }
        if let Some(cutoff) = now_ms.checked_sub(idempotency_ttl_ms) {
            let end = (cutoff.saturating_add(1), "");
            let mut expired = Vec::new();
            for entry in self
                .idempotency_by_time
                .range(..end)
                .map_err(StoreError::storage)?
                .take(CLEANUP_BATCH + 1)
            {
                let (key, _) = entry.map_err(StoreError::storage)?;
                let (seen, name) = key.value();
                expired.push((seen, name.to_owned()));
            }
            counts.more |= expired.len() > CLEANUP_BATCH;
            expired.truncate(CLEANUP_BATCH);
            for (seen, key) in expired {
                self.idempotency_by_time
                    .remove((seen, key.as_str()))
                    .map_err(StoreError::storage)?;
                self.idempotency
                    .remove(key.as_str())
                    .map_err(StoreError::storage)?;
                counts.idempotency_removed += 1;
            }
        }
        Ok(counts)
    }

    /// Turns every `InFlight` record (left by an earlier build) back to
    /// `Pending` — run at open, when nobody can still be sending them — and
    /// answers every open message with its priority.
    pub(super) fn recover_open(&mut self) -> Result<Vec<(MessageId, Priority)>, StoreError> {
        let mut open = Vec::new();
        let mut interrupted = Vec::new();
        for entry in self.open.iter().map_err(StoreError::storage)? {
            let (key, _) = entry.map_err(StoreError::storage)?;
            let old = layout::load_indexed(&self.messages, layout::id_of(key.value())?)?;
            open.push((old.id, old.msg.priority));
            if old.state == MessageState::InFlight {
                interrupted.push(old);
            }
        }
        for old in interrupted {
            if let Some(new) = lifecycle::requeue_interrupted(&old) {
                self.put(Some(Indexed::of(&old)), &new)?;
            }
        }
        Ok(open)
    }

    fn get(&self, id: MessageId) -> Result<StoredMessage, StoreError> {
        layout::load(&self.messages, id)?.ok_or(StoreError::NotFound(id))
    }

    fn select_dead(&self, selection: DeadSelection) -> Result<Vec<StoredMessage>, StoreError> {
        let filter = match selection {
            DeadSelection::One(id) => {
                let m = self.get(id)?;
                lifecycle::require_dead(&m)?;
                return Ok(vec![m]);
            }
            DeadSelection::Filter(filter) => filter,
            DeadSelection::All => DeadFilter::default(),
        };
        scan_dead(&self.dead, &self.messages, &filter)
    }

    /// Writes `new`, moving it between indexes and counters as its state
    /// changed from `old` (`None`: a new message). Encodes first, so an
    /// oversized record is refused before anything is written.
    fn put(&mut self, old: Option<Indexed>, new: &StoredMessage) -> Result<(), StoreError> {
        let bytes =
            record::encode(new).map_err(|source| StoreError::Corrupt { id: new.id, source })?;
        if bytes.len() > self.limits.max_record_bytes {
            return Err(StoreError::TooLarge {
                size: bytes.len(),
                max: self.limits.max_record_bytes,
            });
        }
        if let Some(old) = old {
            self.unindex(old)?;
        }
        self.index(Indexed::of(new))?;
        self.messages
            .insert(new.id.as_u128(), bytes.as_slice())
            .map_err(StoreError::storage)?;
        let was_open = old.is_some_and(|m| m.state.is_open());
        match (was_open, new.state.is_open()) {
            (false, true) => self
                .open_changes
                .push(OpenChange::Opened(new.id, new.msg.priority)),
            (true, false) => self.open_changes.push(OpenChange::Closed(new.id)),
            _ => {}
        }
        Ok(())
    }

    fn delete(&mut self, old: &StoredMessage) -> Result<(), StoreError> {
        self.unindex(Indexed::of(old))?;
        self.messages
            .remove(old.id.as_u128())
            .map_err(StoreError::storage)?;
        if old.state.is_open() {
            self.open_changes.push(OpenChange::Closed(old.id));
        }
        Ok(())
    }

    fn index(&mut self, m: Indexed) -> Result<(), StoreError> {
        let key = m.id.as_u128();
        match m.state {
            MessageState::Pending | MessageState::InFlight => self.open.insert(key, ()),
            MessageState::DeadLettered => self.dead.insert(key, ()),
            MessageState::Delivered => self.delivered.insert((m.updated_ms, key), ()),
        }
        .map_err(StoreError::storage)?;
        self.deltas[layout::slot_of(m.state, m.priority)] += 1;
        Ok(())
    }

    fn unindex(&mut self, m: Indexed) -> Result<(), StoreError> {
        let key = m.id.as_u128();
        let removed = match m.state {
            MessageState::Pending | MessageState::InFlight => self.open.remove(key),
            MessageState::DeadLettered => self.dead.remove(key),
            MessageState::Delivered => self.delivered.remove((m.updated_ms, key)),
        }
        .map_err(StoreError::storage)?;
        if removed.is_none() {
            return Err(StoreError::Inconsistent(format!(
                "message {} is {} but missing from its index",
                m.id, m.state
            )));
        }
        self.deltas[layout::slot_of(m.state, m.priority)] -= 1;
        Ok(())
    }
}

/// What places a record in the indexes and counters: enough of the old
/// version of a record to move it, so that a transition can change the
/// record itself instead of a copy.
#[derive(Clone, Copy)]
struct Indexed {
    id: MessageId,
    state: MessageState,
    priority: Priority,
    updated_ms: u64,
}

impl Indexed {
    fn of(m: &StoredMessage) -> Self {
        Indexed {
            id: m.id,
            state: m.state,
            priority: m.msg.priority,
            updated_ms: m.updated_ms,
        }
    }
}

/// Dead letters matching `filter`, in id order; shared by reads and writes.
pub(super) fn scan_dead(
    dead: &impl ReadableTable<u128, ()>,
    messages: &impl ReadableTable<u128, &'static [u8]>,
    filter: &DeadFilter,
) -> Result<Vec<StoredMessage>, StoreError> {
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    let range = match filter.after {
        Some(after) => dead.range(after.as_u128().saturating_add(1)..),
        None => dead.range::<u128>(..),
    }
    .map_err(StoreError::storage)?;
    for entry in range {
        let (key, _) = entry.map_err(StoreError::storage)?;
        let m = layout::load_indexed(messages, layout::id_of(key.value())?)?;
        if filter.matches(&m) {
            found.push(m);
            if found.len() >= limit {
                break;
            }
        }
    }
    Ok(found)
}
