//! Trace context: how one event's trace travels from its ingest span, through the row stored with the event, to each
//! delivery attempt, on whichever node and however late the attempt runs (see `docs/adr/0011-trace-context.md`).
//!
//! - Ingest continues the producer's W3C `traceparent` when it sent a valid one ([`incoming`], [`continue_trace`]),
//!   and the event stores its ingest span's context as a `traceparent` value ([`stored_context`]): the producer's
//!   own when no traces are recorded (nothing exported), nothing when there is neither.
//! - The EventWriter's flush links to the ingest spans of the events it committed ([`link_stored`]).
//! - Each attempt's span is a child of the stored context ([`join_event_trace`]); an event stored without one (before
//!   the context was stored, or with tracing off and no producer context) gets the trace its id names: trace id =
//!   the event id, as hookgate always sent ([`attempt_parent`]). The outbound `traceparent` carries the attempt
//!   span's context ([`outbound`]), or, with tracing off, the event's trace with a fresh span id.
//!
//! Without traces (no `telemetry.otlp_endpoint`: [`enabled`] is false) the writer and the Deliverers create no
//! span, and every function here is a header parse or a format at most: spans have no OpenTelemetry context, and
//! setting a parent or a link does nothing.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The sampling ratio of the traces hookgate starts; set when traces are recorded (see [`enable`]).
static ROOT_RATIO: OnceLock<f64> = OnceLock::new();

/// Says that this process records traces, and at which ratio it samples the traces it starts
/// (`telemetry.sampling_ratio`, so that the attempts of an event stored without a context are sampled like a root
/// would be). Called once, at start, when the tracer provider is installed.
pub fn enable(ratio: f64) {
    let _ = ROOT_RATIO.set(ratio.clamp(0.0, 1.0));
}

/// Whether this process records traces: without, the flush and attempt spans are not even created.
pub fn enabled() -> bool {
    ROOT_RATIO.get().is_some()
}

/// One header value, as the propagator reads it.
struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// A W3C `traceparent` value, when valid: four fields, lower-case hex of exact lengths (2, 32, 16, 2; a later
/// version may add fields), neither id all zeros.
pub fn parse(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let lengths = [2, 32, 16, 2];
    if !lengths.iter().all(|n| parts.next().is_some_and(|p| p.len() == *n)) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&One(value));
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// The producer's context: the request's `traceparent` header, when it is valid.
pub fn incoming(header: Option<&[u8]>) -> Option<SpanContext> {
    std::str::from_utf8(header?).ok().and_then(parse)
}

/// The W3C `traceparent` value of `sc` (version 00; only the sampled flag is kept).
pub fn format(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), (sc.trace_flags() & TraceFlags::SAMPLED).to_u8())
}

/// `span`'s OpenTelemetry context, when an OpenTelemetry layer records spans (`None` when traces are off).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// Makes `span` (not yet entered) a child of the producer's span.
pub fn continue_trace(span: &tracing::Span, producer: &SpanContext) {
    // Refused without an OpenTelemetry layer: there is nothing to continue then.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(producer.clone()));
}

/// What an event stores as its trace context: its ingest span's context when traces are recorded, else the
/// producer's, else nothing.
pub fn stored_context(ingest: &tracing::Span, producer: Option<&SpanContext>) -> Option<String> {
    span_context(ingest).or_else(|| producer.cloned()).map(|sc| format(&sc))
}

/// Links `span` (a flush) to the ingest span whose context an event stored.
pub fn link_stored(span: &tracing::Span, stored: Option<&str>) {
    if let Some(sc) = stored.and_then(parse) {
        span.add_link(sc);
    }
}

/// The parent of an attempt's span: the context its event stored, or, for an event stored without a valid one, the
/// trace its id names (trace id = the event id, the parent span id its last eight bytes), sampled as a trace
/// hookgate starts would be.
pub fn attempt_parent(stored: Option<&str>, event_id: Uuid) -> SpanContext {
    if let Some(sc) = stored.and_then(parse) {
        return sc;
    }
    let bytes = *event_id.as_bytes();
    let trace_id = TraceId::from_bytes(bytes);
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let span_id = if low == [0; 8] { SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]) } else { SpanId::from_bytes(low) };
    let ratio = ROOT_RATIO.get().copied().unwrap_or(1.0);
    let sampled = Sampler::TraceIdRatioBased(ratio)
        .should_sample(None, trace_id, "attempt", &SpanKind::Client, &[], &[])
        .decision
        == SamplingDecision::RecordAndSample;
    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

/// Makes `span` (an attempt, not yet entered) a child of its event's ingest span ([`attempt_parent`]).
pub fn join_event_trace(span: &tracing::Span, stored: Option<&str>, event_id: Uuid) {
    if span.is_disabled() {
        return;
    }
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(attempt_parent(stored, event_id)));
}

/// The outbound `traceparent` of an attempt made in `span`: the attempt span's own context when traces are
/// recorded; otherwise the event's trace ([`attempt_parent`]) with a fresh span id.
pub fn outbound(span: &tracing::Span, stored: Option<&str>, event_id: Uuid) -> String {
    if let Some(sc) = span_context(span) {
        return format(&sc);
    }
    let parent = attempt_parent(stored, event_id);
    let span_id: u64 = rand::random::<u64>().max(1);
    format!("00-{}-{span_id:016x}-{:02x}", parent.trace_id(), parent.trace_flags().to_u8())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let sc = parse(GOOD).unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(format(&sc), GOOD);
        assert_eq!(incoming(Some(GOOD.as_bytes())), Some(sc));
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f35-00f067aa-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} was accepted");
        }
        assert!(incoming(Some(b"\xff\xfe")).is_none());
        assert!(incoming(None).is_none());
    }

    #[test]
    fn an_event_without_a_stored_context_has_the_trace_its_id_names() {
        let id = Uuid::now_v7();
        let parent = attempt_parent(None, id);
        assert_eq!(parent.trace_id().to_string(), id.simple().to_string());
        assert!(parent.is_valid());
        assert_eq!(attempt_parent(Some("garbage"), id).trace_id(), parent.trace_id());
        assert_eq!(attempt_parent(Some(GOOD), id), parse(GOOD).unwrap());

        // Without traces recorded, the outbound header is the event's trace with a fresh span id.
        let none = tracing::Span::none();
        let header = outbound(&none, None, id);
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!((parts[0], parts[1]), ("00", id.simple().to_string().as_str()));
        assert_eq!(parts[2].len(), 16);
        let header = outbound(&none, Some(GOOD), id);
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-01"), "{header}");
        assert!(!header.contains("00f067aa0ba902b7"), "a span id of its own: {header}");
        assert_eq!(stored_context(&none, parse(GOOD).as_ref()).as_deref(), Some(GOOD));
        assert_eq!(stored_context(&none, None), None);
    }
}
