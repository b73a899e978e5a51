//! Key names, message-id text and the chat → partition hash of the Redis
//! queue.
//!
//! Owns: the names of every key the queue writes under its prefix (the Lua
//! scripts build the same names from the same prefix, see `lua/`), and the
//! partition function. Leaves to others: what the keys hold (`mod.rs` has the
//! table, the scripts the writes).
//!
//! Invariant: [`partition_of`] is a pure function of the chat's canonical
//! text and the partition count — the same on every agent, every build and
//! every platform (FNV-1a 64, not Rust's randomly keyed SipHash) — so a chat
//! always lands in the same partition.

use crate::store::StoreError;
use crate::store::record::{ChatRef, MessageId};

/// The names of the queue's keys under one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// The configured prefix plus `:`; every key starts with it.
    prefix: String,
}

impl Keys {
    pub(super) fn new(key_prefix: &str) -> Self {
        Keys {
            prefix: format!("{key_prefix}:"),
        }
    }

    /// What the scripts get as `ARGV[1]`.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) fn message(&self, id: MessageId) -> String {
        format!("{}m:{}", self.prefix, id_hex(id))
    }

    /// Where accept notes the id it gave a candidate it had to move.
    pub(super) fn alias(&self, candidate: MessageId) -> String {
        format!("{}a:{}", self.prefix, id_hex(candidate))
    }

    pub(super) fn feed(&self, partition: u32) -> String {
        format!("{}s:{partition}", self.prefix)
    }

    pub(super) fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }

    pub(super) fn delivered(&self) -> String {
        format!("{}done", self.prefix)
    }

    pub(super) fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }
}

/// A message id as the queue writes it: 32 lowercase hex digits, so the
/// text order of ids is their numeric (creation) order.
pub(super) fn id_hex(id: MessageId) -> String {
    format!("{:032x}", id.as_u128())
}

/// Reads an id the queue wrote; anything else is a damaged queue.
pub(super) fn parse_id(text: &[u8]) -> Result<MessageId, StoreError> {
    std::str::from_utf8(text)
        .ok()
        .filter(|t| t.len() == 32)
        .and_then(|t| u128::from_str_radix(t, 16).ok())
        .and_then(MessageId::from_u128)
        .ok_or_else(|| {
            StoreError::Inconsistent(format!(
                "the queue holds a malformed message id ({} bytes)",
                text.len()
            ))
        })
}

/// A stored message value split into its version and record bytes. The
/// value is `<version>:<partition>:<record bytes>`: one string per message,
/// since a hash with a record over 64 bytes would leave Redis's compact
/// encoding and cost about 200 bytes more per message.
pub(super) fn split_stored(id: MessageId, value: &[u8]) -> Result<(&str, &[u8]), StoreError> {
    let mut colons = value
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b':')
        .map(|(at, _)| at);
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if let (Some(first), Some(second)) = (colons.next(), colons.next())
        && digits(&value[..first])
        && digits(&value[first + 1..second])
        && let Ok(version) = std::str::from_utf8(&value[..first])
    {
        return Ok((version, &value[second + 1..]));
    }
    Err(StoreError::Inconsistent(format!(
        "the stored value of message {id} has no version and partition"
    )))
}

/// The partition a chat's messages go to, in `0..partitions`.
///
/// Hashes the chat's canonical text: the decimal id, or the `@username` in
/// lower case (Telegram usernames are case-insensitive, so `@News` and
/// `@news` are one chat and must share a partition).
pub fn partition_of(chat: &ChatRef, partitions: u32) -> u32 {
    let hash = match chat {
        ChatRef::Id(id) => fnv1a64(id.to_string().bytes()),
        ChatRef::Username(name) => fnv1a64(name.bytes().map(|b| b.to_ascii_lowercase())),
    };
    (hash % u64::from(partitions.max(1))) as u32
}

/// FNV-1a, 64 bits: tiny, unkeyed, with published test vectors.
fn fnv1a64(bytes: impl Iterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a64("".bytes()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a".bytes()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar".bytes()), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_are_pinned() {
        // Computed independently of this code. Changing these numbers moves
        // chats between partitions of a live queue and breaks their order.
        assert_eq!(partition_of(&ChatRef::Id(-1_001_234_567_890), 4096), 3370);
        assert_eq!(partition_of(&ChatRef::Id(42), 64), 35);
        assert_eq!(partition_of(&ChatRef::Username("@news".into()), 64), 4);
        assert_eq!(partition_of(&ChatRef::Id(7), 1), 0);
    }

    #[test]
    fn records_come_out_of_their_stored_values() {
        let id = MessageId::generate();
        let (version, record) = split_stored(id, b"12:3:\x01{\"a\":\"b:c\"}").unwrap();
        assert_eq!((version, record), ("12", b"\x01{\"a\":\"b:c\"}".as_slice()));
        assert_eq!(split_stored(id, b"1:0:").unwrap(), ("1", b"".as_slice()));
        assert!(split_stored(id, b"1:x").is_err());
        assert!(split_stored(id, b"1::x").is_err());
        assert!(split_stored(id, b"\x01{\"a\":1,\"b\":2}").is_err());
    }

    #[test]
    fn ids_round_trip_through_their_text() {
        let id = MessageId::generate();
        let hex = id_hex(id);
        assert_eq!(hex.len(), 32);
        assert_eq!(parse_id(hex.as_bytes()).unwrap(), id);
        assert!(parse_id(b"not an id").is_err());
        // A UUID of another version is not a message id.
        assert!(parse_id(b"67e5504410b1426f9247bb680e5fe0c8").is_err());
    }

    proptest! {
        #[test]
        fn partition_is_in_range_and_ignores_username_case(
            id in any::<i64>(),
            name in "[a-zA-Z0-9_]{1,32}",
            partitions in 1u32..=4096,
        ) {
            prop_assert!(partition_of(&ChatRef::Id(id), partitions) < partitions);
            let mixed = ChatRef::Username(format!("@{name}"));
            let lower = ChatRef::Username(format!("@{}", name.to_ascii_lowercase()));
            prop_assert_eq!(partition_of(&mixed, partitions), partition_of(&lower, partitions));
        }
    }
}
