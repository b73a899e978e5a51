//! Structured logs for long-running commands: JSON lines when
//! `HERALD_LOG_FORMAT=json`, human text otherwise; level from `RUST_LOG`
//! (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_as(std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v == "json"));
}

/// JSON lines or text, as the command's own flag says.
pub fn init_as(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a file or a pod's log gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, nested commands) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
