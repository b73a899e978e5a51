//! `herald demo`: the whole data path in about a minute, on loopback, with
//! nothing to install. It starts the strict Telegram sandbox and a
//! standalone agent (Telegram tier with a spool last resort), sends a burst
//! of 1,500 messages over 300 chats with mixed priorities — a few chats have
//! blocked the bot, and the API throws 5xx for a while — shows live
//! progress, and ends with a summary that must read lost = 0 and 429s = 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::run::start;
use crate::sandbox::{FaultsConfig, Sandbox, SandboxConfig};
use crate::store::Store;

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    pub accepted: u64,
    pub delivered_telegram: u64,
    pub delivered_spool: u64,
    pub dead_lettered: BTreeMap<String, u64>,
    pub lost: u64,
    pub rate_limited_429: u64,
    pub rate_limited_by_cause: BTreeMap<String, u64>,
    pub max_per_second: u64,
    pub max_per_chat_per_second: u64,
    pub seconds: f64,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("agent: {0}")]
    Agent(#[from] crate::agent::run::AgentError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("sending the burst: {0}")]
    Http(String),
}

const TOKEN: &str = "777000:demo-token";
const BLOCKED: [i64; 3] = [1013, 1077, 1201];

/// Where the demo's 5xx spell is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spell {
    Ahead,
    Since(Instant),
    Over,
}

fn config(dir: &Path, api: &str) -> String {
    format!(
        "apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: demo}}
spec:
  listen: 127.0.0.1:0
  entryTier: demo-telegram
  storePath: {dir}/queue.redb
  secrets: {{dir: {dir}/secrets}}
  shutdownGrace: 5s
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: demo-telegram}}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {{name: demo-bot, key: token}}
    apiUrl: {api}
  priority: 200
  fallbackTiers: [demo-spool]
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: demo-spool}}
spec:
  channel: spool
  spool: {{path: {dir}/spool}}
  priority: 0
",
        dir = dir.display()
    )
}

/// Run the demo, printing progress to `out`.
pub async fn run(
    out: &mut dyn Write,
    messages: usize,
    chats: usize,
) -> Result<DemoSummary, DemoError> {
    let chats = chats.clamp(1, messages.max(1));
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("secrets/demo-bot"))?;
    std::fs::write(dir.path().join("secrets/demo-bot/token"), TOKEN)?;
    let sandbox = Sandbox::start(SandboxConfig {
        faults: FaultsConfig {
            blocked_chats: BLOCKED.to_vec(),
            ..FaultsConfig::default()
        },
        ..SandboxConfig::default()
    })
    .await?;
    let path = dir.path().join("demo.yaml");
    std::fs::write(&path, config(dir.path(), &sandbox.base_url()))?;
    let agent = start(path, &|_| None).await?;
    let url = format!("http://{}", agent.addr);
    writeln!(
        out,
        "herald demo: sandbox at {}, agent at {url}",
        sandbox.base_url()
    )?;
    writeln!(
        out,
        "sending {messages} messages over {chats} chats (chats {BLOCKED:?} blocked the bot; a 5xx spell comes once a third is delivered)"
    )?;
    let client = reqwest::Client::new();
    let priorities = ["critical", "high", "normal", "normal", "low"];
    let burst: Vec<Value> = (0..messages)
        .map(|i| {
            json!({
                "chat_id": 1000 + (i % chats) as i64,
                "text": format!("demo message {i}"),
                "priority": priorities[i % priorities.len()],
                "message_type": if i % 10 == 0 { "alert" } else { "notice" },
            })
        })
        .collect();
    let started = Instant::now();
    let mut accepted = 0u64;
    for batch in burst.chunks(500) {
        let resp = client
            .post(format!("{url}/v1/messages"))
            .json(&json!({"messages": batch}))
            .send()
            .await
            .map_err(|e| DemoError::Http(e.without_url().to_string()))?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| DemoError::Http(e.to_string()))?;
        accepted += body["accepted"]
            .as_array()
            .map(|a| a.len() as u64)
            .unwrap_or(0);
    }
    let mut spell = Spell::Ahead;
    let deadline = started + Duration::from_secs(180);
    let mut next_line = started;
    loop {
        // Polled more often than a line is printed, so that the spell starts
        // with two thirds still queued even when the burst is small.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        if spell == Spell::Ahead && sandbox.counters().delivered * 3 >= accepted {
            sandbox.set_faults(FaultsConfig {
                blocked_chats: BLOCKED.to_vec(),
                error_rate: 0.3,
                seed: 5,
                ..FaultsConfig::default()
            })?;
            spell = Spell::Since(Instant::now());
            writeln!(out, "-- 5xx spell: 30 % of API calls fail for 5 s --")?;
        }
        if let Spell::Since(at) = spell
            && at.elapsed() >= Duration::from_secs(5)
        {
            sandbox.set_faults(FaultsConfig {
                blocked_chats: BLOCKED.to_vec(),
                ..FaultsConfig::default()
            })?;
            spell = Spell::Over;
            writeln!(out, "-- 5xx spell over --")?;
        }
        let now = Instant::now();
        if now < next_line && now <= deadline {
            continue;
        }
        next_line += Duration::from_secs(1);
        let c = sandbox.counters();
        let stats = agent.state.store.stats().await.ok();
        let open = stats.as_ref().map(|s| s.open_total()).unwrap_or(0);
        let by_priority = stats
            .as_ref()
            .map(|s| s.pending_by_priority)
            .unwrap_or_default();
        let breaker = breaker_state(&client, &url).await;
        writeln!(
            out,
            "{:>4.0}s  delivered {:>5}  queued c/h/n/l {:>4}/{:>4}/{:>4}/{:>4}  429s {}  5xx {}  breaker {}",
            elapsed.as_secs_f64(),
            c.delivered,
            by_priority[0],
            by_priority[1],
            by_priority[2],
            by_priority[3],
            c.rejected_429,
            c.errors_5xx,
            breaker
        )?;
        // The spell is part of the show: a drained queue ends the demo only
        // once the spell is not under way.
        let spell_running = matches!(spell, Spell::Since(_));
        if (open == 0 && !spell_running) || Instant::now() > deadline {
            break;
        }
    }
    let c = sandbox.counters();
    let stats = agent.state.store.stats().await.ok();
    let dead = agent
        .state
        .store
        .list_dead(crate::store::DeadFilter::default())
        .await
        .unwrap_or_default();
    let mut reasons = BTreeMap::new();
    for d in &dead {
        *reasons
            .entry(d.dead_reason.clone().unwrap_or_default())
            .or_insert(0u64) += 1;
    }
    let spooled = std::fs::read_dir(dir.path().join("spool"))
        .map(|r| {
            r.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count() as u64
        })
        .unwrap_or(0);
    let open = stats.map(|s| s.open_total()).unwrap_or(0);
    let summary = DemoSummary {
        accepted,
        delivered_telegram: c.delivered,
        delivered_spool: spooled,
        lost: accepted
            .saturating_sub(c.delivered.min(accepted) + spooled + dead.len() as u64 + open),
        dead_lettered: reasons,
        rate_limited_429: c.rejected_429,
        rate_limited_by_cause: c.rejected_429_by_cause.clone(),
        max_per_second: c.max_per_bot_per_1s,
        max_per_chat_per_second: c.max_per_chat_per_1s,
        seconds: started.elapsed().as_secs_f64(),
    };
    agent.shutdown().await?;
    sandbox.shutdown().await?;
    print_summary(out, &summary, open)?;
    Ok(summary)
}

async fn breaker_state(client: &reqwest::Client, url: &str) -> String {
    let Ok(r) = client.get(format!("{url}/healthz/details")).send().await else {
        return "?".into();
    };
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["dispatcher"]["tiers"][0]["breaker"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

fn print_summary(out: &mut dyn Write, s: &DemoSummary, still_queued: u64) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "summary after {:.0} s", s.seconds)?;
    writeln!(out, "  accepted                {:>6}", s.accepted)?;
    writeln!(out, "  delivered (telegram)    {:>6}", s.delivered_telegram)?;
    writeln!(out, "  delivered (spool)       {:>6}", s.delivered_spool)?;
    let dead: u64 = s.dead_lettered.values().sum();
    writeln!(out, "  dead-lettered           {:>6}", dead)?;
    for (reason, n) in &s.dead_lettered {
        writeln!(out, "      {n:>4}  {reason}")?;
    }
    if still_queued > 0 {
        writeln!(out, "  still queued            {:>6}", still_queued)?;
    }
    writeln!(out, "  lost                    {:>6}", s.lost)?;
    writeln!(out, "  429s from Telegram      {:>6}", s.rate_limited_429)?;
    for (cause, n) in &s.rate_limited_by_cause {
        writeln!(out, "      {n:>4}  {cause}")?;
    }
    writeln!(
        out,
        "  max sends in any 1 s    {:>6}  (limit 30)",
        s.max_per_second
    )?;
    writeln!(
        out,
        "  max per chat in 1 s     {:>6}  (limit 1)",
        s.max_per_chat_per_second
    )?;
    Ok(())
}
