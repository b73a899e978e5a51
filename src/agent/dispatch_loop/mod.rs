//! The dispatch loop: the one task that owns the engine's [`Dispatcher`],
//! hands its send orders to the sinks, feeds results back, and writes every
//! state change to the store.
//!
//! Store writes for a finished attempt run in a task of their own so a slow
//! fsync never stalls pacing; a message's next send waits for its previous
//! write first, so the store always sees a message's changes in order.
//! A waiting Bot API caller gets the sink's answer as soon as it is final,
//! while the final state is being written: that write cannot change the
//! answer, and a crash before it is durable re-sends the message whether
//! the caller was answered or not. Receipts go out only once the final
//! state is durable, since they are read back from the store.
//!
//! Files, one job each: `queue` (store ids to the dispatcher's, a
//! partition's messages in and out), `send` (hand out send orders, the
//! shared limiter's gate, the send task), `finish` (a finished attempt:
//! verdict, store writes in order, waiters, receipt), `limits` (each tier's
//! limits now, asked of `policy::effective`), `start_pacer` (each tier's
//! limits applied again to the instants send tasks really start),
//! `held_params` (a held message's parameters as compact text),
//! `snapshot` (metrics, the ingest gate and `/healthz/details`).

mod finish;
mod held_params;
mod limits;
mod queue;
mod send;
mod snapshot;
mod start_pacer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::agent::config::AgentConfig;
use crate::agent::dispatch_config::dispatch_config;
use crate::agent::state::{AppState, DispatchCmd};
use crate::agent::store::AgentStore;
use crate::clock::now_ms;
use crate::engine::Instant;
use crate::engine::degradation::Level;
use crate::engine::dispatch::Dispatcher;
use crate::fleet::Fleet;
use crate::policy::effective::{TierLimits, restart_quiet, start_quiet};
use crate::sink::{ReceiptSender, Sink};
use crate::store::{MessageId, Store};

use self::limits::{applied, configured, tier_limits};
use self::queue::Held;
use self::send::Done;
use self::snapshot::log_event;
use self::start_pacer::StartPacer;

/// Everything the loop owns.
pub struct DispatchLoop {
    state: Arc<AppState>,
    d: Dispatcher,
    epoch: tokio::time::Instant,
    sinks: Vec<Option<Arc<Sink>>>,
    tier_names: Vec<String>,
    held: HashMap<u64, Held>,
    ids: HashMap<MessageId, u64>,
    next_id: u64,
    inflight: JoinSet<Done>,
    receipts: Option<ReceiptSender>,
    /// No sends before this instant: see [`restart_quiet`].
    quiet_until: Instant,
    /// The agents sharing the queue, on the Redis store.
    fleet: Option<Arc<Fleet>>,
    config: Arc<AgentConfig>,
    /// Per tier index: its limits and the limiter it uses now.
    limits: Vec<TierLimits>,
    /// Per tier index: its name and start pacer, kept across reloads.
    pacers: Vec<(String, Arc<StartPacer>)>,
}

/// Why the loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("dispatcher configuration: {0}")]
    Config(#[from] crate::engine::dispatch::DispatchError),
    #[error("tier {tier}: {source}")]
    Sink {
        tier: String,
        #[source]
        source: crate::sink::SinkError,
    },
}

impl DispatchLoop {
    pub fn new(
        state: Arc<AppState>,
        config: Arc<AgentConfig>,
        seed: u64,
    ) -> Result<Self, LoopError> {
        let fleet = state.fleet.clone();
        let base = dispatch_config(&config);
        let limits = tier_limits(fleet.as_deref(), &config, configured(&base));
        let d = Dispatcher::new(applied(base, &limits), seed)?;
        let receipts = ReceiptSender::new(state.http.clone(), Default::default()).ok();
        let quiet_until =
            Instant::ZERO + restart_quiet(config.tiers.iter().map(|t| &t.policy.limits));
        let mut l = DispatchLoop {
            state,
            d,
            epoch: tokio::time::Instant::now(),
            sinks: Vec::new(),
            tier_names: Vec::new(),
            held: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            inflight: JoinSet::new(),
            receipts,
            quiet_until,
            fleet,
            config: config.clone(),
            limits,
            pacers: Vec::new(),
        };
        l.sync_pacers();
        l.build_sinks(&config)?;
        l.publish_modes();
        Ok(l)
    }

    fn build_sinks(&mut self, config: &AgentConfig) -> Result<(), LoopError> {
        let mut sinks = Vec::new();
        let mut names = Vec::new();
        for i in 0..self.d.tier_count() {
            let name = self.d.tier_name(i).unwrap_or_default().to_owned();
            let sink = match config.tier(&name) {
                Some(t) => Some(Arc::new(
                    Sink::from_spec(&t.policy.spec, t.secrets.clone(), &self.state.http).map_err(
                        |source| LoopError::Sink {
                            tier: name.clone(),
                            source,
                        },
                    )?,
                )),
                None => None,
            };
            sinks.push(sink);
            names.push(name);
        }
        self.sinks = sinks;
        self.tier_names = names;
        Ok(())
    }

    fn now(&self) -> Instant {
        Instant::ZERO + self.epoch.elapsed()
    }

    /// Engine time of a wall-clock instant in unix milliseconds.
    fn at_unix_ms(&self, ms: u64) -> Instant {
        let now = self.now();
        let wall = now_ms();
        if ms >= wall {
            now + Duration::from_millis(ms - wall)
        } else {
            now - Duration::from_millis(wall - ms)
        }
    }

    fn tick(&mut self) {
        self.follow_fleet();
        let now = self.now();
        for e in self.d.tick(now) {
            log_event(&self.state, &e);
        }
        let snap = self.d.snapshot(now);
        self.publish(&snap);
    }

    fn command(&mut self, cmd: DispatchCmd) {
        match cmd {
            DispatchCmd::Enqueue(msgs) => self.enqueue(msgs),
            DispatchCmd::Snapshot(tx) => {
                let _ = tx.send(self.snapshot_json());
            }
            DispatchCmd::ResetBreaker(name, tx) => {
                let now = self.now();
                let r = match self.d.tier_index(&name) {
                    Some(i) => self
                        .d
                        .reset_breaker(now, i)
                        .ok_or_else(|| format!("tier {name:?} has no breaker")),
                    None => Err(format!("unknown tier {name:?}")),
                };
                let _ = tx.send(r);
            }
            DispatchCmd::Degrade(level, tx) => {
                let now = self.now();
                let r = match level {
                    None => {
                        self.d.set_degradation_override(now, None);
                        Ok(())
                    }
                    Some(text) => match text.parse::<Level>() {
                        Ok(l) => {
                            self.d.set_degradation_override(now, Some((l, None)));
                            Ok(())
                        }
                        Err(_) => Err(format!(
                            "unknown level {text:?}: use NORMAL, MINOR, MODERATE, SEVERE or CRITICAL"
                        )),
                    },
                };
                let snap = self.d.snapshot(now);
                self.publish(&snap);
                let _ = tx.send(r);
            }
            DispatchCmd::DropPartition(partition, tx) => {
                let _ = tx.send(self.drop_partition(partition));
            }
            DispatchCmd::Reconfigure(config) => match self.install(config.clone()) {
                Ok(()) => match self.build_sinks(&config) {
                    Ok(()) => tracing::info!("dispatcher reconfigured"),
                    Err(e) => {
                        tracing::error!(error = %e, "new sinks refused; keeping the old ones")
                    }
                },
                Err(e) => tracing::error!(error = %e, "new dispatcher configuration refused"),
            },
        }
    }

    /// On the embedded store, the start-up quiet period is only as long as
    /// the store says a send may still be in the slowest key's window
    /// ([`start_quiet`]); a store that never sent starts at once.
    async fn shorten_start_quiet(&mut self, open_messages: bool) {
        let AgentStore::Embedded(store) = &self.state.store else {
            return;
        };
        match store.last_outcome_ms().await {
            Ok(last) => {
                let quiet = self.quiet_until.since(Instant::ZERO);
                let wait = start_quiet(quiet, open_messages, last, now_ms());
                self.quiet_until = self.quiet_until.min(self.now() + wait);
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "first send after the start-up quiet period"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the last send time; keeping the whole start-up quiet period")
            }
        }
    }

    /// Run until `shutdown`; then stop handing out sends and wait up to
    /// `grace` for those in flight. Unfinished ones stay in flight in the
    /// store and come back as pending at the next start.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<DispatchCmd>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        // On Redis, messages come partition by partition from the fleet task.
        if self.state.store.enqueues_locally() {
            match self.state.store.pending().await {
                Ok(pending) => {
                    tracing::info!(count = pending.len(), "loaded pending messages");
                    self.shorten_start_quiet(!pending.is_empty()).await;
                    self.enqueue(pending);
                }
                Err(e) => tracing::error!(error = %e, "could not load pending messages"),
            }
        }
        self.state.ready.store(true, Ordering::Relaxed);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.pump();
            let sleep_for = wake
                .map(|w| w.since(self.now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = ticker.tick() => self.tick(),
                _ = shutdown.changed() => break,
            }
        }
        tracing::info!(in_flight = self.inflight.len(), "draining in-flight sends");
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        while !self.inflight.is_empty() {
            tokio::select! {
                Some(done) = self.inflight.join_next() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                _ = &mut deadline => {
                    tracing::warn!(left = self.inflight.len(), "grace period over; unfinished sends resume at the next start");
                    break;
                }
            }
        }
        // Let the last store writes land.
        let pending: Vec<JoinHandle<()>> = self
            .held
            .values_mut()
            .filter_map(|h| h.persist.take())
            .collect();
        for p in pending {
            let _ = tokio::time::timeout(grace, p).await;
        }
    }
}
