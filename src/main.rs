//! The `herald` binary: parse the command line and dispatch. Each command
//! lives in `src/cli/`; everything it calls lives in the library.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, chosen here rather than
    // by feature unification: when two providers end up compiled in (a test
    // build pulls aws-lc-rs in through a dev-dependency), rustls cannot pick
    // one and kube's client panics on its first HTTPS connection. Err only
    // means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text
/// the message already carries (library errors often embed their source).
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("configuration: {0}")]
    struct Outer(#[from] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("secret bot/token not found")]
    struct Inner;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::from(Outer(Inner)).context("starting the agent");
        assert_eq!(
            chain(&e),
            "starting the agent: configuration: secret bot/token not found"
        );
    }
}
