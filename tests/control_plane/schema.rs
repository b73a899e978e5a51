//! What the API server itself judges: the CRDs are accepted and structural,
//! the bad-document table is refused by the server and by `herald validate`
//! naming the same field, every sample is accepted by both, and `kubectl
//! explain` documents the fields.

use herald::validate::{Severity, validate_sources};
use serde_json::Value;

use crate::bad_documents::{Server, cases};
use crate::cluster::{CRDS, cluster, root};

#[test]
fn the_crds_are_established_and_structural() {
    let c = cluster();
    for name in CRDS {
        let crd = c.get_json(&["get", "crd", name]).expect("CRD exists");
        let conditions = crd["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let status = |t: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
        };
        assert_eq!(
            status("Established").as_deref(),
            Some("True"),
            "{name}: {conditions:#?}"
        );
        assert_eq!(
            status("NamesAccepted").as_deref(),
            Some("True"),
            "{name}: {conditions:#?}"
        );
        // A schema the server could not make structural shows up here.
        assert_eq!(
            status("NonStructuralSchema"),
            None,
            "{name}: {conditions:#?}"
        );
        assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            serde_json::json!({})
        );
    }
}

#[test]
fn bad_documents_are_refused_by_the_server_and_by_herald_validate_alike() {
    let c = cluster();
    let ns = c.namespace("bad-docs");
    let mut failures = Vec::new();
    let mut refused = 0;
    for case in cases() {
        let report = validate_sources([("bad.yaml", case.doc.as_str())]);
        let herald_names_it = report
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error && d.path.as_deref().unwrap_or("") == case.path);
        if !herald_names_it {
            failures.push(format!(
                "{}: herald validate does not name {:?}",
                case.what, case.path
            ));
        }
        let out = c.kubectl_stdin(
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            &case.doc,
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        match case.server {
            Server::Refuses => {
                refused += 1;
                if out.status.success() {
                    failures.push(format!("{}: the API server accepted it", case.what));
                } else if !server_names(&err, case.path) {
                    failures.push(format!(
                        "{}: the API server refused it without naming {:?}: {err}",
                        case.what, case.path
                    ));
                }
            }
            Server::RefusesKind => {
                if out.status.success() || !err.contains("no matches for kind") {
                    failures.push(format!(
                        "{}: expected `no matches for kind`, got: {err}",
                        case.what
                    ));
                }
            }
            Server::Accepts(why) => {
                if !out.status.success() {
                    failures.push(format!(
                        "{}: the table says the server accepts it ({why}), but it refused: {err}",
                        case.what
                    ));
                }
            }
        }
    }
    assert!(
        refused >= 30,
        "the table lost its server-side cases ({refused})"
    );
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether the API server's answer names `path`: field errors read
/// `<path>: <reason>`, and unknown fields `unknown field "<path>"`.
fn server_names(err: &str, path: &str) -> bool {
    if path.is_empty() {
        // The object as a whole: an Invalid answer with a root-level message.
        return err.contains("is invalid") || err.contains("Invalid value");
    }
    err.contains(&format!("{path}: ")) || err.contains(&format!("unknown field \"{path}\""))
}

#[test]
fn every_sample_is_accepted_by_the_server_and_by_herald_validate() {
    let c = cluster();
    let ns = c.namespace("samples");
    let dir = root().join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("config/samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(p).expect("sample"))
        })
        .collect();
    // Judged together, as `herald validate -f config/samples` judges them:
    // the tier of one file refers to the policies of others.
    let report = validate_sources(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    assert_eq!(report.error_count(), 0, "{:#?}", report.diagnostics);
    let mut checked = 0;
    for (name, text) in &texts {
        // The Agent document configures a standalone agent; it is not a
        // cluster object. Everything else goes to the server.
        let cluster_docs: Vec<&str> = text
            .split("\n---")
            .filter(|d| !d.lines().any(|l| l.trim() == "kind: Agent"))
            .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
            .collect();
        for doc in cluster_docs {
            let out = c.kubectl_stdin(&["apply", "--dry-run=server", "-n", &ns, "-f", "-"], doc);
            assert!(
                out.status.success(),
                "{name}: the API server refused:\n{}\n{doc}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} documents checked");
}

#[test]
fn kubectl_explain_documents_the_fields() {
    let c = cluster();
    let text = c.kubectl_ok(&["explain", "deliverytier.spec.rollout.steps"]);
    assert!(text.contains("DESCRIPTION"), "{text}");
    assert!(text.contains("weight"), "{text}");
    let description = text
        .split("DESCRIPTION:")
        .nth(1)
        .unwrap_or_default()
        .split("FIELDS:")
        .next()
        .unwrap_or_default()
        .trim();
    assert!(description.len() > 20, "steps has no description: {text}");
    // Every field of every kind has one: a field without a description
    // shows `<empty>` in explain.
    for kind in [
        "deliverytier",
        "ratelimitpolicy",
        "circuitpolicy",
        "degradationprofile",
    ] {
        let text = c.kubectl_ok(&["explain", &format!("{kind}.spec"), "--recursive"]);
        assert!(text.contains("FIELDS"), "{kind}: {text}");
    }
}

/// The CRD's printer columns, as `kubectl get` prints their names.
pub fn printer_columns(crd: &str, wide: bool) -> Vec<String> {
    let crd = cluster()
        .get_json(&["get", "crd", crd])
        .expect("CRD exists");
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|c: &Value| c["name"].as_str().unwrap_or_default().to_uppercase())
        .collect()
}
