//! Chats set aside: held back because their head's message type is paused
//! (degradation), has no free bulkhead slot on the tier it would take, or
//! has no tier left that is not stopped.
//!
//! Owns: the set-aside chats with their queued messages in order, one FIFO
//! of chats per reason ([`BlockKey`]), and handing chats back. Leaves to
//! others: deciding when a key has room again (the dispatcher, on a freed
//! slot, a level change or a poll) and putting released messages back into
//! the scheduler.
//!
//! Why not park them in the scheduler: a parked chat waits for an instant,
//! but a bulkhead slot frees when a send completes, which no instant
//! predicts; re-offering every such chat at a guessed instant would cost
//! `O(chats)` per guess. Set aside, a chat costs nothing until its key has
//! room, and then chats come back oldest-blocked first.
//!
//! Invariant: a chat is either here or in the scheduler, never both; its
//! messages keep their order; `len` is the number of messages held here.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

use crate::engine::scheduler::Item;
use crate::engine::{FastMap, Instant};

use super::types::MessageType;

/// Why a chat is set aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKey {
    /// Its head's type is paused by the degradation level.
    Paused(MessageType),
    /// Its head's type has no free slot on this tier (stable tier key).
    Bulkhead { tier: u32, ty: MessageType },
    /// Every tier its head may still use is stopped (critical error): it
    /// waits for an operator's reset or a reload.
    Stranded,
}

#[derive(Debug)]
struct AsideChat {
    key: BlockKey,
    items: VecDeque<Item<u64>>,
}

#[derive(Debug, Default)]
pub struct Aside {
    chats: FastMap<i64, AsideChat>,
    queues: FastMap<BlockKey, VecDeque<i64>>,
    messages: usize,
}

impl Aside {
    /// Messages held here.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Holds `items` (a chat's whole queue, oldest first) until `key` has
    /// room. A chat already here gets the items appended.
    pub fn set_aside(&mut self, chat: i64, key: BlockKey, items: Vec<Item<u64>>) {
        if items.is_empty() {
            return;
        }
        self.messages += items.len();
        match self.chats.entry(chat) {
            Entry::Occupied(mut o) => o.get_mut().items.extend(items),
            Entry::Vacant(v) => {
                v.insert(AsideChat {
                    key,
                    items: items.into(),
                });
                self.queues.entry(key).or_default().push_back(chat);
            }
        }
    }

    /// Appends a message to its chat if the chat is set aside; otherwise
    /// hands it back.
    pub fn append(&mut self, item: Item<u64>) -> Result<(), Item<u64>> {
        match self.chats.get_mut(&item.chat) {
            Some(c) => {
                c.items.push_back(item);
                self.messages += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Hands back up to `max_chats` chats blocked on `key`, longest-blocked
    /// first; their messages in order, chat after chat.
    pub fn release(&mut self, key: BlockKey, max_chats: usize) -> Vec<Item<u64>> {
        let mut out = Vec::new();
        let Some(queue) = self.queues.get_mut(&key) else {
            return out;
        };
        for _ in 0..max_chats {
            let Some(chat) = queue.pop_front() else { break };
            if let Some(c) = self.chats.remove(&chat) {
                self.messages -= c.items.len();
                out.extend(c.items);
            }
        }
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        out
    }

    /// Keys with chats waiting, and how many chats each.
    pub fn keys(&self) -> Vec<(BlockKey, usize)> {
        self.queues.iter().map(|(k, q)| (*k, q.len())).collect()
    }

    /// Removes one message; `true` if it was here.
    pub fn remove(&mut self, chat: i64, id: u64) -> bool {
        let Some(c) = self.chats.get_mut(&chat) else {
            return false;
        };
        let Some(pos) = c.items.iter().position(|i| i.id == id) else {
            return false;
        };
        c.items.remove(pos);
        self.messages -= 1;
        if c.items.is_empty() {
            let key = c.key;
            self.chats.remove(&chat);
            if let Some(q) = self.queues.get_mut(&key) {
                q.retain(|&x| x != chat);
                if q.is_empty() {
                    self.queues.remove(&key);
                }
            }
        }
        true
    }

    /// Messages per priority held here.
    pub fn by_priority(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for c in self.chats.values() {
            for i in &c.items {
                n[i.priority.index()] += 1;
            }
        }
        n
    }

    /// The oldest `enqueued_at` held here (a scan: call it once per tick).
    pub fn oldest(&self) -> Option<Instant> {
        self.chats
            .values()
            .flat_map(|c| c.items.iter().map(|i| i.enqueued_at))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Priority;

    fn item(id: u64, chat: i64) -> Item<u64> {
        Item {
            id,
            chat,
            priority: Priority::Normal,
            enqueued_at: Instant::from_secs(id),
            not_before: None,
        }
    }

    #[test]
    fn release_is_fifo_by_chat_and_keeps_order() {
        let mut a = Aside::default();
        let k = BlockKey::Paused(MessageType(1));
        a.set_aside(5, k, vec![item(1, 5), item(2, 5)]);
        a.set_aside(6, k, vec![item(3, 6)]);
        assert!(a.append(item(4, 5)).is_ok());
        assert!(a.append(item(9, 7)).is_err());
        assert_eq!(a.len(), 4);
        assert_eq!(a.oldest(), Some(Instant::from_secs(1)));
        let ids: Vec<u64> = a.release(k, 1).iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
        assert!(a.remove(6, 3));
        assert!(a.is_empty());
        assert!(a.keys().is_empty());
        assert!(a.release(k, 5).is_empty());
    }
}
