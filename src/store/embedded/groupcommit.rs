//! Group commit: one writer thread applies every write of the embedded
//! store, batching whatever callers have queued into one redb transaction
//! and one fsync.
//!
//! Owns the writer thread, its queue, and the rule that a caller hears back
//! only after the transaction holding its change has committed. Leaves the
//! changes themselves to `transitions`.
//!
//! Invariants:
//! - a job's answer is sent after its transaction committed, with the
//!   durability the job asked for, or it is an error; the in-memory
//!   `OpenIndex` has the transaction's changes before any answer is sent;
//! - every transaction commits durably (fsync);
//! - a job that fails with anything but a refusal aborts its whole batch:
//!   it may have written part of its change, and redb cannot undo half a
//!   transaction. Every job of an aborted batch is answered with that error.
//!
//! A write someone waits on ([`Commit::Now`]: an accept, an admin action)
//! is never delayed: while one batch is being fsynced, the next one gathers
//! in the queue, so the batch size follows the load by itself. A write no
//! one outside waits on ([`Commit::Soon`]: a delivery's final record) may
//! wait up to [`HOLD`] for company, so
//! under a light, steady load a delivery's record shares the next accept's
//! fsync instead of taking one of its own (measured: the writer was busy
//! most of the time at 1,000 single-message accepts per second, because
//! every message cost two fsyncs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{Database, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::open_index::{OpenChange, OpenIndex};
use super::transitions::{Limits, Tables};
use crate::store::StoreError;

/// Jobs queued before callers wait for room; bounds the memory a burst can
/// pin while the disk is slow.
const QUEUE_CAPACITY: usize = 4096;
/// Jobs per transaction at most, so one commit's latency stays bounded.
const MAX_BATCH_JOBS: usize = 1024;
/// How long a batch with no [`Commit::Now`] job waits for more jobs. It
/// bounds how much later than the sink's answer a delivery becomes durable,
/// and so what a crash could send twice beyond the sends in flight.
pub(super) const HOLD: std::time::Duration = std::time::Duration::from_millis(2);

/// How a write commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Commit {
    /// With fsync, in the next batch: a caller waits to answer someone.
    Now,
    /// With fsync, but it may wait up to [`HOLD`] to share the fsync.
    Soon,
}

/// Sends the commit's outcome to the waiting caller.
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// Applies a change and returns how to answer once the commit is known.
/// `None` tables: the batch already failed; answer without applying.
type Apply = Box<dyn FnOnce(Option<&mut Tables<'_>>, &mut Option<StoreError>) -> Finish + Send>;

struct Job {
    commit: Commit,
    apply: Apply,
}

/// What the writer has done since the store was opened; for metrics (the
/// mean batch size is `jobs / batches`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Transactions attempted, committed or not.
    pub batches: u64,
    /// Of those, the ones that failed (every job in them got the error).
    pub failed_batches: u64,
    /// Jobs (one per write call) in all batches.
    pub jobs: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    failed_batches: AtomicU64,
    jobs: AtomicU64,
}

/// The handle callers submit writes through. Dropping it lets the thread
/// finish the queued jobs and waits for it, so the file is closed when the
/// drop returns.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Unparked by a `Commit::Now` job, which ends a hold at once.
    waker: std::thread::Thread,
    counters: Arc<Counters>,
}

impl Writer {
    /// `quick_repair`: durable commits also save redb's allocator state, see
    /// `EmbeddedOptions::quick_repair`.
    /// `open`: told of every committed change to the set of open messages.
    pub(super) fn start(
        db: Arc<Database>,
        limits: Limits,
        quick_repair: bool,
        open: Arc<OpenIndex>,
    ) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let config = Config {
            limits,
            quick_repair,
            counters: Arc::clone(&counters),
            open,
        };
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || run(&db, &config, jobs))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            queue: Some(queue),
            waker: thread.thread().clone(),
            thread: Some(thread),
            counters,
        })
    }

    pub(super) fn counts(&self) -> CommitCounts {
        let c = &self.counters;
        CommitCounts {
            batches: c.batches.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
        }
    }

    /// Runs `change` in a batch and answers once that batch committed, as
    /// `commit` says.
    pub(super) async fn submit<T, F>(&self, commit: Commit, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tables<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let apply: Apply = Box::new(move |tables, poison| {
            // Without tables the commit fails, and its error replaces this.
            let outcome = tables.map_or(Err(StoreError::Closed), change);
            if let Err(e) = &outcome
                && !e.is_refusal()
                && poison.is_none()
            {
                *poison = Some(e.clone());
            }
            Box::new(move |commit| {
                // The caller may have given up waiting; the change stands.
                let _ = reply.send(match commit {
                    Ok(()) => outcome,
                    Err(e) => Err(e.clone()),
                });
            })
        });
        queue
            .send(Job { commit, apply })
            .await
            .map_err(|_| StoreError::Closed)?;
        if commit == Commit::Now {
            self.waker.unpark();
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has already been reported by the runtime.
            let _ = thread.join();
        }
    }
}

/// What the writer thread needs besides the database.
struct Config {
    limits: Limits,
    quick_repair: bool,
    counters: Arc<Counters>,
    open: Arc<OpenIndex>,
}

fn run(db: &Database, config: &Config, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut urgent = first.commit == Commit::Now;
        let mut batch = vec![first];
        let mut open = take_queued(&mut jobs, &mut batch, &mut urgent);
        let until = std::time::Instant::now() + HOLD;
        while open && !urgent && batch.len() < MAX_BATCH_JOBS {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
            open = take_queued(&mut jobs, &mut batch, &mut urgent);
        }
        commit_batch(db, config, batch);
    }
}

/// Moves what is queued into `batch`, up to its cap, setting `urgent` if a
/// [`Commit::Now`] job came; false once every sender is gone.
fn take_queued(jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, urgent: &mut bool) -> bool {
    while batch.len() < MAX_BATCH_JOBS {
        match jobs.try_recv() {
            Ok(job) => {
                *urgent |= job.commit == Commit::Now;
                batch.push(job);
            }
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

fn commit_batch(db: &Database, config: &Config, jobs: Vec<Job>) {
    let counters = &config.counters;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters
        .jobs
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    let mut finishers: Vec<Finish> = Vec::with_capacity(jobs.len());
    let outcome = match begin(db, config.quick_repair) {
        Ok(txn) => apply_and_commit(txn, config.limits, jobs, &mut finishers),
        Err(e) => {
            let mut poison = Some(e.clone());
            for job in jobs {
                finishers.push((job.apply)(None, &mut poison));
            }
            Err(e)
        }
    };
    let failure = match outcome {
        Ok(changes) => {
            config.open.apply(&changes);
            None
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            Some(e)
        }
    };
    for finish in finishers {
        finish(failure.as_ref().map_or(Ok(()), Err));
    }
}

/// A write transaction that commits with fsync.
pub(super) fn begin(db: &Database, quick_repair: bool) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(StoreError::storage)?;
    txn.set_quick_repair(quick_repair);
    Ok(txn)
}

/// Applies every job, then commits; once the batch is poisoned the remaining
/// jobs are not applied, only answered. Answers the committed changes to
/// the set of open messages.
fn apply_and_commit(
    txn: WriteTransaction,
    limits: Limits,
    jobs: Vec<Job>,
    finishers: &mut Vec<Finish>,
) -> Result<Vec<OpenChange>, StoreError> {
    let (mut tables, mut poison) = match Tables::open(&txn, limits) {
        Ok(tables) => (Some(tables), None),
        Err(e) => (None, Some(e)),
    };
    for job in jobs {
        let target = if poison.is_none() {
            tables.as_mut()
        } else {
            None
        };
        finishers.push((job.apply)(target, &mut poison));
    }
    let finished = match (poison, tables) {
        (None, Some(tables)) => tables.finish(),
        (poison, tables) => {
            drop(tables);
            Err(poison.unwrap_or_else(|| StoreError::Inconsistent("batch had no tables".into())))
        }
    };
    match finished {
        Ok(changes) => txn.commit().map(|()| changes).map_err(StoreError::storage),
        Err(e) => {
            // Dropping an uncommitted transaction would abort it too.
            let _ = txn.abort();
            Err(e)
        }
    }
}
