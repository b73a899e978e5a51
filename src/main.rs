//! The `herald` binary: parse the command line and dispatch. Each command
//! lives in `src/cli/`; everything it calls lives in the library.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(2)
        }
    }
}
