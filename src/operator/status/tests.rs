use super::*;
use crate::api::DeliveryTierSpec;
use crate::operator::canary::Progress;
use crate::operator::index::RefKind;
use crate::operator::time::ts;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

fn tier(rollout: bool) -> DeliveryTier {
    let mut spec = serde_json::json!({
        "channel": "telegram",
        "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
        "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
        "replicas": 3,
    });
    if rollout {
        spec["rollout"] = serde_json::json!({"steps": [{"weight": 50}, {"weight": 100}]});
    }
    let spec: DeliveryTierSpec = serde_json::from_value(spec).unwrap();
    let mut t = DeliveryTier::new("alerts", spec);
    t.metadata.namespace = Some("ns".into());
    t.metadata.generation = Some(4);
    t
}

fn healthy() -> HealthSummary {
    aggregate(&[
        report(14.7, 499, 500, 180),
        report(14.7, 499, 500, 150),
        report(0.0, 0, 0, 120),
    ])
    .unwrap()
}

fn report(rate: f64, delivered: u64, attempted: u64, p95: u64) -> PodReport {
    PodReport {
        delivered_per_second: rate,
        delivered,
        attempted,
        p95_ms: Some(p95),
        queue_depth: Some(12),
        circuit: Some(CircuitState::Closed),
        level: Some(LevelName::Normal),
        dependencies: DependencyHealth::default(),
    }
}

fn observed<'a>(now: i64, rollout: Option<&'a RolloutState>) -> Observed<'a> {
    Observed {
        now: ts(now),
        stable: Some(ReplicaCounts {
            desired: 3,
            ready: 3,
            updated: 3,
            rolling_out: false,
        }),
        canary: None,
        health: Some(healthy()),
        rollout,
        missing_refs: &[],
        desired_error: None,
        last_restart: None,
        config_revision: Some("cfg1".into()),
    }
}

fn condition<'a>(s: &'a DeliveryTierStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_healthy_tier_reads_well_in_one_line() {
    let s = tier_status(&tier(false), &observed(100, None));
    assert_eq!(s.phase.as_deref(), Some("Ready"));
    assert_eq!(s.ready.as_deref(), Some("3/3"));
    assert_eq!(s.ready_replicas, Some(3));
    assert_eq!(s.delivery_rate.as_deref(), Some("29.4/s"));
    assert_eq!(s.success_ratio.as_deref(), Some("99.8%"));
    assert_eq!(s.p95_latency.as_deref(), Some("180ms"));
    assert_eq!(s.queue_depth, Some(12));
    assert_eq!(s.circuit.as_deref(), Some("closed"));
    assert_eq!(s.degradation_level.as_deref(), Some("NORMAL"));
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.config_revision.as_deref(), Some("cfg1"));
    let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        ["Ready", "Progressing", "Degraded", "DependencyDegraded"]
    );
    assert_eq!(condition(&s, "Ready").status, "True");
    assert_eq!(condition(&s, "Degraded").reason, "AsExpected");
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(4))
    );
}

#[test]
fn status_is_deterministic_and_keeps_transition_times() {
    let mut t = tier(false);
    let first = tier_status(&t, &observed(100, None));
    assert_eq!(tier_status(&t, &observed(100, None)), first);
    t.status = Some(first.clone());
    // Recomputed later with the same observations: identical, old times.
    let again = tier_status(&t, &observed(500, None));
    assert_eq!(again, first);
    assert!(!status_changed(&first, &again));
    // A pod goes unready: Ready keeps its time (still True), Degraded flips.
    let mut o = observed(900, None);
    o.stable = Some(ReplicaCounts {
        desired: 3,
        ready: 2,
        updated: 3,
        rolling_out: false,
    });
    let worse = tier_status(&t, &o);
    assert!(status_changed(&first, &worse));
    assert_eq!(
        condition(&worse, "Ready").last_transition_time,
        Time(ts(100))
    );
    assert_eq!(condition(&worse, "Ready").reason, "ReplicasPartiallyReady");
    assert_eq!(
        condition(&worse, "Degraded").last_transition_time,
        Time(ts(900))
    );
    assert_eq!(condition(&worse, "Degraded").reason, "ReplicasUnavailable");
    assert_eq!(worse.phase.as_deref(), Some("Degraded"));
}

#[test]
fn status_changed_ignores_only_transition_times() {
    let t = tier(false);
    let a = tier_status(&t, &observed(100, None));
    let b = tier_status(&t, &observed(200, None));
    assert_ne!(a, b, "times differ without a previous status");
    assert!(!status_changed(&a, &b));
    let mut c = b.clone();
    c.queue_depth = Some(13);
    assert!(status_changed(&a, &c));
    let mut d = b.clone();
    d.conditions[0].message.push('!');
    assert!(status_changed(&a, &d));
}

#[test]
fn phases_follow_the_worst_news() {
    let t = tier(false);
    let missing = [crate::operator::index::Reference {
        kind: RefKind::CircuitPolicy,
        name: "gone".into(),
        field: "spec.circuitPolicyRef.name".into(),
    }];
    let mut o = observed(1, None);
    o.missing_refs = &missing;
    let s = tier_status(&t, &o);
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    assert_eq!(condition(&s, "Ready").reason, "MissingReference");
    assert!(
        condition(&s, "Ready")
            .message
            .contains("CircuitPolicy \"gone\" (spec.circuitPolicyRef.name) not found")
    );

    let mut o = observed(1, None);
    o.desired_error = Some("tier name cannot name its Service".into());
    assert_eq!(tier_status(&t, &o).phase.as_deref(), Some("Failed"));

    let mut o = observed(1, None);
    o.stable = None;
    o.health = None;
    let s = tier_status(&t, &o);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(s.ready.as_deref(), Some("0/3"));
    assert_eq!(condition(&s, "DependencyDegraded").status, "Unknown");

    // Never ready yet: Pending. Ready before, now nothing: Degraded.
    let mut o = observed(1, None);
    o.stable = Some(ReplicaCounts {
        desired: 3,
        ready: 0,
        updated: 3,
        rolling_out: false,
    });
    assert_eq!(tier_status(&t, &o).phase.as_deref(), Some("Pending"));
    let mut was_ready = t.clone();
    was_ready.status = Some(tier_status(&t, &observed(0, None)));
    let s = tier_status(&was_ready, &o);
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(condition(&s, "Ready").reason, "NoReplicasReady");

    // Agents still starting inside the Deployment's progress deadline are
    // not a degradation, whether the tier was ready before or not; past the
    // deadline they are.
    let mut o = observed(1, None);
    o.stable = Some(ReplicaCounts {
        desired: 3,
        ready: 0,
        updated: 3,
        rolling_out: true,
    });
    for tier in [&t, &was_ready] {
        let s = tier_status(tier, &o);
        assert_eq!(condition(&s, "Degraded").status, "False", "{s:?}");
        assert_eq!(condition(&s, "Progressing").reason, "RollingUpdate");
    }
    assert_eq!(
        tier_status(&was_ready, &o).phase.as_deref(),
        Some("Progressing")
    );
    o.stable = o.stable.map(|s| ReplicaCounts {
        rolling_out: false,
        ..s
    });
    let s = tier_status(&t, &o);
    assert_eq!(condition(&s, "Degraded").reason, "ReplicasUnavailable");

    // A rolling update.
    let mut o = observed(1, None);
    o.stable = Some(ReplicaCounts {
        desired: 3,
        ready: 3,
        updated: 1,
        rolling_out: false,
    });
    let s = tier_status(&t, &o);
    assert_eq!(s.phase.as_deref(), Some("Progressing"));
    assert_eq!(condition(&s, "Progressing").reason, "RollingUpdate");

    // Degradation level and an open breaker.
    let mut o = observed(1, None);
    let mut h = healthy();
    h.level = Some(LevelName::Severe);
    h.circuit = Some(CircuitState::Open);
    o.health = Some(h);
    let s = tier_status(&t, &o);
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(condition(&s, "Degraded").reason, "CircuitOpen");
    assert_eq!(
        condition(&s, "Degraded").message,
        "the circuit breaker is open; degradation level SEVERE"
    );
    assert_eq!(s.degradation_level.as_deref(), Some("SEVERE"));
}

#[test]
fn a_shared_outage_sets_dependency_degraded() {
    let down = DependencyHealth {
        redis_down: true,
        telegram_down: false,
    };
    let mut reports = vec![report(0.0, 0, 10, 900); 3];
    reports[0].dependencies = down;
    reports[1].dependencies = down;
    let mut o = observed(1, None);
    o.health = aggregate(&reports);
    let s = tier_status(&tier(false), &o);
    assert_eq!(condition(&s, "DependencyDegraded").status, "True");
    assert_eq!(
        condition(&s, "DependencyDegraded").reason,
        "RedisUnavailable"
    );
    assert_eq!(condition(&s, "Degraded").reason, "DependencyDegraded");
    assert_eq!(s.success_ratio.as_deref(), Some("0.0%"));
    assert_eq!(s.delivery_rate.as_deref(), Some("0.0/s"));
}

#[test]
fn the_canary_shows_in_status() {
    let t = tier(true);
    let state = RolloutState::Progressing(Progress {
        revision: "abc".into(),
        step: 0,
        weight: 50,
        step_started_at: ts(0),
        window_start: ts(0),
        analyses_passed: 1,
        last_analysis: Some(crate::operator::canary::AnalysisOutcome::Passed),
        last_figures: None,
        paused_at: None,
        retry_request: None,
    });
    let mut o = observed(1, Some(&state));
    o.canary = Some(ReplicaCounts {
        desired: 2,
        ready: 2,
        updated: 2,
        rolling_out: false,
    });
    let s = tier_status(&t, &o);
    let c = s.canary.as_ref().unwrap();
    assert_eq!(
        (c.step, c.weight, c.verdict.as_str(), c.summary.as_str()),
        (0, 50, "Analysing", "50% analysing")
    );
    assert_eq!(s.ready.as_deref(), Some("5/5"));
    assert_eq!(s.phase.as_deref(), Some("Progressing"));
    assert_eq!(condition(&s, "Progressing").reason, "CanaryProgressing");
    assert_eq!(condition(&s, "CanaryAnalysis").status, "True");
    assert_eq!(condition(&s, "CanaryAnalysis").reason, "AnalysisPassing");

    let aborted = RolloutState::Aborted {
        revision: "abc".into(),
        reason: "p95 too high".into(),
        at: ts(9),
        retry_request: None,
    };
    let s = tier_status(&t, &observed(10, Some(&aborted)));
    assert_eq!(s.canary.as_ref().unwrap().summary, "aborted");
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(condition(&s, "Degraded").reason, "RolloutAborted");
    assert_eq!(condition(&s, "Progressing").reason, "RolloutAborted");
    assert_eq!(condition(&s, "CanaryAnalysis").status, "False");

    let s = tier_status(&t, &observed(10, Some(&RolloutState::Stable)));
    assert_eq!(s.canary, None);
}

#[test]
fn a_pause_by_hand_shows_in_status() {
    let t = tier(true);
    let state = RolloutState::Progressing(Progress {
        revision: "abc".into(),
        step: 1,
        weight: 50,
        step_started_at: ts(0),
        window_start: ts(0),
        analyses_passed: 0,
        last_analysis: None,
        last_figures: None,
        paused_at: Some(ts(5)),
        retry_request: None,
    });
    let s = tier_status(&t, &observed(10, Some(&state)));
    let c = s.canary.as_ref().unwrap();
    assert_eq!(
        (c.verdict.as_str(), c.summary.as_str()),
        ("Paused", "50% paused")
    );
    // Two revisions still serve: the tier is still progressing.
    assert_eq!(s.phase.as_deref(), Some("Progressing"));
    let p = condition(&s, "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", MANUAL_PAUSE)
    );
    assert!(
        p.message.contains("paused by hand at 50% (step 2/"),
        "{}",
        p.message
    );
}

#[test]
fn the_last_restart_and_revision_carry_over() {
    let mut t = tier(false);
    let mut o = observed(1, None);
    o.last_restart = Some(RestartRecord {
        pod: "alerts-agent-x".into(),
        reason: "not ready for 2m".into(),
        at: "1970-01-01T00:00:01Z".into(),
    });
    t.status = Some(tier_status(&t, &o));
    let mut o = observed(2, None);
    o.config_revision = None;
    let s = tier_status(&t, &o);
    assert_eq!(s.last_restart.as_ref().unwrap().pod, "alerts-agent-x");
    assert_eq!(s.config_revision.as_deref(), Some("cfg1"));
}

#[test]
fn printer_strings() {
    assert_eq!(format_rate(29.44), "29.4/s");
    assert_eq!(format_rate(f64::NAN), "0.0/s");
    assert_eq!(format_rate(-3.0), "0.0/s");
    assert_eq!(format_percent(0.998), "99.8%");
    assert_eq!(format_percent(0.99999), "99.9%");
    assert_eq!(format_percent(1.0), "100.0%");
    assert_eq!(format_percent(0.5), "50.0%");
    assert_eq!(format_latency(180), "180ms");
    assert_eq!(format_latency(12_345), "12.3s");
}

#[test]
fn aggregation_combines_pods_sensibly() {
    assert_eq!(aggregate(&[]), None);
    let mut a = report(10.0, 90, 100, 100);
    a.circuit = Some(CircuitState::HalfOpen);
    a.level = Some(LevelName::Minor);
    a.queue_depth = Some(40);
    let b = report(5.0, 100, 100, 300);
    let h = aggregate(&[a, b]).unwrap();
    assert_eq!(h.pods_reporting, 2);
    assert_eq!(h.delivery_rate, 15.0);
    assert_eq!(h.success_ratio, Some(0.95));
    assert_eq!(h.p95_ms, Some(300));
    assert_eq!(h.queue_depth, Some(40));
    assert_eq!(h.circuit, Some(CircuitState::HalfOpen));
    assert_eq!(h.level, Some(LevelName::Minor));
}

#[test]
fn policy_status_lists_users_and_is_accepted() {
    let mut p = RateLimitPolicy::new("limits", Default::default());
    p.metadata.generation = Some(2);
    let s = rate_limit_policy_status(&p, vec!["a".into(), "b".into()], ts(10));
    assert_eq!(s.used_by, ["a", "b"]);
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(
        (
            s.conditions[0].type_.as_str(),
            s.conditions[0].status.as_str()
        ),
        ("Accepted", "True")
    );
    p.status = Some(s.clone());
    let again = rate_limit_policy_status(&p, vec!["a".into(), "b".into()], ts(99));
    assert_eq!(again, s);
    let fewer = rate_limit_policy_status(&p, vec!["a".into()], ts(99));
    assert!(fewer.changed_from(&s));
    // The TIERS column counts them; zero is written, not left out.
    assert_eq!((s.tier_count, fewer.tier_count), (Some(2), Some(1)));
    let mut stale = s.clone();
    stale.tier_count = None;
    assert!(s.changed_from(&stale));

    let c = CircuitPolicy::new("circuit", Default::default());
    let cs = circuit_policy_status(&c, vec![], ts(1));
    assert!(cs.used_by.is_empty());
    assert_eq!(cs.tier_count, Some(0));
    let d = DegradationProfile::new("dp", crate::api::DegradationProfileSpec::default());
    let ds = degradation_profile_status(&d, vec!["a".into()], ts(1));
    assert_eq!(ds.level_count, Some(4));
    assert!(!ds.changed_from(&degradation_profile_status(&d, vec!["a".into()], ts(2))));
}

#[test]
fn a_deployment_rolls_out_until_its_controller_says_it_is_done_or_stuck() {
    use k8s_openapi::api::apps::v1::{
        Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    let deployment =
        |generation: i64, observed: i64, progressing: Option<(&str, &str)>| Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                ready_replicas: Some(1),
                updated_replicas: Some(3),
                conditions: progressing.map(|(status, reason)| {
                    vec![DeploymentCondition {
                        type_: "Progressing".into(),
                        status: status.into(),
                        reason: Some(reason.into()),
                        ..DeploymentCondition::default()
                    }]
                }),
                ..DeploymentStatus::default()
            }),
        };
    let counts =
        ReplicaCounts::of_deployment(&deployment(2, 2, Some(("True", "ReplicaSetUpdated"))));
    assert_eq!(
        counts,
        ReplicaCounts {
            desired: 3,
            ready: 1,
            updated: 3,
            rolling_out: true,
        }
    );
    for (d, rolling) in [
        // Not yet seen by the Deployment controller, or never given a status.
        (
            deployment(3, 2, Some(("True", "NewReplicaSetAvailable"))),
            true,
        ),
        (Deployment::default(), true),
        (
            deployment(2, 2, Some(("True", "NewReplicaSetCreated"))),
            true,
        ),
        // Done, or past the progress deadline.
        (
            deployment(2, 2, Some(("True", "NewReplicaSetAvailable"))),
            false,
        ),
        (
            deployment(2, 2, Some(("False", "ProgressDeadlineExceeded"))),
            false,
        ),
        (deployment(2, 2, None), false),
    ] {
        assert_eq!(
            ReplicaCounts::of_deployment(&d).rolling_out,
            rolling,
            "{d:?}"
        );
    }
}

#[test]
fn the_scale_subresource_reads_replicas_and_the_pod_selector() {
    let s = tier_status(&tier(true), &observed(100, None));
    assert_eq!(s.replicas, Some(3));
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/name=herald,herald.dev/tier=alerts")
    );
    // Both tracks count.
    let mut o = observed(100, None);
    o.canary = Some(ReplicaCounts {
        desired: 1,
        ready: 1,
        updated: 1,
        rolling_out: false,
    });
    assert_eq!(tier_status(&tier(true), &o).replicas, Some(4));
    // Before the Deployment exists, what the tier asks for.
    o.stable = None;
    o.canary = None;
    assert_eq!(tier_status(&tier(true), &o).replicas, Some(3));
}

#[test]
fn the_ready_message_is_the_wide_column() {
    let s = tier_status(&tier(false), &observed(100, None));
    assert_eq!(condition(&s, "Ready").message, "3/3 agents ready");
}
