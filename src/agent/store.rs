//! The agent's queue: the embedded store (one agent, a file) or the Redis
//! store (several agents, one shared queue), behind one [`Store`].
//!
//! Owns: choosing and opening the backend from the entry tier's
//! `spec.store`, and forwarding the [`Store`] contract to it. Leaves to
//! others: partition leases and the feed (the fleet task, Redis only).
//!
//! Messages reach the dispatcher differently: on the embedded store the
//! agent that accepts a message enqueues it; on Redis the holder of the
//! message's partition learns of it through the partition's feed, whoever
//! accepted it ([`AgentStore::enqueues_locally`]).
//!
//! On Redis, accepts pass through the [`Spill`]: while Redis does not
//! answer they land in an embedded store at `agent.storePath` instead, and
//! move to Redis when it is back.

use std::sync::Arc;
use std::time::Duration;

use crate::api::delivery_tier::StoreKind;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{
    Accepted, Attempt, ChatRef, CleanupCounts, DeadFilter, DeadSelection, EmbeddedOptions,
    EmbeddedStore, MessageId, NewMessage, Store, StoreError, StoreStats, StoredMessage,
};

use super::config::AgentConfig;
use super::metrics::Metrics;
use super::spill::Spill;

/// The backend an agent runs on.
#[derive(Clone)]
pub enum AgentStore {
    Embedded(EmbeddedStore),
    Redis(RedisStore, Arc<Spill>),
}

/// Why the store could not be opened; never carries the Redis URL.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("spill file {path} of the Redis store: {source}")]
    Spill {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("Redis store of tier {tier}: {source}")]
    Redis {
        tier: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "tier {tier} asks for store.type redis but its URL secret ({secret}) is not set in the agent's secrets"
    )]
    MissingUrl { tier: String, secret: String },
}

/// The Redis settings of the entry tier, when it runs on Redis.
pub fn redis_options(
    config: &AgentConfig,
    agent_id: &str,
) -> Result<Option<RedisOptions>, OpenError> {
    let Some(entry) = config.tier(&config.entry_tier) else {
        return Ok(None);
    };
    let spec = &entry.policy.spec.store;
    if spec.kind != StoreKind::Redis {
        return Ok(None);
    }
    let Some(redis) = &spec.redis else {
        return Ok(None);
    };
    let secret = format!("{}/{}", redis.url_secret_ref.name, redis.url_secret_ref.key);
    let url = entry
        .secrets
        .redis_url
        .as_ref()
        .map(|u| u.expose().to_owned())
        .ok_or_else(|| OpenError::MissingUrl {
            tier: entry.policy.name.clone(),
            secret,
        })?;
    let mut options = RedisOptions::new(url, agent_id);
    options.key_prefix = redis.key_prefix.clone();
    options.partitions = redis.partitions;
    options.lease_ttl = config.agent.lease_ttl.get();
    options.idempotency_ttl = config.agent.retention.get();
    Ok(Some(options))
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentStore::Embedded(_) => f.write_str("AgentStore::Embedded"),
            AgentStore::Redis(r, spill) => f
                .debug_tuple("AgentStore::Redis")
                .field(r)
                .field(spill)
                .finish(),
        }
    }
}

/// How long a starting agent waits for another process to close the
/// embedded store's file: longer than a pod's default termination grace
/// period (30 s), after which its predecessor is killed.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(60);

impl AgentStore {
    /// Opens the entry tier's store: Redis when it says so (with its spill
    /// at `agent.storePath`), else the embedded file at `agent.storePath`.
    pub async fn open(
        config: &AgentConfig,
        agent_id: &str,
        metrics: Option<Metrics>,
    ) -> Result<AgentStore, OpenError> {
        let path = config.agent.store_path.clone();
        if let Some(parent) = std::path::Path::new(&path).parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Some(options) = redis_options(config, agent_id)? {
            let spill = Spill::open(&path, config.agent.retention.get(), metrics)
                .await
                .map_err(|source| OpenError::Spill {
                    path: path.clone(),
                    source,
                })?;
            let tier = config.entry_tier.clone();
            let redis_error = |source| OpenError::Redis {
                tier: tier.clone(),
                source,
            };
            let store = RedisStore::connect_lazy(options).map_err(redis_error)?;
            match store.ready().await {
                Ok(()) => {}
                // Redis away at start is an outage like any other: accept
                // into the spill, and the fleet task and the spill's mover
                // attach when it answers. A server that answers wrongly
                // (layout, eviction policy) is a settings error.
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!(
                        error = %why,
                        "Redis does not answer at start; the agent attaches when it does"
                    );
                    spill.divert().await;
                }
                Err(source) => return Err(redis_error(source)),
            }
            return Ok(AgentStore::Redis(store, Arc::new(spill)));
        }
        let options = EmbeddedOptions {
            idempotency_ttl: config.agent.retention.get(),
            ..EmbeddedOptions::default()
        };
        // The agent this one replaces may still have the file open while it
        // shuts down (a pod's termination grace period): wait for it rather
        // than fail, so the replacement starts the moment the file is free.
        let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
        let mut told = false;
        loop {
            match EmbeddedStore::open(&path, options).await {
                Err(StoreError::Locked) if tokio::time::Instant::now() < deadline => {
                    if !told {
                        tracing::warn!(path = %path, wait_s = STORE_LOCK_WAIT.as_secs(), "the store file is open in another process; waiting for it to close");
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => {
                    return other
                        .map(AgentStore::Embedded)
                        .map_err(|source| OpenError::Embedded { path, source });
                }
            }
        }
    }

    /// True when whoever accepts a message hands it to its own dispatcher;
    /// false on Redis, where the partition's holder reads it from the feed.
    pub fn enqueues_locally(&self) -> bool {
        matches!(self, AgentStore::Embedded(_))
    }

    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            AgentStore::Redis(r, _) => Some(r),
            AgentStore::Embedded(_) => None,
        }
    }

    /// The Redis store's spill.
    pub fn spill(&self) -> Option<&Arc<Spill>> {
        match self {
            AgentStore::Redis(_, spill) => Some(spill),
            AgentStore::Embedded(_) => None,
        }
    }

    /// `embedded` or `redis`, for logs and `/healthz/details`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentStore::Embedded(_) => "embedded",
            AgentStore::Redis(..) => "redis",
        }
    }
}

/// Forwards one [`Store`] method to whichever backend runs.
macro_rules! forward {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            AgentStore::Embedded(s) => s.$method($($arg),*).await,
            AgentStore::Redis(s, _) => s.$method($($arg),*).await,
        }
    };
}

impl Store for AgentStore {
    async fn accept(
        &self,
        batch: Vec<NewMessage>,
        now_ms: u64,
    ) -> Vec<Result<Accepted, StoreError>> {
        match self {
            AgentStore::Embedded(s) => s.accept(batch, now_ms).await,
            AgentStore::Redis(redis, spill) => spill.accept(redis, batch, now_ms).await,
        }
    }

    async fn pending(&self) -> Result<Vec<StoredMessage>, StoreError> {
        forward!(self.pending())
    }

    /// On Redis, a message still waiting in the spill is found there.
    async fn get(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        match self {
            AgentStore::Embedded(s) => s.get(id).await,
            // An empty spill (the usual case) costs no read.
            AgentStore::Redis(redis, spill) if spill.waiting() > 0 => match spill.get(id).await? {
                Some(m) => Ok(Some(m)),
                None => redis.get(id).await,
            },
            AgentStore::Redis(redis, _) => redis.get(id).await,
        }
    }

    async fn mark_in_flight(
        &self,
        id: MessageId,
        tier: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        forward!(self.mark_in_flight(id, tier, now_ms))
    }

    async fn record_delivered(
        &self,
        id: MessageId,
        tier: String,
        receipt: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        forward!(self.record_delivered(id, tier, receipt, now_ms))
    }

    async fn record_retry(
        &self,
        id: MessageId,
        attempt: Attempt,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        forward!(self.record_retry(id, attempt, next_attempt_ms))
    }

    async fn record_dead_letter(
        &self,
        id: MessageId,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), StoreError> {
        forward!(self.record_dead_letter(id, attempt, reason))
    }

    async fn readdress(&self, id: MessageId, new_chat: ChatRef) -> Result<(), StoreError> {
        forward!(self.readdress(id, new_chat))
    }

    async fn list_dead(&self, filter: DeadFilter) -> Result<Vec<StoredMessage>, StoreError> {
        forward!(self.list_dead(filter))
    }

    async fn retry_dead(&self, selection: DeadSelection) -> Result<Vec<MessageId>, StoreError> {
        forward!(self.retry_dead(selection))
    }

    async fn purge_dead(&self, selection: DeadSelection) -> Result<u64, StoreError> {
        forward!(self.purge_dead(selection))
    }

    async fn cleanup(
        &self,
        now_ms: u64,
        delivered_retention: Duration,
        idempotency_ttl: Duration,
    ) -> Result<CleanupCounts, StoreError> {
        forward!(self.cleanup(now_ms, delivered_retention, idempotency_ttl))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        forward!(self.stats())
    }
}
