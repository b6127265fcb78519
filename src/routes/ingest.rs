//! `POST /ingest/{source}`: verify, de-duplicate, hand to the [`EventWriter`], answer after COMMIT.

use actix::dev::SendError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures::StreamExt;
use hookgate_actors::{CacheLookup, CacheRemember, NewEvent, Persist, PersistError, Persisted};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::config::IdempotencyConfig;
use crate::problem::IngestError;
use crate::sources::Source;
use crate::startup::AppState;

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
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
    let source = state.sources.get(path.as_str());
    let label = source.as_ref().map(|s| s.slug.clone()).unwrap_or_else(|| "unknown".into());
    let result = match source {
        Some(source) => accept(&req, payload, &state, &source).await,
        None => Err(IngestError::UnknownSource(path.into_inner())),
    };
    let outcome = match &result {
        Ok(p) if p.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(e) => e.outcome(),
    };
    metrics::counter!("hookgate_ingest_requests_total", "source" => label, "outcome" => outcome).increment(1);
    match result {
        Ok(p) => Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": p.id, "duplicate": p.duplicate }))),
        Err(e) => {
            if let IngestError::Unexpected(error) = &e {
                tracing::error!(message = "Ingest failed unexpectedly.", error = %format!("{error:#}"));
            }
            Err(e)
        }
    }
}

async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    source: &Source,
) -> Result<Persisted, IngestError> {
    let headers = req.headers();
    check_encoding(headers)?;
    if source.require_json {
        check_json_content_type(headers)?;
    }
    let body = read_body(headers, payload, source.max_body_bytes).await?;
    source.verifier.verify(headers, &body)?;
    if source.require_json {
        // JSON text is UTF-8 (RFC 8259 §8.1); serde skips string contents it ignores, so check the encoding first.
        let text = std::str::from_utf8(&body).map_err(|e| IngestError::InvalidJson(format!("not UTF-8 ({e})")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| IngestError::InvalidJson(e.to_string()))?;
    }
    let key = idempotency_key(&source.idempotency, headers, &body)?;

    if let Some(id) = cache_lookup(state, source.id, &key).await {
        return Ok(Persisted { id, duplicate: true });
    }

    let body = body.freeze();
    let kept_headers = stored_headers(headers);
    let catalog = state.catalog.get();
    let deliveries = catalog
        .plan(source.id, || jq_input(&source.slug, &kept_headers, &body), state.jq_timeout, state.jq_max_output)
        .await;
    let event = NewEvent {
        id: Uuid::now_v7(),
        source_id: source.id,
        idempotency_key: key.clone(),
        received_at: chrono::Utc::now(),
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        headers: kept_headers,
        body,
        deliveries,
    };
    let persisted = persist(state, event).await?;
    state.cache_status.enqueued();
    if state.cache.try_send(CacheRemember { source_id: source.id, idempotency_key: key, id: persisted.id }).is_err() {
        state.cache_status.dequeued();
    }
    Ok(persisted)
}

/// Hands the event to the writer with `try_send` and waits (bounded) for its COMMIT.
async fn persist(state: &AppState, event: NewEvent) -> Result<Persisted, IngestError> {
    let retry_after_secs = state.retry_after_secs;
    let (tx, rx) = oneshot::channel();
    state.writer_status.enqueued();
    if let Err(e) = state.writer.try_send(Persist { event, reply: tx }) {
        state.writer_status.dequeued();
        return Err(match e {
            SendError::Full(_) => IngestError::Overloaded { retry_after_secs },
            SendError::Closed(_) => IngestError::Unavailable { retry_after_secs },
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
    state.cache_status.enqueued();
    let msg = CacheLookup { source_id, idempotency_key: key.to_owned(), reply: tx };
    if state.cache.try_send(msg).is_err() {
        state.cache_status.dequeued();
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

fn idempotency_key(cfg: &IdempotencyConfig, headers: &HeaderMap, body: &[u8]) -> Result<String, IngestError> {
    match cfg {
        IdempotencyConfig::BodyHash => Ok(hex::encode(Sha256::digest(body))),
        IdempotencyConfig::Header { header } => {
            let value = headers
                .get(header.as_str())
                .ok_or_else(|| IngestError::BadRequest(format!("the {header} header (idempotency key) is missing")))?;
            let key = value
                .to_str()
                .map_err(|_| IngestError::BadRequest(format!("the {header} header must be visible ASCII")))?
                .trim();
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(IngestError::BadRequest(format!(
                    "the {header} header must hold 1 to {MAX_KEY_LEN} characters"
                )));
            }
            Ok(key.to_owned())
        }
    }
}

/// What route filters and transforms see: `{body, headers, source, type}`; a body that is not JSON is a string.
pub(crate) fn jq_input(source: &str, headers: &serde_json::Value, body: &[u8]) -> serde_json::Value {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()));
    serde_json::json!({ "body": body, "headers": headers, "source": source, "type": serde_json::Value::Null })
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
