//! The ready queue: which message goes next, across priority classes and chats.
//!
//! Owns: the order in which queued message ids are handed to the dispatcher —
//! weighted fair queuing across the four priority classes, FIFO within a chat,
//! ready times (`not_before`, delayed retries) and parked chats (a chat waiting
//! for its per-chat limiter slot). Leaves to others: durability (the store),
//! limiter, breaker and bulkhead decisions (the dispatcher asks them and tells
//! the scheduler through [`Gate`] or [`Scheduler::defer_chat`]), and which
//! classes are shed (degradation computes a [`PrioritySet`], the dispatcher
//! passes it to [`Scheduler::next_in`]).
//!
//! Invariant: at most one message per chat is out (handed out and neither
//! completed nor requeued), and it is always the oldest message of that chat
//! still held; a chat that cannot go never delays another chat.
//!
//! Shape: every chat with messages sits in exactly one place — a per-class
//! ready map keyed by its backlog and its head's age, the timer set keyed by the instant it
//! becomes eligible, or "out" — so every operation is a few `O(log n)` map
//! updates, whatever the number of queued messages.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hash;

use crate::engine::{FastMap, Instant, Priority};

/// One queued message as the scheduler sees it. The payload stays in the
/// store; the scheduler holds only what ordering needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item<M> {
    /// The caller's message id (a store key; `u64` in the agent). Must be
    /// unique among messages held by one scheduler.
    pub id: M,
    /// Chat key: messages with the same key are delivered in push order.
    pub chat: i64,
    pub priority: Priority,
    /// When the message was accepted; orders chats within a class (oldest
    /// head first) and feeds [`Scheduler::oldest_enqueued_at`].
    pub enqueued_at: Instant,
    /// Not eligible before this instant (scheduled send or delayed retry).
    /// Later messages of the chat wait behind it: FIFO holds.
    /// `Some(Instant::ZERO)` is the same as `None` and comes back as `None`.
    pub not_before: Option<Instant>,
}

/// A set of priority classes, e.g. the classes degradation currently sheds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrioritySet(u8);

impl PrioritySet {
    pub const EMPTY: PrioritySet = PrioritySet(0);
    pub const ALL: PrioritySet = PrioritySet(0b1111);

    pub const fn with(self, p: Priority) -> Self {
        PrioritySet(self.0 | (1 << p.index()))
    }

    pub const fn without(self, p: Priority) -> Self {
        PrioritySet(self.0 & !(1 << p.index()))
    }

    pub const fn contains(self, p: Priority) -> bool {
        self.0 & (1 << p.index()) != 0
    }

    /// Classes in `self` that are not in `other`.
    pub const fn minus(self, other: PrioritySet) -> Self {
        PrioritySet(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members, most urgent first.
    pub fn iter(self) -> impl Iterator<Item = Priority> {
        Priority::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Priority> for PrioritySet {
    fn from_iter<I: IntoIterator<Item = Priority>>(iter: I) -> Self {
        iter.into_iter().fold(PrioritySet::EMPTY, PrioritySet::with)
    }
}

/// The dispatcher's verdict on the candidate [`Scheduler::next_with`] offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Hand this message out.
    Take,
    /// This chat must wait until the instant (per-chat limiter, bulkhead of
    /// its message type); park it and offer the next candidate. The chat's
    /// class is not charged.
    DeferChat(Instant),
    /// Nothing can go now (global limit, no concurrency left); leave the
    /// candidate where it is and return `None`.
    Stop,
}

/// Weights of the four classes, indexed by [`Priority::index`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Share of dispatches each class gets while all are backlogged:
    /// class `c` gets `weights[c] / sum(weights)`. Each must be in
    /// `1..=MAX_WEIGHT`; zero would starve a class, which herald never does.
    pub weights: [u32; 4],
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            weights: [8, 4, 2, 1],
        }
    }
}

/// Largest accepted class weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// A weight outside `1..=MAX_WEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weights.{class}: {weight} is outside 1..={MAX_WEIGHT}")]
pub struct SchedulerConfigError {
    pub class: Priority,
    pub weight: u32,
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), SchedulerConfigError> {
        for p in Priority::ALL {
            let weight = self.weights[p.index()];
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(SchedulerConfigError { class: p, weight });
            }
        }
        Ok(())
    }
}

/// `complete` or `requeue` named an id that is not out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message is not out (never handed out, or already completed or requeued)")]
pub struct NotOut;

/// Virtual-time scale for stride scheduling: divisible by every weight up to
/// 16, so the default weights charge exact strides.
const STRIDE_SCALE: u64 = 720_720;

/// Ready key of a chat: the longest backlog first, then its head's age,
/// then push order.
type ReadyKey = (std::cmp::Reverse<usize>, Instant, u64);

fn age_bucket(at: Instant) -> u64 {
    at.as_nanos() / 1_000_000_000
}

/// Drops a message that leaves the scheduler from the counts.
fn forget<M>(held: &mut [usize; 4], ages: &mut BTreeMap<u64, usize>, slot: &Slot<M>) {
    let class = &mut held[slot.priority.index()];
    *class = class.saturating_sub(1);
    let bucket = age_bucket(slot.enqueued_at);
    if let Some(n) = ages.get_mut(&bucket) {
        *n -= 1;
        if *n == 0 {
            ages.remove(&bucket);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot<M> {
    id: M,
    priority: Priority,
    enqueued_at: Instant,
    /// `Instant::ZERO` when the message has no ready time.
    not_before: Instant,
    /// Push order; breaks ties between equal `enqueued_at`.
    seq: u64,
}

impl<M: Copy> Slot<M> {
    fn item(&self, chat: i64) -> Item<M> {
        Item {
            id: self.id,
            chat,
            priority: self.priority,
            enqueued_at: self.enqueued_at,
            not_before: (self.not_before != Instant::ZERO).then_some(self.not_before),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In `ready[class]` under its head's key.
    Ready,
    /// In `timers` under `(at, chat)`.
    Waiting(Instant),
    /// Its head is out.
    Out,
    /// Not placed yet, or drained while its head was out (then only
    /// `complete`/`requeue` place it again).
    Empty,
}

#[derive(Debug)]
struct Chat<M> {
    queue: VecDeque<Slot<M>>,
    place: Place,
    /// Parked by `defer_chat` until this instant; `ZERO` when not parked.
    parked_until: Instant,
}

impl<M> Chat<M> {
    /// Where the chat sorts among the ready chats of its head's class. A
    /// chat of `n` queued messages needs at least `n - 1` of its own
    /// intervals after the next send, so the chat with the most queued
    /// goes first: a backlog then ends on every chat at about the same
    /// time, instead of on a few chats at one message per chat interval.
    /// Equal backlogs go oldest head first.
    fn ready_key(&self) -> Option<ReadyKey> {
        let front = self.queue.front()?;
        Some((
            std::cmp::Reverse(self.queue.len()),
            front.enqueued_at,
            front.seq,
        ))
    }
}

/// Where chats wait, apart from the chat table so both can be borrowed.
#[derive(Debug, Default)]
struct Places {
    ready: [BTreeMap<ReadyKey, i64>; 4],
    timers: BTreeSet<(Instant, i64)>,
}

impl Places {
    /// Puts a chat whose head is not out where it belongs: ready when
    /// nothing holds it back, otherwise on the timer.
    fn place<M: Copy>(&mut self, id: i64, chat: &mut Chat<M>) {
        let Some(front) = chat.queue.front() else {
            return;
        };
        let at = front.not_before.max(chat.parked_until);
        if at == Instant::ZERO {
            if let Some(key) = chat.ready_key() {
                self.ready[front.priority.index()].insert(key, id);
            }
            chat.place = Place::Ready;
        } else {
            self.timers.insert((at, id));
            chat.place = Place::Waiting(at);
        }
    }

    /// Takes a chat out of the ready map or the timer set.
    fn unplace<M: Copy>(&mut self, id: i64, chat: &Chat<M>) {
        match chat.place {
            Place::Ready => {
                if let (Some(front), Some(key)) = (chat.queue.front(), chat.ready_key()) {
                    self.ready[front.priority.index()].remove(&key);
                }
            }
            Place::Waiting(at) => {
                self.timers.remove(&(at, id));
            }
            Place::Out | Place::Empty => {}
        }
    }
}

/// The ready queue. Generic over the message id `M` (the agent uses the
/// store's `u64` key). Ids must be unique among held messages — the store's
/// idempotency key guarantees it; the scheduler does not index every held id
/// (that would cost ~40 MB per million messages) and only checks ids that
/// are out.
#[derive(Debug)]
pub struct Scheduler<M> {
    chats: FastMap<i64, Chat<M>>,
    places: Places,
    out: FastMap<M, (i64, Slot<M>)>,
    /// Held messages (queued or out) per class.
    held: [usize; 4],
    /// Held messages per second of `enqueued_at`: a small, hot map where an
    /// exact per-message index would cost a cold tree walk per operation.
    ages: BTreeMap<u64, usize>,
    next_seq: u64,
    stride: [u64; 4],
    /// Stride-scheduling pass of each class: its virtual finish time.
    pass: [u64; 4],
    /// Pass of the last class served; a class that was idle restarts here, so
    /// idleness earns no credit to burst with later.
    vtime: u64,
}

impl<M: Copy + Eq + Hash> Scheduler<M> {
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerConfigError> {
        config.validate()?;
        let mut stride = [0; 4];
        for (s, w) in stride.iter_mut().zip(config.weights) {
            *s = STRIDE_SCALE / u64::from(w);
        }
        Ok(Scheduler {
            chats: FastMap::default(),
            places: Places::default(),
            out: FastMap::default(),
            held: [0; 4],
            ages: BTreeMap::new(),
            next_seq: 0,
            stride,
            pass: [0; 4],
            vtime: 0,
        })
    }

    /// Changes the class weights without losing queued messages (config
    /// reload). Accumulated passes are kept.
    pub fn set_config(&mut self, config: &SchedulerConfig) -> Result<(), SchedulerConfigError> {
        config.validate()?;
        for (s, w) in self.stride.iter_mut().zip(config.weights) {
            *s = STRIDE_SCALE / u64::from(w);
        }
        Ok(())
    }

    /// Queues a message behind every held message of its chat.
    pub fn push(&mut self, item: Item<M>) {
        let slot = Slot {
            id: item.id,
            priority: item.priority,
            enqueued_at: item.enqueued_at,
            not_before: item.not_before.unwrap_or(Instant::ZERO),
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.held[item.priority.index()] += 1;
        *self.ages.entry(age_bucket(item.enqueued_at)).or_default() += 1;
        match self.chats.entry(item.chat) {
            // A held chat keeps its place (a ready one is sorted again by
            // its longer backlog); a chat whose head is out is placed again
            // by complete/requeue.
            Entry::Occupied(mut held) => {
                let chat = held.get_mut();
                if chat.place == Place::Ready {
                    self.places.unplace(item.chat, chat);
                    chat.queue.push_back(slot);
                    self.places.place(item.chat, chat);
                } else {
                    chat.queue.push_back(slot);
                }
            }
            Entry::Vacant(vacant) => {
                let chat = vacant.insert(Chat {
                    queue: VecDeque::from([slot]),
                    place: Place::Empty,
                    parked_until: Instant::ZERO,
                });
                self.places.place(item.chat, chat);
            }
        }
    }

    /// The next message to send, from any class; see [`Scheduler::next_with`].
    pub fn next(&mut self, now: Instant) -> Option<Item<M>> {
        self.next_with(now, PrioritySet::ALL, |_| Gate::Take)
    }

    /// The next message to send from the classes in `classes` (the others,
    /// e.g. shed by degradation, stay queued and uncharged).
    pub fn next_in(&mut self, now: Instant, classes: PrioritySet) -> Option<Item<M>> {
        self.next_with(now, classes, |_| Gate::Take)
    }

    /// Offers eligible chat heads to `gate` in scheduling order until one is
    /// taken (returned and marked out), `gate` stops, or none is left.
    ///
    /// Order: the class with the smallest stride-scheduling pass among the
    /// allowed classes that have an eligible chat (ties: more urgent class),
    /// then within it the chat with the most queued messages, then the
    /// chat whose head is oldest. A chat that `gate`
    /// defers is parked without charging its class, so a chat waiting for
    /// its limiter never holds up another chat. Each candidate costs
    /// `O(log n)`; `gate` sees at most every eligible chat once per call.
    pub fn next_with(
        &mut self,
        now: Instant,
        classes: PrioritySet,
        mut gate: impl FnMut(&Item<M>) -> Gate,
    ) -> Option<Item<M>> {
        // Promote once per call: a deferral to an instant already past then
        // waits for the next call instead of looping here.
        self.promote(now);
        loop {
            let (class, pass) = self.pick_class(classes)?;
            let (&key, &chat_id) = self.places.ready[class].first_key_value()?;
            let chat = self.chats.get_mut(&chat_id)?;
            let front = *chat.queue.front()?;
            let item = front.item(chat_id);
            match gate(&item) {
                Gate::Take => {
                    self.places.ready[class].remove(&key);
                    chat.queue.pop_front();
                    chat.place = Place::Out;
                    self.out.insert(front.id, (chat_id, front));
                    self.vtime = pass;
                    self.pass[class] = pass.saturating_add(self.stride[class]);
                    return Some(item);
                }
                Gate::DeferChat(until) => {
                    self.places.ready[class].remove(&key);
                    chat.parked_until = chat.parked_until.max(until);
                    let at = chat.parked_until.max(front.not_before);
                    self.places.timers.insert((at, chat_id));
                    chat.place = Place::Waiting(at);
                }
                Gate::Stop => return None,
            }
        }
    }

    /// Moves every chat whose wait is over into its class's ready map.
    fn promote(&mut self, now: Instant) {
        while let Some(&(at, chat_id)) = self.places.timers.first() {
            if at > now {
                break;
            }
            self.places.timers.pop_first();
            let Some(chat) = self.chats.get_mut(&chat_id) else {
                continue;
            };
            chat.parked_until = Instant::ZERO;
            if let (Some(front), Some(key)) = (chat.queue.front(), chat.ready_key()) {
                self.places.ready[front.priority.index()].insert(key, chat_id);
                chat.place = Place::Ready;
            }
        }
    }

    /// The allowed backlogged class with the smallest effective pass.
    fn pick_class(&self, classes: PrioritySet) -> Option<(usize, u64)> {
        Priority::ALL
            .into_iter()
            .filter(|p| classes.contains(*p) && !self.places.ready[p.index()].is_empty())
            .map(|p| (p.index(), self.pass[p.index()].max(self.vtime)))
            .min_by_key(|&(class, pass)| (pass, class))
    }

    /// When the message `id`, now out, was accepted.
    pub fn out_enqueued_at(&self, id: M) -> Option<Instant> {
        self.out.get(&id).map(|(_, slot)| slot.enqueued_at)
    }

    /// The message was delivered, dead-lettered or handed to another path:
    /// forget it and let its chat's next message go.
    pub fn complete(&mut self, id: M) -> Result<Item<M>, NotOut> {
        let (chat_id, slot) = self.out.remove(&id).ok_or(NotOut)?;
        forget(&mut self.held, &mut self.ages, &slot);
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return Ok(slot.item(chat_id));
        };
        if chat.queue.is_empty() {
            self.chats.remove(&chat_id);
        } else {
            self.places.place(chat_id, chat);
        }
        Ok(slot.item(chat_id))
    }

    /// The attempt failed and will be retried: the message goes back to the
    /// head of its chat, eligible at `not_before` (and not before its chat's
    /// parking ends). It keeps its age, so it goes first once eligible.
    pub fn requeue(&mut self, id: M, not_before: Option<Instant>) -> Result<(), NotOut> {
        let (chat_id, mut slot) = self.out.remove(&id).ok_or(NotOut)?;
        slot.not_before = not_before.unwrap_or(Instant::ZERO);
        let chat = self.chats.entry(chat_id).or_insert_with(|| Chat {
            queue: VecDeque::new(),
            place: Place::Empty,
            parked_until: Instant::ZERO,
        });
        chat.queue.push_front(slot);
        self.places.place(chat_id, chat);
        Ok(())
    }

    /// Parks a chat until `until` (its per-chat limiter slot): its head is not
    /// offered before then, and other chats go meanwhile. Parking only ever
    /// lengthens; it ends when the chat is next offered. Parking a chat whose
    /// head is out applies to its next head. Returns `false` when the
    /// scheduler holds nothing for the chat (nothing to park).
    pub fn defer_chat(&mut self, chat_id: i64, until: Instant) -> bool {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return false;
        };
        chat.parked_until = chat.parked_until.max(until);
        match chat.place {
            Place::Ready | Place::Waiting(_) => {
                self.places.unplace(chat_id, chat);
                self.places.place(chat_id, chat);
            }
            Place::Out | Place::Empty => {}
        }
        true
    }

    /// Removes and returns a chat's queued messages, oldest first (its
    /// partition moved to another replica). A message of the chat that is out
    /// stays out until completed or requeued.
    pub fn drain_chat(&mut self, chat_id: i64) -> Vec<Item<M>> {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return Vec::new();
        };
        self.places.unplace(chat_id, chat);
        let mut drained = Vec::with_capacity(chat.queue.len());
        for slot in chat.queue.drain(..) {
            forget(&mut self.held, &mut self.ages, &slot);
            drained.push(slot.item(chat_id));
        }
        if chat.place == Place::Out {
            chat.place = Place::Empty;
        } else if chat.place != Place::Empty {
            self.chats.remove(&chat_id);
        }
        drained
    }

    /// The earliest instant a waiting chat becomes eligible (a `not_before`
    /// or a parking ending). Chats already eligible are not reported: call
    /// `next` until it returns `None`, then sleep until this instant or until
    /// a push, complete or requeue.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.places.timers.first().map(|&(at, _)| at)
    }

    /// Held messages: queued or out.
    pub fn len(&self) -> usize {
        self.held.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Held messages per class, indexed by [`Priority::index`].
    pub fn len_by_priority(&self) -> [usize; 4] {
        self.held
    }

    /// Messages handed out and not yet completed or requeued.
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// Chats holding at least one message.
    pub fn chat_count(&self) -> usize {
        self.chats.len()
    }

    /// Chats known to be eligible and not taken; chats whose wait ended
    /// since the last `next*` call are counted from that call on.
    pub fn ready_chats(&self) -> usize {
        self.places.ready.iter().map(BTreeMap::len).sum()
    }

    /// `enqueued_at` of the oldest held message (queued or out), rounded
    /// down to the whole second: the degradation signal "age of oldest
    /// message", which never reads younger than it is.
    pub fn oldest_enqueued_at(&self) -> Option<Instant> {
        self.ages
            .first_key_value()
            .map(|(&sec, _)| Instant::from_secs(sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn item(id: u64, chat: i64, priority: Priority, at_ms: u64) -> Item<u64> {
        Item {
            id,
            chat,
            priority,
            enqueued_at: Instant::from_millis(at_ms),
            not_before: None,
        }
    }

    fn sched() -> Scheduler<u64> {
        Scheduler::new(&SchedulerConfig::default()).unwrap()
    }

    const T0: Instant = Instant::from_secs(100);

    #[test]
    fn fifo_within_a_chat_and_one_out_per_chat() {
        let mut s = sched();
        for id in 1..=3 {
            s.push(item(id, 7, Priority::Normal, id));
        }
        assert_eq!(s.next(T0).map(|i| i.id), Some(1));
        assert_eq!(s.next(T0), None, "the chat's head is out");
        assert_eq!(s.complete(1).unwrap().id, 1);
        assert_eq!(s.next(T0).map(|i| i.id), Some(2));
        assert_eq!(s.complete(1), Err(NotOut));
        assert_eq!(s.len(), 2);
        assert_eq!(s.out_len(), 1);
    }

    #[test]
    fn a_requeued_head_keeps_its_place_and_waits_for_its_instant() {
        let mut s = sched();
        s.push(item(1, 7, Priority::Normal, 1));
        s.push(item(2, 7, Priority::Normal, 2));
        assert_eq!(s.next(T0).unwrap().id, 1);
        let retry_at = T0 + Duration::from_secs(5);
        s.requeue(1, Some(retry_at)).unwrap();
        assert_eq!(s.next(T0), None);
        assert_eq!(s.next_wakeup(), Some(retry_at));
        assert_eq!(s.next(retry_at - Duration::from_nanos(1)), None);
        let again = s.next(retry_at).unwrap();
        assert_eq!((again.id, again.not_before), (1, Some(retry_at)));
        s.complete(1).unwrap();
        assert_eq!(s.next(retry_at).unwrap().id, 2);
    }

    #[test]
    fn a_parked_chat_does_not_block_other_chats() {
        let mut s = sched();
        s.push(item(1, 1, Priority::Normal, 1));
        s.push(item(2, 2, Priority::Normal, 2));
        let slot = T0 + Duration::from_secs(1);
        let got = s.next_with(T0, PrioritySet::ALL, |i| {
            if i.chat == 1 {
                Gate::DeferChat(slot)
            } else {
                Gate::Take
            }
        });
        assert_eq!(got.unwrap().id, 2);
        assert_eq!(s.next(T0), None);
        assert_eq!(s.next_wakeup(), Some(slot));
        assert_eq!(s.next(slot).unwrap().id, 1);

        // defer_chat on a ready chat, and on a chat whose head is out.
        s.push(item(3, 3, Priority::Normal, 3));
        s.push(item(4, 4, Priority::Normal, 4));
        let later = slot + Duration::from_secs(1);
        assert!(s.defer_chat(3, later));
        assert!(!s.defer_chat(99, later));
        assert_eq!(s.next(slot).unwrap().id, 4);
        s.push(item(5, 4, Priority::Normal, 5));
        assert!(s.defer_chat(4, later));
        s.complete(4).unwrap();
        assert_eq!(s.next(slot), None);
        assert_eq!(s.next(later).map(|i| i.id), Some(3));
        assert_eq!(s.next(later).map(|i| i.id), Some(5));
    }

    #[test]
    fn not_before_makes_a_message_wait_and_defer_to_the_past_waits_one_call() {
        let mut s = sched();
        let at = T0 + Duration::from_millis(250);
        s.push(Item {
            not_before: Some(at),
            ..item(1, 1, Priority::High, 1)
        });
        assert_eq!(s.next(T0), None);
        assert_eq!(s.next_wakeup(), Some(at));
        assert_eq!(s.next(at).unwrap().id, 1);
        s.requeue(1, None).unwrap();
        let mut offered = 0;
        let got = s.next_with(at, PrioritySet::ALL, |_| {
            offered += 1;
            Gate::DeferChat(T0)
        });
        assert_eq!((got, offered), (None, 1));
        assert_eq!(s.next(at).unwrap().id, 1);
    }

    #[test]
    fn oldest_head_first_within_a_class() {
        let mut s = sched();
        s.push(item(1, 1, Priority::Low, 30));
        s.push(item(2, 2, Priority::Low, 10));
        s.push(item(3, 3, Priority::Low, 20));
        s.push(item(4, 4, Priority::Low, 10));
        let order: Vec<u64> = std::iter::from_fn(|| s.next(T0).map(|i| i.id)).collect();
        assert_eq!(order, vec![2, 4, 3, 1]);
        assert_eq!(s.oldest_enqueued_at(), Some(Instant::ZERO));
        s.push(item(5, 5, Priority::Low, 2_500));
        for id in [1, 2, 3, 4] {
            s.complete(id).unwrap();
        }
        assert_eq!(s.oldest_enqueued_at(), Some(Instant::from_secs(2)));
    }

    #[test]
    fn the_longest_backlog_goes_first_and_equal_ones_oldest_first() {
        let mut s = sched();
        s.push(item(1, 1, Priority::Normal, 1));
        for id in 2..=4 {
            s.push(item(id, 2, Priority::Normal, id));
        }
        s.push(item(5, 3, Priority::Normal, 5));
        s.push(item(6, 3, Priority::Normal, 6));
        // Other classes keep their weighted turns whatever their backlogs.
        s.push(item(7, 4, Priority::Low, 0));
        let order: Vec<u64> =
            std::iter::from_fn(|| s.next_in(T0, PrioritySet::EMPTY.with(Priority::Normal)))
                .map(|i| i.id)
                .collect();
        assert_eq!(order, vec![2, 5, 1], "3 queued, then 2, then 1");
        for id in [2, 5, 1] {
            s.complete(id).unwrap();
        }
        // A push to a ready chat sorts it again by its longer backlog.
        s.push(item(8, 3, Priority::Normal, 8));
        s.push(item(9, 3, Priority::Normal, 9));
        let order: Vec<u64> =
            std::iter::from_fn(|| s.next_in(T0, PrioritySet::EMPTY.with(Priority::Normal)))
                .map(|i| i.id)
                .collect();
        assert_eq!(order, vec![6, 3], "chat 3 holds 3 now, chat 2 holds 2");
        s.complete(6).unwrap();
        s.complete(3).unwrap();
        assert_eq!(
            s.next_in(T0, PrioritySet::EMPTY.with(Priority::Normal))
                .unwrap()
                .id,
            8,
            "FIFO in the chat"
        );
        assert_eq!(s.next(T0).unwrap().id, 7);
    }

    fn backlog(s: &mut Scheduler<u64>, per_class: u64) {
        let mut id = 0;
        for p in Priority::ALL {
            for n in 0..per_class {
                id += 1;
                s.push(item(id, (p.index() as i64) * 1_000_000 + n as i64, p, id));
            }
        }
    }

    fn serve(s: &mut Scheduler<u64>, n: usize, classes: PrioritySet) -> [usize; 4] {
        let mut counts = [0; 4];
        for _ in 0..n {
            let Some(i) = s.next_in(T0, classes) else {
                break;
            };
            counts[i.priority.index()] += 1;
            s.complete(i.id).unwrap();
        }
        counts
    }

    #[test]
    fn default_weights_split_8_4_2_1() {
        let mut s = sched();
        backlog(&mut s, 200);
        assert_eq!(serve(&mut s, 150, PrioritySet::ALL), [80, 40, 20, 10]);
    }

    #[test]
    fn a_shed_class_stays_queued_and_an_idle_class_earns_no_credit() {
        let mut s = sched();
        backlog(&mut s, 200);
        let without_low = PrioritySet::ALL.without(Priority::Low);
        assert_eq!(serve(&mut s, 140, without_low), [80, 40, 20, 0]);
        assert_eq!(s.len_by_priority(), [120, 160, 180, 200]);
        // Low rejoins at the current virtual time: its share from now on,
        // not a burst of everything it "missed".
        let after = serve(&mut s, 15, PrioritySet::ALL);
        assert!(after[Priority::Low.index()] <= 2, "{after:?}");
    }

    #[test]
    fn stop_leaves_the_candidate_in_place() {
        let mut s = sched();
        s.push(item(1, 1, Priority::Critical, 1));
        assert_eq!(s.next_with(T0, PrioritySet::ALL, |_| Gate::Stop), None);
        assert_eq!(s.next(T0).unwrap().id, 1);
    }

    #[test]
    fn drain_chat_returns_queued_and_leaves_the_out_head() {
        let mut s = sched();
        for id in 1..=3 {
            s.push(item(id, 5, Priority::High, id));
        }
        s.push(item(9, 6, Priority::Low, 0));
        assert_eq!(
            s.next_in(T0, PrioritySet::EMPTY.with(Priority::High))
                .unwrap()
                .id,
            1
        );
        let drained: Vec<u64> = s.drain_chat(5).into_iter().map(|i| i.id).collect();
        assert_eq!(drained, vec![2, 3]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.oldest_enqueued_at(), Some(Instant::ZERO));
        s.push(item(4, 5, Priority::High, 4));
        s.complete(1).unwrap();
        assert_eq!(
            s.next_in(T0, PrioritySet::EMPTY.with(Priority::High))
                .unwrap()
                .id,
            4
        );
        assert_eq!(s.drain_chat(6).len(), 1);
        s.complete(4).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.chat_count(), 0);
        assert_eq!(s.oldest_enqueued_at(), None);
    }

    #[test]
    fn config_is_validated() {
        let bad = SchedulerConfig {
            weights: [8, 4, 2, 0],
        };
        let err = Scheduler::<u64>::new(&bad).unwrap_err();
        assert_eq!(err.to_string(), "weights.low: 0 is outside 1..=10000");
        let mut s = sched();
        assert!(s.set_config(&bad).is_err());
        assert!(s.set_config(&SchedulerConfig { weights: [1; 4] }).is_ok());
    }

    #[test]
    fn priority_set_basics() {
        let s: PrioritySet = [Priority::Low, Priority::Normal].into_iter().collect();
        assert!(s.contains(Priority::Low) && !s.contains(Priority::High));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Priority::Normal, Priority::Low]
        );
        assert_eq!(PrioritySet::ALL.minus(s).iter().count(), 2);
        assert!(PrioritySet::EMPTY.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            chat: i64,
            prio: usize,
            delay_ms: Option<u64>,
        },
        Next {
            classes: u8,
            defer_chat: Option<(i64, u64)>,
        },
        Complete(usize),
        Requeue(usize, Option<u64>),
        Defer(i64, u64),
        Drain(i64),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..6i64, 0..4usize, proptest::option::weighted(0.2, 0..500u64))
                .prop_map(|(chat, prio, delay_ms)| Op::Push { chat, prio, delay_ms }),
            4 => (any::<u8>(), proptest::option::weighted(0.2, (0..6i64, 0..500u64)))
                .prop_map(|(classes, defer_chat)| Op::Next { classes, defer_chat }),
            3 => any::<usize>().prop_map(Op::Complete),
            1 => (any::<usize>(), proptest::option::of(0..500u64)).prop_map(|(k, d)| Op::Requeue(k, d)),
            1 => (0..6i64, 0..500u64).prop_map(|(c, d)| Op::Defer(c, d)),
            1 => (0..6i64).prop_map(Op::Drain),
            2 => (0..300u64).prop_map(Op::Advance),
        ]
    }

    /// What the scheduler must hold, per chat, for the model check.
    #[derive(Default, Clone)]
    struct ModelChat {
        /// Held ids in push order with their ready instant (ZERO = none).
        held: VecDeque<(u64, Instant)>,
        out: bool,
        parked: Instant,
    }

    fn eligible(
        c: &ModelChat,
        now: Instant,
        classes: PrioritySet,
        prio: &HashMap<u64, Priority>,
    ) -> bool {
        match c.held.front() {
            Some(&(id, nb)) => {
                !c.out && nb <= now && c.parked <= now && classes.contains(prio[&id])
            }
            None => false,
        }
    }

    proptest! {
        /// Per-chat order, one out per chat, ready times and parking, no
        /// head-of-line blocking (work conservation), and nothing lost.
        #[test]
        fn per_chat_order_and_no_head_of_line_blocking(ops in proptest::collection::vec(op(), 1..300)) {
            let mut s = sched();
            let mut model: HashMap<i64, ModelChat> = HashMap::new();
            let mut prio: HashMap<u64, Priority> = HashMap::new();
            let mut enqueued: HashMap<u64, Instant> = HashMap::new();
            let mut out: Vec<(u64, i64)> = Vec::new();
            let mut now = T0;
            let mut next_id = 0u64;
            for op in ops {
                match op {
                    Op::Push { chat, prio: p, delay_ms } => {
                        next_id += 1;
                        let nb = delay_ms.map(|d| now + Duration::from_millis(d));
                        s.push(Item { id: next_id, chat, priority: Priority::ALL[p], enqueued_at: now, not_before: nb });
                        prio.insert(next_id, Priority::ALL[p]);
                        enqueued.insert(next_id, now);
                        model.entry(chat).or_default().held.push_back((next_id, nb.unwrap_or(Instant::ZERO)));
                    }
                    Op::Next { classes, defer_chat } => {
                        let classes = PrioritySet(classes & 0b1111);
                        let mut deferred = None;
                        let got = s.next_with(now, classes, |i| match defer_chat {
                            Some((c, d)) if c == i.chat && deferred.is_none() => {
                                deferred = Some(now + Duration::from_millis(d));
                                Gate::DeferChat(now + Duration::from_millis(d))
                            }
                            _ => Gate::Take,
                        });
                        if let (Some((c, _)), Some(until)) = (defer_chat, deferred) {
                            let m = model.get_mut(&c).unwrap();
                            m.parked = m.parked.max(until);
                        }
                        match got {
                            Some(i) => {
                                let m = model.get_mut(&i.chat).unwrap();
                                prop_assert!(!m.out, "two out in one chat");
                                let &(head, nb) = m.held.front().unwrap();
                                prop_assert_eq!(i.id, head, "not the chat's oldest held message");
                                prop_assert!(nb <= now && m.parked <= now, "handed out before its instant");
                                prop_assert!(classes.contains(i.priority));
                                m.out = true;
                                out.push((i.id, i.chat));
                            }
                            None => {
                                // A chat deferred by the gate this call is not eligible
                                // in this call even if its instant is already past.
                                for (c, m) in &model {
                                    if deferred.is_some() && Some(*c) == defer_chat.map(|d| d.0) { continue; }
                                    prop_assert!(!eligible(m, now, classes, &prio), "chat {} was eligible but nothing was handed out", c);
                                }
                            }
                        }
                    }
                    Op::Complete(k) => {
                        if out.is_empty() { prop_assert!(s.complete(u64::MAX).is_err()); continue; }
                        let (id, chat) = out.swap_remove(k % out.len());
                        s.complete(id).unwrap();
                        let m = model.get_mut(&chat).unwrap();
                        m.held.pop_front();
                        m.out = false;
                        if m.held.is_empty() { model.remove(&chat); }
                    }
                    Op::Requeue(k, d) => {
                        if out.is_empty() { continue; }
                        let (id, chat) = out.swap_remove(k % out.len());
                        let nb = d.map(|d| now + Duration::from_millis(d));
                        s.requeue(id, nb).unwrap();
                        let m = model.get_mut(&chat).unwrap();
                        m.held[0].1 = nb.unwrap_or(Instant::ZERO);
                        m.out = false;
                    }
                    Op::Defer(c, d) => {
                        let until = now + Duration::from_millis(d);
                        let known = s.defer_chat(c, until);
                        prop_assert_eq!(known, model.contains_key(&c));
                        if let Some(m) = model.get_mut(&c) { m.parked = m.parked.max(until); }
                    }
                    Op::Drain(c) => {
                        let got: Vec<u64> = s.drain_chat(c).into_iter().map(|i| i.id).collect();
                        let want: Vec<u64> = match model.get_mut(&c) {
                            None => Vec::new(),
                            Some(m) => {
                                let keep = usize::from(m.out);
                                let gone = m.held.drain(keep..).map(|h| h.0).collect();
                                if m.held.is_empty() { model.remove(&c); }
                                gone
                            }
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Advance(ms) => {
                        now = now + Duration::from_millis(ms);
                        for m in model.values_mut() {
                            if m.parked <= now { m.parked = Instant::ZERO; }
                        }
                    }
                }
                let held: usize = model.values().map(|m| m.held.len()).sum();
                prop_assert_eq!(s.len(), held);
                let oldest = model.values().flat_map(|m| m.held.iter().map(|h| enqueued[&h.0])).min();
                let floor = oldest.map(|o| Instant::from_secs(o.as_nanos() / 1_000_000_000));
                prop_assert_eq!(s.oldest_enqueued_at(), floor);
                prop_assert_eq!(s.out_len(), out.len());
            }
            // Liveness: everything held drains once time moves on.
            for (id, _) in out.drain(..) { s.complete(id).unwrap(); }
            let end = now + Duration::from_secs(3600);
            let mut guard = 0;
            while let Some(i) = s.next(end) {
                s.complete(i.id).unwrap();
                guard += 1;
                prop_assert!(guard <= 1000);
            }
            prop_assert!(s.is_empty());
            prop_assert_eq!(s.chat_count(), 0);
            prop_assert_eq!(s.next_wakeup(), None);
        }

        /// Every continuously backlogged class gets its weight share within
        /// 2 dispatches plus 0.1 % of the run, and never waits longer than
        /// ceil(total / weight) + (number of backlogged classes) dispatches.
        #[test]
        fn backlogged_classes_get_their_share_and_never_starve(
            weights in proptest::array::uniform4(1..=40u32),
            present in proptest::array::uniform4(any::<bool>()),
            rounds in 200..2000usize,
        ) {
            prop_assume!(present.iter().any(|p| *p));
            let mut s = Scheduler::new(&SchedulerConfig { weights }).unwrap();
            let mut id = 0u64;
            for p in Priority::ALL.into_iter().filter(|p| present[p.index()]) {
                for chat in 0..50i64 {
                    for _ in 0..(rounds / 50 + 2) {
                        id += 1;
                        s.push(item(id, p.index() as i64 * 1000 + chat, p, id));
                    }
                }
            }
            let classes = present.iter().filter(|p| **p).count();
            let total: u64 = Priority::ALL.iter().filter(|p| present[p.index()]).map(|p| u64::from(weights[p.index()])).sum();
            let mut counts = [0usize; 4];
            let mut last = [0usize; 4];
            let mut max_gap = [0usize; 4];
            for n in 1..=rounds {
                let i = s.next(T0).unwrap();
                let c = i.priority.index();
                counts[c] += 1;
                max_gap[c] = max_gap[c].max(n - last[c]);
                last[c] = n;
                s.complete(i.id).unwrap();
            }
            for p in Priority::ALL.into_iter().filter(|p| present[p.index()]) {
                let c = p.index();
                let share = rounds as f64 * f64::from(weights[c]) / total as f64;
                let tol = 2.0 + rounds as f64 / 1000.0;
                prop_assert!((counts[c] as f64 - share).abs() <= tol, "{p}: {} vs {share:.1}", counts[c]);
                // Stride scheduling: between two turns of class c, each other
                // class j can have at most w_j / w_c + 1 turns.
                let bound = total.div_ceil(u64::from(weights[c])) as usize + classes;
                prop_assert!(max_gap[c] <= bound, "{p}: gap {} > {bound}", max_gap[c]);
            }
        }
    }

    /// Scale figures for 1,000,000 messages over 100,000 chats. Not an
    /// assertion: run with `--ignored --nocapture`, preferably optimised.
    /// Costs are this thread's CPU time (Linux schedstat), so other load on
    /// the machine inflates them less than wall time would.
    #[test]
    #[ignore]
    fn measure_one_million_over_100k_chats() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let line = status.lines().find(|l| l.starts_with("VmRSS:"));
            line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        }
        fn cpu_ns() -> u64 {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
            stat.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }
        fn per_op(from: u64, ops: u64) -> f64 {
            (cpu_ns() - from) as f64 / ops.max(1) as f64
        }
        let before = rss_kib();
        let mut rng = crate::engine::SplitMix64::new(42);
        let mut s = sched();
        let t = cpu_ns();
        for id in 0..1_000_000u64 {
            let chat = rng.below(100_000) as i64;
            let p = Priority::ALL[rng.below(4) as usize];
            s.push(item(id, chat, p, id / 1000));
        }
        let push = per_op(t, 1_000_000);
        let after = rss_kib();
        // Take one message from (nearly) every chat, then complete them all.
        let t = cpu_ns();
        let mut taken = Vec::with_capacity(100_000);
        while let Some(i) = s.next(T0) {
            taken.push(i.id);
        }
        let next = per_op(t, taken.len() as u64);
        let t = cpu_ns();
        for id in &taken {
            s.complete(*id).unwrap();
        }
        let complete = per_op(t, taken.len() as u64);
        // Steady state: next + complete pairs.
        let t = cpu_ns();
        for _ in 0..200_000 {
            let Some(i) = s.next(T0) else { break };
            s.complete(i.id).unwrap();
        }
        let pair = per_op(t, 200_000);
        // One call in which the gate parks every ready chat: the cost of
        // skipping a chat that waits for its limiter.
        let t = cpu_ns();
        let mut parked = 0u64;
        let got = s.next_with(T0, PrioritySet::ALL, |i| {
            parked += 1;
            Gate::DeferChat(T0 + Duration::from_secs(1 + (i.chat as u64 % 5)))
        });
        assert!(got.is_none());
        let defer = per_op(t, parked);
        println!(
            "1e6 msgs / {} chats: push {push:.0} ns; next {next:.0} ns (x{}); complete {complete:.0} ns; \
             next+complete {pair:.0} ns; park {defer:.0} ns/chat (x{parked}); \
             RSS {before} KiB -> {after} KiB after push",
            s.chat_count(),
            taken.len(),
        );
    }
}
