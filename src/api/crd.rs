//! The four CustomResourceDefinitions, generated from the types, and their
//! YAML rendering (what `herald crd` prints and `crds/` holds).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};

/// The herald kinds, in the order `herald crd` prints them.
pub const KINDS: [&str; 4] = [
    "DeliveryTier",
    "RateLimitPolicy",
    "CircuitPolicy",
    "DegradationProfile",
];

/// The CRD of one kind, by its `kind` name; `None` for anything else.
pub fn crd_for(kind: &str) -> Option<CustomResourceDefinition> {
    match kind {
        "DeliveryTier" => Some(DeliveryTier::crd()),
        "RateLimitPolicy" => Some(RateLimitPolicy::crd()),
        "CircuitPolicy" => Some(CircuitPolicy::crd()),
        "DegradationProfile" => Some(DegradationProfile::crd()),
        _ => None,
    }
}

/// All four CRDs.
pub fn all() -> Vec<CustomResourceDefinition> {
    KINDS.iter().filter_map(|k| crd_for(k)).collect()
}

/// The file name a CRD is kept under in `crds/`: `<plural>.herald.dev.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// YAML for one CRD, as one document.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}
