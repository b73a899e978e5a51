//! The agent's HTTP edge as a real process on loopback: every refusal is
//! JSON in the shape of its API, a drop-in method that is no Bot API method
//! and a repeated parameter never reach Telegram, slow clients are cut off
//! by the header and body timeouts, the connection cap holds new
//! connections back while open ones keep working, a reload that needs a
//! restart says so, and start errors name the config file and field.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The harness config with short HTTP timeouts and a connection cap.
fn edge_config(dir: &Path, port: u16, max_connections: u32) -> String {
    config(dir, port, "", "").replace(
        "  shutdownGrace: 5s\n",
        &format!(
            "  shutdownGrace: 5s\n  http: {{headerReadTimeout: 2s, bodyReadTimeout: 2s, maxConnections: {max_connections}}}\n"
        ),
    )
}

/// `host:port` of an agent URL.
fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn connect(url: &str) -> TcpStream {
    let s = TcpStream::connect(addr_of(url)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read one HTTP/1.1 response with a Content-Length body: (status, body).
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// Send `raw` on a fresh connection and read the answer.
fn raw_request(url: &str, raw: &str) -> (u16, String) {
    let mut s = connect(url);
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s).unwrap_or((0, String::new()))
}

/// How a refusal is shaped: herald's `error` object or Telegram's.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Herald,
    Telegram,
}

fn check_shape(shape: Shape, body: &str, what: &str) -> Value {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
    match shape {
        Shape::Herald => assert!(v["error"]["message"].is_string(), "{what}: {v}"),
        Shape::Telegram => {
            assert_eq!(v["ok"], false, "{what}: {v}");
            assert!(v["error_code"].is_u64(), "{what}: {v}");
            assert!(v["description"].is_string(), "{what}: {v}");
        }
    }
    v
}

#[test]
fn every_refusal_is_json_and_bad_drop_in_calls_never_reach_telegram() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let a = agent_in(dir.path(), &edge_config(dir.path(), port, 100));
    let bot = format!("/bot{TOKEN}");
    let form = "application/x-www-form-urlencoded";
    let multipart_body = "--XYZ\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n1\r\n--XYZ\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n2\r\n--XYZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhi\r\n--XYZ--\r\n";
    let before = counters(port)["requests"].as_u64().unwrap_or(0);
    // (method, path, content type, body, status, shape, field named)
    let cases: Vec<(&str, String, &str, String, u16, Shape, &str)> = vec![
        (
            "GET",
            format!("{bot}/..%2F..%2Fadmin%2Freport"),
            "",
            String::new(),
            404,
            Shape::Telegram,
            "method",
        ),
        (
            "GET",
            format!("{bot}/getMe%3Fx%3D1"),
            "",
            String::new(),
            404,
            Shape::Telegram,
            "method",
        ),
        (
            "GET",
            format!("{bot}/get.Me"),
            "",
            String::new(),
            404,
            Shape::Telegram,
            "method",
        ),
        (
            "GET",
            format!("{bot}/sendMessage?chat_id=1&chat_id=2&text=hi"),
            "",
            String::new(),
            400,
            Shape::Telegram,
            "chat_id",
        ),
        (
            "POST",
            format!("{bot}/sendMessage"),
            form,
            "chat_id=1&text=hi&chat_id=2".into(),
            400,
            Shape::Telegram,
            "chat_id",
        ),
        (
            "POST",
            format!("{bot}/sendMessage?chat_id=1"),
            form,
            "chat_id=2&text=hi".into(),
            400,
            Shape::Telegram,
            "chat_id",
        ),
        (
            "POST",
            format!("{bot}/sendMessage"),
            "multipart/form-data; boundary=XYZ",
            multipart_body.into(),
            400,
            Shape::Telegram,
            "chat_id",
        ),
        (
            "POST",
            format!("{bot}/sendMessage"),
            "application/json",
            r#"{"chat_id":1,"text":"a","text":"b"}"#.into(),
            400,
            Shape::Telegram,
            "text",
        ),
        (
            "DELETE",
            "/v1/messages".into(),
            "",
            String::new(),
            405,
            Shape::Herald,
            "",
        ),
        (
            "PUT",
            "/healthz".into(),
            "",
            String::new(),
            405,
            Shape::Herald,
            "",
        ),
        (
            "BREW",
            "/metrics".into(),
            "",
            String::new(),
            405,
            Shape::Herald,
            "",
        ),
        (
            "GET",
            "/no/such/route".into(),
            "",
            String::new(),
            404,
            Shape::Herald,
            "",
        ),
        (
            "GET",
            "/v1/messages/%ZZ".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "id",
        ),
        (
            "GET",
            "/v1/messages/not-a-uuid".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "id",
        ),
        // Well-formed UUIDs of every version: not found, not a bad request.
        (
            "GET",
            "/v1/messages/00000000-0000-0000-0000-000000000000".into(),
            "",
            String::new(),
            404,
            Shape::Herald,
            "id",
        ),
        (
            "GET",
            "/v1/messages/c232ab00-9414-11ec-b3c8-9f68deced846".into(),
            "",
            String::new(),
            404,
            Shape::Herald,
            "id",
        ),
        (
            "GET",
            "/v1/messages/2b3e9a3f-6f3c-4c1e-9d1a-3f2b1c0d9e8f".into(),
            "",
            String::new(),
            404,
            Shape::Herald,
            "id",
        ),
        (
            "GET",
            "/v1/messages/0190b4a2-7c3e-7d4f-8a1b-2c3d4e5f6a7b".into(),
            "",
            String::new(),
            404,
            Shape::Herald,
            "id",
        ),
        (
            "GET",
            "/admin/dlq?limit=-1".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "limit",
        ),
        (
            "GET",
            "/admin/dlq?limit=ten".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "limit",
        ),
        (
            "GET",
            "/admin/dlq?colour=red".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "colour",
        ),
        (
            "GET",
            "/admin/dlq?after=x".into(),
            "",
            String::new(),
            400,
            Shape::Herald,
            "after",
        ),
    ];
    for (method, path, ctype, body, status, shape, field) in &cases {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !ctype.is_empty() {
            raw.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(body);
        let what = format!("{method} {}", path.replace(TOKEN, "<token>"));
        let (code, text) = raw_request(&a.url, &raw);
        assert_eq!(code, *status, "{what}: {text}");
        let v = check_shape(*shape, &text, &what);
        match shape {
            Shape::Herald => assert_eq!(v["error"]["field"], *field, "{what}: {v}"),
            Shape::Telegram => assert_eq!(v["herald"]["field"], *field, "{what}: {v}"),
        }
        assert!(!text.contains(TOKEN), "{what} echoes the token");
    }
    // None of them reached the Bot API.
    assert_eq!(counters(port)["requests"].as_u64().unwrap_or(0), before);
    // The admin scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = client()
            .get(format!("{}/admin/dlq", a.url))
            .header("authorization", format!("{scheme} {ADMIN}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    // The header that passes the Kubernetes API server's proxy; a wrong
    // token there is refused like a wrong bearer token.
    for (token, status) in [(ADMIN, 200), ("wrong", 401)] {
        let r = client()
            .get(format!("{}/admin/dlq", a.url))
            .header("x-herald-admin-token", token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "x-herald-admin-token {token}");
    }
    // A well-formed call still goes through.
    let (code, text) = get(&format!("{}{bot}/sendMessage?chat_id=5&text=hi", a.url));
    assert_eq!(code, 200, "{text}");
}

#[test]
fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let a = agent_in(dir.path(), &edge_config(dir.path(), port, 100));
    // Half a request head, then nothing: dropped after about 2 s.
    let mut s = connect(&a.url);
    let started = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut buf = [0u8; 256];
    let read = s.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected the connection closed, got {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    // A body that stops halfway: 408 in herald's shape after about 2 s.
    let mut s = connect(&a.url);
    let started = Instant::now();
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"chat_id\": 1,",
    )
    .unwrap();
    let (code, body) = read_response(&mut s).unwrap();
    let waited = started.elapsed();
    assert_eq!(code, 408, "{body}");
    check_shape(Shape::Herald, &body, "slow body");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
    // The agent still serves.
    assert_eq!(get(&format!("{}/healthz", a.url)).0, 200);
}

#[test]
fn at_the_connection_cap_new_connections_wait_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let a = agent_in(dir.path(), &edge_config(dir.path(), port, 3));
    // Let the harness's readiness connections close.
    std::thread::sleep(Duration::from_millis(300));
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // A keep-alive connection that has been answered once.
    let mut kept = connect(&a.url);
    kept.write_all(request).unwrap();
    assert_eq!(read_response(&mut kept).unwrap().0, 200);
    // Two idle connections fill the cap of 3.
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(&a.url)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // A fourth connects (the kernel's listen queue takes it) but is not served.
    let mut waiting = connect(&a.url);
    waiting.write_all(request).unwrap();
    // The open connection keeps working meanwhile.
    kept.write_all(request).unwrap();
    assert_eq!(read_response(&mut kept).unwrap().0, 200);
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a connection over the cap was served: {other:?}"),
    }
    // Once a connection closes, the waiting one is served.
    drop(kept);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_response(&mut waiting).unwrap().0, 200);
    drop(idle);
}

#[test]
fn a_reload_that_needs_a_restart_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let text = edge_config(dir.path(), port, 100);
    let a = agent_in(dir.path(), &text);
    let other = free_port();
    std::fs::write(
        &a.config,
        text.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{other}")),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || a
            .proc
            .log()
            .contains("new configuration refused")),
        "{}",
        a.proc.log()
    );
    let log = a.proc.log();
    assert!(log.contains("spec.listen"), "{log}");
    assert!(!log.contains("configuration reloaded"), "{log}");
    // Still on the old address.
    assert_eq!(get(&format!("{}/healthz", a.url)).0, 200);
}

/// Run `herald run -f` on `config` expecting it to fail at start: its
/// stderr.
fn failed_start(dir: &Path, config: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin())
        .args(["run", "-f", path.to_str().unwrap()])
        .env("HERALD_SECRET_BOT_TOKEN", TOKEN)
        .env("HERALD_SECRET_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not fail at start");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success(), "{err}");
    err
}

#[test]
fn start_errors_name_the_config_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = edge_config(dir.path(), port, 100);
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let err = failed_start(
        dir.path(),
        &text.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{busy}")),
    );
    assert!(
        err.contains("config.yaml:5:") && err.contains("spec.listen"),
        "{err}"
    );
    // A store path under a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let store = dir.path().join("queue.redb");
    let err = failed_start(
        dir.path(),
        &text.replace(
            &store.display().to_string(),
            &file.join("queue.redb").display().to_string(),
        ),
    );
    assert!(
        err.contains("config.yaml:") && err.contains("spec.storePath"),
        "{err}"
    );
    assert!(!err.contains(TOKEN) && !err.contains(ADMIN), "{err}");
}
