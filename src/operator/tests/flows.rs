//! The shell's behaviour, outcome by outcome, against the fake API.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::*;
use crate::api::delivery_tier::DeliveryTierStatus;
use crate::operator::controller::{
    self, ANNOTATION_RESTARTS, ANNOTATION_ROLLOUT_STATE, transition_notes,
};
use crate::operator::error::Error;
use crate::operator::names;

fn config_revision(cm: &ConfigMap) -> String {
    cm.metadata.annotations.as_ref().unwrap()[names::ANNOTATION_CONFIG_REVISION].clone()
}

async fn event_reasons(h: &Harness) -> Vec<String> {
    let mut out: Vec<String> = h
        .api::<K8sEvent>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    out.sort();
    out
}

fn condition<'a>(
    s: &'a DeliveryTierStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

fn key(name: &str) -> ObjectRef<DeliveryTier> {
    ObjectRef::new(name).within(NS)
}

#[tokio::test]
async fn a_new_tier_gets_every_child_with_a_controlling_owner_reference() {
    let h = Harness::new().await;
    let t = h.create(&spool_tier("alerts", None)).await;
    let uid = t.metadata.uid.clone().unwrap();
    h.reconcile("alerts").await.unwrap();

    let kids = h.children().await;
    let got: Vec<(&str, &str)> = kids.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("ConfigMap", "alerts-config"),
            ("Deployment", "alerts-agent"),
            ("PersistentVolumeClaim", "alerts-queue"),
            ("PersistentVolumeClaim", "alerts-spool"),
            ("PodDisruptionBudget", "alerts"),
            ("Role", "alerts-agent"),
            ("RoleBinding", "alerts-agent"),
            ("Service", "alerts"),
            ("ServiceAccount", "alerts-agent"),
        ]
    );
    // The fake API has no garbage collector worth trusting with this: the
    // cascade on deletion rests on these references, so check every one.
    for (kind, name, meta) in &kids {
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "{kind} {name}");
        let o = &owners[0];
        assert_eq!(o.uid, uid, "{kind} {name}");
        assert_eq!(o.kind, "DeliveryTier");
        assert_eq!(o.api_version, "herald.dev/v1alpha1");
        assert_eq!(o.name, "alerts");
        assert_eq!(o.controller, Some(true), "{kind} {name}");
        assert_eq!(o.block_owner_deletion, Some(true));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "herald"
        );
    }

    let status = h.tier("alerts").await.status.unwrap();
    assert_eq!(status.observed_generation, t.metadata.generation);
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&status, "Ready").status, "False");
    for c in &status.conditions {
        assert_eq!(c.observed_generation, t.metadata.generation);
        assert_eq!(c.last_transition_time, Time(t0()));
    }
    assert!(status.config_revision.is_some());
    assert_eq!(event_reasons(&h).await, vec!["Created"]);
    let text = h.ctx.metrics.render();
    assert!(text.contains("herald_operator_reconciles_total 1"));
    assert!(text.contains("herald_operator_tiers_by_phase{phase=\"Pending\"} 1"));
}

#[tokio::test]
async fn a_pass_with_nothing_new_writes_nothing_and_a_touched_child_is_repaired() {
    let h = Harness::new().await;
    h.create(&spool_tier("alerts", None)).await;
    h.reconcile("alerts").await.unwrap();
    h.clear_calls();
    h.advance(Duration::from_secs(30));
    h.reconcile("alerts").await.unwrap();
    assert_eq!(h.writes(), vec![], "no apply, no status write, no event");

    // Someone deletes the Service; its watch marks the tier.
    h.api::<Service>()
        .delete("alerts", &DeleteParams::default())
        .await
        .unwrap();
    h.ctx.mark_dirty(key("alerts"));
    h.reconcile("alerts").await.unwrap();
    assert!(
        h.api::<Service>()
            .get_opt("alerts")
            .await
            .unwrap()
            .is_some()
    );
    // The resync period runs out: re-applied even without a mark.
    h.clear_calls();
    h.advance(Duration::from_secs(601));
    h.reconcile("alerts").await.unwrap();
    assert!(
        h.writes()
            .iter()
            .any(|c| c.method == "PATCH" && c.path.ends_with("/services/alerts"))
    );
}

#[tokio::test]
async fn a_policy_edit_reaches_exactly_the_tiers_that_reference_it() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    h.create(&rate_limit_policy("other", 30)).await;
    for (t, p) in [("a", "bot"), ("b", "bot"), ("c", "other")] {
        h.create(&spool_tier(t, Some(p))).await;
    }
    for t in ["a", "b", "c"] {
        h.reconcile(t).await.unwrap();
    }
    let cms = h.api::<ConfigMap>();
    let rev = |cm: ConfigMap| config_revision(&cm);
    let before = [
        rev(cms.get("a-config").await.unwrap()),
        rev(cms.get("b-config").await.unwrap()),
        rev(cms.get("c-config").await.unwrap()),
    ];

    h.api::<RateLimitPolicy>()
        .patch(
            "bot",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"global": {"rate": 10, "period": "1s"}}})),
        )
        .await
        .unwrap();
    h.refresh().await;
    let mapped = controller::tiers_for(&h.ctx.index, RefKind::RateLimitPolicy, NS, "bot");
    assert_eq!(mapped, vec![key("a"), key("b")]);
    for r in &mapped {
        h.reconcile(&r.name).await.unwrap();
    }
    // c is reconciled too (a resync): its config must not move.
    h.reconcile("c").await.unwrap();
    let after = [
        rev(cms.get("a-config").await.unwrap()),
        rev(cms.get("b-config").await.unwrap()),
        rev(cms.get("c-config").await.unwrap()),
    ];
    assert_ne!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_eq!(after[2], before[2]);
    let cm = cms.get("a-config").await.unwrap();
    assert!(cm.data.unwrap()["config.yaml"].contains("rate: 10"));
}

#[tokio::test]
async fn a_missing_reference_is_a_condition_and_leaves_the_children_alone() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    h.create(&spool_tier("a", Some("bot"))).await;
    h.reconcile("a").await.unwrap();
    let rv = |kids: Vec<(
        &'static str,
        String,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    )>| {
        kids.into_iter()
            .map(|(k, n, m)| (k, n, m.resource_version.unwrap()))
            .collect::<Vec<_>>()
    };
    let before = rv(h.children().await);

    h.api::<RateLimitPolicy>()
        .delete("bot", &DeleteParams::default())
        .await
        .unwrap();
    h.clear_calls();
    let action = h.reconcile("a").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        rv(h.children().await),
        before,
        "no child written or deleted"
    );
    for c in h.writes() {
        assert!(
            c.path.ends_with("/deliverytiers/a/status") || c.path.contains("/events"),
            "unexpected write {c:?}"
        );
    }
    let status = h.tier("a").await.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(ready.message.contains("RateLimitPolicy \"bot\""));
    assert!(
        event_reasons(&h)
            .await
            .contains(&"MissingReference".to_owned())
    );
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("reconcile_errors_total{error=\"missing_reference\"} 1")
    );

    // A tier whose reference never existed gets no children at all.
    h.create(&spool_tier("z", Some("nope"))).await;
    h.reconcile("z").await.unwrap();
    assert!(
        h.children()
            .await
            .iter()
            .all(|(_, n, _)| !n.starts_with("z"))
    );

    // The policy comes back: the tier recovers.
    h.create(&rate_limit_policy("bot", 30)).await;
    h.reconcile("a").await.unwrap();
    let status = h.tier("a").await.status.unwrap();
    assert_ne!(status.phase.as_deref(), Some("Failed"));
    // The fake API runs no pods: the tier now waits for its agents.
    assert_eq!(condition(&status, "Ready").reason, "NoReplicasReady");
}

#[tokio::test]
async fn deleting_a_tier_removes_its_children_through_owner_references() {
    let h = Harness::new().await;
    h.create(&spool_tier("gone", None)).await;
    h.create(&spool_tier("kept", None)).await;
    h.reconcile("gone").await.unwrap();
    h.reconcile("kept").await.unwrap();
    assert_eq!(h.children().await.len(), 18);
    h.api::<DeliveryTier>()
        .delete("gone", &DeleteParams::background())
        .await
        .unwrap();
    let left = h.children().await;
    assert_eq!(left.len(), 9);
    assert!(left.iter().all(|(_, n, _)| n.starts_with("kept")));

    // A tier on its way out is left to the garbage collector.
    let mut dying = spool_tier("dying", None);
    dying.metadata.uid = Some("u-dying".into());
    dying.metadata.deletion_timestamp = Some(Time(t0()));
    h.clear_calls();
    let action = controller::reconcile(Arc::new(dying), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(h.calls(), vec![]);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let h = Harness::new().await;
    // The CRD's CEL rules refuse this; an older CRD might not.
    h.create(&tier(
        "bad",
        json!({"channel": "spool", "spool": {"path": "/s"}, "replicas": 3}),
    ))
    .await;
    let action = h.reconcile("bad").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(h.children().await.is_empty());
    let status = h.tier("bad").await.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(condition(&status, "Ready").reason, "InvalidSpec");
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("reconcile_errors_total{error=\"desired\"} 1")
    );
}

#[tokio::test]
async fn transient_errors_back_off_per_tier_and_a_success_resets_the_count() {
    let h = Harness::new().await;
    h.create(&spool_tier("a", None)).await;
    h.refresh().await;
    let tier = Arc::new(h.tier("a").await);
    h.faults.configmap_500.store(true, Relaxed);
    for expected in [1, 2, 4, 8] {
        let err = controller::reconcile(tier.clone(), h.ctx.clone())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        let action = controller::error_policy(tier.clone(), &err, h.ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(expected)));
    }
    h.faults.configmap_500.store(false, Relaxed);
    controller::reconcile(tier.clone(), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(h.ctx.failures(&key("a")), 0);

    // A permanent refusal waits long, whatever the count.
    h.ctx.mark_dirty(key("a"));
    h.faults.configmap_422.store(true, Relaxed);
    let err = controller::reconcile(tier.clone(), h.ctx.clone())
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let action = controller::error_policy(tier, &err, h.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("reconcile_errors_total{error=\"kube\"} 5")
    );
}

struct Hang;

impl HealthSource for Hang {
    fn fetch<'a>(&'a self, _t: &'a PodTarget) -> BoxFuture<'a, Result<Value, HealthError>> {
        Box::pin(futures::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_pass_that_hangs_ends_at_the_reconcile_timeout() {
    let h = Harness::new().await;
    h.create(&spool_tier("a", None)).await;
    h.create(&agent_pod("a", "a-agent-1", "stable", true, t0()))
        .await;
    h.refresh().await;
    let ctx = Context::new(
        h.client.clone(),
        h.ctx.stores.clone(),
        h.ctx.index.clone(),
        OperatorOptions::new(IMAGE),
        Settings {
            reconcile_timeout: Duration::from_secs(5),
            ..Settings::default()
        },
        Arc::new(Hang),
        Metrics::new(),
        None,
    );
    let err = controller::reconcile(Arc::new(h.tier("a").await), Arc::new(ctx))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(d) if d == Duration::from_secs(5)));
    assert!(err.is_transient());
}

#[tokio::test]
async fn policies_report_the_tiers_that_use_them_and_are_written_once() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    for t in ["b", "a"] {
        h.create(&spool_tier(t, Some("bot"))).await;
    }
    h.refresh().await;
    assert_eq!(controller::sync_policy_statuses(&h.ctx).await.unwrap(), 1);
    let p = h.api::<RateLimitPolicy>().get("bot").await.unwrap();
    let s = p.status.unwrap();
    assert_eq!(s.used_by, vec!["a", "b"]);
    assert_eq!(s.observed_generation, p.metadata.generation);
    assert_eq!(s.conditions[0].type_, "Accepted");
    h.refresh().await;
    assert_eq!(controller::sync_policy_statuses(&h.ctx).await.unwrap(), 0);

    h.api::<DeliveryTier>()
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    h.refresh().await;
    assert_eq!(controller::sync_policy_statuses(&h.ctx).await.unwrap(), 1);
    let s = h
        .api::<RateLimitPolicy>()
        .get("bot")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(s.used_by, vec!["a"]);
}

fn telegram_tier(name: &str, image: &str) -> DeliveryTier {
    tier(
        name,
        json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
            "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "partitions": 8}},
            "replicas": 2,
            "image": image,
            "rollout": {
                "steps": [{"weight": 50, "pause": "1m"}, {"weight": 100, "pause": "1m"}],
                "analysis": {"interval": "1m"},
            },
        }),
    )
}

fn deployment_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().unwrap().replicas.unwrap()
}

async fn set_image(h: &Harness, name: &str, image: &str) {
    h.api::<DeliveryTier>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": image}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_canary_steps_through_analysis_to_promotion_and_aborts_on_errors() {
    let h = Harness::new().await;
    h.create(&secret("bot")).await;
    h.create(&secret("redis")).await;
    h.create(&telegram_tier("tg", "herald:v1")).await;
    let deps = h.api::<Deployment>();

    // First revision: deployed straight to stable.
    h.reconcile("tg").await.unwrap();
    let stable = deps.get("tg-agent").await.unwrap();
    assert_eq!(deployment_image(&stable), "herald:v1");
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 0);
    assert_eq!(event_reasons(&h).await, vec!["Created", "Deployed"]);

    // A new image starts a canary at 50 %: one of two pods, stable pinned.
    set_image(&h, "tg", "herald:v2").await;
    h.reconcile("tg").await.unwrap();
    let stable = deps.get("tg-agent").await.unwrap();
    let canary = deps.get("tg-canary").await.unwrap();
    assert_eq!(deployment_image(&stable), "herald:v1");
    assert_eq!(deployment_image(&canary), "herald:v2");
    assert_eq!(replicas(&canary), 1);
    assert!(
        canary.metadata.annotations.as_ref().unwrap()[ANNOTATION_ROLLOUT_STATE]
            .contains("progressing")
    );
    let status = h.tier("tg").await.status.unwrap();
    let cs = status.canary.clone().unwrap();
    assert_eq!((cs.weight, cs.verdict.as_str()), (50, "Analysing"));
    assert_eq!(condition(&status, "CanaryAnalysis").reason, "Pending");
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RolloutStarted".to_owned())
    );

    // Agents report; the operator forgets everything (a restart): the state
    // comes back from the canary's annotation, not a new rollout.
    h.create(&agent_pod("tg", "tg-agent-1", "stable", true, t0()))
        .await;
    h.create(&agent_pod("tg", "tg-canary-1", "canary", true, t0()))
        .await;
    h.health.set("tg-agent-1", details("tg", 1000, 0, 100));
    h.health.set("tg-canary-1", details("tg", 0, 0, 100));
    h.ctx.forget_tier(&key("tg"));
    h.reconcile("tg").await.unwrap();
    let started = event_reasons(&h)
        .await
        .iter()
        .filter(|r| *r == "RolloutStarted")
        .count();
    assert_eq!(started, 1);

    // One interval of clean canary traffic: the step passes, 100 % next.
    h.advance(Duration::from_secs(61));
    h.health.set("tg-agent-1", details("tg", 2000, 0, 100));
    h.health.set("tg-canary-1", details("tg", 100, 0, 120));
    h.reconcile("tg").await.unwrap();
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 2);
    assert_eq!(
        h.tier("tg").await.status.unwrap().canary.unwrap().weight,
        100
    );
    assert_eq!(
        deployment_image(&deps.get("tg-agent").await.unwrap()),
        "herald:v1"
    );

    // Another clean interval: promoted; stable runs v2, canary scales down.
    h.advance(Duration::from_secs(61));
    h.health.set("tg-canary-1", details("tg", 200, 0, 120));
    h.reconcile("tg").await.unwrap();
    assert_eq!(
        deployment_image(&deps.get("tg-agent").await.unwrap()),
        "herald:v2"
    );
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 0);
    let status = h.tier("tg").await.status.unwrap();
    assert_eq!(status.canary.unwrap().verdict, "Promoted");
    let reasons = event_reasons(&h).await;
    for r in ["RolloutStepAdvanced", "RolloutPromoted"] {
        assert!(reasons.contains(&r.to_owned()), "{r} in {reasons:?}");
    }

    // v3 fails its analysis: aborted, stable keeps v2.
    set_image(&h, "tg", "herald:v3").await;
    h.reconcile("tg").await.unwrap();
    h.advance(Duration::from_secs(61));
    h.health.set("tg-canary-1", details("tg", 300, 20, 120));
    h.reconcile("tg").await.unwrap();
    h.advance(Duration::from_secs(61));
    h.health.set("tg-canary-1", details("tg", 380, 40, 120));
    h.reconcile("tg").await.unwrap();
    assert_eq!(
        deployment_image(&deps.get("tg-agent").await.unwrap()),
        "herald:v2"
    );
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 0);
    let status = h.tier("tg").await.status.unwrap();
    assert_eq!(status.canary.as_ref().unwrap().verdict, "Aborted");
    assert_eq!(condition(&status, "Degraded").status, "True");
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RolloutAborted".to_owned())
    );

    // Removing the rollout deletes the canary Deployment.
    h.api::<DeliveryTier>()
        .patch(
            "tg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": null}})),
        )
        .await
        .unwrap();
    h.reconcile("tg").await.unwrap();
    assert!(deps.get_opt("tg-canary").await.unwrap().is_none());
    assert!(
        event_reasons(&h)
            .await
            .contains(&"CanaryRemoved".to_owned())
    );
}

/// The gates as the CLI writes them, read by the controller's pass.
#[tokio::test]
async fn pause_resume_and_retry_reach_the_canary_through_the_annotations() {
    use crate::operator::gate::{Gate, request};
    let h = Harness::new().await;
    let gate = |g| request(h.client.clone(), NS, "tg", g);
    h.create(&secret("bot")).await;
    h.create(&secret("redis")).await;
    h.create(&telegram_tier("tg", "herald:v1")).await;
    let deps = h.api::<Deployment>();
    h.reconcile("tg").await.unwrap();
    set_image(&h, "tg", "herald:v2").await;
    h.reconcile("tg").await.unwrap();
    h.create(&agent_pod("tg", "tg-agent-1", "stable", true, t0()))
        .await;
    h.create(&agent_pod("tg", "tg-canary-1", "canary", true, t0()))
        .await;
    h.health.set("tg-agent-1", details("tg", 1000, 0, 100));
    h.health.set("tg-canary-1", details("tg", 0, 0, 100));
    h.reconcile("tg").await.unwrap();

    // Paused: a clean interval that would end the step does not.
    gate(Gate::Pause).await.unwrap();
    h.reconcile("tg").await.unwrap();
    h.advance(Duration::from_secs(61));
    h.health.set("tg-agent-1", details("tg", 2000, 0, 100));
    h.health.set("tg-canary-1", details("tg", 100, 0, 120));
    h.reconcile("tg").await.unwrap();
    let status = h.tier("tg").await.status.unwrap();
    let cs = status.canary.clone().unwrap();
    assert_eq!((cs.weight, cs.verdict.as_str()), (50, "Paused"));
    assert_eq!(condition(&status, "Progressing").reason, "ManualPause");
    assert_eq!(
        condition(&status, "CanaryAnalysis").reason,
        "AnalysisPassing"
    );
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 1);
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RolloutPaused".to_owned())
    );

    // Resumed: the paused minute does not count, so the step goes on.
    gate(Gate::Resume).await.unwrap();
    h.reconcile("tg").await.unwrap();
    let status = h.tier("tg").await.status.unwrap();
    let cs = status.canary.clone().unwrap();
    assert_eq!((cs.weight, cs.verdict.as_str()), (50, "Analysing"));
    assert_eq!(
        condition(&status, "Progressing").reason,
        "CanaryProgressing"
    );
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RolloutResumed".to_owned())
    );

    // Aborted by hand, then retried: the same revision from the first step.
    gate(Gate::Abort).await.unwrap();
    h.reconcile("tg").await.unwrap();
    assert_eq!(
        h.tier("tg").await.status.unwrap().canary.unwrap().verdict,
        "Aborted"
    );
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 0);
    gate(Gate::Retry).await.unwrap();
    h.reconcile("tg").await.unwrap();
    let status = h.tier("tg").await.status.unwrap();
    let cs = status.canary.clone().unwrap();
    assert_eq!(
        (cs.step, cs.weight, cs.verdict.as_str()),
        (0, 50, "Analysing")
    );
    assert_eq!(replicas(&deps.get("tg-canary").await.unwrap()), 1);
    assert_eq!(
        deployment_image(&deps.get("tg-agent").await.unwrap()),
        "herald:v1"
    );
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RolloutRetried".to_owned())
    );
    // The request was used: a later pass does not start another attempt.
    h.advance(Duration::from_secs(5));
    h.reconcile("tg").await.unwrap();
    let retried = event_reasons(&h)
        .await
        .iter()
        .filter(|r| *r == "RolloutRetried")
        .count();
    assert_eq!(retried, 1);
}

async fn set_pdb_allowance(h: &Harness, name: &str, allowed: i32) {
    h.api::<PodDisruptionBudget>()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "disruptionsAllowed": allowed, "currentHealthy": 0,
                "desiredHealthy": 0, "expectedPods": 1}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unhealthy_pod_is_evicted_once_and_the_budget_holds() {
    let h = Harness::new().await;
    h.create(&tier(
        "h",
        json!({"channel": "spool", "spool": {"path": "/s"},
               "healing": {"restartBudget": 1, "budgetWindow": "1h"}}),
    ))
    .await;
    h.reconcile("h").await.unwrap();
    set_pdb_allowance(&h, "h", 1).await;
    let long_ago = crate::operator::time::before(t0(), Duration::from_secs(300));
    h.create(&agent_pod("h", "h-agent-x", "stable", false, long_ago))
        .await;
    h.advance(Duration::from_secs(1));
    h.reconcile("h").await.unwrap();
    assert_eq!(*h.faults.evicted.lock().unwrap(), vec!["h-agent-x"]);
    let status = h.tier("h").await.status.unwrap();
    assert_eq!(status.last_restart.unwrap().pod, "h-agent-x");
    let stable = h.api::<Deployment>().get("h-agent").await.unwrap();
    assert!(stable.metadata.annotations.unwrap()[ANNOTATION_RESTARTS].contains("h-agent-x"));
    assert!(event_reasons(&h).await.contains(&"PodRestarted".to_owned()));

    // The replacement is unhealthy too, but the budget (1 per hour) is spent:
    // one event says so, and stays the only one.
    h.create(&agent_pod("h", "h-agent-y", "stable", false, long_ago))
        .await;
    for _ in 0..3 {
        h.advance(Duration::from_secs(60));
        h.reconcile("h").await.unwrap();
    }
    assert_eq!(h.faults.evicted.lock().unwrap().len(), 1);
    let exhausted = event_reasons(&h)
        .await
        .iter()
        .filter(|r| *r == "RestartBudgetExhausted")
        .count();
    assert_eq!(exhausted, 1);

    // The history outlives the operator's memory (it is on the Deployment).
    h.ctx.forget_tier(&key("h"));
    h.reconcile("h").await.unwrap();
    assert_eq!(h.faults.evicted.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_shared_outage_restarts_nothing_and_says_so() {
    let h = Harness::new().await;
    h.create(&tier(
        "d",
        json!({"channel": "spool", "spool": {"path": "/s"}}),
    ))
    .await;
    h.reconcile("d").await.unwrap();
    set_pdb_allowance(&h, "d", 1).await;
    let long_ago = crate::operator::time::before(t0(), Duration::from_secs(300));
    h.create(&agent_pod("d", "d-agent-1", "stable", false, long_ago))
        .await;
    let mut down = details("d", 0, 0, 100);
    down["dependencies"]["redis"] = json!({"status": "error"});
    h.health.set("d-agent-1", down);
    h.advance(Duration::from_secs(1));
    h.reconcile("d").await.unwrap();
    assert!(h.faults.evicted.lock().unwrap().is_empty());
    let status = h.tier("d").await.status.unwrap();
    let dep = condition(&status, "DependencyDegraded");
    assert_eq!(
        (dep.status.as_str(), dep.reason.as_str()),
        ("True", "RedisUnavailable")
    );
    assert!(
        event_reasons(&h)
            .await
            .contains(&"RedisUnavailable".to_owned())
    );
}

#[test]
fn the_tier_filter_passes_spec_and_gate_changes_only() {
    let mut t = spool_tier("a", None);
    t.metadata.generation = Some(1);
    let base = controller::tier_predicate(&t);
    let mut status_only = t.clone();
    status_only.status = Some(DeliveryTierStatus {
        phase: Some("Ready".into()),
        ..DeliveryTierStatus::default()
    });
    status_only.metadata.resource_version = Some("99".into());
    status_only
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("team".into(), "x".into());
    status_only
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
    assert_eq!(controller::tier_predicate(&status_only), base);

    let mut promote = t.clone();
    promote
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(names::ANNOTATION_PROMOTE.into(), "abc".into());
    assert_ne!(controller::tier_predicate(&promote), base);
    let mut spec = t.clone();
    spec.metadata.generation = Some(2);
    assert_ne!(controller::tier_predicate(&spec), base);
    let mut fin = t;
    fin.metadata.finalizers = Some(vec!["x".into()]);
    assert_ne!(controller::tier_predicate(&fin), base);
}

#[test]
fn events_follow_condition_transitions_only() {
    use crate::operator::condition::{CondStatus, ConditionSpec, stamp_all};
    let st = |ready: CondStatus, degraded: CondStatus| DeliveryTierStatus {
        conditions: stamp_all(
            &[
                ConditionSpec::new("Ready", ready, "R", "m"),
                ConditionSpec::new("Degraded", degraded, "D", "m"),
            ],
            &[],
            t0(),
            Some(1),
        ),
        ..DeliveryTierStatus::default()
    };
    // A first status is not news (a new tier is not ready yet)...
    assert!(transition_notes(None, &st(CondStatus::False, CondStatus::True)).is_empty());
    // ...unless it says the tier cannot run at all.
    let failed = DeliveryTierStatus {
        conditions: stamp_all(
            &[ConditionSpec::new(
                "Ready",
                CondStatus::False,
                "MissingReference",
                "m",
            )],
            &[],
            t0(),
            Some(1),
        ),
        ..DeliveryTierStatus::default()
    };
    let n = transition_notes(None, &failed);
    assert_eq!(n.len(), 1);
    assert!(n[0].warning && n[0].reason == "MissingReference");
    // Ready stays False but for a new reason that means it cannot run.
    let n = transition_notes(Some(&st(CondStatus::False, CondStatus::True)), &failed);
    assert_eq!(n.len(), 1);
    // Same statuses again: nothing.
    let a = st(CondStatus::True, CondStatus::False);
    assert!(transition_notes(Some(&a), &a.clone()).is_empty());
    // Ready flips to False: a warning; back to True: a normal event.
    let b = st(CondStatus::False, CondStatus::False);
    let n = transition_notes(Some(&a), &b);
    assert_eq!(n.len(), 1);
    assert!(n[0].warning && n[0].message.starts_with("Ready=False"));
    let n = transition_notes(Some(&b), &a);
    assert!(!n[0].warning);
}

#[test]
fn owned_objects_map_to_their_controlling_tier_only() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    let owner = |kind: &str, controller: bool| OwnerReference {
        api_version: "herald.dev/v1alpha1".into(),
        kind: kind.into(),
        name: "t".into(),
        uid: "u".into(),
        controller: Some(controller),
        block_owner_deletion: None,
    };
    let meta = |refs| ObjectMeta {
        namespace: Some(NS.into()),
        owner_references: Some(refs),
        ..ObjectMeta::default()
    };
    assert_eq!(
        controller::owning_tier(&meta(vec![owner("DeliveryTier", true)])),
        Some(key("t"))
    );
    assert_eq!(
        controller::owning_tier(&meta(vec![owner("DeliveryTier", false)])),
        None
    );
    assert_eq!(
        controller::owning_tier(&meta(vec![owner("ReplicaSet", true)])),
        None
    );
}

#[tokio::test]
async fn a_cache_behind_our_own_status_write_causes_no_second_write() {
    let h = Harness::new().await;
    h.create(&spool_tier("a", None)).await;
    h.refresh().await;
    let stale = Arc::new(h.tier("a").await);
    controller::reconcile(stale.clone(), h.ctx.clone())
        .await
        .unwrap();
    let events = event_reasons(&h).await;
    h.clear_calls();
    // The requeue fires before the watch delivered the status we wrote
    // (the children's caches are current).
    h.refresh().await;
    h.advance(Duration::from_secs(5));
    controller::reconcile(stale, h.ctx.clone()).await.unwrap();
    assert_eq!(h.writes(), vec![]);
    assert_eq!(event_reasons(&h).await, events);
}
