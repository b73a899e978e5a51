//! What a tier's objects are built from besides the tier itself, and why
//! they may not be buildable: the references resolved from the caches, the
//! operator's options, the two tracks' plan during a rollout, and
//! [`DesiredError`].
//!
//! Owns these input types only. Every decision file that renders part of
//! a tier's children (`reach`, `agent_config`, `pod`, `desired`, `canary`)
//! reads them from here, below all of them, so none imports another's
//! inputs from the file that renders the whole.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::pod_template::PodTemplate;
use crate::api::{
    CircuitPolicySpec, DegradationProfileSpec, DeliveryTierSpec, RateLimitPolicySpec,
};

use super::index::RefKind;

/// What a tier's agents need besides the tier, as read from the caches, by
/// name: the policies of the tier and of the other tiers it delivers
/// through, and those tiers. What [`reach`](super::reach) walks to and
/// does not find here is a missing reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedPolicies {
    pub rate_limits: BTreeMap<String, RateLimitPolicySpec>,
    pub circuits: BTreeMap<String, CircuitPolicySpec>,
    pub degradations: BTreeMap<String, DegradationProfileSpec>,
    /// The other tiers (fallbacks and degradation routes, transitively).
    pub tiers: BTreeMap<String, DeliveryTierSpec>,
    /// A version token (the `resourceVersion`) of each Secret the pods
    /// read, by Secret name. Part of the pod revision, so a rotated Secret
    /// rolls the pods that read it from env. Never the Secret's data.
    pub secret_versions: BTreeMap<String, String>,
}

/// Operator-wide settings (flags of `herald operator`).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorOptions {
    /// Agent image for tiers that set none (the operator's own image).
    pub default_image: String,
    /// `imagePullPolicy`; `None` leaves the Kubernetes default.
    pub image_pull_policy: Option<String>,
    /// StorageClass of the claims; `None` uses the cluster default.
    pub storage_class: Option<String>,
    /// Size of the embedded-queue claim.
    pub queue_volume_size: Quantity,
    /// Size of the spool claim.
    pub spool_volume_size: Quantity,
    /// Access mode of the spool claim. A spool tier with more than one
    /// replica or a rollout needs `ReadWriteMany` storage.
    pub spool_access_mode: String,
    /// Settings of every agent pod, under each tier's `spec.podTemplate`
    /// (the chart's `operator.agent.podDefaults` and `imagePullSecrets`).
    pub pod_defaults: PodTemplate,
    /// Plain variables every agent container gets, after herald's own
    /// (e.g. the operator's `OTEL_*` settings, see [`otel_env`]). Part of
    /// the pod spec, so changing them rolls the agents.
    pub agent_env: Vec<(String, String)>,
}

/// The OpenTelemetry settings agents inherit from the operator's own
/// environment: every `OTEL_*` variable but the service name (agents name
/// themselves `herald-agent`) and the exporter headers, which may carry a
/// collector's credentials and would sit in plain text in every
/// Deployment. Sorted, so the pod revision is stable.
pub fn otel_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("OTEL_") && k != "OTEL_SERVICE_NAME" && !k.ends_with("_HEADERS")
        })
        .collect();
    out.sort();
    out
}

impl OperatorOptions {
    /// Defaults around an image: 1Gi claims, ReadWriteOnce spool, no pod
    /// settings.
    pub fn new(default_image: impl Into<String>) -> Self {
        OperatorOptions {
            default_image: default_image.into(),
            image_pull_policy: None,
            storage_class: None,
            queue_volume_size: Quantity("1Gi".to_owned()),
            spool_volume_size: Quantity("1Gi".to_owned()),
            spool_access_mode: "ReadWriteOnce".to_owned(),
            pod_defaults: PodTemplate::default(),
            agent_env: Vec::new(),
        }
    }
}

/// How the two Deployments run in this pass; derived from the rollout
/// state by [`RolloutState::tracks`](super::canary::RolloutState::tracks).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tracks {
    /// While a rollout is underway: the pod template the stable Deployment
    /// runs now, read back from it, so applying does not change it. `None`:
    /// stable runs the desired template.
    pub stable_template: Option<PodTemplateSpec>,
    /// The canary's replicas and share of partitions; `None` means none.
    pub canary: Option<CanaryTrack>,
}

/// The canary's size and share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CanaryTrack {
    pub replicas: u32,
    /// Percent of queue partitions.
    pub weight: u32,
}

/// Why a tier's objects cannot be built. None of these is transient: each
/// waits for the tier (or a policy) to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("the DeliveryTier has no metadata.uid yet; owner references need one")]
    NoUid,
    #[error("the DeliveryTier has no {0}")]
    NoMetadata(&'static str),
    #[error("tier name {name:?} cannot name its Service: it {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("{kind} {name:?} referenced at {field} is not available")]
    MissingReference {
        kind: RefKind,
        name: String,
        field: String,
    },
    #[error(
        "spec.fallbackTiers: fallback cycle {0}; the agent refuses a config whose fallbacks loop"
    )]
    FallbackCycle(String),
    #[error(
        "Secret keys {first} and {second} would both reach the agent as environment variable {var}; rename one of them"
    )]
    SecretVariableClash {
        var: String,
        first: String,
        second: String,
    },
    #[error("{field}: {why}")]
    InvalidSpec {
        field: &'static str,
        why: &'static str,
    },
    #[error("{field}: {why}")]
    InvalidPodTemplate { field: String, why: String },
    #[error("rendering the agent config: {0}")]
    Render(String),
}
