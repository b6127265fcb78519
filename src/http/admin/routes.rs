//! Routes: CRUD. Filters and transforms must compile; source and destination are named by slug. `POST /routes/test`
//! evaluates a filter and a transform against a stored event, as a route would, without saving anything.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use std::sync::Arc;

use hookgate_core::catalog::RouteSpec;
use hookgate_core::jq::{evaluate, RouteOutcome};
use hookgate_core::notification::{is_reserved, SYSTEM_SLUG};
use hookgate_core::source::validate_slug;
use hookgate_store::routes as store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ProblemBody;
use super::sources::{refused, IdPath};
use super::{notify_catalog, AdminError, AdminState};

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteView {
    pub id: Uuid,
    pub slug: String,
    pub source: String,
    pub destination: String,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    pub filter: Option<String>,
    pub transform: Option<String>,
    pub enabled: bool,
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    pub slug: String,
    /// Source slug.
    pub source: String,
    /// Destination slug.
    pub destination: String,
    /// jq program over `{body, headers, source, type}`; delivered when its first output is truthy.
    #[serde(default)]
    pub filter: Option<String>,
    /// jq program over the same input; its first output is the delivered body.
    #[serde(default)]
    pub transform: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl From<store::RouteRow> for RouteView {
    fn from(r: store::RouteRow) -> Self {
        Self {
            id: r.id,
            slug: r.slug,
            source: r.source,
            destination: r.destination,
            source_id: r.source_id,
            destination_id: r.destination_id,
            filter: r.filter,
            transform: r.transform,
            enabled: r.enabled,
            declared: r.declared,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn validate(input: &RouteInput) -> Result<(), AdminError> {
    validate_slug(&input.slug).map_err(|e| AdminError::Invalid(e.into()))?;
    if is_reserved(&input.slug) || is_reserved(&input.source) {
        return Err(AdminError::Invalid(format!(
            "{SYSTEM_SLUG:?} is reserved for hookgate's own notifications (as a route's slug and as its source)"
        )));
    }
    let too_long = |p: &Option<String>| p.as_ref().is_some_and(|p| p.len() > 64 * 1024);
    if too_long(&input.filter) || too_long(&input.transform) {
        return Err(AdminError::Invalid("filter and transform are limited to 64 KiB".into()));
    }
    let spec = RouteSpec {
        slug: input.slug.clone(),
        source: input.source.clone(),
        destination: input.destination.clone(),
        filter: input.filter.clone(),
        transform: input.transform.clone(),
    };
    spec.compile().map(|_| ()).map_err(AdminError::Invalid)
}

/// The route's fields, its source and destination resolved, or 422 naming the missing one.
async fn fields<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    input: &'a RouteInput,
) -> Result<store::RouteFields<'a>, AdminError> {
    match store::resolve(tx, &input.source, &input.destination).await? {
        (Some(source_id), Some(destination_id)) => Ok(store::RouteFields {
            slug: &input.slug,
            source_id,
            destination_id,
            filter: input.filter.as_deref(),
            transform: input.transform.as_deref(),
            enabled: input.enabled,
        }),
        (None, _) => Err(AdminError::Invalid(format!("no source is named {:?}", input.source))),
        (_, None) => Err(AdminError::Invalid(format!("no destination is named {:?}", input.destination))),
    }
}

async fn fetch(client: &deadpool_postgres::Object, id: Uuid) -> Result<RouteView, AdminError> {
    store::fetch(client, id)
        .await?
        .map(RouteView::from)
        .ok_or_else(|| AdminError::NotFound(format!("no route has id {id}")))
}

/// Lists routes.
#[utoipa::path(get, path = "/admin/v1/routes", tag = "routes", security(("bearer" = [])),
    responses((status = 200, body = Vec<RouteView>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let rows = store::list(&client).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(RouteView::from).collect::<Vec<_>>()))
}

/// Creates a route.
#[utoipa::path(post, path = "/admin/v1/routes", tag = "routes", security(("bearer" = [])), request_body = RouteInput,
    responses((status = 201, body = RouteView), (status = 409, body = ProblemBody), (status = 422, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(state: web::Data<AdminState>, input: web::Json<RouteInput>) -> Result<HttpResponse, AdminError> {
    validate(&input)?;
    let id = Uuid::now_v7();
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    store::create(&tx, id, &fields(&tx, &input).await?).await?;
    notify_catalog(&tx, "admin:route").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Created().json(fetch(&client, id).await?))
}

/// Reads one route.
#[utoipa::path(get, path = "/admin/v1/routes/{id}", tag = "routes", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = RouteView), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

async fn lock_editable(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> Result<(), AdminError> {
    match store::lock(tx, id).await? {
        None => Err(AdminError::NotFound(format!("no route has id {id}"))),
        Some(true) => Err(refused("route", id)),
        Some(false) => Ok(()),
    }
}

/// Replaces a route.
#[utoipa::path(put, path = "/admin/v1/routes/{id}", tag = "routes", security(("bearer" = [])), params(IdPath),
    request_body = RouteInput,
    responses((status = 200, body = RouteView), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn update(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: web::Json<RouteInput>,
) -> Result<HttpResponse, AdminError> {
    validate(&input)?;
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    lock_editable(&tx, path.id).await?;
    store::update(&tx, path.id, &fields(&tx, &input).await?).await?;
    notify_catalog(&tx, "admin:route").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

/// Deletes a route that no delivery refers to (otherwise 409: disable it with PUT `enabled = false`).
#[utoipa::path(delete, path = "/admin/v1/routes/{id}", tag = "routes", security(("bearer" = [])), params(IdPath),
    responses((status = 204), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn delete(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    super::lock_before_delete(&tx, "deliveries").await?;
    lock_editable(&tx, path.id).await?;
    if !store::delete_unused(&tx, path.id).await? {
        return Err(AdminError::InUse("deliveries refer to this route; disable it instead".into()));
    }
    notify_catalog(&tx, "admin:route").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// What `POST /routes/test` evaluates: a stored event, and the filter and transform a route would have.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTestInput {
    /// A stored event (its source, type, stored headers and body make the programs' input).
    pub event_id: Uuid,
    /// jq program over `{body, headers, source, type}`; the event matches when its first output is truthy.
    #[serde(default)]
    pub filter: Option<String>,
    /// jq program over the same input; its first output is what would be delivered.
    #[serde(default)]
    pub transform: Option<String>,
}

/// What a route with this filter and transform would make of the event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouteTestResult {
    /// Whether the filter takes the event (no filter takes every event); false when an evaluation failed.
    pub matched: bool,
    /// The transform's output, what would be delivered; null without a transform (the body is delivered as it
    /// came), when the event does not match, or when an evaluation failed.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// Why an evaluation failed (a runtime error, an output over `delivery.jq_max_output_bytes`) or was not
    /// decided (over `delivery.jq_timeout_ms`); null otherwise.
    pub error: Option<String>,
}

/// Tests a filter and a transform against a stored event before saving them in a route, evaluated as a route
/// would (same input, same time and output bounds). Changes nothing, so a `read` token may call it.
#[utoipa::path(post, path = "/admin/v1/routes/test", tag = "routes", security(("bearer" = [])),
    request_body = RouteTestInput,
    responses((status = 200, body = RouteTestResult), (status = 404, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn test(state: web::Data<AdminState>, input: web::Json<RouteTestInput>) -> Result<HttpResponse, AdminError> {
    let input = input.into_inner();
    let spec = RouteSpec {
        slug: "test".into(),
        source: String::new(),
        destination: String::new(),
        filter: input.filter,
        transform: input.transform,
    };
    let too_long = |p: &Option<String>| p.as_ref().is_some_and(|p| p.len() > 64 * 1024);
    if too_long(&spec.filter) || too_long(&spec.transform) {
        return Err(AdminError::Invalid("filter and transform are limited to 64 KiB".into()));
    }
    let (filter, transform) = spec.compile().map_err(AdminError::Invalid)?;
    let client = hookgate_store::connect(&state.pool).await?;
    let record = hookgate_store::events::fetch(&client, input.event_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no event has id {}", input.event_id)))?;
    let event = super::events::StoredEvent::from(record);
    let outcome = evaluate(filter, transform, Arc::new(event.jq_input()), state.jq_timeout, state.jq_max_output).await;
    let result = match outcome {
        RouteOutcome::Skip => RouteTestResult { matched: false, output: None, error: None },
        RouteOutcome::Deliver(None) => RouteTestResult { matched: true, output: None, error: None },
        RouteOutcome::Deliver(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(v) => RouteTestResult { matched: true, output: Some(v), error: None },
            Err(e) => RouteTestResult { matched: true, output: None, error: Some(format!("transform output: {e}")) },
        },
        RouteOutcome::Failed(why) | RouteOutcome::Unavailable(why) => {
            RouteTestResult { matched: false, output: None, error: Some(why) }
        }
    };
    Ok(HttpResponse::Ok().json(result))
}
