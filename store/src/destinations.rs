//! The `destinations` table as the admin API reads and edits it (settings, signing secrets, state), and the health
//! a destination's deliveries and attempts show.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use hookgate_core::state::DestinationState;
use serde_json::Value;
use uuid::Uuid;

use crate::catalog::DestinationTlsColumns;
use crate::error::{Columns, StoreResult};

/// A destination with every column the admin API shows.
#[derive(Debug, Clone)]
pub struct DestinationRecord {
    pub id: Uuid,
    pub slug: String,
    pub url: String,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    /// The retry policy, as stored.
    pub retry: Value,
    pub fifo: bool,
    pub state: String,
    pub disabled_reason: Option<String>,
    /// The secrets that sign each delivery now (an array of strings).
    pub signing_secrets: Value,
    /// Rotated-out secrets, each still signing until its `until` (an array of `{secret, until}`).
    pub retiring_secrets: Value,
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Headers sent on every attempt (an object of strings).
    pub headers: Value,
    /// Extra trusted CA certificates (PEM).
    pub tls_ca_pem: Option<String>,
    /// The client certificate chain (PEM).
    pub tls_cert_pem: Option<String>,
    /// Whether a client key is stored (the key itself is never read here).
    pub has_tls_key: bool,
    /// The ed25519 signing keys (an array of `whsk_…` strings): secrets, for their public keys only.
    pub signing_keys: Value,
}

const COLUMNS: &str = "id, slug, url, timeout_ms, max_in_flight, rate_limit, retry, fifo, state, disabled_reason, \
                       signing_secrets, retiring_secrets, declared, created_at, updated_at, headers, tls_ca_pem, \
                       tls_cert_pem, tls_key_pem IS NOT NULL, signing_keys";

fn read(row: &tokio_postgres::Row) -> StoreResult<DestinationRecord> {
    Ok(DestinationRecord {
        id: row.column(0)?,
        slug: row.column(1)?,
        url: row.column(2)?,
        timeout_ms: row.column(3)?,
        max_in_flight: row.column(4)?,
        rate_limit: row.column(5)?,
        retry: row.column(6)?,
        fifo: row.column(7)?,
        state: row.column(8)?,
        disabled_reason: row.column(9)?,
        signing_secrets: row.column(10)?,
        retiring_secrets: row.column(11)?,
        declared: row.column(12)?,
        created_at: row.column(13)?,
        updated_at: row.column(14)?,
        headers: row.column(15)?,
        tls_ca_pem: row.column(16)?,
        tls_cert_pem: row.column(17)?,
        has_tls_key: row.column(18)?,
        signing_keys: row.column(19)?,
    })
}

/// Every destination, by slug.
pub async fn list(client: &impl GenericClient) -> StoreResult<Vec<DestinationRecord>> {
    client.query(&format!("SELECT {COLUMNS} FROM destinations ORDER BY slug"), &[]).await?.iter().map(read).collect()
}

/// One destination; `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<DestinationRecord>> {
    client
        .query_opt(&format!("SELECT {COLUMNS} FROM destinations WHERE id = $1"), &[&id])
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// The id of the destination with this slug; `None` when there is none.
pub async fn id_by_slug(client: &impl GenericClient, slug: &str) -> StoreResult<Option<Uuid>> {
    client.query_opt("SELECT id FROM destinations WHERE slug = $1", &[&slug]).await?.map(|r| r.column(0)).transpose()
}

/// The destinations named by these slugs, as (id, slug); a slug no destination has is absent from the answer.
pub async fn ids_by_slugs(client: &impl GenericClient, slugs: &[String]) -> StoreResult<Vec<(Uuid, String)>> {
    client
        .query("SELECT id, slug FROM destinations WHERE slug = ANY($1)", &[&slugs])
        .await?
        .iter()
        .map(|r| Ok((r.column(0)?, r.column(1)?)))
        .collect()
}

/// A destination's settings as the API sets them (its secrets and state are set apart).
#[derive(Debug, Clone)]
pub struct DestinationFields<'a> {
    pub slug: &'a str,
    pub url: &'a str,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    /// The retry policy, as stored.
    pub retry: &'a Value,
    pub fifo: bool,
    /// Headers sent on every attempt (an object of strings).
    pub headers: &'a Value,
    /// The destination's own TLS material; `None` keeps what is stored (on update) or sets none (on create).
    pub tls: Option<&'a DestinationTlsColumns>,
    /// ed25519 signing keys (an array of `whsk_…` strings); `None` keeps what is stored (on update) or sets none
    /// (on create).
    pub signing_keys: Option<&'a Value>,
}

/// Inserts an active destination made through the API (not declared), signing with `signing_secrets` (an array of
/// strings).
pub async fn create(
    client: &impl GenericClient,
    id: Uuid,
    d: &DestinationFields<'_>,
    signing_secrets: &Value,
) -> StoreResult<()> {
    client
        .execute(
            "INSERT INTO destinations (id, slug, url, timeout_ms, max_in_flight, rate_limit, retry, signing_secrets, fifo,
                                       state, declared, headers, tls_ca_pem, tls_cert_pem, tls_key_pem, signing_keys)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', false, $10, $11, $12, $13,
                     COALESCE($14, '[]'::jsonb))",
            &[
                &id,
                &d.slug,
                &d.url,
                &d.timeout_ms,
                &d.max_in_flight,
                &d.rate_limit,
                &d.retry,
                &signing_secrets,
                &d.fifo,
                &d.headers,
                &d.tls.and_then(|t| t.ca_pem.as_deref()),
                &d.tls.and_then(|t| t.cert_pem.as_deref()),
                &d.tls.and_then(|t| t.key()),
                &d.signing_keys,
            ],
        )
        .await?;
    Ok(())
}

/// What an edit of a destination reads of it, the row locked until the transaction ends.
#[derive(Debug, Clone)]
pub struct LockedDestination {
    /// Declared in the configuration (which wins at every start).
    pub declared: bool,
    pub signing_secrets: Value,
    pub retiring_secrets: Value,
}

/// Locks a destination for an edit; `None` when there is none with this id.
pub async fn lock(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<LockedDestination>> {
    let Some(row) = client
        .query_opt(
            "SELECT declared, signing_secrets, retiring_secrets FROM destinations WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(LockedDestination {
        declared: row.column(0)?,
        signing_secrets: row.column(1)?,
        retiring_secrets: row.column(2)?,
    }))
}

/// Replaces a destination's settings (its secrets and state stay; its TLS material too when `d.tls` is `None`).
pub async fn update(client: &impl GenericClient, id: Uuid, d: &DestinationFields<'_>) -> StoreResult<()> {
    client
        .execute(
            "UPDATE destinations SET slug = $2, url = $3, timeout_ms = $4, max_in_flight = $5, rate_limit = $6, retry = $7,
                    fifo = $8, headers = $9, updated_at = now()
             WHERE id = $1",
            &[&id, &d.slug, &d.url, &d.timeout_ms, &d.max_in_flight, &d.rate_limit, &d.retry, &d.fifo, &d.headers],
        )
        .await?;
    if let Some(keys) = d.signing_keys {
        client.execute("UPDATE destinations SET signing_keys = $2 WHERE id = $1", &[&id, keys]).await?;
    }
    if let Some(tls) = d.tls {
        client
            .execute(
                "UPDATE destinations SET tls_ca_pem = $2, tls_cert_pem = $3, tls_key_pem = $4 WHERE id = $1",
                &[&id, &tls.ca_pem, &tls.cert_pem, &tls.key()],
            )
            .await?;
    }
    Ok(())
}

/// Deletes a destination no route and no delivery refers to; `false` (nothing deleted) when one does. Inserts of
/// deliveries wait until `tx` ends: the caller holds [`crate::lock_against_inserts`] on `deliveries` (ADR-0021).
pub async fn delete_unused(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> StoreResult<bool> {
    let used: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM routes WHERE destination_id = $1)
                 OR EXISTS (SELECT 1 FROM deliveries WHERE destination_id = $1)",
            &[&id],
        )
        .await?
        .column(0)?;
    if used {
        return Ok(false);
    }
    tx.execute("DELETE FROM destinations WHERE id = $1", &[&id]).await?;
    Ok(true)
}

/// Replaces a destination's signing secrets and its rotated-out ones (arrays as in [`DestinationRecord`]).
pub async fn set_secrets(
    client: &impl GenericClient,
    id: Uuid,
    signing_secrets: &Value,
    retiring_secrets: &Value,
) -> StoreResult<()> {
    client
        .execute(
            "UPDATE destinations SET signing_secrets = $2, retiring_secrets = $3, updated_at = now() WHERE id = $1",
            &[&id, &signing_secrets, &retiring_secrets],
        )
        .await?;
    Ok(())
}

/// Sets a destination's state as an operator does: why it was disabled and since when it failed are forgotten.
/// `false` when there is no destination with this id.
pub async fn set_state(client: &impl GenericClient, id: Uuid, state: DestinationState) -> StoreResult<bool> {
    let n = client
        .execute(
            "UPDATE destinations SET state = $2, disabled_reason = NULL, failing_since = NULL, updated_at = now()
             WHERE id = $1",
            &[&id, &state.as_str()],
        )
        .await?;
    Ok(n > 0)
}

/// Drops the rotated-out secrets whose grace period is over; answers how many destinations changed. The caller
/// notifies the catalog when any did.
pub async fn expire_retiring_secrets(client: &impl GenericClient) -> StoreResult<u64> {
    Ok(client
        .execute(
            "UPDATE destinations SET retiring_secrets = COALESCE(
                (SELECT jsonb_agg(r) FROM jsonb_array_elements(retiring_secrets) r
                 WHERE (r->>'until')::timestamptz > now()), '[]'::jsonb), updated_at = now()
             WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(retiring_secrets) r
                           WHERE (r->>'until')::timestamptz <= now())",
            &[],
        )
        .await?)
}

/// Each destination's pending deliveries, and the age (by PostgreSQL's clock) of its oldest one; zero for a
/// destination with none. The pending rows are read in one pass for every destination: a count per destination
/// was planned as a scan of the whole table per destination whenever the statistics said most rows were pending.
pub async fn backlogs(client: &impl GenericClient) -> StoreResult<Vec<(Uuid, i64, f64)>> {
    let rows = client
        .query(
            "SELECT d.id, COALESCE(p.n, 0), COALESCE(EXTRACT(EPOCH FROM now() - p.oldest)::float8, 0)
             FROM destinations d
             LEFT JOIN (SELECT x.destination_id, count(*) AS n, min(x.created_at) AS oldest FROM deliveries x
                        WHERE x.state = 'pending' GROUP BY x.destination_id) p ON p.destination_id = d.id",
            &[],
        )
        .await?;
    rows.iter().map(|r| Ok((r.column(0)?, r.column(1)?, r.column::<_, f64>(2)?.max(0.0)))).collect()
}

/// A destination's waiting and dead deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Pending deliveries.
    pub pending: i64,
    /// Pending deliveries already due.
    pub due: i64,
    pub dead: i64,
    /// When the oldest pending delivery was created (`None` without pending deliveries).
    pub oldest_pending_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A destination's [`Backlog`].
pub async fn backlog(client: &impl GenericClient, id: Uuid) -> StoreResult<Backlog> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= now()),
                    count(*) FILTER (WHERE state = 'dead'),
                    min(created_at) FILTER (WHERE state = 'pending')
             FROM deliveries WHERE destination_id = $1 AND state IN ('pending', 'dead')",
            &[&id],
        )
        .await?;
    Ok(Backlog {
        pending: row.column(0)?,
        due: row.column(1)?,
        dead: row.column(2)?,
        oldest_pending_at: row.column(3)?,
    })
}

/// A destination's attempts started in a window ending now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttemptWindow {
    pub attempts: i64,
    /// Share of attempts answered 2xx (`None` without attempts).
    pub success_ratio: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Destination `$1`'s attempts started in the last `$2` seconds, found through their primary key: an attempt's UUIDv7
/// id is generated when its outcome is recorded, after `started_at`, so none of the window's is below the smallest
/// UUIDv7 of its start less a minute (`hookgate_v7_floor`, migration 0012; ADR-0024). An attempt's destination is its
/// own column; attempts written before migration 0013 are found through their delivery, in a branch of their own
/// (ADR-0030).
pub const ATTEMPT_WINDOW_SQL: &str = "SELECT count(*),
        avg(CASE WHEN w.status BETWEEN 200 AND 299 THEN 1.0 ELSE 0.0 END)::float8,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY w.latency_ms),
        percentile_cont(0.99) WITHIN GROUP (ORDER BY w.latency_ms)
 FROM (SELECT a.status, a.latency_ms FROM attempts a
       WHERE a.id >= hookgate_v7_floor(now() - make_interval(secs => $2) - interval '1 minute')
         AND a.started_at > now() - make_interval(secs => $2) AND a.destination_id = $1
       UNION ALL
       SELECT a.status, a.latency_ms FROM attempts a JOIN deliveries x ON x.id = a.delivery_id
       WHERE a.id >= hookgate_v7_floor(now() - make_interval(secs => $2) - interval '1 minute')
         AND a.started_at > now() - make_interval(secs => $2) AND a.destination_id IS NULL
         AND x.destination_id = $1) w";

/// A destination's [`AttemptWindow`] over the last `secs` seconds.
pub async fn attempt_window(client: &impl GenericClient, id: Uuid, secs: f64) -> StoreResult<AttemptWindow> {
    let row = client.query_one(ATTEMPT_WINDOW_SQL, &[&id, &secs]).await?;
    Ok(AttemptWindow {
        attempts: row.column(0)?,
        success_ratio: row.column(1)?,
        latency_p50_ms: row.column(2)?,
        latency_p99_ms: row.column(3)?,
    })
}
