//! The embedded store's in-memory view of its open messages: each one's
//! priority, and the send under way, if any.
//!
//! Owns the in-flight marks of the embedded store. A mark is never written
//! to the file: after a crash every open message is `Pending` whether its
//! mark was kept or not, so writing it bought nothing but a write per send
//! (measured: one writer job in three, on the thread every accept waits
//! for). Leaves to `transitions` which changes open or close a message; it
//! reports them, and the writer applies them here once their transaction
//! has committed, before any caller of that batch hears back.
//!
//! Invariant: the index holds exactly the messages of the `open` table as of
//! the last commit applied. A reader between a commit and its `apply` sees
//! the index one commit behind the file, which stats may show for an
//! instant.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::engine::Priority;
use crate::store::record::{MessageId, MessageState, StoredMessage};

/// How a committed transaction changed the set of open messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpenChange {
    /// Accepted, or back from the dead letters: open and not being sent.
    Opened(MessageId, Priority),
    /// Delivered, dead-lettered or removed.
    Closed(MessageId),
    /// Still open, but the send under way ended (a retry was scheduled).
    Unmarked(MessageId),
}

#[derive(Clone, Debug)]
struct Entry {
    priority: Priority,
    sending: Option<Mark>,
}

#[derive(Clone, Debug)]
struct Mark {
    tier: String,
    at_ms: u64,
}

/// Open messages by id. Cheap operations under one mutex, never held across
/// an await or a disk access; none walks the map, so stats cost the same
/// with a backlog of millions.
#[derive(Debug, Default)]
pub(super) struct OpenIndex {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<MessageId, Entry>,
    /// Entries with a mark, by priority.
    sending: [u64; 4],
}

impl State {
    /// Sets or clears `id`'s mark, keeping the count in step; false if `id`
    /// is not open.
    fn set_mark(&mut self, id: MessageId, mark: Option<Mark>) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let slot = &mut self.sending[entry.priority.index()];
        match (entry.sending.is_some(), mark.is_some()) {
            (false, true) => *slot += 1,
            (true, false) => *slot = slot.saturating_sub(1),
            _ => {}
        }
        entry.sending = mark;
        true
    }

    fn remove(&mut self, id: MessageId) {
        self.set_mark(id, None);
        self.entries.remove(&id);
    }

    /// `id` is open and not being sent, whatever it was before.
    fn open(&mut self, id: MessageId, priority: Priority) {
        self.remove(id);
        let entry = Entry {
            priority,
            sending: None,
        };
        self.entries.insert(id, entry);
    }
}

impl OpenIndex {
    /// An index of `open` messages, none of them being sent.
    pub(super) fn new(open: impl IntoIterator<Item = (MessageId, Priority)>) -> Self {
        let mut state = State::default();
        for (id, priority) in open {
            state.open(id, priority);
        }
        OpenIndex {
            state: Mutex::new(state),
        }
    }

    /// No operation can panic between changing the map and its count, so a
    /// lock poisoned by a panic elsewhere still guards a whole state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one committed transaction's changes, in order.
    pub(super) fn apply(&self, changes: &[OpenChange]) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.lock();
        for change in changes {
            match *change {
                OpenChange::Opened(id, priority) => state.open(id, priority),
                OpenChange::Closed(id) => state.remove(id),
                OpenChange::Unmarked(id) => {
                    state.set_mark(id, None);
                }
            }
        }
    }

    /// Marks an open message as being sent through `tier`; false if the
    /// message is not open (unknown, delivered or dead-lettered).
    pub(super) fn mark(&self, id: MessageId, tier: String, now_ms: u64) -> bool {
        let mark = Mark {
            tier,
            at_ms: now_ms,
        };
        self.lock().set_mark(id, Some(mark))
    }

    /// Shows a stored message as the process knows it: `InFlight`, with its
    /// tier, while a send is under way.
    pub(super) fn overlay(&self, m: &mut StoredMessage) {
        if m.state != MessageState::Pending {
            return;
        }
        let state = self.lock();
        if let Some(mark) = state.entries.get(&m.id).and_then(|e| e.sending.as_ref()) {
            m.state = MessageState::InFlight;
            m.in_flight_tier = Some(mark.tier.clone());
            m.updated_ms = m.updated_ms.max(mark.at_ms);
        }
    }

    /// Messages being sent, in total and by priority.
    pub(super) fn in_flight(&self) -> (u64, [u64; 4]) {
        let by_priority = self.lock().sending;
        (by_priority.iter().sum(), by_priority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::sample_new;

    fn stored(id: MessageId) -> StoredMessage {
        StoredMessage::accepted(id, sample_new(1), 5)
    }

    #[test]
    fn only_open_messages_can_be_marked() {
        let (a, b) = (MessageId::generate(), MessageId::generate());
        let index = OpenIndex::new([(a, Priority::High)]);
        assert!(index.mark(a, "primary".into(), 10));
        assert!(!index.mark(b, "primary".into(), 10));
        index.apply(&[OpenChange::Opened(b, Priority::Low)]);
        assert!(index.mark(b, "backup".into(), 11));
        index.apply(&[OpenChange::Closed(a)]);
        assert!(!index.mark(a, "primary".into(), 12));
        assert_eq!(index.in_flight(), (1, [0, 0, 0, 1]));
    }

    #[test]
    fn a_mark_shows_as_in_flight_until_the_send_ends() {
        let id = MessageId::generate();
        let index = OpenIndex::new([(id, Priority::Normal)]);
        let mut m = stored(id);
        index.overlay(&mut m);
        assert_eq!(m.state, MessageState::Pending);

        index.mark(id, "primary".into(), 20);
        let mut m = stored(id);
        index.overlay(&mut m);
        assert_eq!(m.state, MessageState::InFlight);
        assert_eq!(m.in_flight_tier.as_deref(), Some("primary"));
        assert_eq!(m.updated_ms, 20);
        assert_eq!(index.in_flight(), (1, [0, 0, 1, 0]));

        index.apply(&[OpenChange::Unmarked(id)]);
        let mut m = stored(id);
        index.overlay(&mut m);
        assert_eq!(m.state, MessageState::Pending);
        assert_eq!(m.in_flight_tier, None);
        assert_eq!(index.in_flight(), (0, [0; 4]));
    }

    #[test]
    fn a_closed_record_is_never_shown_in_flight() {
        let id = MessageId::generate();
        let index = OpenIndex::new([(id, Priority::Normal)]);
        index.mark(id, "primary".into(), 20);
        // A read snapshot taken after the commit, before `apply`.
        let mut m = stored(id);
        m.state = MessageState::Delivered;
        index.overlay(&mut m);
        assert_eq!(m.state, MessageState::Delivered);
        assert_eq!(m.in_flight_tier, None);
    }

    #[test]
    fn the_counts_follow_every_change() {
        let (a, b) = (MessageId::generate(), MessageId::generate());
        let index = OpenIndex::new([(a, Priority::High), (b, Priority::High)]);
        index.mark(a, "primary".into(), 1);
        index.mark(a, "backup".into(), 2);
        assert_eq!(index.in_flight(), (1, [0, 1, 0, 0]));
        index.mark(b, "primary".into(), 3);
        assert_eq!(index.in_flight(), (2, [0, 2, 0, 0]));
        index.apply(&[OpenChange::Closed(a), OpenChange::Unmarked(b)]);
        assert_eq!(index.in_flight(), (0, [0; 4]));
        // Repeated and stray changes leave the counts alone.
        index.apply(&[OpenChange::Unmarked(b), OpenChange::Closed(a)]);
        assert_eq!(index.in_flight(), (0, [0; 4]));
        assert!(!index.mark(a, "primary".into(), 4));
        assert_eq!(index.in_flight(), (0, [0; 4]));
    }

    #[test]
    fn reopening_a_message_clears_its_old_mark() {
        let id = MessageId::generate();
        let index = OpenIndex::new([(id, Priority::Normal)]);
        index.mark(id, "primary".into(), 20);
        index.apply(&[
            OpenChange::Closed(id),
            OpenChange::Opened(id, Priority::Normal),
        ]);
        assert_eq!(index.in_flight(), (0, [0; 4]));
    }
}
