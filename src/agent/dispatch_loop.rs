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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::agent::config::AgentConfig;
use crate::agent::dispatch_config::dispatch_config;
use crate::agent::metrics::Metrics;
use crate::agent::state::{AppState, DispatchCmd, Final, IngestGate};
use crate::clock::now_ms;
use crate::engine::degradation::Level;
use crate::engine::dispatch::{
    DispatchConfig, Dispatcher, Event, Poll, QueuedMessage, Snapshot, Verdict,
};
use crate::engine::limiter::{Limits, Recipient};
use crate::engine::taxonomy::{Action, Class, Outcome, classify};
use crate::engine::{Instant, Priority};
use crate::fleet::Fleet;
use crate::fleet::shared_limiter::{Ask, SharedDecision};
use crate::policy::effective::{
    Gate, LimiterMode, SendDelay, TierLimits, restart_quiet, switch_quiet,
};
use crate::sink::{Delivery, ReceiptSender, Sink, SinkResult};
use crate::store::{Attempt, ChatRef, MessageId, Store, StoreError, StoredMessage};
use crate::telemetry;

/// A stable negative key for a `@username` chat: usernames are channels or
/// public groups, so they get the (stricter) group limit.
pub fn chat_key(chat: &ChatRef) -> i64 {
    match chat {
        ChatRef::Id(id) => *id,
        ChatRef::Username(name) => {
            // FNV-1a over the lower-cased name, folded into a range no real
            // Telegram id uses (below -2^62).
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in name.to_ascii_lowercase().bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            -(1i64 << 62) - i64::try_from(h >> 2).unwrap_or(0)
        }
    }
}

struct Held {
    msg: StoredMessage,
    /// The last store write for this message, awaited before its next send.
    persist: Option<JoinHandle<()>>,
    /// Its queue partition, on the Redis store (fixed at accept, even if
    /// the message is readdressed later).
    partition: Option<u32>,
    /// Handed to a sink and not finished yet.
    sending: bool,
}

struct Done {
    id: u64,
    tier: usize,
    result: SinkResult,
    latency: Duration,
    /// Set when the send never left.
    unsent: Option<Unsent>,
}

/// Why a send order was handed back unsent.
enum Unsent {
    /// The shared limiter (or a paused one) said to wait this long.
    Wait(Duration),
    /// The partition's lease lapsed while the send waited for its slot.
    Lapsed(u32),
}

/// How long a send waits when its tier's limiter is paused or Redis did not
/// answer a decision.
const PAUSED_RETRY: Duration = Duration::from_millis(500);

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
        };
        l.build_sinks(&config)?;
        l.publish_modes();
        Ok(l)
    }

    /// Installs `config` with each tier's limits cut to its limiter mode.
    fn install(&mut self, config: Arc<AgentConfig>) -> Result<(), LoopError> {
        let now = self.now();
        let base = dispatch_config(&config);
        let limits = tier_limits(self.fleet.as_deref(), &config, configured(&base));
        self.d.reconfigure(now, applied(base, &limits))?;
        self.limits = limits;
        self.config = config;
        self.publish_modes();
        Ok(())
    }

    /// Re-cuts the limits when Redis came or went or the live count moved.
    fn follow_fleet(&mut self) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if let Some(m) = self.state.metrics() {
            m.redis_up.set(i64::from(fleet.connected()));
        }
        // The loaded tiers, in order: no need to rebuild the config every
        // tick to learn their names.
        let loaded = (0..self.d.tier_count()).map(|i| {
            let name = self.d.tier_name(i).unwrap_or_default();
            (
                name,
                self.limits
                    .get(i)
                    .map_or_else(Limits::default, |l| l.configured),
            )
        });
        let limits = tier_limits(Some(&fleet), &self.config, loaded);
        if limits == self.limits {
            return;
        }
        let names: Vec<String> = limits.iter().map(|l| l.mode.as_str().to_owned()).collect();
        let quiet = switch_quiet(&self.limits, &limits);
        match self.install(self.config.clone()) {
            Ok(()) => {
                self.quiet_until = self.quiet_until.max(self.now() + quiet);
                tracing::warn!(modes = ?names, link = fleet.link_state(), "limiter modes changed")
            }
            Err(e) => tracing::error!(error = %e, "could not change limiter modes"),
        }
    }

    fn publish_modes(&self) {
        let (Some(m), Some(_)) = (self.state.metrics(), &self.fleet) else {
            return;
        };
        for (i, limits) in self.limits.iter().enumerate() {
            let tier = self.d.tier_name(i).unwrap_or_default();
            for name in ["shared", "local-share", "paused"] {
                m.limiter_mode
                    .with_label_values(&[tier, name])
                    .set(i64::from(limits.mode.as_str() == name));
            }
        }
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
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
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

    fn enqueue(&mut self, msgs: Vec<StoredMessage>) {
        let now = self.now();
        for m in msgs {
            if self.ids.contains_key(&m.id) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let ty = self.d.message_type(&m.msg.message_type);
            let not_before = m
                .next_attempt_ms
                .or(m.msg.not_before)
                .map(|ms| self.at_unix_ms(ms));
            let q = QueuedMessage {
                id,
                chat: chat_key(&m.msg.chat_id),
                priority: m.msg.priority,
                message_type: ty,
                enqueued_at: self.at_unix_ms(m.created_ms).min(now),
                not_before,
                attempts_so_far: u32::try_from(m.attempts.len()).unwrap_or(u32::MAX),
                first_attempt_at: m.attempts.first().map(|a| self.at_unix_ms(a.at_ms)),
            };
            if let Err(e) = self.d.enqueue(now, q) {
                tracing::error!(error = %e, "dispatcher refused a message");
                continue;
            }
            self.ids.insert(m.id, id);
            let partition = self
                .fleet
                .as_ref()
                .map(|f| f.store.partition_of(&m.msg.chat_id));
            self.held.insert(
                id,
                Held {
                    msg: m,
                    persist: None,
                    partition,
                    sending: false,
                },
            );
        }
    }

    /// Hand out every send the engine allows now; returns when to wake.
    fn pump(&mut self) -> Option<Instant> {
        if self.now() < self.quiet_until {
            return Some(self.quiet_until);
        }
        loop {
            let now = self.now();
            match self.d.poll(now) {
                Poll::Send(order) => {
                    if let Some(p) = self.lapsed_partition(order.id) {
                        // Its lease was not renewed in time (Redis away,
                        // or this process was frozen): another agent may
                        // be sending this partition. The fleet task
                        // reloads it when the lease is ours again.
                        let dropped = self.drop_partition(p);
                        tracing::warn!(
                            partition = p,
                            dropped,
                            "lease lapsed; the partition waits for its lease"
                        );
                        continue;
                    }
                    let Some(h) = self.held.get_mut(&order.id) else {
                        tracing::error!(id = order.id, "send order for an unknown message");
                        continue;
                    };
                    let Some(sink) = self.sinks.get(order.tier).cloned().flatten() else {
                        let _ = self.d.complete(
                            now,
                            order.id,
                            &Outcome::Transport(crate::engine::taxonomy::TransportKind::Other),
                            Duration::ZERO,
                        );
                        continue;
                    };
                    let mut delivery = Delivery::from_stored(&h.msg);
                    delivery.attempt = order.attempt;
                    // The in-flight mark is chained behind the message's
                    // earlier writes, never awaited by the send: a send
                    // leaves at the instant the limiter chose, whatever the
                    // disk is doing (store latency would otherwise become
                    // send-time jitter and eat the pacing guard).
                    let store = self.state.store.clone();
                    let message_id = h.msg.id;
                    let tier_name = self.tier_names.get(order.tier).cloned().unwrap_or_default();
                    h.persist = Some(chain(h.persist.take(), async move {
                        if let Err(e) = store.mark_in_flight(message_id, tier_name, now_ms()).await
                        {
                            tracing::warn!(error = %e, "could not mark a message in flight");
                        }
                    }));
                    let timeout = order.deadline.since(now).max(Duration::from_millis(1));
                    let (id, tier) = (order.id, order.tier);
                    h.sending = true;
                    let priority = h.msg.msg.priority;
                    let partition = h.partition;
                    if let Some(m) = self.state.metrics() {
                        m.in_flight.inc();
                    }
                    let gate = self.gate(tier, priority);
                    let lease = self.fleet.clone().zip(partition);
                    self.inflight.spawn(async move {
                        let held_back = match gate.pass().await {
                            Some(wait) => Some(Unsent::Wait(wait)),
                            // The slot may have come after the lease's end
                            // (or this process was frozen while it waited).
                            None => lease
                                .filter(|(f, p)| !f.store.may_send(*p))
                                .map(|(_, p)| Unsent::Lapsed(p)),
                        };
                        if held_back.is_some() {
                            return Done {
                                id,
                                tier,
                                result: unsent(),
                                latency: Duration::ZERO,
                                unsent: held_back,
                            };
                        }
                        let started = tokio::time::Instant::now();
                        let result = sink.send(&delivery, timeout).await;
                        Done {
                            id,
                            tier,
                            result,
                            latency: started.elapsed(),
                            unsent: None,
                        }
                    });
                }
                Poll::Idle { wake_at } => return wake_at,
            }
        }
    }

    /// What a send of `tier` must pass before it leaves.
    fn gate(&self, tier: usize, priority: Priority) -> SendGate {
        let (Some(fleet), Some(limits)) = (&self.fleet, self.limits.get(tier)) else {
            return SendGate::Open;
        };
        match limits.gate() {
            Gate::Open => SendGate::Open,
            Gate::Paused => SendGate::Paused,
            Gate::Shared(shared) => SendGate::Shared(Box::new(SharedAsk {
                fleet: fleet.clone(),
                bot: self.tier_names.get(tier).cloned().unwrap_or_default(),
                limits: shared.limits,
                priority,
                delay: shared.delay,
            })),
        }
    }

    fn finish(&mut self, done: Done) {
        let now = self.now();
        let tier_name = self.tier_names.get(done.tier).cloned().unwrap_or_default();
        if let Some(h) = self.held.get_mut(&done.id) {
            h.sending = false;
        }
        match done.unsent {
            Some(Unsent::Wait(wait)) => {
                if let Some(m) = self.state.metrics() {
                    m.in_flight.dec();
                    m.shared_refusals.with_label_values(&[&tier_name]).inc();
                }
                if let Err(e) = self.d.defer(now, done.id, now + wait) {
                    tracing::warn!(error = %e, "could not put back a send the shared limiter refused");
                }
                return;
            }
            Some(Unsent::Lapsed(p)) => {
                if let Some(m) = self.state.metrics() {
                    m.in_flight.dec();
                }
                let dropped = self.drop_partition(p);
                tracing::warn!(
                    partition = p,
                    dropped,
                    "lease lapsed before the send; the partition waits for its lease"
                );
                return;
            }
            None => {}
        }
        self.share_pause(&tier_name, done.tier, &done.result.outcome);
        let class = classify(&done.result.outcome)
            .map(|c| c.class.as_str())
            .unwrap_or("delivered");
        let m = self.state.metrics();
        if let Some(m) = m {
            m.in_flight.dec();
            m.attempts.with_label_values(&[&tier_name, class]).inc();
            m.send_seconds
                .with_label_values(&[&tier_name])
                .observe(done.latency.as_secs_f64());
        }
        let verdict = match self
            .d
            .complete(now, done.id, &done.result.outcome, done.latency)
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "completion for a message no longer in flight");
                return;
            }
        };
        let Some(h) = self.held.get_mut(&done.id) else {
            return;
        };
        let attempt = Attempt {
            at_ms: now_ms(),
            tier: tier_name.clone(),
            outcome: class.to_owned(),
            error: done.result.detail.clone().or_else(|| {
                done.result
                    .status
                    .filter(|s| *s >= 400)
                    .map(|s| format!("HTTP {s}"))
            }),
        };
        let sink = self.sinks.get(done.tier).and_then(Option::as_deref);
        telemetry::attempt_finished(&h.msg, sink, &attempt, &done.result, &verdict, done.latency);
        let store = self.state.store.clone();
        let id = h.msg.id;
        if let Some(m) = m
            && matches!(done.result.status, Some(429))
        {
            m.rate_limited.with_label_values(&[&tier_name]).inc();
        }
        match verdict {
            Verdict::Delivered => {
                let h = self.held.remove(&done.id);
                self.ids.remove(&id);
                let Some(h) = h else { return };
                if let Some(m) = m {
                    m.delivered
                        .with_label_values(&[
                            &tier_name,
                            h.msg.msg.priority.as_str(),
                            &h.msg.msg.message_type,
                        ])
                        .inc();
                    let age = now_ms().saturating_sub(h.msg.created_ms);
                    m.delivery_seconds
                        .with_label_values(&[&tier_name, h.msg.msg.priority.as_str()])
                        .observe(age as f64 / 1000.0);
                }
                let result = done.result;
                let (at, receipt) = (now_ms(), result.receipt);
                let record = async move {
                    durably("a delivery", || {
                        store.record_delivered(id, tier_name.clone(), receipt.clone(), at)
                    })
                    .await;
                };
                let outcome = Final {
                    delivered: true,
                    status: result.status,
                    body: result.body,
                    reason: None,
                };
                self.conclude(h, outcome, record);
            }
            Verdict::DeadLetter { reason } => {
                let h = self.held.remove(&done.id);
                self.ids.remove(&id);
                let Some(h) = h else { return };
                if let Some(m) = m {
                    m.dead_lettered
                        .with_label_values(&[&tier_name, reason.label()])
                        .inc();
                }
                let result = done.result;
                let text = reason.to_string();
                let outcome = Final {
                    delivered: false,
                    status: result.status,
                    body: result.body,
                    reason: Some(text.clone()),
                };
                let record = async move {
                    durably("a dead letter", || {
                        store.record_dead_letter(id, attempt.clone(), text.clone())
                    })
                    .await;
                };
                self.conclude(h, outcome, record);
            }
            Verdict::RetryAt(at) => {
                if let Some(m) = m {
                    m.retries.with_label_values(&[&tier_name]).inc();
                }
                let next_ms = now_ms() + at.since(now).as_millis() as u64;
                h.msg.attempts.push(attempt.clone());
                h.persist = Some(chain(h.persist.take(), async move {
                    durably("a retry", || {
                        store.record_retry(id, attempt.clone(), next_ms)
                    })
                    .await;
                }));
            }
            Verdict::FailedOver { to } => {
                let to_name = self.tier_names.get(to).cloned().unwrap_or_default();
                if let Some(m) = m {
                    m.failovers.with_label_values(&[&tier_name, &to_name]).inc();
                }
                h.msg.attempts.push(attempt.clone());
                let next_ms = now_ms();
                h.persist = Some(chain(h.persist.take(), async move {
                    durably("a failover", || {
                        store.record_retry(id, attempt.clone(), next_ms)
                    })
                    .await;
                }));
            }
            Verdict::Readdressed { new_chat } => {
                h.msg.msg.chat_id = ChatRef::Id(new_chat);
                h.persist = Some(chain(h.persist.take(), async move {
                    durably("a readdress", || store.readdress(id, ChatRef::Id(new_chat))).await;
                }));
            }
        }
    }

    /// A message's life ended: its waiting caller hears now; its final state
    /// is written after its earlier writes by `record`, and its receipt
    /// (if it asked for one) is sent once that is durable.
    fn conclude(
        &self,
        h: Held,
        outcome: Final,
        record: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = h.msg.id;
        self.state.finish(id, outcome);
        let state = self.state.clone();
        let receipts = self
            .receipts
            .clone()
            .filter(|_| h.msg.msg.callback_url.is_some());
        tokio::spawn(async move {
            if let Some(p) = h.persist {
                let _ = p.await;
            }
            record.await;
            send_receipt(&state, receipts.as_ref(), id).await;
        });
    }

    /// A 429 pauses the bot for every agent sharing it, not only this one.
    fn share_pause(&self, tier_name: &str, tier: usize, outcome: &Outcome) {
        let (Some(fleet), Some(LimiterMode::Shared)) =
            (&self.fleet, self.limits.get(tier).map(|l| l.mode))
        else {
            return;
        };
        let Some(c) = classify(outcome) else { return };
        let (Class::RateLimited, Action::Wait(wait)) = (c.class, c.action) else {
            return;
        };
        let fleet = fleet.clone();
        let bot = tier_name.to_owned();
        tokio::spawn(async move {
            if let Err(e) = fleet.limiter.pause(&bot, wait).await {
                tracing::warn!(error = %e, "could not share a 429 pause");
            }
        });
    }

    /// The partition of message `id` when this agent may not send from it.
    fn lapsed_partition(&self, id: u64) -> Option<u32> {
        let fleet = self.fleet.as_ref()?;
        let p = self.held.get(&id)?.partition?;
        (!fleet.store.may_send(p)).then_some(p)
    }

    /// Forgets the waiting messages of a partition another agent takes;
    /// those in flight finish here (their writes are fenced if late).
    fn drop_partition(&mut self, partition: u32) -> usize {
        let ids: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.partition == Some(partition) && !h.sending)
            .map(|(&id, _)| id)
            .collect();
        for id in &ids {
            let _ = self.d.remove(*id);
            if let Some(h) = self.held.remove(id) {
                self.ids.remove(&h.msg.id);
            }
        }
        ids.len()
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

    fn publish(&self, snap: &Snapshot) {
        if let Some(m) = self.state.metrics() {
            publish_metrics(m, snap);
        }
        // Ask the degrader per priority; "default" stands for any type that
        // is not paused by name.
        let mut gate = IngestGate {
            level: snap.level.as_str().to_owned(),
            retry_after_secs: 1,
            ..IngestGate::default()
        };
        let mut refused = 0;
        for p in Priority::ALL {
            if let Err(r) = self.d.admits_ingest(p, "default") {
                refused += 1;
                gate.shed.push(p);
                gate.retry_after_secs = gate.retry_after_secs.max(r.retry_after.as_secs());
            }
        }
        gate.refuse_all = refused == Priority::ALL.len();
        if let Ok(mut g) = self.state.ingest_gate.write() {
            *g = gate;
        }
    }

    fn snapshot_json(&self) -> serde_json::Value {
        let now = self.now();
        let s = self.d.snapshot(now);
        let ms = |i: Option<Instant>| i.map(|i| i.since(now).as_millis() as u64);
        json!({
            "level": s.level.as_str(),
            "level_override": s.override_level.map(|(l, _)| l.as_str()),
            "held": s.held,
            "in_flight": s.in_flight,
            "set_aside": s.set_aside,
            "queue_by_priority": {
                "critical": s.queued_by_priority[0], "high": s.queued_by_priority[1],
                "normal": s.queued_by_priority[2], "low": s.queued_by_priority[3]},
            "oldest_age_ms": s.oldest_age.map(|d| d.as_millis() as u64),
            "tiers": s.tiers.iter().enumerate().map(|(i, t)| json!({
                "name": t.name,
                "limiter": self.limits.get(i).filter(|_| self.fleet.is_some()).map_or("local", |l| l.mode.as_str()),
                "sink": t.sink.as_str(),
                "breaker": t.breaker.as_str(),
                "open_for_ms": ms(t.open_until),
                "stopped": t.stopped,
                "health_score": t.health_score,
                "health_floor": t.health_floor,
                "success_ewma": t.ewma,
                "p95_ms": t.p95.map(|d| d.as_millis() as u64),
                "in_flight": t.in_flight,
                "unreachable_chats": t.unreachable_chats,
                "paused_for_ms": ms(t.paused_until),
                "sent": t.counters.sent,
                "delivered": t.counters.delivered,
                "failed": t.counters.failed,
                "rate_limited": t.counters.rate_limited,
                "failed_over": t.counters.failed_over,
                "dead_lettered": t.counters.dead_lettered,
            })).collect::<Vec<_>>(),
        })
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

/// Each tier's limits now, asked of [`TierLimits::now`] with the fleet's
/// link; on the embedded store every tier limits alone.
fn tier_limits<'a>(
    fleet: Option<&Fleet>,
    config: &AgentConfig,
    tiers: impl Iterator<Item = (&'a str, Limits)>,
) -> Vec<TierLimits> {
    let link = fleet.map(Fleet::link);
    tiers
        .map(|(name, configured)| match (link, config.tier(name)) {
            (Some(link), Some(rt)) => TierLimits::now(
                configured,
                rt.policy.limiter_backend,
                rt.policy.limiter_fallback,
                Some(link),
            ),
            _ => TierLimits::in_mode(configured, LimiterMode::LocalShare { divisor: 1 }),
        })
        .collect()
}

/// Each tier of a dispatcher configuration with its configured limits.
fn configured(config: &DispatchConfig) -> impl Iterator<Item = (&str, Limits)> {
    config.tiers.iter().map(|t| (t.name.as_str(), t.limits))
}

/// `base` with each tier's limits as its local limiter applies them now.
fn applied(mut base: DispatchConfig, limits: &[TierLimits]) -> DispatchConfig {
    for (t, l) in base.tiers.iter_mut().zip(limits) {
        t.limits = l.local;
    }
    base
}

/// What a send passes before it leaves, given its tier's limiter mode.
enum SendGate {
    Open,
    Paused,
    Shared(Box<SharedAsk>),
}

/// What a shared decision needs, owned so the send task can carry it.
struct SharedAsk {
    fleet: Arc<Fleet>,
    bot: String,
    /// The configured limits, fleet-guarded: only their bot-wide keys are
    /// asked.
    limits: Limits,
    priority: Priority,
    /// How long after its local admission the send may still leave.
    delay: SendDelay,
}

impl SendGate {
    /// `None`: send now. `Some(wait)`: do not send; ask again after `wait`.
    async fn pass(self) -> Option<Duration> {
        let SharedAsk {
            fleet,
            bot,
            limits,
            priority,
            delay,
        } = match self {
            SendGate::Open => return None,
            SendGate::Paused => return Some(PAUSED_RETRY),
            SendGate::Shared(ask) => *ask,
        };
        // Chat and group keys stay local: a chat lives in one partition,
        // held by one agent. Only the bot-wide keys are shared.
        let checks = limits.checks(Recipient::Unscoped, priority);
        let ask = Ask {
            bot: &bot,
            checks: &checks,
            horizon: delay.horizon,
        };
        match fleet.limiter.decide(ask).await {
            Ok(SharedDecision::Admitted { wait }) => {
                let due = tokio::time::Instant::now() + wait;
                tokio::time::sleep_until(due).await;
                // A reservation is good at its time only: a send this late
                // (the process was starved) would reach the API bunched
                // with the next agents' sends. Its slot is given up and
                // the send asks again.
                let late = due.elapsed();
                if late > delay.late {
                    tracing::debug!(
                        late_ms = late.as_millis() as u64,
                        "a shared slot passed before the send; asking again"
                    );
                    return Some(Duration::ZERO);
                }
                None
            }
            Ok(SharedDecision::Refused { retry_after, .. }) => Some(
                retry_after
                    .saturating_sub(delay.horizon)
                    .max(Duration::from_millis(1)),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "shared limiter did not decide; the send waits");
                if e.is_unavailable() {
                    fleet.failed();
                }
                Some(PAUSED_RETRY)
            }
        }
    }
}

/// The result slot of a send that never left (never looked at).
fn unsent() -> SinkResult {
    SinkResult {
        outcome: Outcome::Transport(crate::engine::taxonomy::TransportKind::Other),
        status: None,
        body: None,
        receipt: None,
        detail: None,
    }
}

/// Retries a store write while the store is unreachable (Redis restarting,
/// a network blip), so a finished attempt is not forgotten; gives up on
/// any other error, which retrying cannot fix. Bounded: after 15 minutes
/// the message is left to whoever loads its partition next.
async fn durably<F, Fut>(what: &'static str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return,
            Err(StoreError::Unavailable(why)) if started.elapsed() < Duration::from_secs(900) => {
                tracing::warn!(error = %why, "could not record {what} yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record {what}");
                return;
            }
        }
    }
}

/// Run `next` after `previous` finished.
fn chain(
    previous: Option<JoinHandle<()>>,
    next: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(p) = previous {
            let _ = p.await;
        }
        next.await;
    })
}

/// Sends the delivery receipt of a message whose final state is durable;
/// `None` when it asked for none, which spares the store read.
async fn send_receipt(state: &AppState, receipts: Option<&ReceiptSender>, id: MessageId) {
    let Some(receipts) = receipts else { return };
    if let Ok(Some(m)) = state.store.get(id).await
        && let Some(url) = m.msg.callback_url.clone()
        && let Some(r) = crate::sink::Receipt::from_stored(&m)
        && let Err(e) = receipts.send(&url, r)
    {
        tracing::warn!(error = %e, "delivery receipt not sent");
    }
}

fn publish_metrics(m: &Metrics, snap: &Snapshot) {
    for p in Priority::ALL {
        m.queue_depth
            .with_label_values(&[p.as_str()])
            .set(i64::try_from(snap.queued_by_priority[p.index()]).unwrap_or(i64::MAX));
    }
    m.oldest_age_seconds
        .set(snap.oldest_age.map(|d| d.as_secs() as i64).unwrap_or(0));
    m.degradation_level.set(snap.level.index() as i64);
    for t in &snap.tiers {
        let state = match t.breaker.as_str() {
            "closed" => 0,
            "half-open" | "half_open" => 1,
            _ => 2,
        };
        m.breaker_state.with_label_values(&[&t.name]).set(state);
        m.health_score
            .with_label_values(&[&t.name])
            .set(i64::from(t.health_score));
    }
    // A type's slots across tiers; bounded types report 0 when idle so a
    // dashboard shows a line, not a gap.
    let mut in_use: HashMap<&str, i64> = HashMap::new();
    for t in &snap.tiers {
        for (ty, used, _) in &t.bulkheads {
            *in_use.entry(ty.as_str()).or_default() += i64::from(*used);
        }
    }
    for (ty, used) in in_use {
        m.bulkhead_in_use.with_label_values(&[ty]).set(used);
    }
}

fn log_event(state: &AppState, e: &Event) {
    match e {
        Event::Breaker {
            tier_name,
            chat,
            transition,
            ..
        } => {
            if chat.is_none()
                && let Some(m) = state.metrics()
            {
                m.breaker_transitions
                    .with_label_values(&[tier_name, transition.to.as_str()])
                    .inc();
            }
            tracing::warn!(tier = %tier_name, chat_scoped = chat.is_some(), from = transition.from.as_str(), to = transition.to.as_str(), "circuit breaker transition");
        }
        Event::Level(change) => {
            tracing::warn!(
                from = change.from.as_str(),
                to = change.to.as_str(),
                "degradation level changed"
            );
        }
        other => tracing::warn!(event = ?other, "dispatcher event"),
    }
}
