//! Handing out sends: every order the engine allows now leaves as a task
//! of its own, after its turn under the tier's start pacer, the shared
//! limiter's gate on Redis and a last check of the partition's lease; a
//! send that never left comes back as [`Unsent`].

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::engine::dispatch::Poll;
use crate::engine::limiter::{Charge, Limits, Recipient};
use crate::engine::taxonomy::Outcome;
use crate::engine::{Instant, Priority};
use crate::fleet::Fleet;
use crate::fleet::shared_limiter::{Ask, SharedDecision};
use crate::policy::effective::{Gate, SendDelay};
use crate::sink::{Delivery, SinkResult};
use crate::store::Store;

use super::DispatchLoop;
use super::queue::chain;
use super::start_pacer::StartPacer;

pub(super) struct Done {
    pub(super) id: u64,
    pub(super) tier: usize,
    pub(super) result: SinkResult,
    pub(super) latency: Duration,
    /// Set when the send never left.
    pub(super) unsent: Option<Unsent>,
    /// The send's task started too close behind late ones and waited for
    /// its turn under the tier's limits.
    pub(super) repaced: bool,
}

/// Why a send order was handed back unsent.
pub(super) enum Unsent {
    /// The shared limiter (or a paused one) said to wait this long.
    Wait(Duration),
    /// The shared slot may have passed before the send could leave (the
    /// process woke late, or the decision came back slower than usual):
    /// given up; the send asks again at once.
    Late,
    /// The partition's lease lapsed while the send waited for its slot.
    Lapsed(u32),
}

/// How long a send waits when its tier's limiter is paused or Redis did not
/// answer a decision.
const PAUSED_RETRY: Duration = Duration::from_millis(500);

impl DispatchLoop {
    /// Hand out every send the engine allows now; returns when to wake.
    pub(super) fn pump(&mut self) -> Option<Instant> {
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
                        self.fail_before_send(order.id, order.tier, "no sink for the tier");
                        continue;
                    };
                    let params = match h.params.expand() {
                        Ok(params) => params,
                        Err(e) => {
                            // serde_json reads back what it wrote, so this
                            // is a bug; the message is never sent with
                            // parameters missing.
                            tracing::error!(error = %e, "held parameters unreadable");
                            self.fail_before_send(order.id, order.tier, "parameters unreadable");
                            continue;
                        }
                    };
                    let delivery = Delivery {
                        message_id: h.msg.id,
                        correlation_id: h.msg.correlation_id.clone(),
                        chat: h.msg.chat_id.clone(),
                        method: h.msg.method.clone(),
                        params,
                        attempt: order.attempt,
                    };
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
                    let priority = h.msg.priority;
                    let partition = h.partition;
                    if let Some(m) = self.state.metrics() {
                        m.in_flight.inc();
                    }
                    let gate = self.gate(tier, priority);
                    let turn = self.turn(tier, order.chat, priority);
                    let lease = self.fleet.clone().zip(partition);
                    self.inflight.spawn(async move {
                        let (held_back, repaced) = clear(gate, turn, lease).await;
                        if held_back.is_some() {
                            return Done {
                                id,
                                tier,
                                result: unsent(),
                                latency: Duration::ZERO,
                                unsent: held_back,
                                repaced,
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
                            repaced,
                        }
                    });
                }
                Poll::Idle { wake_at } => return wake_at,
            }
        }
    }

    /// The turn a send of `tier` to `chat` takes under the tier's local
    /// limits once its task starts.
    fn turn(&self, tier: usize, chat: i64, priority: Priority) -> Option<StartTurn> {
        Some(StartTurn {
            pacer: self.pacers.get(tier)?.1.clone(),
            recipient: self.d.tier_recipient(tier, chat)?,
            priority,
            epoch: self.epoch,
        })
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
}

/// Waits until a send may leave: its turn under the local limits, then
/// the shared limiter's gate, then the lease. `Some` if it must not leave
/// (its turn given back); `true` if it waited for its turn.
async fn clear(
    gate: SendGate,
    turn: Option<StartTurn>,
    lease: Option<(Arc<Fleet>, u32)>,
) -> (Option<Unsent>, bool) {
    if matches!(gate, SendGate::Paused) {
        return (Some(Unsent::Wait(PAUSED_RETRY)), false);
    }
    let taken = match turn {
        Some(turn) => Some(turn.take().await),
        None => None,
    };
    let repaced = taken.as_ref().is_some_and(|t| t.waited);
    let held_back = match gate.pass().await {
        Some(unsent) => Some(unsent),
        // The slot may have come after the lease's end (or this process
        // was frozen while it waited).
        None => lease
            .filter(|(f, p)| !f.store.may_send(*p))
            .map(|(_, p)| Unsent::Lapsed(p)),
    };
    if held_back.is_some()
        && let Some(t) = taken
    {
        t.pacer.refund(&t.charge);
    }
    (held_back, repaced)
}

/// A send's place under its tier's start pacer, owned by the send task.
struct StartTurn {
    pacer: Arc<StartPacer>,
    recipient: Recipient,
    priority: Priority,
    /// The dispatch loop's engine time zero.
    epoch: tokio::time::Instant,
}

struct TakenTurn {
    pacer: Arc<StartPacer>,
    charge: Charge,
    waited: bool,
}

impl StartTurn {
    /// Reserves the earliest start the limits allow from now, and waits
    /// for it.
    async fn take(self) -> TakenTurn {
        let now = Instant::ZERO + self.epoch.elapsed();
        let (at, charge) = self.pacer.reserve(now, self.recipient, self.priority);
        let waited = at > now;
        if waited {
            tokio::time::sleep_until(self.epoch + Duration::from_nanos(at.as_nanos())).await;
        }
        TakenTurn {
            pacer: self.pacer,
            charge,
            waited,
        }
    }
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
    /// `None`: send now; otherwise why not, and when to ask again.
    async fn pass(self) -> Option<Unsent> {
        let SharedAsk {
            fleet,
            bot,
            limits,
            priority,
            delay,
        } = match self {
            SendGate::Open => return None,
            SendGate::Paused => return Some(Unsent::Wait(PAUSED_RETRY)),
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
        let asked = tokio::time::Instant::now();
        let decision = fleet.limiter.decide(ask).await;
        let answered = tokio::time::Instant::now();
        // Redis put the slot `wait` after its own now, which lies between
        // the ask and the answer: an answer slower than usual may already be
        // that much behind the slot.
        let unsure = match decision {
            Ok(_) => fleet.answer_delay(answered.duration_since(asked)),
            Err(_) => Duration::ZERO,
        };
        match decision {
            Ok(SharedDecision::Admitted { wait }) => {
                let due = answered + wait;
                tokio::time::sleep_until(due).await;
                // A reservation is good at its time only: a send this late
                // (the process was starved) would reach the API bunched
                // with the next agents' sends. Its slot is given up and
                // the send asks again.
                let late = due.elapsed() + unsure;
                if late > delay.late {
                    tracing::debug!(
                        late_ms = late.as_millis() as u64,
                        unsure_ms = unsure.as_millis() as u64,
                        "a shared slot passed before the send; asking again"
                    );
                    return Some(Unsent::Late);
                }
                None
            }
            Ok(SharedDecision::Refused { retry_after, .. }) => Some(Unsent::Wait(
                retry_after
                    .saturating_sub(delay.horizon)
                    .max(Duration::from_millis(1)),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "shared limiter did not decide; the send waits");
                if e.is_unavailable() {
                    fleet.failed();
                }
                Some(Unsent::Wait(PAUSED_RETRY))
            }
        }
    }
}

/// The result slot of a send that never left (never looked at).
impl DispatchLoop {
    /// An order that cannot be sent at all (no sink for its tier, its
    /// parameters unreadable) ends as a failed attempt through `finish`, so
    /// its verdict (retry, failover, dead letter) is recorded like any
    /// other, and the message is never left open with no one to send it.
    fn fail_before_send(&mut self, id: u64, tier: usize, why: &str) {
        if let Some(m) = self.state.metrics() {
            // `finish` counts the attempt out of flight.
            m.in_flight.inc();
        }
        let mut result = unsent();
        result.detail = Some(why.to_owned());
        self.finish(Done {
            id,
            tier,
            result,
            latency: Duration::ZERO,
            unsent: None,
            repaced: false,
        });
    }
}

pub(super) fn unsent() -> SinkResult {
    SinkResult {
        outcome: Outcome::Transport(crate::engine::taxonomy::TransportKind::Other),
        status: None,
        body: None,
        receipt: None,
        detail: None,
    }
}
