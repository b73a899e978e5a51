//! Argo CD health checks for the herald.dev kinds (config/argocd/): every
//! fixture in tests/fixtures/argocd/ runs through its kind's `health.lua`
//! under a real Lua interpreter and must get the expected status and message;
//! `argocd-cm-patch.yaml` is generated from the same scripts and must merge
//! into an argocd-cm verbatim; the kustomize tree must build.
//!
//! What status the operator writes is src/api's business; this file only
//! pins how Argo CD reads it. Invariant: nothing here skips — without
//! `lua5.4` or `kubectl` the tests fail and say how to install them.
//!
//! Regenerate the patch after editing a script:
//! `HERALD_UPDATE_ARGOCD_CM=1 cargo test --test argocd_health`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

#[path = "common/argocd_lua.rs"]
mod argocd_lua;

use argocd_lua::{GROUP, run_health, script_path};

const KINDS: [&str; 4] = [
    "DeliveryTier",
    "RateLimitPolicy",
    "CircuitPolicy",
    "DegradationProfile",
];
/// What an Argo CD health script may answer for a herald object.
const STATUSES: [&str; 4] = ["Healthy", "Progressing", "Degraded", "Suspended"];
const CM_KEY_PREFIX: &str = "resource.customizations.health.";
const UPDATE_ENV: &str = "HERALD_UPDATE_ARGOCD_CM";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn argocd_dir() -> PathBuf {
    root().join("config").join("argocd")
}

fn cm_key(kind: &str) -> String {
    format!("{CM_KEY_PREFIX}{GROUP}_{kind}")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("kubectl could not be started ({e}); install it (see .ci/run) to test config/argocd")
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("herald-argocd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the Lua harness ----------------------------------------------------

// ---- fixtures ------------------------------------------------------------

struct Fixture {
    name: String,
    kind: String,
    description: String,
    status: String,
    message: String,
    object: Value,
}

fn fixtures() -> Vec<Fixture> {
    let dir = root().join("tests").join("fixtures").join("argocd");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let v: Value = serde_json::from_str(&read(path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let field = |ptr: &str| {
                v.pointer(ptr)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{name}: {ptr} must be a string"))
                    .to_owned()
            };
            let api_version = field("/object/apiVersion");
            assert!(
                api_version.starts_with(&format!("{GROUP}/")),
                "{name}: apiVersion {api_version} is not in {GROUP}"
            );
            let kind = field("/object/kind");
            assert!(
                KINDS.contains(&kind.as_str()),
                "{name}: unknown kind {kind}"
            );
            let status = field("/expect/status");
            assert!(
                STATUSES.contains(&status.as_str()),
                "{name}: expected status {status} is not an Argo CD health status"
            );
            Fixture {
                description: field("/description"),
                message: field("/expect/message"),
                object: v["object"].clone(),
                name,
                kind,
                status,
            }
        })
        .collect()
}

#[test]
fn every_fixture_gets_its_expected_health() {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 12,
        "only {} fixtures in tests/fixtures/argocd",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for f in &fixtures {
        match run_health(&script_path(&f.kind), &f.object) {
            Ok((status, message)) if status == f.status && message.contains(&f.message) => {}
            Ok((status, message)) => failures.push(format!(
                "{} ({}): got {status} {message:?}, want {} containing {:?}",
                f.name, f.description, f.status, f.message
            )),
            Err(e) => failures.push(format!("{} ({}): {e}", f.name, f.description)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} Argo CD health fixtures failed:\n  {}",
        failures.len(),
        fixtures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn fixtures_cover_every_kind_and_answer() {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in fixtures() {
        seen.entry(f.kind).or_default().insert(f.status);
    }
    for kind in KINDS {
        let statuses = seen.get(kind).cloned().unwrap_or_default();
        let wanted: &[&str] = if kind == "DeliveryTier" {
            &STATUSES
        } else {
            &["Healthy", "Progressing", "Degraded"]
        };
        for status in wanted {
            assert!(
                statuses.contains(*status),
                "no fixture shows a {kind} as {status}"
            );
        }
    }
}

#[test]
fn one_health_script_per_kind_and_embeddable() {
    let mut dirs: Vec<String> = std::fs::read_dir(argocd_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{GROUP}_")))
        .collect();
    dirs.sort();
    let mut want: Vec<String> = KINDS.iter().map(|k| format!("{GROUP}_{k}")).collect();
    want.sort();
    assert_eq!(dirs, want, "config/argocd must hold one directory per kind");
    for kind in KINDS {
        let path = script_path(kind);
        let text = read(&path);
        // These keep the YAML block scalar in argocd-cm-patch.yaml exact.
        assert!(
            text.ends_with('\n') && !text.ends_with("\n\n"),
            "{}: must end with exactly one newline",
            path.display()
        );
        for (i, line) in text.lines().enumerate() {
            assert!(
                line.is_ascii() && !line.contains('\t') && line.trim_end() == line,
                "{}:{}: ASCII, no tabs, no trailing blanks",
                path.display(),
                i + 1
            );
        }
    }
}

#[test]
fn harness_runs_scripts_like_argocd() {
    let scratch = Scratch::new("harness");
    let echo = scratch.0.join("echo.lua");
    std::fs::write(
        &echo,
        "return { status = obj.status.phase, message = obj.metadata.name }\n",
    )
    .unwrap();
    let tricky = "quote\" back\\slash\nnew line\ttab \u{e9}t\u{e9} \u{1f680} ]]";
    let obj =
        json!({"metadata": {"name": tricky}, "status": {"phase": "Healthy", "n": 1.5, "m": null}});
    assert_eq!(
        run_health(&echo, &obj).unwrap(),
        ("Healthy".to_owned(), tricky.to_owned())
    );

    // Argo CD gives scripts no io/os; a script that reaches for them must fail here too.
    let escape = scratch.0.join("escape.lua");
    std::fs::write(
        &escape,
        "return { status = \"Healthy\", message = os.getenv(\"HOME\") }\n",
    )
    .unwrap();
    let err = run_health(&escape, &obj).unwrap_err();
    assert!(err.contains("os"), "{err}");

    let missing = scratch.0.join("missing.lua");
    assert!(run_health(&missing, &obj).is_err());
}

// ---- argocd-cm patch -------------------------------------------------------

/// The full text of argocd-cm-patch.yaml, from the four scripts.
fn render_cm_patch() -> String {
    let mut s = String::from(
        "# Argo CD health checks for the herald.dev kinds, as argocd-cm data keys.\n\
         # GENERATED from config/argocd/herald.dev_<Kind>/health.lua by\n\
         # tests/argocd_health.rs; do not edit. After changing a script, run\n\
         #   HERALD_UPDATE_ARGOCD_CM=1 cargo test --test argocd_health\n\
         # Merge into Argo CD's ConfigMap (see kustomization.yaml here):\n\
         #   kubectl -n argocd patch configmap argocd-cm --type merge \\\n\
         #     --patch-file config/argocd/argocd-cm-patch.yaml\n\
         # No namespace, so the patch applies wherever Argo CD is installed.\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n\
         data:\n",
    );
    for kind in KINDS {
        writeln!(s, "  {}: |", cm_key(kind)).unwrap();
        for line in read(&script_path(kind)).lines() {
            if line.is_empty() {
                s.push('\n');
            } else {
                writeln!(s, "    {line}").unwrap();
            }
        }
    }
    s
}

#[test]
fn argocd_cm_patch_is_generated_from_the_scripts() {
    let path = argocd_dir().join("argocd-cm-patch.yaml");
    let want = render_cm_patch();
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date with the health.lua files; regenerate it with \
         `{UPDATE_ENV}=1 cargo test --test argocd_health`",
        path.display()
    );
}

/// Merges the patch into an argocd-cm that already has settings of its own,
/// as `kubectl patch` (merge) and kustomize (strategic) would, and reads the
/// result back as JSON: this is YAML parsing by the real consumer.
#[test]
fn argocd_cm_patch_carries_the_scripts_verbatim() {
    let existing = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"url": "https://argocd.example.com", "resource.customizations.health.apps_Deployment": "hs = {}\n"},
    });
    for merge in ["merge", "strategic"] {
        let out = kubectl(
            &[
                "patch",
                "--local",
                "-f",
                "-",
                "--type",
                merge,
                "--patch-file",
                "config/argocd/argocd-cm-patch.yaml",
                "-o",
                "json",
            ],
            Some(&existing.to_string()),
        );
        let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
        let data = merged["data"].as_object().unwrap();
        for kind in KINDS {
            let key = cm_key(kind);
            let embedded = data.get(&key).and_then(Value::as_str);
            assert!(
                embedded == Some(read(&script_path(kind)).as_str()),
                "{merge}: argocd-cm key {key} differs from {}",
                script_path(kind).display()
            );
        }
        assert_eq!(data.len(), KINDS.len() + 2, "{merge}: {data:?}");
        assert_eq!(data["url"], "https://argocd.example.com");
        assert_eq!(merged["metadata"]["namespace"], "argocd");
    }
}

#[test]
fn argocd_cm_patch_applies_in_an_argocd_kustomization() {
    let scratch = Scratch::new("kustomize");
    std::fs::write(
        scratch.0.join("argocd-cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  labels:\n    app.kubernetes.io/part-of: argocd\ndata:\n  url: https://argocd.example.com\n",
    )
    .unwrap();
    std::fs::copy(
        argocd_dir().join("argocd-cm-patch.yaml"),
        scratch.0.join("argocd-cm-patch.yaml"),
    )
    .unwrap();
    std::fs::write(
        scratch.0.join("kustomization.yaml"),
        "namespace: argocd\nresources:\n  - argocd-cm.yaml\npatches:\n  - path: argocd-cm-patch.yaml\n    target: {kind: ConfigMap, name: argocd-cm}\n",
    )
    .unwrap();
    let dir = scratch.0.to_string_lossy().into_owned();
    let text = String::from_utf8(kubectl(&["kustomize", &dir], None).stdout).unwrap();
    for kind in KINDS {
        assert!(text.contains(&cm_key(kind)), "{kind} missing:\n{text}");
    }
    assert!(text.contains("url: https://argocd.example.com"), "{text}");
    assert!(text.contains("namespace: argocd"), "{text}");
}

#[test]
fn kustomize_builds_the_argocd_tree() {
    let text = String::from_utf8(kubectl(&["kustomize", "config/argocd"], None).stdout).unwrap();
    assert_eq!(text.matches("kind: Application").count(), 1, "{text}");
    assert!(text.contains("path: config/samples"), "{text}");
    assert!(text.contains("namespace: argocd"), "{text}");
}
