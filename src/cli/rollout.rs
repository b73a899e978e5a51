//! `herald rollout promote|abort|status TIER`: a canary's manual gate, and
//! what the rollout is doing, through the Kubernetes API.
//!
//! The connection flags are global to the group, so they may come before
//! or after the subcommand, as with kubectl.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use herald::api::DeliveryTier;
use herald::operator::gate::{Gate, request};
use herald::operator::rollout_status::{self, Outcome, Snapshot};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: Action,
}

/// Which cluster, as whom, and where.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connection")]
struct Connection {
    /// Kubeconfig file to use instead of $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The tier's namespace; the context's namespace when unset.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Promote the revision under rollout to stable now.
    Promote(Target),
    /// Abort the rollout: the canary goes to zero, stable keeps serving.
    Abort(Target),
    /// Show the rollout: step, weight, revisions, analysis and conditions.
    #[command(
        long_about = "Show the rollout: step, weight, revisions, analysis and conditions.\n\n\
        With --watch, print a new block whenever it changes, until the rollout ends: \
        exit 0 when it is promoted (or none is underway), 1 when it is aborted, \
        130 on Ctrl-C."
    )]
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The DeliveryTier.
    tier: String,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The DeliveryTier.
    tier: String,
    /// Follow the rollout until it is promoted or aborted.
    #[arg(short, long)]
    watch: bool,
}

/// Exit code of a watch that saw its rollout aborted.
const ABORTED: u8 = 1;
/// Watch errors in a row that end a watch; with the watcher's backoff
/// (0.8 s, doubling) that is some ten seconds without the API.
const MAX_WATCH_FAILURES: u32 = 5;
/// Exit code of a watch stopped by Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let (client, namespace) = connect(&args.connection).await?;
        match args.action {
            Action::Promote(t) => gate(client, &namespace, &t.tier, Gate::Promote).await,
            Action::Abort(t) => gate(client, &namespace, &t.tier, Gate::Abort).await,
            Action::Status(s) if s.watch => watch(client, &namespace, &s.tier).await,
            Action::Status(s) => {
                let snapshot = rollout_status::read(client, &namespace, &s.tier).await?;
                print_block(&rollout_status::lines(&snapshot));
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// A client for the chosen kubeconfig and context, or the usual inference
/// (KUBECONFIG, ~/.kube/config, in-cluster) when neither is given; and the
/// namespace to use.
async fn connect(c: &Connection) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: c.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&c.kubeconfig, &c.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("loading context {context} from the kubeconfig"))?,
        (None, None) => Config::infer()
            .await
            .context("finding the Kubernetes API (kubeconfig or in-cluster)")?,
    };
    let namespace = c
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, namespace))
}

async fn gate(client: Client, namespace: &str, tier: &str, gate: Gate) -> anyhow::Result<ExitCode> {
    let revision = request(client, namespace, tier, gate).await?;
    let verb = match gate {
        Gate::Promote => "promotion",
        Gate::Abort => "abort",
    };
    println!(
        "{verb} of revision {revision} requested on tier {tier}; the operator acts on its next pass (watch with `herald rollout status {tier} -n {namespace} --watch`)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Print a block whenever the rollout's text changes, until it ends.
async fn watch(client: Client, namespace: &str, tier: &str) -> anyhow::Result<ExitCode> {
    // A first read gives a plain "not found" rather than a silent wait,
    // and a first block at once.
    let first = rollout_status::read(client.clone(), namespace, tier).await?;
    let mut shown = rollout_status::lines(&first);
    print_block(&shown);
    if let Some(outcome) = rollout_status::outcome(&first.tier) {
        return Ok(ended(outcome));
    }
    let api: Api<DeliveryTier> = Api::namespaced(client.clone(), namespace);
    // The watcher re-lists after an expired watch by itself; the backoff
    // keeps a flapping connection from spinning.
    let mut events = watcher::watch_object(api, tier)
        .default_backoff()
        .map_err(anyhow::Error::from)
        .boxed();
    let interrupted = crate::cli::shutdown_signal();
    tokio::pin!(interrupted);
    let mut failures = 0;
    loop {
        let event = tokio::select! {
            () = &mut interrupted => return Ok(ExitCode::from(INTERRUPTED)),
            e = events.next() => e,
        };
        let Some(event) = event else {
            anyhow::bail!("the watch on DeliveryTier {namespace}/{tier} ended");
        };
        let event = match event {
            Ok(e) => {
                failures = 0;
                e
            }
            // A rollout takes minutes; one dropped connection should not
            // end the watch, a connection that stays down should.
            Err(e) if failures + 1 < MAX_WATCH_FAILURES => {
                failures += 1;
                eprintln!("herald: watching DeliveryTier {namespace}/{tier}: {e:#} (retrying)");
                continue;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "watching DeliveryTier {namespace}/{tier} ({MAX_WATCH_FAILURES} failures in a row)"
                )));
            }
        };
        let Some(found) = event else {
            anyhow::bail!("DeliveryTier {namespace}/{tier} was deleted");
        };
        let snapshot: Snapshot =
            rollout_status::with_stable_revision(client.clone(), namespace, found).await;
        let now = rollout_status::lines(&snapshot);
        if now != shown {
            println!();
            print_block(&now);
            shown = now;
        }
        if let Some(outcome) = rollout_status::outcome(&snapshot.tier) {
            return Ok(ended(outcome));
        }
    }
}

fn ended(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Settled | Outcome::Promoted => ExitCode::SUCCESS,
        Outcome::Aborted => ExitCode::from(ABORTED),
    }
}

fn print_block(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}
