//! `poll`: the next send order, or when to ask again.
//!
//! Owns the gate the scheduler's candidates pass, in this order:
//! 1. a paused message type sets the chat aside;
//! 2. tier selection (breaker admission as predicted from its state, health
//!    floor, chat reachability, tiers the message left, fallback order,
//!    spool last; while the level routes away from the primary tiers, a
//!    primary whose breaker is due for a probe still gets its probes, or it
//!    could never close again);
//! 3. a full bulkhead for the message type on that tier sets the chat aside;
//! 4. the tier breaker and the chat breaker admit for real (a refusal
//!    removes the tier from this offer and selection runs again);
//! 5. the tier's limiter checks every key and charges them — the last step
//!    before the order, so nothing is charged for a send that is not made.
//!    A refusal names its binding key: a chat or group parks that chat, a
//!    priority share skips the class for this poll, the global rate or a
//!    429 pause stops the poll (breaker tickets are given back).
//!
//! Leaves to others: the decisions themselves (scheduler, selector,
//! breaker, limiter, bulkhead) and what happens after the send (complete).
//!
//! Invariant: an order is returned only with its limiter charged at `now`,
//! a breaker ticket from an admitting breaker (non-spool tiers), and a
//! bulkhead permit; nothing else is charged or held when poll returns Idle.

use crate::engine::breaker::{Admission, BreakerSet, Ticket, Transition};
use crate::engine::bulkhead::{Acquire, Permit};
use crate::engine::limiter::{Binding, Decision, Key};
use crate::engine::scheduler::{Gate, Item, PrioritySet};
use crate::engine::selector::{self, Route, SelectorConfig, TierView};
use crate::engine::{Instant, Priority, SplitMix64};

use super::aside::BlockKey;
use super::config::{MAX_TIERS, Sink};
use super::ids::IdMap;
use super::tier::{TierState, may_admit, probe_due};
use super::types::{MessageType, Poll, SendOrder};
use super::{Dispatcher, InFlight, LevelCache, Meta, NEVER};

/// Why an offer ended without a take.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Nothing can go before this instant (or before some other call).
    All(Option<Instant>),
    /// This class's share is used up until the instant.
    Class(Priority, Instant),
}

/// What an accepted offer holds until the order is built.
#[derive(Debug)]
struct Taken {
    tier: usize,
    permit: Permit<MessageType>,
    tier_ticket: Option<Ticket>,
    chat_ticket: Option<Ticket>,
    probe: bool,
}

const EMPTY_VIEW: TierView<'static> = TierView {
    name: "",
    priority: u32::MAX,
    breaker_admits: false,
    health_score: 0,
    health_floor: 0,
    ewma_success: 0.0,
    chat_unreachable: true,
    is_spool: false,
};

/// The fields one offer needs, borrowed apart from the scheduler.
struct Offer<'a> {
    now: Instant,
    tiers: &'a mut [TierState],
    fallbacks: &'a [usize],
    breakers: &'a mut BreakerSet<u32>,
    metas: &'a IdMap<Meta>,
    rng: &'a mut SplitMix64,
    level: &'a LevelCache,
    selector: &'a SelectorConfig,
    transitions: &'a mut Vec<(usize, Option<i64>, Transition)>,
    set_aside: &'a mut Vec<(i64, BlockKey)>,
    taken: Option<Taken>,
    stop: Option<Stop>,
}

fn bit(i: usize) -> u16 {
    1u16 << (i % MAX_TIERS)
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// `max_in_flight` scaled by the level's concurrency factor, at least 1.
pub(super) fn scaled(max: u32, factor: f64) -> usize {
    let v = (f64::from(max) * factor).ceil();
    if v.is_finite() && v >= 1.0 {
        (v as usize).min(max as usize)
    } else {
        1
    }
}

impl Offer<'_> {
    fn offer(&mut self, item: &Item<u64>) -> Gate {
        let meta = self.metas.get(&item.id).copied().unwrap_or(Meta {
            chat: item.chat,
            first_attempt: NEVER,
            attempts: 0,
            prev_delay_ms: 0,
            ty: MessageType::default(),
            excluded: 0,
        });
        if self.level.paused.contains(&meta.ty) {
            self.set_aside.push((item.chat, BlockKey::Paused(meta.ty)));
            return Gate::DeferChat(Instant::MAX);
        }
        let mut refused: u16 = 0;
        for _ in 0..=self.tiers.len() {
            let (tier, probe_hint) = match self.choose(item.chat, meta.excluded | refused) {
                Ok(choice) => choice,
                Err(wake) => {
                    self.stop = Some(Stop::All(wake));
                    return Gate::Stop;
                }
            };
            let t = &self.tiers[tier];
            let key = t.key;
            if !t.has_slot(meta.ty) {
                let block = BlockKey::Bulkhead {
                    tier: key,
                    ty: meta.ty,
                };
                self.set_aside.push((item.chat, block));
                return Gate::DeferChat(Instant::MAX);
            }
            let mut tier_ticket = None;
            let mut chat_ticket = None;
            let mut probe = false;
            if !t.is_spool() {
                match self.admit(tier, key, None) {
                    Some((ticket, p)) => {
                        tier_ticket = Some(ticket);
                        probe = p;
                    }
                    None => {
                        refused |= bit(tier);
                        continue;
                    }
                }
                if self.tiers[tier].cfg.sink == Sink::Telegram {
                    match self.admit(tier, key, Some(item.chat)) {
                        Some((ticket, _)) => chat_ticket = Some(ticket),
                        None => {
                            self.give_back(key, item.chat, tier_ticket, None);
                            refused |= bit(tier);
                            continue;
                        }
                    }
                }
            }
            let now = self.now;
            let recipient = self.tiers[tier].recipient(item.chat);
            let TierState {
                limiter,
                cfg,
                bulkheads,
                ..
            } = &mut self.tiers[tier];
            if let Decision::Refuse { retry_at, binding } =
                limiter.check(now, &cfg.limits.checks(recipient, item.priority))
            {
                self.give_back(key, item.chat, tier_ticket, chat_ticket);
                return match binding {
                    Binding::Rate(Key::Chat(_) | Key::Group(_))
                    | Binding::Paused(Key::Chat(_) | Key::Group(_)) => Gate::DeferChat(retry_at),
                    Binding::Rate(Key::Share(p)) | Binding::Paused(Key::Share(p)) => {
                        self.stop = Some(Stop::Class(p, retry_at));
                        Gate::Stop
                    }
                    Binding::Rate(Key::Global)
                    | Binding::Paused(Key::Global)
                    | Binding::PausedAll => {
                        self.stop = Some(Stop::All(Some(retry_at)));
                        Gate::Stop
                    }
                };
            }
            let permit = match bulkheads.try_acquire(now, meta.ty) {
                Acquire::Granted(p) => p,
                Acquire::Wait(w) => {
                    // Unreachable after `has_slot`; never leave a waiter behind.
                    bulkheads.cancel(w);
                    self.give_back(key, item.chat, tier_ticket, chat_ticket);
                    self.set_aside.push((
                        item.chat,
                        BlockKey::Bulkhead {
                            tier: key,
                            ty: meta.ty,
                        },
                    ));
                    return Gate::DeferChat(Instant::MAX);
                }
                Acquire::Rejected(_) => {
                    self.give_back(key, item.chat, tier_ticket, chat_ticket);
                    self.set_aside.push((
                        item.chat,
                        BlockKey::Bulkhead {
                            tier: key,
                            ty: meta.ty,
                        },
                    ));
                    return Gate::DeferChat(Instant::MAX);
                }
            };
            self.taken = Some(Taken {
                tier,
                permit,
                tier_ticket,
                chat_ticket,
                probe: probe || probe_hint,
            });
            return Gate::Take;
        }
        self.stop = Some(Stop::All(None));
        Gate::Stop
    }

    /// Breaker admission; `Some((ticket, is_probe))` when it lets the call
    /// through. Transitions are collected for events.
    fn admit(&mut self, tier: usize, key: u32, chat: Option<i64>) -> Option<(Ticket, bool)> {
        let (admission, transition) = self.breakers.admit(self.now, &key, chat);
        if let Some(tr) = transition {
            self.transitions.push((tier, chat, tr));
        }
        match admission {
            Admission::Allowed(t) => Some((t, false)),
            Admission::Probe(t) => Some((t, true)),
            Admission::Rejected { .. } => None,
        }
    }

    fn give_back(&mut self, key: u32, chat: i64, tier: Option<Ticket>, chat_t: Option<Ticket>) {
        if let Some(t) = tier {
            self.breakers.abandon(&key, None, t);
        }
        if let Some(t) = chat_t {
            self.breakers.abandon(&key, Some(chat), t);
        }
    }

    /// The tier for this offer, and whether it is taken as a probe against
    /// the route; or, when none can go, when one might (an open period
    /// ending).
    fn choose(&mut self, chat: i64, out: u16) -> Result<(usize, bool), Option<Instant>> {
        let now = self.now;
        let n = self.tiers.len();
        let chat_breakers = self.breakers.len() > n;
        let mut views = [EMPTY_VIEW; MAX_TIERS];
        for (i, t) in self.tiers.iter().enumerate() {
            let b = self.breakers.get(&t.key, None);
            let left = out & bit(i) != 0;
            let chat_open = chat_breakers
                && t.cfg.sink == Sink::Telegram
                && !may_admit(self.breakers.get(&t.key, Some(chat)), now);
            views[i] = TierView {
                name: &t.cfg.name,
                // The API prefers higher priorities, the selector lower ones.
                priority: u32::MAX - t.cfg.priority,
                breaker_admits: !left && t.stopped.is_none() && may_admit(b, now),
                health_score: t.score(b, now),
                health_floor: t.cfg.health_floor,
                ewma_success: t.ewma.value(),
                chat_unreachable: left || chat_open || t.is_unreachable(chat, now),
                is_spool: t.is_spool() && !left && t.stopped.is_none(),
            };
        }
        let views = &mut views[..n];
        if self.level.route != Route::Normal
            && let Some(i) = self.probe_due(views, now)
        {
            return Ok((i, true));
        }
        let route = self.level.route;
        if let Ok(sel) = selector::select(views, self.fallbacks, route, self.selector, self.rng) {
            return Ok((sel.tier, false));
        }
        // Marks of unreachability only steer: if every tier that could go
        // is marked for this chat, try anyway and let the answer decide.
        let mut retry = false;
        for (i, v) in views.iter_mut().enumerate() {
            if v.chat_unreachable && out & bit(i) == 0 {
                v.chat_unreachable = false;
                retry = true;
            }
        }
        if retry
            && let Ok(sel) = selector::select(views, self.fallbacks, route, self.selector, self.rng)
        {
            return Ok((sel.tier, false));
        }
        let mut wake = None;
        for (i, t) in self.tiers.iter().enumerate() {
            if out & bit(i) == 0 && t.stopped.is_none() {
                let until = self.breakers.get(&t.key, None).and_then(|b| b.open_until());
                wake = min_instant(wake, until.filter(|u| *u > now));
            }
        }
        Err(wake)
    }

    /// A primary tier the route skips whose breaker is waiting for probes,
    /// best priority first.
    fn probe_due(&self, views: &[TierView<'_>], now: Instant) -> Option<usize> {
        (0..views.len())
            .filter(|i| !self.fallbacks.contains(i))
            .filter(|&i| {
                let v = &views[i];
                !v.is_spool
                    && v.breaker_admits
                    && !v.chat_unreachable
                    && v.health_score >= v.health_floor
                    && probe_due(self.breakers.get(&self.tiers[i].key, None), now)
            })
            .min_by_key(|&i| (views[i].priority, i))
    }
}

impl Dispatcher {
    /// The next send order, or `Idle` with when to ask again. Call until
    /// `Idle`. See the module docs for the order of checks.
    pub fn poll(&mut self, now: Instant) -> Poll {
        self.release_free_aside();
        let cap = scaled(self.settings.max_in_flight, self.level.factor);
        if self.in_flight.len() >= cap {
            return Poll::Idle { wake_at: None };
        }
        let mut classes: PrioritySet = self.level.classes;
        let mut wake: Option<Instant> = None;
        let mut transitions = std::mem::take(&mut self.scratch_transitions);
        let mut set_aside = std::mem::take(&mut self.scratch_aside);
        let mut result = None;
        // One pass per priority share that runs out, plus the last.
        for _ in 0..=Priority::ALL.len() {
            if classes.is_empty() {
                break;
            }
            let mut offer = Offer {
                now,
                tiers: &mut self.tiers,
                fallbacks: &self.fallbacks,
                breakers: &mut self.breakers,
                metas: &self.metas,
                rng: &mut self.rng,
                level: &self.level,
                selector: &self.settings.selector,
                transitions: &mut transitions,
                set_aside: &mut set_aside,
                taken: None,
                stop: None,
            };
            let picked = self
                .scheduler
                .next_with(now, classes, |item| offer.offer(item));
            let (taken, stop) = (offer.taken.take(), offer.stop);
            for (chat, key) in set_aside.drain(..) {
                let items = self.scheduler.drain_chat(chat);
                self.aside.set_aside(chat, key, items);
            }
            match (picked, taken) {
                (Some(item), Some(taken)) => {
                    result = Some(self.hand_out(now, item, taken));
                    break;
                }
                (Some(item), None) => {
                    // The gate only says Take with a taken slot; stay safe.
                    let _ = self.scheduler.requeue(item.id, None);
                    break;
                }
                (None, _) => {}
            }
            match stop {
                Some(Stop::Class(p, at)) => {
                    classes = classes.without(p);
                    wake = min_instant(wake, Some(at));
                }
                Some(Stop::All(at)) => {
                    wake = min_instant(wake, at);
                    break;
                }
                None => break,
            }
        }
        for (tier, chat, tr) in transitions.drain(..) {
            self.breaker_event(tier, chat, tr);
        }
        self.scratch_transitions = transitions;
        self.scratch_aside = set_aside;
        match result {
            Some(order) => Poll::Send(order),
            None => Poll::Idle {
                wake_at: min_instant(wake, self.scheduler.next_wakeup()),
            },
        }
    }

    fn hand_out(&mut self, now: Instant, item: Item<u64>, taken: Taken) -> SendOrder {
        let meta = self.metas.entry(item.id).or_insert(Meta {
            chat: item.chat,
            first_attempt: NEVER,
            attempts: 0,
            prev_delay_ms: 0,
            ty: *taken.permit.message_type(),
            excluded: 0,
        });
        meta.attempts = meta.attempts.saturating_add(1);
        if meta.first_attempt == NEVER {
            meta.first_attempt = now.as_nanos();
        }
        let attempt = meta.attempts;
        let t = &mut self.tiers[taken.tier];
        t.in_flight += 1;
        t.counters.sent += 1;
        let deadline = now + t.cfg.per_attempt_timeout;
        self.in_flight.insert(
            item.id,
            InFlight {
                tier_key: t.key,
                chat: item.chat,
                permit: taken.permit,
                tier_ticket: taken.tier_ticket,
                chat_ticket: taken.chat_ticket,
            },
        );
        SendOrder {
            id: item.id,
            tier: taken.tier,
            chat: item.chat,
            attempt,
            deadline,
            probe: taken.probe,
        }
    }

    /// Hands set-aside chats back where there is room again: a type no
    /// longer paused, a bulkhead with free slots, a tier that is gone.
    pub(super) fn release_free_aside(&mut self) {
        if self.aside.is_empty() {
            return;
        }
        for (key, waiting) in self.aside.keys() {
            let room = match key {
                BlockKey::Paused(ty) if self.level.paused.contains(&ty) => 0,
                BlockKey::Paused(_) => waiting,
                BlockKey::Bulkhead { tier, ty } => match self.index_of(tier) {
                    Some(i) => self.tiers[i].free_slots(ty) as usize,
                    None => waiting,
                },
            };
            if room > 0 {
                self.release_aside(key, room.min(waiting));
            }
        }
    }
}
