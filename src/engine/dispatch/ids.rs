//! Tables keyed by message id: a fast hasher for small maps, and
//! [`IdTable`] for the per-message metadata.
//!
//! Owns only storage by `u64` message id. Ids are chosen by the agent
//! (dense counters), never by producers, so a keyed hash that resists
//! flooding buys nothing there; maps keyed by anything a producer controls
//! (chat ids) keep the standard hasher.
//!
//! Why [`IdTable`]: the scheduler hands out the oldest messages first, and
//! dense ids make the oldest ones neighbours. A window of slots indexed by
//! `id − base` turns the per-decision metadata lookups into near-sequential
//! memory reads, where a hash table scatters them (a cache miss each, about
//! a sixth of a decision with 100,000 chats queued). Ids outside the window
//! go to an ordinary map, so any id works.
//!
//! Invariant: equal ids hash equally; an [`IdTable`]'s memory stays within
//! a constant factor of the entries it holds (the window never exceeds
//! `4 × live + 4096` slots: when it would, its oldest entries move to the
//! map).

use std::collections::{HashMap, VecDeque};
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
pub type IdMap<V> = HashMap<u64, V, IdBuild>;

/// Slack of the window beyond four slots per live entry.
const WINDOW_SLACK: usize = 4096;

/// A map from message id to `V`, dense ids in a sliding window of slots.
#[derive(Debug)]
pub struct IdTable<V> {
    /// Id of `window[0]`.
    base: u64,
    window: VecDeque<Option<V>>,
    /// Live entries in `window`.
    in_window: usize,
    overflow: IdMap<V>,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            base: 0,
            window: VecDeque::new(),
            in_window: 0,
            overflow: IdMap::default(),
        }
    }
}

impl<V> IdTable<V> {
    pub fn len(&self) -> usize {
        self.in_window + self.overflow.len()
    }

    fn slot(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (i < self.window.len()).then_some(i)
    }

    pub fn get(&self, id: u64) -> Option<&V> {
        match self.slot(id) {
            Some(i) => self.window.get(i)?.as_ref(),
            None => self.overflow.get(&id),
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        match self.slot(id) {
            Some(i) => self.window.get_mut(i)?.as_mut(),
            None => self.overflow.get_mut(&id),
        }
    }

    pub fn contains_key(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, id: u64, v: V) {
        if self.len() == 0 {
            self.window.clear();
            self.base = id;
        }
        if let Some(i) = self.slot(id) {
            if self.window[i].is_none() {
                self.in_window += 1;
            }
            self.window[i] = Some(v);
            return;
        }
        let Some(ahead) = id.checked_sub(self.base) else {
            self.overflow.insert(id, v);
            return;
        };
        // Keep the window dense: if reaching `id` would make it too long,
        // its oldest slots move out first.
        let limit = (4 * (self.len() + 1) + WINDOW_SLACK) as u64;
        if ahead >= limit {
            self.shed_front(ahead + 1 - limit);
        }
        let ahead = usize::try_from(id - self.base).unwrap_or(usize::MAX);
        while self.window.len() < ahead {
            self.push_slot();
        }
        if self.window.len() == ahead {
            self.window.push_back(Some(v));
            self.in_window += 1;
        } else if let Some(slot) = self.window.get_mut(ahead) {
            if slot.is_none() {
                self.in_window += 1;
            }
            *slot = Some(v);
        }
    }

    /// Appends the next slot, taking its entry from the map if it is there:
    /// no id in the window's range is ever left in the map.
    fn push_slot(&mut self) {
        let id = self.base + self.window.len() as u64;
        let v = if self.overflow.is_empty() {
            None
        } else {
            self.overflow.remove(&id)
        };
        if v.is_some() {
            self.in_window += 1;
        }
        self.window.push_back(v);
    }

    /// Advances the window's start by `n`, moving live slots to the map.
    fn shed_front(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let Some(slot) = self.window.pop_front() else {
                break;
            };
            if let Some(v) = slot {
                self.in_window -= 1;
                self.overflow.insert(self.base, v);
            }
            self.base += 1;
            left -= 1;
        }
        self.base = self.base.saturating_add(left);
    }

    pub fn remove(&mut self, id: u64) -> Option<V> {
        let v = match self.slot(id) {
            None => self.overflow.remove(&id)?,
            Some(i) => {
                let v = self.window.get_mut(i)?.take()?;
                self.in_window -= 1;
                while self.window.front().is_some_and(Option::is_none) {
                    self.window.pop_front();
                    self.base += 1;
                }
                while self.window.back().is_some_and(Option::is_none) {
                    self.window.pop_back();
                }
                v
            }
        };
        let limit = 4 * (self.len() + 1) + WINDOW_SLACK;
        if self.window.len() > limit {
            self.shed_front((self.window.len() - limit) as u64);
        }
        Some(v)
    }

    /// Every value, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.window
            .iter_mut()
            .filter_map(Option::as_mut)
            .chain(self.overflow.values_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::hash::BuildHasher;

    proptest! {
        /// An IdTable behaves as a map, whatever the ids, and its window
        /// stays within its bound.
        #[test]
        fn id_table_is_a_map(ops in proptest::collection::vec((0u8..4, 0u64..20_000, any::<u32>()), 1..2_000)) {
            let mut t: IdTable<u32> = IdTable::default();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            for (op, id, v) in ops {
                // Mostly ascending ids, as an agent hands them out; some
                // scattered, some far away.
                let id = match op {
                    2 => id,
                    3 => id * 1_000_000_007,
                    _ => id / 7,
                };
                match op {
                    0 | 2 | 3 => { t.insert(id, v); m.insert(id, v); }
                    _ => { prop_assert_eq!(t.remove(id), m.remove(&id)); }
                }
                prop_assert_eq!(t.len(), m.len());
                prop_assert!(t.window.len() <= 4 * (t.len() + 1) + WINDOW_SLACK);
            }
            for (id, v) in &m {
                prop_assert_eq!(t.get(*id), Some(v));
            }
            let mut all: Vec<u32> = t.values_mut().map(|v| *v).collect();
            let mut want: Vec<u32> = m.values().copied().collect();
            all.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }

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
