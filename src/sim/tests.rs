//! The shipped workloads against the shipped full sample, end to end.

use super::*;

const FULL: &str = include_str!("../../config/samples/full.yaml");
const BACKLOG: &str = include_str!("../../config/samples/workloads/backlog-10k.yaml");
const OUTAGE: &str = include_str!("../../config/samples/workloads/outage.yaml");
const STEADY: &str = include_str!("../../config/samples/workloads/steady.yaml");

fn sim(workload: &str, seed: u64) -> Result<SimReport, SimError> {
    let report = validate::validate_sources([("full.yaml", FULL)]);
    simulate(&report, "w.yaml", "w", workload, seed, None)
}

#[test]
fn backlog_10k_drains_at_the_limit_without_a_429() {
    let r = sim(BACKLOG, 1).unwrap();
    assert_eq!(r.entry_tier, "alerts-telegram");
    assert_eq!(r.delivered, 10_000, "{}", r.to_table());
    assert_eq!(r.dead_lettered, 0);
    assert_eq!(r.rate_limited_429, 0, "{}", r.to_table());
    assert!(r.max_global_per_second <= 30);
    assert!(r.max_chat_per_second <= 1);
    assert!(r.max_group_per_minute <= 20);
    let u = r.utilization.unwrap();
    assert!(u >= 0.98, "utilization {u}\n{}", r.to_table());
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("limiter backend redis ignored"))
    );
}

#[test]
fn outage_fails_over_to_the_webhook_and_loses_nothing() {
    let r = sim(OUTAGE, 1).unwrap();
    let table = r.to_table();
    assert_eq!(r.delivered + r.dead_lettered, r.messages, "{table}");
    assert_eq!(r.dead_lettered, 0, "{table}");
    assert_eq!(r.pending, 0, "{table}");
    assert_eq!(r.rate_limited_429, 0, "{table}");
    let webhook = r.tiers.iter().find(|t| t.name == "alerts-webhook").unwrap();
    assert!(webhook.delivered > 0, "{table}");
    let tg: Vec<_> = r
        .breaker_transitions
        .iter()
        .filter(|b| b.tier == "alerts-telegram")
        .collect();
    let opened = tg
        .iter()
        .position(|b| b.to == "open")
        .unwrap_or_else(|| panic!("breaker never opened\n{table}"));
    assert!(
        tg[opened..]
            .iter()
            .any(|b| b.to == "closed" && b.at_s > 120.0),
        "breaker closed after the outage\n{table}"
    );
    assert_eq!(tg.last().map(|b| b.to.as_str()), Some("closed"), "{table}");
}

#[test]
fn steady_traffic_keeps_every_limit() {
    // The shipped hour, cut to ten minutes to keep debug test runs short.
    let ten_minutes = STEADY.replace("messages: 50000", "messages: 8333");
    let r = sim(&ten_minutes, 3).unwrap();
    let table = r.to_table();
    assert_eq!(r.delivered, 8_333, "{table}");
    assert_eq!(r.rate_limited_429, 0, "{table}");
    assert!(r.max_global_per_second <= 30, "{table}");
    assert!(r.max_chat_per_second <= 1, "{table}");
    assert!(r.simulated_s < 660.0, "{table}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let small = BACKLOG.replace("messages: 10000", "messages: 300");
    let a = sim(&small, 9).unwrap().to_json();
    let b = sim(&small, 9).unwrap().to_json();
    assert_eq!(a, b);
    let json: serde_json::Value = serde_json::from_str(&a).unwrap();
    for key in [
        "delivered",
        "dead_lettered",
        "rate_limited_429",
        "max_global_per_second",
        "utilization",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[test]
fn an_invalid_config_gives_the_validators_diagnostics() {
    let bad = FULL.replace(
        "global: {rate: 30, period: 1s, burst: 1}",
        "global: {rate: 0, period: 1s, burst: 1}",
    );
    let report = validate::validate_sources([("full.yaml", bad.as_str())]);
    let e = simulate(&report, "w.yaml", "w", BACKLOG, 1, None).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let text = e.to_string();
    assert!(
        text.starts_with("full.yaml:8:")
            && text.contains("RateLimitPolicy/alerts-bot-limits: spec.global.rate"),
        "{text}"
    );
}

#[test]
fn a_bad_workload_is_named() {
    let e = sim("messages: 10\nchats: 2\narrival: backlog\nburst: 3\n", 1).unwrap_err();
    assert!(matches!(e, SimError::Workload { .. }));
    assert!(e.to_string().contains("burst"), "{e}");
    let e = sim(
        "messages: 10\nchats: 2\narrival: backlog\nfaults: {tiers: {nope: {}}}\n",
        1,
    )
    .unwrap_err();
    assert!(e.to_string().contains("faults.tiers.nope"), "{e}");
    let report = validate::validate_sources([("full.yaml", FULL)]);
    let e = simulate(&report, "w", "w", BACKLOG, 1, Some("nope")).unwrap_err();
    assert!(e.to_string().contains("entry tier"), "{e}");
}
