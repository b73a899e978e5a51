//! The agent's HTTP server: the accept loop in front of the router.
//!
//! Owns what happens to a connection before and between requests: at most
//! `http.maxConnections` are served at once (at the cap the loop stops
//! accepting, so new connections wait in the kernel's listen queue while
//! open ones keep working), each is served by hyper's HTTP/1 with
//! `http.headerReadTimeout` (a client that has not sent a whole request
//! head in time, or a keep-alive connection idle that long, is dropped),
//! and a graceful shutdown that stops accepting, lets requests in progress
//! finish and waits for every connection to close. Leaves the body's
//! deadline and the shape of error answers to [`super::edge`].
//!
//! axum's own `serve` sets no timer, so hyper applies no header timeout
//! there; this loop is the same pattern with the timer and the cap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::agent::state::AppState;

/// Serve `router` on `listener` until `shutdown` completes, then stop
/// accepting and wait for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let cap = state.config().agent.http.max_connections.max(1) as usize;
    let permits = Arc::new(Semaphore::new(cap));
    // Connections hold a receiver of each: `stop` asks them to finish,
    // `open` tells the loop when the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let header_timeout = state.config().agent.http.header_read_timeout.get();
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// A failed accept: a client that gave up before we took its connection is
/// nothing to worry about; anything else (out of file descriptors) is
/// logged and retried after a pause rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
