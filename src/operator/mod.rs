//! The operator's decisions: what a DeliveryTier should look like in the
//! cluster, how a canary moves, when a pod is restarted, what the status
//! says, and the controller shell that acts on them. The decision files
//! (index, secrets, inputs, reach, desired, pod, pod_settings, canary,
//! healing, status, condition, names, hash, agent_config) are pure — no `kube::Client`, no tokio, no clock; the shell
//! (`controller`, `context`, `leader`, `health_client`, `metrics`) reads the
//! cluster and the time, calls them, and applies what they return.
//!
//! What the operator watches, and how it links:
//!
//! ```text
//!   RateLimitPolicy ─┐ spec.rateLimitPolicyRef
//!     CircuitPolicy ─┤ spec.circuitPolicyRef
//! DegradationProfile ┤ spec.degradationProfileRef
//!            Secret ─┤ spec.telegram.tokenSecretRef, spec.webhook.hmacSecretRef,
//!                    │ spec.store.redis.urlSecretRef
//!      DeliveryTier ─┘ spec.fallbackTiers, and a profile's levels[].actions.routeTo:
//!                    │ tiers the agent delivers through, with their policies
//!                    │ and channel Secrets, transitively
//!                    ▼
//!      DeliveryTier ──owns──▶ ConfigMap <tier>-config (Agent document + tier + the
//!                                tiers it delivers through + their policies)
//!                            Deployment <tier>-agent (stable) and <tier>-canary
//!                            Service <tier>, PodDisruptionBudget <tier>
//!                            ServiceAccount / Role / RoleBinding <tier>-agent
//!                            PersistentVolumeClaims <tier>-queue, <tier>-spool
//! ```
//!
//! Files:
//! - [`names`]: object names, labels, selectors and annotation keys.
//! - [`index`]: which tiers reference which policy, Secret or tier, and
//!   which tiers each one delivers through (watch mapper, policies'
//!   `usedBy`, missing references).
//! - [`reach`]: the tiers one agent delivers through and the policies they
//!   need — the walk both the resolver and the renderer use.
//! - [`secrets`]: which Secrets a tier reads, and what for.
//! - [`inputs`]: what the renderers read besides the tier (resolved
//!   references, options, the tracks' plan) and [`inputs::DesiredError`].
//! - [`agent_config`]: the agent's config file (multi-document YAML that
//!   the agent loads as it is), its revision hash, and the names under
//!   which Secrets reach the agent.
//! - [`desired`]: the typed child objects of a tier.
//! - [`pod`]: the agent pod inside them, and its revision.
//! - [`pod_settings`]: the user's pod settings (operator defaults and a
//!   tier's `spec.podTemplate`) merged into that pod, and the operator's
//!   defaults parsed at start.
//! - [`canary`]: the rollout state machine.
//! - [`healing`]: which unhealthy pods to restart, and when not to.
//! - [`status`]: the tier's and the policies' status, and when it changed.
//! - [`condition`]: conditions without timestamps, and stamping them.
//! - [`hash`]: the stable content hash behind every revision.
//! - [`rollout_status`]: `herald rollout status`: reading a tier's rollout
//!   and putting it in words (like [`gate`], a shell file).
//! - [`time`]: timestamp arithmetic with `std::time::Duration`.
//! - [`error`]: the operator's error type, labelled for metrics.
//!
//! Time: every function that needs the time takes `now` as a
//! [`jiff::Timestamp`](k8s_openapi::jiff::Timestamp) — the type
//! k8s-openapi's `Time` wraps — so what goes into a status or a decision
//! is exactly what the caller passed.

pub mod agent_config;
pub mod agent_proxy;
pub mod canary;
pub mod condition;
pub mod context;
pub mod controller;
pub mod desired;
pub mod error;
pub mod gate;
pub mod hash;
pub mod healing;
pub mod health_client;
pub mod index;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod pod;
pub mod pod_settings;
pub mod reach;
pub mod rollout_status;
pub mod secrets;
pub mod status;
pub mod time;

#[cfg(test)]
mod tests;

pub use error::Error;
