//! `herald bench`: measure the agent's own cost against a null Bot API.

use std::process::ExitCode;

use anyhow::Context;
use herald::bench::{BacklogPlan, BenchPlan, render, render_backlog, run as run_bench};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A few seconds instead of about a minute: checks every measurement runs.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Messages per throughput round.
    #[arg(long)]
    messages: Option<u64>,
    /// Concurrent producers in the throughput rounds.
    #[arg(long)]
    producers: Option<usize>,
    /// Messages per request in the throughput rounds (1-1000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: Option<u64>,
    /// Single-message requests per second in the latency run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: Option<u64>,
    /// Only the accept path: throughput rounds with metrics on and the
    /// latency run (no drop-in calls, no idle RSS, no metrics-off rounds);
    /// what scripts/bench-vs-bullmq.sh compares with BullMQ.
    #[arg(long)]
    accept_only: bool,
    /// Throughput rounds.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: Option<u32>,
    /// Instead of the other measurements: queue this many messages on an
    /// agent under Telegram's limits, and report its memory per queued
    /// message and its send rate with that backlog held.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    backlog: Option<u64>,
    /// Chats the backlog is spread over.
    #[arg(long, default_value_t = 100_000, requires = "backlog",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    chats: u64,
    /// Seconds the send rate is measured with the backlog held.
    #[arg(long, default_value_t = 20, requires = "backlog",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    window: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the herald executable")?;
    if let Some(messages) = args.backlog {
        return run_backlog(
            BacklogPlan {
                exe,
                messages,
                chats: args.chats,
                window: std::time::Duration::from_secs(args.window),
            },
            args.json,
        );
    }
    let mut plan = if args.quick {
        BenchPlan::quick(exe)
    } else {
        BenchPlan::full(exe)
    };
    if let Some(n) = args.messages {
        plan.throughput_messages = n.max(1);
    }
    if let Some(p) = args.producers {
        plan.producers = p.max(1);
    }
    if let Some(b) = args.batch {
        plan.batch = b;
    }
    if let Some(r) = args.rate {
        plan.latency_rate = r;
    }
    if args.accept_only {
        plan.compare_metrics = false;
        plan.drop_in_calls = 0;
        plan.idle_wait = std::time::Duration::ZERO;
        plan.rounds = 1;
    }
    if let Some(r) = args.rounds {
        plan.rounds = r;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let json = args.json;
    let report = runtime.block_on(async {
        let mut progress = |line: &str| {
            if !json {
                println!("· {line}");
            }
        };
        run_bench(&plan, &mut progress).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_backlog(plan: BacklogPlan, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let report = runtime.block_on(async {
        let mut progress = |line: &str| {
            if !json {
                println!("· {line}");
            }
        };
        herald::bench::run_backlog(&plan, &mut progress).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_backlog(&report));
    }
    Ok(ExitCode::SUCCESS)
}
