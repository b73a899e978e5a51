//! `herald run -f CONFIG` (standalone) and `herald agent --config CONFIG`
//! (the same agent as the operator runs it): serve until SIGTERM, then
//! drain and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file: herald documents plus an optional Agent document.
    #[arg(short = 'f', long = "config", alias = "filename")]
    config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::logging::init();
    // Declared before the runtime so it drops after it: the final flush of
    // spans blocks, and runs once the drain is over.
    let _telemetry = herald::telemetry::init("herald-agent");
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let env = |k: &str| std::env::var(k).ok();
        let agent = herald::agent::run::start(args.config, &env).await?;
        eprintln!("herald agent on http://{}", agent.addr);
        super::shutdown_signal().await;
        tracing::info!("shutdown requested; draining");
        agent.shutdown().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
