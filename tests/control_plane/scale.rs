//! 1,000 tiers against the real API server: how long until every tier's
//! status is current, and the operator's peak RSS. A measurement, not a
//! check of figures: ignored by default, run it with
//! `cargo test --test control_plane scale -- --ignored --nocapture`.
//! `HERALD_SCALE_TIERS` changes the count; `HERALD_SCALE_BIN` measures
//! another build of herald (e.g. `target/release/herald`).

use std::time::{Duration, Instant};

use crate::cluster::{cluster, wait_for};
use crate::operator::{Launch, launch};

/// Tiers per RateLimitPolicy / CircuitPolicy, so that a policy fans out.
const TIERS_PER_POLICY: usize = 10;

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "a measurement (minutes): run with --ignored --nocapture"]
fn a_thousand_tiers() {
    let tiers: usize = std::env::var("HERALD_SCALE_TIERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let c = cluster();
    let ns = c.namespace("scale");
    let mut yaml = String::new();
    for p in 0..tiers.div_ceil(TIERS_PER_POLICY) {
        yaml.push_str(&format!(
            "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: limits-{p}}}\n\
             spec: {{global: {{rate: 30, period: 1s}}}}\n---\n\
             apiVersion: herald.dev/v1alpha1\nkind: CircuitPolicy\nmetadata: {{name: circuit-{p}}}\nspec: {{}}\n---\n"
        ));
    }
    for t in 0..tiers {
        let p = t / TIERS_PER_POLICY;
        yaml.push_str(&format!(
            "apiVersion: herald.dev/v1alpha1\nkind: DeliveryTier\nmetadata: {{name: tier-{t}}}\n\
             spec: {{channel: spool, spool: {{path: /var/spool/herald}}, \
             rateLimitPolicyRef: {{name: limits-{p}}}, circuitPolicyRef: {{name: circuit-{p}}}}}\n---\n"
        ));
    }
    let applied = Instant::now();
    c.apply(&ns, &yaml);
    eprintln!(
        "scale: {tiers} tiers and their policies applied in {:.1}s",
        applied.elapsed().as_secs_f64()
    );

    let bin = std::env::var("HERALD_SCALE_BIN").ok();
    let started = Instant::now();
    let op = launch(&Launch {
        identity: "scale",
        namespace: Some(&ns),
        lease_name: "herald-e2e-scale",
        extra: &[],
        bin: bin.as_deref(),
    });
    let current = || -> usize {
        c.kubectl_ok(&[
            "get",
            "deliverytiers",
            "-n",
            &ns,
            "-o",
            "jsonpath={range .items[*]}{.metadata.generation}={.status.observedGeneration}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| l.split_once('=').is_some_and(|(g, o)| g == o))
        .count()
    };
    let mut last_report = Instant::now();
    let done = wait_for(Duration::from_secs(1800), || {
        let n = current();
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "scale: {n}/{tiers} current after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        (n == tiers).then_some(())
    });
    let took = started.elapsed();
    let peak = peak_rss_kib(op.child.id());
    assert!(
        done.is_some(),
        "not every tier became current within 30 minutes"
    );
    eprintln!(
        "scale: {tiers} tiers current {:.1}s after the operator started; operator peak RSS {:.1} MiB ({})",
        took.as_secs_f64(),
        peak as f64 / 1024.0,
        bin.as_deref().unwrap_or("debug build")
    );
}
