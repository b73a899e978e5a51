//! `herald rollout promote|abort TIER`: open or close a canary's manual
//! gate through the Kubernetes API (the current kubeconfig context).

use std::process::ExitCode;

use anyhow::Context;
use herald::operator::gate::{Gate, request};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Promote the revision under rollout to stable now.
    Promote(Target),
    /// Abort the rollout: the canary goes to zero, stable keeps serving.
    Abort(Target),
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The DeliveryTier.
    tier: String,
    /// Its namespace; the kubeconfig context's namespace when unset.
    #[arg(short, long)]
    namespace: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (gate, target) = match args.action {
        Action::Promote(t) => (Gate::Promote, t),
        Action::Abort(t) => (Gate::Abort, t),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let revision = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        request(client, &namespace, &target.tier, gate)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let verb = match gate {
        Gate::Promote => "promotion",
        Gate::Abort => "abort",
    };
    println!(
        "{verb} of revision {revision} requested on tier {}; the operator acts on its next pass (watch `kubectl get tier {}`)",
        target.tier, target.tier
    );
    Ok(ExitCode::SUCCESS)
}
