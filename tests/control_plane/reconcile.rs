//! The operator against the real API server, under the chart's RBAC:
//! children written by server-side apply and owned by their tier, status with
//! conditions, a policy edit reaching every tier's ConfigMap, a second apply
//! writing nothing, garbage collection, printer columns, and Argo CD's health
//! scripts on what the server hands back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald::operator::names::{self, Track};
use serde_json::Value;

use crate::argocd_lua::{run_health, script_path};
use crate::cluster::{Cluster, cluster, root, wait_for};
use crate::operator::shared_operator;
use crate::schema::printer_columns;

const SAMPLE_TIERS: [&str; 3] = ["alerts-telegram", "alerts-webhook", "alerts-spool"];

/// The Secrets config/samples/full.yaml refers to.
const SAMPLE_SECRETS: &str = "\
apiVersion: v1
kind: Secret
metadata: {name: alerts-bot}
stringData: {token: '123456:e2e-token'}
---
apiVersion: v1
kind: Secret
metadata: {name: alerts-redis}
stringData: {url: 'redis://redis:6379'}
---
apiVersion: v1
kind: Secret
metadata: {name: alerts-webhook}
stringData: {hmac: e2e-hmac}
";

/// `(resource, name)` of every child herald writes for a tier of the sample.
fn children(tier: &str) -> Vec<(&'static str, String)> {
    let account = names::agent_account_name(tier);
    let mut out = vec![
        ("serviceaccount", account.clone()),
        ("role", account.clone()),
        ("rolebinding", account),
        ("configmap", names::config_map_name(tier)),
        ("deployment", names::deployment_name(tier, Track::Stable)),
        ("service", names::service_name(tier)),
        ("poddisruptionbudget", names::pdb_name(tier)),
    ];
    if tier == "alerts-spool" {
        out.push(("persistentvolumeclaim", names::spool_claim_name(tier)));
    }
    out
}

/// Applies the full sample (with its Secrets) in a new namespace and waits
/// until every tier's status is current; returns the namespace.
fn reconciled_sample(c: &Cluster, prefix: &str) -> String {
    shared_operator();
    let ns = c.namespace(prefix);
    c.apply(&ns, SAMPLE_SECRETS);
    let sample = std::fs::read_to_string(root().join("config/samples/full.yaml")).expect("sample");
    c.apply(&ns, &sample);
    for tier in SAMPLE_TIERS {
        let current = wait_for(Duration::from_secs(60), || {
            let t = c.get_json(&["get", "deliverytier", tier, "-n", &ns])?;
            let generation = t["metadata"]["generation"].as_i64()?;
            (t["status"]["observedGeneration"].as_i64() == Some(generation)).then_some(())
        });
        assert!(
            current.is_some(),
            "{ns}/{tier}: status.observedGeneration never reached metadata.generation: {:#}\noperator log:\n{}",
            c.get_json(&["get", "deliverytier", tier, "-n", &ns])
                .unwrap_or_default(),
            shared_operator().log()
        );
    }
    ns
}

#[test]
fn the_full_sample_is_reconciled_under_the_charts_rbac() {
    let c = cluster();
    let ns = reconciled_sample(c, "full-sample");
    for tier in SAMPLE_TIERS {
        let t = c
            .get_json(&["get", "deliverytier", tier, "-n", &ns])
            .expect("tier");
        let uid = t["metadata"]["uid"].as_str().expect("uid").to_owned();
        for (resource, name) in children(tier) {
            let obj = wait_for(Duration::from_secs(30), || {
                c.get_json(&["get", resource, &name, "-n", &ns, "--show-managed-fields"])
            })
            .unwrap_or_else(|| panic!("{ns}: {resource}/{name} of tier {tier} was never created"));
            let owner = obj["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .unwrap_or_else(|| {
                    panic!(
                        "{resource}/{name} has no controller owner: {:#}",
                        obj["metadata"]
                    )
                });
            assert_eq!(owner["kind"], "DeliveryTier", "{resource}/{name}");
            assert_eq!(owner["name"], tier, "{resource}/{name}");
            assert_eq!(owner["uid"], uid.as_str(), "{resource}/{name}");
            let managers: Vec<(String, String)> = obj["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    (
                        m["manager"].as_str().unwrap_or_default().to_owned(),
                        m["operation"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            assert!(
                managers.contains(&(names::MANAGER.to_owned(), "Apply".to_owned())),
                "{resource}/{name} was not written by server-side apply as {:?}: {managers:?}",
                names::MANAGER
            );
            // Only herald and the cluster's own controllers write children.
            for (manager, _) in &managers {
                assert!(
                    manager == names::MANAGER || manager.starts_with("kube-"),
                    "{resource}/{name}: unexpected field manager {manager}"
                );
            }
        }
        let conditions = t["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            !conditions.is_empty(),
            "{tier} has no conditions: {:#}",
            t["status"]
        );
        for cond in &conditions {
            assert_eq!(
                cond["observedGeneration"], t["metadata"]["generation"],
                "{tier}: {cond:#}"
            );
            assert!(cond["lastTransitionTime"].is_string(), "{tier}: {cond:#}");
        }
    }
    for (kind, name) in [
        ("ratelimitpolicy", "alerts-bot-limits"),
        ("circuitpolicy", "alerts-circuit"),
        ("degradationprofile", "alerts-degradation"),
    ] {
        let current = wait_for(Duration::from_secs(30), || {
            let p = c.get_json(&["get", kind, name, "-n", &ns])?;
            (p["status"]["observedGeneration"] == p["metadata"]["generation"]).then_some(())
        });
        assert!(current.is_some(), "{kind}/{name}: status never current");
    }
    let log = shared_operator().log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something under the chart's RBAC:\n{log}"
    );
}

#[test]
fn get_prints_the_documented_columns_for_real_objects() {
    let c = cluster();
    let ns = reconciled_sample(c, "columns");
    let out = c.kubectl_ok(&["get", "tier,rlp,cbp,dgp", "-n", &ns]);
    for (crd, wide) in [
        ("deliverytiers.herald.dev", false),
        ("ratelimitpolicies.herald.dev", false),
        ("circuitpolicies.herald.dev", false),
        ("degradationprofiles.herald.dev", false),
    ] {
        let header = format!("NAME   {}", printer_columns(crd, wide).join(" "));
        let words: Vec<&str> = header.split_whitespace().collect();
        let found = out
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == words);
        assert!(found, "no header {words:?} for {crd} in:\n{out}");
    }
    for name in SAMPLE_TIERS {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("deliverytier.herald.dev/{name} "))),
            "{name} missing:\n{out}"
        );
    }
    // A status that says something: every tier has a phase.
    let phases = c.kubectl_ok(&[
        "get",
        "tier",
        "-n",
        &ns,
        "-o",
        "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
    ]);
    assert_eq!(
        phases.lines().filter(|p| !p.is_empty()).count(),
        3,
        "{phases}"
    );

    let wide = c.kubectl_ok(&["get", "tier", "-o", "wide", "-n", &ns]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let mut expected = vec!["NAME".to_owned()];
    expected.extend(printer_columns("deliverytiers.herald.dev", true));
    let expected: Vec<&str> = expected.iter().flat_map(|c| c.split_whitespace()).collect();
    assert_eq!(header, expected, "{wide}");
    assert_eq!(header.last(), Some(&"MESSAGE"), "{wide}");
    // MESSAGE is the Ready condition's message.
    for tier in SAMPLE_TIERS {
        let message = c.kubectl_ok(&[
            "get",
            "tier",
            tier,
            "-n",
            &ns,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#,
        ]);
        assert!(!message.is_empty(), "{tier} has no Ready message");
        let row = wide
            .lines()
            .find(|l| l.starts_with(&format!("{tier} ")))
            .unwrap_or_default();
        assert!(row.trim_end().ends_with(message.trim()), "{tier}: {wide}");
    }

    // Policies: how many tiers use each, and whether it was accepted.
    for (resource, name, tiers) in [
        ("rlp", "alerts-bot-limits", 2),
        ("cbp", "alerts-circuit", 2),
        ("dgp", "alerts-degradation", 1),
    ] {
        let counted = wait_for(Duration::from_secs(30), || {
            let p = c.get_json(&["get", resource, name, "-n", &ns])?;
            (p["status"]["tierCount"].as_i64() == Some(tiers)).then_some(())
        });
        assert!(
            counted.is_some(),
            "{resource}/{name}: tierCount never {tiers}"
        );
        let out = c.kubectl_ok(&["get", resource, name, "-n", &ns]);
        let mut lines = out.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        // Columns start where their header does (an empty cell is blank).
        let at = |col: &str| {
            let start = header.find(&format!(" {col} ")).map(|i| i + 1)?;
            row.get(start..)?.split_whitespace().next()
        };
        let want = tiers.to_string();
        assert_eq!(at("TIERS"), Some(want.as_str()), "{out}");
        assert_eq!(at("ACCEPTED"), Some("True"), "{out}");
    }
}

#[test]
fn kubectl_scale_resizes_a_tier_through_its_scale_subresource() {
    let c = cluster();
    let ns = reconciled_sample(c, "scale");
    let tier = "alerts-webhook";
    c.kubectl_ok(&["scale", "tier", tier, "--replicas=3", "-n", &ns]);
    let deployment = names::deployment_name(tier, Track::Stable);
    let scaled = wait_for(Duration::from_secs(30), || {
        let d = c.get_json(&["get", "deployment", &deployment, "-n", &ns])?;
        (d["spec"]["replicas"].as_i64() == Some(3)).then_some(())
    });
    assert!(
        scaled.is_some(),
        "{ns}: {deployment} never asked for 3 pods"
    );
    // What an HPA reads: the replicas and the agent pods' selector.
    let read = wait_for(Duration::from_secs(30), || {
        let raw = c.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/apis/herald.dev/v1alpha1/namespaces/{ns}/deliverytiers/{tier}/scale"),
        ]);
        let scale: Value = serde_json::from_str(&raw).ok()?;
        (scale["status"]["replicas"].as_i64() == Some(3)).then_some(scale)
    })
    .unwrap_or_else(|| panic!("{ns}: the scale subresource never read 3 replicas"));
    assert_eq!(read["spec"]["replicas"], 3);
    assert_eq!(
        read["status"]["selector"],
        format!("app.kubernetes.io/name=herald,herald.dev/tier={tier}")
    );
}

/// The rate of the RateLimitPolicy as the agent config of `tier` holds it.
fn config_map_text(c: &Cluster, ns: &str, tier: &str) -> String {
    c.get_json(&["get", "configmap", &names::config_map_name(tier), "-n", ns])
        .map(|cm| cm["data"].to_string())
        .unwrap_or_default()
}

#[test]
fn a_policy_edit_reaches_every_referencing_tier_and_a_second_apply_writes_nothing() {
    let c = cluster();
    let ns = reconciled_sample(c, "policy-edit");
    // Both alerts-telegram and alerts-webhook use alerts-bot-limits.
    let users = ["alerts-telegram", "alerts-webhook"];
    // A tier's status can be current before its ConfigMap holds the policy:
    // a pass that ran before the policy existed is current too, and the
    // policy's arrival brings another pass. Start from the settled state.
    for tier in users {
        let settled = wait_for(Duration::from_secs(30), || {
            config_map_text(c, &ns, tier)
                .contains("rate: 30")
                .then_some(())
        });
        assert!(
            settled.is_some(),
            "{tier}: {}",
            config_map_text(c, &ns, tier)
        );
    }
    let before = objects(c, &ns);

    // The same documents again: nothing changes anywhere, not even after
    // the operator has been through each tier again.
    let sample = std::fs::read_to_string(root().join("config/samples/full.yaml")).expect("sample");
    c.apply(&ns, &sample);
    let passes = shared_operator().metric("herald_operator_reconciles_total");
    let moved_on = wait_for(Duration::from_secs(60), || {
        (shared_operator().metric("herald_operator_reconciles_total") >= passes + 6.0).then_some(())
    });
    assert!(
        moved_on.is_some(),
        "the operator did not reconcile again within 60 s"
    );
    let after = objects(c, &ns);
    let mut rewritten = Vec::new();
    for (key, old) in &before {
        let Some(new) = after.get(key) else {
            rewritten.push(format!("{key}: gone"));
            continue;
        };
        if old["metadata"]["resourceVersion"] == new["metadata"]["resourceVersion"] {
            continue;
        }
        // The API server's own quirk (kubernetes/kubernetes#121404 and
        // #124605): the first identical re-apply of a user's object whose
        // atomic lists hold defaulted fields can bump only the timestamp of
        // that user's managedFields entry. Anything more is a real write.
        if without_user_apply_time(old) != without_user_apply_time(new) {
            rewritten.push(format!("{key}:\n  before {old}\n  after  {new}"));
        }
    }
    assert!(
        rewritten.is_empty(),
        "a second apply rewrote:\n{}",
        rewritten.join("\n")
    );

    let patch = r#"{"spec":{"global":{"rate":25,"period":"1s","burst":1}}}"#;
    let started = Instant::now();
    c.kubectl_ok(&[
        "patch",
        "ratelimitpolicy",
        "alerts-bot-limits",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        patch,
    ]);
    let reached = wait_for(Duration::from_secs(30), || {
        users
            .iter()
            .all(|t| config_map_text(c, &ns, t).contains("rate: 25"))
            .then_some(())
    });
    let took = started.elapsed();
    assert!(
        reached.is_some(),
        "the edit did not reach every referencing tier's ConfigMap"
    );
    eprintln!(
        "policy edit reached {} ConfigMaps in {} ms",
        users.len(),
        took.as_millis()
    );
    // The spool tier does not use the policy: its config is untouched.
    assert!(!config_map_text(c, &ns, "alerts-spool").contains("rate: 25"));
}

/// Every herald object and child in `ns`, with managedFields, by
/// `Kind/name`.
fn objects(c: &Cluster, ns: &str) -> BTreeMap<String, Value> {
    let kinds = "deliverytiers,ratelimitpolicies,circuitpolicies,degradationprofiles,deployments,\
                 services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings,\
                 persistentvolumeclaims";
    let list = c.get_json(&["get", kinds, "-n", ns, "--show-managed-fields"]);
    let mut out = BTreeMap::new();
    for item in list
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
    {
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name == "kube-root-ca.crt" || name == "default" {
            continue;
        }
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        out.insert(format!("{kind}/{name}"), item);
    }
    out
}

/// The object without its resourceVersion and with the test user's
/// managedFields entry undated, entries in manager order.
fn without_user_apply_time(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    if let Some(entries) = obj["metadata"]["managedFields"].as_array_mut() {
        for e in entries.iter_mut() {
            if e["manager"] == "e2e-user"
                && let Some(e) = e.as_object_mut()
            {
                e.remove("time");
            }
        }
        entries.sort_by_key(|e| e.to_string());
    }
    obj
}

#[test]
fn deleting_a_tier_removes_its_children() {
    let c = cluster();
    let ns = reconciled_sample(c, "delete");
    let tier = "alerts-webhook";
    for (resource, name) in children(tier) {
        let made = wait_for(Duration::from_secs(30), || {
            c.get_json(&["get", resource, &name, "-n", &ns])
        });
        assert!(made.is_some(), "{resource}/{name} was never created");
    }
    c.kubectl_ok(&[
        "delete",
        "deliverytier",
        tier,
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    for (resource, name) in children(tier) {
        let gone = wait_for(Duration::from_secs(60), || {
            c.get_json(&["get", resource, &name, "-n", &ns])
                .is_none()
                .then_some(())
        });
        assert!(gone.is_some(), "{resource}/{name} outlived its tier");
    }
    // The other tiers keep theirs.
    for (resource, name) in children("alerts-spool") {
        assert!(
            c.get_json(&["get", resource, &name, "-n", &ns]).is_some(),
            "{resource}/{name}"
        );
    }
}

#[test]
fn argocd_health_scripts_read_what_the_server_returns() {
    let c = cluster();
    let ns = reconciled_sample(c, "argocd");
    let objects = [
        ("DeliveryTier", "deliverytier", "alerts-telegram"),
        ("RateLimitPolicy", "ratelimitpolicy", "alerts-bot-limits"),
        ("CircuitPolicy", "circuitpolicy", "alerts-circuit"),
        (
            "DegradationProfile",
            "degradationprofile",
            "alerts-degradation",
        ),
    ];
    for (kind, resource, name) in objects {
        let obj = c
            .get_json(&["get", resource, name, "-n", &ns])
            .expect("object");
        let (status, message) =
            run_health(&script_path(kind), &obj).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let expected = match kind {
            // No node runs its pods here: not Healthy, and not Degraded
            // either, since nothing failed.
            "DeliveryTier" => "Progressing",
            // Accepted by the operator and used by a tier.
            _ => "Healthy",
        };
        assert_eq!(status, expected, "{kind}/{name}: {message}\n{obj:#}");
        assert!(!message.is_empty(), "{kind}/{name}: no message");
    }
}
