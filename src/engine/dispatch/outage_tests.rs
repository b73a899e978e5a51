//! Outages on a virtual clock: a message that every tier fails with the
//! tier's own fault waits the outage out instead of being dead-lettered, and
//! dies only of its maximum age.

use std::time::Duration;

use super::tests::{MS, T0, config, http, msg};
use super::*;
use crate::engine::Priority;
use crate::engine::taxonomy::{Outcome, TransportKind};

/// The config of the unit tests cut down to its first `n` tiers.
fn tiers(n: usize) -> DispatchConfig {
    let mut c = config();
    c.tiers.truncate(n);
    c.fallbacks.retain(|&f| f < n);
    c
}

/// Polls from `now` until a send comes out (following idle wake-ups); the
/// send order and the instant it came out.
fn next_send(
    d: &mut Dispatcher,
    mut now: Instant,
    give_up: Instant,
) -> Option<(SendOrder, Instant)> {
    while now <= give_up {
        match d.poll(now) {
            Poll::Send(o) => return Some((o, now)),
            Poll::Idle { wake_at } => {
                now = wake_at
                    .unwrap_or(now + Duration::from_secs(1))
                    .max(now + MS)
            }
        }
    }
    None
}

#[test]
fn a_refused_connection_for_two_hours_holds_the_message_and_it_goes_when_the_api_returns() {
    let mut d = Dispatcher::new(tiers(1), 3).unwrap();
    let m = msg(&mut d, 1, 42, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let outage_ends = T0 + Duration::from_secs(2 * 3600);
    let mut now = T0;
    let mut attempts = Vec::new();
    loop {
        let (o, at) = next_send(&mut d, now, outage_ends + Duration::from_secs(120))
            .expect("the held message is tried again");
        now = at;
        if now >= outage_ends {
            assert_eq!(
                d.complete(now, o.id, &Outcome::Delivered, MS),
                Ok(Verdict::Delivered)
            );
            break;
        }
        attempts.push(now);
        match d
            .complete(now, o.id, &Outcome::Transport(TransportKind::Connect), MS)
            .unwrap()
        {
            Verdict::Held(at) | Verdict::RetryAt(at) => assert!(at > now),
            v => panic!("an outage must not end the message: {v:?}"),
        }
    }
    // The retry policy's three attempts, then one try per hold period: the
    // periods double from the policy's longest backoff (2 s) to a minute.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].since(w[0])).collect();
    assert!(
        gaps[2..].iter().all(|g| *g >= Duration::from_secs(1)),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(60) + MS),
        "{gaps:?}"
    );
    assert!(
        attempts.len() < 2 * 3600 / 30 + 10,
        "{} attempts",
        attempts.len()
    );
    let s = d.snapshot(now);
    assert_eq!(s.tiers[0].counters.dead_lettered, 0);
    assert!(s.tiers[0].counters.held > 100);
    assert_eq!(d.held(), 0);
}

#[test]
fn a_held_message_starts_over_on_the_best_tier() {
    let mut d = Dispatcher::new(tiers(2), 3).unwrap();
    let m = msg(&mut d, 1, 42, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let mut now = T0;
    let mut tiers_tried = Vec::new();
    let held_at = loop {
        let (o, at) = next_send(&mut d, now, T0 + Duration::from_secs(600)).unwrap();
        now = at;
        tiers_tried.push(o.tier);
        match d
            .complete(now, o.id, &http(502, "Bad Gateway"), MS)
            .unwrap()
        {
            Verdict::Held(_) => break now,
            Verdict::RetryAt(_) | Verdict::FailedOver { .. } => {}
            v => panic!("{v:?}"),
        }
    };
    // Attempts count per message, not per tier: the fallback gets one.
    assert_eq!(tiers_tried, vec![0, 0, 0, 1]);
    assert_eq!(d.snapshot(held_at).tiers[1].counters.held, 1);
    let (o, at) = next_send(&mut d, held_at, held_at + Duration::from_secs(120)).unwrap();
    assert_eq!(o.tier, 0, "after a hold the best tier is tried first");
    assert!(at.since(held_at) >= Duration::from_secs(1));
    assert_eq!(
        d.complete(at, o.id, &Outcome::Delivered, MS),
        Ok(Verdict::Delivered)
    );
}

#[test]
fn a_held_message_is_dead_lettered_once_it_reaches_its_maximum_age() {
    let mut c = tiers(1);
    c.max_age = Duration::from_secs(600);
    let mut d = Dispatcher::new(c, 3).unwrap();
    let m = msg(&mut d, 1, 42, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let mut now = T0;
    let (verdict, at) = loop {
        let (o, at) = next_send(&mut d, now, T0 + Duration::from_secs(3600)).unwrap();
        now = at;
        match d
            .complete(now, o.id, &Outcome::Timeout, Duration::from_secs(10))
            .unwrap()
        {
            Verdict::RetryAt(_) | Verdict::Held(_) => {}
            v => break (v, now),
        }
    };
    assert!(
        matches!(
            verdict,
            Verdict::DeadLetter {
                reason: DeadLetterReason::Expired {
                    last: LastFailure::RetriesExhausted(_)
                }
            }
        ),
        "{verdict:?}"
    );
    let age = at.since(T0);
    assert!(age >= Duration::from_secs(600), "{age:?}");
    assert!(age <= Duration::from_secs(600 + 61), "{age:?}");
    assert_eq!(d.held(), 0);
    assert_eq!(verdict_label(&verdict), "max_age");
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::DeadLetter { reason } => reason.label(),
        _ => "",
    }
}

#[test]
fn a_stopped_last_tier_holds_its_messages_until_it_is_reset() {
    let mut d = Dispatcher::new(tiers(1), 3).unwrap();
    for id in 0..3 {
        let m = msg(&mut d, id, 20 + id as i64, Priority::Normal, T0);
        d.enqueue(T0, m).unwrap();
    }
    let Poll::Send(o) = d.poll(T0) else {
        panic!("a send")
    };
    assert!(matches!(
        d.complete(T0, o.id, &http(401, "Unauthorized"), MS),
        Ok(Verdict::Held(_))
    ));
    // Nothing goes while the only tier is stopped, and nothing is lost.
    let hour = T0 + Duration::from_secs(3600);
    assert!(matches!(d.poll(hour), Poll::Idle { .. }));
    assert_eq!(d.held(), 3);
    assert_eq!(d.reset_breaker(hour, 0), Some(()));
    let mut delivered = 0;
    let mut now = hour;
    while let Some((o, at)) = next_send(&mut d, now, hour + Duration::from_secs(300)) {
        now = at;
        assert_eq!(
            d.complete(now, o.id, &Outcome::Delivered, MS),
            Ok(Verdict::Delivered)
        );
        delivered += 1;
        if delivered == 3 {
            break;
        }
    }
    assert_eq!(delivered, 3);
}

#[test]
fn a_message_fault_without_a_tier_left_is_still_dead_lettered() {
    let mut d = Dispatcher::new(tiers(1), 3).unwrap();
    let m = msg(&mut d, 1, 6, Priority::Normal, T0);
    d.enqueue(T0, m).unwrap();
    let Poll::Send(o) = d.poll(T0) else {
        panic!("a send")
    };
    assert!(matches!(
        d.complete(
            T0,
            o.id,
            &http(403, "Forbidden: bot was blocked by the user"),
            MS
        ),
        Ok(Verdict::DeadLetter { .. })
    ));
    assert_eq!(d.held(), 0);
}
