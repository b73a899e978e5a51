//! What every reconcile shares: the client, the one event [`Recorder`], the
//! caches (reflector stores), the reference index, metrics, settings, and
//! the little the operator remembers per tier between passes.
//!
//! Owns that state and its bookkeeping (failure counts, the phase gauge,
//! "a child changed" marks); it decides nothing. Everything here can be
//! built without an API server — tests fill the stores through their
//! writers and hand in a fake client — so `reconcile` runs unchanged in
//! tests. Invariant: the per-tier memory is an optimisation and a
//! convenience, never the only copy of a decision that must survive a
//! restart: the rollout state and the restart history are also written to
//! the cluster (annotations on the tier's Deployments).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::delivery_tier::DeliveryTierStatus;
use crate::api::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};

use super::canary::RolloutState;
use super::health_client::{HealthHistory, HealthSource};
use super::index::TierIndex;
use super::inputs::OperatorOptions;
use super::metrics::Metrics;

/// Timing of the control loop (flags of `herald operator`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Upper bound of one reconcile; the client itself retries 429/503/504
    /// for a long time, so without it a pass could hang.
    pub reconcile_timeout: Duration,
    /// Upper bound of one agent's `/healthz/details`.
    pub health_timeout: Duration,
    /// Agents asked at once for one tier.
    pub health_concurrency: usize,
    /// Requeue of a tier with running agents, so health figures stay fresh.
    pub status_interval: Duration,
    /// Requeue of a tier with nothing pending; children are re-applied at
    /// least this often even when nothing seems to have changed.
    pub resync: Duration,
    /// Requeue after a permanent error (invalid spec, missing reference);
    /// the fix is a user's edit, which triggers a pass by itself.
    pub permanent_retry: Duration,
    /// First retry after a transient error; doubles per failure.
    pub backoff_base: Duration,
    /// Cap of that doubling.
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reconcile_timeout: Duration::from_secs(60),
            health_timeout: Duration::from_secs(2),
            health_concurrency: 8,
            status_interval: Duration::from_secs(60),
            resync: Duration::from_secs(600),
            permanent_retry: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// `base × 2^(attempt-1)`, capped; attempt 0 counts as 1.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings)
        .map_or(max, |d| d.min(max))
}

/// Where `now` comes from: the system clock, or a hand-set time in tests.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<Mutex<Timestamp>>),
}

impl Clock {
    pub fn manual(at: Timestamp) -> Self {
        Clock::Manual(Arc::new(Mutex::new(at)))
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Manual(t) => t.lock().map(|t| *t).unwrap_or_else(|p| *p.into_inner()),
        }
    }

    /// Move a manual clock; a system clock ignores this.
    pub fn set(&self, at: Timestamp) {
        if let Clock::Manual(t) = self {
            match t.lock() {
                Ok(mut g) => *g = at,
                Err(p) => *p.into_inner() = at,
            }
        }
    }
}

/// The caches a reconcile reads. The tiers (the controller's own store:
/// other tiers' specs go into an agent's config when it falls back to
/// them), policies, Secrets (metadata only: the operator never holds a
/// Secret's data), the agent pods, and the tier's Deployments and PDB, so
/// a pass needs no GET.
#[derive(Clone)]
pub struct Stores {
    pub tiers: Store<DeliveryTier>,
    pub rate_limits: Store<RateLimitPolicy>,
    pub circuits: Store<CircuitPolicy>,
    pub degradations: Store<DegradationProfile>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub pdbs: Store<PodDisruptionBudget>,
}

/// One restart made by the operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartEntry {
    pub pod: String,
    pub at: Timestamp,
}

/// What the operator remembers of one tier between passes.
#[derive(Clone, Debug, Default)]
pub struct TierMemory {
    pub health: HealthHistory,
    /// Hash of the objects last applied, and when.
    pub applied: Option<(String, Timestamp)>,
    /// The rollout state last written (fresher than the cache right after
    /// a write).
    pub rollout: Option<RolloutState>,
    /// Restarts made, newest last (also in an annotation).
    pub restarts: Option<Vec<RestartEntry>>,
    /// The restart budget was found spent (an event was published).
    pub budget_exhausted: bool,
    /// The status last written: the cache may not have caught up with it
    /// yet, and comparing against a stale copy would write (and announce)
    /// the same change twice.
    pub last_status: Option<DeliveryTierStatus>,
}

type TierKey = ObjectRef<DeliveryTier>;

/// Everything a reconcile touches.
pub struct Context {
    pub client: Client,
    /// One recorder for the process: it folds repeated events into series.
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub index: Arc<RwLock<TierIndex>>,
    pub stores: Stores,
    pub options: OperatorOptions,
    pub settings: Settings,
    pub health: Arc<dyn HealthSource>,
    pub clock: Clock,
    failures: Mutex<HashMap<TierKey, u32>>,
    dirty: Mutex<HashSet<TierKey>>,
    memory: Mutex<HashMap<TierKey, TierMemory>>,
    phases: Mutex<HashMap<TierKey, &'static str>>,
    /// Woken when `usedBy` of some policy may have changed.
    pub policy_status_dirty: tokio::sync::Notify,
}

/// The event reporter name (`reportingController`).
pub const REPORTER: &str = "herald-operator";

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        stores: Stores,
        index: Arc<RwLock<TierIndex>>,
        options: OperatorOptions,
        settings: Settings,
        health: Arc<dyn HealthSource>,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.to_owned(),
                instance,
            },
        );
        Context {
            client,
            recorder,
            metrics,
            index,
            stores,
            options,
            settings,
            health,
            clock: Clock::System,
            failures: Mutex::default(),
            dirty: Mutex::default(),
            memory: Mutex::default(),
            phases: Mutex::default(),
            policy_status_dirty: tokio::sync::Notify::new(),
        }
    }

    /// The same context reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A child of `tier` changed in the cluster (or was deleted): the next
    /// pass must re-apply even if the desired objects did not change.
    pub fn mark_dirty(&self, tier: TierKey) {
        lock(&self.dirty).insert(tier);
    }

    /// Whether a child changed since the last apply; clears the mark.
    pub fn take_dirty(&self, tier: &TierKey) -> bool {
        lock(&self.dirty).remove(tier)
    }

    /// Count a failed pass; returns how many in a row.
    pub fn record_failure(&self, tier: &TierKey) -> u32 {
        let mut f = lock(&self.failures);
        let n = f.entry(tier.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// A pass succeeded: the next failure starts the backoff again.
    pub fn reset_failures(&self, tier: &TierKey) {
        lock(&self.failures).remove(tier);
    }

    pub fn failures(&self, tier: &TierKey) -> u32 {
        lock(&self.failures).get(tier).copied().unwrap_or(0)
    }

    /// Run `f` on the tier's memory.
    pub fn memory<T>(&self, tier: &TierKey, f: impl FnOnce(&mut TierMemory) -> T) -> T {
        f(lock(&self.memory).entry(tier.clone()).or_default())
    }

    /// Record the tier's phase and refresh the `tiers_by_phase` gauge.
    pub fn set_phase(&self, tier: &TierKey, phase: &'static str) {
        let mut phases = lock(&self.phases);
        if phases.get(tier) == Some(&phase) {
            return;
        }
        phases.insert(tier.clone(), phase);
        self.metrics.set_phases(&count(&phases));
    }

    /// The tier is gone: drop everything kept about it.
    pub fn forget_tier(&self, tier: &TierKey) {
        lock(&self.memory).remove(tier);
        lock(&self.failures).remove(tier);
        lock(&self.dirty).remove(tier);
        let mut phases = lock(&self.phases);
        if phases.remove(tier).is_some() {
            self.metrics.set_phases(&count(&phases));
        }
    }
}

fn count(phases: &HashMap<TierKey, &'static str>) -> HashMap<&'static str, i64> {
    let mut out = HashMap::new();
    for p in phases.values() {
        *out.entry(*p).or_insert(0) += 1;
    }
    out
}

/// A poisoned lock still holds usable bookkeeping: a panic elsewhere must
/// not stop the operator from counting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Empty caches (their writers dropped), for tests that need a `Context`
/// but no cached object.
#[cfg(test)]
pub(crate) fn empty_stores() -> Stores {
    use kube::runtime::reflector;
    Stores {
        tiers: reflector::store().0,
        rate_limits: reflector::store().0,
        circuits: reflector::store().0,
        degradations: reflector::store().0,
        secrets: reflector::store().0,
        pods: reflector::store().0,
        deployments: reflector::store().0,
        pdbs: reflector::store().0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        let got: Vec<u64> = (0..12)
            .map(|n| backoff_delay(n, base, max).as_secs())
            .collect();
        assert_eq!(got, vec![1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX, base, max), max);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual(Timestamp::from_second(100).unwrap());
        assert_eq!(c.now().as_second(), 100);
        c.set(Timestamp::from_second(160).unwrap());
        assert_eq!(c.now().as_second(), 160);
    }
}
