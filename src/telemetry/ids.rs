//! The trace identity of a message: its trace id and the span id of its
//! root ("message") span, both derived from the [`MessageId`] alone.
//!
//! Owns the derivation. Leaves to others: building and exporting spans
//! (`otel`), choosing when to emit them (the agent).
//!
//! Why derived and not remembered: a message is accepted by one task and
//! sent later by the dispatch loop, possibly by another process after a
//! restart or by another agent of a Redis fleet. No in-memory span parent
//! survives that, and storing trace context in the record would change the
//! record format for a feature that is off by default. Every process that
//! knows the message id computes the same two ids, so ingest and every
//! attempt land in one tree without any of them talking to each other.
//!
//! Invariant: both functions are pure, never return the all-zero (invalid)
//! id, and the trace id is the message id's 16 bytes unchanged, so a
//! tracing backend can be searched by the id herald answered with.

use sha2::{Digest, Sha256};

use crate::store::MessageId;

/// The message's trace id: the UUIDv7's 16 bytes, big-endian. A UUIDv7 has
/// version and variant bits set, so it is never all zero.
pub fn trace_id(id: MessageId) -> [u8; 16] {
    id.as_u128().to_be_bytes()
}

/// The root span's id: the first 8 bytes of SHA-256 over a domain tag and
/// the id. A hash rather than a slice of the id, because the id's leading
/// bytes are a timestamp shared by every message of the same millisecond.
pub fn root_span_id(id: MessageId) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(b"herald.message.root\0")
        .chain_update(trace_id(id))
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    if out == [0u8; 8] {
        // Invalid in OTel; vanishingly unlikely, but a pure function must
        // still answer with a valid id.
        out[7] = 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_trace_id_is_the_message_id() {
        let id: MessageId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
        assert_eq!(
            hex::encode(trace_id(id)),
            "01890a5dac96774bbcceb302099a8057"
        );
    }

    #[test]
    fn ids_are_the_same_in_every_process() {
        // Fixed expectation: a change of derivation would split the traces
        // of messages accepted before an upgrade from their later attempts.
        let id: MessageId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
        assert_eq!(hex::encode(root_span_id(id)), "d7eb7a9284ee242e");
        let again: MessageId = id.to_string().parse().unwrap();
        assert_eq!(root_span_id(id), root_span_id(again));
    }

    proptest! {
        #[test]
        fn ids_are_valid_and_distinct(a in any::<u128>(), b in any::<u128>()) {
            // Force the version (7) and variant bits so any u128 is a UUIDv7.
            let v7 = |x: u128| (x & !(0xF << 76) & !(0b11 << 62)) | (0x7 << 76) | (0b10 << 62);
            let (ia, ib) = (MessageId::from_u128(v7(a)).unwrap(), MessageId::from_u128(v7(b)).unwrap());
            prop_assert_ne!(trace_id(ia), [0u8; 16]);
            prop_assert_ne!(root_span_id(ia), [0u8; 8]);
            prop_assert_eq!(root_span_id(ia), root_span_id(ia));
            if ia != ib {
                prop_assert_ne!(trace_id(ia), trace_id(ib));
                prop_assert_ne!(root_span_id(ia), root_span_id(ib));
            }
        }
    }
}
