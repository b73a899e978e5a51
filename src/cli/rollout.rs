//! `herald rollout promote|abort|pause|resume|retry|status TIER`: a
//! canary's manual gates, and what the rollout is doing, through the
//! Kubernetes API.
//!
//! The connection flags are global to the group, so they may come before
//! or after the subcommand, as with kubectl.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures::{Stream, StreamExt, TryStreamExt};
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

/// Which cluster, as whom, and where; also the agent client commands'
/// way to a tier (`--tier`).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connection")]
pub(crate) struct Connection {
    /// Kubeconfig file to use instead of $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// The tier's namespace; the context's namespace when unset.
    #[arg(short, long, global = true)]
    pub(crate) namespace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Promote the revision under rollout to stable now.
    Promote(Target),
    /// Abort the rollout: the canary goes to zero, stable keeps serving.
    Abort(Target),
    /// Hold the canary at its current step and weight until resumed.
    #[command(
        long_about = "Hold the canary at its current step and weight until resumed.\n\n\
        The canary keeps serving its share and keeps being analysed: a failed analysis \
        still aborts it. A promote or an abort still acts. The pause is for the revision \
        under rollout only; a later revision is not paused by it."
    )]
    Pause(Target),
    /// Continue a paused rollout from where it was.
    #[command(long_about = "Continue a paused rollout from where it was.\n\n\
        The step's pause counts only the time the canary ran: the time it was paused \
        is added to the step, not taken from it.")]
    Resume(Target),
    /// Start an aborted revision's canary again, from the first step.
    #[command(
        long_about = "Start an aborted revision's canary again, from the first step.\n\n\
        For a tier whose rollout was aborted and whose spec still asks for that \
        revision. It also removes the promote, abort and pause annotations, so the \
        new attempt starts clean."
    )]
    Retry(Target),
    /// Show the rollout: step, weight, revisions, analysis and conditions.
    #[command(
        long_about = "Show the rollout: step, weight, revisions, analysis and conditions.\n\n\
        With --watch, print a new block whenever it changes, until the rollout ends: \
        exit 0 when it is promoted (or none is underway), 1 when it is aborted, \
        130 when stopped by Ctrl-C or SIGTERM. A rollout paused by hand or waiting \
        at the manual gate keeps the watch going."
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
/// Exit code of a watch stopped by Ctrl-C or SIGTERM: 128 + SIGINT, as a
/// shell reports an interrupted command, for either, since both mean that
/// the user stopped waiting, not that the rollout failed.
const INTERRUPTED: u8 = 130;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let (client, namespace) = connect(&args.connection).await?;
        match args.action {
            Action::Promote(t) => gate(client, &namespace, &t.tier, Gate::Promote).await,
            Action::Abort(t) => gate(client, &namespace, &t.tier, Gate::Abort).await,
            Action::Pause(t) => gate(client, &namespace, &t.tier, Gate::Pause).await,
            Action::Resume(t) => gate(client, &namespace, &t.tier, Gate::Resume).await,
            Action::Retry(t) => gate(client, &namespace, &t.tier, Gate::Retry).await,
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
pub(crate) async fn connect(c: &Connection) -> anyhow::Result<(Client, String)> {
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
        Gate::Pause => "pause",
        Gate::Resume => "resume",
        Gate::Retry => "retry",
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
    let api: Api<DeliveryTier> = Api::namespaced(client.clone(), namespace);
    let ns = namespace.to_owned();
    // The watcher re-lists after an expired watch by itself; the backoff
    // keeps a flapping connection from spinning.
    let snapshots = watcher::watch_object(api, tier)
        .default_backoff()
        .map_err(anyhow::Error::from)
        .and_then(move |event| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                Ok(match event {
                    Some(t) => Some(rollout_status::with_stable_revision(client, &ns, t).await),
                    None => None,
                })
            }
        })
        .boxed();
    let what = format!("DeliveryTier {namespace}/{tier}");
    let mut stdout = std::io::stdout();
    tokio::select! {
        () = crate::cli::shutdown_signal() => Ok(ExitCode::from(INTERRUPTED)),
        outcome = follow(&what, first, snapshots, &mut stdout) => Ok(ended(outcome?)),
    }
}

/// Print `first`, then each snapshot whose text differs from the last
/// printed, until one shows the rollout ended. `Ok(None)` from the stream
/// means the object is gone.
async fn follow<S>(
    what: &str,
    first: Snapshot,
    mut snapshots: S,
    out: &mut impl Write,
) -> anyhow::Result<Outcome>
where
    S: Stream<Item = anyhow::Result<Option<Snapshot>>> + Unpin,
{
    let mut shown = rollout_status::lines(&first);
    write_block(out, &shown)?;
    if let Some(outcome) = rollout_status::outcome(&first.tier) {
        return Ok(outcome);
    }
    let mut failures = 0;
    loop {
        let Some(event) = snapshots.next().await else {
            anyhow::bail!("the watch on {what} ended");
        };
        let snapshot = match event {
            Ok(Some(s)) => {
                failures = 0;
                s
            }
            Ok(None) => anyhow::bail!("{what} was deleted"),
            // A rollout takes minutes; one dropped connection should not
            // end the watch, a connection that stays down should.
            Err(e) if failures + 1 < MAX_WATCH_FAILURES => {
                failures += 1;
                eprintln!("herald: watching {what}: {e:#} (retrying)");
                continue;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "watching {what} ({MAX_WATCH_FAILURES} failures in a row)"
                )));
            }
        };
        let now = rollout_status::lines(&snapshot);
        if now != shown {
            writeln!(out).context("writing to stdout")?;
            write_block(out, &now)?;
            shown = now;
        }
        if let Some(outcome) = rollout_status::outcome(&snapshot.tier) {
            return Ok(outcome);
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

fn write_block(out: &mut impl Write, lines: &[String]) -> anyhow::Result<()> {
    for line in lines {
        writeln!(out, "{line}").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use serde_json::json;

    use super::*;

    /// Tier `bots` at generation 2 with `canary` (verdict, weight) as the
    /// operator wrote it for `observed`.
    fn at(observed: i64, canary: Option<(&str, u32)>) -> Snapshot {
        let canary = canary.map(|(verdict, weight)| {
            json!({"step": 0, "weight": weight, "verdict": verdict, "summary": "", "revision": "rev-2"})
        });
        let tier = serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1",
            "kind": "DeliveryTier",
            "metadata": {"name": "bots", "namespace": "apps", "generation": 2},
            "spec": {"channel": "spool", "spool": {"path": "/s"}, "rollout": {"steps": [{"weight": 50}, {"weight": 100}]}},
            "status": {"observedGeneration": observed, "canary": canary},
        }))
        .unwrap();
        Snapshot {
            tier,
            stable_revision: Some("rev-1".to_owned()),
            stable_unreadable: None,
        }
    }

    async fn run(
        first: Snapshot,
        events: Vec<anyhow::Result<Option<Snapshot>>>,
    ) -> (anyhow::Result<Outcome>, String) {
        let mut out = Vec::new();
        let r = follow(
            "DeliveryTier apps/bots",
            first,
            stream::iter(events),
            &mut out,
        )
        .await;
        (r, String::from_utf8(out).unwrap())
    }

    fn blocks(out: &str) -> usize {
        out.split("\n\n").count()
    }

    #[tokio::test]
    async fn prints_each_change_once_and_ends_on_promotion() {
        let analysing = || Ok(Some(at(2, Some(("Analysing", 50)))));
        let (r, out) = run(
            at(2, Some(("Analysing", 50))),
            vec![
                analysing(),
                analysing(),
                Ok(Some(at(2, Some(("Analysing", 100))))),
                Ok(Some(at(2, Some(("Promoted", 0))))),
                // Never read: the watch has ended.
                Ok(None),
            ],
        )
        .await;
        assert_eq!(r.unwrap(), Outcome::Promoted);
        assert_eq!(blocks(&out), 3, "{out}");
        assert!(out.contains("canary weight 100%"), "{out}");
    }

    #[tokio::test]
    async fn an_abort_ends_the_watch_as_aborted() {
        let (r, _) = run(
            at(2, Some(("Paused", 100))),
            vec![Ok(Some(at(2, Some(("Aborted", 0)))))],
        )
        .await;
        assert_eq!(r.unwrap(), Outcome::Aborted);
    }

    #[tokio::test]
    async fn the_previous_rollouts_verdict_does_not_end_the_watch() {
        // Generation 2 applied; the status is still generation 1's.
        let (r, out) = run(
            at(1, Some(("Promoted", 0))),
            vec![
                Ok(Some(at(2, Some(("Analysing", 50))))),
                Ok(Some(at(2, Some(("Aborted", 0))))),
            ],
        )
        .await;
        assert_eq!(r.unwrap(), Outcome::Aborted);
        assert_eq!(blocks(&out), 3, "{out}");
    }

    #[tokio::test]
    async fn nothing_to_wait_for_ends_at_once() {
        let (r, out) = run(at(2, None), vec![]).await;
        assert_eq!(r.unwrap(), Outcome::Settled);
        assert!(out.contains("none in progress"), "{out}");
    }

    #[tokio::test]
    async fn a_few_errors_are_retried_a_run_of_them_ends_the_watch() {
        let err = || Err(anyhow::anyhow!("connection refused"));
        let mut events: Vec<_> = (1..MAX_WATCH_FAILURES).map(|_| err()).collect();
        events.push(Ok(Some(at(2, Some(("Promoted", 0))))));
        let (r, _) = run(at(2, Some(("Analysing", 50))), events).await;
        assert_eq!(r.unwrap(), Outcome::Promoted);

        let events: Vec<_> = (0..MAX_WATCH_FAILURES).map(|_| err()).collect();
        let (r, _) = run(at(2, Some(("Analysing", 50))), events).await;
        let e = format!("{:#}", r.unwrap_err());
        assert!(
            e.contains("failures in a row") && e.contains("connection refused"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_deleted_tier_or_a_closed_watch_is_an_error() {
        let (r, _) = run(at(2, Some(("Analysing", 50))), vec![Ok(None)]).await;
        assert_eq!(
            r.unwrap_err().to_string(),
            "DeliveryTier apps/bots was deleted"
        );
        let (r, _) = run(at(2, Some(("Analysing", 50))), vec![]).await;
        assert!(r.unwrap_err().to_string().contains("ended"));
    }
}
