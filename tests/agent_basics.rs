//! The agent as a real process: bad input is refused naming the field with
//! nothing enqueued, secrets never leak, the admin API needs its token,
//! SIGTERM drains and exits 0, and a config reload takes effect.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[test]
fn bad_input_is_refused_naming_the_field_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let a = agent_in(dir.path(), &config(dir.path(), port, "", ""));
    let url = format!("{}/v1/messages", a.url);
    let long = "x".repeat(4097);
    let big = "y".repeat(2 * 1024 * 1024);
    let cases: Vec<(Value, &str, u16)> = vec![
        (json!({"chat_id": 1, "text": ""}), "text", 400),
        (json!({"chat_id": 1, "text": "   "}), "text", 400),
        (json!({"chat_id": 1, "text": long}), "text", 400),
        (json!({"text": "hi"}), "chat_id", 400),
        (
            json!({"chat_id": "not a chat", "text": "hi"}),
            "chat_id",
            400,
        ),
        (json!({"chat_id": 0, "text": "hi"}), "chat_id", 400),
        (json!({"chat_id": true, "text": "hi"}), "chat_id", 400),
        (json!({"chat_id": 1}), "text", 400),
        (
            json!({"chat_id": 1, "text": "hi", "priority": "urgent"}),
            "priority",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "not_before": "tomorrow"}),
            "not_before",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "not_before": 5}),
            "not_before",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "message_type": "Has Spaces"}),
            "message_type",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "callback_url": "file:///etc/passwd"}),
            "callback_url",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "tier": "nope"}),
            "tier",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "parse_mode": "LaTeX"}),
            "parse_mode",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "surprise": 1}),
            "surprise",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "photo": "https://x/y.png"}),
            "photo",
            400,
        ),
        (json!({"chat_id": 1, "photo": ""}), "photo", 400),
        (
            json!({"chat_id": 1, "photo": "https://x", "caption": "c".repeat(1100)}),
            "caption",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "idempotency_key": ""}),
            "idempotency_key",
            400,
        ),
        (
            json!({"chat_id": 1, "text": "hi", "correlation_id": "a\u{0007}b"}),
            "correlation_id",
            400,
        ),
        (json!({"messages": []}), "messages", 400),
        (
            json!({"messages": [{"chat_id": 1, "text": "ok"}, {"chat_id": 2}]}),
            "messages[1].text",
            400,
        ),
        (json!({"messages": "all"}), "messages", 400),
        (
            json!({"messages": [{"chat_id": 1, "text": "ok"}], "extra": 1}),
            "extra",
            400,
        ),
        (json!([1, 2, 3]), "", 400),
        (json!({"chat_id": 1, "text": big}), "", 413),
    ];
    assert!(cases.len() >= 25);
    for (body, field, status) in &cases {
        let r = client().post(&url).json(body).send().unwrap();
        let code = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        assert_eq!(code, *status, "{body:.80}: {v}");
        assert_eq!(v["error"]["field"], *field, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // Malformed JSON, wrong content type, no body, path traversal in an id.
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"chat_id\": 1,")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "malformed_json");
    let r = client()
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (code, _) = get(&format!("{}/v1/messages/..%2F..%2Fetc%2Fpasswd", a.url));
    assert_eq!(code, 400);
    // The Bot API endpoint refuses bad calls the Telegram way, naming the field.
    let (code, text) = get(&format!("{}/bot{TOKEN}/sendMessage?text=hi", a.url));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("chat_id"), "{text}");
    let (code, text) = get(&format!(
        "{}/bot999:wrong/sendMessage?chat_id=1&text=hi",
        a.url
    ));
    assert_eq!(code, 401, "{text}");
    // Nothing was queued, and the agent still serves.
    let (_, details) = get(&format!("{}/healthz/details", a.url));
    let d: Value = serde_json::from_str(&details).unwrap();
    assert_eq!(d["dispatcher"]["held"], 0, "{d}");
    let (status, body) = post_json(&url, &json!({"chat_id": 7, "text": "still here"}));
    assert_eq!(status, 202, "{body}");
}

#[test]
fn secrets_never_leak_and_admin_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let mut a = agent_in(dir.path(), &config(dir.path(), port, "", ""));
    // Exercise paths that log: a send, a bad token, a passthrough, admin errors.
    let (code, _) = get(&format!(
        "{}/bot{TOKEN}/sendMessage?chat_id=5&text=hello",
        a.url
    ));
    assert_eq!(code, 200);
    let (code, body) = get(&format!("{}/bot{TOKEN}/getMe", a.url));
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(&format!("{}/bot{TOKEN}x/getMe", a.url));
    assert_eq!(code, 401);
    let r = client().get(format!("{}/admin/dlq", a.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(format!("{}/admin/dlq", a.url))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let wrong_body = r.text().unwrap();
    let r = client()
        .get(format!("{}/admin/dlq", a.url))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, metrics) = get(&format!("{}/metrics", a.url));
    let (_, details) = get(&format!("{}/healthz/details", a.url));
    assert_eq!(
        sigterm(&mut a.proc, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    let log = a.proc.log();
    for secret in [TOKEN, ADMIN, "hmac-SECRET-key"] {
        for (what, text) in [
            ("log", &log),
            ("metrics", &metrics),
            ("details", &details),
            ("401 body", &wrong_body),
        ] {
            assert!(!text.contains(secret), "{what} contains a secret");
        }
    }
    assert!(metrics.contains("herald_messages_delivered_total"));
}

#[test]
fn sigterm_drains_in_flight_work_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Slow sends so that some are in flight at SIGTERM.
    let _sb = sandbox(port, Some("faults:\n  latency_ms: 300\n"));
    let mut a = agent_in(dir.path(), &config(dir.path(), port, "", ""));
    // A new store never sent anything: no start-up quiet period.
    assert!(
        eventually(Duration::from_secs(5), || a
            .proc
            .log()
            .lines()
            .any(|l| l.contains("first send after the start-up quiet period")
                && l.contains("wait_ms=0"))),
        "{}",
        a.proc.log()
    );
    let ids = send_many(&a.url, 20, 20);
    std::thread::sleep(Duration::from_millis(400));
    let status = sigterm(&mut a.proc, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", a.proc.log());
    assert!(a.proc.log().contains("draining"), "{}", a.proc.log());
    // Whatever was not delivered is still there at the next start.
    let b = start_agent(dir.path(), &a.config);
    assert!(eventually(Duration::from_secs(30), || ids
        .iter()
        .all(|id| state_of(&b.url, id) == "delivered")));
}

#[test]
fn a_second_agent_on_the_same_file_waits_for_the_first_to_close_it() {
    // As when a pod is replaced: the new agent starts while the old one
    // still has the embedded store open, and must not crash on it.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let mut first = agent_in(dir.path(), &config(dir.path(), port, "", ""));
    let ids = send_many(&first.url, 5, 5);
    let path = first.config.clone();
    let root = dir.path().to_owned();
    let second = std::thread::spawn(move || start_agent(&root, &path));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !second.is_finished(),
        "the second agent did not wait for the file"
    );
    let status = sigterm(&mut first.proc, Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        first.proc.log()
    );
    let second = second
        .join()
        .expect("the second agent started once the file was free");
    assert!(
        second.proc.log().contains("open in another process"),
        "{}",
        second.proc.log()
    );
    assert!(eventually(Duration::from_secs(30), || ids
        .iter()
        .all(|id| state_of(&second.url, id) == "delivered")));
}

#[test]
fn lowering_the_global_rate_takes_effect_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let limits = |rate: u32| {
        format!(
            "  rateLimitPolicyRef: {{name: limits}}\n---\napiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: limits}}\nspec:\n  global: {{rate: {rate}, period: 1s}}\n  perChat: {{rate: 1, period: 1s}}\n"
        )
    };
    let a = agent_in(dir.path(), &config(dir.path(), port, &limits(30), ""));
    send_many(&a.url, 3000, 600);
    assert!(eventually(
        Duration::from_secs(20),
        || counters(port)["delivered"].as_u64().unwrap_or(0) >= 200
    ));
    std::fs::write(&a.config, config(dir.path(), port, &limits(10), "")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = counters(port)["delivered"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = counters(port)["delivered"].as_u64().unwrap();
    let rate = (after - before) as f64 / 3.0;
    assert!(
        rate <= 10.5,
        "still sending at {rate}/s two seconds after the reload"
    );
    assert!(rate >= 8.0, "rate collapsed to {rate}/s");
    assert!(a.proc.log().contains("configuration reloaded"));
}
