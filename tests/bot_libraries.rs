//! The bot libraries users already have, unmodified, against the drop-in:
//! teloxide (Rust), python-telegram-bot and aiogram (from PyPI, in a venv
//! this test makes from `tests/bot_libraries/requirements.txt`). Each sends
//! a burst of 300 messages over 30 chats at once through `herald run` to the
//! sandbox, with the library's default timeouts, in the mode
//! docs/migrating.md recommends for it. Every call returns without a
//! client-side error, every message arrives exactly once, and the sandbox
//! refuses nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One library at a time: three agents, three sandboxes and three bursts
/// at once on a 2-core machine delayed sends by more than the per-chat
/// guard's 50 ms (one per-chat 429 in one run), which says something about
/// the test machine, not about the libraries.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const BURST: usize = 300;
const CHATS: usize = 30;
const FIRST_CHAT: i64 = 7000;

/// The Agent's `botApi` for a library, as docs/migrating.md gives it.
fn agent_with(dir: &Path, sandbox_port: u16, bot_api: &str) -> Agent {
    let config = config(dir, sandbox_port, "", "").replace(
        "botApi: {waitForDelivery: 10s}",
        &format!("botApi: {bot_api}"),
    );
    agent_in(dir, &config)
}

/// Texts as the sandbox received them, with how often each arrived.
fn arrivals(sandbox_port: u16) -> BTreeMap<String, usize> {
    let (_, text) = get(&format!(
        "http://127.0.0.1:{sandbox_port}/sandbox/messages?since=0"
    ));
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut seen = BTreeMap::new();
    for m in v["messages"].as_array().into_iter().flatten() {
        if let Some(t) = m["text"].as_str() {
            *seen.entry(t.to_owned()).or_default() += 1;
        }
    }
    seen
}

/// Waits for the whole burst, then checks each text arrived once and the
/// sandbox refused nothing.
fn check_burst_arrived_once(library: &str, sandbox_port: u16, agent: &Agent) {
    let complete = eventually(Duration::from_secs(90), || {
        arrivals(sandbox_port).len() >= BURST
    });
    let seen = arrivals(sandbox_port);
    assert!(
        complete,
        "{library}: {} of {BURST} texts arrived; agent log:\n{}",
        seen.len(),
        agent.proc.log()
    );
    for i in 0..BURST {
        let text = format!("{library}-{i:04}");
        assert_eq!(
            seen.get(&text),
            Some(&1),
            "{library}: {text} arrived {:?} times",
            seen.get(&text)
        );
    }
    let c = counters(sandbox_port);
    if c["rejected_429"] != 0 {
        let (_, messages) = get(&format!(
            "http://127.0.0.1:{sandbox_port}/sandbox/messages?since=0"
        ));
        print_refusal_windows(&c, &messages);
    }
    assert_eq!(c["rejected_429"], 0, "{library}: the sandbox refused: {c}");
}

#[test]
fn teloxide_waits_for_each_delivery() {
    use teloxide::prelude::*;

    let _turn = one_at_a_time();
    let port = free_port();
    let _sandbox = sandbox(port, None);
    let dir = tempfile::tempdir().unwrap();
    // teloxide's default client gives up after 17 s.
    let agent = agent_with(dir.path(), port, "{waitForDelivery: 12s, answer: message}");
    let url = reqwest::Url::parse(&agent.url).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let errors: Vec<String> = runtime.block_on(async move {
        let bot = Bot::new(TOKEN).set_api_url(url);
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..BURST {
            let bot = bot.clone();
            let chat = ChatId(FIRST_CHAT + (i % CHATS) as i64);
            calls.spawn(async move { bot.send_message(chat, format!("teloxide-{i:04}")).await });
        }
        let mut errors = Vec::new();
        while let Some(r) = calls.join_next().await {
            match r {
                Ok(Ok(_message)) => {}
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    });
    assert!(
        errors.is_empty(),
        "teloxide: {} calls failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    check_burst_arrived_once("teloxide", port, &agent);
}

#[test]
fn python_telegram_bot_takes_accepted_messages() {
    // python-telegram-bot reads for 5 s at most: answer at acceptance.
    python_library("ptb", "{asyncAccept: true, answer: message}");
}

#[test]
fn aiogram_waits_for_each_delivery() {
    // aiogram's session waits 60 s, longer than herald's default wait.
    python_library("aiogram", "{answer: message}");
}

fn python_library(library: &str, bot_api: &str) {
    let python = venv_python();
    let _turn = one_at_a_time();
    let port = free_port();
    let _sandbox = sandbox(port, None);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with(dir.path(), port, bot_api);
    let out = Command::new(&python)
        .arg(script("send_burst.py"))
        .args([
            library,
            &agent.url,
            TOKEN,
            &BURST.to_string(),
            &CHATS.to_string(),
            &FIRST_CHAT.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{library}: {stdout}");
    assert!(
        out.status.success(),
        "{library}: calls failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_burst_arrived_once(library, port, &agent);
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bot_libraries")
        .join(name)
}

/// The venv's python, made on first use (or when the requirements changed)
/// with `python3 -m venv` and pip from PyPI. Fails, never skips, when that
/// cannot be done.
fn venv_python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _once = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let requirements = script("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bot-libraries-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    assert!(
        matches!(made, Ok(s) if s.success()),
        "python3 -m venv failed ({made:?}): these tests need python3 with venv (Debian: python3-venv)"
    );
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status();
    assert!(
        matches!(installed, Ok(s) if s.success()),
        "pip could not install {} ({installed:?})",
        requirements.display()
    );
    std::fs::write(&stamp, wanted).unwrap();
    python
}
