//! Unit tests of the dispatch pipeline on a virtual clock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::engine::breaker::{BreakerConfig, BreakerState, Window};
use crate::engine::bulkhead::BulkheadConfig;
use crate::engine::degradation::{Actions, DegradationConfig, Level, LevelSpec, Thresholds};
use crate::engine::limiter::{Guard, Limit, Limits};
use crate::engine::retry::{Jitter, RetryPolicy};
use crate::engine::taxonomy::{Outcome, TelegramError, TransportKind};

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const T0: Instant = Instant::from_secs(1_000);

pub(super) fn at_ms(ms: u64) -> Instant {
    T0 + Duration::from_millis(ms)
}

/// Telegram primary → webhook → spool, with small breaker windows and a
/// short retry schedule so tests reach every branch quickly.
pub(super) fn config() -> DispatchConfig {
    let breaker = BreakerConfig {
        window: Window::Count(4),
        minimum_calls: 4,
        failure_rate_threshold: 0.5,
        half_open_probes: 1,
        ..BreakerConfig::default()
    };
    let retry = RetryPolicy {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        jitter: Jitter::None,
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let mut tg = TierConfig::new("tg", Sink::Telegram);
    tg.priority = 300;
    tg.breaker = breaker;
    tg.retry = retry;
    let mut wh = TierConfig::new("wh", Sink::Webhook);
    wh.priority = 200;
    wh.breaker = breaker;
    wh.retry = retry;
    wh.limits = Limits {
        per_chat: None,
        per_group: None,
        ..Limits::default()
    };
    let mut sp = TierConfig::new("spool", Sink::Spool);
    sp.priority = 0;
    sp.retry = retry;
    let mut c = DispatchConfig::new(vec![tg, wh, sp], vec![1, 2]);
    c.degradation = DegradationConfig { levels: vec![] };
    c
}

pub(super) fn dispatcher() -> Dispatcher {
    Dispatcher::new(config(), 7).unwrap()
}

pub(super) fn msg(
    d: &mut Dispatcher,
    id: u64,
    chat: i64,
    p: Priority,
    at: Instant,
) -> QueuedMessage {
    let ty = d.message_type("alert");
    QueuedMessage::new(id, chat, p, ty, at)
}

pub(super) fn http(status: u16, description: &str) -> Outcome {
    Outcome::Http {
        status,
        body: Some(TelegramError {
            error_code: status,
            description: description.to_owned(),
            retry_after: None,
            migrate_to_chat_id: None,
        }),
    }
}

pub(super) fn too_many(retry_after: u64) -> Outcome {
    Outcome::Http {
        status: 429,
        body: Some(TelegramError {
            error_code: 429,
            description: "Too Many Requests".into(),
            retry_after: Some(retry_after),
            migrate_to_chat_id: None,
        }),
    }
}

fn send(p: Poll) -> SendOrder {
    match p {
        Poll::Send(o) => o,
        Poll::Idle { wake_at } => panic!("expected a send, idle until {wake_at:?}"),
    }
}

fn idle(p: Poll) -> Option<Instant> {
    match p {
        Poll::Idle { wake_at } => wake_at,
        Poll::Send(o) => panic!("expected idle, got {o:?}"),
    }
}

#[test]
fn paces_at_the_global_limit_and_reports_when_to_wake() {
    let mut d = dispatcher();
    for id in 0..3 {
        let m = msg(&mut d, id, 100 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let first = send(d.poll(T0));
    assert_eq!((first.tier, first.attempt, first.probe), (0, 1, false));
    assert_eq!(first.deadline, T0 + Duration::from_secs(10));
    let wake = idle(d.poll(T0)).unwrap();
    // 30/s with a 1 % guard: 33.67 ms apart.
    assert_eq!(
        wake,
        T0 + Limit::TELEGRAM_GLOBAL.nominal_interval() + Duration::from_nanos(333_334)
    );
    assert!(matches!(d.poll(wake), Poll::Send(_)));
    assert_eq!(
        d.complete(wake, first.id, &Outcome::Delivered, 80 * MS),
        Ok(Verdict::Delivered)
    );
    assert_eq!(d.held(), 2);
    assert_eq!(
        d.complete(wake, first.id, &Outcome::Delivered, MS),
        Err(MessageError::NotInFlight(first.id))
    );
    let dup = msg(&mut d, 1, 5, Priority::Normal, T0);
    assert_eq!(d.enqueue(T0, dup), Err(MessageError::Duplicate(1)));
}

#[test]
fn a_chat_keeps_its_order_and_waits_for_its_own_limit_only() {
    let mut d = dispatcher();
    for (id, chat) in [(1, 7), (2, 7), (3, 8)] {
        let m = msg(&mut d, id, chat, Priority::Normal, at_ms(id));
        d.enqueue(T0, m).unwrap();
    }
    let a = send(d.poll(T0));
    assert_eq!(a.id, 1);
    let t1 = at_ms(50);
    // Message 2 waits behind 1 (out); chat 8 goes.
    assert_eq!(send(d.poll(t1)).id, 3);
    d.complete(t1, 1, &Outcome::Delivered, MS).unwrap();
    // Chat 7 may send again only 1.01 s after its last send.
    let wake = idle(d.poll(at_ms(100))).unwrap();
    assert_eq!(wake, at_ms(1_010));
    assert_eq!(send(d.poll(wake)).id, 2);
}

#[test]
fn a_429_pauses_the_whole_tier_and_uses_no_attempt() {
    let mut d = dispatcher();
    for id in 0..2 {
        let m = msg(&mut d, id, 10 + id as i64, Priority::High, T0);
        d.enqueue(T0, m).unwrap();
    }
    let o = send(d.poll(T0));
    let t = at_ms(40);
    assert_eq!(
        d.complete(t, o.id, &too_many(5), 40 * MS),
        Ok(Verdict::RetryAt(t + Duration::from_secs(5)))
    );
    // The other message is held back too: the bot is paused.
    assert_eq!(idle(d.poll(at_ms(100))), Some(t + Duration::from_secs(5)));
    let snap = d.snapshot(at_ms(100));
    assert_eq!(snap.tiers[0].paused_until, Some(t + Duration::from_secs(5)));
    assert_eq!(snap.tiers[0].counters.rate_limited, 1);
    let again = send(d.poll(t + Duration::from_secs(5)));
    assert_eq!((again.id, again.attempt), (o.id, 1));
}

#[test]
fn transient_failures_back_off_then_fail_over() {
    let mut d = dispatcher();
    let m = msg(&mut d, 1, 42, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let mut now = T0;
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let o = send(d.poll(now));
        assert_eq!((o.tier, o.attempt), (0, attempt));
        match d
            .complete(now, 1, &http(502, "Bad Gateway"), 10 * MS)
            .unwrap()
        {
            Verdict::RetryAt(at) => {
                delays.push(at.since(now));
                now = at + Duration::from_secs(2);
            }
            Verdict::FailedOver { to } => {
                assert_eq!((attempt, to), (3, 1));
                break;
            }
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(delays, vec![100 * MS, 200 * MS]);
    let o = send(d.poll(now));
    assert_eq!((o.tier, o.attempt), (1, 4));
    assert_eq!(
        d.complete(now, 1, &Outcome::Delivered, MS),
        Ok(Verdict::Delivered)
    );
    let s = d.snapshot(now);
    assert_eq!(s.tiers[0].counters.failed_over, 1);
    assert_eq!(s.tiers[1].counters.delivered, 1);
}

/// Nothing answering (refused, DNS, silence until the attempt's deadline)
/// is the tier's outage: with a fallback, the message moves on within the
/// same instant instead of backing off on a tier that is down; alone, its
/// tier retries it as before. An answer (502) still backs off first.
#[test]
fn a_tier_that_does_not_answer_fails_over_at_once() {
    for outcome in [
        Outcome::Transport(TransportKind::Connect),
        Outcome::Transport(TransportKind::Dns),
        Outcome::Timeout,
    ] {
        let mut d = dispatcher();
        let m = msg(&mut d, 1, 42, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
        let o = send(d.poll(T0));
        assert_eq!(o.tier, 0);
        let t = at_ms(500);
        assert_eq!(
            d.complete(t, 1, &outcome, 500 * MS),
            Ok(Verdict::FailedOver { to: 1 }),
            "{outcome:?}"
        );
        let again = send(d.poll(t));
        assert_eq!((again.id, again.tier), (1, 1), "{outcome:?}");

        let mut alone = config();
        alone.tiers.truncate(1);
        alone.fallbacks.clear();
        let mut d = Dispatcher::new(alone, 7).unwrap();
        let m = msg(&mut d, 1, 42, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
        send(d.poll(T0));
        assert_eq!(
            d.complete(t, 1, &outcome, 500 * MS),
            Ok(Verdict::RetryAt(t + 100 * MS)),
            "{outcome:?}"
        );
    }
    let mut d = dispatcher();
    let m = msg(&mut d, 1, 42, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    send(d.poll(T0));
    assert!(matches!(
        d.complete(T0, 1, &http(502, "Bad Gateway"), MS),
        Ok(Verdict::RetryAt(_))
    ));
}

/// Telegram refuses four connections, which opens its breaker (window 4);
/// each refused message moves on to the webhook at once, where it is
/// delivered, so sends to both tiers interleave until then. Answers when
/// the breaker opened, with every refused message delivered.
fn refuse_until_the_breaker_opens(d: &mut Dispatcher, mut now: Instant) -> Instant {
    let mut refused = 0;
    loop {
        let o = send(d.poll(now));
        if o.tier == 0 {
            assert_eq!(
                d.complete(now, o.id, &Outcome::Transport(TransportKind::Connect), MS),
                Ok(Verdict::FailedOver { to: 1 })
            );
            refused += 1;
            if refused == 4 {
                // The last refused message goes on to the webhook too.
                let moved = send(d.poll(now));
                assert_eq!((moved.id, moved.tier), (o.id, 1));
                d.complete(now, moved.id, &Outcome::Delivered, MS).unwrap();
                return now;
            }
        } else {
            d.complete(now, o.id, &Outcome::Delivered, MS).unwrap();
        }
        now = now + Duration::from_millis(40);
    }
}

#[test]
fn an_open_breaker_routes_to_the_fallback_and_a_probe_closes_it() {
    let mut d = dispatcher();
    for id in 0..10 {
        let m = msg(&mut d, id, 1000 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let now = refuse_until_the_breaker_opens(&mut d, T0);
    let s = d.snapshot(now);
    assert_eq!(s.tiers[0].breaker, BreakerState::Open);
    let events = d.tick(now);
    assert!(events.iter().any(|e| matches!(e, Event::Breaker { tier: 0, chat: None, transition, .. } if transition.to == BreakerState::Open)));
    // While open, sends go to the webhook (at its own pace).
    let (o, at) = match d.poll(now) {
        Poll::Send(o) => (o, now),
        Poll::Idle { wake_at } => {
            let at = wake_at.expect("more messages wait");
            (send(d.poll(at)), at)
        }
    };
    assert_eq!(o.tier, 1);
    d.complete(at, o.id, &Outcome::Delivered, MS).unwrap();
    // After the open period, telegram gets a probe; its success closes it.
    let later = now + Duration::from_secs(2);
    let probe = send(d.poll(later));
    assert_eq!((probe.tier, probe.probe), (0, true));
    d.complete(later, probe.id, &Outcome::Delivered, MS)
        .unwrap();
    assert_eq!(d.snapshot(later).tiers[0].breaker, BreakerState::Closed);
}

#[test]
fn permanent_errors_dead_letter_and_unreachable_chats_move_on() {
    let mut d = dispatcher();
    for (id, chat) in [(1, 5), (2, 6)] {
        let m = msg(&mut d, id, chat, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let a = send(d.poll(T0));
    // Queued after the first send, so chat 6's longer backlog does not
    // take the first turn from the oldest message.
    let m = msg(&mut d, 3, 6, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    assert_eq!(a.id, 1);
    assert_eq!(
        d.complete(
            T0,
            a.id,
            &http(400, "Bad Request: message text is empty"),
            MS
        ),
        Ok(Verdict::DeadLetter {
            reason: DeadLetterReason::Refused {
                reason: "bad request"
            }
        })
    );
    let now = at_ms(100);
    let b = send(d.poll(now));
    assert_eq!(b.chat, 6);
    assert_eq!(
        d.complete(
            now,
            b.id,
            &http(403, "Forbidden: bot was blocked by the user"),
            MS
        ),
        Ok(Verdict::FailedOver { to: 1 })
    );
    let later = at_ms(200);
    let b2 = send(d.poll(later));
    assert_eq!((b2.id, b2.tier), (2, 1));
    d.complete(later, 2, &Outcome::Delivered, MS).unwrap();
    // The chat is marked: its next message goes straight to the webhook.
    let c = send(d.poll(at_ms(300)));
    assert_eq!((c.id, c.tier), (3, 1));
    assert_eq!(d.snapshot(at_ms(300)).tiers[0].unreachable_chats, 1);
}

#[test]
fn without_a_tier_left_an_unreachable_chat_is_dead_lettered() {
    let mut c = config();
    c.tiers.truncate(1);
    c.fallbacks.clear();
    let mut d = Dispatcher::new(c, 1).unwrap();
    let m = msg(&mut d, 1, 6, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let o = send(d.poll(T0));
    assert_eq!(
        d.complete(T0, o.id, &http(400, "Bad Request: chat not found"), MS),
        Ok(Verdict::DeadLetter {
            reason: DeadLetterReason::NoTierLeft {
                last: LastFailure::Unreachable {
                    reason: "chat unreachable"
                }
            }
        })
    );
    assert_eq!(d.held(), 0);
}

#[test]
fn a_migrated_group_is_readdressed_without_using_an_attempt() {
    let mut d = dispatcher();
    let m = msg(&mut d, 1, -5, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let o = send(d.poll(T0));
    let migrated = Outcome::Http {
        status: 400,
        body: Some(TelegramError {
            error_code: 400,
            description: "Bad Request: group chat was upgraded to a supergroup chat".into(),
            retry_after: None,
            migrate_to_chat_id: Some(-1_000_000_005),
        }),
    };
    assert_eq!(
        d.complete(T0, o.id, &migrated, MS),
        Ok(Verdict::Readdressed {
            new_chat: -1_000_000_005
        })
    );
    let again = send(d.poll(at_ms(100)));
    assert_eq!((again.chat, again.attempt), (-1_000_000_005, 1));
}

#[test]
fn a_bad_token_stops_the_tier_until_reset() {
    let mut d = dispatcher();
    for id in 0..3 {
        let m = msg(&mut d, id, 20 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let o = send(d.poll(T0));
    assert_eq!(
        d.complete(T0, o.id, &http(401, "Unauthorized"), MS),
        Ok(Verdict::FailedOver { to: 1 })
    );
    let events = d.tick(T0);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::TierStopped { tier: 0, .. }))
    );
    let s = d.snapshot(T0);
    assert_eq!(s.tiers[0].stopped, Some("unauthorized: bad bot token"));
    let n = send(d.poll(at_ms(50)));
    assert_eq!(n.tier, 1);
    d.complete(at_ms(50), n.id, &Outcome::Delivered, MS)
        .unwrap();
    assert_eq!(d.reset_breaker(at_ms(60), 0), Some(()));
    assert_eq!(send(d.poll(at_ms(100))).tier, 0);
    assert_eq!(d.reset_breaker(at_ms(60), 9), None);
}

fn shedding_profile() -> DegradationConfig {
    let t = |q| Thresholds {
        queue_depth: Some(q),
        ..Thresholds::default()
    };
    DegradationConfig {
        levels: vec![
            LevelSpec {
                level: Level::Minor,
                entry: t(1_000),
                exit: t(500),
                min_dwell: Duration::from_secs(5),
                actions: Actions {
                    paused_types: vec!["report".into()],
                    ..Actions::default()
                },
            },
            LevelSpec {
                level: Level::Severe,
                entry: t(2_000),
                exit: t(1_500),
                min_dwell: Duration::from_secs(5),
                actions: Actions {
                    shed: crate::engine::scheduler::PrioritySet::EMPTY.with(Priority::Low),
                    concurrency_factor: 0.5,
                    ..Actions::default()
                },
            },
        ],
    }
}

#[test]
fn shed_classes_stay_queued_and_ingest_is_refused() {
    let mut c = config();
    c.degradation = shedding_profile();
    let mut d = Dispatcher::new(c, 3).unwrap();
    let low = msg(&mut d, 1, 1, Priority::Low, T0);
    d.enqueue(T0, low).unwrap();
    let change = d
        .set_degradation_override(T0, Some((Level::Severe, None)))
        .unwrap();
    assert_eq!(change.to, Level::Severe);
    assert!(d.admits_ingest(Priority::Low, "alert").is_err());
    assert!(d.admits_ingest(Priority::High, "alert").is_ok());
    assert_eq!(idle(d.poll(T0)), None);
    assert_eq!(d.snapshot(T0).queued_by_priority[Priority::Low.index()], 1);
    d.set_degradation_override(at_ms(10), None).unwrap();
    assert_eq!(send(d.poll(at_ms(10))).id, 1);
}

#[test]
fn a_paused_type_is_set_aside_and_comes_back() {
    let mut c = config();
    c.degradation = shedding_profile();
    let mut d = Dispatcher::new(c, 3).unwrap();
    let report = d.message_type("report");
    d.enqueue(T0, QueuedMessage::new(1, 1, Priority::High, report, T0))
        .unwrap();
    d.enqueue(T0, QueuedMessage::new(2, 1, Priority::High, report, T0))
        .unwrap();
    let alert = msg(&mut d, 3, 2, Priority::Normal, T0);
    d.enqueue(T0, alert).unwrap();
    d.set_degradation_override(T0, Some((Level::Minor, None)));
    assert!(d.admits_ingest(Priority::High, "report").is_err());
    assert_eq!(send(d.poll(T0)).id, 3);
    assert_eq!(d.snapshot(T0).set_aside, 2);
    // New messages of a set-aside chat wait behind it, whatever their type.
    let late = msg(&mut d, 4, 1, Priority::Critical, T0);
    d.enqueue(T0, late).unwrap();
    assert_eq!(d.snapshot(T0).set_aside, 3);
    d.set_degradation_override(at_ms(100), None);
    let order: Vec<u64> = (0..3)
        .map(|i| {
            let now = at_ms(100 + 1_100 * i);
            let o = send(d.poll(now));
            d.complete(now, o.id, &Outcome::Delivered, MS).unwrap();
            o.id
        })
        .collect();
    assert_eq!(order, vec![1, 2, 4]);
}

#[test]
fn a_full_bulkhead_sets_chats_aside_until_a_slot_frees() {
    let mut c = config();
    c.tiers[0].bulkheads = BTreeMap::from([(
        "report".to_owned(),
        BulkheadConfig {
            max_concurrent: 1,
            max_wait: Duration::from_secs(1),
        },
    )]);
    let mut d = Dispatcher::new(c, 3).unwrap();
    let report = d.message_type("report");
    for (id, chat) in [(1, 1), (2, 2)] {
        d.enqueue(
            T0,
            QueuedMessage::new(id, chat, Priority::Normal, report, T0),
        )
        .unwrap();
    }
    let a = msg(&mut d, 3, 3, Priority::Normal, T0);
    d.enqueue(T0, a).unwrap();
    assert_eq!(send(d.poll(T0)).id, 1);
    // Report 2 waits for the slot; the alert is not held up by it.
    assert_eq!(send(d.poll(at_ms(40))).id, 3);
    assert_eq!(d.snapshot(at_ms(40)).set_aside, 1);
    assert!(matches!(d.poll(at_ms(80)), Poll::Idle { .. }));
    d.complete(at_ms(90), 1, &Outcome::Delivered, MS).unwrap();
    assert_eq!(send(d.poll(at_ms(90))).id, 2);
}

#[test]
fn max_in_flight_caps_sends_and_the_level_scales_it() {
    let mut c = config();
    c.max_in_flight = 4;
    c.degradation = shedding_profile();
    let mut d = Dispatcher::new(c, 3).unwrap();
    for id in 0..10 {
        let m = msg(&mut d, id, id as i64, Priority::High, T0);
        d.enqueue(T0, m).unwrap();
    }
    d.set_degradation_override(T0, Some((Level::Severe, None)));
    let mut now = T0;
    let mut out = 0;
    while let Poll::Send(_) = d.poll(now) {
        out += 1;
        now = now + Duration::from_millis(40);
    }
    // 4 × concurrency factor 0.5.
    assert_eq!(out, 2);
    assert_eq!(idle(d.poll(now)), None);
}

#[test]
fn reconfigure_keeps_messages_and_tier_state() {
    let mut d = dispatcher();
    for id in 0..4 {
        let m = msg(&mut d, id, id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let o = send(d.poll(T0));
    d.complete(T0, o.id, &too_many(3), MS).unwrap();
    let o2 = send(d.poll(T0 + Duration::from_secs(3)));
    // Reorder the tiers and drop the spool.
    let mut c = config();
    c.tiers.swap(0, 1);
    c.tiers.truncate(2);
    c.fallbacks = vec![0];
    let now = T0 + Duration::from_secs(3);
    d.reconfigure(now, c).unwrap();
    assert_eq!(d.tier_index("tg"), Some(1));
    let s = d.snapshot(now);
    assert_eq!(s.tiers[1].counters.rate_limited, 1);
    assert_eq!(s.held, 4);
    assert_eq!(
        d.complete(now, o2.id, &Outcome::Delivered, MS),
        Ok(Verdict::Delivered)
    );
    // A bad config changes nothing.
    let mut bad = config();
    bad.max_in_flight = 0;
    assert!(d.reconfigure(now, bad).is_err());
    assert_eq!(d.tier_count(), 2);
}

#[test]
fn remove_forgets_queued_and_in_flight_messages() {
    let mut d = dispatcher();
    for (id, chat) in [(1, 9), (2, 9), (3, 9)] {
        let m = msg(&mut d, id, chat, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let o = send(d.poll(T0));
    assert_eq!(d.remove(2), Some(Removed::Queued));
    assert_eq!(d.remove(o.id), Some(Removed::InFlight));
    assert_eq!(d.remove(o.id), None);
    assert_eq!(
        d.complete(T0, o.id, &Outcome::Delivered, MS),
        Err(MessageError::NotInFlight(1))
    );
    let next = send(d.poll(at_ms(1_100)));
    assert_eq!(next.id, 3);
    assert_eq!(d.held(), 1);
}

#[test]
fn reloaded_attempts_count_toward_the_retry_budget() {
    let mut d = dispatcher();
    let mut m = msg(&mut d, 1, 3, Priority::Normal, T0);
    m.attempts_so_far = 2;
    m.first_attempt_at = Some(T0);
    d.enqueue(T0, m).unwrap();
    let o = send(d.poll(T0));
    assert_eq!(o.attempt, 3);
    assert_eq!(
        d.complete(T0, 1, &Outcome::Timeout, Duration::from_secs(10)),
        Ok(Verdict::FailedOver { to: 1 })
    );
}

#[test]
fn a_used_up_priority_share_skips_that_class_only() {
    let mut c = config();
    c.tiers[0].limits.shares[Priority::Low.index()] = Some(Limit {
        rate: 1,
        period: Duration::from_secs(1),
        burst: 1,
        guard: Guard::None,
    });
    let mut d = Dispatcher::new(c, 3).unwrap();
    for id in 0..4 {
        let m = msg(&mut d, id, id as i64, Priority::Low, T0);
        d.enqueue(T0, m).unwrap();
    }
    assert_eq!(send(d.poll(T0)).id, 0);
    // The low share (1/s) is used up; nothing else is queued.
    assert_eq!(idle(d.poll(at_ms(40))), Some(at_ms(1_000)));
    let n = msg(&mut d, 10, 10, Priority::Normal, at_ms(50));
    d.enqueue(at_ms(50), n).unwrap();
    assert_eq!(send(d.poll(at_ms(50))).id, 10);
    assert_eq!(idle(d.poll(at_ms(90))), Some(at_ms(1_000)));
    assert_eq!(send(d.poll(at_ms(1_000))).id, 1);
}

#[test]
fn correlated_failures_escalate_once() {
    let mut d = dispatcher();
    for id in 0..8 {
        let m = msg(&mut d, id, 500 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let mut now = T0;
    for _ in 0..30 {
        if let Poll::Send(o) = d.poll(now) {
            let outcome = if o.tier == 0 {
                http(403, "Forbidden: bot was blocked by the user")
            } else {
                Outcome::Delivered
            };
            d.complete(now, o.id, &outcome, MS).unwrap();
        }
        now = now + Duration::from_millis(40);
    }
    assert_eq!(d.held(), 0);
    let escalations = d
        .tick(now)
        .into_iter()
        .filter(|e| matches!(e, Event::Escalation { tier: 0, .. }))
        .count();
    assert_eq!(escalations, 1);
}

#[test]
fn a_deferred_order_comes_back_unsent_and_unjudged() {
    let mut d = dispatcher();
    for id in 0..2 {
        let m = msg(&mut d, id, 10 + id as i64, Priority::High, T0);
        d.enqueue(T0, m).unwrap();
    }
    let o = send(d.poll(T0));
    let until = at_ms(300);
    d.defer(at_ms(1), o.id, until).unwrap();
    // The tier holds off until the shared budget's instant, like a 429.
    assert_eq!(idle(d.poll(at_ms(2))), Some(until));
    let snap = d.snapshot(at_ms(2));
    assert_eq!(snap.in_flight, 0);
    assert_eq!(snap.tiers[0].counters, TierCounters::default());
    assert_eq!(
        snap.tiers[0].health_score,
        dispatcher().snapshot(T0).tiers[0].health_score
    );
    // Both go from then on; the deferred one is on its first attempt still
    // (its chat's cell was spent at the refused poll, so it may come after
    // the other chat's message).
    let mut now = until;
    let mut sent = Vec::new();
    while sent.len() < 2 && now < T0 + Duration::from_secs(3) {
        match d.poll(now) {
            Poll::Send(o) => sent.push(o),
            Poll::Idle { wake_at } => now = wake_at.unwrap_or(now + Duration::from_secs(1)),
        }
    }
    let again = sent.iter().find(|s| s.id == o.id).unwrap();
    assert_eq!((again.attempt, again.tier), (1, 0));
    assert_eq!(d.snapshot(now).tiers[0].counters.sent, 2);
    // Only an order in flight can be deferred.
    assert_eq!(
        d.defer(until, 99, until),
        Err(MessageError::NotInFlight(99))
    );
}

#[test]
fn a_deferred_probe_gives_its_ticket_back() {
    let mut d = dispatcher();
    for id in 0..10 {
        let m = msg(&mut d, id, 1000 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let now = refuse_until_the_breaker_opens(&mut d, T0);
    assert_eq!(d.snapshot(now).tiers[0].breaker, BreakerState::Open);
    let later = now + Duration::from_secs(2);
    let probe = send(d.poll(later));
    assert_eq!((probe.tier, probe.probe), (0, true));
    // Deferring the probe must not leave the half-open breaker waiting for
    // a verdict that never comes: the next poll after the pause probes again.
    let resume = later + Duration::from_millis(50);
    d.defer(later, probe.id, resume).unwrap();
    let again = send(d.poll(resume));
    assert_eq!((again.tier, again.probe), (0, true));
    d.complete(resume, again.id, &Outcome::Delivered, MS)
        .unwrap();
    assert_eq!(d.snapshot(resume).tiers[0].breaker, BreakerState::Closed);
}
