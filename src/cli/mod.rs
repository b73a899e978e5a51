//! Command-line interface: one subcommand per file.

mod bench;
mod client;
mod completion;
mod crd;
mod demo;
mod logging;
mod operator;
mod rollout;
mod run;
mod sandbox;
mod simulate;
mod validate;

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// herald delivers chat messages without losing them and without breaking
/// the receiving API's rate limits.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    long_about = None,
    after_help = "-f names the YAML a command reads, with --filename as its long form everywhere: \
                  one config file for run, agent and sandbox (also --config); files, directories \
                  or - (standard input) for validate and simulate."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sandbox + agent + a burst of messages on loopback, with a live report.
    Demo(demo::Args),
    /// Run a standalone agent on its embedded store (no cluster needed).
    Run(run::Args),
    /// Run the agent as the operator deploys it (same as `run`).
    Agent(run::Args),
    /// Run the Kubernetes operator: reconcile DeliveryTiers into agent workloads.
    Operator(Box<operator::Args>),
    /// Measure the agent's own cost (throughput, latency, RSS) against a null Bot API.
    Bench(bench::Args),
    /// A canary rollout: show its status; promote, abort, pause, resume or retry it.
    Rollout(rollout::Args),
    /// Run the engine on a virtual clock against a model of Telegram.
    Simulate(simulate::Args),
    /// Print the CustomResourceDefinitions as YAML.
    Crd(crd::Args),
    /// Check herald documents offline: schema, CEL rules and references.
    Validate(validate::Args),
    /// Serve a Telegram Bot API look-alike with strict limits and fault injection.
    Sandbox(sandbox::Args),
    /// Show a running agent's state (GET /healthz/details).
    Status(client::StatusArgs),
    /// Send one message through a running agent.
    Send(client::SendArgs),
    /// Dead letters of a running agent: list, retry, purge (admin token).
    Dlq(client::DlqArgs),
    /// Circuit breakers of a running agent (admin token).
    Breaker(client::BreakerArgs),
    /// Pin or release a running agent's degradation level (admin token).
    Degrade(client::DegradeArgs),
    /// Print a shell completion script: `herald completion bash > /etc/bash_completion.d/herald`.
    Completion(completion::Args),
}

/// Parse the command line. Installed as `kubectl-herald`, herald runs as
/// a kubectl plugin (`kubectl herald rollout status ...`): kubectl passes
/// the arguments after `herald` unchanged, so the commands are the same;
/// only usage and help name the binary the way the user typed it.
pub fn parse() -> Cli {
    let mut command = Cli::command();
    if std::env::args_os()
        .next()
        .is_some_and(|argv0| is_kubectl_plugin(&argv0))
    {
        command = command.bin_name("kubectl herald");
    }
    let matches = command.get_matches();
    // The matches come from this very definition, so this cannot fail;
    // should it, clap's own error message and exit are the right answer.
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Whether argv[0] is the kubectl plugin name, whatever its directory
/// (and `.exe` on Windows).
fn is_kubectl_plugin(argv0: &OsStr) -> bool {
    let path = Path::new(argv0);
    let stem = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("exe"))
    {
        path.file_stem()
    } else {
        path.file_name()
    };
    stem.is_some_and(|s| s == "kubectl-herald")
}

/// Run a parsed command; the exit code is the command's verdict.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Run(a) | Command::Agent(a) => run::run(a),
        Command::Operator(a) => operator::run(*a),
        Command::Bench(a) => bench::run(a),
        Command::Rollout(a) => rollout::run(a),
        Command::Simulate(a) => simulate::run_cmd(a),
        Command::Crd(a) => crd::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Sandbox(a) => sandbox::run(a),
        Command::Status(a) => client::status(a),
        Command::Send(a) => client::send(a),
        Command::Dlq(a) => client::dlq(a),
        Command::Breaker(a) => client::breaker(a),
        Command::Degrade(a) => client::degrade(a),
        Command::Completion(a) => completion::run(a),
    }
}

/// Completes on Ctrl-C or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_name_is_recognised_wherever_it_is_installed() {
        for name in [
            "kubectl-herald",
            "/usr/local/bin/kubectl-herald",
            "kubectl-herald.exe",
        ] {
            assert!(is_kubectl_plugin(OsStr::new(name)), "{name}");
        }
        for name in ["herald", "/usr/bin/herald", "kubectl-herald-dev", "kubectl"] {
            assert!(!is_kubectl_plugin(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
        Cli::command().bin_name("kubectl herald").debug_assert();
    }

    #[test]
    fn connection_flags_go_before_or_after_the_subcommand() {
        for argv in [
            &[
                "herald",
                "rollout",
                "-n",
                "bots",
                "--context",
                "prod",
                "status",
                "telegram",
                "--watch",
            ][..],
            &[
                "herald",
                "rollout",
                "status",
                "telegram",
                "-w",
                "--namespace",
                "bots",
                "--context=prod",
            ][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let text = format!("{cli:?}");
            assert!(text.contains(r#"namespace: Some("bots")"#), "{text}");
            assert!(text.contains(r#"context: Some("prod")"#), "{text}");
            assert!(text.contains("watch: true"), "{text}");
        }
    }
}
