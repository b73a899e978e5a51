//! Settings of a Redis queue, and what the server promises about durability.
//!
//! Owns: the options, their defaults and limits, and keeping the connection
//! URL (which may hold a password) out of every `Debug` output and error.
//! Leaves to others: connecting (`store.rs`).
//!
//! Invariant: no `Debug`, `Display` or error built here shows the URL.

use std::fmt;
use std::time::Duration;

use crate::store::StoreError;

/// The largest partition count a queue may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// Settings of a [`super::RedisStore`].
///
/// `key_prefix` and `partitions` must be the same on every agent sharing the
/// queue; `connect` refuses a partition count that differs from the one the
/// queue was created with (a changed count would move chats between
/// partitions and break their order).
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`. May hold a password: it is
    /// never logged nor shown by `Debug`.
    pub url: String,
    /// Every key of the queue starts with this and a `:`.
    pub key_prefix: String,
    /// Number of queue partitions, 1..=4096.
    pub partitions: u32,
    /// This agent's name in leases; unique per running process (a pod name).
    pub agent_id: String,
    /// How long a partition lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How long `accept` honours an idempotency key after its first accept
    /// (counted on the Redis server's clock; Redis expires the key).
    pub idempotency_ttl: Duration,
    /// Encoded records larger than this are refused (`StoreError::TooLarge`).
    pub max_record_bytes: usize,
    /// How long one command may take before it fails as unavailable.
    pub command_timeout: Duration,
}

impl RedisOptions {
    /// Options with herald's defaults: prefix `herald`, 64 partitions, 10 s
    /// leases, 24 h idempotency, 16 MiB records, 5 s per command.
    pub fn new(url: impl Into<String>, agent_id: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            key_prefix: "herald".into(),
            partitions: 64,
            agent_id: agent_id.into(),
            lease_ttl: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            max_record_bytes: 16 * 1024 * 1024,
            command_timeout: Duration::from_secs(5),
        }
    }

    /// Refuses settings the queue cannot work with; never echoes the URL.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let bad = |what: String| Err(StoreError::Storage(format!("Redis store options: {what}")));
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1..={MAX_PARTITIONS}, not {}",
                self.partitions
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 {
            return bad("key_prefix must be 1 to 64 bytes".into());
        }
        if self.agent_id.is_empty() || self.agent_id.len() > 128 {
            return bad("agent_id must be 1 to 128 bytes".into());
        }
        if self.lease_ttl < Duration::from_millis(10) {
            return bad("lease_ttl must be at least 10 ms".into());
        }
        if self.idempotency_ttl < Duration::from_millis(1) {
            return bad("idempotency_ttl must be at least 1 ms".into());
        }
        if self.command_timeout.is_zero() {
            return bad("command_timeout must be positive".into());
        }
        Ok(())
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("partitions", &self.partitions)
            .field("agent_id", &self.agent_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// What the server's persistence settings promise for an acknowledged write,
/// as read at connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// AOF with `appendfsync always`: fsynced before the answer.
    AofAlways,
    /// AOF with `appendfsync everysec`: a crash of the Redis host can lose
    /// about the last second of acknowledged writes.
    AofEverySec,
    /// AOF with `appendfsync no`: the kernel decides when; a host crash can
    /// lose tens of seconds.
    AofNo,
    /// No AOF: only snapshots, if any; a Redis crash loses everything since
    /// the last one.
    NoAof,
    /// The server would not say (e.g. `CONFIG` is disabled, as on some
    /// managed services).
    Unknown,
}

impl Durability {
    /// Reads `INFO persistence` (`aof_enabled`) and `CONFIG GET
    /// appendfsync` (absent when refused).
    pub(super) fn from_server(aof_enabled: Option<bool>, appendfsync: Option<&str>) -> Self {
        match (aof_enabled, appendfsync) {
            (Some(false), _) => Durability::NoAof,
            (Some(true), Some("always")) => Durability::AofAlways,
            (Some(true), Some("everysec")) => Durability::AofEverySec,
            (Some(true), Some("no")) => Durability::AofNo,
            _ => Durability::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_url() {
        let o = RedisOptions::new("redis://user:s3cret-pw@10.0.0.1:6379/0", "agent-1");
        let shown = format!("{o:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("agent-1"));
    }

    #[test]
    fn check_refuses_impossible_settings_without_the_url() {
        let good = RedisOptions::new("redis://:pw-xyz@h/", "a");
        assert!(good.check().is_ok());
        for bad in [
            RedisOptions {
                partitions: 0,
                ..good.clone()
            },
            RedisOptions {
                partitions: MAX_PARTITIONS + 1,
                ..good.clone()
            },
            RedisOptions {
                key_prefix: String::new(),
                ..good.clone()
            },
            RedisOptions {
                agent_id: String::new(),
                ..good.clone()
            },
            RedisOptions {
                lease_ttl: Duration::ZERO,
                ..good.clone()
            },
        ] {
            let err = bad.check().unwrap_err().to_string();
            assert!(!err.contains("pw-xyz"), "{err}");
        }
    }

    #[test]
    fn durability_follows_the_server_settings() {
        use Durability::*;
        assert_eq!(
            Durability::from_server(Some(true), Some("always")),
            AofAlways
        );
        assert_eq!(
            Durability::from_server(Some(true), Some("everysec")),
            AofEverySec
        );
        assert_eq!(Durability::from_server(Some(true), Some("no")), AofNo);
        assert_eq!(Durability::from_server(Some(false), None), NoAof);
        assert_eq!(Durability::from_server(Some(true), None), Unknown);
        assert_eq!(Durability::from_server(None, None), Unknown);
    }
}
