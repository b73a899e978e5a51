//! The embedded store's on-disk layout: redb tables, their keys and values,
//! and the layout version.
//!
//! Owns the table definitions, the counter slots and the checks made when a
//! file is opened. Leaves to `transitions` what changes the tables and to
//! `record` how a message is encoded.
//!
//! Invariant (kept by `transitions`, checked by the property test): a message
//! id is in exactly one of `open`, `dead` and `delivered_by_time`, chosen by
//! its state, and the `counters` equal the sizes of those indexes.
//!
//! | table                 | key                     | value                 |
//! |-----------------------|-------------------------|-----------------------|
//! | `meta`                | name (`layout_version`) | u64                   |
//! | `messages`            | id (u128)               | record bytes          |
//! | `open`                | id                      | () — pending/in flight|
//! | `dead`                | id                      | ()                    |
//! | `delivered_by_time`   | (delivered ms, id)      | ()                    |
//! | `idempotency`         | key                     | (id, first seen ms)   |
//! | `idempotency_by_time` | (first seen ms, key)    | ()                    |
//! | `counters`            | slot name               | u64                   |

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::engine::Priority;
use crate::store::StoreError;
use crate::store::record::{self, MessageId, MessageState, StoredMessage};

/// Bumped when a table is added, removed or changes meaning; an older build
/// refuses a newer file instead of misreading it.
pub(super) const LAYOUT_VERSION: u64 = 1;
const LAYOUT_VERSION_KEY: &str = "layout_version";
/// When the latest attempt outcome was recorded (wall-clock ms): a send
/// happened no later than this, unless its message is still open. A key
/// older builds do not read, so it needs no new layout version.
pub(super) const LAST_OUTCOME_KEY: &str = "last_outcome_ms";

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
pub(super) const OPEN: TableDefinition<u128, ()> = TableDefinition::new("open");
pub(super) const DEAD: TableDefinition<u128, ()> = TableDefinition::new("dead");
pub(super) const DELIVERED: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("delivered_by_time");
pub(super) const IDEMPOTENCY: TableDefinition<&str, (u128, u64)> =
    TableDefinition::new("idempotency");
pub(super) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("idempotency_by_time");
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// One counter per (state, priority) the stats report.
pub(super) const SLOTS: usize = 7;
const SLOT_NAMES: [&str; SLOTS] = [
    "pending.critical",
    "pending.high",
    "pending.normal",
    "pending.low",
    "in_flight",
    "dead",
    "delivered",
];
const IN_FLIGHT_SLOT: usize = 4;
const DEAD_SLOT: usize = 5;
const DELIVERED_SLOT: usize = 6;

pub(super) fn slot_name(slot: usize) -> &'static str {
    SLOT_NAMES[slot % SLOTS]
}

/// The counter a message in this state and priority is counted in.
pub(super) fn slot_of(state: MessageState, priority: Priority) -> usize {
    match state {
        MessageState::Pending => priority.index(),
        MessageState::InFlight => IN_FLIGHT_SLOT,
        MessageState::DeadLettered => DEAD_SLOT,
        MessageState::Delivered => DELIVERED_SLOT,
    }
}

/// Reads the counters into the stats shape.
pub(super) fn stats_from(counts: [u64; SLOTS]) -> crate::store::StoreStats {
    crate::store::StoreStats {
        pending_by_priority: [counts[0], counts[1], counts[2], counts[3]],
        in_flight: counts[IN_FLIGHT_SLOT],
        dead: counts[DEAD_SLOT],
        delivered_retained: counts[DELIVERED_SLOT],
    }
}

pub(super) fn read_counters(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<[u64; SLOTS], StoreError> {
    let mut counts = [0u64; SLOTS];
    for (slot, count) in counts.iter_mut().enumerate() {
        if let Some(v) = table.get(slot_name(slot)).map_err(StoreError::storage)? {
            *count = v.value();
        }
    }
    Ok(counts)
}

/// Converts a key back into an id; anything else is a damaged index.
pub(super) fn id_of(bits: u128) -> Result<MessageId, StoreError> {
    MessageId::from_u128(bits)
        .ok_or_else(|| StoreError::Inconsistent(format!("index holds a non-UUIDv7 key {bits:x}")))
}

/// Loads and decodes one message.
pub(super) fn load(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: MessageId,
) -> Result<Option<StoredMessage>, StoreError> {
    let Some(guard) = table.get(id.as_u128()).map_err(StoreError::storage)? else {
        return Ok(None);
    };
    record::decode(id, guard.value())
        .map(Some)
        .map_err(|source| StoreError::Corrupt { id, source })
}

/// Loads a message an index points at; its absence is a damaged index.
pub(super) fn load_indexed(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: MessageId,
) -> Result<StoredMessage, StoreError> {
    load(table, id)?
        .ok_or_else(|| StoreError::Inconsistent(format!("index names missing message {id}")))
}

/// Creates every table and stamps the layout version on a new file; refuses
/// a file stamped by a newer layout.
pub(super) fn ensure(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
    let found = meta
        .get(LAYOUT_VERSION_KEY)
        .map_err(StoreError::storage)?
        .map(|v| v.value());
    match found {
        Some(LAYOUT_VERSION) => {}
        Some(other) => {
            return Err(StoreError::UnsupportedLayout {
                found: other,
                supported: LAYOUT_VERSION,
            });
        }
        None => {
            meta.insert(LAYOUT_VERSION_KEY, LAYOUT_VERSION)
                .map_err(StoreError::storage)?;
        }
    }
    txn.open_table(MESSAGES).map_err(StoreError::storage)?;
    txn.open_table(OPEN).map_err(StoreError::storage)?;
    txn.open_table(DEAD).map_err(StoreError::storage)?;
    txn.open_table(DELIVERED).map_err(StoreError::storage)?;
    txn.open_table(IDEMPOTENCY).map_err(StoreError::storage)?;
    txn.open_table(IDEMPOTENCY_BY_TIME)
        .map_err(StoreError::storage)?;
    txn.open_table(COUNTERS).map_err(StoreError::storage)?;
    Ok(())
}
