//! The OpenTelemetry pipeline (feature `otel`): finished spans from
//! [`spans`](super::spans) get their ids and go through a batch processor to
//! an OTLP/HTTP (protobuf) exporter configured by the standard `OTEL_*`
//! variables.
//!
//! Owns the process-wide pipeline: start, emit, flush at shutdown. Leaves
//! to the facade when spans are emitted, to `spans` what they carry, to
//! `ids` and `sampling` which traces they belong to and whether they are
//! kept.
//!
//! Spans are handed to the SDK's `BatchSpanProcessor` as complete
//! `SpanData`: its bounded queue is drained by its own thread, so emitting
//! is a `try_send` that drops the span when the queue is full — a slow or
//! dead collector costs spans, never a send. No `TracerProvider` and no
//! global tracer are installed: the SDK tracer always generates its own
//! ids, and herald's must be derived (see `ids`).
//!
//! Invariant: nothing here returns an error or panics into the caller.

mod client;

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks,
    SpanProcessor,
};

use super::spans::{self, Kind, Plan, Value};
use super::{AttemptEnd, AttemptOf, ids, sampling};
use crate::api::DeliveryTier;
use crate::sink::Sink;
use crate::store::{MessageId, StoredMessage};

/// Upper bound of the final flush: SIGTERM's grace period belongs to the
/// delivery drain, not to telemetry.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

struct Pipeline {
    processor: BatchSpanProcessor,
    ratio: f64,
    scope: InstrumentationScope,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// Starts the pipeline; `true` when spans will be exported.
pub fn init(default_service: &'static str) -> bool {
    if !super::endpoint_configured() {
        return false;
    }
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        tracing::info!("OTEL_SDK_DISABLED=true: no traces are exported");
        return false;
    }
    if let Some(e) = env("OTEL_TRACES_EXPORTER").filter(|e| e.trim() != "otlp") {
        tracing::info!(exporter = %e, "OTEL_TRACES_EXPORTER is not otlp: no traces are exported");
        return false;
    }
    if PIPELINE.get().is_some() {
        return true;
    }
    let pipeline = match build(default_service) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "OpenTelemetry exporter not started; delivery goes on without traces");
            return false;
        }
    };
    let ratio = pipeline.ratio;
    if PIPELINE.set(pipeline).is_err() {
        // Another thread won the race; its pipeline serves both.
        return true;
    }
    tracing::info!(
        sample_ratio = ratio,
        "exporting traces over OTLP/HTTP (endpoint from OTEL_EXPORTER_OTLP_*)"
    );
    true
}

fn build(default_service: &'static str) -> Result<Pipeline, String> {
    // The exporter applies no timeout of its own to a custom client; use
    // the one the standard variables ask for.
    let timeout = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|k| env(k).and_then(|v| v.trim().parse::<u64>().ok()))
    .map_or(
        opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT,
        Duration::from_millis,
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client::Blocking::new(timeout)?)
        // The only encoding this build carries; set so that an
        // OTEL_EXPORTER_OTLP_PROTOCOL of grpc or http/json cannot pick one
        // that is not compiled in.
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    // Queue size, delay and batch size from OTEL_BSP_*.
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource(default_service));
    let ratio = sampling::ratio(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    );
    let scope = InstrumentationScope::builder("herald")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    Ok(Pipeline {
        processor,
        ratio,
        scope,
    })
}

/// The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, SDK
/// attributes), with herald's service name where neither variable set one.
fn resource(default_service: &'static str) -> Resource {
    let from_env = Resource::builder().build();
    let named = from_env
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        from_env
    } else {
        Resource::builder()
            .with_service_name(default_service)
            .build()
    }
}

/// Flushes what is queued (bounded) and stops the exporter thread.
pub fn shutdown() {
    if let Some(p) = PIPELINE.get()
        && let Err(e) = p.processor.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
    {
        tracing::warn!(error = %e, "flushing traces at shutdown failed; some spans are lost");
    }
}

fn emit(p: &Pipeline, plan: Plan, trace_id: TraceId, span_id: SpanId, parent: SpanId) {
    let attributes = plan
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::Str(s) => KeyValue::new(k, s),
            Value::Int(i) => KeyValue::new(k, i),
        })
        .collect();
    let status = match plan.error {
        Some(label) => Status::error(label),
        None if matches!(plan.kind, Kind::Client) => Status::Ok,
        None => Status::Unset,
    };
    p.processor.on_end(SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: match plan.kind {
            Kind::Producer => SpanKind::Producer,
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
        },
        name: Cow::Borrowed(plan.name),
        start_time: plan.start,
        end_time: plan.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: p.scope.clone(),
    });
}

/// The pipeline, if started and this message's trace is kept.
fn for_message(id: MessageId) -> Option<(&'static Pipeline, TraceId, SpanId)> {
    let p = PIPELINE.get()?;
    let root = ids::root_span_id(id);
    sampling::keep(p.ratio, root).then(|| {
        (
            p,
            TraceId::from_bytes(ids::trace_id(id)),
            SpanId::from_bytes(root),
        )
    })
}

pub fn message_accepted(msg: &StoredMessage, source: &str) {
    let Some((p, trace, root)) = for_message(msg.id) else {
        return;
    };
    let plan = spans::message(msg, source, SystemTime::now());
    emit(p, plan, trace, root, SpanId::INVALID);
}

pub fn attempt_finished(msg: AttemptOf<'_>, sink: Option<&Sink>, end: &AttemptEnd<'_>) {
    let Some((p, trace, root)) = for_message(msg.id) else {
        return;
    };
    let plan = spans::attempt(msg, sink.map(Sink::channel), end, SystemTime::now());
    // Random: a send interrupted by a crash is sent again with the same
    // attempt number, and two spans must never share an id.
    let id = RandomIdGenerator::default().new_span_id();
    emit(p, plan, trace, id, root);
}

/// A reconcile under way; see [`super::ReconcileSpan`].
#[derive(Debug)]
pub struct Reconcile {
    start: SystemTime,
    namespace: String,
    name: String,
    generation: Option<i64>,
}

impl Reconcile {
    pub fn start(tier: &DeliveryTier) -> Option<Self> {
        PIPELINE.get()?;
        Some(Reconcile {
            start: SystemTime::now(),
            namespace: tier.metadata.namespace.clone().unwrap_or_default(),
            name: tier.metadata.name.clone().unwrap_or_default(),
            generation: tier.metadata.generation,
        })
    }

    pub fn finish(self, error: Option<&'static str>) {
        let Some(p) = PIPELINE.get() else { return };
        let ids = RandomIdGenerator::default();
        let (trace, id) = (ids.new_trace_id(), ids.new_span_id());
        if !sampling::keep(p.ratio, id.to_bytes()) {
            return;
        }
        let plan = spans::reconcile(
            &self.namespace,
            &self.name,
            self.generation,
            self.start,
            SystemTime::now(),
            error,
        );
        emit(p, plan, trace, id, SpanId::INVALID);
    }
}
