//! `DurationString`: the one way herald's API spells a duration (`500ms`,
//! `30s`, `5m`, `1h30m`).
//!
//! The text is kept as the user wrote it, so a document round-trips unchanged
//! and CEL rules can call `duration(...)` on it (the accepted syntax is a
//! subset of Go's `time.ParseDuration`, which the API server's CEL uses).
//! The schema carries the same syntax as a pattern, so `kubectl apply`
//! rejects a bad duration before herald ever sees it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern: one or more `<number><unit>` terms, units ms, s, m, h.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A non-negative duration written as text, such as `500ms`, `30s` or `1m30s`.
#[derive(Clone, PartialEq, Eq)]
pub struct DurationString {
    text: String,
    value: Duration,
}

/// Why a duration text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: {why}; write a number followed by a unit (ms, s, m, h), e.g. 500ms, 30s, 5m, 1h30m"
)]
pub struct DurationError {
    text: String,
    why: &'static str,
}

impl DurationString {
    /// The parsed value.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A duration from a compile-time constant; used for defaults.
    ///
    /// Panics only if `text` is not a valid duration, which tests of every
    /// default catch.
    pub fn lit(text: &str) -> Self {
        match text.parse() {
            Ok(d) => d,
            Err(e) => panic!("invalid duration literal: {e}"),
        }
    }
}

impl FromStr for DurationString {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            text: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("the last number has no unit"))?;
            if number_len == 0 {
                return Err(err("expected a number"));
            }
            let (number, tail) = rest.split_at(number_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let scale = match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(err("unknown unit")),
            };
            if number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
                return Err(err("malformed number"));
            }
            let n: f64 = number.parse().map_err(|_| err("malformed number"))?;
            let secs = n * scale;
            if !secs.is_finite() || secs > 1e12 {
                return Err(err("too large"));
            }
            total = total
                .checked_add(Duration::from_secs_f64(secs))
                .ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        Ok(DurationString {
            text: text.to_owned(),
            value: total,
        })
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl Serialize for DurationString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DurationString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            let d: DurationString = text.parse().unwrap();
            assert_eq!(d.get(), want, "{text}");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn refuses_bad_text_with_a_hint() {
        for bad in [
            "",
            "5",
            "5 minutes",
            "5d",
            "-1s",
            "s",
            "1..5s",
            ".5s",
            "1e3s",
            "1s2",
        ] {
            let err = bad.parse::<DurationString>().unwrap_err().to_string();
            assert!(err.contains("e.g. 500ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn pattern_and_parser_agree() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "500ms", "1h30m", "1.5s", "5", "5d", "", "1..5s", "-1s", "1s2",
        ] {
            assert_eq!(
                re.is_match(text),
                text.parse::<DurationString>().is_ok(),
                "{text}"
            );
        }
    }
}
