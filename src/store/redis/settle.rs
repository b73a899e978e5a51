//! Final outcomes of sends that happened: written whatever became of the
//! partition's lease meanwhile.
//!
//! Owns: writing a delivered or dead-lettered outcome, and this handle's
//! list of outcomes not written yet ([`super::store::Inner::unsettled`]),
//! which its loads skip. Leaves to others: the rules (`rules.rs`), the
//! read–decide–write cycle (`write.rs`), the grace a taken-over partition
//! waits before its load (`lease.rs`).
//!
//! Why: a send is a fact, not a claim on the partition. With Redis away for
//! longer than the lease, the holder keeps sending until its lease's local
//! deadline, and cannot record those sends until Redis is back; by then the
//! partition may be another agent's, or this one's under a new load. So:
//! - the fenced write is tried first; when the lease is gone, the outcome
//!   is written unfenced and conditionally (the rules change only an open
//!   message: one already delivered or dead-lettered stays as it is);
//! - until the write lands, this handle's own loads skip the message, so
//!   a partition it takes back does not send it again;
//! - another agent taking the partition over waits `HANDOVER_GRACE`
//!   before loading it, long enough for these writes to land.

use std::time::{Duration, Instant};

use super::rules::Change;
use super::store::RedisStore;
use super::write::Fence;
use crate::store::StoreError;
use crate::store::record::{MessageId, StoredMessage};

/// How long an outcome not written yet keeps its message out of this
/// handle's loads: as long as the agent retries the write.
const UNSETTLED_FOR: Duration = Duration::from_secs(900);

impl RedisStore {
    /// Writes a message's final outcome by `rule`: fenced while this handle
    /// holds the partition, unfenced once it does not.
    pub(super) async fn settle<F>(&self, id: MessageId, mut rule: F) -> Result<(), StoreError>
    where
        F: FnMut(&StoredMessage) -> Result<Option<Change>, StoreError>,
    {
        let written = match self.change(id, Fence::Holder, &mut rule).await {
            Err(StoreError::Fenced { partition }) => {
                tracing::info!(
                    partition,
                    %id,
                    "the lease ran out before this outcome was recorded; recording it unfenced"
                );
                self.change(id, Fence::None, &mut rule).await
            }
            other => other,
        };
        let mut unsettled = self.unsettled();
        match &written {
            Err(StoreError::Unavailable(_)) => {
                unsettled.entry(id).or_insert_with(Instant::now);
            }
            _ => {
                unsettled.remove(&id);
            }
        }
        written.map(drop)
    }

    /// Whether this handle has an outcome for `id` it could not write yet.
    pub(super) fn is_unsettled(&self, id: MessageId) -> bool {
        let mut unsettled = self.unsettled();
        if unsettled.is_empty() {
            return false;
        }
        unsettled.retain(|_, since| since.elapsed() < UNSETTLED_FOR);
        unsettled.contains_key(&id)
    }

    fn unsettled(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<MessageId, Instant>> {
        // Every change is one insert or remove: a poisoned lock is whole.
        self.inner
            .unsettled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
