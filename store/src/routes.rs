//! The `routes` table as the admin API reads and edits it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::error::{Columns, StoreResult};

/// A route with its source's and destination's slugs.
#[derive(Debug, Clone)]
pub struct RouteRow {
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

const SELECT: &str = "SELECT r.id, r.slug, s.slug, d.slug, r.source_id, r.destination_id, r.filter, r.transform, \
                      r.enabled, r.declared, r.created_at, r.updated_at \
                      FROM routes r JOIN sources s ON s.id = r.source_id JOIN destinations d ON d.id = r.destination_id";

fn read(row: &tokio_postgres::Row) -> StoreResult<RouteRow> {
    Ok(RouteRow {
        id: row.column(0)?,
        slug: row.column(1)?,
        source: row.column(2)?,
        destination: row.column(3)?,
        source_id: row.column(4)?,
        destination_id: row.column(5)?,
        filter: row.column(6)?,
        transform: row.column(7)?,
        enabled: row.column(8)?,
        declared: row.column(9)?,
        created_at: row.column(10)?,
        updated_at: row.column(11)?,
    })
}

/// Every route, by slug.
pub async fn list(client: &impl GenericClient) -> StoreResult<Vec<RouteRow>> {
    client.query(&format!("{SELECT} ORDER BY r.slug"), &[]).await?.iter().map(read).collect()
}

/// One route; `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<RouteRow>> {
    client.query_opt(&format!("{SELECT} WHERE r.id = $1"), &[&id]).await?.as_ref().map(read).transpose()
}

/// The ids of a source and a destination named by slug (each `None` when missing).
pub async fn resolve(
    client: &impl GenericClient,
    source: &str,
    destination: &str,
) -> StoreResult<(Option<Uuid>, Option<Uuid>)> {
    let source = crate::sources::id_by_slug(client, source).await?;
    let destination = crate::destinations::id_by_slug(client, destination).await?;
    Ok((source, destination))
}

/// A route's fields as the API sets them.
#[derive(Debug, Clone)]
pub struct RouteFields<'a> {
    pub slug: &'a str,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    pub filter: Option<&'a str>,
    pub transform: Option<&'a str>,
    pub enabled: bool,
}

/// Inserts a route made through the API (not declared).
pub async fn create(client: &impl GenericClient, id: Uuid, r: &RouteFields<'_>) -> StoreResult<()> {
    client
        .execute(
            "INSERT INTO routes (id, slug, source_id, destination_id, filter, transform, enabled, declared)
             VALUES ($1, $2, $3, $4, $5, $6, $7, false)",
            &[&id, &r.slug, &r.source_id, &r.destination_id, &r.filter, &r.transform, &r.enabled],
        )
        .await?;
    Ok(())
}

/// Locks a route for an edit; whether it is declared in the configuration (`None`: no such route).
pub async fn lock(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<bool>> {
    client
        .query_opt("SELECT declared FROM routes WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .map(|r| r.column(0))
        .transpose()
}

/// Replaces a route's fields.
pub async fn update(client: &impl GenericClient, id: Uuid, r: &RouteFields<'_>) -> StoreResult<()> {
    client
        .execute(
            "UPDATE routes SET slug = $2, source_id = $3, destination_id = $4, filter = $5, transform = $6,
                    enabled = $7, updated_at = now()
             WHERE id = $1",
            &[&id, &r.slug, &r.source_id, &r.destination_id, &r.filter, &r.transform, &r.enabled],
        )
        .await?;
    Ok(())
}

/// Deletes a route no delivery refers to; `false` (nothing deleted) when deliveries refer to it. Inserts of
/// deliveries wait until `tx` ends: the caller holds [`crate::lock_against_inserts`] on `deliveries` (ADR-0021).
pub async fn delete_unused(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> StoreResult<bool> {
    let used: bool =
        tx.query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE route_id = $1)", &[&id]).await?.column(0)?;
    if used {
        return Ok(false);
    }
    tx.execute("DELETE FROM routes WHERE id = $1", &[&id]).await?;
    Ok(true)
}
