use super::*;
use crate::api::{DeliveryTier, DeliveryTierSpec, RateLimitPolicySpec};
use crate::operator::desired::{DesiredObjects, desired_objects};
use crate::operator::inputs::{OperatorOptions, ResolvedPolicies};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

fn tier(pod_template: Option<Value>) -> DeliveryTier {
    let mut spec = json!({
        "channel": "telegram",
        "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
        "rateLimitPolicyRef": {"name": "limits"},
    });
    if let Some(p) = pod_template {
        spec["podTemplate"] = p;
    }
    let spec: DeliveryTierSpec = serde_json::from_value(spec).unwrap();
    let mut t = DeliveryTier::new("alerts", spec);
    t.metadata.namespace = Some("ns".into());
    t.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".into());
    t
}

/// On a shared queue with a rollout, so both tracks' Deployments exist.
fn tier_with_canary(pod_template: Value) -> DeliveryTier {
    let mut t = tier(Some(pod_template));
    t.spec.store = serde_json::from_value(
        json!({"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}}),
    )
    .unwrap();
    t.spec.rollout =
        serde_json::from_value(json!({"steps": [{"weight": 50}, {"weight": 100}]})).unwrap();
    t
}

fn policies() -> ResolvedPolicies {
    ResolvedPolicies {
        rate_limits: [("limits".into(), RateLimitPolicySpec::default())].into(),
        ..ResolvedPolicies::default()
    }
}

fn opts_with(defaults: Value) -> OperatorOptions {
    let mut o = OperatorOptions::new("herald:test");
    o.pod_defaults = serde_json::from_value(defaults).unwrap();
    o
}

fn build(t: &DeliveryTier, o: &OperatorOptions) -> Result<DesiredObjects, DesiredError> {
    desired_objects(t, &policies(), o)
}

fn pod(d: &Deployment) -> (&PodTemplateSpec, &PodSpec, &Container) {
    let t = &d.spec.as_ref().unwrap().template;
    let p = t.spec.as_ref().unwrap();
    (t, p, &p.containers[0])
}

/// A value with every setting the subset has.
fn everything() -> Value {
    json!({
        "metadata": {"labels": {"team": "pay"}, "annotations": {"sidecar.istio.io/inject": "false"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"pool": "messaging"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "messaging", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "messaging-high",
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "containerSecurityContext": {"runAsGroup": 3000},
        "env": [{"name": "RUST_LOG", "value": "debug"}],
        "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": true}],
    })
}

fn assert_everything_reached(d: &DesiredObjects) {
    for dep in std::iter::once(&d.stable).chain(d.canary.as_ref()) {
        let (t, p, c) = pod(dep);
        let meta = t.metadata.as_ref().unwrap();
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "pay");
        assert_eq!(
            meta.annotations.as_ref().unwrap()["sidecar.istio.io/inject"],
            "false"
        );
        assert_eq!(p.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(p.node_selector.as_ref().unwrap()["pool"], "messaging");
        assert_eq!(
            p.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(
            p.affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some()
        );
        assert_eq!(
            p.topology_spread_constraints.as_ref().unwrap()[0].topology_key,
            "topology.kubernetes.io/zone"
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("messaging-high"));
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(
            (psc.run_as_user, psc.fs_group, psc.run_as_non_root),
            (Some(1000), Some(2000), Some(true))
        );
        let csc = c.security_context.as_ref().unwrap();
        assert_eq!(csc.run_as_group, Some(3000));
        assert_eq!(csc.read_only_root_filesystem, Some(true), "herald's kept");
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug"))
        );
        assert!(
            p.volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.name == "ca" && v.config_map.is_some())
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "ca" && m.mount_path == "/etc/ssl/corp")
        );
    }
}

#[test]
fn every_setting_of_a_tier_reaches_the_pod() {
    let d = build(&tier_with_canary(everything()), &opts_with(json!({}))).unwrap();
    assert!(d.canary.is_some());
    assert_everything_reached(&d);
}

#[test]
fn operator_defaults_apply_when_the_tier_sets_nothing() {
    let d = build(&tier(None), &opts_with(everything())).unwrap();
    assert_everything_reached(&d);
}

#[test]
fn settings_cannot_remove_the_agents_container_ports_probes_config_volume_or_labels() {
    let plain = build(&tier(None), &opts_with(json!({}))).unwrap();
    let (plain_t, plain_p, plain_c) = pod(&plain.stable);
    let d = build(&tier(Some(everything())), &opts_with(everything())).unwrap();
    let (t, p, c) = pod(&d.stable);
    assert_eq!(p.containers.len(), 1);
    assert_eq!(c.name, "agent");
    assert_eq!(c.image, plain_c.image);
    assert_eq!(c.args, plain_c.args);
    assert_eq!(c.ports, plain_c.ports);
    assert_eq!(c.startup_probe, plain_c.startup_probe);
    assert_eq!(c.liveness_probe, plain_c.liveness_probe);
    assert_eq!(c.readiness_probe, plain_c.readiness_probe);
    for v in plain_p.volumes.iter().flatten() {
        assert!(p.volumes.iter().flatten().any(|w| w == v), "{}", v.name);
    }
    for m in plain_c.volume_mounts.iter().flatten() {
        assert!(
            c.volume_mounts.iter().flatten().any(|n| n == m),
            "{}",
            m.name
        );
    }
    for e in plain_c.env.iter().flatten() {
        assert!(c.env.iter().flatten().any(|f| f == e), "{}", e.name);
    }
    let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in plain_t.metadata.as_ref().unwrap().labels.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "{k}");
    }
    assert_eq!(p.service_account_name, plain_p.service_account_name);

    // What would take them away is refused, naming the field.
    for (settings, field) in [
        (
            json!({"volumes": [{"name": "config", "emptyDir": {}}]}),
            "spec.podTemplate.volumes[0].name",
        ),
        (
            json!({"metadata": {"labels": {"herald.dev/track": "canary"}}}),
            "spec.podTemplate.metadata.labels",
        ),
        (
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}),
            "spec.podTemplate.metadata.labels",
        ),
        (
            json!({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/etc/herald"}]}),
            "spec.podTemplate.volumeMounts[0].mountPath",
        ),
        (
            json!({"env": [{"name": "HERALD_TRACK", "value": "canary"}]}),
            "spec.podTemplate.env[0].name",
        ),
        // The tier's embedded queue is mounted at /var/lib/herald.
        (
            json!({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/var/lib/herald"}]}),
            "spec.podTemplate.volumeMounts[0].mountPath",
        ),
        (
            json!({"volumeMounts": [{"name": "nowhere", "mountPath": "/data"}]}),
            "spec.podTemplate.volumeMounts[0].name",
        ),
    ] {
        match build(&tier(Some(settings.clone())), &opts_with(json!({}))) {
            Err(DesiredError::InvalidPodTemplate { field: f, .. }) => {
                assert_eq!(f, field, "{settings}")
            }
            other => panic!("{settings}: {other:?}"),
        }
    }
}

#[test]
fn the_tier_overrides_the_defaults_field_by_field() {
    let defaults = json!({
        "metadata": {"labels": {"team": "ops", "cost": "shared"}},
        "imagePullSecrets": [{"name": "global"}],
        "nodeSelector": {"pool": "general"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "priorityClassName": "low",
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "env": [{"name": "A", "value": "default"}, {"name": "B", "value": "default"}],
    });
    let tier_settings = json!({
        "metadata": {"labels": {"team": "pay"}},
        "imagePullSecrets": [{"name": "own"}],
        "nodeSelector": {"zone": "a"},
        "securityContext": {"runAsUser": 5000},
        "env": [{"name": "B", "value": "tier"}],
    });
    let d = build(&tier(Some(tier_settings)), &opts_with(defaults)).unwrap();
    let (t, p, c) = pod(&d.stable);
    let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(
        (labels["team"].as_str(), labels["cost"].as_str()),
        ("pay", "shared")
    );
    let secrets: Vec<&str> = p
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(secrets, ["global", "own"]);
    // Replaced whole, not merged.
    assert_eq!(
        p.node_selector.as_ref().unwrap(),
        &BTreeMap::from([("zone".to_owned(), "a".to_owned())])
    );
    // Kept where the tier says nothing.
    assert_eq!(
        p.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("spot")
    );
    assert_eq!(p.priority_class_name.as_deref(), Some("low"));
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!((psc.run_as_user, psc.fs_group), (Some(5000), Some(2000)));
    let env: Vec<(&str, &str)> = c
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "A" || e.name == "B")
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(env, [("A", "default"), ("B", "tier")]);
}

#[test]
fn a_setting_replaces_an_operator_wide_variable_of_the_same_name() {
    let mut o = opts_with(json!({}));
    o.agent_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://global".into())];
    let t = tier(Some(
        json!({"env": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://mine"}]}),
    ));
    let d = build(&t, &o).unwrap();
    let (_, _, c) = pod(&d.stable);
    let values: Vec<&str> = c
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .filter_map(|e| e.value.as_deref())
        .collect();
    assert_eq!(values, ["http://mine"]);
}

#[test]
fn label_and_annotation_settings_change_the_pod_revision() {
    let o = opts_with(json!({}));
    let plain = build(&tier(None), &o).unwrap();
    let labelled = build(
        &tier(Some(json!({"metadata": {"labels": {"team": "pay"}}}))),
        &o,
    )
    .unwrap();
    assert_ne!(plain.pod_revision, labelled.pod_revision);
    // Empty settings are no settings.
    let empty = build(&tier(Some(json!({}))), &o).unwrap();
    assert_eq!(plain.pod_revision, empty.pod_revision);
}

#[test]
fn operator_defaults_parse_strictly_with_the_field_named() {
    let ok = parse_defaults(
        "podDefaults",
        "imagePullSecrets:\n  - name: regcred\nsecurityContext:\n  fsGroup: 65532\n",
    )
    .unwrap();
    assert_eq!(ok.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(ok.security_context.unwrap().fs_group, Some(65532));
    assert_eq!(
        parse_defaults("podDefaults", "{}").unwrap(),
        PodTemplate::default()
    );
    assert_eq!(
        parse_defaults("podDefaults", "").unwrap(),
        PodTemplate::default()
    );
    for (text, field) in [
        ("nodeSelectr: {a: b}", "nodeSelectr"),
        ("tolerations: {key: a}", "tolerations"),
        ("securityContext: {runAsUsr: 1}", "securityContext.runAsUsr"),
        (
            "metadata: {labels: {herald.dev/tier: x}}",
            "metadata.labels",
        ),
        ("env: [{name: HERALD_X, value: \"on\"}]", "env[0].name"),
    ] {
        match parse_defaults("podDefaults", text) {
            Err(PodDefaultsError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_defaults("podDefaults", "{nodeSelector: ["),
        Err(PodDefaultsError::Parse { .. })
    ));
    let message = parse_defaults("podDefaults", "nodeSelectr: {}")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("podDefaults: nodeSelectr: "),
        "{message}"
    );
}

#[test]
fn herald_labels_are_the_reserved_labels() {
    use crate::api::pod_template::RESERVED_LABELS;
    use crate::operator::names::{Track, pod_labels};
    for track in [Track::Stable, Track::Canary] {
        for key in pod_labels("t", track).keys() {
            assert!(RESERVED_LABELS.contains(&key.as_str()), "{key}");
        }
    }
}
