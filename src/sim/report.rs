//! The result of a simulation and its two renderings: a table for people,
//! one JSON object for scripts (`--json`).
//!
//! Owns the report's shape and the definitions of its derived figures:
//!
//! - `utilization` = messages delivered to Telegram ÷ (nominal rate × busy
//!   span), where the nominal rate is the sum of the configured global rates
//!   (`rate / period`) of the Telegram tiers that sent, and the busy span
//!   runs from the first to the last send to a Telegram tier. `null` when
//!   fewer than two sends went to Telegram. A backlog drained exactly at
//!   the limit with a 1 % guard scores `1/1.01 ≈ 0.990`.
//! - `max_global_per_second`, `max_chat_per_second`,
//!   `max_group_per_minute`: the busiest half-open window over the instants
//!   requests *arrived* at the modelled Telegram, refused ones included.
//! - `ideal_span_s`: for a backlog, the shortest busy span the entry
//!   tier's guarded limits allow, counted as Telegram counts (each group a
//!   sliding window of `rate` per guarded period); `span_vs_ideal` is the
//!   busy span over it.
//! - latency: from a message's first submission by its producer to its
//!   delivery, nearest-rank percentiles, per priority.
//!
//! Invariant: the report holds no wall-clock figure, so the same inputs and
//! seed give byte-identical output.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples_ns` (sorted in place).
    pub fn of(samples_ns: &mut [u64]) -> Percentiles {
        samples_ns.sort_unstable();
        let n = samples_ns.len();
        let pick = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples_ns[rank - 1] as f64 / 1e6
        };
        Percentiles {
            count: n as u64,
            p50_ms: pick(0.50),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TierReport {
    pub name: String,
    pub sink: String,
    pub sends: u64,
    pub delivered: u64,
    pub failed: u64,
    pub rate_limited_429: u64,
    pub failed_over: u64,
    pub dead_lettered: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BreakerChange {
    pub at_s: f64,
    pub tier: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LevelChangeReport {
    pub at_s: f64,
    pub from: String,
    pub to: String,
    pub cause: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SimReport {
    pub workload: String,
    pub seed: u64,
    pub entry_tier: String,
    /// What the simulation does not model, per the config it was given.
    pub notes: Vec<String>,
    pub messages: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_reason: BTreeMap<String, u64>,
    /// Not settled when the horizon was reached.
    pub pending: u64,
    /// Producer submissions answered 503 by degradation (retried later).
    pub refused_at_ingest: u64,
    pub rate_limited_429: u64,
    pub telegram_requests: u64,
    pub max_global_per_second: u64,
    pub max_chat_per_second: u64,
    pub max_group_per_minute: u64,
    pub telegram_delivered: u64,
    pub busy_span_s: f64,
    pub nominal_rate_per_s: f64,
    pub utilization: Option<f64>,
    /// The shortest busy span the guarded limits allow this backlog, as
    /// Telegram counts them; `null` for other arrivals.
    pub ideal_span_s: Option<f64>,
    /// `busy_span_s / ideal_span_s`: 1.0 is a perfect drain.
    pub span_vs_ideal: Option<f64>,
    pub latency: BTreeMap<String, Percentiles>,
    pub tiers: Vec<TierReport>,
    pub breaker_transitions: Vec<BreakerChange>,
    pub chat_breaker_transitions: u64,
    pub degradation: Vec<LevelChangeReport>,
    pub simulated_s: f64,
}

impl SimReport {
    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = self.write_table(&mut s);
        s
    }

    fn write_table(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "herald simulate: {} (seed {}, entry tier {}, {:.1} s simulated)",
            self.workload, self.seed, self.entry_tier, self.simulated_s
        )?;
        for n in &self.notes {
            writeln!(s, "  note: {n}")?;
        }
        writeln!(s)?;
        let row = |s: &mut String, k: &str, v: String| writeln!(s, "  {k:<34} {v}");
        row(s, "messages", self.messages.to_string())?;
        row(s, "delivered", self.delivered.to_string())?;
        row(s, "dead-lettered", self.dead_lettered.to_string())?;
        for (reason, n) in &self.dead_lettered_by_reason {
            row(s, &format!("  {reason}"), n.to_string())?;
        }
        if self.pending > 0 {
            row(s, "pending at horizon", self.pending.to_string())?;
        }
        row(
            s,
            "refused at ingest (503, retried)",
            self.refused_at_ingest.to_string(),
        )?;
        row(s, "telegram requests", self.telegram_requests.to_string())?;
        row(s, "modelled 429s", self.rate_limited_429.to_string())?;
        row(
            s,
            "max per 1 s window, bot",
            self.max_global_per_second.to_string(),
        )?;
        row(
            s,
            "max per 1 s window, one chat",
            self.max_chat_per_second.to_string(),
        )?;
        row(
            s,
            "max per 60 s window, one group",
            self.max_group_per_minute.to_string(),
        )?;
        row(
            s,
            "utilization of the global limit",
            match self.utilization {
                Some(u) => format!(
                    "{:.4}  ({} delivered to Telegram / ({} /s x {:.2} s busy span))",
                    u, self.telegram_delivered, self.nominal_rate_per_s, self.busy_span_s
                ),
                None => "n/a (fewer than two Telegram sends)".to_owned(),
            },
        )?;
        if let (Some(ideal), Some(ratio)) = (self.ideal_span_s, self.span_vs_ideal) {
            row(
                s,
                "busy span vs ideal schedule",
                format!(
                    "{ratio:.4}  ({:.2} s / {ideal:.2} s at the guarded limits)",
                    self.busy_span_s
                ),
            )?;
        }
        writeln!(s, "\n  latency, submission to delivery (ms)")?;
        writeln!(
            s,
            "  {:<10} {:>8} {:>10} {:>10} {:>10}",
            "priority", "count", "p50", "p95", "p99"
        )?;
        for (p, l) in &self.latency {
            writeln!(
                s,
                "  {:<10} {:>8} {:>10.1} {:>10.1} {:>10.1}",
                p, l.count, l.p50_ms, l.p95_ms, l.p99_ms
            )?;
        }
        writeln!(s, "\n  tiers")?;
        writeln!(
            s,
            "  {:<20} {:<9} {:>8} {:>9} {:>7} {:>6} {:>8} {:>6}",
            "name", "sink", "sends", "delivered", "failed", "429s", "failover", "dead"
        )?;
        for t in &self.tiers {
            writeln!(
                s,
                "  {:<20} {:<9} {:>8} {:>9} {:>7} {:>6} {:>8} {:>6}",
                t.name,
                t.sink,
                t.sends,
                t.delivered,
                t.failed,
                t.rate_limited_429,
                t.failed_over,
                t.dead_lettered
            )?;
        }
        writeln!(
            s,
            "\n  breaker transitions ({} chat-scoped not listed)",
            self.chat_breaker_transitions
        )?;
        if self.breaker_transitions.is_empty() {
            writeln!(s, "    none")?;
        }
        for b in &self.breaker_transitions {
            writeln!(
                s,
                "    {:>9.3} s  {:<20} {} -> {} ({})",
                b.at_s, b.tier, b.from, b.to, b.reason
            )?;
        }
        writeln!(s, "\n  degradation timeline")?;
        if self.degradation.is_empty() {
            writeln!(s, "    NORMAL throughout")?;
        }
        for l in &self.degradation {
            writeln!(
                s,
                "    {:>9.3} s  {} -> {} ({})",
                l.at_s, l.from, l.to, l.cause
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|ms| ms * 1_000_000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(
            (p.count, p.p50_ms, p.p95_ms, p.p99_ms),
            (100, 50.0, 95.0, 99.0)
        );
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }

    #[test]
    fn renders_both_ways() {
        let r = SimReport {
            workload: "w".into(),
            utilization: Some(0.99),
            ..SimReport::default()
        };
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "delivered",
            "dead_lettered",
            "rate_limited_429",
            "max_global_per_second",
            "utilization",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(r.to_table().contains("utilization of the global limit"));
    }
}
