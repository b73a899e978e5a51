//! A secret value (bot token, HMAC key) that cannot be printed by accident.
//!
//! Owns the wrapper only. Leaves resolving secrets (files, environment,
//! Kubernetes Secrets) to the agent, which hands the sinks resolved values.
//!
//! Invariant: `Debug` and `Display` print `<redacted>`; no `Serialize`, so a
//! secret cannot ride along into JSON; only [`Secret::expose`] reads it.

use std::fmt;

/// A resolved secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Use it to build a request or a MAC, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("123456:AAH-very-secret");
        let shown = format!("{s} {s:?} {s:#?} {:?}", Some(s.clone()));
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "123456:AAH-very-secret");
        assert!(!s.is_empty());
        assert!(Secret::from("").is_empty());
    }
}
