//! The `events` table: storing ingested events (keys first, so an event is stored exactly when its (source,
//! idempotency key) is new; see ADR-0007), and reading them back for the admin API (the list, one event with its
//! deliveries and attempts) and for replays.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use hookgate_core::state::DeliveryState;
use uuid::Uuid;

use crate::deliveries::DeliveryRow;
use crate::error::{Columns, StoreResult};

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
    /// The W3C `traceparent` of the request that stored it (its ingest span's context), if any.
    pub traceparent: Option<&'a str>,
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
    traceparents: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    /// The PostgreSQL types of [`EventColumns::params`], in order.
    pub const TYPES: [tokio_postgres::types::Type; 9] = {
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
            traceparents: events.iter().map(|e| e.traceparent).collect(),
        }
    }

    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.ids,
            &self.sources,
            &self.keys,
            &self.received,
            &self.content_types,
            &self.headers,
            &self.bodies,
            &self.types,
            &self.traceparents,
        ]
    }
}

/// Stores the events whose (source, idempotency key) is new, keys first; answers the ids stored. Callers pass the
/// events sorted by (source, key), so that concurrent batches take row locks in one order and cannot deadlock; the
/// statement keeps that order (`ORDER BY ord`) whatever join the source check becomes, and of two events with one key
/// the first is stored. An event is stored only while its source exists, as committed now: no foreign key checks it
/// (ADR-0021). The text up to `INSERT INTO events` stays under PostgreSQL's 1,024 characters of
/// `pg_stat_activity.query`, where tests look for it.
pub async fn insert_new(client: &impl GenericClient, events: &[EventRow<'_>]) -> StoreResult<HashSet<Uuid>> {
    let stmt = insert_statement(client).await?;
    let columns = EventColumns::new(events);
    let rows = client.query(&stmt, &columns.params()).await?;
    Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
}

/// [`insert_new`] as its transaction's first statement, after `settings` (such as [`crate::GENERIC_PLANS`]): both
/// are sent together and executed in order, one round trip instead of two (the ingest flush's). Both are always
/// awaited, so a failure of either leaves nothing in flight on the connection.
pub async fn insert_new_after(
    client: &impl GenericClient,
    settings: &str,
    events: &[EventRow<'_>],
) -> StoreResult<HashSet<Uuid>> {
    let stmt = insert_statement(client).await?;
    let columns = EventColumns::new(events);
    let params = columns.params();
    // Polled in this order, so the settings go out first; `join`, not `try_join`: neither is left half-read.
    let (set, rows) = futures::future::join(client.batch_execute(settings), client.query(&stmt, &params)).await;
    set?;
    Ok(rows?.iter().filter_map(|r| r.try_get(0).ok()).collect())
}

async fn insert_statement(client: &impl GenericClient) -> StoreResult<tokio_postgres::Statement> {
    Ok(client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::jsonb[],
                                      $7::bytea[], $8::text[], $9::text[])
                     WITH ORDINALITY AS u(id, source_id, idempotency_key, received_at, content_type, headers, body,
                                          type, traceparent, ord)
                 WHERE EXISTS (SELECT 1 FROM sources s WHERE s.id = u.source_id)
                 ORDER BY ord
             ), fresh AS (
                 INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
                 SELECT source_id, idempotency_key, id, received_at FROM input
                 ON CONFLICT (source_id, idempotency_key) DO NOTHING
                 RETURNING event_id
             )
             INSERT INTO events (id, source_id, idempotency_key, received_at, content_type, headers, body, type,
                                 traceparent)
             SELECT i.id, i.source_id, i.idempotency_key, i.received_at, i.content_type, i.headers, i.body, i.type,
                    i.traceparent
             FROM input i JOIN fresh ON fresh.event_id = i.id
             RETURNING id",
        )
        .await?)
}

/// The events already stored under these (source, idempotency key) pairs: (event id, source id, key). A row that
/// cannot be read is left out (its event is answered "vanished", never a panic).
pub async fn find_existing(
    client: &impl GenericClient,
    keys: &[(Uuid, &str)],
) -> StoreResult<Vec<(Uuid, Uuid, String)>> {
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

/// The admin API's event list. Newest first by id (UUIDv7, so by arrival); each filter is a bound that the `events`
/// primary key or `events_source_id (source_id, id)` serves, and the time range prunes daily partitions and bounds
/// the ids too (an event's id is generated as it is received: ADR-0024). The
/// parameters, in order: source id, from, to, cursor (ids below it), delivery state, limit, type.
pub const LIST_SQL: &str = "\
SELECT e.id, e.source_id, e.received_at, e.content_type, octet_length(e.body), e.type
FROM events e
WHERE ($1::uuid IS NULL OR e.source_id = $1)
  AND ($2::timestamptz IS NULL OR (e.received_at >= $2 AND e.id >= hookgate_v7_floor($2 - interval '1 minute')))
  AND ($3::timestamptz IS NULL OR (e.received_at < $3 AND e.id < hookgate_v7_floor($3 + interval '1 minute')))
  AND ($4::uuid IS NULL OR e.id < $4)
  AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state = $5))
  AND ($7::text IS NULL OR e.type = $7)
ORDER BY e.id DESC
LIMIT $6";

/// Which events a page of the list holds: each filter is optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    /// Only events of this source.
    pub source_id: Option<Uuid>,
    /// Only events received at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events received before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only events with at least one delivery in this state.
    pub status: Option<DeliveryState>,
    /// Only events of this type.
    pub event_type: Option<&'a str>,
    /// Only events older than this id (the cursor).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: i64,
}

/// An event as the list shows it.
#[derive(Debug, Clone)]
pub struct EventSummaryRow {
    pub id: Uuid,
    pub source_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    pub body_bytes: i32,
    pub event_type: Option<String>,
}

/// The events `filter` selects, newest first ([`LIST_SQL`]).
pub async fn list(client: &impl GenericClient, filter: &EventFilter<'_>) -> StoreResult<Vec<EventSummaryRow>> {
    let status = filter.status.map(DeliveryState::as_str);
    let stmt = client.prepare_cached(LIST_SQL).await?;
    client
        .query(
            &stmt,
            &[&filter.source_id, &filter.from, &filter.to, &filter.before, &status, &filter.limit, &filter.event_type],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(EventSummaryRow {
                id: r.column(0)?,
                source_id: r.column(1)?,
                received_at: r.column(2)?,
                content_type: r.column(3)?,
                body_bytes: r.column(4)?,
                event_type: r.column(5)?,
            })
        })
        .collect()
}

/// One event by id. `$2`/`$3` bound `received_at` around the time in the UUIDv7 id ([`time_window`]), so that only
/// the daily partitions around it are probed.
pub const GET_SQL: &str = "\
SELECT e.id, e.source_id, s.slug, e.idempotency_key, e.received_at, e.content_type, e.headers, e.body, e.type
FROM events e JOIN sources s ON s.id = e.source_id
WHERE e.id = $1 AND e.received_at >= $2 AND e.received_at < $3";

/// An event's deliveries, in id order; none is created before its event (`$2`: the [`time_window`]'s start). The
/// columns are [`crate::deliveries::DELIVERY_COLUMNS`].
pub const DELIVERIES_SQL: &str = "\
SELECT id, event_id, route_id, destination_id, state, attempts, next_attempt_at, last_error, created_at, updated_at
FROM deliveries WHERE event_id = $1 AND created_at >= $2 ORDER BY id";

/// The attempts of some deliveries, by delivery and in order.
const ATTEMPTS_SQL: &str = "\
SELECT id, delivery_id, attempt, node_id, started_at, status, latency_ms, response_headers, response_excerpt,
       error_kind, error
FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt";

/// Where `received_at` of the event with this id lies: a day around the id's UUIDv7 time (ids and `received_at` are
/// taken together at ingest, on one node's clock), or all time for an id that is not a UUIDv7.
pub fn time_window(id: Uuid) -> (DateTime<Utc>, DateTime<Utc>) {
    let all = (DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::MAX_UTC);
    if id.get_version_num() != 7 {
        return all;
    }
    let Some((secs, nanos)) = id.get_timestamp().map(|t| t.to_unix()) else { return all };
    match DateTime::<Utc>::from_timestamp(secs as i64, nanos) {
        Some(t) => (t - chrono::Duration::days(1), t + chrono::Duration::days(1)),
        None => all,
    }
}

/// A stored event with its source's slug, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: Uuid,
    pub source_id: Uuid,
    pub source_slug: String,
    pub idempotency_key: String,
    /// Also the partition key of the event's deliveries.
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub event_type: Option<String>,
}

/// One event ([`GET_SQL`]); `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<EventRecord>> {
    let (from, to) = time_window(id);
    let Some(r) = client.query_opt(GET_SQL, &[&id, &from, &to]).await? else { return Ok(None) };
    Ok(Some(EventRecord {
        id: r.column(0)?,
        source_id: r.column(1)?,
        source_slug: r.column(2)?,
        idempotency_key: r.column(3)?,
        received_at: r.column(4)?,
        content_type: r.column(5)?,
        headers: r.column(6)?,
        body: r.column(7)?,
        event_type: r.column(8)?,
    }))
}

/// The deliveries of the event with this id, in id order ([`DELIVERIES_SQL`]).
pub async fn deliveries_of(client: &impl GenericClient, id: Uuid) -> StoreResult<Vec<DeliveryRow>> {
    let (from, _) = time_window(id);
    client.query(DELIVERIES_SQL, &[&id, &from]).await?.iter().map(DeliveryRow::read).collect()
}

/// One attempt of a delivery.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response_headers: serde_json::Value,
    pub response_excerpt: Option<Vec<u8>>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

/// Every attempt of these deliveries, by delivery and oldest first.
pub async fn attempts_of(client: &impl GenericClient, delivery_ids: &[Uuid]) -> StoreResult<Vec<AttemptRow>> {
    client
        .query(ATTEMPTS_SQL, &[&delivery_ids])
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                id: r.column(0)?,
                delivery_id: r.column(1)?,
                attempt: r.column(2)?,
                node_id: r.column(3)?,
                started_at: r.column(4)?,
                status: r.column(5)?,
                latency_ms: r.column(6)?,
                response_headers: r.column(7)?,
                response_excerpt: r.column(8)?,
                error_kind: r.column(9)?,
                error: r.column(10)?,
            })
        })
        .collect()
}

/// A stored event as a replay plans it again.
#[derive(Debug, Clone)]
pub struct ReplayableEvent {
    pub id: Uuid,
    pub source_id: Uuid,
    pub source_slug: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub event_type: Option<String>,
    /// Also the partition key of the event's deliveries.
    pub received_at: DateTime<Utc>,
}

/// A source's events received in `[from, to)` after the id `after` (from the first when `None`), oldest first, at
/// most `limit`: a bulk replay's next batch. The `(source_id, id)` index serves it, the time range pruning partitions
/// and bounding the ids (ADR-0024).
pub async fn of_source_after(
    client: &impl GenericClient,
    source_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<Uuid>,
    limit: i64,
) -> StoreResult<Vec<ReplayableEvent>> {
    client
        .query(
            "SELECT e.id, e.source_id, s.slug, e.headers, e.body, e.type, e.received_at
             FROM events e JOIN sources s ON s.id = e.source_id
             WHERE e.source_id = $1 AND e.received_at >= $2 AND e.received_at < $3
               AND e.id >= hookgate_v7_floor($2 - interval '1 minute')
               AND e.id < hookgate_v7_floor($3 + interval '1 minute')
               AND ($4::uuid IS NULL OR e.id > $4)
             ORDER BY e.id LIMIT $5",
            &[&source_id, &from, &to, &after, &limit],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ReplayableEvent {
                id: r.column(0)?,
                source_id: r.column(1)?,
                source_slug: r.column(2)?,
                headers: r.column(3)?,
                body: r.column(4)?,
                event_type: r.column(5)?,
                received_at: r.column(6)?,
            })
        })
        .collect()
}
