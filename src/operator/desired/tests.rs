use super::*;
use crate::api::delivery_tier::{Channel, StoreSpec};
use crate::api::refs::SecretKeyRef;
use crate::api::{CircuitPolicySpec, RateLimitPolicySpec};
use crate::operator::agent_config::SECRET_ENV_PREFIX;
use crate::operator::index::RefKind;
use crate::operator::inputs::{CanaryTrack, otel_env};
use crate::operator::secrets::{SecretRole, secret_refs};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

const UID: &str = "0b1c2d3e-0000-4000-8000-000000000001";

fn tier_from(spec: Value) -> DeliveryTier {
    let spec: DeliveryTierSpec = serde_json::from_value(spec).unwrap();
    let mut t = DeliveryTier::new("alerts", spec);
    t.metadata.namespace = Some("ns".into());
    t.metadata.uid = Some(UID.into());
    t.metadata.generation = Some(3);
    t
}

fn channel_json(channel: &str) -> Value {
    match channel {
        "telegram" => json!({
            "channel": "telegram",
            "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
        }),
        "webhook" => json!({
            "channel": "webhook",
            "webhook": {"url": "https://hooks.example.com/h", "hmacSecretRef": {"name": "hook", "key": "hmac"}},
        }),
        _ => json!({"channel": "spool", "spool": {"path": "/var/spool/herald"}}),
    }
}

fn spec_json(channel: &str, redis: bool, replicas: u32, rollout: bool) -> Value {
    let mut v = channel_json(channel);
    let o = v.as_object_mut().unwrap();
    o.insert("replicas".into(), json!(replicas));
    o.insert("rateLimitPolicyRef".into(), json!({"name": "limits"}));
    o.insert("circuitPolicyRef".into(), json!({"name": "circuit"}));
    if redis {
        o.insert(
            "store".into(),
            json!({"type": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "partitions": 16}}),
        );
    }
    if rollout {
        o.insert(
            "rollout".into(),
            json!({"steps": [{"weight": 10, "pause": "1m"}, {"weight": 50}, {"weight": 100}]}),
        );
    }
    o.insert(
        "resources".into(),
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
    );
    v
}

fn policies() -> ResolvedPolicies {
    ResolvedPolicies {
        rate_limits: [("limits".into(), RateLimitPolicySpec::default())].into(),
        circuits: [("circuit".into(), CircuitPolicySpec::default())].into(),
        secret_versions: BTreeMap::from([("bot".into(), "101".into())]),
        ..ResolvedPolicies::default()
    }
}

fn opts() -> OperatorOptions {
    OperatorOptions::new("ghcr.io/herald/herald:0.1.0")
}

fn build(t: &DeliveryTier) -> DesiredObjects {
    desired_objects(t, &policies(), &opts()).unwrap()
}

fn json_of<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn all_json(d: &DesiredObjects) -> Vec<Value> {
    let mut v = vec![
        json_of(&d.config_map),
        json_of(&d.stable),
        json_of(&d.service),
        json_of(&d.pdb),
        json_of(&d.service_account),
        json_of(&d.role),
        json_of(&d.role_binding),
    ];
    v.extend(d.canary.iter().map(json_of));
    v.extend(d.claims.iter().map(json_of));
    v
}

fn pod_spec_of(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container_of(d: &Deployment) -> &Container {
    &pod_spec_of(d).containers[0]
}

fn template_revision(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[names::ANNOTATION_POD_REVISION]
        .clone()
}

/// Every valid combination of channel × store × replicas × rollout.
fn matrix() -> Vec<(String, bool, u32, bool)> {
    let mut out = Vec::new();
    for channel in ["telegram", "webhook", "spool"] {
        for redis in [false, true] {
            for replicas in [0, 1, 3] {
                for rollout in [false, true] {
                    out.push((channel.to_owned(), redis, replicas, rollout));
                }
            }
        }
    }
    out
}

fn valid(redis: bool, replicas: u32, rollout: bool) -> bool {
    redis || (replicas <= 1 && !rollout)
}

#[test]
fn every_object_has_identity_labels_and_an_owner() {
    for (channel, redis, replicas, rollout) in matrix() {
        let t = tier_from(spec_json(&channel, redis, replicas, rollout));
        let case = format!("{channel} redis={redis} replicas={replicas} rollout={rollout}");
        let result = desired_objects(&t, &policies(), &opts());
        if !valid(redis, replicas, rollout) {
            assert!(
                matches!(
                    result,
                    Err(DesiredError::InvalidSpec {
                        field: "spec.store.type",
                        ..
                    })
                ),
                "{case}: {result:?}"
            );
            continue;
        }
        let d = result.unwrap();
        assert_eq!(d.canary.is_some(), rollout, "{case}");
        let names = d.names();
        assert_eq!(names.len(), d.metadata().len());
        for obj in &all_json(&d) {
            assert!(obj["apiVersion"].is_string(), "{case}: {obj}");
            assert!(obj["kind"].is_string(), "{case}: {obj}");
            let m = &obj["metadata"];
            assert!(m["name"].is_string(), "{case}: {obj}");
            assert_eq!(m["namespace"], "ns", "{case}");
            for (k, v) in [
                ("app.kubernetes.io/name", "herald"),
                ("app.kubernetes.io/instance", "alerts"),
                ("app.kubernetes.io/managed-by", "herald"),
                ("herald.dev/tier", "alerts"),
            ] {
                assert_eq!(m["labels"][k], v, "{case}: {} {k}", obj["kind"]);
            }
            let owners = m["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1, "{case}");
            assert_eq!(owners[0]["apiVersion"], "herald.dev/v1alpha1");
            assert_eq!(owners[0]["kind"], "DeliveryTier");
            assert_eq!(owners[0]["name"], "alerts");
            assert_eq!(owners[0]["uid"], UID);
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(owners[0]["blockOwnerDeletion"], true);
        }
        // Selectors select their own templates, and only their track.
        for (dep, track) in [
            (Some(&d.stable), Track::Stable),
            (d.canary.as_ref(), Track::Canary),
        ] {
            let Some(dep) = dep else { continue };
            let s = dep.spec.as_ref().unwrap();
            let sel = s.selector.match_labels.as_ref().unwrap();
            let labels = s
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap();
            for (k, v) in sel {
                assert_eq!(labels.get(k), Some(v), "{case}");
            }
            assert_eq!(sel[names::LABEL_TRACK], track.as_str());
        }
        // The Service and PDB cover both tracks.
        let svc_sel = d.service.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert!(!svc_sel.contains_key(names::LABEL_TRACK));
        let pdb = d.pdb.spec.as_ref().unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(pdb.min_available, None);
        // Replicas come from the spec; the canary rests at zero.
        assert_eq!(
            d.stable.spec.as_ref().unwrap().replicas,
            Some(replicas as i32)
        );
        if let Some(c) = &d.canary {
            assert_eq!(c.spec.as_ref().unwrap().replicas, Some(0));
        } else {
            assert_eq!(
                d.delete,
                vec![(ChildKind::Deployment, "alerts-canary".to_owned())]
            );
        }
        // Claims: the embedded queue and the spool directory.
        let claims: Vec<String> = d.claims.iter().map(|c| name_of(&c.metadata)).collect();
        let mut want = Vec::new();
        if !redis {
            want.push("alerts-queue".to_owned());
        }
        if channel == "spool" {
            want.push("alerts-spool".to_owned());
        }
        assert_eq!(claims, want, "{case}");
        let strategy = d.stable.spec.as_ref().unwrap().strategy.as_ref().unwrap();
        assert_eq!(
            strategy.type_.as_deref(),
            Some(if want.is_empty() {
                "RollingUpdate"
            } else {
                "Recreate"
            }),
            "{case}"
        );
    }
}

#[test]
fn agent_pods_run_the_agent_locked_down() {
    let d = build(&tier_from(spec_json("telegram", true, 3, true)));
    for dep in [&d.stable, d.canary.as_ref().unwrap()] {
        let pod = pod_spec_of(dep);
        let c = container_of(dep);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/herald/herald:0.1.0"));
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["agent", "--config", "/etc/herald/config.yaml"]
        );
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8080)
        );
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        // No fixed user or group: the image's numeric USER satisfies
        // runAsNonRoot, and OpenShift assigns its own range.
        assert_eq!(
            (psc.run_as_user, psc.run_as_group, psc.fs_group),
            (None, None, None)
        );
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        assert_eq!(c.resources, d_resources());
        assert_eq!(pod.service_account_name.as_deref(), Some("alerts-agent"));
        // Same container in both tracks: only labels differ.
        assert_eq!(pod_spec_of(dep), pod_spec_of(&d.stable));
    }
    let svc = d.service.spec.as_ref().unwrap();
    assert_eq!(svc.ports.as_ref().unwrap()[0].port, 8080);
    let rule = &d.role.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["alerts-config".to_owned()][..])
    );
    assert!(
        !rule
            .verbs
            .iter()
            .any(|v| v == "update" || v == "patch" || v == "create")
    );
}

fn d_resources() -> Option<k8s_openapi::api::core::v1::ResourceRequirements> {
    tier_from(spec_json("telegram", true, 3, true))
        .spec
        .resources
}

#[test]
fn secrets_reach_pods_only_through_secret_key_refs() {
    const TOKEN: &str = "123456789:AAHfake-token-value-never-rendered_xyz";
    let token_shape = regex::Regex::new(r"\d{6,}:[A-Za-z0-9_-]{20,}").unwrap();
    for (channel, redis, replicas, rollout) in matrix() {
        if !valid(redis, replicas, rollout) {
            continue;
        }
        let mut t = tier_from(spec_json(&channel, redis, replicas, rollout));
        // Whatever sits in the tier's metadata stays out of the config.
        t.metadata.annotations = Some(BTreeMap::from([("note".into(), TOKEN.into())]));
        t.metadata.labels = Some(BTreeMap::from([("team".into(), "secret-team".into())]));
        let d = build(&t);
        let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(
            !yaml.contains(TOKEN) && !yaml.contains("secret-team"),
            "{yaml}"
        );
        assert!(!token_shape.is_match(yaml));

        let env = container_of(&d.stable).env.clone().unwrap();
        let refs = secret_refs(&t.spec);
        for (_, r) in &refs {
            // Under the name the agent looks it up by.
            let var = r.env_var_name(SECRET_ENV_PREFIX);
            let e = env.iter().find(|e| e.name == var).unwrap();
            assert_eq!(e.value, None);
            let sel = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(
                (sel.name.as_str(), sel.key.as_str()),
                (r.name.as_str(), r.key.as_str())
            );
        }
        assert!(yaml.contains(&format!("envPrefix: {SECRET_ENV_PREFIX}")));
        // No literal values at all: everything comes from the API.
        for e in &env {
            assert_eq!(e.value, None, "{}", e.name);
        }
        assert_eq!(env.len(), 3 + refs.len(), "{channel} {redis}: {env:?}");
        let expected = match channel.as_str() {
            "telegram" => vec![SecretRole::TelegramToken],
            "webhook" => vec![SecretRole::WebhookHmac],
            _ => vec![],
        };
        let mut expected = expected;
        if redis {
            expected.push(SecretRole::RedisUrl);
        }
        assert_eq!(refs.iter().map(|(r, _)| *r).collect::<Vec<_>>(), expected);
    }
}

#[test]
fn the_configmap_holds_the_config_and_its_revision() {
    let t = tier_from(spec_json("telegram", true, 3, false));
    let d = build(&t);
    let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    assert!(
        yaml.starts_with("apiVersion: herald.dev/v1alpha1\nkind: Agent\n"),
        "{yaml}"
    );
    assert_eq!(
        d.config_map.metadata.annotations.as_ref().unwrap()[names::ANNOTATION_CONFIG_REVISION],
        d.config_revision
    );
    assert_eq!(
        d.config_revision,
        agent_config::render(&ConfigInput {
            tier_name: "alerts",
            namespace: "ns",
            spec: &t.spec,
            reach: &reach::complete("alerts", &t.spec, &policies()).unwrap(),
            canary_weight: 0,
        })
        .unwrap()
        .revision
    );
    // The config revision never reaches the pod template.
    let tpl = d
        .stable
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .clone()
        .unwrap();
    assert!(
        !tpl.annotations
            .unwrap()
            .contains_key(names::ANNOTATION_CONFIG_REVISION)
    );
}

#[test]
fn the_same_inputs_give_the_same_objects() {
    let t = tier_from(spec_json("telegram", true, 3, true));
    assert_eq!(build(&t), build(&t));
}

#[test]
fn a_policy_change_updates_the_configmap_only() {
    let t = tier_from(spec_json("telegram", true, 3, true));
    let a = build(&t);
    let mut p = policies();
    p.rate_limits.get_mut("limits").unwrap().global.rate = 25;
    let b = desired_objects(&t, &p, &opts()).unwrap();
    assert_ne!(a.config_revision, b.config_revision);
    assert_eq!(a.pod_revision, b.pod_revision);
    assert_eq!(a.stable, b.stable);
    assert_eq!(a.canary, b.canary);
}

#[test]
fn what_pods_run_changes_the_pod_revision() {
    let base = tier_from(spec_json("telegram", true, 3, false));
    let a = build(&base);
    assert_eq!(template_revision(&a.stable), a.pod_revision);
    type Edit = fn(&mut DeliveryTier);
    let edits: Vec<(&str, Edit)> = vec![
        (
            "image",
            (|t| t.spec.image = Some("ghcr.io/herald/herald:0.2.0".into())),
        ),
        (
            "resources",
            (|t| {
                t.spec.resources =
                    serde_json::from_value(json!({"requests": {"cpu": "200m"}})).unwrap()
            }),
        ),
        (
            "store partitions",
            (|t| {
                if let Some(r) = t.spec.store.redis.as_mut() {
                    r.partitions = 32;
                }
            }),
        ),
        (
            "token secret",
            (|t| {
                if let Some(tg) = t.spec.telegram.as_mut() {
                    tg.token_secret_ref = Some(crate::api::refs::SecretKeyRef {
                        name: "bot2".into(),
                        key: "token".into(),
                    });
                }
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut t = base.clone();
        edit(&mut t);
        let b = build(&t);
        assert_ne!(a.pod_revision, b.pod_revision, "{what}");
        assert_eq!(template_revision(&b.stable), b.pod_revision, "{what}");
    }
    // Scaling and fields the agent hot-reloads do not roll pods.
    let mut t = base.clone();
    t.spec.replicas = 5;
    t.spec.priority = 7;
    t.spec.healing.restart_budget = 9;
    if let Some(tg) = t.spec.telegram.as_mut() {
        tg.api_url = "http://sandbox:8081".into();
    }
    let b = build(&t);
    assert_eq!(a.pod_revision, b.pod_revision);
    assert_ne!(a.config_revision, b.config_revision);
    // A rotated Secret restarts the pods reading it from env.
    let mut p = policies();
    p.secret_versions.insert("bot".into(), "102".into());
    let c = desired_objects(&base, &p, &opts()).unwrap();
    assert_ne!(a.pod_revision, c.pod_revision);
    // A Secret the tier does not use does not.
    let mut p = policies();
    p.secret_versions.insert("unrelated".into(), "7".into());
    assert_eq!(
        desired_objects(&base, &p, &opts()).unwrap().pod_revision,
        a.pod_revision
    );
    // Nor does the operator's default image when the tier sets its own.
    let mut pinned = base.clone();
    pinned.spec.image = Some("mine:1".into());
    let mut o = opts();
    o.default_image = "ghcr.io/herald/herald:9.9.9".into();
    assert_eq!(
        desired_objects(&pinned, &policies(), &o)
            .unwrap()
            .pod_revision,
        build(&pinned).pod_revision
    );
}

#[test]
fn tracks_pin_stable_and_size_the_canary() {
    let t = tier_from(spec_json("telegram", true, 4, true));
    let at_rest = build(&t);
    let old_template = at_rest.stable.spec.as_ref().unwrap().template.clone();
    let mut t2 = t.clone();
    t2.spec.image = Some("ghcr.io/herald/herald:0.2.0".into());
    let tracks = Tracks {
        stable_template: Some(old_template.clone()),
        canary: Some(CanaryTrack {
            replicas: 2,
            weight: 50,
        }),
    };
    let d = desired_objects_with(&t2, &policies(), &opts(), &tracks).unwrap();
    assert_eq!(d.stable.spec.as_ref().unwrap().template, old_template);
    let canary = d.canary.as_ref().unwrap();
    assert_eq!(canary.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        container_of(canary).image.as_deref(),
        Some("ghcr.io/herald/herald:0.2.0")
    );
    assert_eq!(template_revision(canary), d.pod_revision);
    // The weight reaches the agents through the ConfigMap, not the pods.
    let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    assert!(
        yaml.contains("canary:\n      start: 8\n      end: 16"),
        "{yaml}"
    );
    let unweighted = desired_objects(&t2, &policies(), &opts()).unwrap();
    assert_ne!(unweighted.config_revision, d.config_revision);
    assert_eq!(unweighted.pod_revision, d.pod_revision);
}

#[test]
fn refuses_what_it_cannot_build() {
    let ok = tier_from(spec_json("telegram", true, 1, false));
    let mut no_uid = ok.clone();
    no_uid.metadata.uid = None;
    assert_eq!(
        desired_objects(&no_uid, &policies(), &opts()).unwrap_err(),
        DesiredError::NoUid
    );
    no_uid.metadata.uid = Some(String::new());
    assert_eq!(
        desired_objects(&no_uid, &policies(), &opts()).unwrap_err(),
        DesiredError::NoUid
    );

    let mut no_ns = ok.clone();
    no_ns.metadata.namespace = None;
    assert!(matches!(
        desired_objects(&no_ns, &policies(), &opts()),
        Err(DesiredError::NoMetadata("metadata.namespace"))
    ));

    let mut dotted = ok.clone();
    dotted.metadata.name = Some("alerts.v2".into());
    assert!(matches!(
        desired_objects(&dotted, &policies(), &opts()),
        Err(DesiredError::InvalidName { .. })
    ));

    let missing = desired_objects(&ok, &ResolvedPolicies::default(), &opts()).unwrap_err();
    assert!(matches!(
        missing,
        DesiredError::MissingReference {
            kind: RefKind::RateLimitPolicy,
            ..
        }
    ));

    for (path, why) in [
        ("relative/q.redb", "absolute"),
        ("/q.redb", "directory below /"),
        ("/etc/herald/q.redb", "/etc/herald"),
        ("/var/../q.redb", "segments"),
        ("/tmp/q.redb", "/tmp"),
    ] {
        let mut t = tier_from(spec_json("telegram", false, 1, false));
        t.spec.store = serde_json::from_value::<StoreSpec>(
            json!({"type": "embedded", "embedded": {"path": path}}),
        )
        .unwrap();
        let err = desired_objects(&t, &policies(), &opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{path}: {err}");
    }
    let mut overlap = tier_from(spec_json("spool", false, 1, false));
    overlap.spec.spool = Some(crate::api::delivery_tier::SpoolSpec {
        path: Some("/var/lib/herald".into()),
    });
    let err = desired_objects(&overlap, &policies(), &opts())
        .unwrap_err()
        .to_string();
    assert!(err.contains("overlaps"), "{err}");
}

#[test]
fn the_embedded_queue_directory_is_mounted_from_its_claim() {
    let d = build(&tier_from(spec_json("telegram", false, 1, false)));
    let c = container_of(&d.stable);
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/herald"),
            ("tmp", "/tmp"),
            ("queue", "/var/lib/herald")
        ]
    );
    let claim = &d.claims[0];
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_owned()][..])
    );
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("1Gi".into())
    );
}

proptest! {
    /// The pod revision is equal exactly when the pod-affecting inputs are.
    #[test]
    fn pod_revision_tracks_pod_inputs(
        a in (0usize..3, 0usize..3, 0usize..3, 0usize..3, 1u32..6),
        b in (0usize..3, 0usize..3, 0usize..3, 0usize..3, 1u32..6),
    ) {
        const IMAGES: [&str; 3] = ["img:1", "img:2", "img:3"];
        const CPUS: [&str; 3] = ["100m", "200m", "1"];
        const PARTITIONS: [u32; 3] = [8, 16, 64];
        const RATES: [u32; 3] = [10, 20, 30];
        let make = |(img, cpu, parts, rate, replicas): (usize, usize, usize, usize, u32)| {
            let mut t = tier_from(spec_json("telegram", true, replicas, false));
            t.spec.image = Some(IMAGES[img].into());
            t.spec.resources = serde_json::from_value(json!({"requests": {"cpu": CPUS[cpu]}})).unwrap();
            t.spec.store.redis.as_mut().unwrap().partitions = PARTITIONS[parts];
            let mut p = policies();
            p.rate_limits.get_mut("limits").unwrap().global.rate = RATES[rate];
            desired_objects(&t, &p, &opts()).unwrap()
        };
        let (da, db) = (make(a), make(b));
        let pod_inputs_equal = (a.0, a.1, a.2) == (b.0, b.1, b.2);
        prop_assert_eq!(da.pod_revision == db.pod_revision, pod_inputs_equal);
        prop_assert_eq!(da.config_revision == db.config_revision, (a.0, a.1, a.2, a.3, a.4) == (b.0, b.1, b.2, b.3, b.4));
    }
}

// ---------------------------------------------------------------------------
// The contract with the agent: what the operator renders, the agent loads.
// ---------------------------------------------------------------------------

/// The value a fake cluster would put behind a `secretKeyRef`.
fn fake_secret(name: &str, key: &str) -> String {
    format!("fake-{name}-{key}")
}

/// The environment a pod of `d` would see: Secrets get fake values, the
/// downward API a pod's name, namespace and track.
fn pod_env(d: &Deployment) -> impl Fn(&str) -> Option<String> + use<> {
    let env: Vec<EnvVar> = container_of(d).env.clone().unwrap_or_default();
    move |var| {
        let e = env.iter().find(|e| e.name == var)?;
        if let Some(v) = &e.value {
            return Some(v.clone());
        }
        let from = e.value_from.as_ref()?;
        if let Some(s) = &from.secret_key_ref {
            return Some(fake_secret(&s.name, &s.key));
        }
        let path = from.field_ref.as_ref()?.field_path.as_str();
        Some(
            match path {
                "metadata.name" => "pod-a",
                "metadata.namespace" => "ns",
                p if p.starts_with("metadata.labels") => "stable",
                _ => return None,
            }
            .to_owned(),
        )
    }
}

/// `alerts` (any matrix case) falls back to `backup`, which falls back to
/// `last`; its DegradationProfile routes to `overflow`. Secrets and
/// policies are shared where that is allowed, so deduplication is tested.
fn with_fallbacks(spec: &mut Value) -> ResolvedPolicies {
    spec["fallbackTiers"] = json!(["backup"]);
    spec["degradationProfileRef"] = json!({"name": "shed"});
    let tier = |v: Value| serde_json::from_value::<DeliveryTierSpec>(v).unwrap();
    let mut p = policies();
    p.tiers = [
        (
            "backup".into(),
            tier(json!({
                "channel": "webhook",
                "webhook": {"url": "https://hooks.example.com/b", "hmacSecretRef": {"name": "hook", "key": "hmac"}},
                "rateLimitPolicyRef": {"name": "limits"},
                "fallbackTiers": ["last"],
            })),
        ),
        (
            "last".into(),
            tier(json!({
                "channel": "telegram",
                "telegram": {"tokenSecretRef": {"name": "bot-2", "key": "token.v2"}},
                "circuitPolicyRef": {"name": "strict"},
            })),
        ),
        (
            "overflow".into(),
            tier(json!({
                "channel": "telegram",
                "telegram": {"tokenSecretRef": {"name": "bot", "key": "token"}},
                "store": {"type": "redis", "redis": {"urlSecretRef": {"name": "overflow-redis", "key": "url"}}},
                "replicas": 2,
            })),
        ),
    ]
    .into();
    p.circuits
        .insert("strict".into(), CircuitPolicySpec::default());
    p.degradations.insert(
        "shed".into(),
        serde_json::from_value(json!({"levels": [
            {"level": "MINOR", "entry": {"queueDepth": 1000}, "actions": {"routeTo": "overflow"}},
        ]}))
        .unwrap(),
    );
    p
}

/// Every valid matrix case, alone and with a fallback chain and a
/// degradation route: (case, tier, policies, tiers the config must hold).
fn contract_cases() -> Vec<(String, DeliveryTier, ResolvedPolicies, Vec<&'static str>)> {
    let mut out = Vec::new();
    for (channel, redis, replicas, rollout) in matrix() {
        if !valid(redis, replicas, rollout) {
            continue;
        }
        let case = format!("{channel} redis={redis} replicas={replicas} rollout={rollout}");
        let mut spec = spec_json(&channel, redis, replicas, rollout);
        out.push((
            case.clone(),
            tier_from(spec.clone()),
            policies(),
            vec!["alerts"],
        ));
        let p = with_fallbacks(&mut spec);
        out.push((
            format!("{case} with fallbacks"),
            tier_from(spec),
            p,
            vec!["alerts", "backup", "last", "overflow"],
        ));
    }
    out
}

#[test]
fn every_rendered_config_loads_in_the_agent_with_the_pods_env() {
    for (case, t, p, tiers) in contract_cases() {
        // A canary weight changes the partitions written; both must load.
        let weights: &[u32] = if t.spec.rollout.is_some() {
            &[0, 30]
        } else {
            &[0]
        };
        for &weight in weights {
            let tracks = Tracks {
                stable_template: None,
                canary: t.spec.rollout.as_ref().map(|_| CanaryTrack {
                    replicas: 1,
                    weight,
                }),
            };
            let d = desired_objects_with(&t, &p, &opts(), &tracks).unwrap();
            // Both tracks run the same container, so one environment
            // stands for both (a load is slow: it compiles the schemas).
            if let Some(c) = &d.canary {
                assert_eq!(container_of(c).env, container_of(&d.stable).env);
            }
            let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
            let env = pod_env(&d.stable);
            let cfg =
                crate::agent::config::AgentConfig::from_text(Path::new("config.yaml"), yaml, &env)
                    .unwrap_or_else(|e| {
                        panic!("{case}: the agent refuses its config: {e}\n{yaml}")
                    });
            assert_eq!(cfg.entry_tier, "alerts", "{case}");
            let mut got = cfg.tier_names();
            got.sort();
            assert_eq!(got, tiers, "{case}");
            // Each tier reads its own Secret, not just some Secret.
            for rt in &cfg.tiers {
                let s = &rt.policy.spec;
                let want = |r: Option<&SecretKeyRef>| r.map(|r| fake_secret(&r.name, &r.key));
                let read =
                    |v: Option<&crate::agent::secrets::Secret>| v.map(|v| v.expose().to_owned());
                let (got, want) = match s.channel {
                    Channel::Telegram => (
                        read(rt.secrets.bot_token.as_ref()),
                        want(
                            s.telegram
                                .as_ref()
                                .and_then(|t| t.token_secret_ref.as_ref()),
                        ),
                    ),
                    Channel::Webhook => (
                        read(rt.secrets.hmac_secret.as_ref()),
                        want(s.webhook.as_ref().and_then(|w| w.hmac_secret_ref.as_ref())),
                    ),
                    Channel::Spool => (None, None),
                };
                assert_eq!(got, want, "{case}: {}", rt.policy.name);
            }
            // The agent's own Redis URL is where the agent looks for it.
            if let Some(r) = &t.spec.store.redis {
                let url =
                    crate::agent::secrets::resolve(&cfg.agent.secrets, &r.url_secret_ref, &env)
                        .unwrap();
                assert_eq!(url.expose(), fake_secret("redis", "url"));
                let parts = cfg.agent.partitions.as_ref().unwrap();
                assert_eq!(parts.total, 16);
                let canary = if weight > 0 { 5 } else { 0 };
                assert_eq!(parts.canary.len(), canary, "{case}");
            } else {
                assert!(cfg.agent.partitions.is_none());
                assert_eq!(cfg.agent.store_path, "/var/lib/herald/queue.redb");
            }
            let cm = cfg.agent.config_map.as_ref().unwrap();
            assert_eq!(
                (cm.name.as_str(), cm.key.as_str()),
                ("alerts-config", CONFIG_KEY)
            );
            assert_eq!(cfg.agent.listen, agent_config::POD_LISTEN);
            assert_eq!(
                env(cfg.agent.track_env.as_deref().unwrap()).as_deref(),
                Some("stable")
            );
        }
    }
}

#[test]
fn pods_carry_the_channel_secrets_of_every_tier_they_deliver_through() {
    let mut spec = spec_json("telegram", true, 3, false);
    let p = with_fallbacks(&mut spec);
    let d = desired_objects(&tier_from(spec), &p, &opts()).unwrap();
    let env = container_of(&d.stable).env.clone().unwrap();
    let secrets: Vec<(&str, &str, &str)> = env
        .iter()
        .filter_map(|e| {
            let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.as_str(), s.name.as_str(), s.key.as_str()))
        })
        .collect();
    // `overflow` shares alerts' bot token (one variable), and its Redis
    // URL is not this agent's to read.
    assert_eq!(
        secrets,
        [
            ("HERALD_SECRET_BOT_TOKEN", "bot", "token"),
            ("HERALD_SECRET_REDIS_URL", "redis", "url"),
            ("HERALD_SECRET_HOOK_HMAC", "hook", "hmac"),
            ("HERALD_SECRET_BOT_2_TOKEN_V2", "bot-2", "token.v2"),
        ]
    );
}

#[test]
fn what_other_tiers_change_reaches_the_config_and_their_secrets_the_pods() {
    let mut spec = spec_json("telegram", true, 3, false);
    let p = with_fallbacks(&mut spec);
    let t = tier_from(spec);
    let a = desired_objects(&t, &p, &opts()).unwrap();
    // A fallback tier's spec, or a policy only it references: config only.
    let mut p2 = p.clone();
    p2.tiers.get_mut("last").unwrap().priority = 9;
    let b = desired_objects(&t, &p2, &opts()).unwrap();
    assert_ne!(a.config_revision, b.config_revision);
    assert_eq!(a.pod_revision, b.pod_revision);
    let mut p3 = p.clone();
    p3.circuits.get_mut("strict").unwrap().breaker.minimum_calls = 7;
    let c = desired_objects(&t, &p3, &opts()).unwrap();
    assert_ne!(a.config_revision, c.config_revision);
    assert_eq!(a.pod_revision, c.pod_revision);
    // A rotated Secret of a fallback tier rolls the pods reading it.
    let mut p4 = p.clone();
    p4.secret_versions.insert("bot-2".into(), "7".into());
    let e = desired_objects(&t, &p4, &opts()).unwrap();
    assert_ne!(a.pod_revision, e.pod_revision);
    assert_eq!(a.config_revision, e.config_revision);
    // Not the Redis URL of a tier whose store this agent does not use.
    let mut p5 = p.clone();
    p5.secret_versions
        .insert("overflow-redis".into(), "7".into());
    assert_eq!(
        desired_objects(&t, &p5, &opts()).unwrap().pod_revision,
        a.pod_revision
    );
    // Nothing secret in the config, whichever tier it belongs to.
    let yaml = &a.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    assert!(!yaml.contains("fake-"), "{yaml}");
}

#[test]
fn what_the_agent_would_refuse_is_refused_here() {
    let mut spec = spec_json("telegram", true, 3, false);
    let mut p = with_fallbacks(&mut spec);
    let t = tier_from(spec);
    // A fallback tier or a policy it needs is missing: a missing reference.
    let mut gone = p.clone();
    gone.tiers.remove("last");
    assert!(matches!(
        desired_objects(&t, &gone, &opts()).unwrap_err(),
        DesiredError::MissingReference { kind: RefKind::DeliveryTier, ref name, ref field }
            if name == "last" && field == "DeliveryTier/backup: spec.fallbackTiers[0]"
    ));
    let mut gone = p.clone();
    gone.circuits.remove("strict");
    assert!(matches!(
        desired_objects(&t, &gone, &opts()).unwrap_err(),
        DesiredError::MissingReference { kind: RefKind::CircuitPolicy, ref name, .. } if name == "strict"
    ));
    // A loop among the fallbacks.
    p.tiers.get_mut("last").unwrap().fallback_tiers = vec!["alerts".into()];
    assert_eq!(
        desired_objects(&t, &p, &opts()).unwrap_err(),
        DesiredError::FallbackCycle("alerts -> backup -> last -> alerts".into())
    );
    // Two Secret keys that one variable name cannot tell apart.
    p.tiers.get_mut("last").unwrap().fallback_tiers.clear();
    p.tiers
        .get_mut("last")
        .unwrap()
        .telegram
        .as_mut()
        .unwrap()
        .token_secret_ref = Some(SecretKeyRef {
        name: "bot".into(),
        key: "TOKEN".into(),
    });
    assert!(matches!(
        desired_objects(&t, &p, &opts()).unwrap_err(),
        DesiredError::SecretVariableClash { ref var, .. } if var == "HERALD_SECRET_BOT_TOKEN"
    ));
}

#[test]
fn agents_inherit_the_operators_tracing_settings_but_no_credentials() {
    let inherited = otel_env([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://collector:4318".to_owned(),
        ),
        ("OTEL_SERVICE_NAME".to_owned(), "herald-operator".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
            "authorization=Bearer s3cret".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS".to_owned(),
            "x-key=s3cret".to_owned(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG".to_owned(), "0.1".to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ]);
    assert_eq!(
        inherited,
        [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                "http://collector:4318".to_owned()
            ),
            ("OTEL_TRACES_SAMPLER_ARG".to_owned(), "0.1".to_owned()),
        ]
    );
    let t = tier_from(spec_json("telegram", false, 1, false));
    let plain = build(&t);
    let mut with = opts();
    with.agent_env = inherited;
    let traced = desired_objects(&t, &policies(), &with).unwrap();
    let env = container_of(&traced.stable).env.clone().unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://collector:4318")
    );
    assert!(
        !serde_json::to_string(&traced.stable)
            .unwrap()
            .contains("s3cret")
    );
    // Part of what the pods run: a change rolls them.
    assert_ne!(
        template_revision(&plain.stable),
        template_revision(&traced.stable)
    );
}

#[test]
fn pull_secrets_of_the_operator_defaults_reach_the_agent_deployments() {
    let mut o = opts();
    o.pod_defaults.image_pull_secrets =
        Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
            name: "regcred".into(),
        }]);
    let d = desired_objects(
        &tier_from(spec_json("telegram", true, 3, true)),
        &policies(),
        &o,
    )
    .unwrap();
    for dep in [&d.stable, d.canary.as_ref().unwrap()] {
        let secrets = pod_spec_of(dep).image_pull_secrets.clone().unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].name, "regcred");
    }
    // Without defaults, none.
    assert_eq!(
        pod_spec_of(&build(&tier_from(spec_json("telegram", true, 3, true))).stable)
            .image_pull_secrets,
        None
    );
}
