//! A leased delivery as the delivery engine carries it from claim to attempt.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Why a delivery whose event row is gone (retention, a row deleted by hand) ends `dead`.
pub const ORPHAN_REASON: &str = "event no longer stored";

/// One leased delivery, with what its attempt needs.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: Uuid,
    /// The delivery's partition key (its event's `received_at`): with the id, one primary-key probe finds the row.
    pub created_at: DateTime<Utc>,
    /// This claim's lease; the result is applied only while it still holds.
    pub lease_id: Uuid,
    pub event_id: Uuid,
    pub destination_id: Uuid,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The body is a transform's output (JSON).
    pub transformed: bool,
    pub route_id: Uuid,
    /// Set when the route's programs could not be evaluated at ingest: what they read, to evaluate them now.
    pub routing: Option<RoutingInput>,
}

/// What a deferred route evaluation reads besides the body: the event as stored.
#[derive(Debug, Clone)]
pub struct RoutingInput {
    pub source: String,
    pub headers: serde_json::Value,
    pub event_type: Option<String>,
}
