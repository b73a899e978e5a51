//! The agent's configuration as the dispatcher's, through the mapping the
//! simulator uses too (`crate::policy::dispatch`).

use crate::agent::config::AgentConfig;
use crate::engine::dispatch::DispatchConfig;
use crate::policy::ConfigSet;

/// The entry tier first, then its fallbacks in order, then any other tier.
pub fn dispatch_config(c: &AgentConfig) -> DispatchConfig {
    let set = ConfigSet {
        tiers: c.tiers.iter().map(|t| t.policy.clone()).collect(),
    };
    let mut config = crate::policy::dispatch::dispatch_config(&set, &c.entry_tier);
    config.max_age = c.agent.max_message_age.get();
    config
}
