//! herald: durable, rate-limit-safe chat message delivery.
//!
//! - [`agent`]: the delivery agent's I/O shell (ingest, dispatch loop, operations).
//! - [`api`]: the herald.dev/v1alpha1 custom resources (CRDs, config format).
//! - [`validate`]: offline checks of herald documents (`herald validate`).
//! - [`clock`]: the wall clock the I/O shells read (the engine reads none).
//! - [`demo`]: `herald demo`, the data path end to end on loopback.
//! - [`engine`]: pure delivery decisions (limits, breaker, retry, scheduling).
//! - [`fleet`]: agents sharing a Redis queue (membership, partitions, shared limiter).
//! - [`operator`]: the operator's pure decisions (desired objects, canary, healing, status).
//! - [`policy`]: a tier and its policies resolved into engine configuration.
//! - [`sim`]: `herald simulate`, the engine against a model of Telegram on a virtual clock.
//! - [`sink`]: where messages go (Telegram Bot API, webhook, spool) and receipts.
//! - [`store`]: the durable queue (trait and contract; embedded redb backend).
//! - [`sandbox`]: a strict Telegram Bot API look-alike for tests and demos.
//! - [`telemetry`]: OpenTelemetry traces (cargo feature `otel`; a no-op without it).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod bench;
pub mod clock;
pub mod demo;
pub mod engine;
pub mod fleet;
pub mod operator;
pub mod policy;
pub mod sandbox;
pub mod sim;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod validate;
