//! An in-process sandbox for tests and `herald demo`: bind 127.0.0.1:0,
//! serve in a task, read counters directly, stop on demand or on drop.
//!
//! Owns the server task's lifetime. Leaves serving to `server` and state to
//! `state`.
//!
//! Invariant: dropping the handle stops the server; `shutdown` also waits
//! for it and reports how it ended.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::SandboxConfig;
use super::counters::{Counters, DeliveredMessage};
use super::faults::FaultsConfig;
use super::state::{Shared, State};
use super::{SandboxError, serve_shared};

/// Entry point for an in-process sandbox.
pub struct Sandbox;

impl Sandbox {
    /// Validates `config`, binds 127.0.0.1 on a free port and serves in a
    /// spawned task.
    pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
        let shared = Arc::new(Shared::new(State::new(config, Instant::now())?));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_shared(listener, Arc::clone(&shared), async move {
            // A dropped sender stops the server as well.
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "sandbox Bot API listening");
        Ok(SandboxHandle {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A running in-process sandbox.
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SandboxError>>>,
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Bot API base URL to give a client, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters()
    }

    /// Delivered messages with `seq > since`, in arrival order.
    pub fn messages(&self, since: u64) -> Vec<DeliveredMessage> {
        self.shared.lock().messages_since(since)
    }

    pub fn set_faults(&self, faults: FaultsConfig) -> Result<(), SandboxError> {
        self.shared.lock().set_faults(faults, Instant::now())
    }

    pub fn reset(&self) {
        self.shared.lock().reset(Instant::now());
    }

    /// Stops accepting, lets open requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> Result<(), SandboxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|_| SandboxError::Task)?,
            None => Ok(()),
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
