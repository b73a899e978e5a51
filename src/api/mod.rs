//! The herald.dev/v1alpha1 API: the four custom resources users write, one
//! file per kind, plus the pieces they share.
//!
//! These types are the single source of truth for the CRDs (`herald crd`),
//! for `herald validate`, for the agent's config file and for the operator.
//! Field docs become `kubectl explain` text; bounds and CEL rules live in the
//! generated schema so the API server and `herald validate` enforce the same
//! rules.

pub mod agent;
pub mod circuit_policy;
pub mod conditions;
pub mod crd;
pub mod degradation_profile;
pub mod delivery_tier;
pub mod duration;
pub mod pod_template;
pub mod policy_status;
pub mod rate_limit_policy;
pub mod reference;
pub mod refs;

pub use agent::AgentSpec;
pub use circuit_policy::{CircuitPolicy, CircuitPolicySpec};
pub use degradation_profile::{DegradationProfile, DegradationProfileSpec};
pub use delivery_tier::{DeliveryTier, DeliveryTierSpec};
pub use duration::DurationString;
pub use rate_limit_policy::{RateLimitPolicy, RateLimitPolicySpec};

/// API group of every herald kind.
pub const GROUP: &str = "herald.dev";
/// API version of every herald kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "herald.dev/v1alpha1";
