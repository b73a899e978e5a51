//! Ingest's way around a Redis outage: accepts go to a local embedded
//! store (the spill, at `agent.storePath`) while Redis does not answer, and
//! move to Redis once it does, under the ids the clients were given.
//!
//! Owns: routing each accepted batch to Redis or the spill, and the resync
//! that empties the spill into Redis. Leaves to others: delivery (the
//! partition holders read imported messages from the feed like any other)
//! and the link state the limiter follows (the fleet task).
//!
//! Invariants:
//! - A 202 still means durable: in Redis, or fsynced into the spill.
//! - Once one batch spilled, every later batch spills too until the resync
//!   has emptied the spill, so a chat's messages reach Redis in accept order.
//! - A spilled message keeps the id the agent first offered Redis; import
//!   recognises a message Redis took after all (an accept applied after the
//!   agent stopped waiting), so a message is queued once — the only
//!   duplicates are of that one in-flight batch, after its alias expired.
//! - A spilled message is removed from the spill only after Redis answered
//!   its import; a crash in between imports it again, which is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{RwLock, watch};

use crate::store::redis::{Imported, RedisStore};
use crate::store::{
    Accepted, EmbeddedOptions, EmbeddedStore, MessageId, NewMessage, Store, StoreError,
    StoredMessage,
};

use super::metrics::Metrics;

/// Messages one import call carries: one script run, one round trip.
const IMPORT_BATCH: usize = 500;

/// Where accepts go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Redis,
    Spill,
}

/// What one resync pass moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resynced {
    pub imported: u64,
    pub already_there: u64,
    pub duplicates: u64,
}

/// The spill and the route. Cheap to share behind an `Arc`.
pub struct Spill {
    store: EmbeddedStore,
    route: RwLock<Route>,
    /// Messages in the spill, as of the last write or resync.
    waiting: AtomicU64,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Spill {
    /// Opens the spill file; one left with messages by an earlier run (an
    /// outage it did not outlive) keeps ingest on the spill until resynced.
    pub async fn open(
        path: &str,
        idempotency_ttl: Duration,
        metrics: Option<Metrics>,
    ) -> Result<Spill, StoreError> {
        let options = EmbeddedOptions {
            idempotency_ttl,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(path, options).await?;
        let waiting = store.stats().await?.open_total();
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "the spill holds messages from an earlier run; they move to Redis once it answers"
            );
        }
        let spill = Spill {
            store,
            route: RwLock::new(if waiting > 0 {
                Route::Spill
            } else {
                Route::Redis
            }),
            waiting: AtomicU64::new(waiting),
            metrics,
        };
        spill.publish_waiting(waiting);
        Ok(spill)
    }

    /// Messages waiting in the spill.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// True while accepts go to the spill.
    pub async fn spilling(&self) -> bool {
        *self.route.read().await == Route::Spill
    }

    /// Accepts `batch` into Redis, or into the spill when Redis does not
    /// answer (or an earlier batch is still waiting there).
    pub async fn accept(
        &self,
        redis: &RedisStore,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        let batch: Vec<(MessageId, NewMessage)> = batch
            .into_iter()
            .map(|m| (MessageId::generate(), m))
            .collect();
        let route = self.route.read().await;
        if *route == Route::Spill {
            return self.spill(batch, now_ms).await;
        }
        let mut answers = redis.accept_as(batch.clone(), now_ms).await;
        // Redis may have answered for some (refusals) and not the others:
        // those may or may not be there, and import will tell.
        let unanswered: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Err(StoreError::Unavailable(_))))
            .map(|(i, _)| i)
            .collect();
        if unanswered.is_empty() {
            return answers;
        }
        drop(route);
        self.divert().await;
        let again = unanswered.iter().map(|i| batch[*i].clone()).collect();
        let spilled = self.spill(again, now_ms).await;
        for (i, answer) in unanswered.into_iter().zip(spilled) {
            answers[i] = answer;
        }
        answers
    }

    /// Sends every accept to the spill until the mover finds Redis again.
    pub async fn divert(&self) {
        let mut route = self.route.write().await;
        if *route == Route::Redis {
            tracing::warn!("Redis does not answer: accepting into the local spill until it does");
            *route = Route::Spill;
        }
    }

    async fn spill(
        &self,
        batch: Vec<(MessageId, NewMessage)>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        let answers = self.store.accept_as(batch, now_ms).await;
        let fresh = answers
            .iter()
            .filter(|a| matches!(a, Ok(a) if !a.duplicate_of))
            .count() as u64;
        if fresh > 0 {
            let waiting = self.waiting.fetch_add(fresh, Ordering::Relaxed) + fresh;
            self.publish_waiting(waiting);
            self.count("spilled", fresh);
        }
        answers
    }

    /// A message still in the spill.
    pub async fn get(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        self.store.get(id).await
    }

    /// Moves everything in the spill to Redis, oldest first, then routes
    /// accepts back to Redis. Stops at the first Redis failure (the rest
    /// waits for the next pass); what was imported is gone from the spill.
    /// Counts what it moved in the metrics either way.
    pub async fn resync(&self, redis: &RedisStore) -> Result<Resynced, StoreError> {
        let mut done = Resynced::default();
        loop {
            let page = self.store.open_page(None, IMPORT_BATCH).await?;
            if page.is_empty() {
                // An empty spill says nothing of Redis (an agent that
                // started while Redis was away spilled nothing yet).
                if self.spilling().await {
                    redis.ping().await?;
                }
                // Only under the write lock is "empty" final: no accept is
                // between its spill check and its write.
                let mut route = self.route.write().await;
                if self.store.open_page(None, 1).await?.is_empty() {
                    if *route == Route::Spill {
                        tracing::info!(
                            imported = done.imported,
                            already_there = done.already_there,
                            duplicates = done.duplicates,
                            "the spill is empty: accepting into Redis again"
                        );
                    }
                    *route = Route::Redis;
                    self.waiting.store(0, Ordering::Relaxed);
                    self.publish_waiting(0);
                    self.publish_counts(done);
                    return Ok(done);
                }
                continue;
            }
            let ids: Vec<MessageId> = page.iter().map(|m| m.id).collect();
            let answers = redis.import(page).await;
            let mut settled = Vec::with_capacity(ids.len());
            let mut failure = None;
            for (id, answer) in ids.into_iter().zip(answers) {
                match answer {
                    Ok(Imported::Added) => done.imported += 1,
                    Ok(Imported::AlreadyThere(_)) => done.already_there += 1,
                    Ok(Imported::DuplicateOf(other)) => {
                        tracing::info!(spilled = %id, kept = %other, "a spilled message's idempotency key was taken while it waited; the other message is delivered");
                        done.duplicates += 1;
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                        continue;
                    }
                }
                settled.push(id);
            }
            self.store.remove(settled).await?;
            let waiting = self.store.stats().await?.open_total();
            self.waiting.store(waiting, Ordering::Relaxed);
            self.publish_waiting(waiting);
            if let Some(e) = failure {
                self.publish_counts(done);
                return Err(e);
            }
        }
    }

    fn publish_counts(&self, done: Resynced) {
        self.count("imported", done.imported);
        self.count("already_there", done.already_there);
        self.count("duplicate", done.duplicates);
    }

    fn count(&self, outcome: &str, n: u64) {
        if n > 0
            && let Some(m) = &self.metrics
        {
            m.spill_messages.with_label_values(&[outcome]).inc_by(n);
        }
    }

    fn publish_waiting(&self, waiting: u64) {
        if let Some(m) = &self.metrics {
            m.spill_waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }
}

/// While the agent runs: resync whenever something waits in the spill,
/// retrying every second while Redis is away (each try is one import call,
/// bounded by the store's command timeout).
pub async fn run(spill: std::sync::Arc<Spill>, redis: RedisStore, mut stop: watch::Receiver<bool>) {
    loop {
        if spill.spilling().await
            && let Err(e) = spill.resync(&redis).await
        {
            tracing::debug!(error = %e, waiting = spill.waiting(), "spill resync waits for Redis");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// At shutdown: one last resync, so a clean stop leaves nothing behind
/// when Redis answers; otherwise the spill waits for the next start.
pub async fn flush(spill: &Spill, redis: &RedisStore) {
    if !spill.spilling().await {
        return;
    }
    if let Err(e) = spill.resync(redis).await {
        tracing::warn!(
            error = %e,
            waiting = spill.waiting(),
            "Redis does not answer: spilled messages stay in the spill file and move to Redis at the next start"
        );
    }
}

#[cfg(test)]
mod tests {
    //! On a real `redis-server` (missing, these tests fail; they never
    //! skip), frozen with SIGSTOP to play the outage.

    use super::*;
    use crate::store::record::tests::sample_new;
    use crate::store::redis::RedisOptions;
    use crate::store::redis::server::{Persistence, RedisServer};

    struct Setup {
        server: RedisServer,
        redis: RedisStore,
        spill: Spill,
        dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let server = RedisServer::start(Persistence::None)
            .expect("redis-server must be installed: these tests fail rather than skip");
        let options = RedisOptions {
            key_prefix: "s".into(),
            partitions: 4,
            command_timeout: Duration::from_millis(300),
            ..RedisOptions::new(server.url(), "a")
        };
        let redis = RedisStore::connect(options).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spill = open(&dir).await;
        Setup {
            server,
            redis,
            spill,
            dir,
        }
    }

    async fn open(dir: &tempfile::TempDir) -> Spill {
        let path = dir.path().join("spill.redb");
        Spill::open(path.to_str().unwrap(), Duration::from_secs(3600), None)
            .await
            .unwrap()
    }

    fn ids(answers: &[Result<Accepted, StoreError>]) -> Vec<MessageId> {
        answers.iter().map(|a| a.as_ref().unwrap().id).collect()
    }

    fn keyed(chat: i64, key: &str) -> NewMessage {
        NewMessage {
            idempotency_key: Some(key.into()),
            ..sample_new(chat)
        }
    }

    #[tokio::test]
    async fn with_redis_up_nothing_spills() {
        let s = setup().await;
        let answers = s.spill.accept(&s.redis, vec![sample_new(1)], 1_000).await;
        let id = ids(&answers)[0];
        assert!(!s.spill.spilling().await);
        assert_eq!(s.spill.waiting(), 0);
        assert!(s.redis.get(id).await.unwrap().is_some());
        assert!(s.spill.get(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_outage_spills_and_the_resync_moves_each_message_once_under_its_id() {
        let s = setup().await;
        let before = ids(&s.spill.accept(&s.redis, vec![sample_new(1)], 1_000).await);
        s.server.pause().unwrap();
        let first = ids(&s
            .spill
            .accept(&s.redis, vec![sample_new(1), keyed(2, "k")], 2_000)
            .await);
        assert!(s.spill.spilling().await);
        // Later batches go straight to the spill; a key repeats its id.
        let second = s
            .spill
            .accept(&s.redis, vec![sample_new(1), keyed(2, "k")], 3_000)
            .await;
        assert!(second[1].as_ref().unwrap().duplicate_of);
        assert_eq!(second[1].as_ref().unwrap().id, first[1]);
        let second = ids(&second);
        assert_eq!(s.spill.waiting(), 3);
        assert!(s.spill.get(first[0]).await.unwrap().is_some());
        // Redis away, the resync stops at once and keeps everything.
        assert!(s.spill.resync(&s.redis).await.is_err());
        assert_eq!(s.spill.waiting(), 3);

        s.server.resume().unwrap();
        let done = s.spill.resync(&s.redis).await.unwrap();
        assert!(!s.spill.spilling().await);
        assert_eq!(s.spill.waiting(), 0);
        // The frozen accept may have been applied when Redis woke: then it
        // is found, not added twice.
        assert_eq!(done.imported + done.already_there, 3);
        assert_eq!(done.duplicates, 0);
        for id in [first[0], first[1], second[0]] {
            assert!(
                s.redis.get(id).await.unwrap().is_some(),
                "{id} reached Redis"
            );
            assert!(s.spill.get(id).await.unwrap().is_none());
        }
        // Each message is in the queue once, in accept order per chat.
        for p in 0..s.redis.partitions() {
            s.redis.acquire(p).await.unwrap();
        }
        let open = s.redis.pending().await.unwrap();
        assert_eq!(
            open.len(),
            4,
            "{:?}",
            open.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        let chat1 = s.redis.partition_of(&sample_new(1).chat_id);
        let order: Vec<MessageId> = s
            .redis
            .pending_in(chat1)
            .await
            .unwrap()
            .iter()
            .filter(|m| m.msg.chat_id == sample_new(1).chat_id)
            .map(|m| m.id)
            .collect();
        assert_eq!(order, [before[0], first[0], second[0]]);
        // Back on Redis: the next accept goes there.
        let after = ids(&s.spill.accept(&s.redis, vec![sample_new(3)], 4_000).await);
        assert!(s.redis.get(after[0]).await.unwrap().is_some());
        assert_eq!(s.spill.waiting(), 0);
    }

    #[tokio::test]
    async fn a_crash_after_import_before_removal_imports_nothing_twice() {
        let s = setup().await;
        s.server.pause().unwrap();
        let spilled = ids(&s
            .spill
            .accept(&s.redis, vec![sample_new(1), sample_new(2)], 1_000)
            .await);
        s.server.resume().unwrap();
        // The import got through; the agent died before removing them.
        let page = s.spill.store.open_page(None, 10).await.unwrap();
        let answers = s.redis.import(page).await;
        assert!(answers.iter().all(|a| a.is_ok()));
        drop(s.spill);
        let spill = open(&s.dir).await;
        assert!(
            spill.spilling().await,
            "a spill left non-empty keeps ingest on it"
        );
        assert_eq!(spill.waiting(), 2);
        let done = spill.resync(&s.redis).await.unwrap();
        assert_eq!((done.imported, done.already_there), (0, 2));
        assert_eq!(s.redis.stats().await.unwrap().open_total(), 2);
        for id in spilled {
            assert!(s.redis.get(id).await.unwrap().is_some());
        }
    }
}
