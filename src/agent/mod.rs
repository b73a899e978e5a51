//! The delivery agent: ingest, the durable queue, the dispatcher that drives
//! the engine against real sinks, and the operations API.
//!
//! Owns the I/O shell around `crate::engine`: HTTP servers, tokio tasks,
//! the store, secrets and config reload. Decisions stay in the engine.

pub mod config;
pub mod config_map;
pub mod dispatch_config;
pub mod dispatch_loop;
pub mod dispatch_runtime;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod run;
pub mod secrets;
pub mod spill;
pub mod state;
pub mod store;
