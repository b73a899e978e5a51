//! `herald bench --quick` runs every measurement end to end against a real
//! agent process: every message it accepts reaches the null API, and the
//! report holds every figure. Figures themselves are not judged here — they
//! belong to benchmark runs, not tests.

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_bench_measures_everything_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("herald runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");

    assert_eq!(report["latency_refused"], 0, "{report:#}");
    assert_eq!(report["latency_undelivered"], 0, "{report:#}");
    // 500/s for 0.5 s, 20 paired drop-in calls.
    assert_eq!(report["accept_latency"]["samples"], 250);
    assert_eq!(report["accept_latency_from_send"]["samples"], 250);
    assert_eq!(report["generator_lateness"]["samples"], 250);
    assert_eq!(report["pipeline_overhead"]["samples"], 250);
    assert_eq!(report["drop_in_direct"]["samples"], 20);
    assert_eq!(report["drop_in_through_herald"]["samples"], 20);
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "one round with metrics on, one off");
    for r in rounds {
        assert_eq!(r["messages"], 2000);
        assert!(r["per_second"].as_f64().is_some_and(|v| v > 0.0));
        if cfg!(target_os = "linux") {
            assert!(
                r["agent_cpu_us_per_message"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{r:#}"
            );
        }
    }
    assert!(rounds.iter().any(|r| r["metrics"] == true));
    assert!(rounds.iter().any(|r| r["metrics"] == false));
    if cfg!(target_os = "linux") {
        assert!(report["idle_rss_mib"].as_f64().is_some_and(|v| v > 0.0));
    }
}

/// `herald bench --backlog` queues what it says and measures the send rate
/// with the backlog held; again the figures are not judged.
#[test]
fn backlog_bench_holds_the_backlog_and_keeps_sending() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bench",
            "--backlog",
            "3000",
            "--chats",
            "500",
            "--window",
            "2",
            "--json",
        ])
        .output()
        .expect("herald runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "herald bench --backlog failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["messages"], 3000, "{report:#}");
    assert_eq!(report["chats"], 500, "{report:#}");
    // Under Telegram's limits at most about 30 a second leave, so nearly
    // all of the 3,000 are still queued when the memory is read.
    let queued = report["queued"].as_u64().expect("queued");
    assert!(queued > 2000 && queued <= 3000, "{report:#}");
    assert!(
        report["sent_in_window"].as_u64().is_some_and(|n| n > 0),
        "{report:#}"
    );
    if cfg!(target_os = "linux") {
        assert!(
            report["rss_with_backlog_mib"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{report:#}"
        );
        assert!(report["bytes_per_queued_message"].is_number(), "{report:#}");
    }
}
