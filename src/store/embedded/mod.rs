//! The embedded backend: one redb file, group-committed writes.
//!
//! Owns opening the file (layout check, crash recovery), and the [`Store`]
//! methods' plumbing: writes go to the writer thread (`groupcommit`), reads
//! run on tokio's blocking pool against a redb read snapshot, so neither
//! blocks the async runtime. Leaves the state rules to `store::lifecycle`
//! and keeping tables, indexes and counters in step to `transitions`;
//! `layout` says what the tables are, `open_index` holds the open messages
//! and their in-flight marks in memory.
//!
//! Invariant: only the writer thread writes after `open` returns, and redb's
//! `ExclusiveWriter` mode (its default) locks the file against any other
//! process, so no one else can hold a message in flight while we run.
//!
//! Durability per method: `accept`, every `record_*`, `readdress`,
//! `retry_dead`, `purge_dead` and `cleanup` commit with fsync before they
//! answer. `record_delivered` and `record_dead_letter` may wait up to
//! `groupcommit::HOLD` to share an fsync, since no caller waits on them.
//! `mark_in_flight` writes nothing to the file: the mark lives in the
//! `OpenIndex` (see there why), so after a crash a marked message is
//! `Pending` — as the contract asks of an interrupted send.
//!
//! After a kill, redb notices the unclean shutdown at open and repairs the
//! file (by default a walk over all of it; see
//! [`EmbeddedOptions::quick_repair`]); the last durable commit is intact.

mod groupcommit;
mod layout;
mod open_index;
mod transitions;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

pub use self::groupcommit::CommitCounts;
use self::groupcommit::{Commit, Writer};
use self::open_index::OpenIndex;
use self::transitions::{Limits, Tables};
use crate::store::record::{ChatRef, MessageId, MessageState, NewMessage, StoredMessage};
use crate::store::{
    Accepted, Attempt, CleanupCounts, DeadFilter, DeadSelection, Store, StoreError, StoreStats,
};

/// Settings of an embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How long `accept` honours an idempotency key after its first accept.
    pub idempotency_ttl: Duration,
    /// Encoded records larger than this are refused (`StoreError::TooLarge`).
    pub max_record_bytes: usize,
    /// Save redb's allocator state with every durable commit, so that opening
    /// after a crash is nearly instant instead of a walk over the whole file.
    /// Costs a second fsync per commit (redb then commits in two phases).
    pub quick_repair: bool,
    /// Memory redb may use to cache pages, reads and writes together.
    /// Its own default (1 GiB) is reached with a backlog of a few hundred
    /// thousand messages and stays resident; the open messages' index is
    /// in memory anyway, so reads rarely need many cached pages.
    pub cache_bytes: usize,
}

/// See [`EmbeddedOptions::cache_bytes`].
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            max_record_bytes: 16 * 1024 * 1024,
            quick_repair: false,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// A [`Store`] in one local redb file. Cheap to clone; the file closes when
/// the last clone is dropped (the drop waits for queued writes).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Writer,
    open: Arc<OpenIndex>,
}

impl EmbeddedStore {
    /// Opens or creates the store at `path`, on a blocking thread.
    pub async fn open(
        path: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<EmbeddedStore, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || EmbeddedStore::open_blocking(&path, options))
            .await
            .map_err(|e| StoreError::Storage(format!("open task failed: {e}")))?
    }

    /// Opens or creates the store at `path`, blocking the calling thread:
    /// checks the layout, and turns messages left `InFlight` by a previous
    /// process back into `Pending`, durably, before anything else runs.
    pub fn open_blocking(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let limits = Limits {
            max_record_bytes: options.max_record_bytes,
            idempotency_ttl_ms: millis(options.idempotency_ttl),
        };
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked,
                e => StoreError::storage(e),
            })?;
        let txn = groupcommit::begin(&db, options.quick_repair)?;
        layout::ensure(&txn)?;
        let mut tables = Tables::open(&txn, limits)?;
        let open = Arc::new(OpenIndex::new(tables.recover_open()?));
        tables.finish()?;
        txn.commit().map_err(StoreError::storage)?;
        let db = Arc::new(db);
        let writer = Writer::start(
            Arc::clone(&db),
            limits,
            options.quick_repair,
            Arc::clone(&open),
        )?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner { db, writer, open }),
        })
    }

    /// When the latest attempt outcome (delivered, retried, dead-lettered)
    /// was recorded, in wall-clock ms; `None` if none ever was. Every send
    /// of a message that is no longer open happened no later than this.
    pub async fn last_outcome_ms(&self) -> Result<Option<u64>, StoreError> {
        self.read(|txn| {
            let meta = txn.open_table(layout::META).map_err(StoreError::storage)?;
            Ok(meta
                .get(layout::LAST_OUTCOME_KEY)
                .map_err(StoreError::storage)?
                .map(|v| v.value()))
        })
        .await
    }

    /// The writer's batch counts since open (group-commit effectiveness).
    pub fn commit_counts(&self) -> CommitCounts {
        self.inner.writer.counts()
    }

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            query(&txn)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?
    }

    /// One record as the file has it, without the in-memory marks.
    async fn load(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        self.read(move |txn| {
            let messages = txn
                .open_table(layout::MESSAGES)
                .map_err(StoreError::storage)?;
            layout::load(&messages, id)
        })
        .await
    }

    async fn write<T, F>(&self, commit: Commit, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tables<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.submit(commit, change).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the Redis spill needs beyond [`Store`]: chosen ids and removal.
impl EmbeddedStore {
    /// Accepts under the given ids, durably (see `Tables::accept_as`).
    pub async fn accept_as(
        &self,
        batch: Vec<(MessageId, NewMessage)>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let count = batch.len();
        match self
            .write(Commit::Now, move |t| t.accept_as(batch, now_ms))
            .await
        {
            Ok(answers) => answers,
            Err(e) => std::iter::repeat_n(Err(e), count).collect(),
        }
    }

    /// Up to `limit` open messages with ids above `after`, oldest first.
    pub async fn open_page(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(move |txn| {
            let open = txn.open_table(layout::OPEN).map_err(StoreError::storage)?;
            let messages = txn
                .open_table(layout::MESSAGES)
                .map_err(StoreError::storage)?;
            let start = after.map_or(0, |id| id.as_u128().saturating_add(1));
            let mut found = Vec::new();
            for entry in open
                .range(start..)
                .map_err(StoreError::storage)?
                .take(limit)
            {
                let (key, _) = entry.map_err(StoreError::storage)?;
                found.push(layout::load_indexed(
                    &messages,
                    layout::id_of(key.value())?,
                )?);
            }
            Ok(found)
        })
        .await
    }

    /// Deletes `ids` durably; their idempotency keys stay until they expire.
    pub async fn remove(&self, ids: Vec<MessageId>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(Commit::Now, move |t| t.remove(&ids)).await
    }
}

impl Store for EmbeddedStore {
    async fn accept(
        &self,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let count = batch.len();
        match self
            .write(Commit::Now, move |t| t.accept(batch, now_ms))
            .await
        {
            Ok(answers) => answers,
            Err(e) => std::iter::repeat_n(Err(e), count).collect(),
        }
    }

    async fn pending(&self) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|txn| {
            let open = txn.open_table(layout::OPEN).map_err(StoreError::storage)?;
            let messages = txn
                .open_table(layout::MESSAGES)
                .map_err(StoreError::storage)?;
            let mut found = Vec::new();
            for entry in open.iter().map_err(StoreError::storage)? {
                let (key, _) = entry.map_err(StoreError::storage)?;
                let mut m = layout::load_indexed(&messages, layout::id_of(key.value())?)?;
                if m.state == MessageState::InFlight {
                    m.state = MessageState::Pending;
                    m.in_flight_tier = None;
                }
                found.push(m);
            }
            Ok(found)
        })
        .await
    }

    async fn get(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        let mut found = self.load(id).await?;
        if let Some(m) = found.as_mut() {
            self.inner.open.overlay(m);
        }
        Ok(found)
    }

    async fn mark_in_flight(
        &self,
        id: MessageId,
        tier: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.inner.open.mark(id, tier, now_ms) {
            return Ok(());
        }
        // Not open: the record says why.
        match self.load(id).await? {
            None => Err(StoreError::NotFound(id)),
            // The index has every commit's changes before its callers hear
            // back, so only a bug gets here.
            Some(m) if m.state.is_open() => Err(StoreError::Inconsistent(format!(
                "message {id} is open in the file but not in the open index"
            ))),
            Some(m) => Err(StoreError::InvalidState {
                id,
                state: m.state,
                op: "mark in flight",
            }),
        }
    }

    async fn record_delivered(
        &self,
        id: MessageId,
        tier: String,
        receipt: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(Commit::Soon, move |t| {
            t.record_delivered(id, tier, receipt, now_ms)
        })
        .await
    }

    async fn record_retry(
        &self,
        id: MessageId,
        attempt: Attempt,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(Commit::Now, move |t| {
            t.record_retry(id, attempt, next_attempt_ms)
        })
        .await
    }

    async fn record_dead_letter(
        &self,
        id: MessageId,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), StoreError> {
        self.write(Commit::Soon, move |t| {
            t.record_dead_letter(id, attempt, reason)
        })
        .await
    }

    async fn readdress(&self, id: MessageId, new_chat: ChatRef) -> Result<(), StoreError> {
        self.write(Commit::Now, move |t| t.readdress(id, new_chat))
            .await
    }

    async fn list_dead(&self, filter: DeadFilter) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(move |txn| {
            let dead = txn.open_table(layout::DEAD).map_err(StoreError::storage)?;
            let messages = txn
                .open_table(layout::MESSAGES)
                .map_err(StoreError::storage)?;
            transitions::scan_dead(&dead, &messages, &filter)
        })
        .await
    }

    async fn retry_dead(&self, selection: DeadSelection) -> Result<Vec<MessageId>, StoreError> {
        self.write(Commit::Now, move |t| t.retry_dead(selection))
            .await
    }

    async fn purge_dead(&self, selection: DeadSelection) -> Result<u64, StoreError> {
        self.write(Commit::Now, move |t| t.purge_dead(selection))
            .await
    }

    async fn cleanup(
        &self,
        now_ms: u64,
        delivered_retention: Duration,
        idempotency_ttl: Duration,
    ) -> Result<CleanupCounts, StoreError> {
        let retention = millis(delivered_retention);
        let ttl = millis(idempotency_ttl);
        self.write(Commit::Now, move |t| t.cleanup(now_ms, retention, ttl))
            .await
    }

    /// The file counts every open message as pending; the ones being sent
    /// are known only to the [`OpenIndex`].
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = self
            .read(|txn| {
                let counters = txn
                    .open_table(layout::COUNTERS)
                    .map_err(StoreError::storage)?;
                Ok(layout::stats_from(layout::read_counters(&counters)?))
            })
            .await?;
        let (sending, by_priority) = self.inner.open.in_flight();
        for (pending, sending) in stats.pending_by_priority.iter_mut().zip(by_priority) {
            *pending = pending.saturating_sub(sending);
        }
        stats.in_flight += sending;
        Ok(stats)
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
