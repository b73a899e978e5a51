//! From resolved policies to the dispatcher's config, as an agent would
//! build it: the entry tier, its fallbacks in order, then any other tier.
//!
//! Owns the choice of entry tier for a simulation (the `--entry-tier`
//! option, else the Agent document's `entryTier`, else the highest-priority
//! tier that is no tier's fallback) and the tier order. The mapping of one
//! tier is the agent's (`crate::agent::dispatch_config`) restated on
//! `ConfigSet`, so a simulation runs exactly the engine configuration an
//! agent would.
//!
//! Invariant: every tier of the config appears once; the entry tier is
//! index 0 and primary.

pub use crate::policy::dispatch::{dispatch_config, tier_config};
use crate::policy::{ConfigSet, TierPolicy};

/// The entry tier: `requested` if given, else the highest-priority tier that
/// is not listed as another tier's fallback (ties: first in the files).
pub fn entry_tier(set: &ConfigSet, requested: Option<&str>) -> Result<String, String> {
    if let Some(name) = requested {
        return match set.tier(name) {
            Some(t) => Ok(t.name.clone()),
            None => Err(format!(
                "entry tier {name:?} is not in the config (have: {})",
                names(set).join(", ")
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

pub fn names(set: &ConfigSet) -> Vec<String> {
    set.tiers.iter().map(|t| t.name.clone()).collect()
}
