//! The operator's error type, one enum for the whole component, each variant
//! with a fixed metric label.
//!
//! Owns classification (transient or not) so the controller can back off a
//! transient error and park a permanent one behind a condition. Labels are
//! `&'static str` chosen here — never built from user data or secrets — so
//! the error metric's cardinality is the number of variants.

use std::time::Duration;

use super::index::RefKind;
use super::inputs::DesiredError;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed (after the client's own retries).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The tier's child objects cannot be built from its spec.
    #[error("cannot build the tier's objects: {0}")]
    Desired(#[from] DesiredError),
    /// A policy or Secret the tier references is not in the cache.
    #[error("{kind} {name:?} referenced at {field} does not exist")]
    MissingReference {
        kind: RefKind,
        name: String,
        field: String,
    },
    /// An agent's `/healthz/details` could not be fetched or read.
    #[error("health details of pod {pod:?}: {why}")]
    AgentHealth { pod: String, why: String },
    /// A reconcile ran past its deadline.
    #[error("reconcile did not finish within {0:?}")]
    Timeout(Duration),
    /// An object came back from the API without a field it always has.
    #[error("{kind} has no {field}")]
    MalformedObject {
        kind: &'static str,
        field: &'static str,
    },
}

/// Result alias for the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The Prometheus label for this error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Desired(_) => "desired",
            Error::MissingReference { .. } => "missing_reference",
            Error::AgentHealth { .. } => "agent_health",
            Error::Timeout(_) => "timeout",
            Error::MalformedObject { .. } => "malformed_object",
        }
    }

    /// Whether retrying soon can help. A permanent error waits for the user
    /// to change something (which triggers a reconcile by itself), so it
    /// gets a condition and a long requeue rather than a tight loop.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(status)) => {
                !(status.is_forbidden() || status.is_invalid() || status.code == 400)
            }
            Error::Kube(_) | Error::AgentHealth { .. } | Error::Timeout(_) => true,
            Error::Desired(_) | Error::MissingReference { .. } | Error::MalformedObject { .. } => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_fixed_and_ignore_user_data() {
        let secretish = "123456:AAAA-token-like";
        let errors = [
            Error::MissingReference {
                kind: RefKind::Secret,
                name: secretish.into(),
                field: "spec.telegram.tokenSecretRef.name".into(),
            },
            Error::AgentHealth {
                pod: secretish.into(),
                why: secretish.into(),
            },
            Error::Timeout(Duration::from_secs(30)),
            Error::Desired(DesiredError::NoUid),
            Error::MalformedObject {
                kind: "Deployment",
                field: "metadata.name",
            },
        ];
        for e in &errors {
            let label = e.metric_label();
            assert!(!label.contains(secretish));
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert!(!errors[0].is_transient());
        assert!(errors[1].is_transient());
        assert!(errors[2].is_transient());
        assert!(!errors[3].is_transient());
    }
}
