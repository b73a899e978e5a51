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

use crate::policy::ConfigSet;
pub use crate::policy::dispatch::{dispatch_config, entry_tier, tier_config};

pub fn names(set: &ConfigSet) -> Vec<String> {
    set.tiers.iter().map(|t| t.name.clone()).collect()
}
