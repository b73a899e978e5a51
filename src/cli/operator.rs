//! `herald operator`: run the Kubernetes operator — reconcile DeliveryTiers
//! into agent Deployments, Services, ConfigMaps and PDBs, serve its own
//! `/metrics`, `/healthz` and `/readyz`, and stop cleanly on SIGTERM.
//!
//! Only flag parsing and process wiring live here; the operator itself is
//! `herald::operator::controller::run`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use herald::api::DurationString;
use herald::operator::context::Settings;
use herald::operator::controller::{self, RunConfig, RunError};
use herald::operator::inputs::OperatorOptions;
use herald::operator::leader::LeaseConfig;
use herald::operator::metrics::{self, Metrics, Readiness};
use herald::operator::pod_settings;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::sync::watch;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address serving /metrics (Prometheus text format).
    #[arg(long, default_value = "0.0.0.0:9090", env = "HERALD_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Address serving /healthz (liveness) and /readyz (readiness); may be
    /// the same as --metrics-addr.
    #[arg(long, default_value = "0.0.0.0:8081", env = "HERALD_HEALTH_ADDR")]
    health_addr: SocketAddr,
    /// Watch DeliveryTiers (and everything else) in this namespace only;
    /// all namespaces when unset.
    #[arg(long, env = "HERALD_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Elect a leader through a coordination.k8s.io Lease, so that of several
    /// replicas only one reconciles. Turn off only for a single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "HERALD_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "herald-operator")]
    lease_name: String,
    /// Namespace of the Lease [default: the pod's namespace ($POD_NAMESPACE),
    /// else the client's default namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events [default:
    /// $POD_NAME, else $HOSTNAME].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the agent pods for tiers that set none (normally the
    /// operator's own image).
    #[arg(long, env = "HERALD_AGENT_IMAGE", default_value = concat!("herald:", env!("CARGO_PKG_VERSION")))]
    default_agent_image: String,
    /// imagePullPolicy of the agent containers (Kubernetes' default when unset).
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
    agent_image_pull_policy: Option<String>,
    /// Settings of every agent pod, as JSON or YAML in the shape of a tier's
    /// `spec.podTemplate` (pull secrets, scheduling, security context, extra
    /// env and volumes); a tier's own settings override them field by field.
    #[arg(long, env = "HERALD_AGENT_POD_DEFAULTS")]
    agent_pod_defaults: Option<String>,
    /// StorageClass of the queue and spool claims (the cluster default when unset).
    #[arg(long)]
    storage_class: Option<String>,
    /// Size of each embedded-queue claim.
    #[arg(long, default_value = "1Gi")]
    queue_volume_size: String,
    /// Size of each spool claim.
    #[arg(long, default_value = "1Gi")]
    spool_volume_size: String,
    /// Access mode of spool claims; a spool tier with several replicas or a
    /// rollout needs ReadWriteMany storage.
    #[arg(long, default_value = "ReadWriteOnce", value_parser = ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"])]
    spool_access_mode: String,
    /// Tiers reconciled at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Upper bound of one reconcile (e.g. 60s, 2m).
    #[arg(long, default_value = "60s")]
    reconcile_timeout: DurationString,
    /// Upper bound of one agent's /healthz/details.
    #[arg(long, default_value = "2s")]
    health_timeout: DurationString,
    /// How often a tier with running agents is revisited for fresh health
    /// figures in its status.
    #[arg(long, default_value = "60s")]
    status_interval: DurationString,
    /// How often every tier is re-applied even when nothing seems changed.
    #[arg(long, default_value = "10m")]
    resync: DurationString,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "HERALD_LOG_FORMAT")]
    log_format: LogFormat,
}

fn positive(name: &str, d: &DurationString) -> anyhow::Result<Duration> {
    let d = d.get();
    anyhow::ensure!(!d.is_zero(), "--{name} must be more than zero");
    Ok(d)
}

impl Args {
    fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings {
            reconcile_timeout: positive("reconcile-timeout", &self.reconcile_timeout)?,
            health_timeout: positive("health-timeout", &self.health_timeout)?,
            status_interval: positive("status-interval", &self.status_interval)?,
            resync: positive("resync", &self.resync)?,
            ..Settings::default()
        })
    }

    fn options(&self) -> anyhow::Result<OperatorOptions> {
        let mut o = OperatorOptions::new(self.default_agent_image.clone());
        if let Some(text) = &self.agent_pod_defaults {
            o.pod_defaults = pod_settings::parse_defaults("--agent-pod-defaults", text)
                .context("the agent pod defaults (operator.agent.podDefaults in the chart)")?;
        }
        o.image_pull_policy = self.agent_image_pull_policy.clone();
        o.storage_class = self.storage_class.clone();
        o.queue_volume_size = Quantity(self.queue_volume_size.clone());
        o.spool_volume_size = Quantity(self.spool_volume_size.clone());
        o.spool_access_mode = self.spool_access_mode.clone();
        // Agents export traces where the operator does (an image built
        // with the `otel` feature; others ignore the variables).
        o.agent_env = herald::operator::inputs::otel_env(std::env::vars());
        // Agents log as the operator does: JSON lines for a log collector
        // by default, rather than text with terminal colours in `kubectl logs`.
        if self.log_format == LogFormat::Json {
            o.agent_env
                .push(("HERALD_LOG_FORMAT".to_owned(), "json".to_owned()));
        }
        Ok(o)
    }

    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("herald-operator-{}", std::process::id()))
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    // Refused before anything starts: a typo must not run pods without it.
    let options = args.options()?;
    super::logging::init_as(args.log_format == LogFormat::Json);
    // Dropped after the runtime: flushes the last reconcile spans.
    let _telemetry = herald::telemetry::init("herald-operator");
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(serve(args, settings, options))
}

async fn serve(
    args: Args,
    settings: Settings,
    options: OperatorOptions,
) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster service account, or KUBECONFIG)")?;
    let identity = args.identity();
    let leader = args.leader_elect.then(|| {
        let ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        LeaseConfig::new(args.lease_name.clone(), ns, identity.clone())
    });
    let cfg = RunConfig {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        options,
        settings,
        leader,
        instance: Some(identity),
    };

    // One stop signal for everything: SIGTERM or Ctrl-C.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };

    let metrics = Metrics::new();
    let ready = Readiness::default();
    let router = metrics::router(metrics.clone(), ready.clone());
    let mut servers = vec![tokio::spawn(metrics::serve(
        args.metrics_addr,
        router.clone(),
        stopped(stop_rx.clone()),
    ))];
    if args.health_addr != args.metrics_addr {
        servers.push(tokio::spawn(metrics::serve(
            args.health_addr,
            router,
            stopped(stop_rx.clone()),
        )));
    }
    tracing::info!(metrics = %args.metrics_addr, health = %args.health_addr, "serving /metrics, /healthz, /readyz");

    let outcome = controller::run(client, cfg, metrics, ready, stopped(stop_rx)).await;
    for s in servers {
        // A bind failure shows here; a clean stop returns Ok.
        match tokio::time::timeout(Duration::from_secs(5), s).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
            _ => {}
        }
    }
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ (RunError::CrdMissing | RunError::Forbidden(_))) => {
            eprintln!("herald operator: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e @ RunError::LostLease) => {
            tracing::error!(error = %e, "stopping");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow::Error::new(e).context("herald operator")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let a = Cli::try_parse_from(["operator"]).unwrap().args;
        assert_eq!(a.metrics_addr.to_string(), "0.0.0.0:9090");
        assert!(a.leader_elect);
        assert_eq!(a.concurrency, 4);
        let s = a.settings().unwrap();
        assert_eq!(s.reconcile_timeout, Duration::from_secs(60));
        assert_eq!(s.resync, Duration::from_secs(600));
        assert_eq!(a.options().unwrap().spool_access_mode, "ReadWriteOnce");
    }

    #[test]
    fn flags_are_checked() {
        let a = Cli::try_parse_from([
            "operator",
            "--leader-elect=false",
            "--namespace=apps",
            "--reconcile-timeout=2m",
            "--log-format=text",
            "--default-agent-image=registry.example/herald:1.2",
        ])
        .unwrap()
        .args;
        assert!(!a.leader_elect);
        assert_eq!(a.namespace.as_deref(), Some("apps"));
        assert_eq!(
            a.settings().unwrap().reconcile_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(
            a.options().unwrap().default_image,
            "registry.example/herald:1.2"
        );
        assert!(Cli::try_parse_from(["operator", "--concurrency=0"]).is_err());
        assert!(Cli::try_parse_from(["operator", "--log-format=xml"]).is_err());
        let zero = Cli::try_parse_from(["operator", "--resync=0s"])
            .unwrap()
            .args;
        assert!(zero.settings().is_err());
    }

    #[test]
    fn agent_pod_defaults_are_parsed_at_start_and_a_typo_is_refused() {
        let a = Cli::try_parse_from([
            "operator",
            r#"--agent-pod-defaults={"imagePullSecrets":[{"name":"regcred"}]}"#,
        ])
        .unwrap()
        .args;
        let o = a.options().unwrap();
        assert_eq!(
            o.pod_defaults.image_pull_secrets.unwrap()[0].name,
            "regcred"
        );
        let typo = Cli::try_parse_from(["operator", r#"--agent-pod-defaults={"nodeSelecter":{}}"#])
            .unwrap()
            .args;
        let err = format!("{:#}", typo.options().unwrap_err());
        assert!(err.contains("nodeSelecter"), "{err}");
    }
}
