//! Property tests of the dispatch pipeline: random workloads and random
//! outcomes on a virtual clock, checked against independent bookkeeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{config, http, too_many};
use super::*;
use crate::engine::breaker::BreakerState;
use crate::engine::clock::duration_nanos;
use crate::engine::limiter::Limit;
use crate::engine::taxonomy::{Outcome, TelegramError, TransportKind};

const CHATS: [i64; 8] = [-3, -2, -1, 1, 2, 3, 4, 5];

/// A random attempt result for a tier of kind `sink`; `readdress` allows
/// group migrations; `heavy` makes failures the common case. A spool only
/// ever fails like a disk.
fn outcome(rng: &mut SplitMix64, sink: Sink, readdress: bool, heavy: bool) -> Outcome {
    if sink == Sink::Spool {
        return match rng.below(10) {
            0..=6 => Outcome::Delivered,
            _ => Outcome::Transport(TransportKind::Other),
        };
    }
    let draw = if heavy {
        30 + rng.below(70)
    } else {
        rng.below(100)
    };
    match draw {
        0..=54 => Outcome::Delivered,
        55..=66 => http(502, "Bad Gateway"),
        67..=71 => Outcome::Timeout,
        72..=76 => Outcome::Transport(TransportKind::Connect),
        77..=82 => too_many(1 + rng.below(3)),
        83..=85 => http(400, "Bad Request: message is too long"),
        86..=88 => http(403, "Forbidden: bot was blocked by the user"),
        89 => http(401, "Unauthorized"),
        90..=91 => Outcome::Transport(TransportKind::Tls),
        92..=94 if readdress => Outcome::Http {
            status: 400,
            body: Some(TelegramError {
                error_code: 400,
                description: "group chat was upgraded to a supergroup chat".into(),
                retry_after: None,
                migrate_to_chat_id: Some(-1_000_000_000 - rng.below(3) as i64),
            }),
        },
        _ => Outcome::Delivered,
    }
}

/// Largest number of `times` (sorted) in any closed window of `w` ns.
fn max_in_window(times: &[u64], w: u64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] > w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// `rate·W/period + burst`, floored: GCRA's bound for any window.
fn bound(limit: &Limit, w: u64) -> usize {
    let p = duration_nanos(limit.period);
    (u128::from(limit.rate) * u128::from(w) / u128::from(p)) as usize + limit.burst.max(1) as usize
}

/// What a run observed, kept apart from the dispatcher's own state.
#[derive(Default)]
struct Record {
    /// (tier, chat) → send instants in ns; chat `None`: the whole tier.
    sends: BTreeMap<(usize, Option<i64>), Vec<u64>>,
    /// Group sends by tier.
    group_sends: BTreeMap<(usize, i64), Vec<u64>>,
    finals: HashMap<u64, Verdict>,
    delivered_order: HashMap<i64, Vec<u64>>,
}

/// Runs `msgs` (chat index, priority, arrival gap ms) through a dispatcher
/// with random outcomes; asserts the per-send invariants as it goes.
fn run(
    seed: u64,
    msgs: &[(usize, usize, u64)],
    readdress: bool,
    heavy: bool,
) -> Result<Record, TestCaseError> {
    let mut d = Dispatcher::new(config(), seed).unwrap();
    let mut rng = SplitMix64::new(seed ^ 0xABCD);
    let ty = d.message_type("alert");
    let start = Instant::from_secs(10);
    let mut arrivals = Vec::new();
    let mut at = start;
    for (i, &(c, p, gap)) in msgs.iter().enumerate() {
        at = at + Duration::from_millis(gap);
        arrivals.push((at, i as u64, CHATS[c % CHATS.len()], Priority::ALL[p % 4]));
    }
    let original_chat: HashMap<u64, i64> = arrivals.iter().map(|a| (a.1, a.2)).collect();
    let mut next_arrival = 0;
    let mut rec = Record::default();
    // Completions due: (at, id, outcome, latency).
    let mut pending: Vec<(Instant, u64, Outcome, Duration)> = Vec::new();
    let mut out_chats: HashMap<i64, u64> = HashMap::new();
    let mut now = start;
    let mut next_tick = start;
    for _ in 0..30_000 {
        while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= now {
            let (t, id, chat, p) = arrivals[next_arrival];
            d.enqueue(now, QueuedMessage::new(id, chat, p, ty, t))
                .unwrap();
            next_arrival += 1;
        }
        pending.sort_by_key(|p| std::cmp::Reverse(p.0));
        while pending.last().is_some_and(|p| p.0 <= now) {
            let Some((_, id, o, lat)) = pending.pop() else {
                break;
            };
            out_chats.retain(|_, v| *v != id);
            let v = d.complete(now, id, &o, lat).unwrap();
            if matches!(v, Verdict::Delivered | Verdict::DeadLetter { .. }) {
                prop_assert!(rec.finals.insert(id, v).is_none(), "finished twice: {}", id);
                if v == Verdict::Delivered {
                    rec.delivered_order
                        .entry(original_chat[&id])
                        .or_default()
                        .push(id);
                }
            }
        }
        if next_tick <= now {
            d.tick(now);
            next_tick = now + Duration::from_secs(1);
        }
        let wake = loop {
            match d.poll(now) {
                Poll::Send(o) => {
                    // Never on a tier whose breaker refuses, or a stopped one.
                    let t = &d.tiers[o.tier];
                    prop_assert!(t.stopped.is_none());
                    if !t.is_spool() {
                        let b = d.breakers.get(&t.key, None).map(|b| b.state());
                        prop_assert!(
                            b != Some(BreakerState::Open),
                            "sent through an open breaker"
                        );
                        if o.probe {
                            prop_assert_eq!(b, Some(BreakerState::HalfOpen));
                        }
                    }
                    // One message out per chat, and FIFO: everything older in
                    // the chat is finished.
                    prop_assert!(
                        out_chats.insert(o.chat, o.id).is_none(),
                        "two out for chat {}",
                        o.chat
                    );
                    if !readdress {
                        let chat = original_chat[&o.id];
                        for (&id, &c) in &original_chat {
                            if c == chat && id < o.id {
                                prop_assert!(
                                    rec.finals.contains_key(&id),
                                    "{} sent before {}",
                                    o.id,
                                    id
                                );
                            }
                        }
                    }
                    // Now and then a shared budget refuses the send: the
                    // order comes back unsent and must still be delivered,
                    // in order, within every limit.
                    if rng.below(8) == 0 {
                        out_chats.remove(&o.chat);
                        let until = now + Duration::from_millis(rng.below(200));
                        d.defer(now, o.id, until).unwrap();
                        continue;
                    }
                    let ns = now.as_nanos();
                    rec.sends.entry((o.tier, None)).or_default().push(ns);
                    if d.tiers[o.tier].cfg.sink == Sink::Telegram {
                        rec.sends
                            .entry((o.tier, Some(o.chat)))
                            .or_default()
                            .push(ns);
                        if o.chat < 0 {
                            rec.group_sends
                                .entry((o.tier, o.chat))
                                .or_default()
                                .push(ns);
                        }
                    }
                    let lat = Duration::from_millis(1 + rng.below(400));
                    pending.push((
                        now + lat,
                        o.id,
                        outcome(&mut rng, d.tiers[o.tier].cfg.sink, readdress, heavy),
                        lat,
                    ));
                }
                Poll::Idle { wake_at } => break wake_at,
            }
        };
        if next_arrival == arrivals.len() && pending.is_empty() {
            if d.held() == 0 {
                return Ok(rec);
            }
            if wake.is_none() {
                // Only stranded messages are left (every tier they may use
                // was stopped by a 401): the operator resets the tiers.
                for i in 0..d.tier_count() {
                    d.reset_breaker(now, i);
                }
            }
        }
        let mut next = next_tick;
        if let Some(w) = wake {
            next = next.min(w);
        }
        if let Some(p) = pending.iter().map(|p| p.0).min() {
            next = next.min(p);
        }
        if let Some(a) = arrivals.get(next_arrival) {
            next = next.min(a.0);
        }
        now = next.max(now);
    }
    Err(TestCaseError::fail(format!(
        "did not settle: {} held",
        d.held()
    )))
}

fn workload() -> impl Strategy<Value = Vec<(usize, usize, u64)>> {
    proptest::collection::vec((0usize..8, 0usize..4, 0u64..300), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The limiter is asked before every send: per tier, per chat and per
    /// group, every window holds at most `rate·W/period + burst` sends.
    #[test]
    fn sends_never_exceed_the_tier_limits(seed in any::<u64>(), msgs in workload()) {
        let rec = run(seed, &msgs, true, false)?;
        let cfg = config();
        for ((tier, chat), times) in &rec.sends {
            let limits = &cfg.tiers[*tier].limits;
            let limit = match chat {
                None => limits.global,
                Some(_) => limits.per_chat.unwrap_or(limits.global),
            };
            let p = duration_nanos(limit.period);
            for w in [p / 3, p, p * 5 / 2, p * 10] {
                prop_assert!(max_in_window(times, w) <= bound(&limit, w),
                    "tier {} chat {:?}: {} in {} ns", tier, chat, max_in_window(times, w), w);
            }
        }
        for ((tier, _), times) in &rec.group_sends {
            if let Some(limit) = cfg.tiers[*tier].limits.per_group {
                let p = duration_nanos(limit.period);
                for w in [p / 20, p, p * 2] {
                    prop_assert!(max_in_window(times, w) <= bound(&limit, w));
                }
            }
        }
    }

    /// Per-chat order survives retries, 429s and failovers (checked at every
    /// send in `run`); delivered messages of a chat come out in order.
    #[test]
    fn per_chat_order_is_preserved(seed in any::<u64>(), msgs in workload()) {
        let rec = run(seed, &msgs, false, false)?;
        for ids in rec.delivered_order.values() {
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "{:?}", ids);
        }
    }

    /// The selector never routes to a tier whose breaker refuses, nor to a
    /// stopped tier; a probe goes only through a half-open breaker (checked
    /// at every send in `run`, here under a failure-heavy mix).
    #[test]
    fn sends_only_through_admitting_breakers(seed in any::<u64>(), msgs in workload()) {
        run(seed, &msgs, true, true)?;
    }

    /// Whatever the outcomes (migrations included), every message ends
    /// delivered or dead-lettered, exactly once.
    #[test]
    fn no_message_is_lost(seed in any::<u64>(), msgs in workload()) {
        let rec = run(seed, &msgs, true, seed % 2 == 0)?;
        let ids: HashSet<u64> = rec.finals.keys().copied().collect();
        prop_assert_eq!(ids.len(), msgs.len());
    }

    /// An outage never ends a message: under a failure-heavy mix, every
    /// dead letter is the message's or its chat's fault (a refusal, a chat
    /// no tier reaches); what the tiers failed with their own fault (5xx,
    /// timeouts, refused connections, TLS, a bad token) was held instead.
    #[test]
    fn only_the_message_or_its_chat_dead_letters_it(seed in any::<u64>(), msgs in workload()) {
        let rec = run(seed, &msgs, true, true)?;
        for v in rec.finals.values() {
            if let Verdict::DeadLetter { reason } = v {
                prop_assert!(
                    matches!(
                        reason,
                        DeadLetterReason::Refused { .. }
                            | DeadLetterReason::NoTierLeft { last: LastFailure::Unreachable { .. } }
                    ),
                    "dead-lettered for a tier's fault: {:?}",
                    reason
                );
            }
        }
    }
}
