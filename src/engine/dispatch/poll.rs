//! `poll`: the next send order, or when to ask again.
//!
//! Owns the gate the scheduler's candidates pass, in this order:
//! 1. a paused message type sets the chat aside;
//! 2. tier selection: a retry stays on the tier it failed on while that
//!    tier can take it (the taxonomy's Retry is "on the same tier");
//!    otherwise the selector decides (breaker admission as predicted from
//!    its state, health floor, chat reachability, tiers the message left,
//!    fallback order, spool last). While the level routes away from the
//!    primary tiers, a primary whose breaker is due for a probe still gets
//!    its probes, or it could never close again;
//! 3. a bulkhead slot for the message type on that tier (types without a
//!    bulkhead need none); a full bulkhead sets the chat aside;
//! 4. the tier breaker and the chat breaker (if the chat has one) admit for
//!    real; a tier breaker refusal removes the tier from this offer and
//!    selection runs again;
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
//! bulkhead permit (bounded types); nothing is charged or held when poll
//! returns Idle. Breaker states and health scores are read into a summary
//! that is reused until something changes them (see [`Wide`]).

use crate::engine::breaker::{Admission, BreakerSet, Ticket, Transition};
use crate::engine::bulkhead::Permit;
use crate::engine::limiter::{Binding, Charge, Decision, Key};
use crate::engine::scheduler::{Gate, Item, PrioritySet};
use crate::engine::selector::{self, SelectorConfig, TierView};
use crate::engine::{Instant, Priority, SplitMix64};

use super::aside::BlockKey;
use super::config::{MAX_TIERS, Sink};
use super::ids::IdTable;
use super::tier::{TierState, may_admit, probe_due};
use super::types::{MessageType, Poll, SendOrder};
use super::{Dispatcher, InFlight, LevelCache, Meta, NEVER};

/// Why no tier can take a message.
#[derive(Clone, Copy, Debug)]
enum Blocked {
    /// No tier can take any message before the instant (or another call).
    All(Option<Instant>),
    /// This message cannot go before the instant; `None`: not before an
    /// operator resets or reconfigures a tier (every tier it may still use
    /// is stopped).
    Chat(Option<Instant>),
}

/// How soon a message blocked by health floors is offered again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// The limiter's charge, taken back if the send is deferred.
    charge: Charge,
    permit: Option<Permit<MessageType>>,
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

/// What every offer shares about a tier: its breaker and health. It
/// changes only when a breaker transitions or probes, a tier stops or is
/// reset, a tick refreshes health, a reload, or an open period ends — each
/// of those invalidates [`TierCache`], so between them polls reuse it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Wide {
    /// Not stopped, breaker would admit.
    admits: bool,
    score: u8,
    /// Breaker not closed but would admit: a probe is due.
    probe_due: bool,
    /// The end of the breaker's open period, if still ahead.
    open_until: Option<Instant>,
}

/// The per-tier summary and the selection of a plain message (no pin,
/// exclusion or chat mark) that it implies, kept across polls.
#[derive(Clone, Debug)]
pub(super) struct TierCache {
    wide: [Wide; MAX_TIERS],
    valid: bool,
    /// The summary expires when the first open period ends.
    until: Instant,
    /// Set only when the selector drew no random number for it.
    plain: Option<usize>,
}

impl Default for TierCache {
    fn default() -> Self {
        TierCache {
            wide: [Wide::default(); MAX_TIERS],
            valid: false,
            until: Instant::ZERO,
            plain: None,
        }
    }
}

impl TierCache {
    pub(super) fn invalidate(&mut self) {
        self.valid = false;
        self.plain = None;
    }
}

/// The fields one offer needs, borrowed apart from the scheduler.
struct Offer<'a> {
    now: Instant,
    tiers: &'a mut [TierState],
    fallbacks: &'a [usize],
    breakers: &'a mut BreakerSet<u32>,
    /// Whether any chat breaker exists (else chat admission is skipped).
    chat_breakers: bool,
    metas: &'a IdTable<Meta>,
    rng: &'a mut SplitMix64,
    level: &'a LevelCache,
    selector: &'a SelectorConfig,
    transitions: &'a mut Vec<(usize, Option<i64>, Transition)>,
    set_aside: &'a mut Vec<(i64, BlockKey)>,
    cache: &'a mut TierCache,
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
        let meta = self.metas.get(item.id).copied().unwrap_or(Meta {
            chat: item.chat,
            first_attempt: NEVER,
            attempts: 0,
            prev_delay_ms: 0,
            ty: MessageType::default(),
            excluded: 0,
            pinned: 0,
        });
        if !self.level.paused.is_empty() && self.level.paused.contains(&meta.ty) {
            return self.aside(item.chat, BlockKey::Paused(meta.ty));
        }
        let pinned = usize::from(meta.pinned).checked_sub(1);
        let mut refused: u16 = 0;
        for _ in 0..=self.tiers.len() {
            let tier = match self.choose(item.chat, pinned, meta.excluded, refused) {
                Ok(tier) => tier,
                Err(Blocked::All(wake)) => {
                    self.stop = Some(Stop::All(wake));
                    return Gate::Stop;
                }
                Err(Blocked::Chat(Some(at))) => return Gate::DeferChat(at),
                Err(Blocked::Chat(None)) => return self.aside(item.chat, BlockKey::Stranded),
            };
            let now = self.now;
            let key = self.tiers[tier].key;
            let Ok(permit) = self.tiers[tier].acquire(now, meta.ty) else {
                return self.aside(
                    item.chat,
                    BlockKey::Bulkhead {
                        tier: key,
                        ty: meta.ty,
                    },
                );
            };
            let mut tier_ticket = None;
            let mut chat_ticket = None;
            let mut probe = false;
            if !self.tiers[tier].is_spool() {
                match self.admit(tier, key, None) {
                    Ok((ticket, p)) => {
                        tier_ticket = Some(ticket);
                        probe = p;
                    }
                    Err(_) => {
                        // Its probes are all out: another tier may go.
                        self.tiers[tier].release(permit);
                        refused |= bit(tier);
                        continue;
                    }
                }
                if self.chat_breakers && self.tiers[tier].cfg.sink == Sink::Telegram {
                    match self.admit(tier, key, Some(item.chat)) {
                        Ok((ticket, _)) => chat_ticket = Some(ticket),
                        Err(until) => {
                            // This chat's breaker is probing: the chat waits.
                            self.tiers[tier].release(permit);
                            self.give_back(key, item.chat, tier_ticket, None, probe);
                            return Gate::DeferChat(until);
                        }
                    }
                }
            }
            let recipient = self.tiers[tier].recipient(item.chat);
            let TierState { limiter, cfg, .. } = &mut self.tiers[tier];
            let (decision, charge) =
                limiter.check_charged(now, &cfg.limits.checks(recipient, item.priority));
            if let Decision::Refuse { retry_at, binding } = decision {
                self.tiers[tier].release(permit);
                self.give_back(key, item.chat, tier_ticket, chat_ticket, probe);
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
            self.taken = Some(Taken {
                tier,
                charge,
                permit,
                tier_ticket,
                chat_ticket,
                probe,
            });
            return Gate::Take;
        }
        self.stop = Some(Stop::All(None));
        Gate::Stop
    }

    /// Sets the chat aside until `key` has room.
    fn aside(&mut self, chat: i64, key: BlockKey) -> Gate {
        self.set_aside.push((chat, key));
        Gate::DeferChat(Instant::MAX)
    }

    /// Breaker admission: `(ticket, is_probe)`, or when to ask again.
    /// Transitions are collected for events; anything but a plain closed
    /// admission invalidates the tier summary.
    fn admit(
        &mut self,
        tier: usize,
        key: u32,
        chat: Option<i64>,
    ) -> Result<(Ticket, bool), Instant> {
        let (admission, transition) = self.breakers.admit(self.now, &key, chat);
        if let Some(tr) = transition {
            self.transitions.push((tier, chat, tr));
        }
        if transition.is_some() || !matches!(admission, Admission::Allowed(_)) {
            self.invalidate();
        }
        match admission {
            Admission::Allowed(t) => Ok((t, false)),
            Admission::Probe(t) => Ok((t, true)),
            Admission::Rejected { until } => Err(until),
        }
    }

    /// Returns unused breaker tickets; giving back a probe changes what the
    /// breaker admits next, so the summary is recomputed.
    fn give_back(
        &mut self,
        key: u32,
        chat: i64,
        tier: Option<Ticket>,
        chat_t: Option<Ticket>,
        probe: bool,
    ) {
        if let Some(t) = tier {
            self.breakers.abandon(&key, None, t);
        }
        if let Some(t) = chat_t {
            self.breakers.abandon(&key, Some(chat), t);
        }
        if probe {
            self.invalidate();
        }
    }

    fn invalidate(&mut self) {
        self.cache.invalidate();
    }

    /// Refreshes the per-tier summary if it is stale.
    fn ensure_wide(&mut self) {
        let now = self.now;
        if self.cache.valid && now < self.cache.until {
            return;
        }
        let mut until = Instant::MAX;
        for (i, t) in self.tiers.iter().enumerate() {
            let b = self.breakers.get(&t.key, None);
            let admits = t.stopped.is_none() && may_admit(b, now);
            let open_until = b.and_then(|b| b.open_until()).filter(|u| *u > now);
            until = until.min(open_until.unwrap_or(Instant::MAX));
            self.cache.wide[i] = Wide {
                admits,
                score: t.score(b, now),
                probe_due: t.stopped.is_none() && probe_due(b, now),
                open_until,
            };
        }
        self.cache.valid = true;
        self.cache.until = until;
        self.cache.plain = None;
    }

    /// The tier for this offer, or why none can go. `pinned`: the tier a
    /// retry belongs to; `excluded`: tiers the message left; `refused`:
    /// tiers whose breaker refused it in this offer.
    fn choose(
        &mut self,
        chat: i64,
        pinned: Option<usize>,
        excluded: u16,
        refused: u16,
    ) -> Result<usize, Blocked> {
        self.ensure_wide();
        let out = excluded | refused;
        let now = self.now;
        let n = self.tiers.len();
        let mut marked = false;
        let mut views = [EMPTY_VIEW; MAX_TIERS];
        for (i, t) in self.tiers.iter().enumerate() {
            let w = self.cache.wide[i];
            let left = out & bit(i) != 0;
            let chat_open = self.chat_breakers
                && t.cfg.sink == Sink::Telegram
                && !may_admit(self.breakers.get(&t.key, Some(chat)), now);
            let unreachable = chat_open || t.is_unreachable(chat, now);
            marked |= unreachable;
            views[i] = TierView {
                name: &t.cfg.name,
                // The API prefers higher priorities, the selector lower ones.
                priority: u32::MAX - t.cfg.priority,
                breaker_admits: !left && w.admits,
                health_score: w.score,
                health_floor: t.cfg.health_floor,
                ewma_success: t.ewma.value(),
                chat_unreachable: left || unreachable,
                is_spool: t.is_spool() && !left && t.stopped.is_none(),
            };
        }
        let views = &mut views[..n];
        // A retry stays on its tier (the taxonomy's Retry) whatever the
        // route, while that tier can take it; otherwise it is placed anew.
        if let Some(p) = pinned.filter(|p| *p < n)
            && let Some(v) = views.get(p)
            && (v.is_spool
                || (v.breaker_admits && !v.chat_unreachable && v.health_score >= v.health_floor))
        {
            return Ok(p);
        }
        // A primary tier waiting for probes gets them first, whatever the
        // route and its health score: probing is how it recovers, and a
        // health floor that blocked probes would keep it out until its
        // failures aged out of the window.
        if let Some(i) = self.probe_due(views) {
            return Ok(i);
        }
        let plain = out == 0 && !marked;
        if plain && let Some(tier) = self.cache.plain {
            return Ok(tier);
        }
        let route = self.level.route;
        let before = self.rng.clone();
        if let Ok(sel) = selector::select(views, self.fallbacks, route, self.selector, self.rng) {
            if plain && *self.rng == before {
                self.cache.plain = Some(sel.tier);
            }
            return Ok(sel.tier);
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
            return Ok(sel.tier);
        }
        Err(self.blocked(excluded, refused))
    }

    /// Why no tier can take the message: for every message (stop the poll)
    /// or for this one only (its exclusions, its chat) — then only its chat
    /// waits, so one stranded message never holds up the others.
    fn blocked(&self, excluded: u16, refused: u16) -> Blocked {
        let now = self.now;
        let any_tier_can_go = self.tiers.iter().enumerate().any(|(i, t)| {
            let w = self.cache.wide[i];
            refused & bit(i) == 0
                && t.stopped.is_none()
                && (t.is_spool() || (w.admits && w.score >= t.cfg.health_floor))
        });
        let mut wake = None;
        let mut candidates = false;
        for (i, t) in self.tiers.iter().enumerate() {
            if t.stopped.is_some() || (any_tier_can_go && excluded & bit(i) != 0) {
                continue;
            }
            candidates = true;
            wake = min_instant(wake, self.cache.wide[i].open_until);
        }
        if !any_tier_can_go {
            return Blocked::All(wake);
        }
        if !candidates {
            return Blocked::Chat(None);
        }
        // Health floors move at the next tick; a refused probe frees soon.
        Blocked::Chat(Some(wake.unwrap_or(now + RECHECK)))
    }

    /// A primary tier the route skips whose breaker is waiting for probes,
    /// best priority first.
    fn probe_due(&self, views: &[TierView<'_>]) -> Option<usize> {
        (0..views.len())
            .filter(|i| !self.fallbacks.contains(i))
            .filter(|&i| {
                let v = &views[i];
                !v.is_spool
                    && v.breaker_admits
                    && !v.chat_unreachable
                    && self.cache.wide[i].probe_due
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
                chat_breakers: self.chat_breakers,
                metas: &self.metas,
                rng: &mut self.rng,
                level: &self.level,
                selector: &self.settings.selector,
                transitions: &mut transitions,
                set_aside: &mut set_aside,
                cache: &mut self.tier_cache,
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
        let mut meta = self.metas.get(item.id).copied().unwrap_or(Meta {
            chat: item.chat,
            first_attempt: NEVER,
            attempts: 0,
            prev_delay_ms: 0,
            ty: MessageType::default(),
            excluded: 0,
            pinned: 0,
        });
        meta.attempts = meta.attempts.saturating_add(1);
        meta.pinned = 0;
        if meta.first_attempt == NEVER {
            meta.first_attempt = now.as_nanos();
        }
        self.metas.insert(item.id, meta);
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
                charge: taken.charge,
                permit: taken.permit,
                tier_ticket: taken.tier_ticket,
                chat_ticket: taken.chat_ticket,
                probe: taken.probe,
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
                BlockKey::Stranded => 0,
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
