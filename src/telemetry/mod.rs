//! Tracing facade: the only door from the agent and the operator into
//! OpenTelemetry. Call sites are one line each and never see an otel type.
//!
//! Owns: what herald traces and when — one trace per message (a root
//! "message" span at ingest, an "attempt" child span per send) and one span
//! per operator reconcile — and the process-wide switch. Leaves to
//! [`ids`] the trace identity of a message, to [`sampling`] which traces
//! are kept, to [`spans`] what each span carries, and to `otel` (compiled
//! only with the cargo feature `otel`) turning them into OTLP exports.
//!
//! Invariants:
//! - Without the `otel` feature every function here is an empty `#[inline]`
//!   fn taking references, so it compiles to nothing and no otel crate is
//!   built. With the feature but no OTLP endpoint configured, each call is
//!   one atomic load and a return.
//! - Telemetry never blocks or fails delivery: spans go to a bounded queue
//!   drained by a background thread; a full queue or a dead collector loses
//!   spans, never messages.
//! - No secret reaches a span: spans carry names, ids, classes and numbers
//!   chosen here, never message parameters, tokens, URLs or error bodies.
//!
//! Why spans are built whole instead of through `tracing` spans: a
//! message's spans are emitted by different tasks and possibly different
//! processes, and each is known complete (start, end, outcome) at the one
//! moment it is emitted; the ids must be derived, not generated. Building
//! `SpanData` directly is the smallest code that does exactly that, and
//! keeps `tracing-opentelemetry` out of the build.

pub mod ids;
#[cfg(feature = "otel")]
mod otel;
pub mod sampling;
pub mod spans;

use std::time::Duration;

use crate::api::DeliveryTier;
use crate::engine::dispatch::Verdict;
use crate::engine::taxonomy::Classification;
use crate::sink::{Sink, SinkResult};
use crate::store::{Attempt, MessageId, StoredMessage};

/// Telemetry for this process; flushes and stops the exporter when dropped.
/// Hold it in the command's outermost scope, declared before the tokio
/// runtime, so it drops after the runtime: the final flush is a blocking
/// HTTP call and must not run on a runtime thread.
#[must_use = "dropping it at once stops tracing"]
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    active: bool,
}

/// Starts exporting spans when this build has the `otel` feature and the
/// environment names an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise does nothing.
/// `default_service` is the `service.name` used when neither
/// `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one. Call it
/// after logging is set up (it logs what it did) and outside any tokio
/// runtime. Never fails: a bad configuration is logged and tracing stays off.
pub fn init(default_service: &'static str) -> Telemetry {
    #[cfg(feature = "otel")]
    {
        Telemetry {
            active: otel::init(default_service),
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = default_service;
        if endpoint_configured() {
            tracing::warn!(
                "an OTLP endpoint is set but this herald was built without the `otel` feature; no traces are exported"
            );
        }
        Telemetry {}
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if self.active {
            otel::shutdown();
        }
    }
}

/// Whether the standard variables name an OTLP endpoint for traces.
pub fn endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// A message was durably accepted (not a duplicate): emits its root span,
/// from the start of the accepting batch (`msg.created_ms`) to now.
/// `source` is the ingest path: `api`, `botapi` or `spool`.
#[inline]
pub fn message_accepted(msg: &StoredMessage, source: &str) {
    #[cfg(feature = "otel")]
    otel::message_accepted(msg, source);
    #[cfg(not(feature = "otel"))]
    let _ = (msg, source);
}

/// One finished attempt as the dispatch loop judged it.
#[derive(Clone, Copy, Debug)]
pub struct AttemptEnd<'a> {
    /// The attempt as it is recorded in the message's history.
    pub attempt: &'a Attempt,
    pub result: &'a SinkResult,
    /// The taxonomy's reading of `result.outcome`, classified once by the
    /// caller.
    pub class: Option<Classification>,
    pub verdict: &'a Verdict,
    /// How long the send took.
    pub latency: Duration,
}

/// What an attempt span tells of its message: the message as held before
/// this attempt is recorded.
#[derive(Clone, Copy, Debug)]
pub struct AttemptOf<'a> {
    pub id: MessageId,
    pub correlation_id: &'a str,
    pub created_ms: u64,
    /// The attempts recorded before this one, oldest first.
    pub earlier: &'a [Attempt],
}

impl<'a> From<&'a StoredMessage> for AttemptOf<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        AttemptOf {
            id: m.id,
            correlation_id: &m.msg.correlation_id,
            created_ms: m.created_ms,
            earlier: &m.attempts,
        }
    }
}

/// A send to a sink finished and the engine judged it: emits the attempt
/// span, a child of the message's root span, ending now and lasting
/// `end.latency`.
#[inline]
pub fn attempt_finished(msg: AttemptOf<'_>, sink: Option<&Sink>, end: &AttemptEnd<'_>) {
    #[cfg(feature = "otel")]
    otel::attempt_finished(msg, sink, end);
    #[cfg(not(feature = "otel"))]
    let _ = (msg, sink, end);
}

/// One operator reconcile of a tier, timed from [`ReconcileSpan::start`] to
/// [`ReconcileSpan::finish`]; dropped unfinished (a cancelled reconcile),
/// nothing is emitted.
#[derive(Debug)]
pub struct ReconcileSpan {
    #[cfg(feature = "otel")]
    inner: Option<otel::Reconcile>,
}

impl ReconcileSpan {
    #[inline]
    pub fn start(tier: &DeliveryTier) -> Self {
        #[cfg(feature = "otel")]
        {
            ReconcileSpan {
                inner: otel::Reconcile::start(tier),
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = tier;
            ReconcileSpan {}
        }
    }

    /// `error` is the failure's metric label (`None`: the pass succeeded).
    #[inline]
    pub fn finish(self, error: Option<&'static str>) {
        #[cfg(feature = "otel")]
        if let Some(r) = self.inner {
            r.finish(error);
        }
        #[cfg(not(feature = "otel"))]
        let _ = (self, error);
    }
}
