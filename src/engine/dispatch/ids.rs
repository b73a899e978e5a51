//! A fast hasher for the dispatcher's message-id maps.
//!
//! Owns only hashing of `u64` message ids. Ids are chosen by the agent
//! (dense counters), never by producers, so a keyed hash that resists
//! flooding buys nothing there and costs a third of a decision; maps keyed
//! by anything a producer controls (chat ids) keep the standard hasher.
//!
//! Invariant: equal ids hash equally; every input bit reaches the high bits
//! the table uses.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing of one `u64` (other writes fold in byte-wise).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
        self.0 ^= self.0 >> 29;
    }
}

/// `HashMap<u64, V, IdBuild>`.
pub type IdBuild = BuildHasherDefault<IdHasher>;
pub type IdMap<V> = std::collections::HashMap<u64, V, IdBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    /// As spread as random values would be (about 63 % of 4096 slots).
    fn dense_ids_spread_over_high_and_low_bits() {
        let b = IdBuild::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for id in 0u64..4096 {
            let h = b.hash_one(id);
            low.insert(h & 0xfff);
            high.insert(h >> 52);
        }
        assert!(
            low.len() > 2300 && high.len() > 2300,
            "{} {}",
            low.len(),
            high.len()
        );
    }
}
