//! `reconfigure`: a new config without losing a message (hot reload).
//!
//! Owns matching new tiers to old ones by name and carrying their state
//! over: limiter (TATs and 429 pause), breakers (by stable key), health,
//! EWMA, reachability marks, stop flag, counters; renumbering the tiers each
//! held message has left. Queued, set-aside and in-flight messages stay as
//! they are; the degradation level stays where it is if still configured.
//!
//! Leaves to others: validating the new config (it is checked whole before
//! anything changes, so a bad reload leaves the dispatcher untouched).
//! Health-window settings apply to tiers added by the reload; a kept tier
//! keeps its window (its recent history would not fit a new shape).
//!
//! Invariant: after a reload, a tier of the same name has the same state it
//! had; a removed tier's in-flight sends still complete (their outcome
//! counts for nothing but the message), and chats waiting for its bulkhead
//! are handed back to the scheduler.

use crate::engine::Instant;

use super::aside::BlockKey;
use super::config::{DispatchConfig, DispatchError, MAX_TIERS};
use super::tier::TierState;
use super::{Dispatcher, Settings};

impl Dispatcher {
    /// Replaces the config, keeping every held message and the state of
    /// tiers that keep their name. On error nothing changed.
    pub fn reconfigure(
        &mut self,
        now: Instant,
        config: DispatchConfig,
    ) -> Result<(), DispatchError> {
        config.validate()?;
        self.scheduler.set_config(&config.scheduler)?;
        self.degrader.reconfigure(config.degradation.clone())?;
        self.install(config, now)
    }

    /// Installs a validated config (also the second half of `new`).
    pub(super) fn install(
        &mut self,
        config: DispatchConfig,
        _now: Instant,
    ) -> Result<(), DispatchError> {
        let DispatchConfig {
            tiers,
            fallbacks,
            health,
            selector,
            chat_breaker,
            max_in_flight,
            unreachable_ttl,
            max_age,
            correlation_window,
            correlation_chats,
            ..
        } = config;
        let factor = self.level.factor;
        let mut old: Vec<Option<TierState>> = std::mem::take(&mut self.tiers)
            .into_iter()
            .map(Some)
            .collect();
        let mut remap: Vec<Option<usize>> = vec![None; old.len()];
        let mut fresh = Vec::with_capacity(tiers.len());
        for (ni, cfg) in tiers.into_iter().enumerate() {
            let found = old
                .iter()
                .position(|o| o.as_ref().is_some_and(|t| t.cfg.name == cfg.name));
            let state = match found.and_then(|oi| old[oi].take().map(|t| (oi, t))) {
                Some((oi, mut t)) => {
                    remap[oi] = Some(ni);
                    t.apply(cfg, &mut self.types, factor);
                    t
                }
                None => {
                    let key = self.next_key;
                    self.next_key = self.next_key.wrapping_add(1);
                    TierState::new(key, cfg, &health, &mut self.types, factor)?
                }
            };
            self.breakers
                .configure(state.key, state.cfg.breaker, chat_breaker);
            fresh.push(state);
        }
        let identity = remap.iter().enumerate().all(|(o, n)| *n == Some(o));
        if !identity {
            for meta in self.metas.values_mut() {
                let mut mask = 0u16;
                for (o, n) in remap.iter().enumerate() {
                    if let Some(n) = n
                        && meta.excluded & (1 << (o % MAX_TIERS)) != 0
                    {
                        mask |= 1 << (n % MAX_TIERS);
                    }
                }
                meta.excluded = mask;
                meta.pinned = usize::from(meta.pinned)
                    .checked_sub(1)
                    .and_then(|o| remap.get(o).copied().flatten())
                    .and_then(|n| u8::try_from(n + 1).ok())
                    .unwrap_or(0);
            }
        }
        self.tiers = fresh;
        self.tier_cache.invalidate();
        self.fallbacks = fallbacks;
        self.settings = Settings {
            selector,
            max_in_flight,
            unreachable_ttl,
            max_age,
        };
        self.correlator.window = correlation_window;
        self.correlator.chats_threshold = correlation_chats;
        for (key, waiting) in self.aside.keys() {
            let gone = match key {
                BlockKey::Bulkhead { tier, .. } => self.index_of(tier).is_none(),
                BlockKey::Stranded => true,
                BlockKey::Paused(_) => false,
            };
            if gone {
                self.release_aside(key, waiting);
            }
        }
        self.apply_level();
        Ok(())
    }
}
