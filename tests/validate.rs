//! `herald validate`: the samples pass; each bad document in the table is
//! rejected with the field path (and position) a user needs to fix it.

use herald::validate::{RULES_NOT_CHECKED, Severity, validate_sources};

#[path = "common/bad_documents.rs"]
mod bad_documents;

use bad_documents::{CBP, RLP, TG, TIER, cases};

#[test]
fn bad_documents_are_rejected_naming_the_field() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for bad_documents::BadDocument {
        what,
        doc,
        path,
        line,
        ..
    } in cases
    {
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
fn cel_rules_still_judge_the_fields_the_schema_accepted() {
    // An unknown field (schema) and maxDelay below initialDelay (CEL): both
    // are named, as the API server names both.
    let doc =
        format!("{CBP}spec:\n  turbo: true\n  retry:\n    initialDelay: 10s\n    maxDelay: 1s\n");
    let report = validate_sources([("both.yaml", doc.as_str())]);
    let paths: Vec<&str> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.path.as_deref().unwrap_or(""))
        .collect();
    assert!(paths.contains(&"spec.turbo"), "{paths:?}");
    assert!(paths.contains(&"spec.retry.maxDelay"), "{paths:?}");
    // A rule over a field the schema refused saw bad data: its verdict is
    // dropped, and the report says some rules were not checked.
    let doc = format!("{CBP}spec:\n  breaker: {{failureRateThreshold: high}}\n");
    let report = validate_sources([("typed.yaml", doc.as_str())]);
    let texts: Vec<String> = report.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("spec.breaker.failureRateThreshold")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains(RULES_NOT_CHECKED)),
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.contains("spec.breaker")).count(),
        1,
        "{texts:?}"
    );
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

/// `herald validate` with `stdin` as input.
fn herald_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run herald");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("run herald")
}

#[test]
fn stdin_json_and_junit_reports_for_ci() {
    let good = format!("{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n");
    let ok = herald_with_stdin(&["validate", "-f", "-"], &good);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stderr).contains("1 herald object(s) valid"));

    // A duplicate is an error, and neither copy counts as valid. A later
    // document's error is listed after an earlier one's, whatever check
    // found it.
    let bad = format!(
        "{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n---\n{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n---\n{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  perChat: {{rate: 40, period: 1s}}\n"
    );
    let out = herald_with_stdin(&["validate", "-f", "-"], &bad);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("<stdin>:"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("; 0 herald object(s) valid"),
        "{out:?}"
    );

    let json = herald_with_stdin(&["validate", "-o", "json", "-f", "-"], &bad);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // The third document fails the schema and never becomes an object.
    assert_eq!(
        (v["objects"].as_u64(), v["valid"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    let lines: Vec<u64> = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["line"].as_u64().unwrap())
        .collect();
    assert!(lines.len() >= 2 && lines.is_sorted(), "{v}");
    assert!(
        v["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "spec.perChat"
                || d["message"].as_str().unwrap_or("").contains("perChat")),
        "{v}"
    );

    let junit = herald_with_stdin(&["validate", "-o", "junit", "-f", "-"], &bad);
    assert_eq!(junit.status.code(), Some(1));
    let xml = String::from_utf8_lossy(&junit.stdout);
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<testsuite name=\"herald validate\""), "{xml}");
    assert!(
        xml.contains("classname=\"&lt;stdin&gt;\" name=\"RateLimitPolicy/p\""),
        "{xml}"
    );
    assert!(xml.contains("<failure message="), "{xml}");
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

#[test]
fn simulate_reads_its_config_from_stdin_too() {
    let config = std::fs::read_to_string("config/samples/full.yaml").unwrap();
    let out = herald_with_stdin(
        &[
            "simulate",
            "-f",
            "-",
            "--workload",
            "config/samples/workloads/steady.yaml",
            "--json",
        ],
        &config,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.is_object(), "{report}");
}
