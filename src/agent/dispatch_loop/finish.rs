//! A finished attempt: the engine's verdict, the store write that records
//! it (chained behind the message's earlier writes, retried while the
//! store is unreachable), the waiting Bot API caller, and the delivery
//! receipt once the final state is durable.

use std::time::Duration;

use crate::agent::state::{AppState, Final};
use crate::clock::now_ms;
use crate::engine::dispatch::Verdict;
use crate::engine::taxonomy::{Action, Class, Classification, classify};
use crate::policy::effective::LimiterMode;
use crate::sink::ReceiptSender;
use crate::store::{Attempt, ChatRef, MessageId, Store, StoreError};
use crate::telemetry::{self, AttemptEnd};

use super::DispatchLoop;
use super::queue::{Held, chain};
use super::send::{Done, Unsent};

impl DispatchLoop {
    pub(super) fn finish(&mut self, done: Done) {
        let now = self.now();
        let tier_name = self.tier_names.get(done.tier).cloned().unwrap_or_default();
        if let Some(h) = self.held.get_mut(&done.id) {
            h.sending = false;
        }
        if done.repaced
            && let Some(m) = self.state.metrics()
        {
            m.sends_repaced.with_label_values(&[&tier_name]).inc();
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
            Some(Unsent::Late) => {
                if let Some(m) = self.state.metrics() {
                    m.in_flight.dec();
                    m.shared_late_slots.with_label_values(&[&tier_name]).inc();
                }
                if let Err(e) = self.d.defer(now, done.id, now) {
                    tracing::warn!(error = %e, "could not put back a send whose shared slot passed");
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
        // Classified once; everyone below reads this answer.
        let classified = classify(&done.result.outcome);
        self.share_pause(&tier_name, done.tier, classified.as_ref());
        let class = classified.map_or("delivered", |c| c.class.as_str());
        let m = self.state.metrics();
        if let Some(m) = m {
            m.in_flight.dec();
            m.attempts.with_label_values(&[&tier_name, class]).inc();
            m.send_seconds
                .with_label_values(&[&tier_name])
                .observe(done.latency.as_secs_f64());
        }
        let verdict = match self.d.complete_classified(
            now,
            done.id,
            &done.result.outcome,
            classified,
            done.latency,
        ) {
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
        let end = AttemptEnd {
            attempt: &attempt,
            result: &done.result,
            class: classified,
            verdict: &verdict,
            latency: done.latency,
        };
        telemetry::attempt_finished(h.msg.attempt_of(), sink, &end);
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
                            h.msg.priority.as_str(),
                            &h.msg.message_type,
                        ])
                        .inc();
                    let age = now_ms().saturating_sub(h.msg.created_ms);
                    m.delivery_seconds
                        .with_label_values(&[&tier_name, h.msg.priority.as_str()])
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
            Verdict::RetryAt(at) | Verdict::Held(at) => {
                if let Some(m) = m {
                    let counter = match verdict {
                        Verdict::Held(_) => &m.held,
                        _ => &m.retries,
                    };
                    counter.with_label_values(&[&tier_name]).inc();
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
                h.msg.chat_id = ChatRef::Id(new_chat);
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
        let receipts = self.receipts.clone().filter(|_| h.msg.wants_receipt);
        tokio::spawn(async move {
            if let Some(p) = h.persist {
                let _ = p.await;
            }
            record.await;
            send_receipt(&state, receipts.as_ref(), id).await;
        });
    }

    /// A 429 pauses the bot for every agent sharing it, not only this one.
    fn share_pause(&self, tier_name: &str, tier: usize, class: Option<&Classification>) {
        let (Some(fleet), Some(LimiterMode::Shared)) =
            (&self.fleet, self.limits.get(tier).map(|l| l.mode))
        else {
            return;
        };
        let Some(c) = class else { return };
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
}

/// Retries a store write while the store is unreachable (Redis restarting,
/// a network blip), so a finished attempt is not forgotten; gives up on
/// any other error, which retrying cannot fix. Bounded: after 15 minutes
/// the message is left to whoever loads its partition next.
///
/// Retries at least every second: an agent that takes over a partition of
/// this one's after Redis came back waits only the handover grace
/// ([`crate::store::redis::HANDOVER_GRACE`]) for these writes to land.
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
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record {what}");
                return;
            }
        }
    }
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

#[cfg(test)]
mod tests;
