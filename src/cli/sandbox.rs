//! `herald sandbox`: serve the Telegram Bot API look-alike on loopback until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use herald::sandbox::{SandboxConfig, serve};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (127.0.0.1 unless --bind says otherwise).
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// YAML or JSON file with sandbox settings (tokens, limits, faults).
    #[arg(short = 'f', long = "config", alias = "filename")]
    config: Option<PathBuf>,
    /// Answer 5xx to this share of Bot API requests (0..1).
    #[arg(long)]
    error_rate: Option<f64>,
    /// Refuse nothing: turn the rate limits off.
    #[arg(long)]
    no_limits: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_saphyr::from_str::<SandboxConfig>(&text)
                .with_context(|| format!("{}: invalid sandbox config", path.display()))?
        }
        None => SandboxConfig::default(),
    };
    if let Some(rate) = args.error_rate {
        config.faults.error_rate = rate;
    }
    if args.no_limits {
        config.limits.per_bot.max = 0;
        config.limits.per_chat.max = 0;
        config.limits.per_group.max = 0;
    }
    config.validate()?;
    super::logging::init();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.bind, args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "herald sandbox: Telegram Bot API look-alike on http://{addr}/bot<token>/<method>"
        );
        eprintln!("herald sandbox: counters at http://{addr}/sandbox/counters");
        serve(listener, config, super::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
