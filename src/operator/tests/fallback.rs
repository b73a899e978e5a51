//! Tiers that deliver through other tiers, against the fake API: what
//! reaches a tier's ConfigMap from its fallback tiers and degradation
//! routes, how a change there maps back to it, and what a missing one
//! does.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::*;
use crate::api::delivery_tier::DeliveryTierStatus;
use crate::operator::controller;
use crate::operator::names;

fn key(name: &str) -> ObjectRef<DeliveryTier> {
    ObjectRef::new(name).within(NS)
}

fn spool(extra: Value) -> Value {
    let mut spec = json!({"channel": "spool", "spool": {"path": "/var/spool/herald"}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

fn routing_profile(name: &str, to: &str) -> DegradationProfile {
    serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "DegradationProfile",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"levels": [
            {"level": "MINOR", "entry": {"queueDepth": 1000}, "actions": {"routeTo": to}},
        ]},
    }))
    .unwrap()
}

async fn config_of(h: &Harness, tier: &str) -> (String, String) {
    let cm = h
        .api::<ConfigMap>()
        .get(&format!("{tier}-config"))
        .await
        .unwrap();
    let revision =
        cm.metadata.annotations.as_ref().unwrap()[names::ANNOTATION_CONFIG_REVISION].clone();
    (cm.data.unwrap()["config.yaml"].clone(), revision)
}

/// Names of the DeliveryTier documents in a config file.
fn tiers_in(yaml: &str) -> Vec<String> {
    yaml.split("---\n")
        .filter(|d| d.contains("kind: DeliveryTier\n"))
        .filter_map(|d| {
            d.lines()
                .find_map(|l| l.strip_prefix("  name: "))
                .map(str::to_owned)
        })
        .collect()
}

fn ready(s: &DeliveryTierStatus) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == "Ready").unwrap()
}

async fn patch_spec<K>(h: &Harness, name: &str, spec: Value)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + DeserializeOwned,
{
    h.api::<K>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn editing_a_fallback_tier_updates_the_configmap_of_the_tier_that_falls_back_to_it() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("edge", 30)).await;
    h.create(&routing_profile("shed", "overflow")).await;
    // main → spare → last (fallbacks); main's profile routes to overflow.
    h.create(&tier(
        "main",
        spool(json!({"fallbackTiers": ["spare"], "degradationProfileRef": {"name": "shed"}})),
    ))
    .await;
    h.create(&tier("spare", spool(json!({"fallbackTiers": ["last"]}))))
        .await;
    h.create(&tier(
        "last",
        spool(json!({"rateLimitPolicyRef": {"name": "edge"}})),
    ))
    .await;
    h.create(&tier("overflow", spool(json!({})))).await;
    for t in ["main", "spare", "last", "overflow"] {
        h.reconcile(t).await.unwrap();
    }
    let (yaml, before) = config_of(&h, "main").await;
    assert_eq!(tiers_in(&yaml), ["main", "spare", "overflow", "last"]);
    let pods_before = pod_revision(&h, "main").await;
    assert!(yaml.contains("kind: RateLimitPolicy"), "{yaml}");

    // An edit two fallbacks away maps back to main (and to spare).
    patch_spec::<DeliveryTier>(&h, "last", json!({"priority": 7})).await;
    h.refresh().await;
    let mapped = controller::tiers_for(&h.ctx.index, RefKind::DeliveryTier, NS, "last");
    assert_eq!(mapped, vec![key("main"), key("spare")]);
    for r in &mapped {
        h.reconcile(&r.name).await.unwrap();
    }
    let (yaml, after) = config_of(&h, "main").await;
    assert_ne!(after, before);
    assert!(yaml.contains("priority: 7"), "{yaml}");
    assert_eq!(
        h.tier("main").await.status.unwrap().config_revision,
        Some(after.clone())
    );

    // So does an edit of a policy only the fallback tier references.
    patch_spec::<RateLimitPolicy>(&h, "edge", json!({"global": {"rate": 11, "period": "1s"}}))
        .await;
    h.refresh().await;
    let mapped = controller::tiers_for(&h.ctx.index, RefKind::RateLimitPolicy, NS, "edge");
    assert_eq!(mapped, vec![key("last"), key("main"), key("spare")]);
    h.reconcile("main").await.unwrap();
    let (yaml, again) = config_of(&h, "main").await;
    assert_ne!(again, after);
    assert!(yaml.contains("rate: 11"), "{yaml}");

    // And of a tier reached only through the profile's route, which the
    // index learns from main's pass.
    patch_spec::<DeliveryTier>(&h, "overflow", json!({"priority": 3})).await;
    h.refresh().await;
    assert_eq!(
        controller::tiers_for(&h.ctx.index, RefKind::DeliveryTier, NS, "overflow"),
        vec![key("main")]
    );
    h.reconcile("main").await.unwrap();
    let (yaml, _) = config_of(&h, "main").await;
    assert!(yaml.contains("priority: 3"), "{yaml}");

    // The pods were not rolled by any of it: agents reload the config.
    assert_eq!(pod_revision(&h, "main").await, pods_before);
}

async fn pod_revision(h: &Harness, tier: &str) -> String {
    let dep = h
        .api::<Deployment>()
        .get(&format!("{tier}-agent"))
        .await
        .unwrap();
    dep.spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[names::ANNOTATION_POD_REVISION]
        .clone()
}

#[tokio::test]
async fn a_missing_fallback_tier_sets_the_missing_reference_condition() {
    let h = Harness::new().await;
    h.create(&tier("main", spool(json!({"fallbackTiers": ["spare"]}))))
        .await;
    h.reconcile("main").await.unwrap();
    let status = h.tier("main").await.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let c = ready(&status);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(
        c.message
            .contains("DeliveryTier \"spare\" (spec.fallbackTiers[0]) not found"),
        "{}",
        c.message
    );
    assert!(h.children().await.is_empty(), "nothing applied");

    // The fallback tier appears, but its own references do not resolve.
    h.create(&tier(
        "spare",
        json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "spare-bot", "key": "k"}},
            "rateLimitPolicyRef": {"name": "spare-limits"},
        }),
    ))
    .await;
    h.refresh().await;
    assert_eq!(
        controller::tiers_for(&h.ctx.index, RefKind::DeliveryTier, NS, "spare"),
        vec![key("main")]
    );
    h.reconcile("main").await.unwrap();
    let status = h.tier("main").await.status.unwrap();
    let c = ready(&status);
    assert_eq!(c.reason, "MissingReference");
    for want in [
        "RateLimitPolicy \"spare-limits\" (DeliveryTier/spare: spec.rateLimitPolicyRef.name) not found",
        "Secret \"spare-bot\" (DeliveryTier/spare: spec.telegram.tokenSecretRef.name) not found",
    ] {
        assert!(c.message.contains(want), "{}", c.message);
    }
    assert!(h.children().await.is_empty());

    // What spare needs appears: each maps back to main, which recovers.
    h.create(&rate_limit_policy("spare-limits", 5)).await;
    h.create(&secret("spare-bot")).await;
    h.refresh().await;
    assert!(
        controller::tiers_for(&h.ctx.index, RefKind::RateLimitPolicy, NS, "spare-limits")
            .contains(&key("main"))
    );
    assert!(
        controller::tiers_for(&h.ctx.index, RefKind::Secret, NS, "spare-bot")
            .contains(&key("main"))
    );
    h.reconcile("main").await.unwrap();
    let status = h.tier("main").await.status.unwrap();
    assert_ne!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(ready(&status).reason, "NoReplicasReady");
    let (yaml, _) = config_of(&h, "main").await;
    assert_eq!(tiers_in(&yaml), ["main", "spare"]);
    // main's pods carry spare's token, under the agent's name for it.
    let dep = h.api::<Deployment>().get("main-agent").await.unwrap();
    let env = dep.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let token = env
        .iter()
        .find(|e| e.name == "HERALD_SECRET_SPARE_BOT_K")
        .unwrap();
    let sel = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("spare-bot", "k"));
}

#[tokio::test]
async fn a_fallback_loop_is_an_invalid_spec_not_a_config() {
    let h = Harness::new().await;
    h.create(&tier("a", spool(json!({"fallbackTiers": ["b"]}))))
        .await;
    h.create(&tier("b", spool(json!({"fallbackTiers": ["a"]}))))
        .await;
    h.reconcile("a").await.unwrap();
    let status = h.tier("a").await.status.unwrap();
    let c = ready(&status);
    assert_eq!(c.reason, "InvalidSpec");
    assert!(c.message.contains("a -> b -> a"), "{}", c.message);
    assert!(h.children().await.is_empty());
}
