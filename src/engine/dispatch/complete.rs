//! `complete`: what one attempt's outcome means for its message and tier.
//!
//! Owns the application of the taxonomy's verdict:
//! - delivered: success on both breakers, health and EWMA; the chat's next
//!   message may go;
//! - 429 (`Wait`): the whole tier's limiter pauses for `retry_after`, the
//!   message waits as long at the head of its chat; no attempt is used;
//! - nothing answered (refused, DNS, the attempt's deadline): when another
//!   tier can take the message, it moves on at once (failover within the
//!   attempt's deadline, not after a backoff on a tier that is down); else
//!   as transient below;
//! - transient (`Retry`): failure on the tier breaker; the tier's retry
//!   policy picks the instant, never before the breaker's half-open instant
//!   and never past the tier's overall timeout, and the retry goes to the
//!   same tier (whatever the degradation route) unless that tier's breaker
//!   or health turns it away then; when the policy gives up, the message
//!   moves on to the next tier;
//! - `FailOver` (TLS): the message moves on to the next tier at once;
//! - recipient unreachable: the chat is marked unreachable on the tier (for
//!   the configured TTL) and the message moves on to the next tier;
//! - permanent (bad request): dead letter, no retry anywhere;
//! - readdress (group migrated): queued again under the new chat, no
//!   attempt used;
//! - critical (bad token): the tier stops until an operator resets it, and
//!   the message moves on.
//!
//! "Moves on" requeues the message at the head of its chat at once, with the
//! tier it left excluded; when no tier is left for it (none not excluded,
//! stopped or marked unreachable for the chat), what happens depends on
//! whose fault the last failure was. The chat's or the message's
//! (unreachable): dead-lettered with the last tier's reason. The tier's (an
//! outage: retries spent on transient errors, TLS, a stopped tier): the
//! message is held — it waits a hold period, its exclusions are cleared and
//! it starts over on the best tier — and is dead-lettered only once it is
//! older than the configured maximum age. An outage never spends a
//! message's life: `maxAttempts` is how long one tier keeps a message
//! before passing it on. Breakers count only what the taxonomy says
//! counts; an answer that blames the message or the chat (400, 403, 429) is
//! a sign of life for the tier. Health and EWMA count the same failures;
//! a 429 counts for neither.
//!
//! Invariant: every in-flight message leaves `complete` either finished
//! (Delivered, DeadLetter) or queued again exactly once; the bulkhead permit
//! and breaker tickets are always settled.

use std::time::Duration;

use crate::engine::breaker::{Admission, BreakerState, CallOutcome};
use crate::engine::limiter::PauseScope;
use crate::engine::retry::{Jitter, RetryDecision, RetryInput, RetryPolicy};
use crate::engine::selector::{self, TierView};
use crate::engine::taxonomy::{Action, Class, Classification, Outcome, classify};
use crate::engine::{Instant, SplitMix64};

use super::aside::BlockKey;
use super::config::MAX_TIERS;
use super::types::{DeadLetterReason, Event, LastFailure, MessageError, Verdict};
use super::{Dispatcher, InFlight, NEVER};

/// Longest wait between the tries of a message held through an outage,
/// unless the tier's own backoff is longer.
const MAX_HOLD: Duration = Duration::from_secs(60);
/// Shortest wait of a hold: a tier whose backoff tops out lower would
/// otherwise be tried in a tight loop through a long outage.
const MIN_HOLD: Duration = Duration::from_secs(1);

impl Dispatcher {
    /// Reports how the attempt of `id` went, `latency` after it was sent
    /// (for a timeout: how long the agent waited). Returns what to do with
    /// the message; the dispatcher has already queued it again if the
    /// verdict says so.
    pub fn complete(
        &mut self,
        now: Instant,
        id: u64,
        outcome: &Outcome,
        latency: Duration,
    ) -> Result<Verdict, MessageError> {
        self.complete_classified(now, id, outcome, classify(outcome), latency)
    }

    /// [`Dispatcher::complete`] for a caller that has classified `outcome`
    /// already (`class` is `classify(outcome)`): the agent classifies each
    /// attempt once and hands the answer to everyone who needs it.
    pub fn complete_classified(
        &mut self,
        now: Instant,
        id: u64,
        outcome: &Outcome,
        class: Option<Classification>,
        latency: Duration,
    ) -> Result<Verdict, MessageError> {
        let f = self
            .in_flight
            .remove(&id)
            .ok_or(MessageError::NotInFlight(id))?;
        let tier = self.index_of(f.tier_key);
        self.settle(now, &f, class.as_ref(), outcome, latency);
        let InFlight {
            tier_key, permit, ..
        } = f;
        if let Some(i) = tier {
            let t = &mut self.tiers[i];
            t.in_flight = t.in_flight.saturating_sub(1);
            if let Some(ty) = t.release(permit) {
                self.release_aside(BlockKey::Bulkhead { tier: tier_key, ty }, 1);
            }
        }
        let Some(c) = class else {
            if let Some(i) = tier {
                self.tiers[i].counters.delivered += 1;
            }
            let _ = self.scheduler.complete(id);
            self.metas.remove(id);
            return Ok(Verdict::Delivered);
        };
        if let Some(i) = tier {
            let counters = &mut self.tiers[i].counters;
            if c.class == Class::RateLimited {
                counters.rate_limited += 1;
            } else {
                counters.failed += 1;
            }
        }
        if let Some(e) = self
            .correlator
            .observe(now, &tier_key, c.class, Some(f.chat))
        {
            let i = tier.unwrap_or(0);
            let tier_name = self.tier_name(i).unwrap_or_default().to_owned();
            self.push_event(Event::Escalation {
                tier: i,
                tier_name,
                class: e.class,
                chats: e.chats,
                since: e.since,
                at: e.at,
                severity: e.severity,
            });
        }
        Ok(match c.action {
            Action::Wait(d) => {
                let until = now + d;
                if let Some(i) = tier {
                    self.tiers[i].limiter.pause(PauseScope::All, until);
                }
                if let Some(m) = self.metas.get_mut(id) {
                    m.attempts = m.attempts.saturating_sub(1);
                    m.pinned = pin(tier);
                }
                let _ = self.scheduler.requeue(id, Some(until));
                Verdict::RetryAt(until)
            }
            Action::Retry if outcome.tier_unreachable() && self.can_move_on(now, id, tier) => {
                self.leave_tier(now, id, tier, LastFailure::TierFailed { reason: c.reason })
            }
            Action::Retry => self.retry(now, id, tier, tier_key, outcome),
            Action::FailOver => {
                self.leave_tier(now, id, tier, LastFailure::TierFailed { reason: c.reason })
            }
            Action::DeadLetter if c.class == Class::RecipientUnreachable => {
                if let Some(i) = tier {
                    let until = now + self.settings.unreachable_ttl;
                    self.tiers[i].unreachable.insert(f.chat, until);
                }
                self.leave_tier(now, id, tier, LastFailure::Unreachable { reason: c.reason })
            }
            Action::DeadLetter => {
                self.dead_letter(id, tier, DeadLetterReason::Refused { reason: c.reason })
            }
            Action::Readdress(new_chat) => self.readdress(id, tier, new_chat),
            Action::StopTier => {
                if let Some(i) = tier {
                    self.tiers[i].stopped = Some(c.reason);
                    self.tier_cache.invalidate();
                    let tier_name = self.tiers[i].cfg.name.clone();
                    self.push_event(Event::TierStopped {
                        tier: i,
                        tier_name,
                        at: now,
                        reason: c.reason,
                    });
                }
                self.leave_tier(now, id, tier, LastFailure::TierFailed { reason: c.reason })
            }
        })
    }

    /// Breakers, health, EWMA and the latency window learn the outcome.
    fn settle(
        &mut self,
        now: Instant,
        f: &InFlight,
        class: Option<&Classification>,
        outcome: &Outcome,
        latency: Duration,
    ) {
        let answered = !matches!(outcome, Outcome::Timeout);
        if answered {
            self.latency.record(now, latency);
        }
        let ok = CallOutcome::Success { latency };
        let failed = CallOutcome::Failure { latency };
        let (tier_call, chat_call) = match class {
            None => (Some(ok), Some(ok)),
            Some(c) if c.class == Class::Critical => (None, None),
            Some(c) if c.chat_scoped => (Some(ok), Some(failed)),
            Some(c) if c.counts_toward_breaker => (Some(failed), None),
            Some(_) => (Some(ok), Some(ok)),
        };
        let key = f.tier_key;
        let tier = self.index_of(key);
        if f.probe {
            self.tier_cache.invalidate();
        }
        if let Some(ticket) = f.tier_ticket {
            match tier_call {
                Some(call) => {
                    if let Some(tr) = self.breakers.record(now, &key, None, ticket, call)
                        && let Some(i) = tier
                    {
                        // A probe round that closes the breaker proves the
                        // tier works again; the outage's failures must not
                        // keep its health below the floor for a whole window.
                        let recovered =
                            tr.from == BreakerState::HalfOpen && tr.to == BreakerState::Closed;
                        self.breaker_event(i, None, tr);
                        if recovered {
                            self.tiers[i].forget_health(now);
                            self.tier_cache.invalidate();
                        }
                    }
                }
                None => self.breakers.abandon(&key, None, ticket),
            }
        }
        // Without a chat breaker at send time there is no ticket; a chat
        // failure then asks for one now (a chat with no breaker admits), so
        // the failure creates the chat's breaker.
        let chat_ticket = match (f.chat_ticket, chat_call) {
            (None, Some(CallOutcome::Failure { .. })) if tier.is_some() => {
                match self.breakers.admit(now, &key, Some(f.chat)).0 {
                    Admission::Allowed(t) | Admission::Probe(t) => Some(t),
                    Admission::Rejected { .. } => None,
                }
            }
            (t, _) => t,
        };
        if let Some(ticket) = chat_ticket {
            match chat_call {
                Some(call) => {
                    if matches!(call, CallOutcome::Failure { .. }) {
                        self.chat_breakers = true;
                    }
                    if let Some(tr) = self.breakers.record(now, &key, Some(f.chat), ticket, call)
                        && let Some(i) = tier
                    {
                        self.breaker_event(i, Some(f.chat), tr);
                    }
                }
                None => self.breakers.abandon(&key, Some(f.chat), ticket),
            }
        }
        let healthy = match class {
            None => Some(true),
            Some(c) if c.class == Class::RateLimited => None,
            Some(c) => Some(!(c.counts_toward_breaker || c.class == Class::Critical)),
        };
        if let (Some(i), Some(success)) = (tier, healthy) {
            let t = &mut self.tiers[i];
            t.health.record(now, success, answered.then_some(latency));
            t.ewma.record(success);
        }
    }

    fn retry(
        &mut self,
        now: Instant,
        id: u64,
        tier: Option<usize>,
        tier_key: u32,
        outcome: &Outcome,
    ) -> Verdict {
        let Some(meta) = self.metas.get(id).copied() else {
            return self.dead_letter(id, tier, DeadLetterReason::Refused { reason: "unknown" });
        };
        let (mut policy, overall) = match tier {
            Some(i) => (self.tiers[i].cfg.retry, self.tiers[i].cfg.overall_timeout),
            None => (RetryPolicy::default(), Duration::MAX),
        };
        policy.max_elapsed = Some(policy.max_elapsed.map_or(overall, |m| m.min(overall)));
        let retry_after = match outcome {
            Outcome::Http { body: Some(b), .. } => b.retry_after.map(Duration::from_secs),
            _ => None,
        };
        let first = if meta.first_attempt == NEVER {
            now
        } else {
            Instant::from_nanos(meta.first_attempt)
        };
        let input = RetryInput {
            attempt: meta.attempts.max(1),
            prev_delay: (meta.prev_delay_ms > 0)
                .then(|| Duration::from_millis(u64::from(meta.prev_delay_ms))),
            elapsed: now.since(first),
            retry_after,
            breaker_open_until: self
                .breakers
                .get(&tier_key, None)
                .and_then(|b| b.open_until()),
            now,
        };
        match policy.next_delay(&input, &mut self.rng) {
            RetryDecision::RetryAt { at, delay } => {
                if let Some(m) = self.metas.get_mut(id) {
                    m.prev_delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                    m.pinned = pin(tier);
                }
                let _ = self.scheduler.requeue(id, Some(at));
                Verdict::RetryAt(at)
            }
            RetryDecision::GiveUp(why) => {
                self.leave_tier(now, id, tier, LastFailure::RetriesExhausted(why))
            }
        }
    }

    /// Whether the message has a tier to go to besides `tier`.
    fn can_move_on(&self, now: Instant, id: u64, tier: Option<usize>) -> bool {
        let Some(meta) = self.metas.get(id) else {
            return false;
        };
        let excluded = meta.excluded | tier.map_or(0, |i| 1 << (i % MAX_TIERS));
        self.next_tier(now, meta.chat, excluded).is_some()
    }

    /// The message will not use `tier` again: another tier if one is left
    /// for it, else the dead-letter queue.
    fn leave_tier(
        &mut self,
        now: Instant,
        id: u64,
        tier: Option<usize>,
        last: LastFailure,
    ) -> Verdict {
        let Some(meta) = self.metas.get_mut(id) else {
            return self.dead_letter(id, tier, DeadLetterReason::NoTierLeft { last });
        };
        if let Some(i) = tier {
            meta.excluded |= 1 << (i % MAX_TIERS);
        }
        let (chat, excluded) = (meta.chat, meta.excluded);
        match self.next_tier(now, chat, excluded) {
            Some(to) => {
                if let Some(i) = tier {
                    self.tiers[i].counters.failed_over += 1;
                }
                let _ = self.scheduler.requeue(id, None);
                Verdict::FailedOver { to }
            }
            None if last.is_tier_fault() => self.hold(now, id, tier, last),
            None => self.dead_letter(id, tier, DeadLetterReason::NoTierLeft { last }),
        }
    }

    /// Every tier the message could take has failed it with the tier's own
    /// fault (an outage, a stopped tier): the message waits and starts over
    /// on all tiers, best first, instead of being dead-lettered; only its
    /// maximum age ends the wait. Each hold doubles the wait, from the
    /// tier's longest backoff up to [`MAX_HOLD`] (or that backoff, if
    /// longer), so a long outage costs a message one attempt per tier and
    /// hold period, and a recovered API is tried again within one period.
    fn hold(&mut self, now: Instant, id: u64, tier: Option<usize>, last: LastFailure) -> Verdict {
        let age = self
            .scheduler
            .out_enqueued_at(id)
            .map_or(Duration::ZERO, |at| now.since(at));
        if age >= self.settings.max_age {
            return self.dead_letter(id, tier, DeadLetterReason::Expired { last });
        }
        let policy = tier.map_or_else(RetryPolicy::default, |i| self.tiers[i].cfg.retry);
        let Some(meta) = self.metas.get_mut(id) else {
            return self.dead_letter(id, tier, DeadLetterReason::NoTierLeft { last });
        };
        let longest = policy.max_delay.max(MAX_HOLD);
        let previous = Duration::from_millis(u64::from(meta.prev_delay_ms));
        let period = previous
            .saturating_mul(2)
            .clamp(policy.max_delay.max(MIN_HOLD), longest);
        let wait = match policy.jitter {
            Jitter::None => period,
            _ => {
                let half = period / 2;
                let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
                half + Duration::from_nanos(self.rng.below(nanos.saturating_add(1)))
            }
        };
        meta.excluded = 0;
        meta.pinned = 0;
        meta.prev_delay_ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        if let Some(i) = tier {
            self.tiers[i].counters.held += 1;
        }
        let at = now + wait;
        let _ = self.scheduler.requeue(id, Some(at));
        Verdict::Held(at)
    }

    /// The tier a message with these exclusions would move to: any tier not
    /// excluded, stopped or marked unreachable for the chat, whatever its
    /// breaker says now (it will wait for the breaker).
    fn next_tier(&self, now: Instant, chat: i64, excluded: u16) -> Option<usize> {
        let views: Vec<TierView<'_>> = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let left = excluded & (1 << (i % MAX_TIERS)) != 0;
                TierView {
                    name: &t.cfg.name,
                    priority: u32::MAX - t.cfg.priority,
                    breaker_admits: !left && t.stopped.is_none(),
                    health_score: 100,
                    health_floor: 0,
                    ewma_success: 1.0,
                    chat_unreachable: t.is_unreachable(chat, now),
                    is_spool: t.is_spool() && !left && t.stopped.is_none(),
                }
            })
            .collect();
        // A copy of the generator: predicting must not change the run.
        let mut rng = SplitMix64::new(self.rng.clone().next_u64());
        selector::select(
            &views,
            &self.fallbacks,
            self.level.route,
            &self.settings.selector,
            &mut rng,
        )
        .ok()
        .map(|s| s.tier)
    }

    fn dead_letter(&mut self, id: u64, tier: Option<usize>, reason: DeadLetterReason) -> Verdict {
        if let Some(i) = tier {
            self.tiers[i].counters.dead_lettered += 1;
        }
        let _ = self.scheduler.complete(id);
        self.metas.remove(id);
        Verdict::DeadLetter { reason }
    }

    fn readdress(&mut self, id: u64, tier: Option<usize>, new_chat: i64) -> Verdict {
        let Ok(mut item) = self.scheduler.complete(id) else {
            return Verdict::Readdressed { new_chat };
        };
        item.chat = new_chat;
        item.not_before = None;
        if let Some(m) = self.metas.get_mut(id) {
            m.chat = new_chat;
            m.attempts = m.attempts.saturating_sub(1);
            // The new chat id is that bot's: stay on the tier.
            m.pinned = pin(tier);
        }
        self.push_item(item);
        Verdict::Readdressed { new_chat }
    }
}

/// `Meta::pinned` for a tier index.
pub(super) fn pin(tier: Option<usize>) -> u8 {
    tier.and_then(|i| u8::try_from(i + 1).ok()).unwrap_or(0)
}
