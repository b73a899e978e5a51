//! HTTP tests of the whole sandbox on 127.0.0.1:0, on paused tokio time so
//! every window is judged on virtual instants, never on how fast the machine is.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use super::*;

const TOKEN: &str = "4242:test-secret_AB";

/// One request on a fresh connection; returns status and JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = sender
        .send_request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn send_json(addr: SocketAddr, chat: i64, text: &str) -> (u16, Value) {
    let body = json!({ "chat_id": chat, "text": text }).to_string();
    let path = format!("/bot{TOKEN}/sendMessage");
    call(addr, "POST", &path, Some("application/json"), body).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None, Bytes::new()).await
}

async fn post_json(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    call(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn json_form_and_query_requests_are_delivered_with_real_shapes() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let addr = sandbox.addr();

    let (status, body) = send_json(addr, 11, "from json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["result"]["message_id"], 1);
    assert_eq!(
        body["result"]["chat"],
        json!({"id": 11, "type": "private", "first_name": "Sandbox user"})
    );
    assert_eq!(body["result"]["text"], "from json");
    assert!(body["result"]["date"].as_u64().unwrap() > 1_600_000_000);

    let path = format!("/bot{TOKEN}/sendMessage");
    let form = "chat_id=-12&text=from+form%21";
    let (status, body) = call(
        addr,
        "POST",
        &path,
        Some("application/x-www-form-urlencoded"),
        form,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["chat"]["type"], "group");
    assert_eq!(body["result"]["text"], "from form!");

    let (status, body) = get(
        addr,
        &format!("/bot{TOKEN}/sendmessage?chat_id=13&text=from%20query"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["text"], "from query");

    let (status, me) = get(addr, &format!("/bot{TOKEN}/getMe")).await;
    assert_eq!(status, 200);
    assert_eq!(me["result"]["id"], 4242);
    assert_eq!(me["result"]["is_bot"], true);

    let texts: Vec<String> = sandbox.messages(0).into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["from json", "from form!", "from query"]);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn multipart_photo_upload_is_delivered() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let body = "--b0undary\r\n\
        Content-Disposition: form-data; name=\"chat_id\"\r\n\r\n\
        21\r\n\
        --b0undary\r\n\
        Content-Disposition: form-data; name=\"caption\"\r\n\r\n\
        a picture\r\n\
        --b0undary\r\n\
        Content-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\n\
        Content-Type: image/jpeg\r\n\r\n\
        JPEGBYTES\r\n\
        --b0undary--\r\n";
    let path = format!("/bot{TOKEN}/sendPhoto");
    let ct = "multipart/form-data; boundary=b0undary";
    let (status, reply) = call(sandbox.addr(), "POST", &path, Some(ct), body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["caption"], "a picture");
    assert!(reply["result"]["photo"][0]["file_id"].is_string());
    assert_eq!(sandbox.messages(0)[0].method, "sendPhoto");
}

#[tokio::test(start_paused = true)]
async fn tokens_outside_the_configured_set_get_401_and_are_never_logged() {
    let config = SandboxConfig {
        tokens: vec![BotToken::from(TOKEN)],
        ..SandboxConfig::default()
    };
    assert!(!format!("{config:?}").contains("test-secret"));
    let sandbox = Sandbox::start(config).await.unwrap();
    let (status, body) = get(sandbox.addr(), "/bot4242:wrong/getMe").await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );
    assert_eq!(
        get(sandbox.addr(), &format!("/bot{TOKEN}/getMe")).await.0,
        200
    );
    assert!(!format!("{sandbox:?}").contains("test-secret"));

    let open = Sandbox::start(SandboxConfig::default()).await.unwrap();
    assert_eq!(get(open.addr(), "/botnotatoken/getMe").await.0, 401);
    assert_eq!(get(open.addr(), "/bot1:any/getMe").await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn unknown_methods_and_paths_are_bot_api_404s() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let not_found = json!({"ok": false, "error_code": 404, "description": "Not Found"});
    assert_eq!(
        get(sandbox.addr(), &format!("/bot{TOKEN}/sendSticker")).await,
        (404, not_found.clone())
    );
    assert_eq!(
        get(sandbox.addr(), "/nothing/here/at/all").await,
        (404, not_found.clone())
    );
    assert_eq!(get(sandbox.addr(), "/").await, (404, not_found));
}

#[tokio::test(start_paused = true)]
async fn thirty_first_send_in_a_second_gets_429_with_retry_after() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let addr = sandbox.addr();
    for chat in 1..=30 {
        let (status, body) = send_json(addr, chat, "burst").await;
        assert_eq!(status, 200, "chat {chat}: {body}");
    }
    let (status, body) = send_json(addr, 31, "one too many").await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}})
    );
    // Flood ban: the whole bot waits, even for a fresh chat.
    assert_eq!(send_json(addr, 32, "banned").await.0, 429);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send_json(addr, 33, "after retry_after").await.0, 200);

    let c = sandbox.counters();
    assert_eq!((c.delivered, c.rejected_429, c.flood_bans), (31, 2, 1));
    assert_eq!(c.max_per_bot_per_1s, 30);
    assert_eq!(c.max_per_chat_per_1s, 1);
}

#[tokio::test(start_paused = true)]
async fn per_chat_window_is_exact_on_virtual_time() {
    let config = SandboxConfig {
        limits: LimitsConfig {
            flood_ban: false,
            ..LimitsConfig::default()
        },
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config).await.unwrap();
    let addr = sandbox.addr();
    assert_eq!(send_json(addr, 5, "first").await.0, 200);
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(send_json(addr, 5, "1 ms early").await.0, 429);
    // The refused attempt occupies the window until 1.999 s.
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert_eq!(send_json(addr, 5, "on time").await.0, 200);
    let log = sandbox.messages(0);
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].arrival_ns - log[0].arrival_ns, 1_999_000_000);
}

#[tokio::test(start_paused = true)]
async fn injected_5xx_rate_is_roughly_honoured_and_replayable() {
    let faults = FaultsConfig {
        error_rate: 0.25,
        seed: 7,
        ..FaultsConfig::default()
    };
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let sandbox = Sandbox::start(SandboxConfig {
            faults: faults.clone(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut statuses = Vec::new();
        for _ in 0..400 {
            statuses.push(get(sandbox.addr(), &format!("/bot{TOKEN}/getMe")).await.0);
        }
        let failed = statuses.iter().filter(|s| **s == 500).count();
        assert!((60..=140).contains(&failed), "{failed} of 400 failed");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 500));
        assert_eq!(sandbox.counters().errors_5xx, failed as u64);
        outcomes.push(statuses);
        sandbox.shutdown().await.unwrap();
    }
    assert_eq!(outcomes[0], outcomes[1], "same seed, same failures");
}

#[tokio::test(start_paused = true)]
async fn faults_can_be_changed_at_runtime() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let addr = sandbox.addr();

    let (status, _) = post_json(addr, "/sandbox/faults", json!({"dark": true})).await;
    assert_eq!(status, 200);
    let (status, body) = send_json(addr, 1, "x").await;
    assert_eq!(
        (status, body["description"].clone()),
        (502, json!("Bad Gateway"))
    );
    // Control routes stay up while dark.
    assert_eq!(get(addr, "/sandbox/faults").await.1["dark"], true);

    let faults = json!({
        "blocked_chats": [2],
        "unknown_chats": [3],
        "migrated_chats": {"-4": -1_000_000_000_004_i64},
        "dark_periods": [{"start_ms": 10_000, "duration_ms": 1_000}],
    });
    assert_eq!(post_json(addr, "/sandbox/faults", faults).await.0, 200);
    let (status, body) = send_json(addr, 2, "x").await;
    assert_eq!(
        (status, body["description"].clone()),
        (403, json!("Forbidden: bot was blocked by the user"))
    );
    let (status, body) = send_json(addr, 3, "x").await;
    assert_eq!(
        (status, body["description"].clone()),
        (400, json!("Bad Request: chat not found"))
    );
    let (status, body) = send_json(addr, -4, "x").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["parameters"]["migrate_to_chat_id"],
        -1_000_000_000_004_i64
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(send_json(addr, 6, "x").await.0, 502);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send_json(addr, 6, "x").await.0, 200);

    let (status, body) = post_json(addr, "/sandbox/faults", json!({"error_rate": 2.0})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post_json(addr, "/sandbox/faults", json!({"eror_rate": 0.1})).await;
    assert_eq!(status, 400);

    let c = sandbox.counters();
    assert_eq!(
        (c.dark_502, c.errors_5xx, c.errors_4xx, c.delivered),
        (2, 2, 3, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn latency_delays_arrival_on_virtual_time() {
    let config = SandboxConfig {
        faults: FaultsConfig {
            latency_ms: 1_500,
            ..FaultsConfig::default()
        },
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config).await.unwrap();
    assert_eq!(send_json(sandbox.addr(), 1, "slow").await.0, 200);
    assert!(sandbox.messages(0)[0].arrival_ns >= 1_500_000_000);
}

#[tokio::test(start_paused = true)]
async fn counters_messages_and_reset_endpoints() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let addr = sandbox.addr();
    for (i, chat) in [1, -2, 1].into_iter().enumerate() {
        if i > 0 {
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(send_json(addr, chat, &format!("m{i}")).await.0, 200);
    }
    let (status, counters) = get(addr, "/sandbox/counters").await;
    assert_eq!(status, 200);
    let counters: Counters = serde_json::from_value(counters).unwrap();
    assert_eq!(counters, sandbox.counters());
    assert_eq!((counters.requests, counters.delivered), (3, 3));
    assert_eq!(counters.by_chat[&1].delivered, 2);
    assert_eq!(counters.max_per_group_per_60s, 1);
    assert_eq!(counters.max_global_per_1s, 1);
    let span = counters.last_delivery_unix_ms.unwrap() - counters.first_delivery_unix_ms.unwrap();
    assert_eq!(span, 2_000);

    let (status, page) = get(addr, "/sandbox/messages?since=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["last_seq"], 3);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(page["messages"][0]["chat_id"], -2);
    assert_eq!(page["messages"][1]["text"], "m2");
    assert!(page["messages"][0]["arrival_unix_ms"].is_u64());
    assert_eq!(
        get(addr, "/sandbox/messages?since=3").await.1["last_seq"],
        3
    );
    assert_eq!(get(addr, "/sandbox/messages?since=-1").await.0, 400);

    assert_eq!(
        call(addr, "POST", "/sandbox/reset", None, Bytes::new())
            .await
            .0,
        200
    );
    assert_eq!(sandbox.counters(), Counters::default());
    assert_eq!(
        get(addr, "/sandbox/messages").await.1["messages"],
        json!([])
    );
}

#[tokio::test(start_paused = true)]
async fn serve_stops_when_its_shutdown_future_completes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, SandboxConfig::default(), async move {
        let _ = stopped.await;
    }));
    assert_eq!(send_json(addr, 1, "hello").await.0, 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_binding() {
    let config = SandboxConfig {
        tokens: vec![BotToken::from("not-a-token-XYZZY")],
        ..SandboxConfig::default()
    };
    let err = Sandbox::start(config).await.unwrap_err().to_string();
    assert!(err.contains("tokens[0]") && !err.contains("XYZZY"), "{err}");
}
