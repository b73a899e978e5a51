//! Checks a JSON value against a CRD's structural OpenAPI v3 schema the way
//! the API server does with `--validate=strict`: types, enums, bounds,
//! lengths, patterns, required fields, and unknown fields.
//!
//! Owns only the schema subset Kubernetes allows in structural schemas; CEL
//! rules are evaluated elsewhere (kube's CEL validator), on the same schema.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

/// One schema violation at a field path such as `spec.global.rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

/// Compiled patterns, so a directory of documents compiles each regex once.
#[derive(Default)]
pub struct Checker {
    patterns: HashMap<String, Option<Regex>>,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(37).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl Checker {
    /// Check `value` at `path` against `schema`, appending every violation.
    pub fn check(&mut self, schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let mut fail = |message: String| {
            out.push(Violation {
                path: path.to_owned(),
                message,
            })
        };
        if value.is_null() {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                fail("Invalid value: null: must not be null".to_owned());
            }
            return;
        }
        let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let actual = type_name(value);
        if int_or_string {
            if !matches!(actual, "integer" | "string") {
                fail(format!(
                    "Invalid value: {}: must be an integer or a string",
                    short(value)
                ));
                return;
            }
        } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
            let ok = want == actual || (want == "number" && actual == "integer");
            if !ok {
                fail(format!(
                    "Invalid value: {}: must be of type {want}, not {actual}",
                    short(value)
                ));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            fail(format!(
                "Unsupported value: {}: supported values: {}",
                short(value),
                list.join(", ")
            ));
            return;
        }
        match value {
            Value::Object(map) => self.check_object(schema, map, path, out),
            Value::Array(items) => self.check_array(schema, items, path, out),
            Value::String(s) => self.check_string(schema, s, path, out),
            Value::Number(n) => check_number(schema, n, value, path, out),
            _ => {}
        }
    }

    fn check_object(
        &mut self,
        schema: &Value,
        map: &serde_json::Map<String, Value>,
        path: &str,
        out: &mut Vec<Violation>,
    ) {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve =
            schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for (key, v) in map {
            let p = child(path, key);
            if let Some(s) = props.and_then(|props| props.get(key)) {
                self.check(s, v, &p, out);
            } else if let Some(s) = additional.filter(|a| a.is_object()) {
                self.check(s, v, &p, out);
            } else if !preserve && (props.is_some() || additional == Some(&Value::Bool(false))) {
                out.push(Violation {
                    path: p,
                    message: format!("unknown field \"{key}\""),
                });
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    out.push(Violation {
                        path: child(path, key),
                        message: "Required value".to_owned(),
                    });
                }
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && map.len() as u64 > max
        {
            out.push(Violation {
                path: path.to_owned(),
                message: format!("Too many: {}: must have at most {max} items", map.len()),
            });
        }
    }

    fn check_array(
        &mut self,
        schema: &Value,
        items: &[Value],
        path: &str,
        out: &mut Vec<Violation>,
    ) {
        let n = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            out.push(Violation {
                path: path.to_owned(),
                message: format!("Invalid value: {n} items: must have at least {min} items"),
            });
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            out.push(Violation {
                path: path.to_owned(),
                message: format!("Too many: {n}: must have at most {max} items"),
            });
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
        if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map")
            && let Some(keys) = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
        {
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let id: Vec<String> = keys
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|k| item.get(k).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                if !seen.insert(id.clone()) {
                    out.push(Violation {
                        path: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {}", id.join(",")),
                    });
                }
            }
        }
    }

    fn check_string(&mut self, schema: &Value, s: &str, path: &str, out: &mut Vec<Violation>) {
        let len = s.chars().count() as u64;
        let mut fail = |message: String| {
            out.push(Violation {
                path: path.to_owned(),
                message,
            })
        };
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            fail(format!(
                "Invalid value: {:?}: must be at least {min} characters long",
                s
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            fail(format!("Too long: may not be longer than {max} characters"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let re = self
                .patterns
                .entry(pattern.to_owned())
                .or_insert_with(|| Regex::new(pattern).ok());
            match re {
                Some(re) if !re.is_match(s) => fail(format!(
                    "Invalid value: {:?}: should match '{pattern}'{}",
                    s,
                    hint(pattern)
                )),
                Some(_) => {}
                None => fail(format!("schema pattern {pattern:?} does not compile")),
            }
        }
    }
}

fn hint(pattern: &str) -> &'static str {
    if pattern == crate::api::duration::DURATION_PATTERN {
        " (a duration such as 500ms, 30s, 5m or 1h30m)"
    } else {
        ""
    }
}

fn check_number(
    schema: &Value,
    n: &serde_json::Number,
    value: &Value,
    path: &str,
    out: &mut Vec<Violation>,
) {
    let Some(x) = n.as_f64() else { return };
    let exclusive = |key: &str| schema.get(key) == Some(&Value::Bool(true));
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let bad = if exclusive("exclusiveMinimum") {
            x <= min
        } else {
            x < min
        };
        if bad {
            out.push(Violation {
                path: path.to_owned(),
                message: format!(
                    "Invalid value: {}: should be greater than {}{}",
                    short(value),
                    if exclusive("exclusiveMinimum") {
                        ""
                    } else {
                        "or equal to "
                    },
                    fmt_bound(min)
                ),
            });
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let bad = if exclusive("exclusiveMaximum") {
            x >= max
        } else {
            x > max
        };
        if bad {
            out.push(Violation {
                path: path.to_owned(),
                message: format!(
                    "Invalid value: {}: should be less than {}{}",
                    short(value),
                    if exclusive("exclusiveMaximum") {
                        ""
                    } else {
                        "or equal to "
                    },
                    fmt_bound(max)
                ),
            });
        }
    }
}

fn fmt_bound(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn violations(schema: Value, value: Value) -> Vec<Violation> {
        let mut out = Vec::new();
        Checker::default().check(&schema, &value, "spec", &mut out);
        out
    }

    #[test]
    fn reports_each_kind_of_violation_with_its_path() {
        let schema = json!({
            "type": "object",
            "required": ["rate"],
            "properties": {
                "rate": {"type": "integer", "minimum": 1, "maximum": 100},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "list": {"type": "array", "maxItems": 1, "items": {"type": "integer"}},
                "opt": {"type": "string", "nullable": true}
            }
        });
        let v = violations(
            schema.clone(),
            json!({"mode": "c", "name": "ABCDEFG", "list": [1, "x"], "opt": null, "extra": 1}),
        );
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"spec.rate"), "{v:?}");
        assert!(paths.contains(&"spec.mode"));
        assert!(paths.contains(&"spec.name"));
        assert!(paths.contains(&"spec.list"));
        assert!(paths.contains(&"spec.list[1]"));
        assert!(paths.contains(&"spec.extra"));
        assert!(!paths.contains(&"spec.opt"));
        let v = violations(schema, json!({"rate": 0}));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("greater than or equal to 1"));
    }

    #[test]
    fn integer_is_a_number_but_not_the_reverse() {
        assert!(violations(json!({"type": "number"}), json!(3)).is_empty());
        assert_eq!(violations(json!({"type": "integer"}), json!(3.5)).len(), 1);
        assert!(violations(json!({"x-kubernetes-int-or-string": true}), json!("1Gi")).is_empty());
    }
}
