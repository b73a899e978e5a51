//! A Bot API look-alike that accepts everything at once: the "null sink" of
//! `herald bench`. It answers `sendMessage` with a well-formed result and
//! records when each benchmark message arrived, so the bench can tell how
//! long herald held it.
//!
//! Owns: the arrival log, keyed by the sequence number the bench puts in the
//! text (`bench:<seq>`). Leaves to others: every measurement.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

/// Arrivals seen so far.
#[derive(Default)]
pub struct Arrivals {
    pub count: AtomicU64,
    by_seq: Mutex<HashMap<u64, Instant>>,
}

impl Arrivals {
    /// When the message with sequence number `seq` arrived, if it did.
    pub fn at(&self, seq: u64) -> Option<Instant> {
        self.by_seq.lock().ok().and_then(|m| m.get(&seq).copied())
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.by_seq.lock() {
            m.clear();
        }
    }
}

/// A running null API on a loopback port.
pub struct NullApi {
    pub addr: SocketAddr,
    pub arrivals: Arc<Arrivals>,
    task: tokio::task::JoinHandle<()>,
}

impl NullApi {
    pub async fn start() -> std::io::Result<NullApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrivals = Arc::new(Arrivals::default());
        let app = Router::new()
            .route("/{bot}/{method}", post(answer))
            .with_state(arrivals.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(NullApi {
            addr,
            arrivals,
            task,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for NullApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sequence number in a bench text, `bench:<seq>`.
pub fn seq_of(text: &str) -> Option<u64> {
    text.strip_prefix("bench:")?.parse().ok()
}

async fn answer(
    State(arrivals): State<Arc<Arrivals>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let now = Instant::now();
    let n = arrivals.count.fetch_add(1, Ordering::Relaxed) + 1;
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params: Value = if is_json {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let text = params.get("text").and_then(Value::as_str).unwrap_or("");
    if let Some(seq) = seq_of(text)
        && let Ok(mut m) = arrivals.by_seq.lock()
    {
        m.insert(seq, now);
    }
    let chat = params.get("chat_id").cloned().unwrap_or(json!(0));
    axum::Json(json!({
        "ok": true,
        "result": {
            "message_id": n,
            "date": 0,
            "chat": {"id": chat, "type": "private"},
            "text": text,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sequence_numbers_only_from_bench_texts() {
        assert_eq!(seq_of("bench:42"), Some(42));
        assert_eq!(seq_of("bench:x"), None);
        assert_eq!(seq_of("hello"), None);
    }
}
