//! `POST /ingest/{source}`: verify, de-duplicate, hand to the [`EventWriter`], answer after COMMIT. Also the
//! CloudEvents HTTP binding (binary, structured and batch modes) and the `OPTIONS` abuse-protection handshake.

use std::borrow::Cow;
use std::sync::Arc;

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hookgate_actors::admission::{BodyReservation, OverBudget};
use hookgate_actors::sources::Source;
use hookgate_actors::trace;
use hookgate_actors::{EventWriter, NewEvent, Persist, PersistError, PersistMany, Persisted, Refused};
use hookgate_core::cloudevents::{self, Attributes, CloudEventError, Mode};
use hookgate_core::event::{self, EventType, IdempotencyKey, LazyJson};
use hookgate_core::internal_events::{emit, IngestAnswered};
use hookgate_core::jq::{stored_route_input, stored_route_input_from_bytes};
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::http::access_log::RequestTrace;
use crate::http::problem::IngestError;
use crate::http::AppState;

use crate::sources::Headers;

/// The W3C trace-context header a producer may send.
const TRACEPARENT: &str = "traceparent";
/// Most events accepted in one CloudEvents batch.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Headers never stored with an event (credentials and hop-by-hop headers). The header carrying the source's own
/// credential (an `api_key` source's key header) is dropped too: see [`stored_headers`].
const DROPPED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
];
/// At most this many headers are stored with an event.
const MAX_STORED_HEADERS: usize = 64;
/// The most memory reserved for a body before its bytes arrive, whatever its `Content-Length` declares: past it the
/// buffer grows with what is received, so a client that declares much and sends little costs what it sent.
const MAX_INITIAL_BODY_CAPACITY: usize = 4 * 1024;

/// The handler: one `ingest` span per request, continuing the producer's trace when its `traceparent` is valid.
pub async fn ingest(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let producer = trace::incoming(req.headers().get(TRACEPARENT).map(|v| v.as_bytes()));
    let span = tracing::info_span!("ingest", "otel.kind" = "server", source = %path.as_str());
    if let Some(producer) = &producer {
        trace::continue_trace(&span, producer);
    }
    ingest_in_span(req, path, payload, state, producer).instrument(span).await
}

async fn ingest_in_span(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    producer: Option<opentelemetry::trace::SpanContext>,
) -> Result<HttpResponse, IngestError> {
    let started = std::time::Instant::now();
    // What the request's events store as their trace context, and what the access log line shows.
    let traceparent = trace::stored_context(&tracing::Span::current(), producer.as_ref());
    if let Some(tp) = &traceparent {
        req.extensions_mut().insert(RequestTrace::of(tp));
    }
    let source = state.sources.get().get(path.as_str()).cloned();
    let label: Cow<'static, str> = source.as_ref().map_or(Cow::Borrowed("unknown"), |s| Cow::Owned(s.slug.clone()));
    // Admission by time first (see `hookgate_actors::admission`): while the writer's queue stands past its target,
    // refuse at once, before reading the body, so that overload costs almost nothing and accepted requests never
    // queue for long. The byte budget and the count of requests in progress are checked in `accept`.
    let result = match source {
        None => Err(IngestError::UnknownSource(path.into_inner())),
        Some(_) if !state.admission.admits() => {
            Err(IngestError::Overloaded { retry_after_secs: state.retry_after_secs })
        }
        Some(source) => accept(&req, payload, &state, &source, traceparent).await,
    };
    let outcome = match &result {
        Ok(Accepted::One(p)) if p.duplicate => "duplicate",
        Ok(Accepted::One(_)) => "accepted",
        Ok(Accepted::Many(_)) => "accepted_batch",
        Err(e) => e.outcome(),
    };
    emit(IngestAnswered { source: label, outcome, elapsed: started.elapsed() });
    match result {
        Ok(Accepted::One(p)) => {
            Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": p.id, "duplicate": p.duplicate })))
        }
        Ok(Accepted::Many(ps)) => {
            let events: Vec<_> =
                ps.iter().map(|p| serde_json::json!({ "id": p.id, "duplicate": p.duplicate })).collect();
            Ok(HttpResponse::Accepted().json(serde_json::json!({ "events": events })))
        }
        Err(e) => {
            if let IngestError::Unexpected(error) = &e {
                tracing::error!(message = "Ingest failed unexpectedly.", error = %format!("{error:#}"));
            }
            Err(e)
        }
    }
}

/// What a request stored: one event, or a CloudEvents batch (one outcome per event, in order).
enum Accepted {
    One(Persisted),
    Many(Vec<Persisted>),
}

async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    source: &Source,
    traceparent: Option<String>,
) -> Result<Accepted, IngestError> {
    let headers = req.headers();
    check_encoding(headers)?;
    let ce_mode = match source.options.cloudevents {
        true => Some(cloudevents::mode(&Headers(headers)).ok_or(CloudEventError::NotACloudEvent)?),
        false => None,
    };
    let json_body = source.require_json || matches!(ce_mode, Some(Mode::Structured | Mode::Batch));
    if json_body {
        check_json_content_type(headers)?;
    }
    // The body arrives within `server.body_timeout_ms` (else 408), its bytes reserved against
    // `server.max_ingest_bytes` as they come; the reservation is held until the answer.
    let mut reservation = state.admission.reserve_body();
    let retry_after_secs = state.retry_after_secs;
    let read = read_body(headers, payload, source.max_body_bytes, &mut reservation, retry_after_secs);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(body) => Bytes::from(body?),
        Err(_) => return Err(IngestError::RequestTimeout { timeout_ms: state.body_timeout.as_millis() as u64 }),
    };
    // Only now, with the whole body here, does the request take one of `server.max_inflight_ingest` slots: a body
    // still trickling in holds none, so slow clients cannot lock out the others.
    let _slot =
        state.ingest_permits.clone().try_acquire_owned().map_err(|_| IngestError::Overloaded { retry_after_secs })?;
    source.verifier.verify(&Headers(headers), &body)?;
    if json_body {
        // JSON text is UTF-8 (RFC 8259 §8.1); serde skips string contents it ignores, so check the encoding first.
        let text = std::str::from_utf8(&body).map_err(|e| IngestError::InvalidJson(format!("not UTF-8 ({e})")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| IngestError::InvalidJson(e.to_string()))?;
    }
    let attributes = match ce_mode {
        Some(Mode::Batch) => return accept_batch(headers, state, source, &body, traceparent).await.map(Accepted::Many),
        Some(Mode::Structured) => Some(cloudevents::decode_structured(&body)?),
        Some(Mode::Binary) => Some(cloudevents::decode_binary(&Headers(headers))?),
        None => None,
    };
    // The body as JSON, parsed once, only when a key, a type or a route needs it.
    let mut doc = LazyJson::new(&body);
    let key = event::idempotency_key(&source.idempotency, &Headers(headers), &body, attributes.as_ref(), &mut doc)?
        .into_string();
    let event_type = match attributes {
        Some(a) => Some(EventType::parse("the CloudEvents type", a.event_type)?),
        None => event::event_type(source.options.event_type.as_ref(), &Headers(headers), &mut doc)?,
    }
    .map(EventType::into_string);

    let kept_headers = stored_headers(headers, source.verifier.credential_header());
    let catalog = state.catalog.get();
    let deliveries = catalog
        .plan(
            source.id,
            || stored_route_input(&source.slug, &kept_headers, doc.value(), event_type.as_deref()),
            state.jq_timeout,
            state.jq_max_output,
        )
        .await;
    let event = NewEvent {
        id: Uuid::now_v7(),
        source_id: source.id,
        idempotency_key: key,
        dedupe_ttl: dedupe_ttl(source),
        event_type,
        received_at: chrono::Utc::now(),
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        headers: kept_headers,
        body: body.clone(),
        deliveries,
        traceparent,
    };
    Ok(Accepted::One(persist(state, event).await?))
}

/// A CloudEvents batch: every event is decoded and routed first, then all are stored as one unit (all or nothing).
async fn accept_batch(
    headers: &HeaderMap,
    state: &AppState,
    source: &Source,
    body: &Bytes,
    traceparent: Option<String>,
) -> Result<Vec<Persisted>, IngestError> {
    let items = cloudevents::decode_batch(body, MAX_BATCH_EVENTS)?;
    let kept_headers = stored_headers(headers, source.verifier.credential_header());
    let (received_at, ttl) = (chrono::Utc::now(), dedupe_ttl(source));
    let mut events = batch_events(items, &kept_headers, source.id, ttl, received_at, traceparent.as_deref())?;
    let catalog = state.catalog.get();
    for event in &mut events {
        event.deliveries = catalog
            .plan(
                source.id,
                || {
                    stored_route_input_from_bytes(
                        &source.slug,
                        &event.headers,
                        &event.body,
                        event.event_type.as_deref(),
                    )
                },
                state.jq_timeout,
                state.jq_max_output,
            )
            .await;
    }
    persist_many(state, events).await
}

/// The events of a decoded CloudEvents batch, not yet routed. They share `headers`, the request's: one allocation
/// for the whole batch (up to [`MAX_BATCH_EVENTS`] events), not a copy per event.
fn batch_events(
    items: Vec<(Attributes, Box<serde_json::value::RawValue>)>,
    headers: &Arc<serde_json::Value>,
    source_id: Uuid,
    dedupe_ttl: Option<std::time::Duration>,
    received_at: chrono::DateTime<chrono::Utc>,
    traceparent: Option<&str>,
) -> Result<Vec<NewEvent>, IngestError> {
    items
        .into_iter()
        .map(|(attributes, raw)| {
            let key =
                IdempotencyKey::parse("the CloudEvents source and id", attributes.idempotency_key())?.into_string();
            let event_type = Some(EventType::parse("the CloudEvents type", attributes.event_type)?.into_string());
            Ok(NewEvent {
                id: Uuid::now_v7(),
                source_id,
                idempotency_key: key,
                dedupe_ttl,
                event_type,
                received_at,
                content_type: Some("application/cloudevents+json".into()),
                headers: Arc::clone(headers),
                // The event's own JSON text, moved (not copied) into the body.
                body: Bytes::from(String::from(Box::<str>::from(raw))),
                deliveries: Vec::new(),
                // The events of one request share its ingest span.
                traceparent: traceparent.map(str::to_owned),
            })
        })
        .collect()
}

/// How long the dedupe cache keeps the source's keys (its `dedupe_window_secs`; `None`: the cache's default).
fn dedupe_ttl(source: &Source) -> Option<std::time::Duration> {
    source.options.dedupe_window_secs.map(std::time::Duration::from_secs)
}

/// Hands the event to the writer with `try_send` and waits (bounded) for its COMMIT.
async fn persist(state: &AppState, event: NewEvent) -> Result<Persisted, IngestError> {
    let (reply, rx) = oneshot::channel();
    hand_to_writer(state, Persist { event, reply, sent_at: std::time::Instant::now() }, rx).await
}

/// Hands a CloudEvents batch to the writer as one unit and waits (bounded) for its COMMIT.
async fn persist_many(state: &AppState, events: Vec<NewEvent>) -> Result<Vec<Persisted>, IngestError> {
    let (reply, rx) = oneshot::channel();
    hand_to_writer(state, PersistMany { events, reply, sent_at: std::time::Instant::now() }, rx).await
}

/// `try_send`s `msg` (a full mailbox is an immediate 503) and waits at most `ingest_timeout` for its answer on `rx`.
async fn hand_to_writer<M, T>(
    state: &AppState,
    msg: M,
    rx: oneshot::Receiver<Result<T, PersistError>>,
) -> Result<T, IngestError>
where
    M: actix::Message<Result = ()> + Send + 'static,
    EventWriter: actix::Handler<M>,
{
    let retry_after_secs = state.retry_after_secs;
    if let Err(refused) = state.writer.try_send(msg) {
        return Err(match refused {
            Refused::Full => IngestError::Overloaded { retry_after_secs },
            Refused::Closed => IngestError::Unavailable { retry_after_secs },
        });
    }
    match tokio::time::timeout(state.ingest_timeout, rx).await {
        Ok(Ok(Ok(p))) => Ok(p),
        Ok(Ok(Err(PersistError::Overloaded))) => Err(IngestError::Overloaded { retry_after_secs }),
        Ok(Ok(Err(PersistError::Unavailable(_)))) => Err(IngestError::Unavailable { retry_after_secs }),
        Ok(Ok(Err(PersistError::SourceDeleted))) => Err(IngestError::SourceDeleted),
        Ok(Ok(Err(PersistError::Internal(e)))) => Err(IngestError::Unexpected(anyhow::anyhow!(e))),
        // The writer dropped the reply (stopping) or did not commit in time: the outcome is unknown to us,
        // so the producer must retry; the idempotency key makes the retry safe.
        Ok(Err(_)) | Err(_) => Err(IngestError::Unavailable { retry_after_secs }),
    }
}

fn check_encoding(headers: &HeaderMap) -> Result<(), IngestError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase())) {
        None => Ok(()),
        Some(Ok(enc)) if enc.is_empty() || enc == "identity" => Ok(()),
        Some(_) => Err(IngestError::UnsupportedMediaType(
            "Content-Encoding is not supported; send the body uncompressed".into(),
        )),
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let refuse = || IngestError::UnsupportedMediaType("this source requires Content-Type: application/json".into());
    let value = headers.get(header::CONTENT_TYPE).ok_or_else(refuse)?.to_str().map_err(|_| refuse())?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(refuse());
    }
    for param in parts {
        if let Some((k, v)) = param.split_once('=') {
            let v = v.trim().trim_matches('"');
            if k.trim().eq_ignore_ascii_case("charset") && !v.eq_ignore_ascii_case("utf-8") {
                return Err(IngestError::UnsupportedMediaType("JSON bodies must be UTF-8".into()));
            }
        }
    }
    Ok(())
}

/// Reads the body chunk by chunk, refusing it as soon as it passes `limit` (a declared `Content-Length` over the
/// limit is refused before any of the body is read). At most [`MAX_INITIAL_BODY_CAPACITY`] is allocated before bytes
/// arrive; the buffer then grows with them (doubling, never past `limit`). Every allocation is first reserved in
/// `reservation` (the node's byte budget of bodies in progress); when one does not fit now, the answer is 503
/// ([`IngestError::Overloaded`]), and a body larger than the whole budget is 413.
async fn read_body(
    headers: &HeaderMap,
    mut payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    limit: usize,
    reservation: &mut BodyReservation,
    retry_after_secs: u64,
) -> Result<Vec<u8>, IngestError> {
    let refused = |e| match e {
        OverBudget::Busy => IngestError::Overloaded { retry_after_secs },
        OverBudget::TooLarge { budget } => IngestError::PayloadTooLarge { limit: budget },
    };
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| IngestError::BadRequest("Content-Length is not a number".into()))?,
        ),
        None => None,
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    // Larger than this node's whole budget of bodies in progress: it could never be taken, so not a 503 to retry.
    if declared.is_some_and(|n| n > reservation.budget() as u64) {
        return Err(IngestError::PayloadTooLarge { limit: reservation.budget() });
    }
    let initial = declared.map_or(MAX_INITIAL_BODY_CAPACITY, |n| n.min(MAX_INITIAL_BODY_CAPACITY as u64) as usize);
    let initial = initial.min(limit);
    reservation.grow(initial).map_err(refused)?;
    let mut body = Vec::with_capacity(initial);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| IngestError::BadRequest(format!("the body could not be read: {e}")))?;
        let needed = body.len() + chunk.len();
        if needed > limit {
            return Err(IngestError::PayloadTooLarge { limit });
        }
        if needed > body.capacity() {
            let doubled = needed.max(body.capacity().saturating_mul(2)).min(limit);
            // Never reserve past the budget for the doubling alone: a body that fits it exactly is taken.
            let target = if doubled > reservation.budget() { needed } else { doubled };
            reservation.grow(target - body.capacity()).map_err(refused)?;
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The headers kept with an event: all but credentials (the fixed [`DROPPED_HEADERS`] and the source's own
/// `credential` header, see `Verifier::credential_header`) and hop-by-hop headers, at most [`MAX_STORED_HEADERS`],
/// repeated headers joined with ", ". What is stored is also what the admin API shows and what jq reads.
fn stored_headers(headers: &HeaderMap, credential: Option<&str>) -> Arc<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (name, value) in headers.iter() {
        let name = name.as_str();
        if DROPPED_HEADERS.contains(&name) || credential == Some(name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).replace('\0', "");
        let full = map.len() >= MAX_STORED_HEADERS;
        match map.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ if full => {}
            _ => {
                map.insert(name.to_owned(), serde_json::Value::String(value));
            }
        }
    }
    Arc::new(serde_json::Value::Object(map))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};
    use hookgate_actors::admission::Admission;

    use super::*;

    fn content_length(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(&n.to_string()).unwrap());
        h
    }

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        futures::stream::iter(sizes.iter().map(|&n| Ok(Bytes::from(vec![b'a'; n]))).collect::<Vec<_>>())
    }

    /// Reads with a budget far larger than any body here.
    async fn read(
        headers: &HeaderMap,
        payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
        limit: usize,
    ) -> Result<Vec<u8>, IngestError> {
        let admission = Admission::new(std::time::Duration::ZERO, std::time::Duration::ZERO, 1 << 40);
        read_body(headers, payload, limit, &mut admission.reserve_body(), 1).await
    }

    #[actix_rt::test]
    async fn a_huge_declared_length_reserves_no_more_than_the_initial_cap() {
        const GIB: u64 = 1 << 30;
        // The source accepts the declared gigabyte, but only 30 bytes come.
        let body = read(&content_length(GIB), chunks(&[10, 10, 10]), 2 * GIB as usize).await.unwrap();
        assert_eq!(body.len(), 30);
        assert!(body.capacity() <= MAX_INITIAL_BODY_CAPACITY, "{} bytes reserved", body.capacity());
    }

    #[actix_rt::test]
    async fn the_buffer_grows_with_what_arrives_and_never_past_the_limit() {
        let limit = 300 * 1024;
        let body = read(&HeaderMap::new(), chunks(&[1024; 200]), limit).await.unwrap();
        assert_eq!(body.len(), 200 * 1024);
        assert!(body.capacity() <= limit, "{} bytes reserved", body.capacity());
        let body = read(&HeaderMap::new(), chunks(&[1024; 300]), limit).await.unwrap();
        assert_eq!((body.len(), body.capacity()), (limit, limit), "exactly the limit fits, in exactly its size");
        let over = read(&HeaderMap::new(), chunks(&[1024; 301]), limit).await;
        assert!(matches!(over, Err(IngestError::PayloadTooLarge { .. })));
        let declared_over = read(&content_length(limit as u64 + 1), chunks(&[]), limit).await;
        assert!(matches!(declared_over, Err(IngestError::PayloadTooLarge { .. })));
    }

    #[actix_rt::test]
    async fn every_byte_of_a_body_is_reserved_first_and_one_that_does_not_fit_is_refused_with_503() {
        let admission = Admission::new(std::time::Duration::ZERO, std::time::Duration::ZERO, 16 * 1024);
        // Another request in progress holds most of the budget.
        let mut other = admission.reserve_body();
        other.grow(10 * 1024).unwrap();
        let mut mine = admission.reserve_body();
        let body = read_body(&HeaderMap::new(), chunks(&[1024; 4]), 1 << 20, &mut mine, 3).await.unwrap();
        assert!(mine.bytes() >= body.capacity(), "{} reserved for {} allocated", mine.bytes(), body.capacity());
        drop(mine);
        let mut mine = admission.reserve_body();
        let refused = read_body(&HeaderMap::new(), chunks(&[1024; 8]), 1 << 20, &mut mine, 3).await;
        assert!(
            matches!(refused, Err(IngestError::Overloaded { retry_after_secs: 3 })),
            "a body past the budget is refused with 503: {refused:?}"
        );
        drop((mine, other));
        assert_eq!(admission.body_bytes_in_use(), 0, "a finished request gives its bytes back");
        // A body larger than the whole budget can never be taken: 413, declared or not.
        let never = read_body(&content_length(20 * 1024), chunks(&[]), 1 << 20, &mut admission.reserve_body(), 3).await;
        assert!(matches!(never, Err(IngestError::PayloadTooLarge { limit: 16384 })), "{never:?}");
        let never = read_body(&HeaderMap::new(), chunks(&[1024; 17]), 1 << 20, &mut admission.reserve_body(), 3).await;
        assert!(matches!(never, Err(IngestError::PayloadTooLarge { limit: 16384 })), "{never:?}");
    }

    #[test]
    fn a_batchs_events_share_one_copy_of_the_request_headers() {
        let body = serde_json::json!([
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "t.a", "data": {"n": 1}},
            {"specversion": "1.0", "id": "2", "source": "/s", "type": "t.b"},
            {"specversion": "1.0", "id": "3", "source": "/s", "type": "t.c", "data": "x"},
        ])
        .to_string();
        let items = cloudevents::decode_batch(body.as_bytes(), MAX_BATCH_EVENTS).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, HeaderValue::from_static("producer/1"));
        let headers = stored_headers(&h, None);
        let events = batch_events(items, &headers, Uuid::now_v7(), None, chrono::Utc::now(), None).unwrap();
        assert_eq!(events.len(), 3);
        for e in &events {
            assert!(Arc::ptr_eq(&e.headers, &headers), "event {} has its own copy of the headers", e.idempotency_key);
        }
        assert_eq!(Arc::strong_count(&headers), 4, "the request's one copy, held by the three events");
        let first: serde_json::Value = serde_json::from_slice(&events[0].body).unwrap();
        assert_eq!(first["data"]["n"], 1, "each event's body is its own JSON text");
    }

    #[test]
    fn credentials_are_not_stored_and_signatures_are() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer t0k"),
            ("proxy-authorization", "Basic eDp5"),
            ("cookie", "session=1"),
            ("x-api-key", "k-123"),
            ("x-hub-signature-256", "sha256=00"),
            ("webhook-signature", "v1,AA=="),
            ("user-agent", "producer/1"),
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let stored = stored_headers(&h, Some("x-api-key"));
        let mut names: Vec<&str> = stored.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["user-agent", "webhook-signature", "x-hub-signature-256"]);
        let stored = stored_headers(&h, None);
        assert_eq!(stored["x-api-key"], "k-123", "only the source's own credential header is a credential");
    }
}
