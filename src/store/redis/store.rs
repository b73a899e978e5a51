//! The Redis queue handle: connecting, checking the server and the queue's
//! layout, and the state every operation shares (connections, keys, the
//! leases this handle holds).
//!
//! Owns: [`RedisStore`] and its shared state. Leaves to siblings: leases
//! (`lease.rs`), reads and writes of one message (`write.rs`), loading and
//! following partitions (`feed.rs`), the `Store` methods (`queue.rs`,
//! `dead.rs`), error mapping and reply parsing (`reply.rs`).
//!
//! Invariant: nothing here keeps, logs or shows the connection URL; errors
//! from the client are reduced to their kind and the server's message.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::keys::{self, Keys};
use super::options::{Durability, RedisOptions};
use super::reply::{millis, redis_error};
use super::scripts::Scripts;
use crate::store::StoreError;
use crate::store::record::{ChatRef, MessageId};

/// Bumped when a key changes meaning; an older build refuses a newer queue.
pub(super) const LAYOUT_VERSION: u64 = 1;

/// The oldest server whose commands the scripts use (`XTRIM MINID`: 6.2).
const MIN_SERVER: (u64, u64) = (6, 2);

/// A handle on a Redis-backed queue shared by several agents. Cheap to
/// clone; clones share connections and the leases this handle holds.
///
/// Each handle is one agent: it holds partition leases under its
/// `agent_id`, and its owner-side writes are fenced by them (see the module
/// documentation).
#[derive(Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// Every command but the feed's blocking reads.
    pub conn: ConnectionManager,
    /// Blocking feed reads only: a blocked `XREAD` holds its connection, and
    /// on the shared one it would stall every other command behind it.
    pub feed_conn: ConnectionManager,
    pub keys: Keys,
    pub partitions: u32,
    pub agent_id: String,
    pub lease_ttl: Duration,
    pub idempotency_ttl_ms: u64,
    pub max_record_bytes: usize,
    pub command_timeout: Duration,
    /// What the server promised, once its checks passed ([`RedisStore::ready`]).
    pub checked: OnceCell<Durability>,
    /// The leases this handle holds, by partition.
    pub leases: Mutex<BTreeMap<u32, Held>>,
    /// Messages this handle sent to the end (delivered or dead-lettered)
    /// whose outcome it could not write yet, since when: its loads skip
    /// them, so a partition taken back before the write lands does not
    /// send them again (`queue.rs`).
    pub unsettled: Mutex<HashMap<MessageId, Instant>>,
    pub scripts: Scripts,
}

/// A lease this handle holds.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub token: u64,
    /// When this handle must assume the lease is gone unless renewed.
    pub deadline: Instant,
    /// When the partition may be loaded (`lease.rs`, `load_wait`).
    pub load_at: Instant,
    /// Where this handle's feed of the partition stands; `None` until the
    /// partition is loaded with `pending_in`.
    pub cursor: Option<String>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.inner.keys.prefix())
            .field("partitions", &self.inner.partitions)
            .field("agent_id", &self.inner.agent_id)
            .field("durability", &self.durability())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, checks the server (version, eviction policy, persistence)
    /// and stamps or checks the queue's layout and partition count.
    ///
    /// Refuses a server that may evict keys on its own (`maxmemory-policy`
    /// `allkeys-*`): it would drop queued messages silently. Weak
    /// persistence is allowed but logged; see [`RedisStore::durability`].
    pub async fn connect(options: RedisOptions) -> Result<Self, StoreError> {
        let store = RedisStore::connect_lazy(options)?;
        store.ready().await?;
        Ok(store)
    }

    /// [`RedisStore::connect`] without waiting for Redis: the handle is
    /// made at once, and the checks run at the first command that reaches
    /// the server (every command fails with [`StoreError::Unavailable`]
    /// until then). An agent starts on this while Redis is away. Only a
    /// settings error (URL, partitions) fails here.
    pub fn connect_lazy(options: RedisOptions) -> Result<Self, StoreError> {
        options.check()?;
        let client = ::redis::Client::open(options.url.as_str()).map_err(|_| {
            StoreError::Storage("the Redis URL is not valid (its text is not shown)".into())
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.command_timeout))
            .set_response_timeout(Some(options.command_timeout))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(redis_error)?;
        // The feed's reads block on purpose; `new_messages` bounds them.
        let feed_conn =
            ConnectionManager::new_lazy_with_config(client, config.set_response_timeout(None))
                .map_err(redis_error)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                feed_conn,
                keys: Keys::new(&options.key_prefix),
                partitions: options.partitions,
                agent_id: options.agent_id,
                lease_ttl: options.lease_ttl,
                idempotency_ttl_ms: millis(options.idempotency_ttl).max(1),
                max_record_bytes: options.max_record_bytes,
                command_timeout: options.command_timeout,
                checked: OnceCell::new(),
                leases: Mutex::new(BTreeMap::new()),
                unsettled: Mutex::new(HashMap::new()),
                scripts: Scripts::new(),
            }),
        })
    }

    /// Checks the server (version, eviction policy, persistence) and
    /// stamps or checks the queue's layout, once per handle: the first
    /// call that reaches Redis does it, later calls return at once.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .checked
            .get_or_try_init(|| async {
                let durability = check_server(&mut inner.conn.clone()).await?;
                check_layout(
                    &mut inner.conn.clone(),
                    &inner.scripts,
                    &inner.keys,
                    inner.partitions,
                )
                .await?;
                match durability {
                    Durability::AofAlways | Durability::AofEverySec => {}
                    Durability::Unknown => tracing::info!(
                        "Redis would not report its persistence settings; accepted messages are as durable as its AOF settings make them"
                    ),
                    weak => tracing::warn!(
                        durability = ?weak,
                        "Redis persistence is weak: a crash of the Redis host can lose accepted messages; enable appendonly with appendfsync everysec or always"
                    ),
                }
                Ok::<_, StoreError>(durability)
            })
            .await
            .map(drop)
    }

    /// Whether Redis answers now (and passed its checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = ::redis::cmd("PING")
            .query_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// What the server's persistence settings promised at the checks
    /// ([`RedisStore::ready`]); `Unknown` before they ran.
    pub fn durability(&self) -> Durability {
        self.inner
            .checked
            .get()
            .copied()
            .unwrap_or(Durability::Unknown)
    }

    /// The number of partitions of the queue.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// This handle's name in leases.
    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    /// The lease time to live this handle acquires and renews with.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// The partition of a chat: pure and the same on every agent.
    pub fn partition_of(&self, chat: &ChatRef) -> u32 {
        keys::partition_of(chat, self.inner.partitions)
    }

    /// The command connection, once the server passed its checks.
    pub(super) async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.ready().await?;
        Ok(self.inner.conn.clone())
    }

    pub(super) fn leases(&self) -> MutexGuard<'_, BTreeMap<u32, Held>> {
        // A panic while holding the lock cannot leave the map half-changed
        // (every change is one insert or remove), so a poisoned lock is safe.
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn check_partition(&self, partition: u32) -> Result<(), StoreError> {
        if partition < self.inner.partitions {
            Ok(())
        } else {
            Err(StoreError::Storage(format!(
                "no queue partition {partition}: the queue has {}",
                self.inner.partitions
            )))
        }
    }
}

/// Server version and eviction policy; answers the persistence promise.
async fn check_server(conn: &mut ConnectionManager) -> Result<Durability, StoreError> {
    let server: String = ::redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let version = info_field(&server, "redis_version").unwrap_or_default();
    if parse_version(version) < MIN_SERVER {
        return Err(StoreError::Storage(format!(
            "Redis {version} is too old: the queue needs {}.{} or newer",
            MIN_SERVER.0, MIN_SERVER.1
        )));
    }
    // CONFIG may be refused (managed services, ACLs): then we cannot tell.
    if let Some(policy) = config_get(conn, "maxmemory-policy").await
        && policy.starts_with("allkeys-")
    {
        return Err(StoreError::Storage(format!(
            "Redis maxmemory-policy is {policy}: it may evict queued messages; set it to noeviction"
        )));
    }
    let persistence: String = ::redis::cmd("INFO")
        .arg("persistence")
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let aof = info_field(&persistence, "aof_enabled").map(|v| v == "1");
    let fsync = config_get(conn, "appendfsync").await;
    Ok(Durability::from_server(aof, fsync.as_deref()))
}

/// Stamps a new queue, or refuses one of another layout or partition count:
/// changing the count would move chats between partitions.
async fn check_layout(
    conn: &mut ConnectionManager,
    scripts: &Scripts,
    keys: &Keys,
    partitions: u32,
) -> Result<(), StoreError> {
    let (version, stamped): (Option<String>, Option<String>) = scripts
        .init
        .prepare_invoke()
        .arg(keys.prefix())
        .arg(LAYOUT_VERSION)
        .arg(partitions)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    let found = version.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    if found != LAYOUT_VERSION {
        return Err(StoreError::UnsupportedLayout {
            found,
            supported: LAYOUT_VERSION,
        });
    }
    let stamped = stamped.and_then(|p| p.parse::<u32>().ok());
    if stamped != Some(partitions) {
        return Err(StoreError::Inconsistent(format!(
            "the queue under prefix {:?} has {} partitions; this agent is configured with {partitions}",
            keys.prefix().trim_end_matches(':'),
            stamped.map_or_else(|| "an unreadable number of".into(), |p| p.to_string()),
        )));
    }
    Ok(())
}

async fn config_get(conn: &mut ConnectionManager, name: &str) -> Option<String> {
    let answer: HashMap<String, String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .ok()?;
    answer.get(name).cloned()
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

fn parse_version(text: &str) -> (u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "redis"), None);
        assert_eq!(parse_version("7.0.15"), (7, 0));
        assert!(parse_version("6.0.9") < MIN_SERVER);
        assert!(parse_version("6.2.0") >= MIN_SERVER);
        assert_eq!(parse_version("garbage"), (0, 0));
    }
}
