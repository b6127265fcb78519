//! Events: the list (newest first, cursor = last id seen), one event with its deliveries and every attempt, and
//! single-event replay. A replay plans the event again against the current routes and inserts NEW deliveries; the
//! original deliveries and their attempts are never touched.

use actix_web::{web, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use hookgate_core::state::DeliveryState;
use hookgate_store::deliveries::{DeliveryRow, NewDelivery};
use hookgate_store::events as store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::sources::IdPath;
use super::{notify_deliveries, page_limit, AdminError, AdminState};

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this source (slug).
    pub source: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Only events received before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only events with at least one delivery in this state.
    pub status: Option<DeliveryState>,
    /// Only events of this type (from the source's type header or pointer, or the CloudEvents `type`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Only events for which this jq program (over `{body, headers, source, type}`, what route filters see) is
    /// truthy. A page then reads at most `FILTER_SCAN` (1,000) events: it may hold fewer than `limit` items and
    /// still have a `next_cursor`, where the next page goes on reading.
    pub filter: Option<String>,
    /// The `next_cursor` of the previous page: events older than this id.
    pub cursor: Option<Uuid>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
}

/// Events one page of a jq-filtered list reads at most.
pub const FILTER_SCAN: i64 = 1_000;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventSummary {
    pub id: Uuid,
    pub source_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    pub body_bytes: i32,
    /// The event's type, when its source names one.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Lists events, newest first, with cursor pagination.
#[utoipa::path(get, path = "/admin/v1/events", tag = "events", security(("bearer" = [])), params(EventQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>, query: web::Query<EventQuery>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let source_id: Option<Uuid> = match &query.source {
        Some(slug) => Some(
            hookgate_store::sources::id_by_slug(&client, slug)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no source is named {slug:?}")))?,
        ),
        None => None,
    };
    let limit = page_limit(query.limit);
    let program = match query.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(
            hookgate_core::jq::JqProgram::compile(f)
                .map_err(|e| AdminError::Invalid(format!("filter does not compile: {e}")))?,
        ),
        None => None,
    };
    let mut filter = store::EventFilter {
        source_id,
        from: query.from,
        to: query.to,
        status: query.status,
        event_type: query.event_type.as_deref(),
        before: query.cursor,
        limit: limit + 1,
    };
    let summary = |r: store::EventSummaryRow| EventSummary {
        id: r.id,
        source_id: r.source_id,
        received_at: r.received_at,
        content_type: r.content_type,
        body_bytes: r.body_bytes,
        event_type: r.event_type,
    };
    let Some(program) = program else {
        let mut items: Vec<EventSummary> = store::list(&client, &filter).await?.into_iter().map(summary).collect();
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = if more { items.last().map(|e| e.id) } else { None };
        return Ok(HttpResponse::Ok().json(EventPage { items, next_cursor }));
    };
    // Read pages of candidates and keep those the program accepts, until the page is full (and one more is known
    // to exist), the candidates end, or FILTER_SCAN events were read (then the next page goes on from there).
    let (mut items, mut scanned, mut more) = (Vec::new(), 0i64, false);
    let mut last_read = None;
    'pages: loop {
        filter.limit = (FILTER_SCAN - scanned).min(200);
        let rows = store::list(&client, &filter).await?;
        let exhausted = (rows.len() as i64) < filter.limit;
        for row in rows {
            scanned += 1;
            last_read = Some(row.id);
            filter.before = Some(row.id);
            let Some(event) = store::fetch(&client, row.id).await? else { continue };
            let input = StoredEvent::from(event).jq_input();
            let outcome = hookgate_core::jq::evaluate(
                Some(program.clone()),
                None,
                std::sync::Arc::new(input),
                state.jq_timeout,
                state.jq_max_output,
            )
            .await;
            match outcome {
                hookgate_core::jq::RouteOutcome::Deliver(_) => {}
                hookgate_core::jq::RouteOutcome::Unavailable(why) => {
                    return Err(AdminError::Busy(format!("filter: {why}")))
                }
                hookgate_core::jq::RouteOutcome::Skip | hookgate_core::jq::RouteOutcome::Failed(_) => continue,
            }
            if items.len() as i64 == limit {
                more = true;
                break 'pages;
            }
            items.push(summary(row));
        }
        if exhausted {
            break;
        }
        if scanned >= FILTER_SCAN {
            more = true;
            break;
        }
    }
    let next_cursor = if !more {
        None
    } else if items.len() as i64 == limit {
        items.last().map(|e| e.id)
    } else {
        last_read
    };
    Ok(HttpResponse::Ok().json(EventPage { items, next_cursor }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Body {
    /// `text` (valid UTF-8) or `base64`.
    pub encoding: String,
    pub data: String,
}

impl Body {
    pub fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self { encoding: "text".into(), data: text.to_owned() },
            Err(_) => Self { encoding: "base64".into(), data: base64::engine::general_purpose::STANDARD.encode(bytes) },
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub id: Uuid,
    pub attempt: i32,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    #[schema(value_type = Object)]
    pub response_headers: serde_json::Value,
    pub response_excerpt: Option<Body>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub route_id: Uuid,
    pub destination_id: Uuid,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every attempt, oldest first (only in an event's detail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptView>>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(r: DeliveryRow) -> Self {
        Self {
            id: r.id,
            event_id: r.event_id,
            route_id: r.route_id,
            destination_id: r.destination_id,
            state: r.state,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            attempt_log: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventDetail {
    pub id: Uuid,
    pub source_id: Uuid,
    pub source: String,
    pub idempotency_key: String,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    pub body: Body,
    pub deliveries: Vec<DeliveryView>,
}

/// One event with its headers, body, deliveries and every attempt.
#[utoipa::path(get, path = "/admin/v1/events/{id}", tag = "events", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = EventDetail), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let event = store::fetch(&client, path.id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no event has id {}", path.id)))?;
    let mut deliveries: Vec<DeliveryView> =
        store::deliveries_of(&client, path.id).await?.into_iter().map(DeliveryView::from).collect();
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let mut attempts: std::collections::HashMap<Uuid, Vec<AttemptView>> = Default::default();
    for r in store::attempts_of(&client, &ids).await? {
        attempts.entry(r.delivery_id).or_default().push(AttemptView {
            id: r.id,
            attempt: r.attempt,
            node_id: r.node_id,
            started_at: r.started_at,
            status: r.status,
            latency_ms: r.latency_ms,
            response_headers: r.response_headers,
            response_excerpt: r.response_excerpt.as_deref().map(Body::of),
            error_kind: r.error_kind,
            error: r.error,
        });
    }
    for d in &mut deliveries {
        d.attempt_log = Some(attempts.remove(&d.id).unwrap_or_default());
    }
    Ok(HttpResponse::Ok().json(EventDetail {
        id: event.id,
        source_id: event.source_id,
        source: event.source_slug,
        idempotency_key: event.idempotency_key,
        received_at: event.received_at,
        content_type: event.content_type,
        headers: event.headers,
        body: Body::of(&event.body),
        deliveries,
    }))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    /// Destination slugs; absent: every route of the event's source.
    #[serde(default)]
    pub destinations: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayResult {
    /// The new deliveries (state `pending`, or `failed` when a filter or transform failed).
    pub deliveries: Vec<DeliveryView>,
}

/// Resolves destination slugs to ids (422 naming the first unknown one).
pub async fn destination_ids(
    client: &deadpool_postgres::Object,
    slugs: &Option<Vec<String>>,
) -> Result<Option<Vec<Uuid>>, AdminError> {
    let Some(slugs) = slugs else { return Ok(None) };
    let found = hookgate_store::destinations::ids_by_slugs(client, slugs).await?;
    if let Some(missing) = slugs.iter().find(|s| !found.iter().any(|(_, slug)| slug == *s)) {
        return Err(AdminError::Invalid(format!("no destination is named {missing:?}")));
    }
    Ok(Some(found.into_iter().map(|(id, _)| id).collect()))
}

/// One stored event, as replay needs it.
pub struct StoredEvent {
    pub id: Uuid,
    pub source_id: Uuid,
    pub source_slug: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub event_type: Option<String>,
    /// Also the partition key of the event's deliveries (one clock for both).
    pub received_at: DateTime<Utc>,
}

impl From<store::EventRecord> for StoredEvent {
    fn from(e: store::EventRecord) -> Self {
        Self {
            id: e.id,
            source_id: e.source_id,
            source_slug: e.source_slug,
            headers: e.headers,
            body: e.body,
            event_type: e.event_type,
            received_at: e.received_at,
        }
    }
}

impl From<store::ReplayableEvent> for StoredEvent {
    fn from(e: store::ReplayableEvent) -> Self {
        Self {
            id: e.id,
            source_id: e.source_id,
            source_slug: e.source_slug,
            headers: e.headers,
            body: e.body,
            event_type: e.event_type,
            received_at: e.received_at,
        }
    }
}

impl StoredEvent {
    /// What route filters and transforms see, exactly as at ingest.
    pub fn jq_input(&self) -> serde_json::Value {
        hookgate_core::jq::stored_route_input_from_bytes(
            &self.source_slug,
            &self.headers,
            &self.body,
            self.event_type.as_deref(),
        )
    }
}

/// Plans `event` against the current routes (restricted to `only` destinations) and inserts the new deliveries.
pub async fn replay_into(
    planner: &ReplayPlanner<'_>,
    tx: &deadpool_postgres::Transaction<'_>,
    event: &StoredEvent,
    only: Option<&[Uuid]>,
) -> Result<Vec<Uuid>, AdminError> {
    let catalog = planner.catalog.get();
    let planned = catalog.plan(event.source_id, || event.jq_input(), planner.jq_timeout, planner.jq_max_output).await;
    let planned: Vec<_> =
        planned.into_iter().filter(|p| only.is_none_or(|only| only.contains(&p.destination_id))).collect();
    let rows: Vec<NewDelivery<'_>> = planned
        .iter()
        .map(|p| NewDelivery {
            id: p.id,
            event_id: event.id,
            route_id: p.route_id,
            destination_id: p.destination_id,
            state: if p.failed.is_some() { DeliveryState::Failed } else { DeliveryState::Pending },
            payload: if p.failed.is_some() { None } else { p.payload.as_deref() },
            // No NUL: the plan strips it, as PostgreSQL text cannot hold one.
            last_error: p.failed.as_deref(),
            created_at: event.received_at,
            needs_routing: p.deferred,
            // Replayed deliveries are claimed by whichever node has room (NOTIFY at COMMIT).
            lease: None,
        })
        .collect();
    // A route or destination deleted since the catalog was read has none (ADR-0021).
    let inserted = hookgate_store::deliveries::insert_planned(tx, &rows).await?;
    let ids = planned.iter().map(|p| p.id).filter(|id| inserted.ids.contains(id)).collect();
    Ok(ids)
}

/// What planning a replay needs: the routing snapshot and the jq limits.
pub struct ReplayPlanner<'a> {
    pub catalog: &'a hookgate_actors::catalog::SharedCatalog,
    pub jq_timeout: std::time::Duration,
    pub jq_max_output: usize,
}

impl<'a> ReplayPlanner<'a> {
    pub fn of(state: &'a AdminState) -> Self {
        Self { catalog: &state.catalog, jq_timeout: state.jq_timeout, jq_max_output: state.jq_max_output }
    }
}

/// Replays one event to all its routes, or to the chosen destinations: new deliveries, original attempts untouched.
#[utoipa::path(post, path = "/admin/v1/events/{id}/replay", tag = "replay", security(("bearer" = [])), params(IdPath),
    request_body(content = Option<ReplayInput>),
    responses((status = 201, body = ReplayResult), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn replay(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: Option<web::Json<ReplayInput>>,
) -> Result<HttpResponse, AdminError> {
    let mut client = hookgate_store::connect(&state.pool).await?;
    let only = destination_ids(&client, &input.map(|i| i.into_inner()).unwrap_or_default().destinations).await?;
    let event = StoredEvent::from(
        store::fetch(&client, path.id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no event has id {}", path.id)))?,
    );
    let tx = hookgate_store::begin(&mut client).await?;
    let ids = replay_into(&ReplayPlanner::of(&state), &tx, &event, only.as_deref()).await?;
    notify_deliveries(&tx).await?;
    hookgate_store::commit(tx).await?;
    let rows = hookgate_store::deliveries::by_ids(&client, &ids).await?;
    Ok(HttpResponse::Created().json(ReplayResult { deliveries: rows.into_iter().map(DeliveryView::from).collect() }))
}
