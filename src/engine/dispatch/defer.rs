//! `defer`: hand back a send order that was never sent. A shared limiter
//! (several agents, one budget in Redis) may refuse a send the local engine
//! admitted; the message then waits, at the head of its chat, until the
//! instant the shared budget named, and the whole tier holds off as long.
//!
//! Unlike a 429, nothing reached the API, so nothing is learnt: no attempt
//! is used, no counter moves, breakers get their tickets back unused,
//! health and latency are untouched. Invariant (as for `complete`): the
//! message leaves in flight exactly once, queued again, with its bulkhead
//! permit released.

use crate::engine::Instant;
use crate::engine::limiter::PauseScope;

use super::aside::BlockKey;
use super::complete::pin;
use super::types::MessageError;
use super::{Dispatcher, InFlight, NEVER};

impl Dispatcher {
    /// Takes the order for `id` back unsent; it may be sent again from
    /// `until` on, and the tier sends nothing before then.
    pub fn defer(&mut self, now: Instant, id: u64, until: Instant) -> Result<(), MessageError> {
        let f = self
            .in_flight
            .remove(&id)
            .ok_or(MessageError::NotInFlight(id))?;
        let InFlight {
            tier_key,
            chat,
            charge,
            permit,
            tier_ticket,
            chat_ticket,
            probe,
        } = f;
        if let Some(t) = tier_ticket {
            self.breakers.abandon(&tier_key, None, t);
        }
        if let Some(t) = chat_ticket {
            self.breakers.abandon(&tier_key, Some(chat), t);
        }
        if probe {
            self.tier_cache.invalidate();
        }
        let until = until.max(now);
        let tier = self.index_of(tier_key);
        if let Some(i) = tier {
            let t = &mut self.tiers[i];
            t.in_flight = t.in_flight.saturating_sub(1);
            t.counters.sent = t.counters.sent.saturating_sub(1);
            // Nothing was sent: the chat's cell (and any key nobody has
            // charged since) is given back, so a chat whose send the
            // shared budget refused is not held a full chat interval.
            t.limiter.refund(&charge);
            t.limiter.pause(PauseScope::All, until);
            if let Some(ty) = t.release(permit) {
                self.release_aside(BlockKey::Bulkhead { tier: tier_key, ty }, 1);
            }
        }
        if let Some(m) = self.metas.get_mut(id) {
            m.attempts = m.attempts.saturating_sub(1);
            if m.attempts == 0 {
                m.first_attempt = NEVER;
            }
            // Back to the same tier: the refusal says nothing against it.
            m.pinned = pin(tier);
        }
        let _ = self.scheduler.requeue(id, Some(until));
        Ok(())
    }
}
