//! herald: durable, rate-limit-safe chat message delivery.
//!
//! - [`api`]: the herald.dev/v1alpha1 custom resources (CRDs, config format).
//! - [`validate`]: offline checks of herald documents (`herald validate`).
//! - [`engine`]: pure delivery decisions (limits, breaker, retry, scheduling).
//! - [`policy`]: a tier and its policies resolved into engine configuration.
//! - [`store`]: the durable queue (trait and contract; embedded redb backend).
//! - [`sandbox`]: a strict Telegram Bot API look-alike for tests and demos.
#![forbid(unsafe_code)]

pub mod api;
pub mod engine;
pub mod policy;
pub mod sandbox;
pub mod store;
pub mod validate;
