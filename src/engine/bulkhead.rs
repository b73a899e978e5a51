//! Bulkheads: how many sends of each message type may be in flight, and how
//! long a send may wait for a slot.
//!
//! Owns: the accounting (slots in use, callers waiting, wait deadlines) per
//! message type. Leaves to others: the waiting itself and waking waiters
//! when a slot frees up (agent), what to do with a rejected message
//! (dispatcher), choosing limits (CircuitPolicy, degradation's concurrency
//! cut).
//!
//! Invariant: reads no clock; a type never has more than `max_concurrent`
//! permits out (unless lowered while they were out); every [`Waiter`] is
//! counted until it is granted, rejected or cancelled. [`Permit`] and
//! [`Waiter`] are not `Clone`, so one can be given back only once.
//!
//! Newcomers do not overtake: while anyone waits for a type, a first
//! [`Bulkheads::try_acquire`] waits too, and freed slots go to callers of
//! [`Bulkheads::retry`].

use std::hash::Hash;
use std::time::Duration;

use crate::engine::{FastMap, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BulkheadConfig {
    /// 0 pauses the type: every send waits, then is rejected.
    pub max_concurrent: u32,
    /// 0 rejects at once when full.
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    /// A Bot API send takes ~50-300 ms, so 10 in flight carry far more than
    /// the 30/s the bot may send; a message that waited 5 s is better
    /// rescheduled than held.
    fn default() -> Self {
        BulkheadConfig {
            max_concurrent: 10,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// A slot in flight; give it back with [`Bulkheads::release`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a permit that is never released holds its slot forever"]
pub struct Permit<M> {
    ty: M,
}

impl<M> Permit<M> {
    pub fn message_type(&self) -> &M {
        &self.ty
    }
}

/// A caller waiting for a slot since `since`; pass it to
/// [`Bulkheads::retry`] or [`Bulkheads::cancel`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a waiter that is dropped stays counted as waiting"]
pub struct Waiter<M> {
    ty: M,
    since: Instant,
    deadline: Instant,
}

impl<M> Waiter<M> {
    pub fn message_type(&self) -> &M {
        &self.ty
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    /// After this, [`Bulkheads::retry`] rejects unless a slot is free.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaitExceeded {
    pub waited: Duration,
    pub max_wait: Duration,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub enum Acquire<M> {
    Granted(Permit<M>),
    /// Full: ask again with [`Bulkheads::retry`] when a slot frees up or at
    /// the waiter's deadline.
    Wait(Waiter<M>),
    Rejected(WaitExceeded),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    pub in_use: u32,
    pub waiting: u32,
}

/// Bulkhead accounting for every message type `M` (keep `M` small and
/// cheap to clone: an enum or an interned id).
#[derive(Clone, Debug)]
pub struct Bulkheads<M> {
    default: BulkheadConfig,
    configs: FastMap<M, BulkheadConfig>,
    usage: FastMap<M, Usage>,
}

impl<M: Hash + Eq + Clone> Bulkheads<M> {
    /// `default` applies to types never [`configure`](Self::configure)d.
    pub fn new(default: BulkheadConfig) -> Self {
        Bulkheads {
            default,
            configs: FastMap::default(),
            usage: FastMap::default(),
        }
    }

    /// Set a type's limits; permits already out stay valid.
    pub fn configure(&mut self, ty: M, config: BulkheadConfig) {
        self.configs.insert(ty, config);
    }

    /// Every type with limits of its own, with its usage now.
    pub fn configured(&self) -> impl Iterator<Item = (&M, BulkheadConfig, Usage)> {
        self.configs.iter().map(|(m, c)| (m, *c, self.usage(m)))
    }

    pub fn config(&self, ty: &M) -> BulkheadConfig {
        self.configs.get(ty).copied().unwrap_or(self.default)
    }

    /// First request for a slot, at `now`.
    pub fn try_acquire(&mut self, now: Instant, ty: M) -> Acquire<M> {
        let config = self.config(&ty);
        let usage = self.usage.entry(ty.clone()).or_default();
        if usage.waiting == 0 && usage.in_use < config.max_concurrent {
            usage.in_use += 1;
            return Acquire::Granted(Permit { ty });
        }
        if config.max_wait.is_zero() {
            return Acquire::Rejected(WaitExceeded {
                waited: Duration::ZERO,
                max_wait: config.max_wait,
            });
        }
        usage.waiting = usage.waiting.saturating_add(1);
        Acquire::Wait(Waiter {
            ty,
            since: now,
            deadline: now + config.max_wait,
        })
    }

    /// Ask again for a waiter: granted if a slot is free, rejected once it
    /// has waited `max_wait` (as configured now), else still waiting.
    pub fn retry(&mut self, now: Instant, waiter: Waiter<M>) -> Acquire<M> {
        let config = self.config(&waiter.ty);
        let usage = self.usage.entry(waiter.ty.clone()).or_default();
        if usage.in_use < config.max_concurrent {
            usage.waiting = usage.waiting.saturating_sub(1);
            usage.in_use += 1;
            return Acquire::Granted(Permit { ty: waiter.ty });
        }
        let waited = now.since(waiter.since);
        if waited >= config.max_wait {
            usage.waiting = usage.waiting.saturating_sub(1);
            return Acquire::Rejected(WaitExceeded {
                waited,
                max_wait: config.max_wait,
            });
        }
        Acquire::Wait(Waiter {
            deadline: waiter.since + config.max_wait,
            ..waiter
        })
    }

    /// The caller stopped waiting (shutdown, message withdrawn).
    pub fn cancel(&mut self, waiter: Waiter<M>) {
        if let Some(usage) = self.usage.get_mut(&waiter.ty) {
            usage.waiting = usage.waiting.saturating_sub(1);
        }
    }

    /// Give a slot back. Returns how many wait for this type, so the caller
    /// knows whether to wake one.
    pub fn release(&mut self, permit: Permit<M>) -> u32 {
        match self.usage.get_mut(&permit.ty) {
            Some(usage) => {
                usage.in_use = usage.in_use.saturating_sub(1);
                usage.waiting
            }
            None => 0,
        }
    }

    pub fn usage(&self, ty: &M) -> Usage {
        self.usage.get(ty).copied().unwrap_or_default()
    }

    /// Every type with slots out or callers waiting, for metrics.
    pub fn iter(&self) -> impl Iterator<Item = (&M, Usage)> {
        self.usage
            .iter()
            .filter(|(_, u)| **u != Usage::default())
            .map(|(m, u)| (m, *u))
    }

    /// Forget types with nothing out and nobody waiting.
    pub fn evict_idle(&mut self) -> usize {
        let before = self.usage.len();
        self.usage.retain(|_, u| *u != Usage::default());
        before - self.usage.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn two_slots() -> Bulkheads<&'static str> {
        Bulkheads::new(BulkheadConfig {
            max_concurrent: 2,
            max_wait: Duration::from_millis(500),
        })
    }

    #[test]
    fn grants_waits_and_rejects_after_max_wait() {
        let mut b = two_slots();
        let Acquire::Granted(p1) = b.try_acquire(ms(0), "text") else {
            panic!()
        };
        let Acquire::Granted(_p2) = b.try_acquire(ms(0), "text") else {
            panic!()
        };
        let Acquire::Wait(w) = b.try_acquire(ms(10), "text") else {
            panic!()
        };
        assert_eq!(w.deadline(), ms(510));
        assert_eq!(
            b.usage(&"text"),
            Usage {
                in_use: 2,
                waiting: 1
            }
        );
        // Other types have their own slots.
        assert!(matches!(
            b.try_acquire(ms(10), "photo"),
            Acquire::Granted(_)
        ));
        let Acquire::Wait(w) = b.retry(ms(300), w) else {
            panic!()
        };
        assert_eq!(
            b.retry(ms(510), w),
            Acquire::Rejected(WaitExceeded {
                waited: Duration::from_millis(500),
                max_wait: Duration::from_millis(500)
            })
        );
        assert_eq!(
            b.usage(&"text"),
            Usage {
                in_use: 2,
                waiting: 0
            }
        );
        assert_eq!(b.release(p1), 0);
        assert_eq!(b.usage(&"text").in_use, 1);
    }

    #[test]
    fn waiters_are_not_overtaken_by_newcomers() {
        let mut b = two_slots();
        let Acquire::Granted(p1) = b.try_acquire(ms(0), "text") else {
            panic!()
        };
        let Acquire::Granted(_p2) = b.try_acquire(ms(0), "text") else {
            panic!()
        };
        let Acquire::Wait(w) = b.try_acquire(ms(1), "text") else {
            panic!()
        };
        assert_eq!(b.release(p1), 1);
        // A slot is free, but someone waits: the newcomer queues.
        let Acquire::Wait(late) = b.try_acquire(ms(2), "text") else {
            panic!()
        };
        assert!(matches!(b.retry(ms(2), w), Acquire::Granted(_)));
        b.cancel(late);
        assert_eq!(
            b.usage(&"text"),
            Usage {
                in_use: 2,
                waiting: 0
            }
        );
    }

    #[test]
    fn zero_limits_pause_or_reject() {
        let mut b = two_slots();
        b.configure(
            "video",
            BulkheadConfig {
                max_concurrent: 0,
                max_wait: Duration::ZERO,
            },
        );
        assert!(matches!(
            b.try_acquire(ms(0), "video"),
            Acquire::Rejected(WaitExceeded {
                waited: Duration::ZERO,
                ..
            })
        ));
        assert_eq!(b.evict_idle(), 1);
        assert_eq!(b.iter().count(), 0);
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Acquire(u8),
        Retry(usize),
        Release(usize),
        Cancel(usize),
        Advance(u64),
    }

    proptest! {
        /// in_use never exceeds max_concurrent; waiting equals the waiters
        /// out; rejection only after max_wait.
        #[test]
        fn accounting_holds(
            max in 0u32..4,
            wait_ms in 0u64..1_000,
            ops in proptest::collection::vec(prop_oneof![
                (0u8..2).prop_map(Op::Acquire),
                any::<usize>().prop_map(Op::Retry),
                any::<usize>().prop_map(Op::Release),
                any::<usize>().prop_map(Op::Cancel),
                (0u64..400).prop_map(Op::Advance),
            ], 1..200),
        ) {
            let config = BulkheadConfig { max_concurrent: max, max_wait: Duration::from_millis(wait_ms) };
            let mut b: Bulkheads<u8> = Bulkheads::new(config);
            let mut now = Instant::ZERO;
            let mut permits: Vec<Permit<u8>> = Vec::new();
            let mut waiters: Vec<Waiter<u8>> = Vec::new();
            let handle = |a: Acquire<u8>, permits: &mut Vec<Permit<u8>>, waiters: &mut Vec<Waiter<u8>>, since: Instant, now: Instant| -> Result<(), TestCaseError> {
                match a {
                    Acquire::Granted(p) => permits.push(p),
                    Acquire::Wait(w) => waiters.push(w),
                    Acquire::Rejected(e) => prop_assert!(now.since(since) >= config.max_wait && e.waited == now.since(since)),
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Acquire(ty) => { let a = b.try_acquire(now, ty); handle(a, &mut permits, &mut waiters, now, now)?; }
                    Op::Retry(i) if !waiters.is_empty() => {
                        let w = waiters.swap_remove(i % waiters.len());
                        let since = w.since();
                        let a = b.retry(now, w);
                        handle(a, &mut permits, &mut waiters, since, now)?;
                    }
                    Op::Release(i) if !permits.is_empty() => { b.release(permits.swap_remove(i % permits.len())); }
                    Op::Cancel(i) if !waiters.is_empty() => b.cancel(waiters.swap_remove(i % waiters.len())),
                    Op::Advance(d) => now = now + Duration::from_millis(d),
                    _ => {}
                }
                for ty in 0..2u8 {
                    let u = b.usage(&ty);
                    prop_assert!(u.in_use <= max);
                    prop_assert_eq!(u.in_use as usize, permits.iter().filter(|p| *p.message_type() == ty).count());
                    prop_assert_eq!(u.waiting as usize, waiters.iter().filter(|w| *w.message_type() == ty).count());
                }
            }
        }
    }
}
