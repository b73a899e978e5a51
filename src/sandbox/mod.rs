//! A Telegram Bot API look-alike with Telegram's limits enforced strictly and
//! faults on demand: what herald's tests, `herald demo` and offline users
//! send to instead of Telegram.
//!
//! Owns: the Bot API routes (`getMe`, `sendMessage`, `sendPhoto`,
//! `sendDocument`; JSON, form, query and multipart requests), the strict
//! judge of the rate limits (`limits`), fault injection (`faults`), and the
//! observation routes under `/sandbox/` (`server` lists them). Leaves
//! herald's own limiting to `crate::engine` and shares no code with it: this
//! module is the independent referee.
//!
//! Invariant: limits are judged on arrival instants (`tokio::time::Instant`,
//! so paused-time tests are exact); a bot token never appears in a log line,
//! an error or a `Debug` output.
//!
//! Files: `config` (settings), `limits` (the judge), `faults` (injection),
//! `counters` (what was seen), `params` (request decoding), `reply` (answer
//! shapes), `state` (one request, start to finish), `server` (HTTP),
//! `handle` (in-process start/stop).

pub mod config;
pub mod counters;
pub mod faults;
mod handle;
pub mod limits;
pub mod params;
mod reply;
mod server;
mod state;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::{BotToken, LimitsConfig, SandboxConfig, WindowLimit};
pub use counters::{ChatCounts, Counters, DeliveredMessage};
pub use faults::{DarkPeriod, FaultsConfig};
pub use handle::{Sandbox, SandboxHandle};
pub use limits::{Cause, Judge, Verdict};

use state::{Shared, State};

/// Why the sandbox could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox config: {0}")]
    Config(String),
    #[error("sandbox server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("sandbox server task ended abnormally")]
    Task,
}

/// Serves the sandbox on `listener` until `shutdown` completes, then lets
/// open requests finish. The caller picks the address (bind 127.0.0.1).
pub async fn serve(
    listener: TcpListener,
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let shared = Arc::new(Shared::new(State::new(config, Instant::now())?));
    serve_shared(listener, shared, shutdown).await
}

async fn serve_shared(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    axum::serve(listener, server::router(shared))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
