use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::*;
use crate::operator::names::ANNOTATION_POD_REVISION;
use crate::operator::tests::{Harness, NS};

/// A redis tier with a four-step rollout, generation 3, and `status`.
fn tier(status: Value) -> DeliveryTier {
    serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "DeliveryTier",
        "metadata": {"name": "bots", "namespace": "apps", "generation": 3},
        "spec": {
            "channel": "spool",
            "spool": {"path": "/var/spool/herald"},
            "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "rollout": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}, {"weight": 100}]},
        },
        "status": status,
    }))
    .unwrap()
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2025-06-01T12:00:00Z",
    })
}

fn snapshot(status: Value, stable: Option<&str>) -> Snapshot {
    Snapshot {
        tier: tier(status),
        stable_revision: stable.map(str::to_owned),
        stable_unreadable: None,
    }
}

#[test]
fn without_a_rollout_it_says_so_and_names_the_stable_revision() {
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Ready",
            "conditions": [
                condition("Ready", "True", "AllReplicasReady", "3/3 agents ready"),
                condition("CanaryAnalysis", "False", "NoRollout", "no canary is running"),
            ],
        }),
        Some("rev-1"),
    );
    assert_eq!(
        lines(&s),
        [
            "Tier:     apps/bots",
            "Phase:    Ready",
            "Rollout:  none in progress",
            "Stable:   revision rev-1",
            "Analysis: False, NoRollout: no canary is running",
            "Ready:    True, AllReplicasReady: 3/3 agents ready",
        ]
    );
    assert_eq!(outcome(&s.tier), Some(Outcome::Settled));
}

#[test]
fn without_spec_rollout_it_says_pods_roll_at_once() {
    let mut s = snapshot(json!({"observedGeneration": 3, "phase": "Ready"}), None);
    s.tier.spec.rollout = None;
    let text = lines(&s);
    assert!(
        text.contains(&"Rollout: none: spec.rollout is unset, pod changes roll at once".to_owned()),
        "{text:#?}"
    );
    assert!(
        text.contains(&"Stable:  no stable Deployment yet".to_owned()),
        "{text:#?}"
    );
}

#[test]
fn mid_rollout_shows_step_weight_revisions_and_the_analysis() {
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Progressing",
            "canary": {"step": 1, "weight": 25, "verdict": "Analysing", "summary": "25% analysing", "revision": "rev-2"},
            "conditions": [
                condition("Ready", "True", "AllReplicasReady", "4/4 agents ready"),
                condition("Progressing", "True", "CanaryProgressing", "canary of revision rev-2 at 25% (step 2/4)"),
                condition("Degraded", "False", "AsExpected", ""),
                condition("CanaryAnalysis", "True", "AnalysisPassing", "step 2/4 at 25%: 2 analyses passed"),
            ],
        }),
        Some("rev-1"),
    );
    assert_eq!(
        lines(&s),
        [
            "Tier:        apps/bots",
            "Phase:       Progressing",
            "Rollout:     Analysing, step 2 of 4, canary weight 25%",
            "Canary:      revision rev-2",
            "Stable:      revision rev-1",
            "Analysis:    True, AnalysisPassing: step 2/4 at 25%: 2 analyses passed",
            "Ready:       True, AllReplicasReady: 4/4 agents ready",
            "Progressing: True, CanaryProgressing: canary of revision rev-2 at 25% (step 2/4)",
            "Degraded:    False, AsExpected",
        ]
    );
    assert_eq!(outcome(&s.tier), None);
}

#[test]
fn waiting_at_the_gate_is_not_an_end() {
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Progressing",
            "canary": {"step": 3, "weight": 100, "verdict": "Paused", "summary": "100% paused", "revision": "rev-2"},
        }),
        Some("rev-1"),
    );
    assert!(lines(&s).contains(&"Rollout: Paused, step 4 of 4, canary weight 100%".to_owned()));
    assert_eq!(outcome(&s.tier), None);
}

#[test]
fn a_pause_by_hand_is_named_and_is_not_an_end() {
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Progressing",
            "canary": {"step": 1, "weight": 25, "verdict": "Paused", "summary": "25% paused", "revision": "rev-2"},
            "conditions": [
                condition("Progressing", "True", "ManualPause",
                    "canary of revision rev-2 paused by hand at 25% (step 2/4); herald rollout resume continues it"),
            ],
        }),
        Some("rev-1"),
    );
    let shown = lines(&s);
    assert!(
        shown.contains(&"Rollout:     Paused (manual), step 2 of 4, canary weight 25%".to_owned()),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("Progressing: True, ManualPause: "))
    );
    assert_eq!(outcome(&s.tier), None);
}

#[test]
fn an_aborted_rollout_says_why_and_ends_in_failure() {
    let why = "revision rev-2 aborted: canary error rate 4.00% (4 of 100 sends) is above maxErrorRatePercent 1%";
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Degraded",
            "canary": {"step": 0, "weight": 0, "verdict": "Aborted", "summary": "aborted", "revision": "rev-2"},
            "conditions": [
                condition("Degraded", "True", "RolloutAborted", why),
                condition("CanaryAnalysis", "False", "Aborted", why),
            ],
        }),
        Some("rev-1"),
    );
    let text = lines(&s);
    assert!(
        text.contains(
            &"Rollout:  Aborted: revision rev-2 was withdrawn, stable serves every partition"
                .to_owned()
        ),
        "{text:#?}"
    );
    assert!(
        text.contains(&format!("Analysis: False, Aborted: {why}")),
        "{text:#?}"
    );
    assert!(
        text.contains(&format!("Degraded: True, RolloutAborted: {why}")),
        "{text:#?}"
    );
    assert_eq!(outcome(&s.tier), Some(Outcome::Aborted));
}

#[test]
fn a_promoted_rollout_ends_in_success() {
    let s = snapshot(
        json!({
            "observedGeneration": 3, "phase": "Ready",
            "canary": {"step": 0, "weight": 0, "verdict": "Promoted", "summary": "promoted", "revision": "rev-2"},
        }),
        Some("rev-2"),
    );
    let text = lines(&s);
    assert!(
        text.contains(
            &"Rollout: none in progress; the last one promoted revision rev-2".to_owned()
        ),
        "{text:#?}"
    );
    assert!(
        text.contains(&"Stable:  revision rev-2".to_owned()),
        "{text:#?}"
    );
    assert_eq!(outcome(&s.tier), Some(Outcome::Promoted));
}

#[test]
fn a_status_older_than_the_spec_is_flagged_and_never_an_end() {
    // The spec changed (generation 3) and the operator has not acted yet:
    // "Promoted" is the previous rollout's.
    let s = snapshot(
        json!({
            "observedGeneration": 2, "phase": "Ready",
            "canary": {"step": 0, "weight": 0, "verdict": "Promoted", "summary": "promoted", "revision": "rev-1"},
        }),
        Some("rev-1"),
    );
    let text = lines(&s);
    assert!(
        text.contains(
            &"Operator: has not yet acted on generation 3 (the status below is older)".to_owned()
        ),
        "{text:#?}"
    );
    assert_eq!(outcome(&s.tier), None);
    // No status at all: not observed either.
    assert_eq!(outcome(&tier(Value::Null)), None);
    assert!(
        lines(&snapshot(Value::Null, None))
            .contains(&"Phase:    unknown (no status yet)".to_owned())
    );
}

#[test]
fn an_unreadable_stable_deployment_is_shown_not_fatal() {
    let mut s = snapshot(json!({"observedGeneration": 3, "phase": "Ready"}), None);
    s.stable_unreadable = Some("reading Deployment bots-agent: forbidden".to_owned());
    assert!(
        lines(&s)
            .contains(&"Stable:  unknown (reading Deployment bots-agent: forbidden)".to_owned())
    );
}

#[tokio::test]
async fn reads_the_tier_and_the_stable_revision_from_the_api() {
    let h = Harness::new().await;
    h.create(&crate::operator::tests::spool_tier("bots", None))
        .await;
    h.api::<DeliveryTier>()
        .patch_status(
            "bots",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {
                "phase": "Progressing",
                "canary": {"step": 0, "weight": 10, "verdict": "Analysing", "summary": "10% analysing", "revision": "rev-2"},
            }})),
        )
        .await
        .unwrap();
    // Before the operator made the stable Deployment.
    let s = read(h.client.clone(), NS, "bots").await.unwrap();
    assert_eq!(
        (s.stable_revision.as_deref(), s.stable_unreadable.as_deref()),
        (None, None)
    );
    assert_eq!(
        s.tier.status.unwrap().canary.unwrap().revision.as_deref(),
        Some("rev-2")
    );

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bots-agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}, "annotations": {ANNOTATION_POD_REVISION: "rev-1"}},
                "spec": {"containers": [{"name": "agent", "image": "herald:test"}]},
            },
        },
    }))
    .unwrap();
    h.create(&deployment).await;
    let s = read(h.client.clone(), NS, "bots").await.unwrap();
    assert_eq!(s.stable_revision.as_deref(), Some("rev-1"));

    let e = read(h.client.clone(), NS, "other").await.unwrap_err();
    assert!(matches!(e, StatusError::NotFound { .. }), "{e}");
    assert_eq!(e.to_string(), "DeliveryTier apps/other not found");
}
