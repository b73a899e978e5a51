//! Command-line interface: one subcommand per file.

mod crd;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// herald delivers chat messages without losing them and without breaking
/// the receiving API's rate limits.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd(crd::Args),
    /// Check herald documents offline: schema, CEL rules and references.
    Validate(validate::Args),
}

/// Run a parsed command; the exit code is the command's verdict.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd(a) => crd::run(a),
        Command::Validate(a) => validate::run(a),
    }
}
