//! `POST /ingest/{source}`: verify, de-duplicate, hand to the [`EventWriter`], answer after COMMIT. Also the
//! CloudEvents HTTP binding (binary, structured and batch modes) and the `OPTIONS` abuse-protection handshake.

use std::borrow::Cow;

use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hookgate_actors::sources::Source;
use hookgate_actors::{
    CacheLookup, CacheRemember, EventWriter, NewEvent, Persist, PersistError, PersistMany, Persisted, Refused,
};
use hookgate_core::cloudevents::{self, CloudEventError, Mode};
use hookgate_core::event::{self, EventType, IdempotencyKey, LazyJson};
use hookgate_core::internal_events::{emit, IngestAnswered};
use hookgate_core::jq::stored_route_input;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::http::problem::IngestError;
use crate::http::AppState;

use crate::sources::Headers;

/// Most events accepted in one CloudEvents batch.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Headers never stored with an event (credentials and hop-by-hop headers).
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

#[tracing::instrument(name = "ingest", skip_all, fields(source = %path.as_str()))]
pub async fn ingest(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let source = state.sources.get().get(path.as_str()).cloned();
    let label: Cow<'static, str> = source.as_ref().map_or(Cow::Borrowed("unknown"), |s| Cow::Owned(s.slug.clone()));
    // Admission first: past `server.max_inflight_ingest` requests in progress, refuse at once, before reading the
    // body, so that overload costs almost nothing and memory stays bounded.
    let permit = state.ingest_permits.clone().try_acquire_owned();
    let result = match (source, permit) {
        (None, _) => Err(IngestError::UnknownSource(path.into_inner())),
        (Some(_), Err(_)) => Err(IngestError::Overloaded { retry_after_secs: state.retry_after_secs }),
        (Some(source), Ok(_permit)) => accept(&req, payload, &state, &source).await,
    };
    let outcome = match &result {
        Ok(Accepted::One(p)) if p.duplicate => "duplicate",
        Ok(Accepted::One(_)) => "accepted",
        Ok(Accepted::Many(_)) => "accepted_batch",
        Err(e) => e.outcome(),
    };
    emit(IngestAnswered { source: label, outcome });
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
    let body = read_body(headers, payload, source.max_body_bytes).await?;
    source.verifier.verify(&Headers(headers), &body)?;
    if json_body {
        // JSON text is UTF-8 (RFC 8259 §8.1); serde skips string contents it ignores, so check the encoding first.
        let text = std::str::from_utf8(&body).map_err(|e| IngestError::InvalidJson(format!("not UTF-8 ({e})")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| IngestError::InvalidJson(e.to_string()))?;
    }
    let body = body.freeze();
    let attributes = match ce_mode {
        Some(Mode::Batch) => return accept_batch(headers, state, source, &body).await.map(Accepted::Many),
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

    if let Some(id) = cache_lookup(state, source.id, &key).await {
        return Ok(Accepted::One(Persisted { id, duplicate: true }));
    }

    let kept_headers = stored_headers(headers);
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
        idempotency_key: key.clone(),
        event_type,
        received_at: chrono::Utc::now(),
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        headers: kept_headers,
        body: body.clone(),
        deliveries,
    };
    let persisted = persist(state, event).await?;
    remember(state, source, key, persisted.id);
    Ok(Accepted::One(persisted))
}

/// A CloudEvents batch: every event is decoded and routed first, then all are stored as one unit (all or nothing).
async fn accept_batch(
    headers: &HeaderMap,
    state: &AppState,
    source: &Source,
    body: &Bytes,
) -> Result<Vec<Persisted>, IngestError> {
    let items = cloudevents::decode_batch(body, MAX_BATCH_EVENTS)?;
    let kept_headers = stored_headers(headers);
    let catalog = state.catalog.get();
    let received_at = chrono::Utc::now();
    let mut events = Vec::with_capacity(items.len());
    for (attributes, raw) in items {
        let bytes = Bytes::copy_from_slice(raw.get().as_bytes());
        let key = IdempotencyKey::parse("the CloudEvents source and id", attributes.idempotency_key())?.into_string();
        let event_type = Some(EventType::parse("the CloudEvents type", attributes.event_type)?.into_string());
        let deliveries = catalog
            .plan(
                source.id,
                || {
                    let doc: Option<serde_json::Value> = serde_json::from_str(raw.get()).ok();
                    stored_route_input(
                        &source.slug,
                        &kept_headers,
                        doc.as_ref().ok_or(bytes.as_ref()),
                        event_type.as_deref(),
                    )
                },
                state.jq_timeout,
                state.jq_max_output,
            )
            .await;
        events.push(NewEvent {
            id: Uuid::now_v7(),
            source_id: source.id,
            idempotency_key: key,
            event_type,
            received_at,
            content_type: Some("application/cloudevents+json".into()),
            headers: kept_headers.clone(),
            body: bytes,
            deliveries,
        });
    }
    let keys: Vec<String> = events.iter().map(|e| e.idempotency_key.clone()).collect();
    let persisted = persist_many(state, events).await?;
    for (key, p) in keys.into_iter().zip(&persisted) {
        remember(state, source, key, p.id);
    }
    Ok(persisted)
}

/// Tells the cache (best effort) that `key` now names a committed event, for the source's dedupe window.
fn remember(state: &AppState, source: &Source, key: String, id: Uuid) {
    let ttl = source.options.dedupe_window_secs.map(std::time::Duration::from_secs);
    // A full cache mailbox only costs a later fast-path miss: PostgreSQL decides duplicates.
    let _ = state.cache.try_send(CacheRemember { source_id: source.id, idempotency_key: key, id, ttl });
}

/// Hands the event to the writer with `try_send` and waits (bounded) for its COMMIT.
async fn persist(state: &AppState, event: NewEvent) -> Result<Persisted, IngestError> {
    let (reply, rx) = oneshot::channel();
    hand_to_writer(state, Persist { event, reply }, rx).await
}

/// Hands a CloudEvents batch to the writer as one unit and waits (bounded) for its COMMIT.
async fn persist_many(state: &AppState, events: Vec<NewEvent>) -> Result<Vec<Persisted>, IngestError> {
    let (reply, rx) = oneshot::channel();
    hand_to_writer(state, PersistMany { events, reply }, rx).await
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
        Ok(Ok(Err(PersistError::Internal(e)))) => Err(IngestError::Unexpected(anyhow::anyhow!(e))),
        // The writer dropped the reply (stopping) or did not commit in time: the outcome is unknown to us,
        // so the producer must retry; the idempotency key makes the retry safe.
        Ok(Err(_)) | Err(_) => Err(IngestError::Unavailable { retry_after_secs }),
    }
}

async fn cache_lookup(state: &AppState, source_id: Uuid, key: &str) -> Option<Uuid> {
    let (tx, rx) = oneshot::channel();
    let msg = CacheLookup { source_id, idempotency_key: key.to_owned(), reply: tx };
    if state.cache.try_send(msg).is_err() {
        return None;
    }
    tokio::time::timeout(state.cache_timeout, rx).await.ok().and_then(Result::ok).flatten()
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
/// limit is refused before any of the body is read).
async fn read_body(headers: &HeaderMap, mut payload: web::Payload, limit: usize) -> Result<BytesMut, IngestError> {
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
    let mut body = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| IngestError::BadRequest(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The headers kept with an event: all but credentials and hop-by-hop headers, at most [`MAX_STORED_HEADERS`],
/// repeated headers joined with ", ".
fn stored_headers(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers.iter() {
        let name = name.as_str();
        if DROPPED_HEADERS.contains(&name) {
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
    serde_json::Value::Object(map)
}
