//! `herald validate`: the samples pass; each bad document in the table is
//! rejected with the field path (and position) a user needs to fix it.

use herald::validate::{Severity, validate_sources};

const RLP: &str = "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: p\n";
const CBP: &str = "apiVersion: herald.dev/v1alpha1\nkind: CircuitPolicy\nmetadata:\n  name: c\n";
const DGP: &str =
    "apiVersion: herald.dev/v1alpha1\nkind: DegradationProfile\nmetadata:\n  name: d\n";
const TIER: &str = "apiVersion: herald.dev/v1alpha1\nkind: DeliveryTier\nmetadata:\n  name: t\n";
const TG: &str = "spec:\n  channel: telegram\n  telegram:\n    tokenSecretRef: {name: s, key: k}\n";

/// (what is wrong, document, the path that must be named, the line it is on)
fn cases() -> Vec<(&'static str, String, &'static str, Option<usize>)> {
    vec![
        ("per-chat above global", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  perChat:\n    rate: 40\n    period: 1s\n"), "spec.perChat.rate", Some(8)),
        ("per-group above global", format!("{RLP}spec:\n  global: {{rate: 1, period: 1m}}\n  perChat: {{rate: 1, period: 1m}}\n  perGroup: {{rate: 20, period: 1m}}\n"), "spec.perGroup.rate", None),
        ("burst zero", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s, burst: 0}}\n"), "spec.global.burst", Some(6)),
        ("rate is a string", format!("{RLP}spec:\n  global: {{rate: fast, period: 1s}}\n"), "spec.global.rate", None),
        ("bad duration", format!("{RLP}spec:\n  global: {{rate: 30, period: 1 second}}\n"), "spec.global.period", None),
        ("zero period", format!("{RLP}spec:\n  global: {{rate: 30, period: 0s}}\n"), "spec.global.period", None),
        ("unknown field", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  turbo: true\n"), "spec.turbo", Some(7)),
        ("unknown backend", format!("{RLP}spec:\n  backend: etcd\n"), "spec.backend", Some(6)),
        ("guard too large", format!("{RLP}spec:\n  pacing: {{guardPercent: 50}}\n"), "spec.pacing.guardPercent", None),
        ("retry maxDelay below initialDelay", format!("{CBP}spec:\n  retry:\n    initialDelay: 10s\n    maxDelay: 1s\n"), "spec.retry.maxDelay", Some(8)),
        ("failure threshold over 100", format!("{CBP}spec:\n  breaker: {{failureRateThreshold: 150}}\n"), "spec.breaker.failureRateThreshold", None),
        ("max open below open", format!("{CBP}spec:\n  breaker: {{openDuration: 20s, maxOpenDuration: 16s}}\n"), "spec.breaker.maxOpenDuration", None),
        ("unknown jitter", format!("{CBP}spec:\n  retry: {{jitter: wobbly}}\n"), "spec.retry.jitter", None),
        ("duplicate bulkhead", format!("{CBP}spec:\n  bulkheads:\n    - {{messageType: a, maxConcurrent: 1}}\n    - {{messageType: a, maxConcurrent: 2}}\n"), "spec.bulkheads[1]", Some(8)),
        ("overall below per-attempt", format!("{CBP}spec:\n  timeouts: {{perAttempt: 1m, overall: 10s}}\n"), "spec.timeouts.overall", None),
        ("levels out of order", format!("{DGP}spec:\n  levels:\n    - level: SEVERE\n      entry: {{queueDepth: 10}}\n    - level: MINOR\n      entry: {{queueDepth: 5}}\n"), "spec.levels", Some(6)),
        ("exit above entry", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{queueDepth: 10}}\n      exit: {{queueDepth: 20}}\n"), "spec.levels[0].exit.queueDepth", Some(9)),
        ("exit age above entry age", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{oldestAge: 1m}}\n      exit: {{oldestAge: 2m}}\n"), "spec.levels[0].exit.oldestAge", None),
        ("level without entry threshold", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{}}\n"), "spec.levels[0].entry", None),
        ("unknown level", format!("{DGP}spec:\n  levels:\n    - level: APOCALYPSE\n      entry: {{queueDepth: 1}}\n"), "spec.levels[0].level", None),
        ("telegram without token", format!("{TIER}spec:\n  channel: telegram\n"), "spec.telegram", None),
        ("webhook without url", format!("{TIER}spec:\n  channel: webhook\n  webhook: {{}}\n"), "spec.webhook", None),
        ("spool without path", format!("{TIER}spec:\n  channel: spool\n"), "spec.spool", None),
        ("replicas without redis", format!("{TIER}{TG}  replicas: 3\n"), "spec.store.type", None),
        ("canary weights not increasing", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 50}}, {{weight: 10}}, {{weight: 100}}]\n"), "spec.rollout.steps", None),
        ("canary not ending at 100", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 10}}, {{weight: 50}}]\n"), "spec.rollout.steps", None),
        ("canary weight over 100", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 150}}]\n"), "spec.rollout.steps[0].weight", None),
        ("redis store without settings", format!("{TIER}{TG}  store: {{type: redis}}\n"), "spec.store.redis", None),
        ("falls back to itself", format!("{TIER}{TG}  fallbackTiers: [t]\n"), "spec.fallbackTiers", None),
        ("dangling policy reference", format!("{TIER}{TG}  rateLimitPolicyRef: {{name: nowhere}}\n"), "spec.rateLimitPolicyRef.name", Some(9)),
        ("dangling fallback tier", format!("{TIER}{TG}  fallbackTiers: [ghost]\n"), "spec.fallbackTiers[0]", Some(9)),
        ("bad api url", format!("{TIER}spec:\n  channel: telegram\n  telegram:\n    tokenSecretRef: {{name: s, key: k}}\n    apiUrl: ftp://x\n"), "spec.telegram.apiUrl", Some(9)),
        ("missing channel", format!("{TIER}spec:\n  priority: 1\n"), "spec.channel", None),
        ("missing spec", TIER.to_owned(), "spec", None),
        ("bad name", "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n".to_owned(), "metadata.name", Some(4)),
        ("tier name not a DNS label", format!("{TIER}{TG}").replace("name: t\n", "name: t.v2\n"), "", None),
        ("unknown herald kind", "apiVersion: herald.dev/v1alpha1\nkind: Tier\nmetadata: {name: x}\nspec: {}\n".to_owned(), "kind", Some(2)),
        ("wrong version", "apiVersion: herald.dev/v1\nkind: DeliveryTier\nmetadata: {name: x}\n".to_owned(), "apiVersion", Some(1)),
    ]
}

#[test]
fn bad_documents_are_rejected_naming_the_field() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for (what, doc, path, line) in cases {
        let report = validate_sources([("bad.yaml", doc.as_str())]);
        let errors: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let hit = errors
            .iter()
            .find(|d| d.path.as_deref().unwrap_or("") == path);
        let Some(hit) = hit else {
            panic!(
                "{what}: no error at {path}; got {:#?}",
                errors.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            );
        };
        if let Some(line) = line {
            assert_eq!(hit.position.line, line, "{what}: {hit}");
        }
        let text = hit.to_string();
        assert!(text.starts_with("bad.yaml:"), "{what}: {text}");
        assert!(text.contains(path), "{what}: {text}");
        assert!(text.contains("DNS") || !path.is_empty(), "{what}: {text}");
    }
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    for (doc, line) in [
        ("apiVersion: herald.dev/v1alpha1\nkind: [DeliveryTier\n", 3),
        ("a: 1\n  b: 2\n", 2),
        (
            "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nkind: RateLimitPolicy\n",
            3,
        ),
    ] {
        let report = validate_sources([("broken.yaml", doc)]);
        assert_eq!(report.error_count(), 1, "{doc}");
        let d = &report.diagnostics[0];
        assert_eq!(d.position.line, line, "{d}");
        assert!(d.position.col >= 1);
    }
}

#[test]
fn non_herald_documents_are_skipped_with_a_note() {
    let doc = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
    let report = validate_sources([("other.yaml", doc)]);
    assert_eq!(report.error_count(), 0);
    assert_eq!(report.diagnostics.len(), 1);
    assert_eq!(report.diagnostics[0].severity, Severity::Note);
    assert!(report.diagnostics[0].to_string().contains("skipped"));
}

#[test]
fn fallback_cycles_and_duplicates_are_errors() {
    let a = format!("{TIER}{TG}  fallbackTiers: [u]\n")
        .replace("name: t", "name: a")
        .replace("[u]", "[b]");
    let b = format!("{TIER}{TG}  fallbackTiers: [a]\n").replace("name: t", "name: b");
    let report = validate_sources([
        ("a.yaml", a.as_str()),
        ("b.yaml", b.as_str()),
        ("c.yaml", b.as_str()),
    ]);
    let text: Vec<String> = report.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("fallback cycle: a -> b -> a")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("c.yaml") && t.contains("duplicate")),
        "{text:#?}"
    );
}

#[test]
fn defaults_fill_a_minimal_tier() {
    let doc = format!("{TIER}{TG}");
    let report = validate_sources([("min.yaml", doc.as_str())]);
    assert_eq!(report.error_count(), 0, "{:?}", report.diagnostics);
    let herald::validate::Object::Tier(t) = &report.objects[0].object else {
        panic!("not a tier")
    };
    assert_eq!(t.spec.replicas, 1);
    assert_eq!(
        t.spec.telegram.as_ref().unwrap().api_url,
        "https://api.telegram.org"
    );
    assert_eq!(t.spec.healing.restart_budget, 3);
}

fn herald(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run herald")
}

#[test]
fn cli_exit_codes() {
    let ok = herald(&["validate", "-f", "config/samples"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("limits.yaml");
    std::fs::write(
        &bad,
        format!(
            "{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  perChat: {{rate: 40, period: 1s}}\n"
        ),
    )
    .unwrap();
    let out = herald(&["validate", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("limits.yaml:7:"), "{stdout}");
    assert!(stdout.contains("perChat"), "{stdout}");

    let missing = herald(&["validate", "-f", "no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    let binary = dir.path().join("blob.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    assert_eq!(
        herald(&["validate", "-f", binary.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn crd_command_prints_one_or_all() {
    let one = herald(&["crd", "--kind", "DeliveryTier"]);
    assert!(one.status.success());
    let text = String::from_utf8_lossy(&one.stdout);
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 1);
    let all = herald(&["crd"]);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout)
            .matches("kind: CustomResourceDefinition")
            .count(),
        4
    );
    assert_eq!(herald(&["crd", "--kind", "Nope"]).status.code(), Some(2));
}
