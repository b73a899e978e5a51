//! The OTLP exporter's HTTP client: herald's own reqwest (0.12, rustls with
//! the system roots) in its blocking form.
//!
//! Owns one POST per export batch. Leaves the OTLP encoding, headers and
//! endpoint to `opentelemetry-otlp`.
//!
//! Why this and not the exporter's built-in clients: those use reqwest
//! 0.13, a second copy of reqwest (and its TLS stack) in the build; this is
//! the reqwest herald already compiles, plus its `blocking` module. Blocking
//! fits because exports run on the batch processor's own thread, never on
//! a tokio worker. Invariant: errors never carry the endpoint URL (it may
//! hold credentials), and the answer read back is capped.

use std::io::Read;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// Longest collector answer read; OTLP answers are a few bytes.
const MAX_ANSWER: u64 = 64 * 1024;

#[derive(Debug)]
pub struct Blocking(reqwest::blocking::Client);

impl Blocking {
    /// Builds the client on a thread of its own: reqwest's blocking client
    /// owns a runtime, which must not be created inside a tokio context.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| e.without_url().to_string())
        })
        .join()
        .map_err(|_| "building the OTLP HTTP client panicked".to_owned())?
        .map(Blocking)
    }
}

#[async_trait::async_trait]
impl HttpClient for Blocking {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let answer = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .map_err(|e| e.without_url())?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let mut bytes = Vec::new();
        answer.take(MAX_ANSWER).read_to_end(&mut bytes)?;
        let mut out = Response::builder()
            .status(status)
            .body(Bytes::from(bytes))?;
        *out.headers_mut() = headers;
        Ok(out)
    }
}
