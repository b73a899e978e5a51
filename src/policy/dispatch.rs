//! A resolved configuration as the dispatcher's configuration: which tiers
//! exist, in which order, which are fallbacks, whose degradation applies.
//! Shared by the agent and the simulator so both run the same pipeline.

use crate::api::delivery_tier::Channel;
use crate::engine::dispatch::{DispatchConfig, Sink, TierConfig};
use crate::policy::{ConfigSet, TierPolicy};

/// The dispatcher's view of one tier.
pub fn tier_config(t: &TierPolicy) -> TierConfig {
    let sink = match t.spec.channel {
        Channel::Telegram => Sink::Telegram,
        Channel::Webhook => Sink::Webhook,
        Channel::Spool => Sink::Spool,
    };
    TierConfig {
        priority: t.spec.priority,
        health_floor: u8::try_from(t.spec.health_floor.min(100)).unwrap_or(100),
        limits: t.limits,
        breaker: t.breaker,
        retry: t.retry,
        per_attempt_timeout: t.per_attempt_timeout,
        overall_timeout: t.overall_timeout,
        bulkheads: t.bulkheads.clone(),
        ..TierConfig::new(&t.name, sink)
    }
}

/// The entry tier first, then its `fallbackTiers` in order (fallback
/// indices), then every other tier as a further primary.
pub fn dispatch_config(set: &ConfigSet, entry: &str) -> DispatchConfig {
    let mut order: Vec<&TierPolicy> = Vec::new();
    let entry = set.tier(entry);
    if let Some(e) = entry {
        order.push(e);
        for f in &e.spec.fallback_tiers {
            if let Some(t) = set.tier(f)
                && !order.iter().any(|o| o.name == t.name)
            {
                order.push(t);
            }
        }
    }
    let fallbacks: Vec<usize> = (1..order.len()).collect();
    for t in &set.tiers {
        if !order.iter().any(|o| o.name == t.name) {
            order.push(t);
        }
    }
    let mut config = DispatchConfig::new(order.iter().map(|t| tier_config(t)).collect(), fallbacks);
    if let Some(e) = entry {
        config.degradation = e.degradation.clone();
    }
    config
}

/// The entry tier: `requested` if given, else the highest-priority tier that
/// is not listed as another tier's fallback (ties: first in the files).
pub fn entry_tier(set: &ConfigSet, requested: Option<&str>) -> Result<String, String> {
    if let Some(name) = requested {
        return match set.tier(name) {
            Some(t) => Ok(t.name.clone()),
            None => Err(format!(
                "entry tier {name:?} is not in the config (have: {})",
                set.tiers
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    let is_fallback = |name: &str| {
        set.tiers
            .iter()
            .any(|t| t.spec.fallback_tiers.iter().any(|f| f == name))
    };
    set.tiers
        .iter()
        .filter(|t| !is_fallback(&t.name))
        .fold(None::<&TierPolicy>, |best, t| match best {
            Some(b) if b.spec.priority >= t.spec.priority => Some(b),
            _ => Some(t),
        })
        .or(set.tiers.first())
        .map(|t| t.name.clone())
        .ok_or_else(|| "the config has no DeliveryTier".to_owned())
}
