//! Dead letters on Redis: listing them page by page and an operator's
//! retry or purge.
//!
//! Owns: walking the dead-letter index (one sorted set, all scores 0, so
//! its members — ids as fixed-width hex — sort in id order) and applying an
//! operator's action to a selection. Leaves to others: the rules
//! (`rules.rs`) and the write (`write.rs`).
//!
//! Invariant: a selection is acted on in one script, all of it or none: the
//! letters are read, the new records decided, and the script writes them
//! only if none changed since it was read; otherwise the whole selection
//! is read again. Like the embedded store's single transaction, a large
//! selection holds Redis for as long as it takes (about 10 µs a letter).

use super::keys::{id_hex, parse_id, split_stored};
use super::reply::redis_error;
use super::rules::Change;
use super::store::RedisStore;
use super::write::{Fence, Outcome, WRITE_ROUNDS, Write};
use crate::store::record::{self, MessageId, StoredMessage};
use crate::store::{DeadFilter, DeadSelection, StoreError};

/// Dead letters read per round trip while walking the index.
const DEAD_PAGE: usize = 256;

/// A dead letter as read, with the version its write must find.
struct Letter {
    message: StoredMessage,
    version: String,
}

impl RedisStore {
    /// Dead letters matching `filter`, oldest id first.
    pub(super) async fn scan_dead(
        &self,
        filter: &DeadFilter,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let letters = self.select_dead(filter).await?;
        Ok(letters.into_iter().map(|l| l.message).collect())
    }

    /// Applies `rule` to the selected dead letters, all or none; answers
    /// the ids it changed, in id order.
    pub(super) async fn act_on_dead(
        &self,
        selection: DeadSelection,
        rule: fn(&StoredMessage) -> Result<Change, StoreError>,
    ) -> Result<Vec<MessageId>, StoreError> {
        let filter = match selection {
            DeadSelection::One(id) => {
                self.change(id, Fence::None, |m| rule(m).map(Some)).await?;
                return Ok(vec![id]);
            }
            DeadSelection::Filter(filter) => filter,
            DeadSelection::All => DeadFilter::default(),
        };
        for _ in 0..WRITE_ROUNDS {
            let letters = self.select_dead(&filter).await?;
            if letters.is_empty() {
                return Ok(Vec::new());
            }
            let writes = letters
                .iter()
                .map(|l| {
                    Ok(Write {
                        old: &l.message,
                        version: &l.version,
                        token: None,
                        change: rule(&l.message)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            match self.write_all(&writes).await? {
                Outcome::Written => return Ok(letters.iter().map(|l| l.message.id).collect()),
                // Someone acted on a letter meanwhile: select again.
                Outcome::Gone(_) | Outcome::Changed(_) => continue,
                Outcome::Fenced(_) => {
                    return Err(StoreError::Inconsistent(
                        "an unfenced dead-letter write was fenced".into(),
                    ));
                }
            }
        }
        Err(StoreError::Inconsistent(format!(
            "the dead letters changed under each of {WRITE_ROUNDS} attempts to act on them"
        )))
    }

    /// The dead letters matching `filter` (its `after` and `limit`
    /// included), oldest id first, with their versions.
    async fn select_dead(&self, filter: &DeadFilter) -> Result<Vec<Letter>, StoreError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        let mut after = filter.after.map(id_hex);
        while found.len() < limit {
            let (page, next) = self.dead_page(after.as_deref()).await?;
            found.extend(page.into_iter().filter(|l| filter.matches(&l.message)));
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// One page of dead letters after `after` (an id in hex), with their
    /// records, and where the next page starts (`None`: this was the last).
    /// Letters purged between the two reads are left out.
    async fn dead_page(
        &self,
        after: Option<&str>,
    ) -> Result<(Vec<Letter>, Option<String>), StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut conn = self.conn().await?;
        let ids: Vec<Vec<u8>> = ::redis::cmd("ZRANGEBYLEX")
            .arg(self.inner.keys.dead())
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(DEAD_PAGE)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let next = match ids.last() {
            Some(last) if ids.len() == DEAD_PAGE => {
                Some(String::from_utf8_lossy(last).into_owned())
            }
            _ => None,
        };
        let ids = ids
            .iter()
            .map(|raw| parse_id(raw))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut read = ::redis::pipe();
        for id in &ids {
            read.cmd("GET").arg(self.inner.keys.message(*id));
        }
        let values: Vec<Option<Vec<u8>>> =
            read.query_async(&mut conn).await.map_err(redis_error)?;
        let mut page = Vec::with_capacity(ids.len());
        for (id, value) in ids.into_iter().zip(values) {
            let Some(value) = value else {
                continue;
            };
            let (version, rec) = split_stored(id, &value)?;
            let message =
                record::decode(id, rec).map_err(|source| StoreError::Corrupt { id, source })?;
            page.push(Letter {
                message,
                version: version.to_owned(),
            });
        }
        Ok((page, next))
    }
}
