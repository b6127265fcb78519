//! Storing ingested events: keys first, so an event is stored exactly when its (source, idempotency key) is new
//! (see ADR-0007).

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// An event to store.
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    pub id: Uuid,
    pub source_id: Uuid,
    pub idempotency_key: &'a str,
    /// The partition key, and its deliveries' `created_at`.
    pub received_at: DateTime<Utc>,
    pub content_type: Option<&'a str>,
    pub headers: &'a serde_json::Value,
    pub body: &'a [u8],
    /// Without NUL (PostgreSQL text cannot hold one).
    pub event_type: Option<Cow<'a, str>>,
}

/// The parameters of the insert of one batch: one array per column, in statement order.
pub struct EventColumns<'a> {
    ids: Vec<Uuid>,
    sources: Vec<Uuid>,
    keys: Vec<&'a str>,
    received: Vec<DateTime<Utc>>,
    content_types: Vec<Option<&'a str>>,
    headers: Vec<&'a serde_json::Value>,
    bodies: Vec<&'a [u8]>,
    types: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    /// The PostgreSQL types of [`EventColumns::params`], in order.
    pub const TYPES: [tokio_postgres::types::Type; 8] = {
        use tokio_postgres::types::Type;
        [
            Type::UUID_ARRAY,
            Type::UUID_ARRAY,
            Type::TEXT_ARRAY,
            Type::TIMESTAMPTZ_ARRAY,
            Type::TEXT_ARRAY,
            Type::JSONB_ARRAY,
            Type::BYTEA_ARRAY,
            Type::TEXT_ARRAY,
        ]
    };

    pub fn new(events: &'a [EventRow<'a>]) -> Self {
        Self {
            ids: events.iter().map(|e| e.id).collect(),
            sources: events.iter().map(|e| e.source_id).collect(),
            keys: events.iter().map(|e| e.idempotency_key).collect(),
            received: events.iter().map(|e| e.received_at).collect(),
            content_types: events.iter().map(|e| e.content_type).collect(),
            headers: events.iter().map(|e| e.headers).collect(),
            bodies: events.iter().map(|e| e.body).collect(),
            types: events.iter().map(|e| e.event_type.as_deref()).collect(),
        }
    }

    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.ids,
            &self.sources,
            &self.keys,
            &self.received,
            &self.content_types,
            &self.headers,
            &self.bodies,
            &self.types,
        ]
    }
}

/// Stores the events whose (source, idempotency key) is new, keys first; answers the ids stored. Callers pass the
/// events sorted by (source, key), so that concurrent batches take row locks in one order and cannot deadlock.
pub async fn insert_new(
    client: &impl GenericClient,
    events: &[EventRow<'_>],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::jsonb[],
                                      $7::bytea[], $8::text[])
                     AS u(id, source_id, idempotency_key, received_at, content_type, headers, body, type)
             ), fresh AS (
                 INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
                 SELECT source_id, idempotency_key, id, received_at FROM input
                 ON CONFLICT (source_id, idempotency_key) DO NOTHING
                 RETURNING event_id
             )
             INSERT INTO events (id, source_id, idempotency_key, received_at, content_type, headers, body, type)
             SELECT input.* FROM input JOIN fresh ON fresh.event_id = input.id
             RETURNING id",
        )
        .await?;
    let columns = EventColumns::new(events);
    let rows = client.query(&stmt, &columns.params()).await?;
    Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
}

/// The events already stored under these (source, idempotency key) pairs: (event id, source id, key). A row that
/// cannot be read is left out (its event is answered "vanished", never a panic).
pub async fn find_existing(
    client: &impl GenericClient,
    keys: &[(Uuid, &str)],
) -> Result<Vec<(Uuid, Uuid, String)>, tokio_postgres::Error> {
    let (sources, names): (Vec<Uuid>, Vec<&str>) = keys.iter().copied().unzip();
    let stmt = client
        .prepare_cached(
            "SELECT event_id, source_id, idempotency_key FROM event_keys
             WHERE (source_id, idempotency_key) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&sources, &names])
        .await?
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?)))
        .collect())
}
