//! The RBAC manifests grant exactly the table in the code, and the code
//! calls nothing the table does not grant; the kustomize trees build.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::*;
use crate::operator::controller::{self, LEADER_ELECTION_RULES, RBAC_RULES, RbacRule};
use crate::operator::leader::{Elector, LeaseConfig};

type Grant = (String, String, String);

fn from_table(rules: &[RbacRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        for res in r.resources {
            for v in r.verbs {
                out.insert((r.api_group.to_owned(), (*res).to_owned(), (*v).to_owned()));
            }
        }
    }
    out
}

fn from_yaml(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.resource_names.is_none(), "no resourceNames expected");
        assert!(r.non_resource_urls.is_none());
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert_ne!(v, "*", "no wildcard verbs");
                    assert_ne!(res, "*", "no wildcard resources");
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn config(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(config(path)).unwrap()
}

#[test]
fn the_manifests_grant_exactly_the_table() {
    let cluster: ClusterRole = serde_saphyr::from_str(&read("rbac/role.yaml")).unwrap();
    assert_eq!(
        from_yaml(cluster.rules.as_deref().unwrap_or_default()),
        from_table(RBAC_RULES)
    );
    let leader: Role = serde_saphyr::from_str(&read("rbac/leader_election_role.yaml")).unwrap();
    assert_eq!(
        from_yaml(leader.rules.as_deref().unwrap_or_default()),
        from_table(LEADER_ELECTION_RULES)
    );
}

/// `(group, resource[/subresource], verb)` of one request.
fn grant_of(c: &Call) -> Grant {
    let parts: Vec<&str> = c.path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => (String::new(), &parts[2..]),
        Some(&"apis") => (parts[1].to_owned(), &parts[3..]),
        _ => panic!("unexpected path {}", c.path),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [res] | [res, _] => (*res).to_owned(),
        [res, _, sub] => format!("{res}/{sub}"),
        _ => panic!("unexpected path {}", c.path),
    };
    let named = rest.len() >= 2;
    let verb = match (c.method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_owned())
}

#[test]
fn requests_map_to_rbac_grants() {
    let g = |m: &str, p: &str| {
        grant_of(&Call {
            method: m.into(),
            path: p.into(),
        })
    };
    let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        g("POST", "/api/v1/namespaces/x/pods/p/eviction"),
        t("", "pods/eviction", "create")
    );
    assert_eq!(
        g("GET", "/apis/herald.dev/v1alpha1/deliverytiers"),
        t("herald.dev", "deliverytiers", "list")
    );
    assert_eq!(
        g(
            "PATCH",
            "/apis/herald.dev/v1alpha1/namespaces/x/deliverytiers/a/status"
        ),
        t("herald.dev", "deliverytiers/status", "patch")
    );
    assert_eq!(
        g("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/l"),
        t("coordination.k8s.io", "leases", "update")
    );
}

/// Drive every write path the shell has — create, rollout, canary removal,
/// healing, events, tier and policy status, the startup guard, leader
/// election — recording only the shell's own requests.
#[tokio::test]
async fn the_code_calls_only_what_the_role_grants() {
    let h = Harness::new().await;
    let mut used: BTreeSet<Grant> = BTreeSet::new();
    macro_rules! recorded {
        ($e:expr) => {{
            h.clear_calls();
            let out = $e;
            used.extend(h.calls().iter().map(grant_of));
            out
        }};
    }
    async fn pass(h: &Harness, name: &str) {
        h.refresh().await;
        let t = h.tier(name).await;
        h.clear_calls();
        controller::reconcile(Arc::new(t), h.ctx.clone())
            .await
            .unwrap();
    }
    h.create(&secret("bot")).await;
    h.create(&secret("redis")).await;
    h.create(&rate_limit_policy("bot", 30)).await;
    let mut tg = tier(
        "tg",
        json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
            "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "replicas": 2,
            "rateLimitPolicyRef": {"name": "bot"},
            "rollout": {"steps": [{"weight": 50}, {"weight": 100}]},
        }),
    );
    tg.spec.image = Some("herald:v1".into());
    h.create(&tg).await;

    recorded!(controller::check_crd(&h.client, Some(NS)).await.unwrap());
    recorded!(controller::check_crd(&h.client, None).await.unwrap());
    recorded!(
        controller::prime_index(&h.api::<DeliveryTier>(), &h.ctx.index)
            .await
            .unwrap()
    );
    pass(&h, "tg").await;
    used.extend(h.calls().iter().map(grant_of));
    h.api::<DeliveryTier>()
        .patch(
            "tg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "herald:v2"}})),
        )
        .await
        .unwrap();
    pass(&h, "tg").await;
    used.extend(h.calls().iter().map(grant_of));
    // Healing: an unhealthy pod under a PDB that allows one disruption.
    h.api::<PodDisruptionBudget>()
        .patch_status(
            "tg",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"disruptionsAllowed": 1, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 2}})),
        )
        .await
        .unwrap();
    let long_ago = crate::operator::time::before(t0(), Duration::from_secs(600));
    h.create(&agent_pod("tg", "tg-agent-1", "stable", false, long_ago))
        .await;
    pass(&h, "tg").await;
    used.extend(h.calls().iter().map(grant_of));
    assert_eq!(h.faults.evicted.lock().unwrap().len(), 1);
    // Rollout removed: the canary Deployment is deleted.
    h.api::<DeliveryTier>()
        .patch(
            "tg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": null}})),
        )
        .await
        .unwrap();
    pass(&h, "tg").await;
    used.extend(h.calls().iter().map(grant_of));
    h.refresh().await;
    recorded!(controller::sync_policy_statuses(&h.ctx).await.unwrap());

    // Leader election, on the same recording client.
    let mut e = Elector::new(
        h.api::<Lease>(),
        LeaseConfig::new("herald-operator", NS, "me"),
    );
    recorded!(assert!(e.try_acquire_or_renew().await.unwrap()));
    recorded!(assert!(e.try_acquire_or_renew().await.unwrap()));
    recorded!(e.release().await);
    let _ = h
        .api::<Lease>()
        .delete("herald-operator", &DeleteParams::default())
        .await;

    let granted: BTreeSet<Grant> = from_table(RBAC_RULES)
        .union(&from_table(LEADER_ELECTION_RULES))
        .cloned()
        .collect();
    let missing: Vec<&Grant> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "called without a grant: {missing:?}");
    // Every write verb granted is exercised here (list/watch and create
    // belong to the watches and to applies that create, which the fake API
    // answers through the same paths).
    for want in [
        ("herald.dev", "deliverytiers/status", "patch"),
        ("herald.dev", "ratelimitpolicies/status", "patch"),
        ("", "pods/eviction", "create"),
        ("apps", "deployments", "delete"),
        ("apps", "deployments", "patch"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("coordination.k8s.io", "leases", "create"),
    ] {
        let g = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
        assert!(used.contains(&g), "{g:?} not exercised");
    }
}

#[test]
fn the_kustomize_trees_build() {
    let Ok(out) = std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    else {
        eprintln!("kubectl not found; skipping the kustomize build check");
        return;
    };
    assert!(out.status.success());
    for dir in ["rbac", "manager"] {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(config(dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize config/{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("herald-operator"), "{dir}");
        if dir == "manager" {
            // The agents default to the operator's own image.
            assert!(text.contains("value: herald:0.1.0"));
            assert!(text.contains("image: herald:0.1.0"));
        }
    }
}
