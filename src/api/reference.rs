//! The configuration reference (`docs/reference.md`), generated from the
//! schemas the types produce: the four CRDs as `herald crd` prints them and
//! the Agent document as `herald validate` checks it.
//!
//! Owns the rendering only: field docs, bounds, defaults and CEL rules stay
//! on the types in this module's siblings, and `tests/reference_docs.rs`
//! keeps the checked-in file equal to [`render_reference`]. Invariant: every
//! property of every schema becomes exactly one table row (a field holding
//! one of Kubernetes' pod types is one row naming the type; its fields are
//! Kubernetes' to document), and the output
//! depends on nothing but the schemas (no clock, no environment, sorted
//! keys), so a drift test can compare it byte for byte.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::agent::{AGENT_KIND, agent_document_schema};
use super::crd;
use super::duration::DURATION_PATTERN;
use super::pod_template::kubernetes_field;

/// How `docs/reference.md` is refreshed; printed in the file and by the test.
pub const REFRESH_COMMAND: &str = "HERALD_UPDATE_DOCS=1 cargo test --test reference_docs";

/// Defaults longer than this are shown as a YAML block under the table.
const INLINE_DEFAULT_MAX: usize = 48;

/// The whole reference as Markdown.
pub fn render_reference() -> String {
    let mut out = String::new();
    intro(&mut out);
    for c in crd::all() {
        render_crd(&mut out, &c);
    }
    render_agent(&mut out);
    tidy(&out)
}

/// At most one blank line in a row and exactly one newline at the end, so
/// the sections can each end with a blank line without caring who follows.
/// No generated block (tables, YAML defaults) contains a blank line.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut newlines = 0;
    for ch in text.trim_end().chars() {
        if ch == '\n' {
            newlines += 1;
            if newlines > 2 {
                continue;
            }
        } else {
            newlines = 0;
        }
        out.push(ch);
    }
    out.push('\n');
    out
}

fn intro(out: &mut String) {
    let _ = write!(
        out,
        "# Configuration reference\n\
         \n\
         <!-- GENERATED from the schemas in src/api by src/api/reference.rs; do not edit.\n\
         \x20    Refresh: {REFRESH_COMMAND} -->\n\
         \n\
         Every field of the four herald.dev/v1alpha1 kinds and of the `Agent`\n\
         document of a standalone agent's config file, read from the same schemas\n\
         the API server enforces at `kubectl apply` and `herald validate` checks\n\
         offline. `kubectl explain deliverytier.spec` shows the same text in a cluster.\n\
         \n\
         - **Type**: `duration` is text such as `500ms`, `30s`, `5m` or `1h30m`\n\
         \x20 (units ms, s, m, h). *required* fields have no default.\n\
         - **Default**: applied when the field is left out. A default on an object\n\
         \x20 applies when the whole object is left out; its fields' own defaults apply\n\
         \x20 when the object is given without them. *its fields' defaults* means the\n\
         \x20 two are the same.\n\
         - **Bounds**: checked by the schema; a value outside them is refused with\n\
         \x20 the field's path. **Rules** lists the cross-field (CEL) checks of each kind\n\
         \x20 with the message they answer.\n\
         - **status** is written by the operator; never set it yourself.\n\
         \n\
         Kinds: [DeliveryTier](#deliverytier), [RateLimitPolicy](#ratelimitpolicy),\n\
         [CircuitPolicy](#circuitpolicy), [DegradationProfile](#degradationprofile),\n\
         [Agent](#agent).\n"
    );
}

fn render_crd(out: &mut String, c: &CustomResourceDefinition) {
    let names = &c.spec.names;
    let Some(version) = c.spec.versions.first() else {
        return;
    };
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let _ = write!(
        out,
        "\n## {kind}\n\n`apiVersion: {group}/{v}` · `kind: {kind}` · {scope} · plural `{plural}`",
        kind = names.kind,
        group = c.spec.group,
        v = version.name,
        scope = c.spec.scope.to_lowercase(),
        plural = names.plural,
    );
    if let Some(short) = names.short_names.as_ref().filter(|s| !s.is_empty()) {
        let _ = write!(out, " · short names {}", code_list(short));
    }
    if let Some(cats) = names.categories.as_ref().filter(|s| !s.is_empty()) {
        let _ = write!(out, " · categories {}", code_list(cats));
    }
    out.push_str("\n\n");
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", prose(d));
    }
    let mut rules = Vec::new();
    collect_rules(&schema, "", &mut rules);
    for (part, heading) in [
        ("spec", "spec"),
        ("status", "status (written by the operator)"),
    ] {
        if let Some(node) = schema.get("properties").and_then(|p| p.get(part)) {
            let _ = writeln!(out, "### {heading}\n");
            field_table(out, node, part);
        }
    }
    rules_table(out, &rules);
    if let Some(cols) = version
        .additional_printer_columns
        .as_ref()
        .filter(|c| !c.is_empty())
    {
        let _ = writeln!(
            out,
            "### Columns of `kubectl get {}`\n\n| Column | From | Description |\n| --- | --- | --- |",
            names
                .short_names
                .as_ref()
                .and_then(|s| s.first())
                .unwrap_or(&names.plural)
        );
        let _ = writeln!(out, "| NAME | `.metadata.name` | |");
        for col in cols {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(&col.name),
                code(&col.json_path),
                col.description.as_deref().map(prose).unwrap_or_default()
            );
        }
        out.push('\n');
    }
}

fn render_agent(out: &mut String) {
    let schema = agent_document_schema();
    let _ = write!(
        out,
        "\n## {AGENT_KIND}\n\n\
         `apiVersion: herald.dev/v1alpha1` · `kind: {AGENT_KIND}` · not a custom resource\n\n\
         The settings of one agent process. It sits beside the herald documents in\n\
         the YAML file that `herald run -f` (or `herald agent -f`) reads, at most\n\
         once per file, with a `metadata.name`; without it every field takes its\n\
         default. In a cluster the operator writes it into each tier's ConfigMap.\n\
         `herald validate` checks it with the same strictness as the kinds above.\n\n\
         A reload (the file changed, or in a cluster its ConfigMap) applies\n\
         whole or not at all: one that changes a field read only at start (the\n\
         fields below that say so, and the entry tier's `spec.store`) is refused\n\
         with an error naming the fields, and the old configuration keeps\n\
         running; restart the agent to apply it.\n\n\
         ### spec\n\n"
    );
    if let Some(node) = schema.get("properties").and_then(|p| p.get("spec")) {
        field_table(out, node, "spec");
    }
    let mut rules = Vec::new();
    collect_rules(&schema, "", &mut rules);
    rules_table(out, &rules);
}

/// One row of a field table.
struct Row {
    path: String,
    ty: String,
    default: Option<Value>,
    /// The default is exactly what the fields' own defaults give.
    default_is_implied: bool,
    bounds: Vec<String>,
    description: String,
}

/// Rows for every property under `node` (whose own path is `path`), depth
/// first, properties in name order.
fn rows(node: &Value, path: &str, out: &mut Vec<Row>) {
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in sorted_properties(node) {
        let child_path = format!("{path}.{name}");
        let mut r = row(child, &child_path, required.contains(&name));
        // An embedded Kubernetes type is one row naming it; its fields are
        // Kubernetes' to document.
        if let Some((ty, explain)) = kubernetes_field(&child_path) {
            let _ = write!(
                r.description,
                " Kubernetes `{ty}` (fields: `kubectl explain {explain}`)."
            );
            out.push(r);
            continue;
        }
        out.push(r);
        descend(child, &child_path, out);
    }
}

/// Into the fields of an object, of list items and of map values.
fn descend(node: &Value, path: &str, out: &mut Vec<Row>) {
    rows(node, path, out);
    if let Some(items) = node.get("items") {
        rows(items, &format!("{path}[]"), out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        rows(values, &format!("{path}.<key>"), out);
    }
}

fn sorted_properties(node: &Value) -> Vec<(&str, &Value)> {
    let mut props: Vec<(&str, &Value)> = node
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    props.sort_by(|a, b| a.0.cmp(b.0));
    props
}

fn row(node: &Value, path: &str, required: bool) -> Row {
    let mut ty = type_name(node);
    if required {
        ty.push_str(", *required*");
    }
    let mut bounds = bounds_of(node, "");
    if let Some(items) = node.get("items") {
        bounds.extend(bounds_of(items, "each "));
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        bounds.extend(bounds_of(values, "each value "));
    }
    let default = node.get("default").cloned();
    let implied = implied_default(node);
    Row {
        path: path.to_owned(),
        ty,
        default_is_implied: default.is_some() && default == implied,
        default,
        bounds,
        description: node
            .get("description")
            .and_then(Value::as_str)
            .map(first_paragraph)
            .unwrap_or_default(),
    }
}

/// What the defaults of an object's fields make of `{}`; `None` when no
/// field has a default (then the object's own default says something).
fn implied_default(node: &Value) -> Option<Value> {
    let fields: serde_json::Map<String, Value> = sorted_properties(node)
        .into_iter()
        .filter_map(|(name, child)| Some((name.to_owned(), child.get("default")?.clone())))
        .collect();
    (!fields.is_empty()).then_some(Value::Object(fields))
}

fn is_duration(node: &Value) -> bool {
    node.get("pattern").and_then(Value::as_str) == Some(DURATION_PATTERN)
}

fn type_name(node: &Value) -> String {
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "int or string".to_owned();
    }
    if node.get("enum").is_some() {
        return "enum".to_owned();
    }
    if is_duration(node) {
        return "duration".to_owned();
    }
    let base = node.get("type").and_then(Value::as_str).unwrap_or("any");
    match base {
        "array" => match node.get("items") {
            Some(items) => format!("list of {}", type_name(items)),
            None => "list".to_owned(),
        },
        "object" => match node.get("additionalProperties").filter(|v| v.is_object()) {
            Some(values) => format!("map of {}", type_name(values)),
            None => "object".to_owned(),
        },
        "string" => match node.get("format").and_then(Value::as_str) {
            Some("date-time") => "timestamp".to_owned(),
            _ => "string".to_owned(),
        },
        other => other.to_owned(),
    }
}

/// Human-readable bounds of one schema node; `prefix` qualifies them for
/// list items and map values.
fn bounds_of(node: &Value, prefix: &str) -> Vec<String> {
    let mut b = Vec::new();
    let num = |k: &str| node.get(k).and_then(Value::as_f64);
    let uint = |k: &str| node.get(k).and_then(Value::as_u64);
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => b.push(format!("{prefix}{} to {}", number(lo), number(hi))),
        (Some(lo), None) => b.push(format!("{prefix}at least {}", number(lo))),
        (None, Some(hi)) => b.push(format!("{prefix}at most {}", number(hi))),
        (None, None) => {}
    }
    if !is_duration(node) {
        match (uint("minLength"), uint("maxLength")) {
            (Some(lo), Some(hi)) => b.push(format!("{prefix}length {lo} to {hi}")),
            (Some(lo), None) => b.push(format!("{prefix}length at least {lo}")),
            (None, Some(hi)) => b.push(format!("{prefix}length at most {hi}")),
            (None, None) => {}
        }
        if let Some(p) = node.get("pattern").and_then(Value::as_str) {
            b.push(format!("{prefix}pattern {}", code(p)));
        }
    }
    match (uint("minItems"), uint("maxItems")) {
        (Some(lo), Some(hi)) => b.push(format!("{prefix}{lo} to {hi} items")),
        (Some(lo), None) => b.push(format!("{prefix}at least {lo} items")),
        (None, Some(hi)) => b.push(format!("{prefix}at most {hi} items")),
        (None, None) => {}
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(scalar_text).collect();
        b.push(format!("{prefix}one of {}", code_list(&names)));
    }
    if let Some(keys) = node
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
    {
        let keys: Vec<String> = keys.iter().map(scalar_text).collect();
        b.push(format!("{prefix}unique by {}", code_list(&keys)));
    }
    b
}

/// A schema number as written: integers without a fraction.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn field_table(out: &mut String, node: &Value, root: &str) {
    let mut all = Vec::new();
    rows(node, root, &mut all);
    if all.is_empty() {
        return;
    }
    out.push_str("| Field | Type | Default | Bounds | Description |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    let mut long = Vec::new();
    for r in &all {
        let default = match &r.default {
            None => String::new(),
            Some(_) if r.default_is_implied => "its fields' defaults".to_owned(),
            Some(v) => {
                let flow = flow_yaml(v);
                if flow.chars().count() <= INLINE_DEFAULT_MAX {
                    code(&flow)
                } else {
                    long.push((r.path.as_str(), v));
                    "see below".to_owned()
                }
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            code(&r.path),
            r.ty,
            default,
            r.bounds.join("; "),
            r.description
        );
    }
    out.push('\n');
    for (path, v) in long {
        let _ = writeln!(
            out,
            "Default of `{path}`:\n\n```yaml\n{}```\n",
            block_yaml(v)
        );
    }
}

/// A CEL rule with where it sits.
struct RuleRow {
    field: String,
    message: String,
    rule: String,
}

fn collect_rules(node: &Value, path: &str, out: &mut Vec<RuleRow>) {
    if let Some(list) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in list {
            let field_path = r.get("fieldPath").and_then(Value::as_str).unwrap_or("");
            let field = format!("{path}{field_path}");
            out.push(RuleRow {
                field: field.trim_start_matches('.').to_owned(),
                message: r
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                rule: r
                    .get("rule")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    for (name, child) in sorted_properties(node) {
        let child_path = format!("{path}.{name}");
        collect_rules(child, &child_path, out);
        if let Some(items) = child.get("items") {
            collect_rules(items, &format!("{child_path}[]"), out);
        }
    }
}

fn rules_table(out: &mut String, rules: &[RuleRow]) {
    if rules.is_empty() {
        return;
    }
    out.push_str("### Rules\n\n| Field | Message | Rule (CEL) |\n| --- | --- | --- |\n");
    for r in rules {
        let field = if r.field.is_empty() {
            "the object".to_owned()
        } else {
            code(&r.field)
        };
        let _ = writeln!(
            out,
            "| {field} | {} | {} |",
            cell(&r.message),
            code(&r.rule)
        );
    }
    out.push('\n');
}

/// The first paragraph of a description, on one line. Herald's own
/// descriptions are one paragraph; the embedded Kubernetes types carry
/// long texts whose first paragraph says what the field is.
fn first_paragraph(text: &str) -> String {
    let mut parts = text.split("\n\n").filter(|p| !p.trim().is_empty());
    let first = parts.next().unwrap_or_default();
    let mut s = prose(first);
    if parts.next().is_some() {
        s.push_str(" …");
    }
    s
}

/// Text for a table cell: one line, pipes escaped, `<` outside code spans
/// escaped so that placeholders such as `<name>` are not taken for HTML.
fn prose(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(one_line.len());
    let mut in_code = false;
    for ch in one_line.chars() {
        match ch {
            '`' => {
                in_code = !in_code;
                out.push(ch);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            _ => out.push(ch),
        }
    }
    out
}

fn cell(text: &str) -> String {
    prose(text)
}

/// A code span safe inside a table cell.
fn code(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let escaped = one_line.replace('|', "\\|");
    if escaped.contains('`') {
        format!("`` {escaped} ``")
    } else {
        format!("`{escaped}`")
    }
}

fn code_list(items: &[String]) -> String {
    items.iter().map(|s| code(s)).collect::<Vec<_>>().join(", ")
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value as YAML flow text, e.g. `{burst: 1, period: 1s, rate: 30}`;
/// strings are quoted only when plain YAML would read them differently.
fn flow_yaml(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_string(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(flow_yaml).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}: {}", yaml_string(k), flow_yaml(&map[k.as_str()])))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn yaml_string(s: &str) -> String {
    let plain_ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
        && !s.starts_with(['-', '.', ':'])
        && !s.ends_with(':')
        && !looks_like_other_scalar(s);
    if plain_ok {
        s.to_owned()
    } else {
        // JSON string syntax is valid YAML double-quoted syntax.
        Value::String(s.to_owned()).to_string()
    }
}

/// Plain text a YAML 1.1 or 1.2 reader would take for something other than
/// a string: booleans, null, numbers in any base, sexagesimal (`1:30`).
fn looks_like_other_scalar(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let number_like = s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | '_' | 'x' | 'o' | 'e' | 'E'));
    let mut parts = s.split(':');
    let head_digits = parts
        .next()
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_digit() || c == '_'));
    let sexagesimal = head_digits
        && s.contains(':')
        && parts.all(|p| p.starts_with(|c: char| c.is_ascii_digit()));
    matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~" | ".inf" | ".nan"
    ) || number_like
        || sexagesimal
}

/// A value as block YAML, for defaults too long for a table cell.
fn block_yaml(v: &Value) -> String {
    let text = serde_saphyr::to_string(v).unwrap_or_else(|_| format!("{}\n", flow_yaml(v)));
    if text.ends_with('\n') {
        text
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pod_template::inside_kubernetes_field;
    use proptest::prelude::*;

    fn crd_schema(kind: &str) -> Value {
        let c = crd::crd_for(kind).unwrap();
        serde_json::to_value(
            c.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    /// The markdown section of one kind, from its heading to the next.
    fn section<'a>(doc: &'a str, kind: &str) -> &'a str {
        let start = doc.find(&format!("\n## {kind}\n")).unwrap();
        let rest = &doc[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4);
        &rest[..end]
    }

    /// Field-table rows (first cell) of a section, in order.
    fn field_cells(section: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_fields = false;
        for line in section.lines() {
            if line.starts_with("| Field | Type |") {
                in_fields = true;
                continue;
            }
            if !line.starts_with('|') {
                in_fields = false;
                continue;
            }
            if in_fields && !line.starts_with("| ---") {
                let first = line.split(" | ").next().unwrap().trim_start_matches("| ");
                out.push(first.trim_matches('`').to_owned());
            }
        }
        out
    }

    /// Every property path of a schema, the way the tables spell them.
    fn all_paths(node: &Value, path: &str, out: &mut Vec<String>) {
        for (name, child) in sorted_properties(node) {
            let p = format!("{path}.{name}");
            out.push(p.clone());
            all_paths(child, &p, out);
            if let Some(items) = child.get("items") {
                all_paths(items, &format!("{p}[]"), out);
            }
            if let Some(v) = child.get("additionalProperties").filter(|v| v.is_object()) {
                all_paths(v, &format!("{p}.<key>"), out);
            }
        }
    }

    fn spec_and_status_paths(schema: &Value) -> Vec<String> {
        let mut want = Vec::new();
        for part in ["spec", "status"] {
            if let Some(node) = schema["properties"].get(part) {
                all_paths(node, part, &mut want);
            }
        }
        want
    }

    #[test]
    fn every_field_of_every_kind_is_one_row() {
        let doc = render_reference();
        for kind in crd::KINDS {
            // Every field but those inside an embedded Kubernetes pod type,
            // whose own row names the type.
            let want: Vec<String> = spec_and_status_paths(&crd_schema(kind))
                .into_iter()
                .filter(|p| !inside_kubernetes_field(p))
                .collect();
            assert!(want.len() > 10, "{kind}");
            assert_eq!(field_cells(section(&doc, kind)), want, "{kind}");
        }
        let want = spec_and_status_paths(&agent_document_schema());
        assert!(want.iter().any(|p| p == "spec.botApi.waitForDelivery"));
        assert_eq!(field_cells(section(&doc, "Agent")), want);
    }

    #[test]
    fn defaults_bounds_and_rules_are_shown() {
        let doc = render_reference();
        let rlp = section(&doc, "RateLimitPolicy");
        let rate = rlp
            .lines()
            .find(|l| l.starts_with("| `spec.global.rate` |"))
            .unwrap();
        assert!(rate.contains("integer, *required*"), "{rate}");
        assert!(rate.contains("1 to 1000000"), "{rate}");
        let global = rlp
            .lines()
            .find(|l| l.starts_with("| `spec.global` |"))
            .unwrap();
        assert!(
            global.contains("`{burst: 1, period: 1s, rate: 30}`"),
            "{global}"
        );
        assert!(rlp.contains("perChat rate must not exceed the global rate"));
        assert!(
            section(&doc, "DeliveryTier")
                .contains("| `spec.healing` | object | its fields' defaults |")
        );
        let tier = section(&doc, "DeliveryTier");
        assert!(tier.contains("| `spec.channel` | enum, *required* |"));
        assert!(tier.contains("one of `telegram`, `webhook`, `spool`"));
        assert!(tier.contains("| the object | a tier name must be a DNS-1035 label"));
        assert!(tier.contains("| `spec.fallbackTiers` | a tier cannot fall back to itself |"));
        assert!(tier.contains("| CANARY | `.status.canary.summary` |"));
        // The ladder is too long for a cell and comes as YAML below.
        let dgp = section(&doc, "DegradationProfile");
        assert!(dgp.contains("Default of `spec.levels`:\n\n```yaml\n"));
        let agent = section(&doc, "Agent");
        assert!(agent.contains("| `spec.listen` | string | `127.0.0.1:8080` |"));
        assert!(agent.contains("| `spec.shutdownGrace` | duration | `10s` |"));
    }

    #[test]
    fn every_default_is_rendered_and_reads_back_as_yaml() {
        let doc = render_reference();
        let mut schemas: Vec<Value> = crd::KINDS.iter().map(|k| crd_schema(k)).collect();
        schemas.push(agent_document_schema());
        for schema in &schemas {
            let mut all = Vec::new();
            rows(schema, "", &mut all);
            for r in all
                .iter()
                .filter(|r| !r.default_is_implied)
                .filter_map(|r| r.default.as_ref())
            {
                let flow = flow_yaml(r);
                let back: Value = serde_saphyr::from_str(&flow).unwrap();
                assert_eq!(&back, r, "{flow}");
                if flow.chars().count() <= INLINE_DEFAULT_MAX {
                    assert!(doc.contains(&code(&flow)), "{flow}");
                } else {
                    assert!(doc.contains(&block_yaml(r)), "{flow}");
                }
            }
        }
    }

    #[test]
    fn herald_descriptions_are_kept_whole() {
        // Only the embedded Kubernetes types (`resources`, and those of
        // `podTemplate`'s fields) have texts longer than one paragraph;
        // herald's own must never be cut.
        for kind in crd::KINDS {
            let mut paths = Vec::new();
            let schema = crd_schema(kind);
            let mut stack = vec![(String::new(), &schema)];
            while let Some((path, node)) = stack.pop() {
                if let Some(d) = node.get("description").and_then(Value::as_str)
                    && !path.contains(".resources")
                    && !inside_kubernetes_field(&path)
                    && d.contains("\n\n")
                {
                    paths.push(path.clone());
                }
                for (name, child) in sorted_properties(node) {
                    stack.push((format!("{path}.{name}"), child));
                }
                if let Some(items) = node.get("items") {
                    stack.push((format!("{path}[]"), items));
                }
            }
            assert!(
                paths.is_empty(),
                "{kind}: the reference keeps only the first paragraph of a description; \
                 write these field docs as one paragraph: {paths:?}"
            );
        }
    }

    #[test]
    fn tables_keep_their_columns() {
        let doc = render_reference();
        let mut header_cells = 0;
        for line in doc.lines() {
            if !line.starts_with('|') {
                header_cells = 0;
                continue;
            }
            let cells = unescaped_pipes(line) - 1;
            if header_cells == 0 {
                header_cells = cells;
            }
            assert_eq!(cells, header_cells, "{line}");
        }
    }

    fn unescaped_pipes(line: &str) -> usize {
        let mut n = 0;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '|' && prev != '\\' {
                n += 1;
            }
            prev = c;
        }
        n
    }

    #[test]
    fn output_is_deterministic_and_names_the_refresh_command() {
        let a = render_reference();
        assert_eq!(a, render_reference());
        assert!(a.contains(REFRESH_COMMAND));
        assert!(a.ends_with('\n') && !a.ends_with("\n\n"));
        assert!(!a.contains("\n\n\n"), "no double blank lines");
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("yes"),
                Just("0x1F"),
                Just("1e3"),
                Just("- a"),
                Just("a: b"),
                Just("#x"),
                Just("1:30"),
                Just("127.0.0.1:8080"),
                Just("a:b:"),
                Just("http://x")
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn flow_yaml_reads_back_as_the_same_value(v in json_value()) {
            let text = flow_yaml(&v);
            let back: Value = serde_saphyr::from_str(&text).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn cells_never_break_a_table_row(s in "\\PC{0,40}") {
            for c in [prose(&s), code(&s)] {
                prop_assert!(!c.contains('\n'));
                prop_assert_eq!(unescaped_pipes(&c), 0);
            }
        }
    }
}
