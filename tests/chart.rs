//! The Helm chart (charts/herald) and the kustomize trees (config/*),
//! rendered for real: `helm lint --strict` and `helm template` with the
//! default values and with ci/full-values.yaml (every optional part on);
//! every rendered object parses as its Kubernetes type and survives a
//! round trip through it (no unknown or misplaced field); the chart's CRDs,
//! rules and dashboard are exact copies of crds/, config/prometheus and
//! config/grafana; its RBAC rules (the operator's and the aggregated
//! view/edit roles) are those of config/rbac; the operator Deployment is
//! hardened and its flags are ones `herald operator` accepts; every value
//! of values.yaml is rendered by ci/full-values.yaml, guarded by
//! values.schema.json and documented in docs/install.md; every config/*
//! tree builds with `kubectl kustomize`.
//!
//! What the operator does with its permissions is src/operator's business;
//! this file only pins how it is installed. Invariant: nothing here skips —
//! without Helm (installed by scripts/install-helm.sh) or kubectl the tests
//! fail and say why.
//!
//! Refresh the chart's copies after editing a source:
//! `HERALD_UPDATE_CHART=1 cargo test --test chart`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[path = "common/helm.rs"]
mod helm_tool;

const RELEASE: &str = "herald";
const NAMESPACE: &str = "herald-system";
const FULL_VALUES: &str = "charts/herald/ci/full-values.yaml";
const UPDATE_ENV: &str = "HERALD_UPDATE_CHART";
/// Where the chart keeps its copies of crds/: templates/crds.yaml renders
/// them (Helm's own crds/ directory is never upgraded, so the chart has none).
const CHART_CRDS: &str = "charts/herald/files/crds";
/// Source → chart copy, byte for byte (besides the CRDs).
const COPIES: [(&str, &str); 2] = [
    (
        "config/prometheus/rules.yaml",
        "charts/herald/files/prometheus-rules.yaml",
    ),
    (
        "config/grafana/herald-dashboard.json",
        "charts/herald/files/herald-dashboard.json",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a tool in the repository root; panics with its stderr on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} could not be started: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// Helm 4 (see tests/common/helm.rs), after refreshing the chart's copies
/// when asked, so that no helm run reads a half-refreshed chart.
fn helm() -> &'static str {
    static REFRESHED: OnceLock<()> = OnceLock::new();
    REFRESHED.get_or_init(update_copies_if_asked);
    helm_tool::helm()
}

fn kubectl() -> &'static str {
    static KUBECTL: OnceLock<&str> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        match Command::new("kubectl").args(["version", "--client"]).output() {
            Ok(o) if o.status.success() => "kubectl",
            other => panic!(
                "kubectl is needed to build the kustomize trees ({other:?}); install it (see .ci/run)"
            ),
        }
    })
}

// ---------------------------------------------------------------------------
// Rendered objects
// ---------------------------------------------------------------------------

/// One rendered object, as JSON, with where it came from.
#[derive(Clone, Debug)]
struct Doc {
    origin: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }

    fn label(&self) -> String {
        format!("{} {} {}", self.origin, self.kind(), self.name())
    }

    /// The object as `T`, which must give back exactly what was rendered:
    /// k8s-openapi ignores unknown fields, so a typo or a field at the
    /// wrong level shows up as a difference here.
    fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        let t: T = serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", self.label()));
        let back = serde_json::to_value(&t).unwrap();
        let mut diffs = Vec::new();
        diff("", &self.value, &back, &mut diffs);
        assert!(
            diffs.is_empty(),
            "{} does not survive a round trip through its type (unknown or misplaced \
             field?):\n{}",
            self.label(),
            diffs.join("\n")
        );
        t
    }
}

/// Paths where `rendered` and `parsed` differ.
fn diff(path: &str, rendered: &Value, parsed: &Value, out: &mut Vec<String>) {
    match (rendered, parsed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: dropped (was {v})")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added ({})", b[k]));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        // kustomize writes `100.0` as `100`; the type reads both as a float.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a != b => out.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

fn parse_docs(origin: &str, text: &str) -> Vec<Doc> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}\n{text}"));
    values
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|value| Doc {
            origin: origin.to_owned(),
            value,
        })
        .collect()
}

/// Parses every document as its type; kinds without one in k8s-openapi
/// (the Prometheus Operator's, Argo CD's) get a structural check only.
/// Unknown kinds fail.
fn check_types(docs: &[Doc]) {
    for d in docs {
        assert!(!d.name().is_empty(), "{}: no metadata.name", d.label());
        match (d.api_version(), d.kind()) {
            ("apps/v1", "Deployment") => {
                d.typed::<Deployment>();
            }
            ("v1", "Service") => {
                d.typed::<Service>();
            }
            ("v1", "ServiceAccount") => {
                d.typed::<ServiceAccount>();
            }
            ("v1", "ConfigMap") => {
                d.typed::<ConfigMap>();
            }
            ("v1", "Namespace") => {
                d.typed::<Namespace>();
            }
            ("v1", "PersistentVolumeClaim") => {
                d.typed::<PersistentVolumeClaim>();
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                d.typed::<ClusterRole>();
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                d.typed::<ClusterRoleBinding>();
            }
            ("rbac.authorization.k8s.io/v1", "Role") => {
                d.typed::<Role>();
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                d.typed::<RoleBinding>();
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                d.typed::<NetworkPolicy>();
            }
            ("policy/v1", "PodDisruptionBudget") => {
                d.typed::<PodDisruptionBudget>();
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                let crd = d.typed::<CustomResourceDefinition>();
                assert_eq!(crd.spec.group, "herald.dev", "{}", d.label());
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor" | "PrometheusRule") => {
                assert!(d.value["spec"].is_object(), "{}: no spec", d.label());
            }
            ("argoproj.io/v1alpha1", "Application") => {
                assert!(d.value["spec"].is_object(), "{}: no spec", d.label());
            }
            (api, kind) => panic!("{}: unexpected {api} {kind}", d.origin),
        }
    }
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{} {}", d.kind(), d.name()))
                .collect();
            panic!("no {kind} {name} among {have:?}")
        })
}

fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
    docs.iter().filter(move |d| d.kind() == kind)
}

// ---------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------

/// Which values a render uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Values {
    Default,
    Full,
}

fn values_args(v: Values) -> Vec<&'static str> {
    match v {
        Values::Default => Vec::new(),
        Values::Full => vec!["-f", FULL_VALUES],
    }
}

/// `helm template` with the CRDs, parsed; cached per values file.
fn render(v: Values) -> &'static [Doc] {
    static DEFAULT: OnceLock<Vec<Doc>> = OnceLock::new();
    static FULL: OnceLock<Vec<Doc>> = OnceLock::new();
    let cell = match v {
        Values::Default => &DEFAULT,
        Values::Full => &FULL,
    };
    cell.get_or_init(|| {
        let mut args = vec![
            "template",
            RELEASE,
            "charts/herald",
            "--namespace",
            NAMESPACE,
        ];
        args.extend(values_args(v));
        parse_docs(&format!("helm template ({v:?})"), &run(helm(), &args))
    })
}

/// `helm template` with the default values and `--set` each of `sets`.
fn template(sets: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(helm());
    cmd.args([
        "template",
        RELEASE,
        "charts/herald",
        "--namespace",
        NAMESPACE,
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    cmd.current_dir(root()).output().unwrap()
}

/// [`template`], which must succeed, parsed.
fn template_ok(sets: &[&str]) -> Vec<Doc> {
    let out = template(sets);
    assert!(
        out.status.success(),
        "helm template --set {}: {}",
        sets.join(" --set "),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(
        &format!("helm template --set {}", sets.join(" --set ")),
        &String::from_utf8(out.stdout).unwrap(),
    )
}

/// Each `--set` alone is refused by values.schema.json.
fn assert_schema_refuses<S: AsRef<str>>(sets: &[S]) {
    for set in sets.iter().map(AsRef::as_ref) {
        let out = template(&[set]);
        assert!(!out.status.success(), "{set} rendered");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
    }
}

#[test]
fn helm_lint_strict_passes() {
    for v in [Values::Default, Values::Full] {
        let mut args = vec!["lint", "--strict", "charts/herald"];
        args.extend(values_args(v));
        let out = run(helm(), &args);
        assert!(out.contains("0 chart(s) failed"), "{v:?}: {out}");
    }
}

#[test]
fn every_rendered_object_parses_as_its_type() {
    for v in [Values::Default, Values::Full] {
        let docs = render(v);
        check_types(docs);
        for d in docs {
            if d.kind() == "CustomResourceDefinition" || d.kind().starts_with("Cluster") {
                assert!(d.namespace().is_none(), "{}", d.label());
            }
        }
    }
}

#[test]
fn the_default_values_render_the_operator_only() {
    let kinds: BTreeSet<&str> = render(Values::Default).iter().map(Doc::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
}

#[test]
fn the_full_values_render_every_optional_part() {
    let docs = render(Values::Full);
    let kinds: BTreeSet<&str> = docs.iter().map(Doc::kind).collect();
    for want in [
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(want), "{want} missing from {kinds:?}");
    }
    assert_eq!(
        of_kind(docs, "ServiceMonitor").count(),
        2,
        "operator + agents"
    );
    // Both monitors where Prometheus looks for them, with the relabelings;
    // the operator's still selects the release namespace's Service.
    let values: Value = serde_saphyr::from_str(&read(&root().join(FULL_VALUES))).unwrap();
    let sm = &values["serviceMonitor"];
    for m in of_kind(docs, "ServiceMonitor") {
        assert_eq!(m.namespace(), Some("monitoring"), "{}", m.label());
        let endpoint = &m.value["spec"]["endpoints"][0];
        assert_eq!(endpoint["relabelings"], sm["relabelings"], "{}", m.label());
        assert_eq!(
            endpoint["metricRelabelings"],
            sm["metricRelabelings"],
            "{}",
            m.label()
        );
    }
    let operator_monitor = find(docs, "ServiceMonitor", "herald-operator");
    assert_eq!(
        operator_monitor.value["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!([NAMESPACE])
    );
    // The dashboard, for Grafana's sidecar, in the namespace it watches.
    let cm: ConfigMap = find(docs, "ConfigMap", "herald-dashboard").typed();
    let labels = cm.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
    let json = &cm.data.unwrap_or_default()["herald-dashboard.json"];
    let source: Value = serde_json::from_str(&read(&root().join(COPIES[1].0))).unwrap();
    assert_eq!(serde_json::from_str::<Value>(json).unwrap(), source);
    // The rules, exactly the source's spec.
    let rule = find(docs, "PrometheusRule", "herald-rules");
    let source: Value = serde_saphyr::from_str(&read(&root().join(COPIES[0].0))).unwrap();
    assert_eq!(rule.value["spec"], source["spec"]);
    assert_eq!(rule.value["metadata"]["labels"]["release"], "prometheus");
}

/// `prometheusRule.runbookBaseUrl` moves every alert's runbook link to the
/// installer's copy of the docs and keeps its anchor; nothing else of the
/// rules changes. A base with an anchor of its own is refused.
#[test]
fn the_runbook_links_follow_runbook_base_url() {
    let base = "https://docs.internal.example/herald/troubleshooting.md";
    let set_base = format!("prometheusRule.runbookBaseUrl={base}");
    let template = |set: &str| {
        Command::new(helm())
            .args([
                "template",
                RELEASE,
                "charts/herald",
                "--namespace",
                NAMESPACE,
            ])
            .args(["--set", "prometheusRule.enabled=true", "--set", set])
            .current_dir(root())
            .output()
            .unwrap()
    };
    let out = template(&set_base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_docs(
        "helm template (runbookBaseUrl)",
        &String::from_utf8(out.stdout).unwrap(),
    );
    let rule = find(&docs, "PrometheusRule", "herald-rules");
    let source: Value = serde_saphyr::from_str(&read(&root().join(COPIES[0].0))).unwrap();
    let mut want = source["spec"].clone();
    let mut moved = 0;
    for group in want["groups"].as_array_mut().unwrap() {
        for r in group["rules"].as_array_mut().unwrap() {
            let Some(url) = r["annotations"]["runbook_url"].as_str() else {
                continue;
            };
            let (_, anchor) = url.split_once('#').expect("an anchor");
            r["annotations"]["runbook_url"] = Value::from(format!("{base}#{anchor}"));
            moved += 1;
        }
    }
    assert!(moved >= 15, "{moved} runbook links");
    assert_eq!(rule.value["spec"], want);

    let refused = template("prometheusRule.runbookBaseUrl=https://docs.example/t.md#top");
    assert!(!refused.status.success(), "a base with an anchor rendered");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("runbookBaseUrl"), "{err}");
}

/// values.schema.json refuses a typo in each monitoring value.
#[test]
fn the_schema_refuses_typos_in_monitoring_values() {
    assert_schema_refuses(&[
        "serviceMonitor.namespace=Monitoring",
        "serviceMonitor.relabelings[0].sourceLabel[0]=x",
        "serviceMonitor.relabelings[0].action=rename",
        "serviceMonitor.metricRelabelings[0].target_label=x",
        "serviceMonitor.namespaces=monitoring",
        "prometheusRule.runbookBaseURL=https://docs.example/t.md",
    ]);
}

/// The operator's `HERALD_AGENT_POD_DEFAULTS`, as JSON.
fn pod_defaults_env(docs: &[Doc]) -> Value {
    let (_, c) = operator_container(docs);
    let var = c
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "HERALD_AGENT_POD_DEFAULTS")
        .and_then(|e| e.value)
        .expect("HERALD_AGENT_POD_DEFAULTS on the operator");
    serde_json::from_str(&var).unwrap()
}

/// `operator.agent.podDefaults` reaches the operator whole, after the
/// chart's `imagePullSecrets`, and is settings the operator accepts.
#[test]
fn the_agent_pod_defaults_reach_the_operator() {
    use herald::operator::pod_settings::parse_defaults;
    // By default: the agent's files are writable on volumes, no fixed user.
    let default = pod_defaults_env(render(Values::Default));
    assert_eq!(
        default,
        serde_json::json!({"securityContext": {"fsGroup": 65532}})
    );
    parse_defaults("default values", &default.to_string()).unwrap();

    let full = pod_defaults_env(render(Values::Full));
    let values: Value = serde_saphyr::from_str(&read(&root().join(FULL_VALUES))).unwrap();
    let mut want = values["operator"]["agent"]["podDefaults"].clone();
    want["imagePullSecrets"] = serde_json::json!([
        {"name": "registry-credentials"},
        {"name": "agent-registry"},
    ]);
    assert_eq!(full, want);
    let settings = parse_defaults("full values", &full.to_string()).unwrap();
    for (field, set) in [
        ("metadata", settings.metadata.is_some()),
        ("nodeSelector", settings.node_selector.is_some()),
        ("tolerations", settings.tolerations.is_some()),
        ("affinity", settings.affinity.is_some()),
        (
            "topologySpreadConstraints",
            settings.topology_spread_constraints.is_some(),
        ),
        ("priorityClassName", settings.priority_class_name.is_some()),
        ("securityContext", settings.security_context.is_some()),
        (
            "containerSecurityContext",
            settings.container_security_context.is_some(),
        ),
        ("env", settings.env.is_some()),
        ("volumes", settings.volumes.is_some()),
        ("volumeMounts", settings.volume_mounts.is_some()),
    ] {
        assert!(set, "{field} did not reach the operator");
    }
    assert_eq!(settings.image_pull_secrets.map(|s| s.len()), Some(2));
}

/// values.schema.json refuses a typo in each agent pod default.
#[test]
fn the_schema_refuses_typos_in_agent_pod_defaults() {
    let d = "operator.agent.podDefaults";
    assert_schema_refuses(&[
        "operator.agent.podDefault.nodeSelector.a=b".to_owned(),
        format!("{d}.metadata.label.a=b"),
        format!("{d}.metadata.annotation.a=b"),
        format!("{d}.labels.a=b"),
        format!("{d}.imagePullSecret[0].name=x"),
        format!("{d}.imagePullSecrets[0].nam=x"),
        format!("{d}.nodeSelecter.a=b"),
        format!("{d}.toleration[0].key=x"),
        format!("{d}.afinity.x=y"),
        format!("{d}.topologySpreadConstraint[0].maxSkew=1"),
        format!("{d}.priorityClass=x"),
        format!("{d}.securityContex.runAsUser=1"),
        format!("{d}.containerSecurityContex.runAsUser=1"),
        format!("{d}.envs[0].name=X"),
        format!("{d}.env[0].value=x"),
        format!("{d}.volume[0].name=x"),
        format!("{d}.volumeMount[0].name=x"),
        format!("{d}.volumeMounts[0].name=x"),
    ]);
}

/// The operator's extra arguments, volumes and mounts, its container
/// security context and probes reach the Deployment as the full values say.
#[test]
fn the_operator_overrides_reach_the_deployment() {
    let values: Value = serde_saphyr::from_str(&read(&root().join(FULL_VALUES))).unwrap();
    let op = &values["operator"];
    let (dep, c) = operator_container(render(Values::Full));
    let args = c.args.clone().unwrap();
    let extra: Vec<String> = serde_json::from_value(op["extraArgs"].clone()).unwrap();
    assert!(!extra.is_empty());
    assert_eq!(
        args[args.len() - extra.len()..],
        extra[..],
        "extraArgs last"
    );
    let pod = dep.spec.unwrap().template.spec.unwrap();
    assert_eq!(json(&pod.volumes), op["extraVolumes"]);
    assert_eq!(json(&c.volume_mounts), op["extraVolumeMounts"]);
    assert_eq!(json(&c.security_context), op["containerSecurityContext"]);
    assert_eq!(json(&c.liveness_probe), op["livenessProbe"]);
    assert_eq!(json(&c.readiness_probe), op["readinessProbe"]);
    // By default: no extra volume, the hardened context of values.yaml.
    let (dep, c) = operator_container(render(Values::Default));
    assert!(dep.spec.unwrap().template.spec.unwrap().volumes.is_none());
    assert!(c.volume_mounts.is_none());
    let defaults: Value =
        serde_saphyr::from_str(&read(&root().join("charts/herald/values.yaml"))).unwrap();
    assert_eq!(
        json(&c.security_context),
        defaults["operator"]["containerSecurityContext"]
    );
}

/// A typed value as JSON, to compare with the values that made it.
fn json<T: Serialize>(x: &T) -> Value {
    serde_json::to_value(x).unwrap()
}

/// `commonLabels` label every rendered object and the operator pods, and
/// no selector.
#[test]
fn common_labels_label_every_object_and_no_selector() {
    let want = chart_labels(Values::Full);
    let common: BTreeSet<&String> = want
        .keys()
        .filter(|k| !k.starts_with("app.kubernetes.io/") && !k.starts_with("helm.sh/"))
        .collect();
    let docs = render(Values::Full);
    for d in docs {
        let labels = d.value["metadata"]["labels"].as_object().unwrap();
        for k in &common {
            assert_eq!(
                labels.get(*k).and_then(Value::as_str),
                Some(want[*k].as_str()),
                "{}: {k}",
                d.label()
            );
        }
    }
    let (dep, _) = operator_container(docs);
    let spec = dep.spec.unwrap();
    let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
    let selector = spec.selector.match_labels.unwrap();
    let service: Service = find(docs, "Service", "herald-operator-metrics").typed();
    let service_selector = service.spec.unwrap().selector.unwrap();
    for k in common {
        assert_eq!(pod_labels.get(k), Some(&want[k]), "pod template: {k}");
        assert!(!selector.contains_key(k), "Deployment selector: {k}");
        assert!(!service_selector.contains_key(k), "Service selector: {k}");
    }
}

/// Chart.yaml: the Kubernetes versions of docs/install.md, an icon that is a
/// file of this repository, and the sources.
#[test]
fn the_chart_metadata_is_complete() {
    let chart: Value =
        serde_saphyr::from_str(&read(&root().join("charts/herald/Chart.yaml"))).unwrap();
    assert_eq!(chart["kubeVersion"], ">=1.28.0-0");
    let home = chart["home"].as_str().unwrap();
    assert_eq!(chart["sources"], serde_json::json!([home]));
    let icon = chart["icon"].as_str().unwrap();
    let file = icon
        .strip_prefix(&format!("{home}/raw/main/"))
        .unwrap_or_else(|| panic!("icon {icon} is not a file of {home}"));
    assert!(root().join(file).is_file(), "icon {file} does not exist");
    // 1.28 is the oldest version the CRDs' validation rules accept.
    let install = read(&root().join("docs/install.md"));
    assert!(install.contains("Kubernetes **1.28 or newer**"));
    for (version, ok) in [("1.27.9", false), ("1.28.0", true), ("1.33.13", true)] {
        let out = Command::new(helm())
            .args([
                "template",
                RELEASE,
                "charts/herald",
                "--kube-version",
                version,
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "Kubernetes {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What the schema cannot see, the templates refuse: an extra argument the
/// chart already passes from a value, and a mount of no extra volume.
#[test]
fn the_chart_refuses_conflicting_extras() {
    for (sets, says) in [
        (
            &["operator.extraArgs[0]=--concurrency=2"][..],
            "the chart sets --concurrency from operator.concurrency",
        ),
        (
            &["operator.extraArgs[0]=--namespace"],
            "the chart sets --namespace from operator.watchNamespace",
        ),
        (
            &["operator.extraArgs[0]=--agent-pod-defaults={}"],
            "operator.agent.podDefaults",
        ),
        (
            &[
                "operator.extraVolumeMounts[0].name=certs",
                "operator.extraVolumeMounts[0].mountPath=/etc/certs",
            ],
            "certs is not among operator.extraVolumes",
        ),
    ] {
        let out = template(sets);
        assert!(!out.status.success(), "{sets:?} rendered");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{sets:?}: {err}");
    }
}

/// values.schema.json refuses a typo in each value of the CRD lifecycle,
/// the aggregated roles, commonLabels and the operator's extras, security
/// context and probes, and a loosening of the hardened container.
#[test]
fn the_schema_refuses_typos_in_chart_options() {
    let o = "operator";
    assert_schema_refuses(&[
        "crd.install=false".to_owned(),
        "crds.instal=false".to_owned(),
        "crds.install=yes".to_owned(),
        "crds.kept=false".to_owned(),
        "crds.keep=no".to_owned(),
        "rbac.aggregateRole=false".to_owned(),
        "rbac.aggregateRoles=no".to_owned(),
        "commonLabel.team=a".to_owned(),
        "commonLabels.team=a b".to_owned(),
        "commonLabels.app\\.kubernetes\\.io/name=x".to_owned(),
        format!("{o}.extraArg[0]=--lease-namespace=x"),
        format!("{o}.extraArgs[0]=lease-namespace=x"),
        format!("{o}.extraArgs[0]=--lease-namespace x"),
        format!("{o}.extraVolume[0].name=x"),
        format!("{o}.extraVolumes[0].nam=x"),
        format!("{o}.extraVolumeMount[0].name=x"),
        format!("{o}.extraVolumeMounts[0].name=x,{o}.extraVolumeMounts[0].mountpath=/x"),
        format!("{o}.extraVolumeMounts[0].name=x,{o}.extraVolumeMounts[0].mountPath=x"),
        format!("{o}.containerSecurityContex.runAsUser=1"),
        format!("{o}.containerSecurityContext.runAsUsr=1"),
        format!("{o}.containerSecurityContext.readOnlyRootFileSystem=true"),
        format!("{o}.containerSecurityContext.readOnlyRootFilesystem=false"),
        format!("{o}.containerSecurityContext.allowPrivilegeEscalation=true"),
        format!("{o}.containerSecurityContext.runAsNonRoot=false"),
        format!("{o}.containerSecurityContext.privileged=true"),
        format!("{o}.containerSecurityContext.capabilities.add[0]=NET_ADMIN"),
        format!("{o}.containerSecurityContext.capabilities.drop[0]=NET_RAW"),
        format!("{o}.containerSecurityContext.capabilities.drops[0]=ALL"),
        format!("{o}.containerSecurityContext=null"),
        format!("{o}.livenesProbe.periodSeconds=5"),
        format!("{o}.livenessProbe.periodSecond=5"),
        format!("{o}.livenessProbe.periodSeconds=0"),
        format!("{o}.livenessProbe.httpGet.path=/ready"),
        format!("{o}.livenessProbe.httpGet.prot=health"),
        format!("{o}.livenessProbe.exec.command[0]=true"),
        format!("{o}.livenessProbe.successThreshold=2"),
        format!("{o}.livenessProbe=null"),
        format!("{o}.readinesProbe.periodSeconds=5"),
        format!("{o}.readinessProbe.failureTreshold=5"),
        format!("{o}.readinessProbe.httpGet.path=/healthz"),
        format!("{o}.readinessProbe.httpGet.port=metrics"),
        format!("{o}.readinessProbe.timeoutSeconds=-1"),
        "podSecurityContext=null".to_owned(),
    ]);
}

/// Every value of values.yaml as a dotted path, down to scalars, lists and
/// empty maps: `operator.resources.limits.memory`, `operator.podLabels`.
fn value_paths(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                value_paths(&path, x, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn values_yaml_paths(file: &str) -> Vec<String> {
    let values: Value = serde_saphyr::from_str(&read(&root().join(file))).unwrap();
    let mut out = Vec::new();
    value_paths("", &values, &mut out);
    out
}

/// `path` is `within` or lies beneath it.
fn covers(within: &str, path: &str) -> bool {
    path == within
        || path
            .strip_prefix(within)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// ci/full-values.yaml sets every value, so that the full render (linted,
/// parsed as its types) exercises each one.
#[test]
fn the_full_values_set_every_value() {
    // Rendered by a test of its own, since it changes the rules' text.
    let elsewhere = ["prometheusRule.runbookBaseUrl"];
    let full = values_yaml_paths(FULL_VALUES);
    let missing: Vec<String> = values_yaml_paths("charts/herald/values.yaml")
        .into_iter()
        .filter(|p| !elsewhere.contains(&p.as_str()))
        .filter(|p| !full.iter().any(|f| covers(p, f)))
        .collect();
    assert!(missing.is_empty(), "{FULL_VALUES} does not set {missing:?}");
}

/// The values table of docs/install.md has a row for every value (a row
/// for a map, such as `operator.resources`, covers what is beneath it).
#[test]
fn install_md_documents_every_value() {
    let doc = read(&root().join("docs/install.md"));
    let (_, table) = doc
        .split_once("| Value | Default | What it does |")
        .expect("docs/install.md has a values table");
    let mut documented = Vec::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap_or_default();
        documented.extend(first.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    let missing: Vec<String> = values_yaml_paths("charts/herald/values.yaml")
        .into_iter()
        .filter(|p| !documented.iter().any(|d| covers(d, p)))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/install.md's values table has no row for {missing:?}"
    );
    let known = values_yaml_paths("charts/herald/values.yaml");
    for d in &documented {
        assert!(
            known.iter().any(|p| covers(d, p)),
            "docs/install.md documents {d}, which values.yaml does not have"
        );
    }
}

/// The chart's copies are the sources, byte for byte.
#[test]
fn the_chart_copies_its_sources_exactly() {
    update_copies_if_asked();
    let mut stale = Vec::new();
    for (source, copy) in chart_copies() {
        let a = std::fs::read(root().join(&source)).unwrap();
        let b = std::fs::read(root().join(&copy)).unwrap_or_default();
        if a != b {
            stale.push(format!("{copy} differs from {source}"));
        }
    }
    // No stray file among the chart's CRDs either.
    let chart_crds: BTreeSet<String> = std::fs::read_dir(root().join(CHART_CRDS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let crds: BTreeSet<String> = source_crds().into_iter().collect();
    if chart_crds != crds {
        stale.push(format!("{CHART_CRDS} holds {chart_crds:?}, crds/ {crds:?}"));
    }
    // Helm would install a crds/ directory besides the templates, and
    // never upgrade it.
    assert!(
        !root().join("charts/herald/crds").exists(),
        "charts/herald/crds/ must not exist: the CRDs are templates (templates/crds.yaml)"
    );
    assert!(
        stale.is_empty(),
        "{}\nrefresh them with `{UPDATE_ENV}=1 cargo test --test chart`",
        stale.join("\n")
    );
}

/// The CRD files of crds/ (not its kustomization.yaml).
fn source_crds() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".herald.dev.yaml"))
        .collect();
    out.sort();
    assert_eq!(out.len(), 4, "{out:?}");
    out
}

/// (source, copy) of every file the chart carries a copy of.
fn chart_copies() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = COPIES
        .iter()
        .map(|(s, c)| ((*s).to_owned(), (*c).to_owned()))
        .collect();
    for f in source_crds() {
        out.push((format!("crds/{f}"), format!("{CHART_CRDS}/{f}")));
    }
    out
}

fn update_copies_if_asked() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os(UPDATE_ENV).is_none() {
            return;
        }
        let dir = root().join(CHART_CRDS);
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                std::fs::remove_file(p).unwrap();
            }
        }
        for (source, copy) in chart_copies() {
            std::fs::copy(root().join(source), root().join(copy)).unwrap();
        }
    });
}

/// The labels every object of a render carries besides its component:
/// the chart's, plus `commonLabels`.
fn chart_labels(v: Values) -> BTreeMap<String, String> {
    let mut want: BTreeMap<String, String> = [
        ("helm.sh/chart", "herald-0.1.0"),
        ("app.kubernetes.io/name", "herald"),
        ("app.kubernetes.io/instance", RELEASE),
        ("app.kubernetes.io/version", "0.1.0"),
        ("app.kubernetes.io/managed-by", "Helm"),
        ("app.kubernetes.io/part-of", "herald"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if v == Values::Full {
        let values: Value = serde_saphyr::from_str(&read(&root().join(FULL_VALUES))).unwrap();
        let common = values["commonLabels"].as_object().unwrap();
        assert!(!common.is_empty(), "the full values set commonLabels");
        for (k, val) in common {
            want.insert(k.clone(), val.as_str().unwrap().to_owned());
        }
    }
    want
}

/// The rendered CRDs are crds/ with only the chart's labels added to their
/// metadata, and `helm.sh/resource-policy: keep` while `crds.keep` is on
/// (the default; the full values turn it off).
#[test]
fn the_rendered_crds_are_those_of_crds_dir() {
    for v in [Values::Default, Values::Full] {
        let rendered: BTreeMap<&str, &Value> = of_kind(render(v), "CustomResourceDefinition")
            .map(|d| (d.name(), &d.value))
            .collect();
        let mut want = BTreeMap::new();
        for f in source_crds() {
            let v: Value = serde_saphyr::from_str(&read(&root().join("crds").join(&f))).unwrap();
            want.insert(v["metadata"]["name"].as_str().unwrap().to_owned(), v);
        }
        assert_eq!(
            rendered.keys().copied().collect::<Vec<_>>(),
            want.keys().map(String::as_str).collect::<Vec<_>>()
        );
        let keep = match v {
            Values::Default => serde_json::json!({"helm.sh/resource-policy": "keep"}),
            Values::Full => Value::Null,
        };
        for (name, source) in want {
            let mut got = rendered[name.as_str()].clone();
            let meta = got["metadata"].as_object_mut().unwrap();
            let labels: BTreeMap<String, String> =
                serde_json::from_value(meta.remove("labels").unwrap_or_default()).unwrap();
            assert_eq!(labels, chart_labels(v), "{v:?} {name}");
            assert_eq!(
                meta.remove("annotations").unwrap_or_default(),
                keep,
                "{v:?} {name}"
            );
            assert_eq!(got, source, "{v:?} {name}");
        }
    }
}

/// `crds.install: false` leaves the CRDs out (they are installed some other
/// way, e.g. `kubectl apply -k config/crd`); nothing else changes.
#[test]
fn crds_install_false_renders_no_crd() {
    let docs = template_ok(&["crds.install=false"]);
    assert_eq!(of_kind(&docs, "CustomResourceDefinition").count(), 0);
    let others = |docs: &[Doc]| -> Vec<String> {
        docs.iter()
            .filter(|d| d.kind() != "CustomResourceDefinition")
            .map(|d| format!("{} {}", d.kind(), d.name()))
            .collect()
    };
    assert_eq!(others(&docs), others(render(Values::Default)));
}

// ---------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------

/// A rule with its lists sorted, so that order does not matter.
fn normalized(rules: &[PolicyRule]) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let sorted = |v: &Option<Vec<String>>| {
        let mut v = v.clone().unwrap_or_default();
        v.sort();
        v
    };
    let mut out: Vec<_> = rules
        .iter()
        .map(|r| {
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            let verbs = sorted(&Some(r.verbs.clone()));
            assert!(!verbs.iter().any(|v| v == "*"), "wildcard verb");
            let resources = sorted(&r.resources);
            assert!(!resources.iter().any(|v| v == "*"), "wildcard resource");
            (sorted(&r.api_groups), resources, verbs)
        })
        .collect();
    out.sort();
    out
}

type RuleSet = Vec<(Vec<String>, Vec<String>, Vec<String>)>;

/// What a role is for, from its name, and its (kind, rules).
fn roles(docs: &[Doc]) -> BTreeMap<&'static str, (String, RuleSet)> {
    let mut out = BTreeMap::new();
    for d in docs {
        let rules = match d.kind() {
            "ClusterRole" => d.typed::<ClusterRole>().rules,
            "Role" => d.typed::<Role>().rules,
            _ => continue,
        };
        let name = d.name();
        let purpose = if name.ends_with("-leader-election") {
            "leader-election"
        } else if name.ends_with("-view") {
            "view"
        } else if name.ends_with("-edit") {
            "edit"
        } else {
            "operator"
        };
        let prev = out.insert(
            purpose,
            (
                d.kind().to_owned(),
                normalized(rules.as_deref().unwrap_or_default()),
            ),
        );
        assert!(prev.is_none(), "two {purpose} roles in {}", d.origin);
    }
    out
}

fn kustomized(dir: &str) -> Vec<Doc> {
    let text = run(kubectl(), &["kustomize", dir]);
    parse_docs(&format!("kubectl kustomize {dir}"), &text)
}

/// The aggregation labels of a role (rbac.authorization.k8s.io/aggregate-to-*).
fn aggregated_into(d: &Doc) -> BTreeSet<String> {
    d.value["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_str() == Some("true"))
        .filter_map(|(k, _)| k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-"))
        .map(str::to_owned)
        .collect()
}

/// The chart's roles are config/rbac's: the operator's (cluster-wide, or a
/// Role in the watched namespace), leader election's, and the view and edit
/// ClusterRoles for people, aggregated into the built-in roles alike.
#[test]
fn the_chart_grants_exactly_config_rbac() {
    let config = kustomized("config/rbac");
    let want = roles(&config);
    assert_eq!(
        want.keys().copied().collect::<Vec<_>>(),
        ["edit", "leader-election", "operator", "view"]
    );
    let default = roles(render(Values::Default));
    assert_eq!(default, want, "default values");
    // Watching one namespace: the same rules, as a Role there; the roles
    // for people stay ClusterRoles (the built-in ones are, and a RoleBinding
    // applies them to a namespace).
    let full = roles(render(Values::Full));
    assert_eq!(full["operator"].0, "Role");
    assert_eq!(full["operator"].1, want["operator"].1);
    assert_eq!(full["leader-election"], want["leader-election"]);
    assert_eq!(full["view"], want["view"]);
    assert_eq!(full["edit"], want["edit"]);
    for docs in [&config[..], render(Values::Default), render(Values::Full)] {
        for (suffix, into) in [("-view", &["view"][..]), ("-edit", &["admin", "edit"])] {
            let role = of_kind(docs, "ClusterRole")
                .find(|d| d.name().ends_with(suffix))
                .unwrap();
            let want: BTreeSet<String> = into.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(aggregated_into(role), want, "{}", role.label());
        }
    }
    // The roles for people read the four kinds and their status, and write
    // no status: that is the operator's.
    let kinds = [
        "deliverytiers",
        "ratelimitpolicies",
        "circuitpolicies",
        "degradationprofiles",
    ];
    for (purpose, writes) in [("view", false), ("edit", true)] {
        let rules = &want[purpose].1;
        let allows = |resource: &str, verb: &str| {
            rules.iter().any(|(groups, resources, verbs)| {
                groups == &["herald.dev"]
                    && resources.iter().any(|r| r == resource)
                    && verbs.iter().any(|v| v == verb)
            })
        };
        for kind in kinds {
            for verb in ["get", "list", "watch"] {
                assert!(allows(kind, verb), "{purpose}: {verb} {kind}");
                assert!(
                    allows(&format!("{kind}/status"), verb),
                    "{purpose}: {verb} {kind}/status"
                );
            }
            for verb in ["create", "update", "patch", "delete"] {
                assert_eq!(allows(kind, verb), writes, "{purpose}: {verb} {kind}");
                assert!(
                    !allows(&format!("{kind}/status"), verb),
                    "{purpose}: {verb} {kind}/status"
                );
            }
        }
        assert_eq!(
            allows("deliverytiers/scale", "patch"),
            writes,
            "{purpose}: kubectl scale tier"
        );
    }
    // rbac.aggregateRoles: false leaves them out, and only them.
    let without = roles(&template_ok(&["rbac.aggregateRoles=false"]));
    assert_eq!(
        without.keys().copied().collect::<Vec<_>>(),
        ["leader-election", "operator"]
    );
    let scoped = of_kind(render(Values::Full), "Role")
        .find(|d| !d.name().ends_with("-leader-election"))
        .unwrap();
    assert_eq!(scoped.namespace(), Some("bots"));
}

/// Every binding points at a rendered role and at the operator's
/// ServiceAccount, which the Deployment runs as.
#[test]
fn the_bindings_tie_the_roles_to_the_operator() {
    for v in [Values::Default, Values::Full] {
        let docs = render(v);
        let dep: Deployment = of_kind(docs, "Deployment").next().unwrap().typed();
        let sa = dep
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .unwrap();
        find(docs, "ServiceAccount", &sa);
        let mut bound = BTreeSet::new();
        for d in docs {
            let (role_ref, subjects) = match d.kind() {
                "ClusterRoleBinding" => {
                    let b: ClusterRoleBinding = d.typed();
                    (b.role_ref, b.subjects)
                }
                "RoleBinding" => {
                    let b: RoleBinding = d.typed();
                    (b.role_ref, b.subjects)
                }
                _ => continue,
            };
            let role = find(docs, &role_ref.kind, &role_ref.name);
            if role.kind() == "Role" {
                assert_eq!(role.namespace(), d.namespace(), "{}", d.label());
            }
            let want = Subject {
                kind: "ServiceAccount".to_owned(),
                name: sa.clone(),
                namespace: Some(NAMESPACE.to_owned()),
                api_group: None,
            };
            assert_eq!(subjects.unwrap_or_default(), [want], "{}", d.label());
            bound.insert(role_ref.name);
        }
        // The aggregated roles are bound by aggregation into the built-in
        // view/edit/admin roles, never to the operator.
        let (aggregated, roles): (Vec<&Doc>, Vec<&Doc>) = docs
            .iter()
            .filter(|d| d.kind() == "Role" || d.kind() == "ClusterRole")
            .partition(|d| !aggregated_into(d).is_empty());
        assert_eq!(aggregated.len(), 2, "{v:?}: the view and edit roles");
        let roles: BTreeSet<String> = roles.iter().map(|d| d.name().to_owned()).collect();
        assert_eq!(bound, roles, "{v:?}: every operator role bound once");
    }
}

// ---------------------------------------------------------------------------
// The operator Deployment
// ---------------------------------------------------------------------------

fn operator_container(docs: &[Doc]) -> (Deployment, Container) {
    let dep: Deployment = of_kind(docs, "Deployment").next().unwrap().typed();
    let c = dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .clone();
    (dep, c)
}

#[test]
fn the_operator_runs_hardened() {
    for docs in [
        render(Values::Default),
        render(Values::Full),
        &kustomized("config/manager")[..],
    ] {
        let (dep, c) = operator_container(docs);
        let pod = dep.spec.unwrap().template.spec.unwrap();
        let at = &docs[0].origin;
        assert_eq!(
            pod.security_context.and_then(|s| s.run_as_non_root),
            Some(true),
            "{at}"
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap_or_default(), ["ALL"], "{at}");
        assert!(caps.add.unwrap_or_default().is_empty(), "{at}");
        // Probes on the health port; the metrics port is a named port.
        let port = |name: &str| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{at}: no port {name}"))
                .container_port
        };
        let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"), "{at}");
        let ready = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"), "{at}");
        let args = c.args.clone().unwrap_or_default();
        let arg = |flag: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{flag}=")))
                .unwrap_or_else(|| panic!("{at}: no {flag} in {args:?}"))
                .to_owned()
        };
        assert_eq!(
            arg("--health-addr"),
            format!("0.0.0.0:{}", port("health")),
            "{at}"
        );
        assert_eq!(
            arg("--metrics-addr"),
            format!("0.0.0.0:{}", port("metrics")),
            "{at}"
        );
        for probe in [live, ready] {
            assert_eq!(serde_json::to_value(&probe.port).unwrap(), "health", "{at}");
        }
        assert!(
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "HERALD_AGENT_IMAGE" && e.value.is_some()),
            "{at}"
        );
    }
}

/// The metrics Service selects the operator pods and targets the named port.
#[test]
fn the_metrics_service_reaches_the_operator() {
    for v in [Values::Default, Values::Full] {
        let docs = render(v);
        let (dep, _) = operator_container(docs);
        let pod_labels = dep.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        let svc: Service = find(docs, "Service", "herald-operator-metrics").typed();
        let spec = svc.spec.unwrap();
        for (k, val) in spec.selector.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&val), "{v:?}: selector {k}");
        }
        let port = &spec.ports.unwrap()[0];
        assert_eq!(
            serde_json::to_value(&port.target_port).unwrap(),
            "metrics",
            "{v:?}"
        );
    }
}

/// Every flag the chart passes is one `herald operator` accepts with that
/// value: clap parses (and rejects) arguments in order, before `--help`.
#[test]
fn herald_operator_accepts_the_rendered_arguments() {
    for v in [Values::Default, Values::Full] {
        let (_, c) = operator_container(render(v));
        let mut args = c.args.unwrap();
        assert_eq!(args.first().map(String::as_str), Some("operator"));
        args.push("--help".to_owned());
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{v:?}: herald {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// NOTES.txt as `helm install --dry-run=client` prints it (no cluster is
/// contacted): the first steps, with sample files that exist.
#[test]
fn notes_name_the_first_steps() {
    let scratch = tempfile::tempdir().unwrap();
    for (v, prefix) in [
        (Values::Default, "kubectl"),
        (Values::Full, "kubectl -n bots"),
    ] {
        let mut args = vec![
            "install",
            RELEASE,
            "charts/herald",
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ];
        args.extend(values_args(v));
        let out = Command::new(helm())
            .args(&args)
            .current_dir(root())
            .env("KUBECONFIG", scratch.path().join("none"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let notes = text
            .split_once("\nNOTES:\n")
            .unwrap_or_else(|| panic!("{v:?}: no NOTES in {text}"))
            .1;
        for want in [
            format!("{prefix} apply -f config/samples/"),
            format!("{prefix} get tier"),
        ] {
            assert!(
                notes.contains(&want),
                "{v:?}: NOTES lack {want:?}:\n{notes}"
            );
        }
        for word in notes.split_whitespace() {
            if let Some(file) = word.strip_prefix("config/samples/")
                && file.ends_with(".yaml")
            {
                let path = root().join("config/samples").join(file);
                assert!(path.is_file(), "NOTES name {word}, which does not exist");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// kustomize
// ---------------------------------------------------------------------------

/// Every directory of config/ that holds a kustomization.
fn kustomize_dirs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| format!("config/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_kustomize_tree_builds() {
    let dirs = kustomize_dirs();
    for want in [
        "argocd",
        "crd",
        "default",
        "grafana",
        "manager",
        "prometheus",
        "rbac",
        "standalone",
    ] {
        assert!(dirs.contains(&format!("config/{want}")), "config/{want}");
    }
    for dir in dirs {
        let docs = kustomized(&dir);
        assert!(!docs.is_empty(), "{dir} renders nothing");
        check_types(&docs);
    }
}

#[test]
fn config_default_installs_the_operator_in_herald_system() {
    let docs = kustomized("config/default");
    assert_eq!(of_kind(&docs, "CustomResourceDefinition").count(), 4);
    for (kind, name) in [
        ("Namespace", "herald-system"),
        ("ServiceAccount", "herald-operator"),
        ("ClusterRole", "herald-operator"),
        ("ClusterRoleBinding", "herald-operator"),
        ("Role", "herald-operator-leader-election"),
        ("RoleBinding", "herald-operator-leader-election"),
        ("Deployment", "herald-operator"),
        ("Service", "herald-operator-metrics"),
    ] {
        let d = find(&docs, kind, name);
        let cluster_scoped = matches!(
            kind,
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        );
        if !cluster_scoped {
            assert_eq!(d.namespace(), Some(NAMESPACE), "{}", d.label());
        }
    }
    // The same RBAC as config/rbac.
    assert_eq!(roles(&docs), roles(&kustomized("config/rbac")));
}

/// default, prometheus and grafana compose into one install (no clashing
/// object), as the commented lines in config/default suggest.
#[test]
fn default_prometheus_and_grafana_compose() {
    let dir = tempfile::tempdir().unwrap();
    // kustomize takes relative paths only: climb from the scratch dir to /.
    let up = "../".repeat(dir.path().canonicalize().unwrap().components().count() - 1);
    let repo = root().canonicalize().unwrap();
    let repo = repo.strip_prefix("/").unwrap();
    let res: Vec<String> = ["default", "prometheus", "grafana"]
        .iter()
        .map(|d| format!("  - {up}{}", repo.join("config").join(d).display()))
        .collect();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}\n",
            res.join("\n")
        ),
    )
    .unwrap();
    let docs = kustomized(&dir.path().to_string_lossy());
    check_types(&docs);
    find(&docs, "PrometheusRule", "herald-rules");
    find(&docs, "ServiceMonitor", "herald-agents");
    let cm: ConfigMap = find(&docs, "ConfigMap", "herald-dashboard").typed();
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["grafana_dashboard"],
        "1"
    );
    let json = &cm.data.unwrap_or_default()["herald-dashboard.json"];
    assert_eq!(json, &read(&root().join(COPIES[1].0)));
}

/// The monitors select what the operator creates: agent Services labelled
/// by src/operator/names.rs, on the port desired.rs names.
#[test]
fn the_agent_monitor_selects_the_operators_services() {
    let labels = herald::operator::names::common_labels("any-tier");
    for docs in [
        kustomized("config/prometheus"),
        render(Values::Full).to_vec(),
    ] {
        let m = of_kind(&docs, "ServiceMonitor")
            .find(|d| d.name().ends_with("-agents"))
            .unwrap();
        let sel = m.value["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        for (k, v) in sel {
            assert_eq!(
                labels.get(k).map(String::as_str),
                v.as_str(),
                "{}: selector {k}",
                m.label()
            );
        }
        assert_eq!(m.value["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(m.value["spec"]["endpoints"][0]["path"], "/metrics");
    }
}

/// The standalone agent runs `herald run -f` on the file its ConfigMap
/// mounts, and that file is a valid herald config.
#[test]
fn the_standalone_agent_runs_its_mounted_config() {
    let docs = kustomized("config/standalone");
    let dep: Deployment = find(&docs, "Deployment", "herald-standalone").typed();
    let spec = dep.spec.unwrap();
    assert_eq!(spec.replicas, Some(1), "one writer per embedded queue");
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[..2], ["run", "-f"]);
    let file = Path::new(&args[2]);
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == file.parent().unwrap())
        .expect("the config directory is mounted");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let cm_name = &volume.config_map.as_ref().unwrap().name;
    let cm: ConfigMap = find(&docs, "ConfigMap", cm_name).typed();
    let data = cm.data.unwrap();
    let key = file.file_name().unwrap().to_string_lossy();
    let config = data
        .get(key.as_ref())
        .unwrap_or_else(|| panic!("{cm_name} has no {key}"));
    assert_eq!(config, &read(&root().join("config/standalone/herald.yaml")));
    // Hardened like the operator.
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    // herald itself accepts the file.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["validate", "-f", "config/standalone/herald.yaml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald validate config/standalone/herald.yaml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
