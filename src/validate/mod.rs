//! `herald validate`: offline checks of herald documents, with the rules the
//! API server applies at `kubectl apply` and the cross-references it cannot.
//!
//! Pipeline per document: YAML (with positions) → identity (apiVersion,
//! kind, metadata.name) → the CRD's structural schema, strictly (unknown
//! fields are errors) → the CRD's CEL rules, evaluated by kube's CEL
//! validator on the same generated schema → typed decoding. Then, across all
//! documents: references between objects. Every diagnostic reads
//! `file:line:col: Kind/name: spec.path: message`.
//!
//! The rules live on the API types only; nothing here restates them.

pub mod references;
pub mod structural;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use kube::core::cel::{CompiledSchema, RootContext, Validator, compile_schema};
use serde_json::Value;

use crate::api::{self, CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};
pub use yaml::Position;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Note,
}

/// One finding, pointing at a file position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub position: Position,
    /// `Kind/name`, when the document got that far.
    pub object: Option<String>,
    /// Field path such as `spec.perChat.rate`.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file, self.position.line, self.position.col
        )?;
        if self.severity == Severity::Note {
            f.write_str("note: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if let Some(p) = &self.path {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A herald object that passed every per-document check.
#[derive(Clone, Debug)]
pub enum Object {
    Tier(Box<DeliveryTier>),
    RateLimit(Box<RateLimitPolicy>),
    Circuit(Box<CircuitPolicy>),
    Degradation(Box<DegradationProfile>),
    /// A standalone agent's own settings (not a custom resource).
    Agent(Box<api::AgentSpec>),
}

/// Where an object came from, for diagnostics about it.
#[derive(Clone, Debug)]
pub struct Located {
    pub object: Object,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub file: String,
    pub doc: yaml::Document,
}

impl Located {
    pub(crate) fn diag(&self, path: &str, message: String) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            position: self.doc.position_of(path),
            object: Some(format!("{}/{}", self.kind, self.name)),
            path: Some(path.to_owned()),
            message,
        }
    }
}

/// The outcome of validating a set of documents.
#[derive(Debug, Default)]
pub struct Report {
    pub objects: Vec<Located>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// Input that could not be read at all (exit status 2 for the CLI).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
}

struct KindSchema {
    schema: Value,
    compiled: CompiledSchema,
}

/// Validates documents; holds each kind's schema, compiled once.
pub struct Validation {
    schemas: HashMap<&'static str, KindSchema>,
    checker: structural::Checker,
    cel: Validator,
}

impl Default for Validation {
    fn default() -> Self {
        Self::new()
    }
}

impl Validation {
    pub fn new() -> Self {
        let mut schemas = HashMap::new();
        for kind in api::crd::KINDS {
            let Some(crd) = api::crd::crd_for(kind) else {
                continue;
            };
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            let compiled = compile_schema(&schema);
            schemas.insert(kind, KindSchema { schema, compiled });
        }
        let schema = api::agent::agent_document_schema();
        let compiled = compile_schema(&schema);
        schemas.insert(api::agent::AGENT_KIND, KindSchema { schema, compiled });
        Validation {
            schemas,
            checker: structural::Checker::default(),
            cel: Validator::new(),
        }
    }

    /// Validate every document in `text` (named `file` in diagnostics).
    pub fn check_text(&mut self, file: &str, text: &str, report: &mut Report) {
        let docs = match yaml::parse(text) {
            Ok(docs) => docs,
            Err(e) => {
                report.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.to_owned(),
                    position: e.position,
                    object: None,
                    path: None,
                    message: e.message,
                });
                return;
            }
        };
        for doc in docs {
            self.check_document(file, doc, report);
        }
    }

    fn check_document(&mut self, file: &str, doc: yaml::Document, report: &mut Report) {
        let at = |path: &str, object: Option<String>, message: String| Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            position: doc.position_of(path),
            object,
            path: (!path.is_empty()).then(|| path.to_owned()),
            message,
        };
        let Some(top) = doc.value.as_object() else {
            report.diagnostics.push(at(
                "",
                None,
                "a document must be a mapping with apiVersion and kind".to_owned(),
            ));
            return;
        };
        let api_version = top.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = top.get("kind").and_then(Value::as_str).unwrap_or("");
        let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        if group != api::GROUP {
            let what = if api_version.is_empty() && kind.is_empty() {
                "no apiVersion or kind".to_owned()
            } else {
                format!("{api_version} {kind}")
            };
            report.diagnostics.push(Diagnostic {
                severity: Severity::Note,
                ..at("", None, format!("skipped: not a herald document ({what})"))
            });
            return;
        }
        if api_version != api::API_VERSION {
            report.diagnostics.push(at(
                "apiVersion",
                None,
                format!(
                    "unsupported apiVersion {api_version:?}: expected {:?}",
                    api::API_VERSION
                ),
            ));
            return;
        }
        let Some(kind_schema) = self.schemas.get(kind) else {
            report.diagnostics.push(at(
                "kind",
                None,
                format!(
                    "unknown kind {kind:?}: expected one of {}, {}",
                    api::crd::KINDS.join(", "),
                    api::agent::AGENT_KIND
                ),
            ));
            return;
        };
        let metadata = top.get("metadata");
        let name = metadata
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let namespace = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let object = Some(format!(
            "{kind}/{}",
            if name.is_empty() { "?" } else { name }
        ));
        let mut errors = Vec::new();
        if let Some(message) = check_name(name) {
            errors.push(at("metadata.name", object.clone(), message));
        }

        // Structural schema, strictly. The root's identity fields are
        // Kubernetes' own; everything else must be in the schema.
        let mut violations = Vec::new();
        for (key, value) in top {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                _ => match kind_schema.schema.pointer(&format!("/properties/{key}")) {
                    Some(s) => self.checker.check(s, value, key, &mut violations),
                    None => violations.push(structural::Violation {
                        path: key.clone(),
                        message: format!("unknown field \"{key}\""),
                    }),
                },
            }
        }
        if let Some(required) = kind_schema.schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !top.contains_key(key) {
                    violations.push(structural::Violation {
                        path: key.to_owned(),
                        message: "Required value".to_owned(),
                    });
                }
            }
        }
        let invalid: Vec<String> = violations.iter().map(|v| v.path.clone()).collect();
        for v in violations {
            errors.push(at(&v.path, object.clone(), v.message));
        }
        let schema_failed = !errors.is_empty();

        // CEL rules, on the same schema the CRD carries. After a schema
        // error they still run, and what they say of the fields the schema
        // accepted is reported; a rule over a field the schema refused (or
        // over its parent) saw bad data, so its verdict is dropped and the
        // API server's note says that some rules were not checked.
        let root = RootContext {
            api_version: api::API_VERSION.to_owned(),
            api_group: api::GROUP.to_owned(),
            kind: kind.to_owned(),
        };
        if let Err(failures) = self.cel.validate_compiled_with_context(
            &kind_schema.compiled,
            &doc.value,
            None,
            Some(&root),
        ) {
            for f in failures.iter() {
                let path = f.field_path.trim_start_matches('.').to_owned();
                if invalid.iter().any(|bad| overlaps(bad, &path)) {
                    continue;
                }
                errors.push(at(&path, object.clone(), f.message.clone()));
            }
        }
        if schema_failed {
            errors.push(at("", object.clone(), RULES_NOT_CHECKED.to_owned()));
        }
        if !errors.is_empty() {
            report.diagnostics.extend(errors);
            return;
        }

        // Typed decoding; the schema should have caught everything already.
        match decode(kind, &doc.value) {
            Ok(obj) => report.objects.push(Located {
                object: obj,
                kind: kind.to_owned(),
                name: name.to_owned(),
                namespace,
                file: file.to_owned(),
                doc,
            }),
            Err((path, message)) => report.diagnostics.push(at(&path, object, message)),
        }
    }
}

/// The API server's words for CEL rules left unchecked behind a schema error.
pub const RULES_NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; \
     correct the existing errors to complete validation";

/// Whether one field path is the other or lies under it (`spec` and
/// `spec.limits[0]` overlap; `spec.a` and `spec.ab` do not).
fn overlaps(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        short.is_empty()
            || long
                .strip_prefix(short)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    under(a, b) || under(b, a)
}

fn decode(kind: &str, value: &Value) -> Result<Object, (String, String)> {
    fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            (path, e.into_inner().to_string())
        })
    }
    Ok(match kind {
        "DeliveryTier" => Object::Tier(Box::new(typed(value)?)),
        "RateLimitPolicy" => Object::RateLimit(Box::new(typed(value)?)),
        "CircuitPolicy" => Object::Circuit(Box::new(typed(value)?)),
        "DegradationProfile" => Object::Degradation(Box::new(typed(value)?)),
        "Agent" => {
            let spec = value.get("spec").cloned().unwrap_or_default();
            Object::Agent(Box::new(
                typed(&spec).map_err(|(p, m)| (format!("spec.{p}"), m))?,
            ))
        }
        other => return Err((String::new(), format!("unknown kind {other:?}"))),
    })
}

/// A DNS-1123 subdomain, as Kubernetes requires of object names.
fn check_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Required value: every herald object needs metadata.name".to_owned());
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > 253 || !ok_chars || !ok_ends {
        return Some(format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// Validate files and directories (recursively, `*.yaml` / `*.yml`), then
/// the references between everything found.
pub fn validate_paths(paths: &[PathBuf]) -> Result<Report, InputError> {
    validate_inputs(paths, None)
}

/// [`validate_paths`] where a path `-` stands for `stdin` (read once, named
/// `<stdin>` in diagnostics), as `kubectl apply -f -` does.
pub fn validate_inputs(
    paths: &[PathBuf],
    mut stdin: Option<&mut dyn std::io::Read>,
) -> Result<Report, InputError> {
    let mut texts = Vec::new();
    for p in paths {
        if p.as_os_str() == "-"
            && let Some(input) = stdin.take()
        {
            let path = STDIN_NAME.to_owned();
            let mut bytes = Vec::new();
            input
                .read_to_end(&mut bytes)
                .map_err(|source| InputError::Io {
                    path: path.clone(),
                    source,
                })?;
            let text =
                String::from_utf8(bytes).map_err(|_| InputError::NotText { path: path.clone() })?;
            texts.push((path, text));
            continue;
        }
        let mut files = Vec::new();
        collect(p, &mut files)?;
        for f in &files {
            let display = f.display().to_string();
            let bytes = std::fs::read(f).map_err(|source| InputError::Io {
                path: display.clone(),
                source,
            })?;
            let text = String::from_utf8(bytes).map_err(|_| InputError::NotText {
                path: display.clone(),
            })?;
            texts.push((display, text));
        }
    }
    let mut validation = Validation::new();
    let mut report = Report::default();
    for (file, text) in &texts {
        validation.check_text(file, text, &mut report);
    }
    references::check(&mut report);
    Ok(report)
}

/// How standard input is named in diagnostics.
pub const STDIN_NAME: &str = "<stdin>";

/// Validate in-memory sources (name, text), then their references.
pub fn validate_sources<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Report {
    let mut validation = Validation::new();
    let mut report = Report::default();
    for (file, text) in sources {
        validation.check_text(file, text, &mut report);
    }
    references::check(&mut report);
    report
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let io = |source| InputError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let is_yaml = e
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x == "yaml" || x == "yml");
            if e.is_dir() || is_yaml {
                collect(&e, out)?;
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}
