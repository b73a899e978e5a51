//! Status conditions shared by all four kinds, and the schema that makes
//! `status.conditions` a list-map keyed by `type` (as Kubernetes' own types
//! declare it), so server-side apply merges conditions one by one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator, json_schema};

/// Condition types herald sets on a DeliveryTier.
pub mod types {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const DEPENDENCY_DEGRADED: &str = "DependencyDegraded";
    pub const CANARY_ANALYSIS: &str = "CanaryAnalysis";
    /// Set on policies: whether the spec was accepted.
    pub const ACCEPTED: &str = "Accepted";
}

/// Schema for `conditions`: the standard `metav1.Condition`, as a list-map.
pub fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Standard conditions: type, status, reason, message, lastTransitionTime, observedGeneration.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "maxLength": 316,
                    "description": "Type of condition in CamelCase, e.g. Ready."
                },
                "status": {
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                    "description": "Status of the condition: True, False or Unknown."
                },
                "reason": {
                    "type": "string",
                    "maxLength": 1024,
                    "description": "Machine-readable CamelCase reason for the last transition."
                },
                "message": {
                    "type": "string",
                    "maxLength": 32768,
                    "description": "Human-readable message about the last transition."
                },
                "lastTransitionTime": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the condition last changed status."
                },
                "observedGeneration": {
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                    "description": "The .metadata.generation the condition was set from."
                }
            }
        }
    })
}

/// Conditions as stored in a status; the k8s type itself.
pub type Conditions = Vec<Condition>;
