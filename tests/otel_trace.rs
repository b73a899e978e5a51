//! Tracing end to end (feature `otel`): a real agent process exports over
//! OTLP/HTTP to a collector in this test, and one delivered message shows
//! up as one trace — a root span carrying its correlation id and an attempt
//! span under it — with no secret in anything exported.
//!
//! The batch delay is set far beyond the test's length, so the spans can
//! only arrive through the flush on SIGTERM: that path is tested too.
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::json;

const PRIVATE_TEXT: &str = "private-text-of-the-user-7f3a";

#[derive(Default)]
struct Received {
    /// Every request body as it arrived, for the secret check.
    raw: Vec<Vec<u8>>,
    /// (service.name, span) for every span received.
    spans: Vec<(String, Span)>,
}

type Shared = Arc<Mutex<Received>>;

async fn traces(State(rx): State<Shared>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
    let mut g = rx.lock().unwrap();
    g.raw.push(body.to_vec());
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| string_attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                g.spans.push((service.clone(), span));
            }
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    Vec::new()
}

/// An OTLP/HTTP collector on loopback; the runtime must outlive the test.
fn collector() -> (tokio::runtime::Runtime, SocketAddr, Shared) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(shared.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, addr, shared)
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

#[test]
fn one_delivered_message_is_one_trace_from_ingest_to_the_sink() {
    let (_rt, collector_addr, received) = collector();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sb = sandbox(port, None);
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config(dir.path(), port, "", "")).unwrap();
    let endpoint = format!("http://{collector_addr}");
    let mut a = start_agent_env(
        dir.path(),
        &path,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "herald-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );

    let (status, body) = post_json(
        &format!("{}/v1/messages", a.url),
        &json!({"chat_id": 1001, "text": PRIVATE_TEXT, "correlation_id": "corr-otel-1"}),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["accepted"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(30), || state_of(&a.url, &id)
            == "delivered"),
        "not delivered: {}",
        counters(port)
    );

    let exit = sigterm(&mut a.proc, Duration::from_secs(30)).expect("agent did not stop");
    assert!(exit.success(), "{exit:?}: {}", a.proc.log());
    // The flush ran before the process exited; the collector may still be
    // storing the last request.
    let trace_id = hex::decode(id.replace('-', "")).unwrap();
    let of_trace = || -> Vec<(String, Span)> {
        received
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|(_, s)| s.trace_id == trace_id)
            .cloned()
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || of_trace().len() >= 2),
        "spans of the message never arrived; agent log:\n{}",
        a.proc.log()
    );
    let spans = of_trace();

    // The root: the message's own trace, its derived span id, no parent.
    let message_id: herald::store::MessageId = id.parse().unwrap();
    let root_id = herald::telemetry::ids::root_span_id(message_id).to_vec();
    let roots: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert_eq!(root.name, "message");
    assert_eq!(root.span_id, root_id);
    assert_eq!(
        string_attr(&root.attributes, "herald.correlation_id").as_deref(),
        Some("corr-otel-1")
    );
    assert_eq!(
        string_attr(&root.attributes, "herald.message_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        string_attr(&root.attributes, "herald.source").as_deref(),
        Some("api")
    );

    // Every other span hangs under the root; one of them delivered.
    let attempts: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| !s.parent_span_id.is_empty())
        .collect();
    assert!(!attempts.is_empty());
    for s in &attempts {
        assert_eq!(s.parent_span_id, root_id, "{s:#?}");
        assert_eq!(s.name, "attempt");
        assert_ne!(s.span_id, root_id);
    }
    let delivered = attempts
        .iter()
        .find(|s| string_attr(&s.attributes, "herald.outcome").as_deref() == Some("delivered"))
        .unwrap_or_else(|| panic!("no delivered attempt: {attempts:#?}"));
    assert_eq!(int_attr(&delivered.attributes, "herald.attempt"), Some(1));
    assert_eq!(
        string_attr(&delivered.attributes, "herald.sink").as_deref(),
        Some("telegram")
    );
    assert_eq!(
        string_attr(&delivered.attributes, "herald.tier").as_deref(),
        Some("tg")
    );
    assert_eq!(
        int_attr(&delivered.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        delivered.status.as_ref().map(|s| s.code),
        Some(StatusCode::Ok as i32)
    );
    assert!(delivered.start_time_unix_nano >= root.start_time_unix_nano);

    // The resource names the service from OTEL_SERVICE_NAME.
    let services: HashMap<&str, usize> = spans.iter().fold(HashMap::new(), |mut m, (svc, _)| {
        *m.entry(svc.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        services.keys().copied().collect::<Vec<_>>(),
        ["herald-under-test"]
    );

    // Nothing secret or private left the process: not the bot token (in the
    // agent's environment and in every Bot API URL), not the admin token,
    // not the message text.
    let g = received.lock().unwrap();
    for body in &g.raw {
        for needle in [TOKEN, ADMIN, PRIVATE_TEXT, "test-token-SECRET"] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} was exported"
            );
        }
    }
}
