//! The `routes` table as the admin API reads and edits it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

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

fn read(row: &tokio_postgres::Row) -> Result<RouteRow, tokio_postgres::Error> {
    Ok(RouteRow {
        id: row.try_get(0)?,
        slug: row.try_get(1)?,
        source: row.try_get(2)?,
        destination: row.try_get(3)?,
        source_id: row.try_get(4)?,
        destination_id: row.try_get(5)?,
        filter: row.try_get(6)?,
        transform: row.try_get(7)?,
        enabled: row.try_get(8)?,
        declared: row.try_get(9)?,
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
    })
}

/// Every route, by slug.
pub async fn list(client: &impl GenericClient) -> Result<Vec<RouteRow>, tokio_postgres::Error> {
    client.query(&format!("{SELECT} ORDER BY r.slug"), &[]).await?.iter().map(read).collect()
}

/// One route; `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> Result<Option<RouteRow>, tokio_postgres::Error> {
    client.query_opt(&format!("{SELECT} WHERE r.id = $1"), &[&id]).await?.as_ref().map(read).transpose()
}

/// The ids of a source and a destination named by slug (each `None` when missing).
pub async fn resolve(
    client: &impl GenericClient,
    source: &str,
    destination: &str,
) -> Result<(Option<Uuid>, Option<Uuid>), tokio_postgres::Error> {
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
pub async fn create(client: &impl GenericClient, id: Uuid, r: &RouteFields<'_>) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO routes (id, slug, source_id, destination_id, filter, transform, enabled, declared)
             VALUES ($1, $2, $3, $4, $5, $6, $7, false)",
            &[&id, &r.slug, &r.source_id, &r.destination_id, &r.filter, &r.transform, &r.enabled],
        )
        .await
        .map(drop)
}

/// Locks a route for an edit; whether it is declared in the configuration (`None`: no such route).
pub async fn lock(client: &impl GenericClient, id: Uuid) -> Result<Option<bool>, tokio_postgres::Error> {
    client
        .query_opt("SELECT declared FROM routes WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// Replaces a route's fields.
pub async fn update(client: &impl GenericClient, id: Uuid, r: &RouteFields<'_>) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE routes SET slug = $2, source_id = $3, destination_id = $4, filter = $5, transform = $6,
                    enabled = $7, updated_at = now()
             WHERE id = $1",
            &[&id, &r.slug, &r.source_id, &r.destination_id, &r.filter, &r.transform, &r.enabled],
        )
        .await
        .map(drop)
}

/// Deletes a route no delivery refers to; `false` (nothing deleted) when deliveries refer to it.
pub async fn delete_unused(client: &impl GenericClient, id: Uuid) -> Result<bool, tokio_postgres::Error> {
    let used: bool =
        client.query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE route_id = $1)", &[&id]).await?.try_get(0)?;
    if used {
        return Ok(false);
    }
    client.execute("DELETE FROM routes WHERE id = $1", &[&id]).await?;
    Ok(true)
}
