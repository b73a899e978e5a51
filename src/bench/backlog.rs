//! `herald bench --backlog N`: what a large backlog costs the agent.
//!
//! It starts an agent under Telegram's limits (30 per second per bot, 1 per
//! second per chat) against the null API, accepts N messages over many
//! chats as fast as it takes them, so nearly all of them wait, and reports
//! the agent's resident memory per queued message and the rate at which it
//! keeps sending with that backlog held, against the rate its guarded limit
//! allows.
//!
//! Owns: the backlog run and its report. Leaves to others: the agent
//! process and its config (`agent_process`), the load (`load`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::agent_process::{AgentProcess, Limits};
use super::{BenchError, load, mib, null_api};

/// The bot-wide rate the Telegram limits allow once herald's default 1 %
/// guard is taken off: what a saturated agent should send at.
const GUARDED_RATE_PER_SECOND: f64 = 30.0 * 0.99;

/// How big a backlog and how long to watch it drain.
#[derive(Clone, Debug)]
pub struct BacklogPlan {
    pub exe: std::path::PathBuf,
    pub messages: u64,
    pub chats: u64,
    /// How long the send rate is measured, once the backlog is in.
    pub window: Duration,
}

/// What one backlog run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BacklogReport {
    pub messages: u64,
    pub chats: u64,
    pub accept_seconds: f64,
    pub accept_per_second: f64,
    pub idle_rss_mib: Option<f64>,
    /// Resident memory once every message is in.
    pub rss_with_backlog_mib: Option<f64>,
    /// Messages not yet sent when that memory was read.
    pub queued: u64,
    /// (RSS with the backlog − idle RSS) / queued.
    pub bytes_per_queued_message: Option<f64>,
    pub window_seconds: f64,
    pub sent_in_window: u64,
    pub sends_per_second: f64,
    /// Sends per second against the guarded limit (29.7/s).
    pub utilization: f64,
    pub rss_after_window_mib: Option<f64>,
}

/// Runs the plan; `progress` gets one line per phase.
pub async fn run_backlog(
    plan: &BacklogPlan,
    progress: &mut dyn FnMut(&str),
) -> Result<BacklogReport, BenchError> {
    let api = null_api::NullApi::start().await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    progress("starting an agent under Telegram's limits against the null API");
    let agent =
        AgentProcess::start(&plan.exe, &api.base_url(), true, Limits::Telegram, &client).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = agent.rss_bytes();

    progress(&format!(
        "accepting {} messages over {} chats",
        plan.messages, plan.chats
    ));
    let seq = Arc::new(load::Seq::default());
    let accepted = load::accept_throughput(
        &client,
        &agent.url,
        &seq,
        plan.messages,
        (8, 1000),
        plan.chats,
    )
    .await?;
    // Accepted messages reach the dispatcher through a channel; give it a
    // moment to hold all of them before reading the memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_backlog = agent.rss_bytes();
    let queued = plan
        .messages
        .saturating_sub(api.arrivals.count.load(Ordering::Relaxed));

    progress(&format!("measuring the send rate for {:?}", plan.window));
    let (sent, seconds) = sends_over(&api.arrivals, plan.window).await;
    let sends_per_second = sent as f64 / seconds;
    Ok(BacklogReport {
        messages: plan.messages,
        chats: plan.chats,
        accept_seconds: accepted.seconds,
        accept_per_second: accepted.per_second,
        idle_rss_mib: idle.map(mib),
        rss_with_backlog_mib: with_backlog.map(mib),
        queued,
        bytes_per_queued_message: idle
            .zip(with_backlog)
            .filter(|_| queued > 0)
            .map(|(i, b)| b.saturating_sub(i) as f64 / queued as f64),
        window_seconds: seconds,
        sent_in_window: sent,
        sends_per_second,
        utilization: sends_per_second / GUARDED_RATE_PER_SECOND,
        rss_after_window_mib: agent.rss_bytes().map(mib),
    })
}

/// Arrivals at the null API over `window`, and the seconds it really took.
async fn sends_over(arrivals: &null_api::Arrivals, window: Duration) -> (u64, f64) {
    let before = arrivals.count.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let sent = arrivals.count.load(Ordering::Relaxed) - before;
    (sent, started.elapsed().as_secs_f64())
}

/// The report as a table for people.
pub fn render_backlog(r: &BacklogReport) -> String {
    let rss = |v: Option<f64>| v.map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"));
    let per_message = r
        .bytes_per_queued_message
        .map_or("n/a".to_owned(), |b| format!("{b:.0} B"));
    format!(
        "backlog                      {} messages over {} chats, accepted in {:.1} s ({:.0} msg/s)\n\
         idle RSS                     {}\n\
         RSS with the backlog         {} ({} queued; {} per queued message)\n\
         send rate with the backlog   {:.2}/s over {:.1} s ({} sent; {:.1} % of the guarded 29.7/s)\n\
         RSS after the window         {}\n",
        r.messages,
        r.chats,
        r.accept_seconds,
        r.accept_per_second,
        rss(r.idle_rss_mib),
        rss(r.rss_with_backlog_mib),
        r.queued,
        per_message,
        r.sends_per_second,
        r.window_seconds,
        r.sent_in_window,
        r.utilization * 100.0,
        rss(r.rss_after_window_mib),
    )
}
