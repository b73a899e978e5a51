//! `herald simulate -f CONFIG --workload WORKLOAD [--json] [--seed N]`.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::sim::{SimArgs, run};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config files or directories, as for `herald validate`; `-` reads
    /// standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// The workload file (see config/samples/workloads/).
    #[arg(long)]
    workload: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Seed of every random choice; the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tier messages enter by (default: the Agent document's, else the
    /// highest-priority tier that is nobody's fallback).
    #[arg(long)]
    entry_tier: Option<String>,
}

pub fn run_cmd(a: Args) -> anyhow::Result<ExitCode> {
    let args = SimArgs {
        config: a.config,
        workload: a.workload,
        seed: a.seed,
        entry_tier: a.entry_tier,
    };
    match run(&args) {
        Ok(report) => {
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1)))
        }
    }
}
