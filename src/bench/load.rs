//! Load generators of `herald bench`: closed-loop batch producers for
//! throughput, an open-loop single-message producer at a fixed rate for
//! latency (timed from each request's *scheduled* start, so a stall is
//! charged to every request it delays), and paired drop-in calls.
//!
//! Owns: issuing requests and collecting raw samples. Leaves to others:
//! quantiles and the report (`super`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::BenchError;
use super::null_api::Arrivals;

/// Sequence numbers of bench messages, unique across one bench run.
#[derive(Default)]
pub struct Seq(AtomicU64);

impl Seq {
    fn take(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed)
    }
}

/// Chats the throughput and latency runs spread their messages over.
pub const CHATS: u64 = 10_000;

/// Bench message `seq`, to one of `chats` private chats.
fn message_to(seq: u64, chats: u64) -> Value {
    let chat = 1_000_000 + i64::try_from(seq % chats.max(1)).unwrap_or(0);
    json!({"chat_id": chat, "text": format!("bench:{seq}")})
}

fn message(seq: u64) -> Value {
    message_to(seq, CHATS)
}

/// What a throughput run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    pub messages: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Requests the agent refused (non-202); they are not counted as accepted.
    pub refused_requests: u64,
}

/// `concurrency` producers post batches of `batch` until `total` messages are
/// accepted, spread over `chats` chats.
pub async fn accept_throughput(
    client: &reqwest::Client,
    url: &str,
    seq: &Arc<Seq>,
    total: u64,
    (concurrency, batch): (usize, u64),
    chats: u64,
) -> Result<Throughput, BenchError> {
    let claimed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, seq) = (client.clone(), format!("{url}/v1/messages"), seq.clone());
        let (claimed, refused) = (claimed.clone(), refused.clone());
        tasks.spawn(async move {
            loop {
                let first = claimed.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return Ok::<(), BenchError>(());
                }
                let n = batch.min(total - first);
                let base = seq.take(n);
                let body = json!({"messages": (base..base + n).map(|s| message_to(s, chats)).collect::<Vec<_>>()});
                let mut last_refusal = None;
                // A refusal (degradation, draining) is retried after a pause,
                // bounded so a broken agent ends the bench.
                for _ in 0..50 {
                    let r = client.post(&url).json(&body).send().await?;
                    let status = r.status().as_u16();
                    if status == 202 {
                        last_refusal = None;
                        break;
                    }
                    last_refusal = Some(format!(
                        "HTTP {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Some(why) = last_refusal {
                    return Err(BenchError::Agent(format!(
                        "a batch was refused 50 times; last: {why}"
                    )));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Agent(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        messages: total,
        seconds,
        per_second: total as f64 / seconds,
        refused_requests: refused.load(Ordering::Relaxed),
    })
}

/// Samples of an open-loop run.
pub struct OpenLoop {
    /// Scheduled start → 202, per accepted request.
    pub accept: Vec<Duration>,
    /// The request actually leaving → 202, per accepted request: without
    /// the generator's own lateness (tokio's timer fires on millisecond
    /// ticks, and the generator shares the cores with the agent). Each
    /// request is its own task, so a slow agent does not hold back later
    /// requests, and this does not hide stalls the way a closed loop would.
    pub accept_from_send: Vec<Duration>,
    /// Scheduled start → the request leaving.
    pub lateness: Vec<Duration>,
    /// 202 received → the null API saw the message, per delivered message.
    pub pipeline: Vec<Duration>,
    /// Messages not seen by the null API before the wait ended.
    pub undelivered: u64,
    pub refused: u64,
}

/// Single-message requests at `rate` per second for `duration`.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    seq: &Arc<Seq>,
    arrivals: &Arc<Arrivals>,
    rate: u64,
    duration: Duration,
) -> Result<OpenLoop, BenchError> {
    let count = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..count {
        let due = start + interval.mul_f64(k as f64);
        let (client, url) = (client.clone(), format!("{url}/v1/messages"));
        let s = seq.take(1);
        tasks.spawn(async move {
            tokio::time::sleep_until(due).await;
            let sent = Instant::now();
            let r = client.post(&url).json(&message(s)).send().await;
            let done = Instant::now();
            let ok = matches!(&r, Ok(r) if r.status().as_u16() == 202);
            (s, ok.then_some((due.into_std(), sent, done)))
        });
    }
    let mut accepted = Vec::with_capacity(count as usize);
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| BenchError::Agent(e.to_string()))? {
            (s, Some(times)) => accepted.push((s, times)),
            (_, None) => refused += 1,
        }
    }
    // Give the pipeline a bounded moment to deliver the tail.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && accepted.iter().any(|(s, _)| arrivals.at(*s).is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = OpenLoop {
        accept: Vec::with_capacity(accepted.len()),
        accept_from_send: Vec::with_capacity(accepted.len()),
        lateness: Vec::with_capacity(accepted.len()),
        pipeline: Vec::with_capacity(accepted.len()),
        undelivered: 0,
        refused,
    };
    for (s, (due, sent, at)) in accepted {
        out.accept.push(at - due);
        out.accept_from_send.push(at - sent);
        out.lateness.push(sent.saturating_duration_since(due));
        match arrivals.at(s) {
            // A message can reach the sink before its 202 reaches the
            // client; that is zero time held by herald after acceptance.
            Some(arrived) => out.pipeline.push(arrived.saturating_duration_since(at)),
            None => out.undelivered += 1,
        }
    }
    Ok(out)
}

/// Paired samples of one Bot API call made straight to the null API and the
/// same call through herald's drop-in endpoint (which waits for delivery).
pub struct DropIn {
    pub direct: Vec<Duration>,
    pub through_herald: Vec<Duration>,
}

pub async fn drop_in(
    client: &reqwest::Client,
    agent_url: &str,
    api_url: &str,
    token: &str,
    seq: &Arc<Seq>,
    calls: u64,
) -> Result<DropIn, BenchError> {
    let mut out = DropIn {
        direct: Vec::with_capacity(calls as usize),
        through_herald: Vec::with_capacity(calls as usize),
    };
    for _ in 0..calls {
        // Alternate the two paths so drift in machine load hits both alike.
        for (base, samples) in [
            (api_url, &mut out.direct),
            (agent_url, &mut out.through_herald),
        ] {
            let body = message(seq.take(1));
            let started = Instant::now();
            let r = client
                .post(format!("{base}/bot{token}/sendMessage"))
                .json(&body)
                .send()
                .await?;
            let ok = r.status().is_success();
            let answer: Value = r.json().await?;
            if !ok || answer.get("ok") != Some(&Value::Bool(true)) {
                return Err(BenchError::Agent(format!(
                    "sendMessage through {} did not succeed",
                    if base == api_url {
                        "the null API"
                    } else {
                        "herald"
                    }
                )));
            }
            samples.push(started.elapsed());
        }
    }
    Ok(out)
}
