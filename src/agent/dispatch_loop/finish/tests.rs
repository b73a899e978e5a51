//! `finish` against a real embedded store in a temporary directory, with
//! no process and no network but a loopback receipt callback: for each
//! verdict, what the store records, what a waiting Bot API caller hears,
//! what the loop keeps holding, and that a receipt is read back from the
//! durable final state.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::agent::config::AgentConfig;
use crate::agent::metrics::Metrics;
use crate::agent::state::DispatchCmd;
use crate::agent::store::AgentStore;
use crate::engine::dispatch::{Poll, SendOrder};
use crate::engine::taxonomy::{Outcome, TelegramError, TransportKind};
use crate::sink::SinkResult;
use crate::store::record::tests::sample_new;
use crate::store::{EmbeddedOptions, EmbeddedStore, MessageState, NewMessage, StoredMessage};

/// A webhook tier that fails over to a spool tier.
fn config(dir: &Path) -> Arc<AgentConfig> {
    let text = format!(
        "apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: primary}}
spec:
  channel: webhook
  webhook: {{url: 'http://127.0.0.1:9/hook'}}
  fallbackTiers: [spare]
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: spare}}
spec:
  channel: spool
  spool: {{path: '{}'}}
",
        dir.join("spool").display()
    );
    Arc::new(AgentConfig::from_text(Path::new("t.yaml"), &text, &|_| None).unwrap())
}

struct Harness {
    _dir: tempfile::TempDir,
    _commands: mpsc::Receiver<DispatchCmd>,
    state: Arc<AppState>,
    l: DispatchLoop,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = EmbeddedStore::open(dir.path().join("q.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let (tx, commands) = mpsc::channel(16);
    let state = Arc::new(AppState {
        config: RwLock::new(config.clone()),
        store: AgentStore::Embedded(store),
        fleet: None,
        metrics: Some(Metrics::new()),
        http: reqwest::Client::new(),
        dispatch: tx,
        waiters: Default::default(),
        ready: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        ingest_gate: Default::default(),
    });
    let l = DispatchLoop::new(state.clone(), config, 7).unwrap();
    Harness {
        _dir: dir,
        _commands: commands,
        state,
        l,
    }
}

impl Harness {
    /// Accepts `msg`, hands it to the loop and takes its send order, as
    /// `pump` would (without sending).
    async fn in_flight(&mut self, msg: NewMessage) -> (MessageId, SendOrder) {
        let answers = self.state.store.accept(vec![msg], now_ms()).await;
        let id = answers[0].as_ref().unwrap().id;
        let stored = self.stored(id).await;
        self.l.enqueue(vec![stored]);
        let order = match self.l.d.poll(self.l.now()) {
            Poll::Send(order) => order,
            other => panic!("no send order: {other:?}"),
        };
        self.l.held.get_mut(&order.id).unwrap().sending = true;
        (id, order)
    }

    /// Finishes `order` with `result`, as if the sink answered it.
    fn answer(&mut self, order: &SendOrder, result: SinkResult) {
        self.l.finish(Done {
            id: order.id,
            tier: order.tier,
            result,
            latency: Duration::from_millis(12),
            unsent: None,
            repaced: false,
        });
    }

    async fn stored(&self, id: MessageId) -> StoredMessage {
        self.state.store.get(id).await.unwrap().unwrap()
    }

    /// The stored record once `done` holds for it: the writes run in tasks
    /// of their own.
    async fn eventually(
        &self,
        id: MessageId,
        done: impl Fn(&StoredMessage) -> bool,
    ) -> StoredMessage {
        for _ in 0..500 {
            let m = self.stored(id).await;
            if done(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the store never recorded it: {:?}", self.stored(id).await);
    }

    /// The value of one of the agent's counters.
    fn counted(
        &self,
        counter: impl Fn(&Metrics) -> &prometheus::IntCounterVec,
        labels: &[&str],
    ) -> u64 {
        counter(self.state.metrics().unwrap())
            .with_label_values(labels)
            .get()
    }

    fn holds(&self, id: MessageId) -> bool {
        self.l.ids.contains_key(&id)
    }
}

fn answered(outcome: Outcome, status: Option<u16>) -> SinkResult {
    SinkResult {
        outcome,
        status,
        body: Some(bytes::Bytes::from_static(b"{\"ok\":false}")),
        receipt: None,
        detail: None,
    }
}

fn telegram_error(status: u16, description: &str) -> Outcome {
    Outcome::Http {
        status,
        body: Some(TelegramError {
            error_code: status,
            description: description.into(),
            ..TelegramError::default()
        }),
    }
}

#[tokio::test]
async fn a_delivery_is_recorded_answered_and_forgotten() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(1)).await;
    let waiter = h.state.wait_for(id);
    let result = SinkResult {
        outcome: Outcome::Delivered,
        status: Some(200),
        body: Some(bytes::Bytes::from_static(b"{\"ok\":true}")),
        receipt: Some(serde_json::json!({"message_id": 42})),
        detail: None,
    };
    h.answer(&order, result);
    // The caller hears at once, with the sink's own answer.
    let heard = waiter.await.unwrap();
    assert!(heard.delivered);
    assert_eq!(heard.status, Some(200));
    assert_eq!(heard.body.as_deref(), Some(&b"{\"ok\":true}"[..]));
    assert_eq!(heard.reason, None);
    // The loop lets go of it; the store records it under its tier.
    assert!(!h.holds(id));
    let m = h
        .eventually(id, |m| m.state == MessageState::Delivered)
        .await;
    assert_eq!(m.delivered_tier.as_deref(), Some("primary"));
    assert_eq!(m.receipt, Some(serde_json::json!({"message_id": 42})));
    assert_eq!(h.counted(|m| &m.attempts, &["primary", "delivered"]), 1);
}

#[tokio::test]
async fn a_bad_request_is_dead_lettered_with_its_attempt() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(2)).await;
    let waiter = h.state.wait_for(id);
    h.answer(
        &order,
        answered(
            telegram_error(400, "Bad Request: message text is empty"),
            Some(400),
        ),
    );
    let heard = waiter.await.unwrap();
    assert!(!heard.delivered);
    assert_eq!(heard.status, Some(400));
    let reason = heard.reason.expect("a dead letter says why");
    assert!(!h.holds(id));
    let m = h
        .eventually(id, |m| m.state == MessageState::DeadLettered)
        .await;
    assert_eq!(m.dead_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(m.attempts.len(), 1);
    assert_eq!(m.attempts[0].tier, "primary");
    assert_eq!(m.attempts[0].outcome, "permanent");
    assert_eq!(m.attempts[0].error.as_deref(), Some("HTTP 400"));
}

#[tokio::test]
async fn a_transient_failure_is_retried_later_and_kept() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(3)).await;
    let before = now_ms();
    h.answer(
        &order,
        answered(telegram_error(502, "Bad Gateway"), Some(502)),
    );
    // Still the loop's, with the attempt it made; the store schedules it.
    assert!(h.holds(id));
    let held = &h.l.held[&order.id];
    assert_eq!(held.msg.attempts.len(), 1);
    assert!(!held.sending);
    let m = h.eventually(id, |m| !m.attempts.is_empty()).await;
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.attempts[0].outcome, "transient");
    assert_eq!(m.attempts[0].error.as_deref(), Some("HTTP 502"));
    assert!(m.next_attempt_ms.is_some_and(|at| at >= before));
    // Nobody waiting was told anything: the message is not finished.
    assert!(h.state.waiters.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failover_records_the_attempt_and_moves_on_at_once() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(4)).await;
    let before = now_ms();
    h.answer(
        &order,
        answered(Outcome::Transport(TransportKind::Tls), None),
    );
    assert!(h.holds(id));
    let m = h.eventually(id, |m| !m.attempts.is_empty()).await;
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.attempts[0].tier, "primary");
    assert!(
        m.next_attempt_ms
            .is_some_and(|at| at >= before && at <= now_ms())
    );
    assert_eq!(h.counted(|m| &m.failovers, &["primary", "spare"]), 1);
}

#[tokio::test]
async fn a_migrated_group_is_readdressed_without_an_attempt() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(-42)).await;
    let migrated = Outcome::Http {
        status: 400,
        body: Some(TelegramError {
            error_code: 400,
            description: "Bad Request: group chat was upgraded to a supergroup chat".into(),
            migrate_to_chat_id: Some(-100_042),
            ..TelegramError::default()
        }),
    };
    h.answer(&order, answered(migrated, Some(400)));
    assert!(h.holds(id));
    assert_eq!(h.l.held[&order.id].msg.chat_id, ChatRef::Id(-100_042));
    let m = h
        .eventually(id, |m| m.msg.chat_id == ChatRef::Id(-100_042))
        .await;
    assert_eq!(m.state, MessageState::Pending);
    assert!(m.attempts.is_empty());
}

#[tokio::test]
async fn a_send_the_shared_limiter_refused_goes_back_unsent() {
    let mut h = harness().await;
    let (id, order) = h.in_flight(sample_new(5)).await;
    h.l.finish(Done {
        id: order.id,
        tier: order.tier,
        result: super::super::send::unsent(),
        latency: Duration::ZERO,
        unsent: Some(Unsent::Wait(Duration::from_millis(200))),
        repaced: false,
    });
    // Nothing is written and no attempt is counted; the order comes back.
    assert!(h.holds(id));
    assert!(!h.l.held[&order.id].sending);
    let m = h.stored(id).await;
    assert!(m.attempts.is_empty());
    assert_eq!(h.counted(|m| &m.shared_refusals, &["primary"]), 1);
    assert!(matches!(
        h.l.d.poll(h.l.now() + Duration::from_millis(200)),
        Poll::Send(_)
    ));
}

/// Serves one HTTP request on loopback and hands over its body.
async fn one_callback() -> (String, oneshot::Receiver<serde_json::Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/receipt", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    let _ = tx.send(serde_json::from_str(body).unwrap());
                    break;
                }
            }
            if n == 0 {
                return;
            }
        }
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    (url, rx)
}

#[tokio::test]
async fn a_receipt_is_sent_from_the_durable_final_state() {
    let mut h = harness().await;
    let (url, receipt) = one_callback().await;
    let msg = NewMessage {
        callback_url: Some(url),
        ..sample_new(6)
    };
    let (id, order) = h.in_flight(msg).await;
    h.answer(
        &order,
        answered(
            telegram_error(400, "Bad Request: message text is empty"),
            Some(400),
        ),
    );
    let receipt = tokio::time::timeout(Duration::from_secs(10), receipt)
        .await
        .expect("a receipt within 10 s")
        .unwrap();
    // Read back from the store: the dead letter is durable by then.
    let m = h.stored(id).await;
    assert_eq!(m.state, MessageState::DeadLettered);
    assert_eq!(receipt["id"], id.to_string());
    assert_eq!(receipt["state"], "dead_lettered");
    assert_eq!(receipt["attempts"], 1);
    assert_eq!(receipt["tier"], "primary");
    assert_eq!(receipt["reason"], m.dead_reason.unwrap());
}
