//! Each tier's second limiter, fed with the instants send tasks really
//! start rather than the instants the engine handed them out.
//!
//! The engine's limiter paces hand-outs exactly, but a send task may start
//! later than its hand-out when the runtime is busy (a burst of accepts on
//! two cores), and by a different amount for each send: the first sends
//! of a second late, the next ones on time, and the API counts more than
//! its limit in one window. [`crate::engine::limiter::Limiter::reserve`]
//! replays the engine's decisions on the real start instants: a send that
//! starts on time passes at once; one that starts late, or right behind
//! late ones, waits for its turn. Only the local limits are paced here;
//! the shared limiter's slots on Redis have their own lateness check.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::limiter::{Charge, Limiter, Limits, Recipient};
use crate::engine::{Instant, Priority};

/// How many reservations between sweeps of keys gone idle.
const SWEEP_EVERY: u32 = 4096;

/// The start limiter of one tier, shared by its send tasks.
#[derive(Debug)]
pub(super) struct StartPacer {
    inner: Mutex<Paced>,
}

#[derive(Debug, Default)]
struct Paced {
    limits: Limits,
    limiter: Limiter,
    since_sweep: u32,
}

impl StartPacer {
    pub(super) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(StartPacer {
            inner: Mutex::new(Paced {
                limits,
                ..Paced::default()
            }),
        })
    }

    /// The local limits the engine applies to this tier now.
    pub(super) fn set_limits(&self, limits: Limits) {
        self.lock().limits = limits;
    }

    /// When a send that starts at `now` may leave (never before `now`),
    /// charged; give the charge back with [`StartPacer::refund`] if the
    /// send does not leave after all.
    pub(super) fn reserve(
        &self,
        now: Instant,
        recipient: Recipient,
        priority: Priority,
    ) -> (Instant, Charge) {
        let mut p = self.lock();
        p.since_sweep += 1;
        if p.since_sweep >= SWEEP_EVERY {
            p.since_sweep = 0;
            p.limiter.evict_idle(now);
        }
        let limits = p.limits;
        let checks = limits.checks(recipient, priority);
        p.limiter.reserve(now, &checks)
    }

    pub(super) fn refund(&self, charge: &Charge) {
        self.lock().limiter.refund(charge);
    }

    // The state stays consistent whatever a panicking holder did: each
    // call leaves whole TATs behind.
    fn lock(&self) -> MutexGuard<'_, Paced> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::limiter::Limit;
    use std::time::Duration;

    #[test]
    fn a_chat_sent_late_then_on_time_keeps_its_second() {
        let pacer = StartPacer::new(Limits::default());
        let chat = Recipient::Chat(7);
        let at = |ms: u64| Instant::ZERO + Duration::from_millis(ms);
        // Handed out at 0 ms and 1010 ms; the first task starts 80 ms late.
        assert_eq!(pacer.reserve(at(80), chat, Priority::Normal).0, at(80));
        let (second, _) = pacer.reserve(at(1_010), chat, Priority::Normal);
        assert_eq!(second, at(1_090));
        // Another chat waits for the bot's pace only.
        let (other, _) = pacer.reserve(at(1_010), Recipient::Chat(8), Priority::Normal);
        let interval = Limit::TELEGRAM_GLOBAL.cell().interval;
        assert_eq!(other, second + Duration::from_nanos(interval));
    }

    #[test]
    fn a_refunded_reservation_frees_its_turn() {
        let pacer = StartPacer::new(Limits::default());
        let chat = Recipient::Chat(7);
        let (first, charge) = pacer.reserve(Instant::ZERO, chat, Priority::Normal);
        pacer.refund(&charge);
        let (again, _) = pacer.reserve(first, chat, Priority::Normal);
        assert_eq!(again, first);
    }
}
