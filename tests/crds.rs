//! The CRDs: checked-in copies match the types, every schema is structural,
//! defaults satisfy their own schema, CEL rules compile, and kustomize
//! builds them.

use herald::api::crd;
use herald::validate::structural::Checker;
use serde_json::Value;

fn schema_of(kind: &str) -> Value {
    let c = crd::crd_for(kind).expect("known kind");
    let s = c.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(s).expect("json")
}

#[test]
fn checked_in_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for c in crd::all() {
        let path = dir.join(crd::file_name(&c));
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = crd::to_yaml(&c).expect("yaml");
        assert!(
            on_disk == generated,
            "{} is out of date with src/api; regenerate with `cargo run -- crd --out-dir crds`",
            path.display()
        );
    }
}

/// Walk every schema node, calling `f(path, node)`.
fn walk(path: &str, node: &Value, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), extra, f);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = node.get(key).and_then(Value::as_array) {
            for (i, v) in list.iter().enumerate() {
                walk(&format!("{path}.{key}[{i}]"), v, f);
            }
        }
    }
}

#[test]
fn every_schema_is_structural() {
    for kind in crd::KINDS {
        let schema = schema_of(kind);
        let mut problems = Vec::new();
        walk(kind, &schema, &mut |path, node| {
            let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            let in_junctor =
                path.contains(".anyOf[") || path.contains(".allOf[") || path.contains(".oneOf[");
            if node.get("type").is_none() && !int_or_string && !in_junctor {
                problems.push(format!("{path}: no type"));
            }
            if node.get("x-kubernetes-preserve-unknown-fields").is_some() {
                problems.push(format!("{path}: preserves unknown fields"));
            }
            if node.get("$ref").is_some() {
                problems.push(format!("{path}: $ref is not allowed"));
            }
            if in_junctor {
                for banned in [
                    "type",
                    "default",
                    "nullable",
                    "description",
                    "additionalProperties",
                ] {
                    if node.get(banned).is_some() && !path.ends_with(']') {
                        problems.push(format!("{path}: {banned} inside a junctor"));
                    }
                }
            }
            // Every default must satisfy the schema it sits in.
            if let Some(default) = node.get("default") {
                let mut out = Vec::new();
                Checker::default().check(node, default, path, &mut out);
                for v in out {
                    problems.push(format!("default at {}: {}", v.path, v.message));
                }
            }
        });
        assert!(problems.is_empty(), "{kind}:\n{}", problems.join("\n"));
    }
}

#[test]
fn cel_rules_compile() {
    for kind in crd::KINDS {
        let compiled = kube::core::cel::compile_schema(&schema_of(kind));
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{kind}: {errors:?}");
    }
}

#[test]
fn lists_used_by_rules_are_bounded() {
    // The API server refuses rules whose estimated cost is unbounded; every
    // list in herald's own spec types must carry a max (the embedded
    // Kubernetes types — `resources`, and what `podTemplate`'s own fields
    // hold — are not iterated by any rule; `podTemplate`'s lists are ours).
    let embedded = |path: &str| {
        path.contains(".resources.")
            || path
                .split_once(".podTemplate.")
                .is_some_and(|(_, rest)| rest.contains('.'))
    };
    for kind in crd::KINDS {
        let mut unbounded = Vec::new();
        walk(kind, &schema_of(kind), &mut |path, node| {
            let ours = path.contains(".spec.") && !embedded(path);
            if ours
                && node.get("type") == Some(&Value::String("array".into()))
                && node.get("maxItems").is_none()
            {
                unbounded.push(path.to_owned());
            }
        });
        assert!(
            unbounded.is_empty(),
            "arrays without maxItems: {unbounded:?}"
        );
    }
}

#[test]
fn names_columns_and_subresources() {
    let tier = crd::crd_for("DeliveryTier").unwrap();
    let names = &tier.spec.names;
    let short = names.short_names.clone().unwrap_or_default();
    assert_eq!(short, ["tier", "tiers", "dt"]);
    let v = &tier.spec.versions[0];
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let cols: Vec<&str> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "CHANNEL", "PHASE", "READY", "RATE", "SUCCESS", "CIRCUIT", "LEVEL", "CANARY", "AGE",
            "MESSAGE"
        ]
    );
    // `kubectl scale tier` and an HPA: spec.replicas, with the pods'
    // selector in the status.
    let scale = v
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("a scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let status = &schema_of("DeliveryTier")["properties"]["status"]["properties"];
    assert_eq!(status["replicas"]["type"], "integer");
    assert_eq!(status["selector"]["type"], "string");
    for (kind, short) in [
        ("RateLimitPolicy", "rlp"),
        ("CircuitPolicy", "cbp"),
        ("DegradationProfile", "dgp"),
        ("DeliveryTier", "tier"),
    ] {
        let c = crd::crd_for(kind).unwrap();
        assert!(
            c.spec
                .names
                .short_names
                .unwrap_or_default()
                .contains(&short.to_owned())
        );
        assert_eq!(c.spec.names.categories.unwrap_or_default(), ["herald"]);
        assert_eq!(c.spec.scope, "Namespaced");
        let v = &c.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind}"
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{kind}"
        );
        if kind != "DeliveryTier" {
            // Policies: how many tiers use them, and whether they were accepted.
            let cols: Vec<(&str, &str)> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| (c.name.as_str(), c.json_path.as_str()))
                .collect();
            assert!(cols.contains(&("TIERS", ".status.tierCount")), "{kind}");
            assert!(
                cols.contains(&(
                    "ACCEPTED",
                    ".status.conditions[?(@.type==\"Accepted\")].status"
                )),
                "{kind}"
            );
        }
    }
}

#[test]
fn kustomize_builds_the_four_crds() {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", "config/crd"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl must be installed to test the kustomize tree (see .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 4);
    for name in [
        "deliverytiers.herald.dev",
        "ratelimitpolicies.herald.dev",
        "circuitpolicies.herald.dev",
        "degradationprofiles.herald.dev",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name}");
    }
}
