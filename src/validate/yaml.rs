//! Multi-document YAML to JSON values, remembering where every field was
//! written so that a diagnostic can point at `file:line:col`.
//!
//! Scalars follow the YAML 1.2 core schema (what `kubectl` accepts):
//! plain `30` is an integer, `"30"` a string, `true` a boolean.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::{Scalar, ScalarStyle};
use saphyr_parser::{Event, Parser};
use serde_json::{Map, Number, Value};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// One YAML document as JSON, with the position of every path in it.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    /// Where each path starts: `spec.perChat.rate`, `spec.steps[1].weight`.
    /// For a mapping entry this is the position of its key.
    positions: HashMap<String, Position>,
    /// Where the document starts.
    pub start: Position,
}

impl Document {
    /// Position of `path`, or of its nearest written ancestor.
    pub fn position_of(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return *p;
            }
            match parent(path) {
                Some(up) => path = up,
                None => return self.start,
            }
        }
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// The YAML could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parse every document of `source`. Empty documents are dropped.
pub fn parse(source: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut docs = Vec::new();
    let mut builder: Option<Builder> = None;
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| SyntaxError {
            position: Position {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        let at = Position {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::DocumentStart(_) => builder = Some(Builder::new(at)),
            Event::DocumentEnd => {
                if let Some(b) = builder.take()
                    && let Some(doc) = b.finish()
                {
                    docs.push(doc);
                }
            }
            other => {
                if let Some(b) = builder.as_mut() {
                    b.event(other, at)?;
                }
            }
        }
    }
    Ok(docs)
}

enum Frame {
    Seq {
        path: String,
        items: Vec<Value>,
    },
    Map {
        path: String,
        map: Map<String, Value>,
        key: Option<String>,
    },
}

/// Builds one document from parser events, recording positions and
/// refusing duplicate keys (which YAML loaders usually overwrite silently).
struct Builder {
    start: Position,
    stack: Vec<Frame>,
    root: Option<Value>,
    positions: HashMap<String, Position>,
}

impl Builder {
    fn new(start: Position) -> Self {
        Builder {
            start,
            stack: Vec::new(),
            root: None,
            positions: HashMap::new(),
        }
    }

    fn finish(self) -> Option<Document> {
        let value = self.root.filter(|v| !v.is_null())?;
        let start = self.positions.get("").copied().unwrap_or(self.start);
        Some(Document {
            value,
            positions: self.positions,
            start,
        })
    }

    /// The path of the next value, or `None` when the next scalar is a key.
    fn next_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { path, items }) => Some(format!("{path}[{}]", items.len())),
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => Some(join(path, k)),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn event(&mut self, event: Event<'_>, at: Position) -> Result<(), SyntaxError> {
        let fail = |message: String| SyntaxError {
            position: at,
            message,
        };
        match event {
            Event::Scalar(text, style, _, tag) => {
                let value = match style {
                    ScalarStyle::Plain if tag.is_none() => {
                        scalar(&Scalar::parse_from_cow(Cow::Borrowed(&text)))
                    }
                    _ => Value::String(text.to_string()),
                };
                match self.stack.last_mut() {
                    Some(Frame::Map { path, map, key }) if key.is_none() => {
                        let k = match value {
                            Value::String(s) => s,
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => return Err(fail("mapping keys must be strings".to_owned())),
                        };
                        if map.contains_key(&k) {
                            return Err(fail(format!("duplicate key {k:?}")));
                        }
                        self.positions.insert(join(path, &k), at);
                        *key = Some(k);
                        Ok(())
                    }
                    _ => {
                        if let Some(path) = self.next_path() {
                            self.positions.entry(path).or_insert(at);
                        }
                        self.push_value(value);
                        Ok(())
                    }
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let Some(path) = self.next_path() else {
                    return Err(fail("mapping keys must be strings".to_owned()));
                };
                self.positions.entry(path.clone()).or_insert(at);
                self.stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq {
                        path,
                        items: Vec::new(),
                    },
                    _ => Frame::Map {
                        path,
                        map: Map::new(),
                        key: None,
                    },
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Seq { items, .. }) => Value::Array(items),
                    Some(Frame::Map { map, .. }) => Value::Object(map),
                    None => return Err(fail("unbalanced collection".to_owned())),
                };
                self.push_value(value);
                Ok(())
            }
            Event::Alias(_) => Err(fail(
                "aliases are not supported in herald documents".to_owned(),
            )),
            _ => Ok(()),
        }
    }

    fn push_value(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
apiVersion: herald.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: a
spec:
  global:
    rate: 30
    period: \"1s\"
  steps:
    - weight: 10
    - weight: 100
---
# only a comment
---
kind: Other
";

    #[test]
    fn converts_documents_and_remembers_positions() {
        let docs = parse(SRC).unwrap();
        assert_eq!(docs.len(), 2);
        let d = &docs[0];
        assert_eq!(d.value["spec"]["global"]["rate"], 30);
        assert_eq!(d.value["spec"]["global"]["period"], "1s");
        assert_eq!(
            d.position_of("spec.global.rate"),
            Position { line: 7, col: 5 }
        );
        assert_eq!(d.position_of("spec.steps[1].weight").line, 11);
        // A missing field points at its nearest written ancestor.
        assert_eq!(
            d.position_of("spec.global.burst"),
            Position { line: 6, col: 3 }
        );
        assert_eq!(docs[1].start.line, 15);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.position.line >= 1, "{err:?}");
        assert!(err.message.contains("YAML syntax error"));
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.position.line, 2);
        assert!(err.message.contains("duplicate"));
    }
}
