//! Loading a partition after taking its lease, and following what other
//! agents accept into it afterwards.
//!
//! Owns: [`RedisStore::pending_in`] (the partition's open messages, in
//! accept order, paged) and [`RedisStore::new_messages`] (the partition
//! feeds, one Redis stream per partition, read from a cursor with a short
//! blocking `XREAD`). Leaves to others: the lease (`lease.rs`) and what the
//! agent does with the messages (its scheduler).
//!
//! Invariant: between one `pending_in` and the `new_messages` calls after it,
//! every message that is open in the partition is handed out exactly once —
//! the load and the feed cursor are cut at the same point (`load_page.lua`),
//! and only the lease holder trims the feed, never past its own cursor.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::Value;
use ::redis::streams::StreamReadReply;

use super::keys::parse_id;
use super::reply::{bad_reply, millis, redis_error, reply_bytes, reply_int, reply_text};
use super::rules::{as_loaded, requeue_interrupted};
use super::store::RedisStore;
use super::write::Fence;
use crate::store::StoreError;
use crate::store::record::{self, MessageState, StoredMessage};

/// Messages per `load_page.lua` call: bounds how long one call holds Redis.
const LOAD_PAGE: usize = 500;
/// Feed entries per partition per `XREAD`.
const FEED_COUNT: usize = 1_000;

impl RedisStore {
    /// Every open message of `partition`, in accept order, for loading the
    /// scheduler right after [`RedisStore::acquire`]; and the start of this
    /// handle's feed of the partition (see [`RedisStore::new_messages`]).
    ///
    /// Messages left in flight by a previous holder are made pending again
    /// (their sender was interrupted); every message is reported `Pending`.
    /// Call it before sending from the partition: an in-flight send of this
    /// handle's own would be reported pending too. Calling it again starts
    /// over: the whole partition again, and the feed from that point. Call
    /// it from the task that calls [`RedisStore::new_messages`], not
    /// concurrently with it. Fails with [`StoreError::Fenced`] unless this
    /// handle holds the partition.
    pub async fn pending_in(&self, partition: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let token = self
            .token_of(partition)
            .ok_or(StoreError::Fenced { partition })?;
        let mut found = Vec::new();
        let mut lower = "(0".to_owned();
        let mut bound = String::new();
        let mut cursor = None;
        loop {
            let reply: Vec<Value> = self
                .inner
                .scripts
                .load_page
                .prepare_invoke()
                .arg(self.inner.keys.prefix())
                .arg(partition)
                .arg(&self.inner.agent_id)
                .arg(token)
                .arg(&lower)
                .arg(&bound)
                .arg(LOAD_PAGE)
                .invoke_async(&mut self.conn().await?)
                .await
                .map_err(redis_error)?;
            match reply.first().and_then(reply_int) {
                Some(1) => {}
                Some(-1) => {
                    self.lose(partition, token);
                    return Err(StoreError::Fenced { partition });
                }
                _ => return Err(bad_reply("load_page")),
            }
            let (Some(page_bound), Some(page_cursor)) = (
                reply.get(1).and_then(reply_text),
                reply.get(2).and_then(reply_text),
            ) else {
                return Err(bad_reply("load_page"));
            };
            if bound.is_empty() {
                bound = page_bound;
                cursor = Some(page_cursor);
            }
            let entries = reply.get(3..).unwrap_or_default();
            for entry in entries.chunks(3) {
                let [seq, id, rec] = entry else {
                    return Err(bad_reply("load_page"));
                };
                let seq = reply_text(seq).ok_or_else(|| bad_reply("load_page"))?;
                let id = parse_id(reply_bytes(id).ok_or_else(|| bad_reply("load_page"))?)?;
                let rec = reply_bytes(rec).unwrap_or_default();
                if rec.is_empty() {
                    return Err(StoreError::Inconsistent(format!(
                        "partition {partition} lists message {id}, which is missing"
                    )));
                }
                found.push(
                    record::decode(id, rec).map_err(|source| StoreError::Corrupt { id, source })?,
                );
                lower = format!("({seq}");
            }
            if entries.len() < LOAD_PAGE * 3 {
                break;
            }
        }
        if let Some(held) = self.leases().get_mut(&partition)
            && held.token == token
        {
            held.cursor = cursor;
        }
        // An outcome this handle has not written yet: its send happened.
        found.retain(|m| !self.is_unsettled(m.id));
        for m in &mut found {
            if m.state == MessageState::InFlight {
                self.change(m.id, Fence::Holder, |now| Ok(requeue_interrupted(now)))
                    .await?;
            }
        }
        Ok(found.into_iter().map(as_loaded).collect())
    }

    /// Messages accepted into (or put back in) the partitions this handle
    /// holds since they were loaded with [`RedisStore::pending_in`], each
    /// with its partition, in accept order per partition. Waits up to `wait`
    /// for the first one; answers an empty list when none came.
    ///
    /// This includes messages this handle accepted itself: for a held
    /// partition, this feed (after the load) is the one way messages should
    /// reach the scheduler, so none is enqueued twice. One task per handle
    /// should call it; two would each get every message. A partition whose
    /// lease turns out lost is dropped from the feed (and from
    /// [`RedisStore::held`]) without failing the call.
    pub async fn new_messages(
        &self,
        wait: Duration,
    ) -> Result<Vec<(u32, StoredMessage)>, StoreError> {
        let watched: Vec<(u32, u64, String)> = self
            .leases()
            .iter()
            .filter_map(|(p, held)| held.cursor.clone().map(|c| (*p, held.token, c)))
            .collect();
        if watched.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        self.ready().await?;
        let by_key: HashMap<String, &(u32, u64, String)> = watched
            .iter()
            .map(|w| (self.inner.keys.feed(w.0), w))
            .collect();
        let mut read = ::redis::cmd("XREAD");
        read.arg("COUNT").arg(FEED_COUNT);
        let wait_ms = millis(wait);
        if wait_ms > 0 {
            read.arg("BLOCK").arg(wait_ms);
        }
        read.arg("STREAMS");
        for (partition, _, _) in &watched {
            read.arg(self.inner.keys.feed(*partition));
        }
        for (_, _, cursor) in &watched {
            read.arg(cursor);
        }
        let mut conn = self.inner.feed_conn.clone();
        let reply: Option<StreamReadReply> = tokio::time::timeout(
            wait + self.inner.command_timeout,
            read.query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable("the queue feed did not answer".into()))?
        .map_err(redis_error)?;
        let mut out = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(&&(partition, token, ref old_cursor)) = by_key.get(&stream.key) else {
                continue;
            };
            let Some(new_cursor) = stream.ids.last().map(|e| e.id.clone()) else {
                continue;
            };
            let mut ids = Vec::with_capacity(stream.ids.len());
            for entry in &stream.ids {
                let id = match entry.map.get("i") {
                    Some(v) => parse_id(reply_bytes(v).ok_or_else(|| bad_reply("feed"))?)?,
                    None => return Err(bad_reply("feed")),
                };
                ids.push(id);
            }
            let Some(records) = self
                .feed_records(partition, token, &new_cursor, &ids)
                .await?
            else {
                continue;
            };
            for (id, rec) in ids.into_iter().zip(records) {
                if rec.is_empty() {
                    // Purged since it was announced.
                    continue;
                }
                let m = record::decode(id, &rec)
                    .map_err(|source| StoreError::Corrupt { id, source })?;
                if m.state.is_open() && !self.is_unsettled(m.id) {
                    out.push((partition, as_loaded(m)));
                }
            }
            if let Some(held) = self.leases().get_mut(&partition)
                && held.token == token
                && held.cursor.as_ref() == Some(old_cursor)
            {
                held.cursor = Some(new_cursor);
            }
        }
        Ok(out)
    }

    /// The records of announced messages, trimming the feed up to
    /// `new_cursor`; `None` when the lease is lost (and forgotten).
    async fn feed_records(
        &self,
        partition: u32,
        token: u64,
        new_cursor: &str,
        ids: &[crate::store::record::MessageId],
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let mut call = self.inner.scripts.feed.prepare_invoke();
        call.arg(self.inner.keys.prefix())
            .arg(partition)
            .arg(&self.inner.agent_id)
            .arg(token)
            .arg(new_cursor);
        for id in ids {
            call.arg(super::keys::id_hex(*id));
        }
        let reply: Vec<Value> = call
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        match reply.first().and_then(reply_int) {
            Some(1) => {}
            Some(-1) => {
                self.lose(partition, token);
                return Ok(None);
            }
            _ => return Err(bad_reply("feed")),
        }
        let records: Vec<Vec<u8>> = reply[1..]
            .iter()
            .map(|v| reply_bytes(v).unwrap_or_default().to_vec())
            .collect();
        if records.len() != ids.len() {
            return Err(bad_reply("feed"));
        }
        Ok(Some(records))
    }
}
