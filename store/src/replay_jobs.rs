//! The `replay_jobs` table: bulk replay jobs as the admin API creates, lists and cancels them, and as the admin task
//! takes, heart-beats, advances and ends them, every write of a running job fenced by its `lease_id`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::error::{Columns, StoreResult};

/// A replay job and its progress.
#[derive(Debug, Clone)]
pub struct ReplayJobRow {
    pub id: Uuid,
    pub source_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub filter: Option<String>,
    pub destinations: Option<Vec<Uuid>>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub cancel_requested: bool,
    pub events_scanned: i64,
    pub events_matched: i64,
    pub deliveries_created: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, source_id, from_time, to_time, filter, destinations, status, cancel_requested, \
                       events_scanned, events_matched, deliveries_created, error, created_at, updated_at";

fn read(r: &tokio_postgres::Row) -> StoreResult<ReplayJobRow> {
    Ok(ReplayJobRow {
        id: r.column(0)?,
        source_id: r.column(1)?,
        from: r.column(2)?,
        to: r.column(3)?,
        filter: r.column(4)?,
        destinations: r.column(5)?,
        status: r.column(6)?,
        cancel_requested: r.column(7)?,
        events_scanned: r.column(8)?,
        events_matched: r.column(9)?,
        deliveries_created: r.column(10)?,
        error: r.column(11)?,
        created_at: r.column(12)?,
        updated_at: r.column(13)?,
    })
}

/// A replay job to queue.
#[derive(Debug, Clone)]
pub struct NewReplayJob<'a> {
    pub id: Uuid,
    pub source_id: Uuid,
    /// Events received at or after this time.
    pub from: DateTime<Utc>,
    /// Events received before this time.
    pub to: DateTime<Utc>,
    /// A jq program: only the events it accepts are replayed.
    pub filter: Option<&'a str>,
    /// Only to these destinations (`None`: every route of the source).
    pub destinations: Option<&'a [Uuid]>,
}

/// Queues a replay job; answers it as stored.
pub async fn create(client: &impl GenericClient, job: &NewReplayJob<'_>) -> StoreResult<ReplayJobRow> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO replay_jobs (id, source_id, from_time, to_time, filter, destinations)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[&job.id, &job.source_id, &job.from, &job.to, &job.filter, &job.destinations],
        )
        .await?;
    read(&row)
}

/// The latest 100 jobs, newest first.
pub async fn list_latest(client: &impl GenericClient) -> StoreResult<Vec<ReplayJobRow>> {
    client
        .query(&format!("SELECT {COLUMNS} FROM replay_jobs ORDER BY id DESC LIMIT 100"), &[])
        .await?
        .iter()
        .map(read)
        .collect()
}

/// One job; `None` when there is none with this id.
pub async fn fetch(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<ReplayJobRow>> {
    client
        .query_opt(&format!("SELECT {COLUMNS} FROM replay_jobs WHERE id = $1"), &[&id])
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// Asks a queued or running job to stop: a queued one is `cancelled` at once, a running one stops at its next batch.
/// `None` when there is no such job in either state.
pub async fn request_cancel(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<ReplayJobRow>> {
    client
        .query_opt(
            &format!(
                "UPDATE replay_jobs SET cancel_requested = true,
                        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')
                 RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// A job's status; `None` when there is no job with this id.
pub async fn status_of(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<String>> {
    client.query_opt("SELECT status FROM replay_jobs WHERE id = $1", &[&id]).await?.map(|r| r.column(0)).transpose()
}

/// Takes the oldest queued job, or a running one whose heartbeat is older than `stale_secs`, for `node` under the new
/// lease `lease_id`; `None` when there is none to take. A job locked by a batch in progress is skipped.
pub async fn take(
    client: &impl GenericClient,
    node: &str,
    lease_id: Uuid,
    stale_secs: f64,
) -> StoreResult<Option<ReplayJobRow>> {
    client
        .query_opt(
            &format!(
                "UPDATE replay_jobs SET status = 'running', owner = $1, lease_id = $3, heartbeat_at = now(),
                        updated_at = now()
                 WHERE id = (SELECT id FROM replay_jobs
                             WHERE status = 'queued'
                                OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2))
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING {COLUMNS}"
            ),
            &[&node, &stale_secs, &lease_id],
        )
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// What a running job's heartbeat finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub cancel_requested: bool,
    /// The last event replayed (`None`: none yet).
    pub cursor: Option<Uuid>,
}

/// Heart-beats a running job if `lease_id` still holds it, which also locks its row until the transaction ends (no
/// take-over meanwhile); `None` when the lease no longer holds.
pub async fn heartbeat(client: &impl GenericClient, id: Uuid, lease_id: Uuid) -> StoreResult<Option<Heartbeat>> {
    let Some(row) = client
        .query_opt(
            "UPDATE replay_jobs SET heartbeat_at = clock_timestamp(), updated_at = now()
             WHERE id = $1 AND lease_id = $2 AND status = 'running'
             RETURNING cancel_requested, cursor_id",
            &[&id, &lease_id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Heartbeat { cancel_requested: row.column(0)?, cursor: row.column(1)? }))
}

/// What one batch of a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The batch's last event: the next batch starts after it.
    pub cursor: Option<Uuid>,
    pub events_scanned: i64,
    pub events_matched: i64,
    pub deliveries_created: i64,
}

/// Adds a batch's progress to a job if `lease_id` still holds it; `false` when it does not (nothing recorded).
pub async fn record_progress(client: &impl GenericClient, id: Uuid, lease_id: Uuid, p: &Progress) -> StoreResult<bool> {
    let n = client
        .execute(
            "UPDATE replay_jobs SET cursor_id = $3, events_scanned = events_scanned + $4,
                    events_matched = events_matched + $5, deliveries_created = deliveries_created + $6,
                    heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
             WHERE id = $1 AND lease_id = $2",
            &[&id, &lease_id, &p.cursor, &p.events_scanned, &p.events_matched, &p.deliveries_created],
        )
        .await?;
    Ok(n > 0)
}

/// Records how a running job ended (`error` kept when `None`) if `lease_id` still holds it; `false` when it does not.
pub async fn finish(
    client: &impl GenericClient,
    id: Uuid,
    lease_id: Uuid,
    status: &str,
    error: Option<&str>,
) -> StoreResult<bool> {
    let n = client
        .execute(
            "UPDATE replay_jobs SET status = $3, error = COALESCE($4, error), updated_at = now()
             WHERE id = $1 AND lease_id = $2 AND status = 'running'",
            &[&id, &lease_id, &status, &error],
        )
        .await?;
    Ok(n > 0)
}
