//! 1,000 tiers against the fake API: how long a first pass (every child
//! created) and a steady pass (nothing to write) take, and the peak RSS.
//! Ignored by default; run with
//! `cargo test --lib operator::tests::scale -- --ignored --nocapture`.

use std::time::Instant;

use futures::StreamExt;

use super::*;
use crate::operator::controller;

const TIERS: usize = 1000;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn pass(h: &Harness, names: &[String]) -> (usize, std::time::Duration) {
    let tiers: Vec<DeliveryTier> = h
        .api::<DeliveryTier>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(tiers.len(), names.len());
    let start = Instant::now();
    let ok = futures::stream::iter(tiers)
        .map(|t| controller::reconcile(Arc::new(t), h.ctx.clone()))
        .buffer_unordered(16)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    (ok, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale figure; run by hand"]
async fn a_thousand_tiers() {
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    let names: Vec<String> = (0..TIERS).map(|i| format!("t{i:04}")).collect();
    for n in &names {
        h.create(&spool_tier(n, Some("bot"))).await;
    }
    let rss_before = peak_rss_kib();
    h.refresh().await;
    h.clear_calls();

    let (ok, first) = pass(&h, &names).await;
    assert_eq!(ok, TIERS);
    let rss_first = peak_rss_kib();
    let writes_first = h.writes().len();
    h.refresh().await;
    h.clear_calls();
    let (ok, steady) = pass(&h, &names).await;
    assert_eq!(ok, TIERS);
    let rss_steady = peak_rss_kib();
    let writes_steady = h.writes().len();
    assert_eq!(writes_steady, 0, "a steady pass writes nothing");
    let children = h.children().await.len();
    assert_eq!(children, TIERS * 9);
    println!(
        "scale: {TIERS} tiers; first pass {first:?} ({:.2} ms/tier, {writes_first} writes); \
         steady pass {steady:?} ({:.2} ms/tier, {writes_steady} writes); \
         peak RSS (VmHWM, fake API included) after setup {} KiB, after the first pass {} KiB, \
         after the steady pass {} KiB, at the end {} KiB",
        first.as_secs_f64() * 1000.0 / TIERS as f64,
        steady.as_secs_f64() * 1000.0 / TIERS as f64,
        rss_before.unwrap_or(0),
        rss_first.unwrap_or(0),
        rss_steady.unwrap_or(0),
        peak_rss_kib().unwrap_or(0),
    );
}
