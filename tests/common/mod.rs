//! Real-process harness for agent tests: the `herald` binary as sandbox and
//! agent on loopback ports, temp dirs, and bounded polling.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "123456:test-token-SECRET";
pub const ADMIN: &str = "admin-SECRET-token";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

/// A child process killed on drop, with its stderr captured.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn capture(mut child: Child) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    (Proc { child, log }, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, marker: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && line.contains(marker)
        {
            return Some(line);
        }
    }
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `herald sandbox` on `port` with an optional YAML config.
pub fn sandbox(port: u16, config: Option<&str>) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args(["sandbox", "--port", &port.to_string()]);
    let dir = tempfile::tempdir().unwrap().keep();
    if let Some(c) = config {
        let p = dir.join("sandbox.yaml");
        std::fs::write(&p, c).unwrap();
        cmd.args(["-f", p.to_str().unwrap()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (p, rx) = capture(child);
    assert!(
        wait_line(&rx, "counters at").is_some(),
        "sandbox did not start: {}",
        p.log()
    );
    p
}

pub struct Agent {
    pub proc: Proc,
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// Start `herald run` with `config` (written to DIR/config.yaml); the token
/// and admin token come from the environment.
pub fn agent_in(dir: &Path, config: &str) -> Agent {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    start_agent(dir, &path)
}

pub fn start_agent(dir: &Path, path: &Path) -> Agent {
    start_agent_env(dir, path, &[])
}

/// As [`start_agent`], with extra environment variables.
pub fn start_agent_env(dir: &Path, path: &Path, env: &[(&str, &str)]) -> Agent {
    let child = Command::new(bin())
        .args(["run", "-f", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .env("HERALD_SECRET_BOT_TOKEN", TOKEN)
        .env("HERALD_SECRET_ADMIN_TOKEN", ADMIN)
        .env("HERALD_SECRET_HOOK_KEY", "hmac-SECRET-key")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (proc, rx) = capture(child);
    let line = wait_line(&rx, "herald agent on http://")
        .unwrap_or_else(|| panic!("agent did not start: {}", proc.log()));
    let url = line
        .trim()
        .trim_start_matches("herald agent on ")
        .to_owned();
    let agent = Agent {
        proc,
        url,
        dir: dir.to_owned(),
        config: path.to_owned(),
    };
    assert!(
        eventually(Duration::from_secs(20), || get(&format!(
            "{}/readyz",
            agent.url
        ))
        .0 == 200),
        "agent never became ready"
    );
    agent
}

/// A config with one telegram tier pointing at the sandbox on `port`,
/// plus `extra` documents and tier fields.
pub fn config(dir: &Path, port: u16, tier_extra: &str, extra_docs: &str) -> String {
    format!(
        "apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: test}}
spec:
  listen: 127.0.0.1:0
  entryTier: tg
  storePath: {store}
  adminTokenRef: {{name: admin, key: token}}
  secrets: {{dir: {dir}/secrets, envPrefix: HERALD_SECRET_}}
  botApi: {{waitForDelivery: 10s}}
  shutdownGrace: 5s
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: tg}}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {{name: bot, key: token}}
    apiUrl: http://127.0.0.1:{port}
  priority: 200
{tier_extra}
{extra_docs}",
        store = dir.join("queue.redb").display(),
        dir = dir.display(),
    )
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn get(url: &str) -> (u16, String) {
    match client().get(url).send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub fn counters(port: u16) -> Value {
    let (_, text) = get(&format!("http://127.0.0.1:{port}/sandbox/counters"));
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Poll `f` every 100 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Accept `n` messages over `chats` chats in batches; returns their ids.
pub fn send_many(url: &str, n: usize, chats: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let msgs: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"chat_id": 1000 + (i % chats) as i64, "text": format!("m{i}")}))
        .collect();
    for batch in msgs.chunks(500) {
        let (status, body) = post_json(
            &format!("{url}/v1/messages"),
            &serde_json::json!({"messages": batch}),
        );
        assert_eq!(status, 202, "{body}");
        for a in body["accepted"].as_array().unwrap() {
            ids.push(a["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

pub fn state_of(url: &str, id: &str) -> String {
    let (_, text) = get(&format!("{url}/v1/messages/{id}"));
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Send SIGTERM (via the `kill` command) and wait for the exit status.
pub fn sigterm(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = p.child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// For each refusal: the deliveries of the second before it, as offsets
/// from the refusal, so the CI log shows whether an extra send squeezed in
/// (a full, evenly paced window) or the pacing itself bunched.
pub fn print_refusal_windows(counters: &Value, messages: &str) {
    let log: Value = serde_json::from_str(messages).unwrap_or(Value::Null);
    let delivered: Vec<(u64, &str)> = log["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| Some((m["arrival_ns"].as_u64()?, m["text"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    for r in counters["refusals"].as_array().into_iter().flatten() {
        let at = r["arrival_ns"].as_u64().unwrap_or(0);
        let window: Vec<String> = delivered
            .iter()
            .filter(|(t, _)| *t <= at + 100_000_000 && *t + 1_000_000_000 > at)
            .map(|(t, text)| format!("{:+.1}ms {text}", (*t as f64 - at as f64) / 1e6))
            .collect();
        eprintln!(
            "refused {} ({}) at {:.3}s; deliveries from 1 s before to 100 ms after: {}",
            r["text"],
            r["cause"],
            at as f64 / 1e9,
            window.join(", ")
        );
    }
}
