//! How an agent on the Redis store joins its fleet: the options it brings
//! from its config, and the dispatch loop as the partition task's
//! [`Dispatch`].
//!
//! Leaves to `crate::fleet` everything the agents share (membership,
//! partitions, the shared limiter, the partition task itself).

use tokio::sync::oneshot;

use crate::agent::config::AgentConfig;
use crate::agent::state::{AppState, DispatchCmd};
use crate::fleet::assignment::canary_weight;
use crate::fleet::membership::Track;
use crate::fleet::{Dispatch, FleetOptions};
use crate::store::StoredMessage;

/// What this agent brings to the fleet of its entry tier.
pub fn options(config: &AgentConfig) -> FleetOptions {
    FleetOptions {
        tier: config.entry_tier.clone(),
        replicas: config
            .tier(&config.entry_tier)
            .map_or(1, |t| t.policy.spec.replicas.max(1)),
        track: track(config),
    }
}

/// The track the operator named in the variable `trackEnv` points at.
fn track(config: &AgentConfig) -> Track {
    let canary = config
        .agent
        .track_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .is_some_and(|t| t.eq_ignore_ascii_case("canary"));
    if canary { Track::Canary } else { Track::Stable }
}

impl Dispatch for AppState {
    async fn enqueue(&self, msgs: Vec<StoredMessage>) {
        let _ = self.dispatch.send(DispatchCmd::Enqueue(msgs)).await;
    }

    async fn drop_partition(&self, partition: u32) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.dispatch
            .send(DispatchCmd::DropPartition(partition, tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    fn canary_weight(&self) -> Option<u32> {
        self.config()
            .agent
            .partitions
            .as_ref()
            .and_then(canary_weight)
    }

    fn observed(&self, agents: u32, partitions: u32) {
        if let Some(m) = self.metrics() {
            m.fleet_agents.set(i64::from(agents));
            m.fleet_partitions.set(i64::from(partitions));
        }
    }
}
