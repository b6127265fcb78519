//! The `sources` table: the enabled sources as stored, the declared ones applied at start, the slug lookup, and the
//! expiry of rotated-out secrets.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::Pool;

/// A source as stored; its settings are JSON that the source model above the store reads and validates.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub id: Uuid,
    pub slug: String,
    pub max_body_bytes: i32,
    pub require_json: bool,
    pub idempotency: Value,
    pub verification: Value,
    pub options: Value,
    /// The secret a rotation replaced, valid until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
}

/// The enabled sources.
pub async fn load_enabled(pool: &Pool) -> anyhow::Result<Vec<SourceRow>> {
    let client = pool.get().await.context("Failed to get a connection to load sources")?;
    let rows = client
        .query(
            "SELECT id, slug, max_body_bytes, require_json, idempotency, verification, options, previous_secret,
                    previous_secret_until
             FROM sources WHERE enabled",
            &[],
        )
        .await
        .context("Failed to load sources")?;
    rows.iter()
        .map(|row| {
            Ok(SourceRow {
                id: row.try_get(0)?,
                slug: row.try_get(1)?,
                max_body_bytes: row.try_get(2)?,
                require_json: row.try_get(3)?,
                idempotency: row.try_get(4)?,
                verification: row.try_get(5)?,
                options: row.try_get(6)?,
                previous_secret: row.try_get(7)?,
                previous_secret_until: row.try_get(8)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .context("Failed to read a source row")
}

/// A source declared in the configuration, as it is stored.
#[derive(Debug, Clone)]
pub struct DeclaredSource<'a> {
    pub slug: &'a str,
    pub max_body_bytes: i32,
    pub require_json: bool,
    pub idempotency: Value,
    pub verification: Value,
    pub options: Value,
}

/// Upserts the declared sources by slug and disables declared sources no longer in the configuration (part of
/// [`crate::apply_declared`]'s transaction).
pub(crate) async fn apply_declared(
    tx: &deadpool_postgres::Transaction<'_>,
    declared: &[DeclaredSource<'_>],
) -> anyhow::Result<()> {
    for s in declared {
        tx.execute(
            "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, options, enabled,
                                  declared)
             VALUES ($1, $2, $3, $4, $5, $6, $7, true, true)
             ON CONFLICT (slug) DO UPDATE SET
                max_body_bytes = EXCLUDED.max_body_bytes, require_json = EXCLUDED.require_json,
                idempotency = EXCLUDED.idempotency, verification = EXCLUDED.verification, options = EXCLUDED.options,
                enabled = true, declared = true, updated_at = now()",
            &[
                &Uuid::now_v7(),
                &s.slug,
                &s.max_body_bytes,
                &s.require_json,
                &s.idempotency,
                &s.verification,
                &s.options,
            ],
        )
        .await
        .with_context(|| format!("Failed to apply source {}", s.slug))?;
    }
    let slugs: Vec<&str> = declared.iter().map(|s| s.slug).collect();
    tx.execute(
        "UPDATE sources SET enabled = false, updated_at = now() WHERE declared AND enabled AND slug <> ALL($1)",
        &[&slugs],
    )
    .await
    .context("Failed to disable sources removed from the configuration")?;
    Ok(())
}

/// The id of the source with this slug; `None` when there is none.
pub async fn id_by_slug(client: &impl GenericClient, slug: &str) -> Result<Option<Uuid>, tokio_postgres::Error> {
    client.query_opt("SELECT id FROM sources WHERE slug = $1", &[&slug]).await?.map(|r| r.try_get(0)).transpose()
}

/// Forgets the rotated-out secrets whose grace period is over; answers how many sources changed. The caller notifies
/// the catalog when any did.
pub async fn expire_previous_secrets(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE sources SET previous_secret = NULL, previous_secret_until = NULL, updated_at = now()
             WHERE previous_secret_until <= now()",
            &[],
        )
        .await
}
