//! Partition leases: which agent may deliver a partition's messages, and
//! the fencing tokens that make a former holder's writes fail.
//!
//! Owns: acquiring, renewing and releasing leases (`lua/lease.lua`) and this
//! handle's table of the leases it holds. Leaves to others: deciding which
//! partitions to take (rebalancing is the agent's), and checking the token
//! on each write (`transition.lua`, `load_page.lua`, `feed.lua`).
//!
//! Invariants: the lease's expiry is judged on the Redis server's clock, so
//! agents' clocks do not matter. A partition's token only grows. This
//! handle's local deadline for a lease is counted from *before* the request
//! that set it, so it always passes before the server's expiry does (as long
//! as the two clocks run at the same rate): [`RedisStore::held`] stops
//! naming a partition before any other agent can take it.

use std::time::{Duration, Instant};

use ::redis::Value;

use super::reply::{bad_reply, millis, redis_error, reply_int};
use super::store::{Held, RedisStore};
use crate::store::StoreError;

/// How long a partition taken over from a holder whose lease ran out waits
/// before it is loaded: long enough for a live former holder that lost
/// Redis to reach it again and record the sends it made meanwhile (its
/// record writes retry at least every second: `agent::dispatch_loop`).
/// A partition released on purpose (shutdown, rebalancing) does not wait.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Op {
    Acquire,
    Renew,
    Release,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
        }
    }
}

impl RedisStore {
    /// Takes the lease of `partition` if it is free or expired (or already
    /// this handle's, which renews it); answers its fencing token, or `None`
    /// while another agent's lease is live. A lease taken over from another
    /// holder gets a larger token than any before it.
    ///
    /// After a new acquisition, wait out [`RedisStore::load_wait`], then load
    /// the partition with [`RedisStore::pending_in`] before sending from it.
    pub async fn acquire(&self, partition: u32) -> Result<Option<u64>, StoreError> {
        self.check_partition(partition)?;
        let mine = self.token_of(partition).unwrap_or(0);
        let started = Instant::now();
        let answer = self.run_lease(Op::Acquire, partition, mine).await?;
        let (token, hold_ms) = match &answer {
            Value::Array(items) => match (items.first(), items.get(1)) {
                (Some(token), Some(hold)) => (reply_int(token), reply_int(hold)),
                _ => (None, None),
            },
            _ => (None, None),
        };
        let (Some(token), Some(hold_ms)) = (
            token.and_then(|t| u64::try_from(t).ok()),
            hold_ms.and_then(|h| u64::try_from(h).ok()),
        ) else {
            return Err(bad_reply("lease"));
        };
        if token == 0 {
            return Ok(None);
        }
        let deadline = started + self.inner.lease_ttl;
        // Counted from after the answer: never earlier than the server's.
        let load_at = Instant::now() + Duration::from_millis(hold_ms);
        let mut leases = self.leases();
        let held = leases.entry(partition).or_insert(Held {
            token,
            deadline,
            load_at,
            cursor: None,
        });
        if held.token != token {
            held.cursor = None;
        }
        held.token = token;
        held.deadline = deadline;
        held.load_at = load_at;
        Ok(Some(token))
    }

    /// How long a partition this handle holds must wait before it is loaded
    /// (zero when it may be loaded now; `None` when it is not held). A
    /// partition taken over from a holder whose lease ran out waits
    /// [`HANDOVER_GRACE`]: that holder may have sent messages it could not
    /// record while Redis was away, and it records them as soon as it
    /// reaches Redis again. Loading earlier would send them twice.
    pub fn load_wait(&self, partition: u32) -> Option<Duration> {
        let now = Instant::now();
        self.leases()
            .get(&partition)
            .map(|held| held.load_at.saturating_duration_since(now))
    }

    /// Extends this handle's lease of `partition`; `false` when the lease is
    /// no longer this handle's (another agent took it, or it was never
    /// held): stop sending from the partition and drop its messages.
    ///
    /// A lease that expired but that nobody took is still this handle's and
    /// renews, since no other agent can have written in the meantime.
    pub async fn renew(&self, partition: u32) -> Result<bool, StoreError> {
        let Some(token) = self.token_of(partition) else {
            return Ok(false);
        };
        let started = Instant::now();
        let kept = reply_int(&self.run_lease(Op::Renew, partition, token).await?) == Some(1);
        if kept {
            if let Some(held) = self.leases().get_mut(&partition)
                && held.token == token
            {
                held.deadline = started + self.inner.lease_ttl;
            }
        } else {
            self.lose(partition, token);
        }
        Ok(kept)
    }

    /// Gives up the lease of `partition` at once, so another agent can take
    /// it without waiting for expiry (shutdown, rebalancing). Finish or
    /// abandon the partition's sends first: after this, their writes fail
    /// with [`StoreError::Fenced`].
    pub async fn release(&self, partition: u32) -> Result<(), StoreError> {
        let Some(token) = self.token_of(partition) else {
            return Ok(());
        };
        self.lose(partition, token);
        self.run_lease(Op::Release, partition, token).await?;
        Ok(())
    }

    /// The partitions this handle holds and may send from, with their
    /// tokens, in partition order. A lease whose local deadline passed
    /// without a renewal is left out: another agent may hold it by now.
    pub fn held(&self) -> Vec<(u32, u64)> {
        let now = Instant::now();
        self.leases()
            .iter()
            .filter(|(_, held)| held.deadline > now)
            .map(|(partition, held)| (*partition, held.token))
            .collect()
    }

    /// Whether this handle may send from `partition` now: it holds the
    /// lease and the lease's local deadline (counted from before the last
    /// acquire or renewal was sent, so never later than the server's
    /// expiry) has not passed.
    pub fn may_send(&self, partition: u32) -> bool {
        let now = Instant::now();
        self.leases()
            .get(&partition)
            .is_some_and(|held| held.deadline > now)
    }

    /// Partitions whose lease this handle had but did not renew in time:
    /// another agent may hold them by now, so their messages must wait
    /// until [`RedisStore::acquire`] gets them back (and reloads them).
    pub fn lapsed(&self) -> Vec<u32> {
        let now = Instant::now();
        self.leases()
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The token this handle holds for `partition`, expired locally or not:
    /// writes carry it and the server decides.
    pub(super) fn token_of(&self, partition: u32) -> Option<u64> {
        self.leases().get(&partition).map(|held| held.token)
    }

    /// Forgets a lease the server says is gone, unless it was re-acquired
    /// with another token meanwhile.
    pub(super) fn lose(&self, partition: u32, token: u64) {
        let mut leases = self.leases();
        if leases
            .get(&partition)
            .is_some_and(|held| held.token == token)
        {
            leases.remove(&partition);
        }
    }

    async fn run_lease(&self, op: Op, partition: u32, token: u64) -> Result<Value, StoreError> {
        let answer: Value = self
            .inner
            .scripts
            .lease
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(partition)
            .arg(&self.inner.agent_id)
            .arg(token)
            .arg(millis(self.inner.lease_ttl))
            .arg(op.as_str())
            .arg(millis(HANDOVER_GRACE))
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        match op {
            Op::Acquire => Ok(answer),
            Op::Renew | Op::Release => reply_int(&answer)
                .map(Value::Int)
                .ok_or_else(|| bad_reply("lease")),
        }
    }
}
