//! Routes: CRUD. Filters and transforms must compile; source and destination are named by slug.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use hookgate_actors::catalog::RouteSpec;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ProblemBody;
use super::sources::{declared, IdPath};
use super::{notify_catalog, AdminError, AdminState};
use crate::sources::validate_slug;

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

const SELECT: &str = "SELECT r.id, r.slug, s.slug, d.slug, r.source_id, r.destination_id, r.filter, r.transform, \
                      r.enabled, r.declared, r.created_at, r.updated_at \
                      FROM routes r JOIN sources s ON s.id = r.source_id JOIN destinations d ON d.id = r.destination_id";

fn view(row: &Row) -> RouteView {
    RouteView {
        id: row.get(0),
        slug: row.get(1),
        source: row.get(2),
        destination: row.get(3),
        source_id: row.get(4),
        destination_id: row.get(5),
        filter: row.get(6),
        transform: row.get(7),
        enabled: row.get(8),
        declared: row.get(9),
        created_at: row.get(10),
        updated_at: row.get(11),
    }
}

fn validate(input: &RouteInput) -> Result<(), AdminError> {
    validate_slug(&input.slug).map_err(|e| AdminError::Invalid(e.into()))?;
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

/// (source id, destination id) of the slugs, or 422 naming the missing one.
async fn resolve(tx: &deadpool_postgres::Transaction<'_>, input: &RouteInput) -> Result<(Uuid, Uuid), AdminError> {
    let s = tx.query_opt("SELECT id FROM sources WHERE slug = $1", &[&input.source]).await?;
    let d = tx.query_opt("SELECT id FROM destinations WHERE slug = $1", &[&input.destination]).await?;
    match (s, d) {
        (Some(s), Some(d)) => Ok((s.get(0), d.get(0))),
        (None, _) => Err(AdminError::Invalid(format!("no source is named {:?}", input.source))),
        (_, None) => Err(AdminError::Invalid(format!("no destination is named {:?}", input.destination))),
    }
}

async fn fetch(client: &deadpool_postgres::Object, id: Uuid) -> Result<RouteView, AdminError> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE r.id = $1"), &[&id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no route has id {id}")))?;
    Ok(view(&row))
}

/// Lists routes.
#[utoipa::path(get, path = "/admin/v1/routes", tag = "routes", security(("bearer" = [])),
    responses((status = 200, body = Vec<RouteView>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let rows = client.query(&format!("{SELECT} ORDER BY r.slug"), &[]).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(view).collect::<Vec<_>>()))
}

/// Creates a route.
#[utoipa::path(post, path = "/admin/v1/routes", tag = "routes", security(("bearer" = [])), request_body = RouteInput,
    responses((status = 201, body = RouteView), (status = 409, body = ProblemBody), (status = 422, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(state: web::Data<AdminState>, input: web::Json<RouteInput>) -> Result<HttpResponse, AdminError> {
    validate(&input)?;
    let id = Uuid::now_v7();
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let (source, destination) = resolve(&tx, &input).await?;
    tx.execute(
        "INSERT INTO routes (id, slug, source_id, destination_id, filter, transform, enabled, declared)
         VALUES ($1, $2, $3, $4, $5, $6, $7, false)",
        &[&id, &input.slug, &source, &destination, &input.filter, &input.transform, &input.enabled],
    )
    .await?;
    notify_catalog(&tx, "admin:route").await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(fetch(&client, id).await?))
}

/// Reads one route.
#[utoipa::path(get, path = "/admin/v1/routes/{id}", tag = "routes", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = RouteView), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

async fn lock_editable(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> Result<(), AdminError> {
    let row = tx
        .query_opt("SELECT declared FROM routes WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no route has id {id}")))?;
    if row.get::<_, bool>(0) {
        return Err(declared("route"));
    }
    Ok(())
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
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    lock_editable(&tx, path.id).await?;
    let (source, destination) = resolve(&tx, &input).await?;
    tx.execute(
        "UPDATE routes SET slug = $2, source_id = $3, destination_id = $4, filter = $5, transform = $6, enabled = $7,
                updated_at = now()
         WHERE id = $1",
        &[&path.id, &input.slug, &source, &destination, &input.filter, &input.transform, &input.enabled],
    )
    .await?;
    notify_catalog(&tx, "admin:route").await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

/// Deletes a route that no delivery refers to (otherwise 409: disable it with PUT `enabled = false`).
#[utoipa::path(delete, path = "/admin/v1/routes/{id}", tag = "routes", security(("bearer" = [])), params(IdPath),
    responses((status = 204), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn delete(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    lock_editable(&tx, path.id).await?;
    let used: bool =
        tx.query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE route_id = $1)", &[&path.id]).await?.get(0);
    if used {
        return Err(AdminError::InUse("deliveries refer to this route; disable it instead".into()));
    }
    tx.execute("DELETE FROM routes WHERE id = $1", &[&path.id]).await?;
    notify_catalog(&tx, "admin:route").await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}
