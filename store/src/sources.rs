//! The `sources` table: the enabled sources as the ingest snapshot loads them, the declared ones applied at start,
//! the admin API's reads and edits, the slug lookup, and the expiry of rotated-out secrets.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use hookgate_core::source::{InvalidSource, SourceConfig, SourceOptions};

use crate::error::{Columns, StoreResult};
use crate::Pool;

/// The enabled sources, for the ingest snapshot (with the secret a rotation replaced, while it is valid).
pub async fn load_enabled(pool: &Pool) -> anyhow::Result<Vec<SourceRecord>> {
    let client = pool.get().await.context("Failed to get a connection to load sources")?;
    let rows = client.query(&format!("{RECORD} WHERE enabled"), &[]).await.context("Failed to load sources")?;
    rows.iter().map(record).collect::<StoreResult<_>>().context("Failed to read a source row")
}

/// A source's settings as stored, whoever wrote them (the configuration or the admin API).
#[derive(Clone)]
pub struct SourceSettings<'a> {
    pub slug: &'a str,
    pub max_body_bytes: i32,
    pub require_json: bool,
    pub idempotency: Value,
    pub verification: Value,
    pub options: Value,
    pub enabled: bool,
}

impl<'a> SourceSettings<'a> {
    /// A source as it is stored: the idempotency key's and the event type's defaults applied, the options beside.
    pub fn of(source: &'a SourceConfig) -> Result<Self, InvalidSource> {
        let json = |v: Result<Value, serde_json::Error>| v.map_err(|e| InvalidSource(e.to_string()));
        Ok(Self {
            slug: &source.slug,
            max_body_bytes: i32::try_from(source.max_body_bytes)
                .map_err(|_| InvalidSource("max_body_bytes is too large".into()))?,
            require_json: source.require_json,
            idempotency: json(serde_json::to_value(source.effective_idempotency()))?,
            verification: json(serde_json::to_value(&source.verification))?,
            options: json(serde_json::to_value(source.options()))?,
            enabled: source.enabled,
        })
    }
}

/// Upserts the declared sources by slug and disables declared sources no longer in the configuration (part of
/// [`crate::apply_declared`]'s transaction).
pub(crate) async fn apply_declared(
    tx: &deadpool_postgres::Transaction<'_>,
    declared: &[SourceSettings<'_>],
) -> anyhow::Result<()> {
    for s in declared {
        tx.execute(
            "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, options, enabled,
                                  declared)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
             ON CONFLICT (slug) DO UPDATE SET
                max_body_bytes = EXCLUDED.max_body_bytes, require_json = EXCLUDED.require_json,
                idempotency = EXCLUDED.idempotency, verification = EXCLUDED.verification, options = EXCLUDED.options,
                enabled = EXCLUDED.enabled, declared = true, updated_at = now(),
                previous_secret = NULL, previous_secret_until = NULL",
            &[
                &Uuid::now_v7(),
                &s.slug,
                &s.max_body_bytes,
                &s.require_json,
                &s.idempotency,
                &s.verification,
                &s.options,
                &s.enabled,
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

/// A source as stored; its settings are JSON that the source model above the store reads and validates (the admin
/// API redacts the secrets inside `verification` before it shows anything).
#[derive(Clone)]
pub struct SourceRecord {
    pub id: Uuid,
    pub slug: String,
    pub max_body_bytes: i32,
    pub require_json: bool,
    pub idempotency: Value,
    pub verification: Value,
    pub options: Value,
    pub enabled: bool,
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The secret a rotation replaced, valid until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
}

const RECORD: &str = "SELECT id, slug, max_body_bytes, require_json, idempotency, verification, options, enabled, \
                      declared, created_at, updated_at, previous_secret, previous_secret_until FROM sources";

fn record(row: &tokio_postgres::Row) -> StoreResult<SourceRecord> {
    Ok(SourceRecord {
        id: row.column(0)?,
        slug: row.column(1)?,
        max_body_bytes: row.column(2)?,
        require_json: row.column(3)?,
        idempotency: row.column(4)?,
        verification: row.column(5)?,
        options: row.column(6)?,
        enabled: row.column(7)?,
        declared: row.column(8)?,
        created_at: row.column(9)?,
        updated_at: row.column(10)?,
        previous_secret: row.column(11)?,
        previous_secret_until: row.column(12)?,
    })
}

impl SourceRecord {
    /// The stored source as the model, secrets included (the admin API redacts what it shows).
    pub fn model(&self) -> Result<SourceConfig, serde_json::Error> {
        let options: SourceOptions = serde_json::from_value(self.options.clone())?;
        Ok(SourceConfig {
            slug: self.slug.clone(),
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(0),
            require_json: self.require_json,
            idempotency: Some(serde_json::from_value(self.idempotency.clone())?),
            event_type: options.event_type,
            dedupe_window_secs: options.dedupe_window_secs,
            cloudevents: options.cloudevents,
            allowed_origins: options.allowed_origins,
            allowed_rate: options.allowed_rate,
            verification: serde_json::from_value(self.verification.clone())?,
            enabled: self.enabled,
        })
    }
}

/// Every source, by slug.
pub async fn list(client: &impl GenericClient) -> StoreResult<Vec<SourceRecord>> {
    client.query(&format!("{RECORD} ORDER BY slug"), &[]).await?.iter().map(record).collect()
}

/// One source; `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<SourceRecord>> {
    client.query_opt(&format!("{RECORD} WHERE id = $1"), &[&id]).await?.as_ref().map(record).transpose()
}

/// One source, locked until the transaction ends (an edit reads, decides, then writes).
pub async fn fetch_for_update(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> StoreResult<Option<SourceRecord>> {
    tx.query_opt(&format!("{RECORD} WHERE id = $1 FOR UPDATE"), &[&id]).await?.as_ref().map(record).transpose()
}

/// Stores a new source created through the admin API (not declared).
pub async fn insert(tx: &deadpool_postgres::Transaction<'_>, id: Uuid, s: &SourceSettings<'_>) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, options, enabled,
                              declared)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false)",
        &[&id, &s.slug, &s.max_body_bytes, &s.require_json, &s.idempotency, &s.verification, &s.options, &s.enabled],
    )
    .await?;
    Ok(())
}

/// Replaces a source's settings; `end_rotation` forgets a rotated-out secret still in its grace period (the new
/// settings name other secrets, or another kind, that the old secret does not belong to).
pub async fn update(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    s: &SourceSettings<'_>,
    end_rotation: bool,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE sources SET slug = $2, max_body_bytes = $3, require_json = $4, idempotency = $5, verification = $6,
                options = $7, enabled = $8, updated_at = now(),
                previous_secret = CASE WHEN $9 THEN NULL ELSE previous_secret END,
                previous_secret_until = CASE WHEN $9 THEN NULL ELSE previous_secret_until END
         WHERE id = $1",
        &[
            &id,
            &s.slug,
            &s.max_body_bytes,
            &s.require_json,
            &s.idempotency,
            &s.verification,
            &s.options,
            &s.enabled,
            &end_rotation,
        ],
    )
    .await?;
    Ok(())
}

/// Which of these sources exist (as committed now).
pub async fn existing(client: &impl GenericClient, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
    let rows = client.query("SELECT id FROM sources WHERE id = ANY($1)", &[&ids]).await?;
    rows.iter().map(|r| r.column(0)).collect()
}

/// Whether anything refers to the source: events, routes or replay jobs. Before a delete, the caller holds
/// [`crate::lock_against_inserts`] on `events`: no foreign key guards `events.source_id` (ADR-0021), so a source is
/// deleted only after this has found no event while no insert was in flight, and an event is inserted only while its
/// source exists.
pub async fn in_use(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> StoreResult<bool> {
    tx.query_one(
        "SELECT EXISTS (SELECT 1 FROM events WHERE source_id = $1)
             OR EXISTS (SELECT 1 FROM routes WHERE source_id = $1)
             OR EXISTS (SELECT 1 FROM replay_jobs WHERE source_id = $1)",
        &[&id],
    )
    .await?
    .column(0)
}

/// Deletes a source and the idempotency keys it remembers.
pub async fn delete(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> StoreResult<()> {
    tx.execute("DELETE FROM event_keys WHERE source_id = $1", &[&id]).await?;
    tx.execute("DELETE FROM sources WHERE id = $1", &[&id]).await?;
    Ok(())
}

/// Stores a rotated verification; `previous` stays accepted until `until`.
pub async fn rotate(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    verification: &Value,
    previous: &str,
    until: DateTime<Utc>,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE sources SET verification = $2, previous_secret = $3, previous_secret_until = $4, updated_at = now()
         WHERE id = $1",
        &[&id, verification, &previous, &until],
    )
    .await?;
    Ok(())
}

/// The id of the source with this slug; `None` when there is none.
pub async fn id_by_slug(client: &impl GenericClient, slug: &str) -> StoreResult<Option<Uuid>> {
    client.query_opt("SELECT id FROM sources WHERE slug = $1", &[&slug]).await?.map(|r| r.column(0)).transpose()
}

/// Forgets the rotated-out secrets whose grace period is over; answers how many sources changed. The caller notifies
/// the catalog when any did.
pub async fn expire_previous_secrets(client: &impl GenericClient) -> StoreResult<u64> {
    Ok(client
        .execute(
            "UPDATE sources SET previous_secret = NULL, previous_secret_until = NULL, updated_at = now()
             WHERE previous_secret_until <= now()",
            &[],
        )
        .await?)
}

/// The `Debug` of the source rows: their slug and id, never their `verification` (it holds the secrets) or a previous
/// secret.
macro_rules! debug_without_secrets {
    ($($row:ty),*) => {$(
        impl std::fmt::Debug for $row {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($row)).field("slug", &self.slug).field("verification", &"[REDACTED]").finish()
            }
        }
    )*};
}

debug_without_secrets!(SourceSettings<'_>, SourceRecord);
