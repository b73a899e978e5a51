//! Client commands that talk to a running agent over HTTP: `herald status`,
//! `herald send`, `herald dlq list|retry|purge`, `herald breaker reset`,
//! `herald degrade set|clear`.
//!
//! The admin token comes from `--token-file` or `HERALD_ADMIN_TOKEN`; it is
//! sent as a bearer token and never printed.
//!
//! The way to the agent is `--url` (direct), or `--tier` with the
//! kubeconfig flags: the tier's Service through the Kubernetes API
//! server's service proxy. Every command goes through [`call`], which
//! picks the transport; what is sent and printed is the same either way.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use herald::engine::degradation::Level;
use herald::operator::agent_proxy;
use serde_json::{Value, json};

#[derive(Debug, ClapArgs)]
pub struct Conn {
    /// The agent's base URL.
    #[arg(
        long,
        global = true,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// File holding the admin token (else HERALD_ADMIN_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Reach this DeliveryTier's agents through the Kubernetes API
    /// server's service proxy instead of --url (no port-forward needed;
    /// needs `get` on services/proxy). Not for the admin API: the API
    /// server keeps the Authorization header to itself.
    #[arg(long, global = true, value_name = "NAME")]
    tier: Option<String>,
    #[command(flatten)]
    kube: super::rollout::Connection,
}

impl Conn {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            return Ok(Some(t.trim_end().to_owned()));
        }
        Ok(std::env::var("HERALD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()))
    }
}

#[derive(Debug, ClapArgs)]
pub struct SendArgs {
    #[command(flatten)]
    conn: Conn,
    /// Chat id or @username.
    #[arg(long)]
    chat: String,
    /// Message text.
    #[arg(long)]
    text: String,
    /// critical, high, normal or low.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// Message type (for bulkheads and degradation).
    #[arg(long)]
    message_type: Option<String>,
    /// Idempotency key: the same key within the retention is one message.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, ClapArgs)]
pub struct DlqArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-queue dead letters: one (--id), by reason (--reason) or all (--all).
    Retry(Selection),
    /// Delete dead letters: one (--id), by reason (--reason) or all (--all).
    Purge(Selection),
}

#[derive(Debug, ClapArgs)]
struct Selection {
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    all: bool,
}

impl Selection {
    fn body(&self) -> anyhow::Result<Value> {
        Ok(match (&self.id, &self.reason, self.all) {
            (Some(id), None, false) => json!({"id": id}),
            (None, Some(r), false) => json!({"reason": r}),
            (None, None, true) => json!({"all": true}),
            _ => anyhow::bail!("give exactly one of --id, --reason or --all"),
        })
    }
}

#[derive(Debug, ClapArgs)]
pub struct BreakerArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: BreakerCommand,
}

#[derive(Debug, Subcommand)]
enum BreakerCommand {
    /// Close a tier's breaker now.
    Reset { tier: String },
}

#[derive(Debug, ClapArgs)]
pub struct DegradeArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: DegradeCommand,
}

#[derive(Debug, Subcommand)]
enum DegradeCommand {
    /// Pin the degradation level (NORMAL, MINOR, MODERATE, SEVERE, CRITICAL).
    Set {
        /// Checked here, before any network call.
        #[arg(value_parser = parse_level)]
        level: Level,
    },
    /// Let the signals decide again.
    Clear,
}

fn parse_level(text: &str) -> Result<Level, String> {
    text.parse().map_err(|_| {
        let known: Vec<&str> = Level::ALL.iter().map(|l| l.as_str()).collect();
        format!("unknown level {text:?}; one of {}", known.join(", "))
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// How long a command waits for its answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Send one request; print the JSON answer; exit 0 on 2xx, 1 otherwise.
fn call(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    admin: bool,
) -> anyhow::Result<ExitCode> {
    let kube_flags = conn.kube.kubeconfig.is_some()
        || conn.kube.context.is_some()
        || conn.kube.namespace.is_some();
    let (status, text) = match &conn.tier {
        None if kube_flags => {
            anyhow::bail!(
                "--kubeconfig, --context and --namespace choose the cluster for --tier; give --tier too"
            )
        }
        None => {
            let token = if admin { conn.token()? } else { None };
            runtime()?.block_on(direct(&conn.url, method, path, body, token))?
        }
        Some(tier) => {
            let token = if admin { conn.token()? } else { None };
            runtime()?.block_on(proxied(conn, tier, method, path, body, token))?
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
        Err(_) => println!("{text}"),
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Through the API server's service proxy to `tier`'s Service.
async fn proxied(
    conn: &Conn,
    tier: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    admin_token: Option<String>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let (client, namespace) = super::rollout::connect(&conn.kube).await?;
    let body = body
        .map(|b| serde_json::to_vec(&b))
        .transpose()
        .context("encoding the request")?;
    let what = || format!("DeliveryTier {namespace}/{tier} through the API server");
    let send = agent_proxy::send(
        &client,
        &namespace,
        tier,
        method,
        path,
        body,
        admin_token.as_deref(),
    );
    // The same bound as a direct call's.
    let answer = tokio::time::timeout(TIMEOUT, send)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))
        .with_context(what)?
        .with_context(what)?;
    Ok((answer.status, answer.body))
}

/// Straight to the agent at `base`.
async fn direct(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    token: Option<String>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut req = client.request(method, &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    // The error's own causes ("connection refused") stay in the chain
    // the binary prints; the URL is named once, by the context.
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e.without_url()))
        .with_context(|| url.clone())?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Ok((status, text))
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    call(
        &a.conn,
        reqwest::Method::GET,
        "/healthz/details",
        None,
        false,
    )
}

pub fn send(a: SendArgs) -> anyhow::Result<ExitCode> {
    let mut m = json!({"chat_id": a.chat, "text": a.text, "priority": a.priority});
    if let Some(t) = a.message_type {
        m["message_type"] = json!(t);
    }
    if let Some(k) = a.idempotency_key {
        m["idempotency_key"] = json!(k);
    }
    call(
        &a.conn,
        reqwest::Method::POST,
        "/v1/messages",
        Some(m),
        false,
    )
}

pub fn dlq(a: DlqArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        DlqCommand::List { reason, limit } => {
            let mut path = format!("/admin/dlq?limit={limit}");
            if let Some(r) = reason {
                let enc: String = form_urlencoded::byte_serialize(r.as_bytes()).collect();
                path.push_str(&format!("&reason={enc}"));
            }
            call(&a.conn, reqwest::Method::GET, &path, None, true)
        }
        DlqCommand::Retry(s) => call(
            &a.conn,
            reqwest::Method::POST,
            "/admin/dlq/retry",
            Some(s.body()?),
            true,
        ),
        DlqCommand::Purge(s) => call(
            &a.conn,
            reqwest::Method::POST,
            "/admin/dlq/purge",
            Some(s.body()?),
            true,
        ),
    }
}

pub fn breaker(a: BreakerArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        BreakerCommand::Reset { tier } => {
            let enc: String = form_urlencoded::byte_serialize(tier.as_bytes()).collect();
            call(
                &a.conn,
                reqwest::Method::POST,
                &format!("/admin/breaker/{enc}/reset"),
                None,
                true,
            )
        }
    }
}

pub fn degrade(a: DegradeArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        DegradeCommand::Set { level } => call(
            &a.conn,
            reqwest::Method::POST,
            "/admin/degradation",
            Some(json!({"level": level.as_str()})),
            true,
        ),
        DegradeCommand::Clear => call(
            &a.conn,
            reqwest::Method::DELETE,
            "/admin/degradation",
            None,
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(url: &str) -> Conn {
        Conn {
            url: url.to_owned(),
            token_file: None,
            tier: None,
            kube: super::super::rollout::Connection {
                kubeconfig: None,
                context: None,
                namespace: None,
            },
        }
    }

    #[test]
    fn the_admin_token_goes_through_the_proxy_too() {
        // Read before the cluster is reached: an unreadable token file is
        // the error, not the missing cluster.
        let mut c = conn("http://127.0.0.1:1");
        c.tier = Some("bots".to_owned());
        c.token_file = Some("/nonexistent/token".into());
        let e = call(&c, reqwest::Method::GET, "/admin/dlq", None, true).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("reading /nonexistent/token"), "{text}");
    }

    #[test]
    fn kube_flags_without_a_tier_are_refused() {
        let mut c = conn("http://127.0.0.1:1");
        c.kube.namespace = Some("bots".to_owned());
        let e = call(&c, reqwest::Method::GET, "/healthz", None, false).unwrap_err();
        assert!(e.to_string().contains("--tier"), "{e}");
    }

    #[test]
    fn a_network_error_keeps_its_cause() {
        // Port 1 on loopback: nothing listens, the connection is refused.
        let e = call(
            &conn("http://127.0.0.1:1"),
            reqwest::Method::GET,
            "/healthz",
            None,
            false,
        )
        .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with("http://127.0.0.1:1/healthz: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[test]
    fn a_bad_level_is_refused_before_any_call() {
        let e = parse_level("EXTREME").unwrap_err();
        assert!(e.contains("EXTREME") && e.contains("SEVERE"), "{e}");
        assert_eq!(parse_level("severe"), Ok(Level::Severe));
    }
}
