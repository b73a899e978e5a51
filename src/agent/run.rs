//! Starting and stopping an agent: open the store, start the dispatch loop,
//! serve HTTP, watch the config file, clean up old records, and on shutdown
//! stop ingest, drain in-flight sends and exit.
//!
//! An error at start names the config file, line and field it comes from
//! (`spec.listen` for a port in use, `spec.storePath` for a store file that
//! cannot be opened). A reload that changes a field read only at start is
//! refused naming the fields ([`restart_only_changes`] is the one list).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::agent::config::{AgentConfig, ConfigError};
use crate::agent::dispatch_loop::{DispatchLoop, LoopError};
use crate::agent::dispatch_runtime::DispatchRuntime;
use crate::agent::fleet;
use crate::agent::metrics::Metrics;
use crate::agent::state::{AppState, DispatchCmd};
use crate::agent::store::{AgentStore, OpenError};
use crate::api::agent::{AgentSpec, HttpSpec, IngestSpec, MetricsSpec};
use crate::fleet::Fleet;
use crate::policy::effective::restart_quiet;
use crate::store::Store;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{at}: {source}")]
    Store {
        /// Where the failing setting was written: file, line, field.
        at: String,
        #[source]
        source: OpenError,
    },
    #[error("joining the agents on Redis: {0}")]
    Fleet(#[from] crate::fleet::shared_limiter::SharedError),
    #[error("{at}: cannot listen on {addr}: {source}")]
    Listen {
        /// Where `listen` was written: file, line, field.
        at: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Dispatch(#[from] LoopError),
    #[error("HTTP client: {0}")]
    Client(#[from] crate::sink::SinkError),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("starting the dispatch thread: {0}")]
    DispatchThread(std::io::Error),
}

/// A started agent, for embedding (tests, `herald demo`).
pub struct RunningAgent {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    /// Stop as on SIGTERM and wait until drained.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// The setting a store error comes from: `storePath` for the embedded
/// file and the spill, the entry tier's `spec.store` for Redis.
fn store_field(config: &AgentConfig, e: &OpenError) -> String {
    match e {
        OpenError::Embedded { .. } | OpenError::Spill { .. } => {
            config.agent_field("spec.storePath")
        }
        OpenError::Redis { tier, .. } | OpenError::MissingUrl { tier, .. } => {
            config.place_of("DeliveryTier", Some(tier), "spec.store.redis")
        }
    }
}

/// Load `path` and start serving. `env` resolves secrets.
pub async fn start(
    path: PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunningAgent, AgentError> {
    let config = Arc::new(AgentConfig::load(&path, env)?);
    let agent_id = crate::fleet::agent_id();
    let metrics = config.agent.metrics.enabled.then(Metrics::new);
    let store_error = |source: OpenError| AgentError::Store {
        at: store_field(&config, &source),
        source,
    };
    let store = AgentStore::open(&config, &agent_id, metrics.clone())
        .await
        .map_err(store_error)?;
    let fleet = match (
        &store,
        crate::agent::store::redis_options(&config, &agent_id).map_err(store_error)?,
    ) {
        (AgentStore::Redis(redis, _), Some(options)) => Some(Arc::new(Fleet::join(
            redis.clone(),
            &options.url,
            &options.key_prefix,
            fleet::options(&config),
        )?)),
        _ => None,
    };
    let listen_error = |source| AgentError::Listen {
        at: config.agent_field("spec.listen"),
        addr: config.agent.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&config.agent.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let (tx, rx) = mpsc::channel(4096);
    let state = Arc::new(AppState {
        config: std::sync::RwLock::new(config.clone()),
        store,
        fleet: fleet.clone(),
        metrics,
        http: crate::sink::http_client()?,
        dispatch: tx,
        waiters: Default::default(),
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        ingest_gate: Default::default(),
    });
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let dispatch = DispatchLoop::new(state.clone(), config.clone(), seed)?;
    let dispatch_runtime = DispatchRuntime::new().map_err(AgentError::DispatchThread)?;
    let (stop, stop_rx) = watch::channel(false);
    let grace = config.agent.shutdown_grace.get();
    let task = tokio::spawn(serve(
        state.clone(),
        listener,
        Dispatch {
            lp: dispatch,
            runtime: dispatch_runtime,
            commands: rx,
        },
        stop_rx,
        grace,
        path,
    ));
    tracing::info!(%addr, entry_tier = %config.entry_tier, store = state.store.kind(), agent = %agent_id, "herald agent listening");
    Ok(RunningAgent {
        addr,
        state,
        stop,
        task,
    })
}

/// The dispatch loop, the channel it takes commands from, and the runtime
/// it runs on.
struct Dispatch {
    lp: DispatchLoop,
    runtime: DispatchRuntime,
    commands: mpsc::Receiver<DispatchCmd>,
}

async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    dispatch: Dispatch,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    path: PathBuf,
) -> Result<(), AgentError> {
    let (loop_stop_tx, loop_stop_rx) = watch::channel(false);
    let Dispatch {
        lp,
        runtime: dispatch_runtime,
        commands,
    } = dispatch;
    let dispatch_task = dispatch_runtime.spawn(lp.run(commands, loop_stop_rx, grace));
    let (aux_stop_tx, aux_stop_rx) = watch::channel(false);
    let fleet_task = state.fleet.clone().map(|f| {
        let config = state.config();
        let quiet = restart_quiet(config.tiers.iter().map(|t| &t.policy.limits));
        tokio::spawn(crate::fleet::task::run(
            state.clone(),
            f,
            quiet,
            aux_stop_rx.clone(),
        ))
    });
    if let Some(source) = state.config().agent.config_map.clone() {
        tokio::spawn(watch_config_map(
            state.clone(),
            path.clone(),
            source,
            aux_stop_rx.clone(),
        ));
    }
    tokio::spawn(watch_config(state.clone(), path, aux_stop_rx.clone()));
    tokio::spawn(cleanup(state.clone(), aux_stop_rx.clone()));
    tokio::spawn(store_gauges(state.clone(), aux_stop_rx.clone()));
    let spill_task = match (state.store.spill(), state.store.redis()) {
        (Some(spill), Some(redis)) => Some(tokio::spawn(crate::agent::spill::run(
            spill.clone(),
            redis.clone(),
            aux_stop_rx.clone(),
        ))),
        _ => None,
    };
    if let Some(dir) = state.config().agent.spool_source.clone() {
        tokio::spawn(crate::agent::ingest::spool_source::run(
            state.clone(),
            dir.into(),
            aux_stop_rx,
        ));
    }
    let router = crate::agent::http::router(state.clone());
    let drain_state = state.clone();
    let served = crate::agent::http::server::serve(listener, router, state.clone(), async move {
        let _ = stop.wait_for(|s| *s).await;
        // Refuse new messages at once; finish requests already inside.
        drain_state.draining.store(true, Ordering::Relaxed);
    })
    .await;
    let _ = aux_stop_tx.send(true);
    if let Some(t) = fleet_task {
        let _ = t.await;
    }
    if let Some(t) = spill_task {
        let _ = t.await;
    }
    if let (Some(spill), Some(redis)) = (state.store.spill(), state.store.redis()) {
        crate::agent::spill::flush(spill, redis).await;
    }
    let _ = loop_stop_tx.send(true);
    if let Some(t) = dispatch_task {
        let _ = t.await;
    }
    if let Some(f) = &state.fleet {
        crate::fleet::task::hand_over(f).await;
    }
    // Only now: a Redis connection re-opened by a send drives on it.
    drop(dispatch_runtime);
    tracing::info!("herald agent stopped");
    served.map_err(AgentError::Serve)
}

/// Reload the config when the file changes (checked every 500 ms, so a
/// change is live within 2 s). An invalid file is logged and ignored.
async fn watch_config(state: Arc<AppState>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let env = |k: &str| std::env::var(k).ok();
        apply(
            &state,
            AgentConfig::load(&path, &env),
            &path.display().to_string(),
        );
    }
}

/// In a cluster: follow the ConfigMap through the API, which is faster than
/// the kubelet's refresh of the mounted file. Outside one (no service
/// account, no kubeconfig) only the file is watched.
async fn watch_config_map(
    state: Arc<AppState>,
    path: PathBuf,
    source: crate::api::agent::ConfigMapSource,
    stop: watch::Receiver<bool>,
) {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, config_map = %source.name, "no Kubernetes API; config changes arrive through the file only");
            return;
        }
    };
    let namespace = source
        .namespace
        .clone()
        .or_else(|| std::env::var(POD_NAMESPACE_ENV).ok())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api = kube::Api::namespaced(client, &namespace);
    let origin = format!("ConfigMap {namespace}/{} key {}", source.name, source.key);
    tracing::info!(config_map = %origin, "watching the config through the API");
    crate::agent::config_map::watch_key(api, source.name, source.key, stop, move |text| {
        let env = |k: &str| std::env::var(k).ok();
        apply(&state, AgentConfig::from_text(&path, &text, &env), &origin);
    })
    .await;
}

/// The pod's namespace, set by the operator from the downward API.
const POD_NAMESPACE_ENV: &str = "HERALD_POD_NAMESPACE";

/// Install a newly loaded config, or log why it was refused; either way
/// the agent keeps running.
fn apply(state: &Arc<AppState>, loaded: Result<AgentConfig, ConfigError>, origin: &str) {
    match loaded.and_then(|c| reloadable(&state.config(), &c).map(|()| c)) {
        Ok(c) => {
            let c = Arc::new(c);
            state.set_config(c.clone());
            let dispatch = state.dispatch.clone();
            tokio::spawn(async move {
                let _ = dispatch.send(DispatchCmd::Reconfigure(c)).await;
            });
            if let Some(m) = state.metrics() {
                m.config_reloads.with_label_values(&["ok"]).inc();
            }
            tracing::info!(source = %origin, "configuration reloaded");
        }
        Err(e) => {
            if let Some(m) = state.metrics() {
                m.config_reloads.with_label_values(&["invalid"]).inc();
            }
            tracing::error!(source = %origin, error = %e, "new configuration refused; the old one keeps running");
        }
    }
}

/// A reload applies whole or not at all: one that changes a field the
/// agent reads only at start is refused, naming the fields.
fn reloadable(old: &AgentConfig, new: &AgentConfig) -> Result<(), ConfigError> {
    let changed = restart_only_changes(old, new);
    if changed.is_empty() {
        return Ok(());
    }
    Err(ConfigError::NeedsRestart(changed))
}

/// The fields read only at start that differ between `old` and `new`.
///
/// Every field of the Agent document is named below, so a new one cannot
/// be added without deciding whether a reload applies it. Besides those:
/// the queue an agent runs on is opened once, so a reload that moves it
/// (another entry tier, its `spec.store`, its Redis URL) is refused too.
fn restart_only_changes(old: &AgentConfig, new: &AgentConfig) -> Vec<String> {
    let AgentSpec {
        listen,
        entry_tier: _, // compared as resolved, below
        store_path,
        secrets: _,         // secrets are read again at each reload
        admin_token_ref: _, // read again at each reload
        bot_api: _,         // read per request
        ingest:
            IngestSpec {
                max_batch: _, // read per request
                max_body_bytes,
            },
        http:
            HttpSpec {
                header_read_timeout: _, // read per connection
                body_read_timeout: _,   // read per request
                max_connections,
            },
        spool_source,
        retention: _, // read at each cleanup
        shutdown_grace,
        metrics: MetricsSpec { enabled: metrics },
        config_map,
        track_env,
        partitions: _, // read at each rebalance
        lease_ttl,
        max_message_age: _, // applied with the dispatch config at each reload
    } = &new.agent;
    let was = &old.agent;
    let mut changed = Vec::new();
    let mut check = |differs: bool, field: &str| {
        if differs {
            changed.push(field.to_owned());
        }
    };
    check(*listen != was.listen, "spec.listen");
    check(*store_path != was.store_path, "spec.storePath");
    // The router's body limit for the native API is set at start.
    check(
        *max_body_bytes != was.ingest.max_body_bytes,
        "spec.ingest.maxBodyBytes",
    );
    check(
        *max_connections != was.http.max_connections,
        "spec.http.maxConnections",
    );
    check(*spool_source != was.spool_source, "spec.spoolSource");
    check(*shutdown_grace != was.shutdown_grace, "spec.shutdownGrace");
    check(*metrics != was.metrics.enabled, "spec.metrics.enabled");
    check(*config_map != was.config_map, "spec.configMap");
    check(*track_env != was.track_env, "spec.trackEnv");
    check(*lease_ttl != was.lease_ttl, "spec.leaseTtl");
    check(
        old.entry_tier != new.entry_tier,
        "the entry tier (spec.entryTier)",
    );
    if old.entry_tier == new.entry_tier {
        let entry = |c: &AgentConfig| c.tier(&c.entry_tier).cloned();
        let (a, b) = (entry(old), entry(new));
        let store = |t: &Option<crate::agent::config::TierRuntime>| {
            t.as_ref().map(|t| t.policy.spec.store.clone())
        };
        // Never the URL itself: it may hold a password.
        let url = |t: &Option<crate::agent::config::TierRuntime>| {
            t.as_ref()
                .and_then(|t| t.secrets.redis_url.as_ref().map(|u| u.expose().to_owned()))
        };
        let tier = &new.entry_tier;
        check(
            store(&a) != store(&b),
            &format!("DeliveryTier/{tier} spec.store (the queue)"),
        );
        check(
            url(&a) != url(&b),
            &format!("the Redis URL of DeliveryTier/{tier} (the queue)"),
        );
    }
    changed
}

/// Queue sizes only the store knows (dead letters), read from its counters.
async fn store_gauges(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Some(m) = state.metrics()
            && let Ok(stats) = state.store.stats().await
        {
            m.dead_letters
                .set(i64::try_from(stats.dead).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Drop delivered records and expired idempotency keys past retention.
async fn cleanup(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
            _ = stop.changed() => return,
        }
        let retention = state.config().agent.retention.get();
        loop {
            match state
                .store
                .cleanup(crate::clock::now_ms(), retention, retention)
                .await
            {
                Ok(c) if c.more => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "store cleanup failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(store: &str, url: &str) -> AgentConfig {
        let text = format!(
            "apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: bots}}
spec:
  channel: webhook
  webhook: {{url: 'http://127.0.0.1:9/hook'}}
  store: {store}
"
        );
        let url = url.to_owned();
        let env = move |k: &str| (k == "HERALD_SECRET_REDIS_URL").then(|| url.clone());
        AgentConfig::from_text(std::path::Path::new("t.yaml"), &text, &env).unwrap()
    }

    #[test]
    fn a_reload_that_moves_the_queue_is_refused() {
        let redis = "{type: redis, redis: {urlSecretRef: {name: redis, key: url}}}";
        let a = config(redis, "redis://127.0.0.1:1/");
        assert!(reloadable(&a, &config(redis, "redis://127.0.0.1:1/")).is_ok());
        let e = reloadable(&a, &config(redis, "redis://127.0.0.1:2/")).unwrap_err();
        assert!(e.to_string().contains("restart the agent"), "{e}");
        assert!(
            !e.to_string().contains("127.0.0.1"),
            "the URL may hold a password: {e}"
        );
        assert!(reloadable(&a, &config("{type: embedded}", "")).is_err());
    }

    /// A config with the Agent document's spec written as `agent`, and two
    /// tiers (`bots` enters by default, `other` has a lower priority).
    fn with_agent(agent: &str) -> AgentConfig {
        let tier = |name: &str, priority: u32| {
            format!(
                "---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: {name}}}
spec:
  channel: webhook
  webhook: {{url: 'http://127.0.0.1:9/hook'}}
  priority: {priority}
"
            )
        };
        // `listen` and `storePath` as given, else these.
        let base: String = ["  listen: 127.0.0.1:8080\n", "  storePath: q.redb\n"]
            .into_iter()
            .filter(|l| !l.split(':').next().is_some_and(|k| agent.contains(k)))
            .collect();
        let text = format!(
            "apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: a}}
spec:
{base}{agent}{}{}",
            tier("bots", 200),
            tier("other", 100)
        );
        AgentConfig::from_text(std::path::Path::new("agent.yaml"), &text, &|_| None).unwrap()
    }

    #[test]
    fn a_reload_of_a_field_read_only_at_start_is_refused_naming_it() {
        let old = with_agent("");
        // Every restart-only field of restart_only_changes, changed alone.
        let restart_only = [
            ("  listen: 127.0.0.1:8081\n", "spec.listen"),
            ("  storePath: other.redb\n", "spec.storePath"),
            (
                "  ingest: {maxBodyBytes: 4096}\n",
                "spec.ingest.maxBodyBytes",
            ),
            ("  http: {maxConnections: 5}\n", "spec.http.maxConnections"),
            ("  spoolSource: /tmp/in\n", "spec.spoolSource"),
            ("  shutdownGrace: 3s\n", "spec.shutdownGrace"),
            ("  metrics: {enabled: false}\n", "spec.metrics.enabled"),
            ("  configMap: {name: c, key: k}\n", "spec.configMap"),
            ("  trackEnv: TRACK\n", "spec.trackEnv"),
            ("  leaseTtl: 20s\n", "spec.leaseTtl"),
            ("  entryTier: other\n", "spec.entryTier"),
        ];
        // The reference says so for each of them.
        let schema = crate::api::agent::agent_document_schema();
        for (_, field) in &restart_only {
            let mut node = &schema;
            for part in field.split('.') {
                node = &node["properties"][part];
            }
            let text = node["description"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                text.contains("a reload that changes it is refused"),
                "{field}: {text}"
            );
        }
        for (change, field) in restart_only {
            let new = with_agent(change);
            let e = reloadable(&old, &new).expect_err(field).to_string();
            assert!(e.contains(field) && e.contains("restart the agent"), "{e}");
        }
        // Fields a reload applies.
        for live in [
            "  retention: 1h\n",
            "  botApi: {asyncAccept: true, waitForDelivery: 5s}\n",
            "  ingest: {maxBatch: 10}\n",
            "  http: {headerReadTimeout: 2s, bodyReadTimeout: 5s}\n",
            "  secrets: {dir: /elsewhere}\n",
            "  entryTier: bots\n",
        ] {
            let new = with_agent(live);
            assert!(reloadable(&old, &new).is_ok(), "{live}");
        }
    }

    #[test]
    fn start_errors_name_the_file_line_and_field() {
        let c = with_agent("  listen: 127.0.0.1:8080\n  storePath: q.redb\n");
        assert_eq!(
            c.agent_field("spec.listen"),
            "agent.yaml:5:3: Agent/a: spec.listen"
        );
        assert_eq!(
            c.agent_field("spec.storePath"),
            "agent.yaml:6:3: Agent/a: spec.storePath"
        );
        let e = store_field(
            &c,
            &OpenError::Embedded {
                path: "q.redb".into(),
                source: crate::store::StoreError::Locked,
            },
        );
        assert!(e.ends_with("spec.storePath"), "{e}");
    }
}
