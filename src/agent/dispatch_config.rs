//! From an agent configuration to the dispatcher's: which tiers exist, in
//! which order, which are fallbacks, and the entry tier's degradation.

use crate::agent::config::AgentConfig;
use crate::api::delivery_tier::Channel;
use crate::engine::dispatch::{DispatchConfig, Sink, TierConfig};
use crate::policy::TierPolicy;

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

/// The entry tier first, then its fallbacks in order, then any other tier.
/// Fallback indices are the entry tier's `fallbackTiers`.
pub fn dispatch_config(c: &AgentConfig) -> DispatchConfig {
    let mut order: Vec<&TierPolicy> = Vec::new();
    let entry = c.tier(&c.entry_tier).map(|t| &t.policy);
    if let Some(e) = entry {
        order.push(e);
        for f in &e.spec.fallback_tiers {
            if let Some(t) = c.tier(f)
                && !order.iter().any(|o| o.name == t.policy.name)
            {
                order.push(&t.policy);
            }
        }
    }
    let fallbacks: Vec<usize> = (1..order.len()).collect();
    for t in &c.tiers {
        if !order.iter().any(|o| o.name == t.policy.name) {
            order.push(&t.policy);
        }
    }
    let mut config = DispatchConfig::new(order.iter().map(|t| tier_config(t)).collect(), fallbacks);
    if let Some(e) = entry {
        config.degradation = e.degradation.clone();
    }
    config
}
