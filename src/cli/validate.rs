//! `herald validate -f PATH...`: exit 0 when clean, 1 on errors, 2 when input
//! cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::validate::{Severity, validate_paths};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (searched recursively for *.yaml, *.yml).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// Do not print notes about skipped documents.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut report = match validate_paths(&args.paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald validate: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Rules only the engine can judge (e.g. degradation thresholds that
    // fall as severity rises), once the documents themselves are clean.
    if report.error_count() == 0
        && let Err(more) = herald::policy::ConfigSet::resolve(&report)
    {
        report.diagnostics.extend(more);
    }
    for d in &report.diagnostics {
        if d.severity == Severity::Note && args.quiet {
            continue;
        }
        println!("{d}");
    }
    let errors = report.error_count();
    if errors > 0 {
        eprintln!(
            "{errors} error(s); {} herald object(s) valid",
            report.objects.len()
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!("{} herald object(s) valid", report.objects.len());
    Ok(ExitCode::SUCCESS)
}
