//! The wiring: startup guard, leader election, caches and watches, the
//! kube-runtime `Controller`, the policy-status writer, shutdown.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self};
use tokio::sync::watch;

use crate::api::DeliveryTier;
use crate::operator::context::{Context, Settings, Stores};
use crate::operator::error::Result;
use crate::operator::health_client::HttpHealth;
use crate::operator::index::TierIndex;
use crate::operator::inputs::OperatorOptions;
use crate::operator::leader::{Elector, HoldOutcome, LeaseConfig};
use crate::operator::metrics::{Metrics, Readiness};

use super::cache::api_for;
use super::watch::{Writers, spawn_watches, tier_events};
use super::write::sync_policy_statuses;
use super::{error_policy, reconcile, write};

/// How `herald operator` runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Watch one namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Tiers reconciled at once.
    pub concurrency: u16,
    pub options: OperatorOptions,
    pub settings: Settings,
    /// `None` runs without leader election (a single replica).
    pub leader: Option<LeaseConfig>,
    /// This replica's name for events and the Lease.
    pub instance: Option<String>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the DeliveryTier CRD is not installed (deliverytiers.herald.dev answered 404); install the CRDs first: kubectl apply -k config/crd"
    )]
    CrdMissing,
    #[error(
        "not allowed to list DeliveryTiers ({0}); install the operator's RBAC: kubectl apply -k config/rbac"
    )]
    Forbidden(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building the agents' health client: {0}")]
    HealthClient(String),
    #[error("lost the leader Lease; exiting so that a new leader takes over cleanly")]
    LostLease,
}

/// The startup guard: list DeliveryTiers with `limit=1`. A 404 means the
/// CRD is not installed; say how to install it instead of crash-looping
/// on watch errors.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), RunError> {
    let api: Api<DeliveryTier> = api_for(client, namespace);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(RunError::Forbidden(s.message)),
        Err(e) => Err(RunError::Kube(e)),
    }
}

/// Fill the index from one paginated list of tiers, so that the first
/// passes already see every fallback tier (pitfall: a cold index reads as
/// missing references).
pub async fn prime_index(
    api: &Api<DeliveryTier>,
    index: &RwLock<TierIndex>,
) -> std::result::Result<usize, kube::Error> {
    let mut all = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = ListParams::default().limit(500).continue_token(&c),
            None => break,
        }
    }
    write(index).reset_tiers(all.iter());
    Ok(all.len())
}

/// Wait for every store, logging while any is cold, or until `stop`.
async fn wait_for_caches(stores: &Stores, stop: &mut watch::Receiver<bool>) -> bool {
    let all = async {
        let r = futures::try_join!(
            stores.rate_limits.wait_until_ready(),
            stores.circuits.wait_until_ready(),
            stores.degradations.wait_until_ready(),
            stores.secrets.wait_until_ready(),
            stores.pods.wait_until_ready(),
            stores.deployments.wait_until_ready(),
            stores.pdbs.wait_until_ready(),
        );
        r.is_ok()
    };
    futures::pin_mut!(all);
    loop {
        tokio::select! {
            ok = &mut all => return ok,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                tracing::info!("waiting for the caches to fill (check RBAC if this persists)");
            }
            _ = stop.changed() => if *stop.borrow() { return false },
        }
    }
}

/// Run the operator until `shutdown` completes (or, with leader election,
/// until the Lease is lost). Serves nothing itself; the caller serves
/// `/metrics` with the same `metrics` and `ready`.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    metrics: Metrics,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    check_crd(&client, cfg.namespace.as_deref()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut lost_rx = None;
    let mut holder = None;
    if let Some(lease) = cfg.leader.clone() {
        let api = Api::namespaced(client.clone(), &lease.namespace);
        let mut elector = Elector::new(api, lease);
        // A standby is healthy and ready; it just does not reconcile.
        ready.set(true);
        tracing::info!(lease = %elector.config().name, identity = %elector.config().identity, "waiting to lead");
        if !elector.campaign(&mut stop_rx.clone()).await {
            return Ok(());
        }
        tracing::info!("leading");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop = stop_rx.clone();
        holder = Some(tokio::spawn(async move {
            if elector.hold(stop).await == HoldOutcome::Lost {
                let _ = tx.send(());
            }
        }));
        lost_rx = Some(rx);
    }
    metrics.leader.set(1);

    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = {
        let mut stop = stop_rx.clone();
        let lost = lost.clone();
        async move {
            let signal = async {
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
            };
            match lost_rx {
                Some(rx) => {
                    tokio::select! {
                        _ = signal => {}
                        r = rx => if r.is_ok() { lost.store(true, std::sync::atomic::Ordering::Relaxed) },
                    }
                }
                None => signal.await,
            }
        }
    };
    let result = run_controller(client, &cfg, metrics.clone(), ready, stop_rx, stopping).await;
    metrics.leader.set(0);
    if let Some(h) = holder {
        // On a normal stop the holder releases the Lease; wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    result?;
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(RunError::LostLease);
    }
    Ok(())
}

/// The controller proper, as the leader (or the only replica) runs it:
/// a short list of steps, each one function below.
async fn run_controller(
    client: Client,
    cfg: &RunConfig,
    metrics: Metrics,
    ready: Readiness,
    mut stop_rx: watch::Receiver<bool>,
    stopping: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let ns = cfg.namespace.as_deref();
    // 1. Index the tiers there are, before any mapper asks the index.
    let index = Arc::new(RwLock::new(TierIndex::new()));
    let tiers_api: Api<DeliveryTier> = api_for(&client, ns);
    let primed = prime_index(&tiers_api, &index).await?;
    tracing::info!(tiers = primed, "indexed the existing tiers");
    // 2. Empty caches, and the context every pass reads.
    let (stores, tier_writer, writers) = caches();
    let ctx = context(&client, cfg, stores.clone(), index, metrics)?;
    // 3. Watch what tiers reference and what they own, into the caches.
    let (tx, rx) = mpsc::unbounded();
    let mut tasks = spawn_watches(&client, ns, writers, &ctx, &tx);
    // 4. Nothing reads a cache before it is warm.
    if !wait_for_caches(&stores, &mut stop_rx).await {
        abort_all(&tasks);
        return Ok(());
    }
    ready.set(true);
    tracing::info!("caches warm; reconciling");
    // 5. Keep the policies' usedBy.
    tasks.push(spawn_policy_status_sync(ctx.clone(), cfg.settings.resync));
    // 6. Reconcile tiers until stopping.
    let tiers = tier_events(tiers_api, tier_writer, stores.tiers.clone(), &ctx, tx);
    Controller::for_stream(tiers, stores.tiers)
        .reconcile_on(rx)
        .with_config(
            ControllerConfig::default()
                .concurrency(cfg.concurrency)
                .debounce(Duration::from_millis(500)),
        )
        .graceful_shutdown_on(stopping)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
    abort_all(&tasks);
    tracing::info!("controller stopped");
    Ok(())
}

/// Empty caches with their writers. The controller's own tier store is
/// not waited for: the controller fills it from its stream, and a pass
/// runs only for a tier found in it, which the first list puts there all
/// at once (the reflector swaps a whole list in) — so a pass always sees
/// every listed tier.
fn caches() -> (Stores, reflector::store::Writer<DeliveryTier>, Writers) {
    let tier_writer: reflector::store::Writer<DeliveryTier> = Default::default();
    let (rate_limits, rl_writer) = reflector::store();
    let (circuits, cp_writer) = reflector::store();
    let (degradations, dp_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (deployments, dep_writer) = reflector::store();
    let (pdbs, pdb_writer) = reflector::store();
    let stores = Stores {
        tiers: tier_writer.as_reader(),
        rate_limits,
        circuits,
        degradations,
        secrets,
        pods,
        deployments,
        pdbs,
    };
    let writers = Writers {
        rate_limits: rl_writer,
        circuits: cp_writer,
        degradations: dp_writer,
        secrets: secret_writer,
        pods: pod_writer,
        deployments: dep_writer,
        pdbs: pdb_writer,
    };
    (stores, tier_writer, writers)
}

/// What every pass reads: the client, the caches, the index, the options
/// and settings, the agents' health client and the metrics.
fn context(
    client: &Client,
    cfg: &RunConfig,
    stores: Stores,
    index: Arc<RwLock<TierIndex>>,
    metrics: Metrics,
) -> Result<Arc<Context>, RunError> {
    let health = HttpHealth::new(
        crate::operator::agent_config::HTTP_PORT,
        cfg.settings.health_timeout,
    )
    .map_err(|e| RunError::HealthClient(e.to_string()))?;
    Ok(Arc::new(Context::new(
        client.clone(),
        stores,
        index,
        cfg.options.clone(),
        cfg.settings.clone(),
        Arc::new(health),
        metrics,
        cfg.instance.clone(),
    )))
}

/// Policies' usedBy: recomputed when the index changes (debounced by a
/// second) and at every resync.
fn spawn_policy_status_sync(ctx: Arc<Context>, resync: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = ctx.policy_status_dirty.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = sync_policy_statuses(&ctx).await {
                tracing::warn!(error = %e, "writing policy status failed");
            }
        }
    })
}

fn abort_all(tasks: &[tokio::task::JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}
