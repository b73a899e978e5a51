//! `controller::run` against the fake API: the startup guard, leader
//! election, warm caches, and a first reconcile through the real
//! kube-runtime `Controller`. The fake API lists but cannot watch (a watch
//! answers with a list, which the watcher rejects and retries), so this
//! covers the initial pass only; time is paused, so retries cost nothing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;

use super::*;
use crate::operator::controller::{self, RunConfig, RunError};
use crate::operator::leader::LeaseConfig;
use crate::operator::metrics::Readiness;

fn config(leader: bool) -> RunConfig {
    RunConfig {
        namespace: Some(NS.into()),
        concurrency: 2,
        options: OperatorOptions::new(IMAGE),
        settings: Settings::default(),
        leader: leader.then(|| LeaseConfig::new("herald-operator", NS, "replica-a")),
        instance: Some("replica-a".into()),
    }
}

#[tokio::test]
async fn without_the_crd_the_operator_stops_with_an_install_hint() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let err = controller::run(
        client,
        config(false),
        Metrics::new(),
        Readiness::default(),
        futures::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::CrdMissing));
    assert!(err.to_string().contains("kubectl apply -k config/crd"));
}

#[tokio::test(start_paused = true)]
async fn run_leads_warms_its_caches_reconciles_and_hands_the_lease_back() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    h.create(&spool_tier("alerts", Some("bot"))).await;
    let metrics = Metrics::new();
    let ready = Readiness::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller::run(
        h.client.clone(),
        config(true),
        metrics.clone(),
        ready.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let deployments = h.api::<Deployment>();
    let mut created = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if deployments.get_opt("alerts-agent").await.unwrap().is_some() {
            created = true;
            break;
        }
    }
    assert!(created, "the controller reconciled the existing tier");
    assert!(ready.get());
    assert!(metrics.render().contains("herald_operator_leader 1"));
    let lease = h.api::<Lease>().get("herald-operator").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-a")
    );
    let status = h.tier("alerts").await.status.unwrap();
    assert!(status.observed_generation.is_some());

    stop_tx.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("run stops after the shutdown signal")
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    let lease = h.api::<Lease>().get("herald-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "handed back");
    assert!(metrics.render().contains("herald_operator_leader 0"));
}
