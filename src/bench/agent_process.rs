//! The agent under test, as its own process: `herald run -f <config>` from
//! the running executable, so its CPU and memory are its own and its idle
//! RSS can be read.
//!
//! Owns: the bench config (one Telegram tier at the null API, with limits
//! far above what a loopback run reaches, so the bench measures herald's own
//! cost and not Telegram's pacing, or with Telegram's own limits for the
//! backlog run), the child's life, and reading its RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// The bot token of the bench tier; only the null API ever sees it.
pub const TOKEN: &str = "100000:bench-token";

/// The rate limits the bench tier runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limits {
    /// Out of a loopback run's reach: the agent's own cost is measured.
    Unbounded,
    /// Telegram's published limits with herald's default guard: 30 per
    /// second per bot, 1 per second per chat, 20 per minute per group.
    Telegram,
}

impl Limits {
    fn policy(self) -> &'static str {
        match self {
            Limits::Unbounded => {
                "  global: {rate: 1000000, period: 1s, burst: 1000}
  perChat: {rate: 1000000, period: 1s, burst: 1000}
  perGroup: {rate: 1000000, period: 1s, burst: 1000}
  pacing: {guardPercent: 0, chatGuardPercent: 0}"
            }
            Limits::Telegram => {
                "  global: {rate: 30, period: 1s, burst: 1}
  perChat: {rate: 1, period: 1s, burst: 1}
  perGroup: {rate: 20, period: 1m, burst: 1}"
            }
        }
    }
}

/// A running agent process, killed on drop.
pub struct AgentProcess {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts an agent on a fresh store and waits until `/readyz` answers 200.
    pub async fn start(
        exe: &Path,
        api_url: &str,
        metrics: bool,
        limits: Limits,
        client: &reqwest::Client,
    ) -> Result<AgentProcess, BenchError> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = write_config(dir.path(), port, api_url, metrics, limits)?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let child = Command::new(exe)
            .arg("run")
            .arg("-f")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        let agent = AgentProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        agent.wait_ready(client).await?;
        Ok(agent)
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = client
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(BenchError::Agent(format!(
            "the agent did not become ready within 30 s; its last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (Linux `/proc`); `None` elsewhere.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid())
    }

    /// CPU time the agent has used so far, user and system, in seconds
    /// (Linux `/proc`); `None` elsewhere.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.pid())
    }
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are
    // counted from its closing parenthesis. utime and stime are fields 14
    // and 15, i.e. the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

/// `getconf CLK_TCK`; 100 (what Linux uses on every common architecture)
/// when it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_config(
    dir: &Path,
    port: u16,
    api_url: &str,
    metrics: bool,
    limits: Limits,
) -> std::io::Result<PathBuf> {
    let secrets = dir.join("secrets/bench-bot");
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(secrets.join("token"), TOKEN)?;
    let text = format!(
        "apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: bench}}
spec:
  listen: 127.0.0.1:{port}
  entryTier: bench
  storePath: {dir}/queue.redb
  secrets: {{dir: {dir}/secrets}}
  botApi: {{waitForDelivery: 10s}}
  shutdownGrace: 2s
  metrics: {{enabled: {metrics}}}
---
apiVersion: herald.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: bench-limits}}
spec:
{policy}
---
# A backlog is what a throughput run builds on purpose; shedding it would
# measure the degrader, not ingest.
apiVersion: herald.dev/v1alpha1
kind: DegradationProfile
metadata: {{name: never}}
spec:
  levels:
    - level: MINOR
      entry: {{queueDepth: 1000000000}}
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: bench}}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {{name: bench-bot, key: token}}
    apiUrl: {api_url}
  rateLimitPolicyRef: {{name: bench-limits}}
  degradationProfileRef: {{name: never}}
  priority: 100
",
        dir = dir.display(),
        policy = limits.policy(),
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_configs_are_valid_agent_configs() {
        for limits in [Limits::Unbounded, Limits::Telegram] {
            let dir = tempfile::tempdir().unwrap();
            let path = write_config(dir.path(), 1, "http://127.0.0.1:2", false, limits).unwrap();
            let config = crate::agent::config::AgentConfig::load(&path, &|_| None).unwrap();
            assert!(!config.agent.metrics.enabled);
            assert_eq!(config.entry_tier, "bench");
        }
    }

    #[test]
    fn reads_its_own_rss() {
        assert!(rss_of(std::process::id()).is_some_and(|b| b > 0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_its_own_cpu_time_as_it_grows() {
        let before = cpu_seconds_of(std::process::id()).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_seconds_of(std::process::id()).unwrap();
        assert!(after - before >= 0.1, "{before} → {after}");
    }
}
