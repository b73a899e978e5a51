//! `herald demo`: sandbox + agent + a realistic burst, in about a minute.

use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the burst.
    #[arg(long, default_value_t = 1500)]
    messages: usize,
    /// Distinct chats they go to.
    #[arg(long, default_value_t = 300)]
    chats: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let summary = runtime.block_on(async {
        let mut out = std::io::stdout();
        herald::demo::run(&mut out, args.messages.max(1), args.chats.max(1)).await
    })?;
    if summary.lost > 0 || summary.rate_limited_429 > 0 {
        eprintln!(
            "herald demo: FAILED (lost {}, 429s {})",
            summary.lost, summary.rate_limited_429
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
