//! Each tier's limits as the loop applies them: asked of
//! [`TierLimits::now`] with the fleet's link at start, on a reload, and
//! whenever Redis comes or goes or the live count moves.

use std::sync::Arc;

use crate::agent::config::AgentConfig;
use crate::agent::dispatch_config::dispatch_config;
use crate::engine::dispatch::DispatchConfig;
use crate::engine::limiter::Limits;
use crate::fleet::Fleet;
use crate::policy::effective::{LimiterMode, TierLimits, switch_quiet};

use super::start_pacer::StartPacer;
use super::{DispatchLoop, LoopError};

impl DispatchLoop {
    /// Installs `config` with each tier's limits cut to its limiter mode.
    pub(super) fn install(&mut self, config: Arc<AgentConfig>) -> Result<(), LoopError> {
        let now = self.now();
        let base = dispatch_config(&config);
        let limits = tier_limits(self.fleet.as_deref(), &config, configured(&base));
        self.d.reconfigure(now, applied(base, &limits))?;
        self.limits = limits;
        self.config = config;
        self.sync_pacers();
        self.publish_modes();
        Ok(())
    }

    /// Each loaded tier's start pacer on its local limits now; a tier that
    /// stays keeps its pacer's state.
    pub(super) fn sync_pacers(&mut self) {
        let mut old = std::mem::take(&mut self.pacers);
        for (i, l) in self.limits.iter().enumerate() {
            let name = self.d.tier_name(i).unwrap_or_default().to_owned();
            let pacer = match old.iter().position(|(n, _)| *n == name) {
                Some(at) => old.swap_remove(at).1,
                None => StartPacer::new(l.local),
            };
            pacer.set_limits(l.local);
            self.pacers.push((name, pacer));
        }
    }

    /// Re-cuts the limits when Redis came or went or the live count moved.
    pub(super) fn follow_fleet(&mut self) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if let Some(m) = self.state.metrics() {
            m.redis_up.set(i64::from(fleet.connected()));
        }
        // The loaded tiers, in order: no need to rebuild the config every
        // tick to learn their names.
        let loaded = (0..self.d.tier_count()).map(|i| {
            let name = self.d.tier_name(i).unwrap_or_default();
            (
                name,
                self.limits
                    .get(i)
                    .map_or_else(Limits::default, |l| l.configured),
            )
        });
        let limits = tier_limits(Some(&fleet), &self.config, loaded);
        if limits == self.limits {
            return;
        }
        let names: Vec<String> = limits.iter().map(|l| l.mode.as_str().to_owned()).collect();
        let quiet = switch_quiet(&self.limits, &limits);
        match self.install(self.config.clone()) {
            Ok(()) => {
                self.quiet_until = self.quiet_until.max(self.now() + quiet);
                tracing::warn!(modes = ?names, link = fleet.link_state(), "limiter modes changed")
            }
            Err(e) => tracing::error!(error = %e, "could not change limiter modes"),
        }
    }

    pub(super) fn publish_modes(&self) {
        let (Some(m), Some(_)) = (self.state.metrics(), &self.fleet) else {
            return;
        };
        for (i, limits) in self.limits.iter().enumerate() {
            let tier = self.d.tier_name(i).unwrap_or_default();
            for name in ["shared", "settling", "local-share", "paused"] {
                m.limiter_mode
                    .with_label_values(&[tier, name])
                    .set(i64::from(limits.mode.as_str() == name));
            }
        }
    }
}

/// Each tier's limits now, asked of [`TierLimits::now`] with the fleet's
/// link; on the embedded store every tier limits alone.
pub(super) fn tier_limits<'a>(
    fleet: Option<&Fleet>,
    config: &AgentConfig,
    tiers: impl Iterator<Item = (&'a str, Limits)>,
) -> Vec<TierLimits> {
    let link = fleet.map(Fleet::link);
    tiers
        .map(|(name, configured)| match (link, config.tier(name)) {
            (Some(link), Some(rt)) => TierLimits::now(
                configured,
                rt.policy.limiter_backend,
                rt.policy.limiter_fallback,
                Some(link),
            ),
            _ => TierLimits::in_mode(configured, LimiterMode::LocalShare { divisor: 1 }),
        })
        .collect()
}

/// Each tier of a dispatcher configuration with its configured limits.
pub(super) fn configured(config: &DispatchConfig) -> impl Iterator<Item = (&str, Limits)> {
    config.tiers.iter().map(|t| (t.name.as_str(), t.limits))
}

/// `base` with each tier's limits as its local limiter applies them now.
pub(super) fn applied(mut base: DispatchConfig, limits: &[TierLimits]) -> DispatchConfig {
    for (t, l) in base.tiers.iter_mut().zip(limits) {
        t.limits = l.local;
    }
    base
}
