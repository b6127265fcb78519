//! Live tail: what a node publishes on Redis after a COMMIT (the events it stored, the attempt outcomes it
//! recorded) and what every node's subscriber reads back for its SSE clients (ADR-0012).
//!
//! Pure types and rules; the publishing and the subscription are `hookgate_actors::tail`, the SSE endpoint is the
//! admin API's. A message carries only what a tail shows or filters on: an event's stored headers (credentials
//! were removed at ingest) travel so that a jq filter sees the same input a route sees, but are never shown.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The pub/sub channel under a Redis key prefix.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:tail")
}

/// The key that says "some node has tail clients" (set with a TTL by those nodes, read by every publisher).
pub fn presence_key(prefix: &str) -> String {
    format!("{prefix}:tail:active")
}

/// One message on the channel: a committed batch of events, or a committed batch of attempt outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TailMessage {
    Events { node: String, events: Vec<TailEvent> },
    Outcomes { node: String, outcomes: Vec<TailOutcome> },
}

/// A stored event, as a tail sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailEvent {
    pub id: Uuid,
    pub source_id: Uuid,
    /// The source's slug.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The body's size in bytes.
    pub size: usize,
    /// The stored headers (credentials already removed): the jq filter's input, never shown.
    pub headers: Value,
    pub body: TailBody,
}

/// An event's body in a tail: the JSON document when the whole body is JSON, else its bytes in base64, cut at the
/// configured size (`truncated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TailBody {
    Json(Value),
    Base64 { data: String, truncated: bool },
}

impl TailBody {
    /// `body` as a tail shows it, at most `max_bytes` of it.
    pub fn of(body: &[u8], max_bytes: usize) -> Self {
        if body.len() <= max_bytes {
            if let Ok(doc) = serde_json::from_slice::<Value>(body) {
                return Self::Json(doc);
            }
        }
        let cut = &body[..body.len().min(max_bytes)];
        Self::Base64 { data: base64::engine::general_purpose::STANDARD.encode(cut), truncated: cut.len() < body.len() }
    }

    pub fn truncated(&self) -> bool {
        matches!(self, Self::Base64 { truncated: true, .. })
    }

    /// The route input's `body` (see [`crate::jq::stored_route_input`]): the JSON document, or the raw bytes; `None`
    /// when the body was cut (the whole body must then be read from the store).
    pub fn route_body(&self) -> Option<Result<&Value, Vec<u8>>> {
        match self {
            Self::Json(doc) => Some(Ok(doc)),
            Self::Base64 { truncated: true, .. } => None,
            Self::Base64 { data, .. } => base64::engine::general_purpose::STANDARD.decode(data).ok().map(Err),
        }
    }
}

impl TailEvent {
    /// What route filters see for this event, exactly as at ingest; `None` when the body was cut.
    pub fn route_input(&self) -> Option<Value> {
        let body = self.body.route_body()?;
        let body = match &body {
            Ok(doc) => Ok(*doc),
            Err(raw) => Err(raw.as_slice()),
        };
        Some(crate::jq::stored_route_input(&self.source, &self.headers, body, self.event_type.as_deref()))
    }
}

/// One attempt's outcome, as a tail sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailOutcome {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    /// The event's source, when its route is still in the catalog.
    pub source_id: Option<Uuid>,
    pub destination_id: Uuid,
    /// The destination's slug (`unknown` when it left the catalog meanwhile).
    pub destination: String,
    pub attempt: i32,
    /// What the attempt made of the delivery: `delivered`, `retrying`, `dead`, `failed` or `cancelled`.
    pub outcome: String,
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    pub latency_ms: i32,
    /// `timeout`, `connect`, `tls`, `http_status`, … (absent on success).
    pub error_kind: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// The outcome word of a delivery's state after an attempt.
pub fn outcome_word(state: crate::state::DeliveryState) -> &'static str {
    use crate::state::DeliveryState::*;
    match state {
        Pending => "retrying",
        Delivered => "delivered",
        Dead => "dead",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_stay_json_and_others_are_base64_cut_at_the_bound() {
        assert_eq!(TailBody::of(br#"{"a":1}"#, 100), TailBody::Json(serde_json::json!({"a": 1})));
        let raw = TailBody::of(b"a=1&b=2", 100);
        assert_eq!(raw, TailBody::Base64 { data: "YT0xJmI9Mg==".into(), truncated: false });
        assert_eq!(raw.route_body(), Some(Err(b"a=1&b=2".to_vec())));
        let cut = TailBody::of(br#"{"a":"long"}"#, 4);
        assert!(cut.truncated());
        assert_eq!(cut.route_body(), None);
    }

    #[test]
    fn the_route_input_is_the_one_routes_see() {
        let headers = serde_json::json!({"x-env": "prod"});
        let body = br#"{"kind":"order"}"#;
        let event = TailEvent {
            id: Uuid::nil(),
            source_id: Uuid::nil(),
            source: "shop".into(),
            event_type: Some("order.created".into()),
            received_at: Utc::now(),
            size: body.len(),
            headers: headers.clone(),
            body: TailBody::of(body, 1024),
        };
        let expected = crate::jq::stored_route_input_from_bytes("shop", &headers, body, Some("order.created"));
        assert_eq!(event.route_input(), Some(expected));
        let message = TailMessage::Events { node: "a".into(), events: vec![event] };
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(serde_json::from_str::<TailMessage>(&text).unwrap(), message);
    }
}
