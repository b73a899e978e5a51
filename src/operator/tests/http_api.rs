//! An in-memory API served over real HTTP on 127.0.0.1, so that code in
//! another process can talk to it through an ordinary `kube::Client`.
//!
//! Owns only the forwarding: every request is handed, as it came, to the
//! client it serves (kube-fake-client, through the harness's recording
//! layer), and its answer is sent back. It knows nothing of Kubernetes and
//! adds no watches. Invariant: listens on 127.0.0.1 only, and stops when
//! the [`Served`] handle is dropped.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use kube::Client;

/// A running server; dropping it stops serving.
pub struct Served {
    /// `http://127.0.0.1:<port>`, for a `kube::Config`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `client` on an ephemeral port of 127.0.0.1.
pub async fn serve(client: Client) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(forward).with_state(client);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake API server stopped: {e}");
        }
    });
    Ok(Served { url, task })
}

async fn forward(State(client): State<Client>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The fake reads whole bodies; no request here is large.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let req = http::Request::from_parts(parts, kube::client::Body::from(bytes));
    match client.send(req).await {
        Ok(res) => res.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
