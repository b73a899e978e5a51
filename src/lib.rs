//! herald: durable, rate-limit-safe chat message delivery.
//!
//! The modules, bottom layer first; each imports only from layers below
//! its own (`scripts/import-loops.py` checks it):
//!
//! - [`engine`]: pure delivery decisions (limits, breaker, retry, scheduling,
//!   the canary's partition split); reads no clock, does no I/O.
//! - [`clock`]: the wall clock the I/O shells read (the engine reads none).
//! - [`sandbox`]: a strict Telegram Bot API look-alike for tests and demos.
//! - [`api`]: the herald.dev/v1alpha1 custom resources (CRDs, config format).
//! - [`validate`]: offline checks of herald documents (`herald validate`).
//! - [`policy`]: a tier and its policies resolved into engine configuration,
//!   and the limits a tier applies right now (`policy::effective`).
//! - [`store`]: the durable queue: the `Store` trait and its contract suite,
//!   the record encoding and life cycle, the `embedded` and `redis` backends.
//! - [`sink`]: where messages go (Telegram Bot API, webhook, spool) and receipts.
//! - [`fleet`]: agents sharing a Redis queue (membership, partition
//!   assignment, the shared limiter, the partition task).
//! - [`telemetry`]: OpenTelemetry traces (cargo feature `otel`; a no-op without it).
//! - [`agent`]: the delivery agent's I/O shell (ingest, dispatch loop, operations).
//! - [`operator`]: the operator's pure decisions (desired objects, canary,
//!   healing, status) and the controller shell.
//! - [`sim`]: `herald simulate`, the engine against a model of Telegram on a virtual clock.
//! - [`bench`]: `herald bench`, a real agent process under load generators.
//! - [`demo`]: `herald demo`, the data path end to end on loopback.
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
