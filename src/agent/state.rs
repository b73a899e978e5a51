//! What the agent's HTTP handlers and its dispatch loop share.
//!
//! The dispatch loop owns the engine; everyone else talks to it through
//! [`DispatchCmd`] messages, so engine state is never locked by a handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::agent::config::AgentConfig;
use crate::agent::metrics::Metrics;
use crate::agent::store::AgentStore;
use crate::fleet::Fleet;
use crate::store::{MessageId, StoredMessage};

/// How a message's life ended, for a Bot API caller waiting on it.
#[derive(Clone, Debug)]
pub struct Final {
    pub delivered: bool,
    /// The sink's HTTP status and raw body, when it answered.
    pub status: Option<u16>,
    pub body: Option<Bytes>,
    pub reason: Option<String>,
}

/// Requests to the dispatch loop.
pub enum DispatchCmd {
    /// Newly accepted (or re-queued) messages.
    Enqueue(Vec<StoredMessage>),
    /// A JSON snapshot for `/healthz/details`.
    Snapshot(oneshot::Sender<serde_json::Value>),
    /// Close a tier's breaker by hand.
    ResetBreaker(String, oneshot::Sender<Result<(), String>>),
    /// Pin (Some) or release (None) the degradation level.
    Degrade(Option<String>, oneshot::Sender<Result<(), String>>),
    /// A new configuration (hot reload).
    Reconfigure(Arc<AgentConfig>),
    /// Redis store: another agent takes this queue partition; forget its
    /// waiting messages and answer how many there were.
    DropPartition(u32, oneshot::Sender<usize>),
}

/// Shared by every handler.
pub struct AppState {
    pub config: RwLock<Arc<AgentConfig>>,
    pub store: AgentStore,
    /// The agents sharing the queue, on the Redis store.
    pub fleet: Option<Arc<Fleet>>,
    /// `None` when the config turns metrics off (`spec.metrics.enabled`).
    pub metrics: Option<Metrics>,
    /// One HTTP connection pool for pass-through calls and receipts.
    pub http: reqwest::Client,
    pub dispatch: mpsc::Sender<DispatchCmd>,
    /// Bot API callers waiting for a delivery, by message id.
    pub waiters: Mutex<HashMap<MessageId, Vec<oneshot::Sender<Final>>>>,
    /// False while starting and once draining: `/readyz` answers 503.
    pub ready: AtomicBool,
    /// True once shutdown began: ingest answers 503.
    pub draining: AtomicBool,
    /// Latest degradation refusal state, updated by the dispatch loop:
    /// (refuse all ingest, retry-after seconds).
    pub ingest_gate: RwLock<IngestGate>,
}

/// What degradation currently asks of ingest.
#[derive(Clone, Debug, Default)]
pub struct IngestGate {
    pub refuse_all: bool,
    pub shed: Vec<crate::engine::Priority>,
    pub retry_after_secs: u64,
    pub level: String,
}

impl AppState {
    pub fn config(&self) -> Arc<AgentConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_config(&self, c: Arc<AgentConfig>) {
        match self.config.write() {
            Ok(mut g) => *g = c,
            Err(poisoned) => *poisoned.into_inner() = c,
        }
    }

    /// The metrics to update, unless they are switched off.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Register interest in `id`'s final outcome.
    pub fn wait_for(&self, id: MessageId) -> oneshot::Receiver<Final> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.entry(id).or_default().push(tx);
        }
        rx
    }

    /// Drops the waiters of `id` that stopped listening. On Redis another
    /// agent may deliver the message, so [`AppState::finish`] never runs
    /// here for it; without this the entry would stay for good.
    pub fn forget_waiters(&self, id: MessageId) {
        if let Ok(mut w) = self.waiters.lock()
            && let Some(senders) = w.get_mut(&id)
        {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                w.remove(&id);
            }
        }
    }

    /// Tell whoever waits on `id` how it ended.
    pub fn finish(&self, id: MessageId, outcome: Final) {
        let senders = self.waiters.lock().ok().and_then(|mut w| w.remove(&id));
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(outcome.clone());
        }
    }

    pub fn gate(&self) -> IngestGate {
        self.ingest_gate
            .read()
            .map(|g| g.clone())
            .unwrap_or_default()
    }
}
