//! `herald bench`: the load command that measures the agent's own cost.
//!
//! It runs a real agent process (`herald run`) whose only tier sends to a
//! null Bot API (answers at once, limits far out of reach), drives it from
//! this process over loopback HTTP, and reports: idle RSS, durable accept
//! throughput with batching producers (metrics on and off, alternated over
//! fresh stores), accept latency of single messages at a fixed rate,
//! pipeline overhead (202 received → the null API has the message), and the
//! added latency of the Bot API drop-in endpoint against calling the API
//! directly. Figures are machine-dependent; nothing here asserts a target.

mod agent_process;
mod backlog;
mod load;
mod null_api;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

pub use agent_process::{AgentProcess, Limits, rss_of};
pub use backlog::{BacklogPlan, BacklogReport, render_backlog, run_backlog};
pub use load::Throughput;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("agent: {0}")]
    Agent(String),
}

impl From<reqwest::Error> for BenchError {
    fn from(e: reqwest::Error) -> Self {
        // URLs carry the bot token of drop-in calls.
        BenchError::Http(e.without_url().to_string())
    }
}

/// How hard and how long to push.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// The `herald` executable to start as the agent.
    pub exe: PathBuf,
    /// Messages per throughput round.
    pub throughput_messages: u64,
    pub producers: usize,
    pub batch: u64,
    /// Rounds of (metrics on, metrics off), alternating which goes first.
    pub rounds: u32,
    /// Rate and length of the open-loop latency run.
    pub latency_rate: u64,
    pub latency_duration: Duration,
    /// Paired drop-in calls.
    pub drop_in_calls: u64,
    /// Quiet time before reading idle RSS.
    pub idle_wait: Duration,
    /// Whether each round runs with metrics off too, to price them.
    pub compare_metrics: bool,
}

impl BenchPlan {
    /// The plan behind the figures in the issue: 5,000 msg/s for 4 s,
    /// 100,000 messages per throughput round.
    pub fn full(exe: PathBuf) -> Self {
        BenchPlan {
            exe,
            throughput_messages: 100_000,
            producers: 8,
            batch: 100,
            rounds: 2,
            latency_rate: 5_000,
            latency_duration: Duration::from_secs(4),
            drop_in_calls: 300,
            idle_wait: Duration::from_secs(3),
            compare_metrics: true,
        }
    }

    /// A few seconds in all: checks that every measurement runs.
    pub fn quick(exe: PathBuf) -> Self {
        BenchPlan {
            exe,
            throughput_messages: 2_000,
            producers: 4,
            batch: 100,
            rounds: 1,
            latency_rate: 500,
            latency_duration: Duration::from_millis(500),
            drop_in_calls: 20,
            idle_wait: Duration::from_millis(500),
            compare_metrics: true,
        }
    }
}

/// Latency quantiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Quantiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    pub fn of(mut samples: Vec<Duration>) -> Quantiles {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of all at or below it.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1000.0
        };
        Quantiles {
            samples: samples.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

/// One throughput round.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub metrics: bool,
    #[serde(flatten)]
    pub throughput: Throughput,
    /// The agent's CPU time (user + system) per message, in microseconds,
    /// from the round's start until the null API has every message: accept
    /// and delivery. Steadier than msg/s on a shared machine, since time
    /// the agent waits for a core is not in it. `None` off Linux, or when
    /// the deliveries did not finish within a minute.
    pub agent_cpu_us_per_message: Option<f64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub idle_rss_mib: Option<f64>,
    pub rss_after_latency_run_mib: Option<f64>,
    pub rounds: Vec<Round>,
    pub accept_per_second_metrics_on: f64,
    pub accept_per_second_metrics_off: f64,
    /// (off − on) / off, in percent: what collecting metrics costs.
    pub metrics_cost_percent: f64,
    /// Median agent CPU per message with metrics on and off, and
    /// (on − off) / off in percent.
    pub cpu_us_per_message_metrics_on: Option<f64>,
    pub cpu_us_per_message_metrics_off: Option<f64>,
    pub metrics_cpu_cost_percent: Option<f64>,
    pub latency_rate_per_second: u64,
    pub accept_latency: Quantiles,
    /// The same requests timed from when each actually left.
    pub accept_latency_from_send: Quantiles,
    /// How late the generator sent each request after its scheduled start.
    pub generator_lateness: Quantiles,
    pub pipeline_overhead: Quantiles,
    pub latency_refused: u64,
    pub latency_undelivered: u64,
    pub drop_in_direct: Quantiles,
    pub drop_in_through_herald: Quantiles,
    pub drop_in_added_p50_ms: f64,
}

/// Runs the plan; `progress` gets one line per phase.
pub async fn run(plan: &BenchPlan, progress: &mut dyn FnMut(&str)) -> Result<Report, BenchError> {
    let api = null_api::NullApi::start().await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let seq = Arc::new(load::Seq::default());

    progress("starting an agent (metrics on) against the null API");
    let agent =
        AgentProcess::start(&plan.exe, &api.base_url(), true, Limits::Unbounded, &client).await?;
    tokio::time::sleep(plan.idle_wait).await;
    let idle_rss_mib = agent.rss_bytes().map(mib);

    progress("drop-in endpoint: paired sendMessage calls, direct and through herald");
    let d = load::drop_in(
        &client,
        &agent.url,
        &api.base_url(),
        agent_process::TOKEN,
        &seq,
        plan.drop_in_calls,
    )
    .await?;
    let drop_in_direct = Quantiles::of(d.direct);
    let drop_in_through_herald = Quantiles::of(d.through_herald);

    progress(&format!(
        "accept latency: single messages at {}/s for {:?}",
        plan.latency_rate, plan.latency_duration
    ));
    api.arrivals.clear();
    let o = load::open_loop(
        &client,
        &agent.url,
        &seq,
        &api.arrivals,
        plan.latency_rate,
        plan.latency_duration,
    )
    .await?;
    let rss_after_latency_run_mib = agent.rss_bytes().map(mib);
    drop(agent);

    let mut rounds = Vec::new();
    for r in 0..plan.rounds {
        let order: &[bool] = match (plan.compare_metrics, r % 2 == 0) {
            (false, _) => &[true],
            (true, true) => &[true, false],
            (true, false) => &[false, true],
        };
        for &metrics in order {
            progress(&format!(
                "accept throughput, round {}: {} messages, {} producers × batches of {}, metrics {}",
                r + 1,
                plan.throughput_messages,
                plan.producers,
                plan.batch,
                if metrics { "on" } else { "off" }
            ));
            let agent = AgentProcess::start(
                &plan.exe,
                &api.base_url(),
                metrics,
                Limits::Unbounded,
                &client,
            )
            .await?;
            // Warm the connection pool and the store file first.
            let delivered_before = api.arrivals.count.load(Ordering::Relaxed);
            let warm_up = plan.batch * 4;
            load::accept_throughput(
                &client,
                &agent.url,
                &seq,
                warm_up,
                (4, plan.batch),
                load::CHATS,
            )
            .await?;
            delivered(&api.arrivals, delivered_before + warm_up).await;
            let cpu_before = agent.cpu_seconds();
            let t = load::accept_throughput(
                &client,
                &agent.url,
                &seq,
                plan.throughput_messages,
                (plan.producers, plan.batch),
                load::CHATS,
            )
            .await?;
            // The CPU per message covers its delivery too.
            let all_delivered =
                delivered(&api.arrivals, delivered_before + warm_up + t.messages).await;
            let agent_cpu_us_per_message = cpu_before
                .filter(|_| all_delivered)
                .zip(agent.cpu_seconds())
                .map(|(b, a)| (a - b) * 1e6 / t.messages as f64);
            rounds.push(Round {
                metrics,
                throughput: t,
                agent_cpu_us_per_message,
            });
        }
    }
    // The median of one figure over the rounds with metrics `on` (or off).
    let median = |on: bool, figure: fn(&Round) -> Option<f64>| {
        let mut v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.metrics == on)
            .filter_map(figure)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let per_second = |r: &Round| Some(r.throughput.per_second);
    let on = median(true, per_second).unwrap_or(0.0);
    let off = median(false, per_second).unwrap_or(0.0);
    let cpu_per_message = |r: &Round| r.agent_cpu_us_per_message;
    let (cpu_on, cpu_off) = (
        median(true, cpu_per_message),
        median(false, cpu_per_message),
    );
    Ok(Report {
        idle_rss_mib,
        rss_after_latency_run_mib,
        accept_per_second_metrics_on: on,
        accept_per_second_metrics_off: off,
        metrics_cost_percent: if off > 0.0 {
            (off - on) / off * 100.0
        } else {
            0.0
        },
        cpu_us_per_message_metrics_on: cpu_on,
        cpu_us_per_message_metrics_off: cpu_off,
        metrics_cpu_cost_percent: cpu_on
            .zip(cpu_off)
            .filter(|(_, off)| *off > 0.0)
            .map(|(on, off)| (on - off) / off * 100.0),
        rounds,
        latency_rate_per_second: plan.latency_rate,
        accept_latency: Quantiles::of(o.accept),
        accept_latency_from_send: Quantiles::of(o.accept_from_send),
        generator_lateness: Quantiles::of(o.lateness),
        pipeline_overhead: Quantiles::of(o.pipeline),
        latency_refused: o.refused,
        latency_undelivered: o.undelivered,
        drop_in_added_p50_ms: drop_in_through_herald.p50_ms - drop_in_direct.p50_ms,
        drop_in_direct,
        drop_in_through_herald,
    })
}

/// Waits (at most a minute) until the null API has seen `total` messages;
/// false if it has not by then.
async fn delivered(arrivals: &null_api::Arrivals, total: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while arrivals.count.load(Ordering::Relaxed) < total {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let q = |q: &Quantiles| {
        format!(
            "p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
            q.p50_ms, q.p90_ms, q.p99_ms, q.p999_ms, q.max_ms, q.samples
        )
    };
    let rss = |v: Option<f64>| v.map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"));
    let mut out = String::new();
    out.push_str(&format!(
        "idle RSS                     {}\n",
        rss(r.idle_rss_mib)
    ));
    out.push_str(&format!(
        "RSS after latency run        {}\n",
        rss(r.rss_after_latency_run_mib)
    ));
    let cpu = |v: Option<f64>| v.map_or("n/a".to_owned(), |us| format!("{us:.1} µs"));
    for round in &r.rounds {
        out.push_str(&format!(
            "accept throughput (metrics {:3}) {:>9.0} msg/s  ({} msgs in {:.2} s, {} refused requests; agent CPU {} per message)\n",
            if round.metrics { "on" } else { "off" },
            round.throughput.per_second,
            round.throughput.messages,
            round.throughput.seconds,
            round.throughput.refused_requests,
            cpu(round.agent_cpu_us_per_message)
        ));
    }
    out.push_str(&format!(
        "metrics cost                 {:.1} % (median on {:.0} vs off {:.0} msg/s)\n",
        r.metrics_cost_percent, r.accept_per_second_metrics_on, r.accept_per_second_metrics_off
    ));
    out.push_str(&format!(
        "metrics cost in agent CPU    {} (median on {} vs off {} per message)\n",
        r.metrics_cpu_cost_percent
            .map_or("n/a".to_owned(), |p| format!("{p:.1} %")),
        cpu(r.cpu_us_per_message_metrics_on),
        cpu(r.cpu_us_per_message_metrics_off)
    ));
    let latency = format!("accept latency @ {}/s", r.latency_rate_per_second);
    let lines = [
        (latency.as_str(), &r.accept_latency),
        ("  timed from the send", &r.accept_latency_from_send),
        ("  generator lateness", &r.generator_lateness),
        ("pipeline overhead", &r.pipeline_overhead),
    ];
    for (label, quantiles) in lines {
        out.push_str(&format!("{label:<29}{}\n", q(quantiles)));
    }
    out.push_str(&format!(
        "  refused {}, undelivered {}\n",
        r.latency_refused, r.latency_undelivered
    ));
    for (label, quantiles) in [
        ("drop-in: direct to API", &r.drop_in_direct),
        ("drop-in: through herald", &r.drop_in_through_herald),
    ] {
        out.push_str(&format!("{label:<29}{}\n", q(quantiles)));
    }
    out.push_str(&format!(
        "drop-in added latency p50    {:.3} ms\n",
        r.drop_in_added_p50_ms
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let q = Quantiles::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!(q.samples, 100);
        assert_eq!(q.p50_ms, 50.0);
        assert_eq!(q.p99_ms, 99.0);
        assert_eq!(q.max_ms, 100.0);
        assert_eq!(Quantiles::of(vec![]).p99_ms, 0.0);
    }
}
