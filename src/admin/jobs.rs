//! Bulk replay jobs (`replay_jobs`) and the admin background task.
//!
//! A job replays every event of one source in a time range (optionally only those a jq filter accepts) to the
//! current routes, or to chosen destinations, by inserting new deliveries. Any node's task may take a queued job,
//! or a running one whose owner stopped heart-beating; it works in batches after `cursor_id`, records progress after
//! each batch (in the batch's transaction) and stops at the next batch once `cancel_requested` is set.
//! The same task removes rotated-out destination secrets once their grace period is over.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use hookgate_actors::jq::{JqProgram, RouteOutcome};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ProblemBody;
use super::events::{destination_ids, replay_into, StoredEvent};
use super::sources::IdPath;
use super::{notify_catalog, notify_deliveries, AdminError, AdminState};

/// Events per batch (one transaction each).
const BATCH: i64 = 200;
/// A running job whose heartbeat is older than this is taken over by another node.
const STALE_SECS: f64 = 30.0;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayJobInput {
    /// Source slug.
    pub source: String,
    /// Events received at or after this time.
    pub from: DateTime<Utc>,
    /// Events received before this time.
    pub to: DateTime<Utc>,
    /// jq program over `{body, headers, source, type}`: only events for which it is truthy are replayed.
    #[serde(default)]
    pub filter: Option<String>,
    /// Destination slugs; absent: every route of the source.
    #[serde(default)]
    pub destinations: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayJob {
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

fn view(r: &Row) -> ReplayJob {
    ReplayJob {
        id: r.get(0),
        source_id: r.get(1),
        from: r.get(2),
        to: r.get(3),
        filter: r.get(4),
        destinations: r.get(5),
        status: r.get(6),
        cancel_requested: r.get(7),
        events_scanned: r.get(8),
        events_matched: r.get(9),
        deliveries_created: r.get(10),
        error: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
    }
}

/// Starts a bulk replay; follow it with GET `/replay-jobs/{id}`.
#[utoipa::path(post, path = "/admin/v1/replay-jobs", tag = "replay", security(("bearer" = [])),
    request_body = ReplayJobInput,
    responses((status = 202, body = ReplayJob), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(
    state: web::Data<AdminState>,
    input: web::Json<ReplayJobInput>,
) -> Result<HttpResponse, AdminError> {
    if input.from >= input.to {
        return Err(AdminError::Invalid("from must be before to".into()));
    }
    if let Some(f) = input.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        JqProgram::compile(f).map_err(|e| AdminError::Invalid(format!("the filter does not compile: {e}")))?;
    }
    let client = state.pool.get().await?;
    let source: Uuid = client
        .query_opt("SELECT id FROM sources WHERE slug = $1", &[&input.source])
        .await?
        .ok_or_else(|| AdminError::Invalid(format!("no source is named {:?}", input.source)))?
        .get(0);
    let only = destination_ids(&client, &input.destinations).await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO replay_jobs (id, source_id, from_time, to_time, filter, destinations)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[&Uuid::now_v7(), &source, &input.from, &input.to, &input.filter, &only],
        )
        .await?;
    Ok(HttpResponse::Accepted().json(view(&row)))
}

/// Lists replay jobs, newest first (the last 100).
#[utoipa::path(get, path = "/admin/v1/replay-jobs", tag = "replay", security(("bearer" = [])),
    responses((status = 200, body = Vec<ReplayJob>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let rows = client.query(&format!("SELECT {COLUMNS} FROM replay_jobs ORDER BY id DESC LIMIT 100"), &[]).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(view).collect::<Vec<_>>()))
}

/// One replay job with its progress.
#[utoipa::path(get, path = "/admin/v1/replay-jobs/{id}", tag = "replay", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = ReplayJob), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM replay_jobs WHERE id = $1"), &[&path.id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no replay job has id {}", path.id)))?;
    Ok(HttpResponse::Ok().json(view(&row)))
}

/// Cancels a replay job: a queued job is cancelled at once, a running one after its current batch.
#[utoipa::path(post, path = "/admin/v1/replay-jobs/{id}/cancel", tag = "replay", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = ReplayJob), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn cancel(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE replay_jobs SET cancel_requested = true,
                        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')
                 RETURNING {COLUMNS}"
            ),
            &[&path.id],
        )
        .await?;
    match row {
        Some(row) => Ok(HttpResponse::Ok().json(view(&row))),
        None => {
            let row = client
                .query_opt("SELECT status FROM replay_jobs WHERE id = $1", &[&path.id])
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no replay job has id {}", path.id)))?;
            Err(AdminError::WrongState(format!("the job is already {}", row.get::<_, String>(0))))
        }
    }
}

/// The admin background task: runs replay jobs and expires rotated secrets, forever. Errors are logged and retried
/// on the next round.
pub async fn run(state: Arc<AdminState>, node: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = expire_secrets(&state).await {
            tracing::warn!(message = "Expiring rotated secrets failed.", error = %e);
        }
        match run_one(&state, &node).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(message = "Replay job round failed.", error = %e),
        }
    }
}

/// Removes rotated-out destination secrets past their grace period and notifies every node.
async fn expire_secrets(state: &AdminState) -> Result<(), AdminError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE destinations SET retiring_secrets = COALESCE(
                (SELECT jsonb_agg(r) FROM jsonb_array_elements(retiring_secrets) r
                 WHERE (r->>'until')::timestamptz > now()), '[]'::jsonb), updated_at = now()
             WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(retiring_secrets) r
                           WHERE (r->>'until')::timestamptz <= now())",
            &[],
        )
        .await?;
    let m = tx
        .execute(
            "UPDATE sources SET previous_secret = NULL, previous_secret_until = NULL, updated_at = now()
             WHERE previous_secret_until <= now()",
            &[],
        )
        .await?;
    if n + m > 0 {
        notify_catalog(&tx, "admin:secret-expired").await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Takes one job (queued, or running with a stale heartbeat) and runs it to its end. Returns whether one ran.
pub async fn run_one(state: &AdminState, node: &str) -> Result<bool, AdminError> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE replay_jobs SET status = 'running', owner = $1, heartbeat_at = now(), updated_at = now()
                 WHERE id = (SELECT id FROM replay_jobs
                             WHERE status = 'queued'
                                OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2))
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING {COLUMNS}, cursor_id"
            ),
            &[&node, &STALE_SECS],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let job = view(&row);
    let cursor: Option<Uuid> = row.get(14);
    drop(client);
    tracing::info!(message = "Replay job started.", job = %job.id);
    let outcome = execute(state, &job, cursor).await;
    let client = state.pool.get().await?;
    match outcome {
        Ok(cancelled) => {
            let status = if cancelled { "cancelled" } else { "succeeded" };
            client
                .execute(
                    "UPDATE replay_jobs SET status = $2, updated_at = now() WHERE id = $1 AND status = 'running'",
                    &[&job.id, &status],
                )
                .await?;
            tracing::info!(message = "Replay job ended.", job = %job.id, status);
        }
        Err(e) => {
            tracing::warn!(message = "Replay job failed.", job = %job.id, error = %e);
            client
                .execute(
                    "UPDATE replay_jobs SET status = 'failed', error = $2, updated_at = now()
                     WHERE id = $1 AND status = 'running'",
                    &[&job.id, &e.to_string()],
                )
                .await?;
        }
    }
    Ok(true)
}

/// Runs batches until the range is done (Ok(false)) or the job was cancelled (Ok(true)).
async fn execute(state: &AdminState, job: &ReplayJob, mut cursor: Option<Uuid>) -> Result<bool, AdminError> {
    let filter = match job.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(JqProgram::compile(f).map_err(|e| AdminError::Invalid(format!("filter: {e}")))?),
        None => None,
    };
    loop {
        let mut client = state.pool.get().await?;
        let cancel: bool =
            client.query_one("SELECT cancel_requested FROM replay_jobs WHERE id = $1", &[&job.id]).await?.get(0);
        if cancel {
            return Ok(true);
        }
        // Oldest first, after the cursor: the (source_id, id) index with the time range pruning partitions.
        let rows = client
            .query(
                "SELECT e.id, e.source_id, s.slug, e.headers, e.body, e.type, e.received_at
                 FROM events e JOIN sources s ON s.id = e.source_id
                 WHERE e.source_id = $1 AND e.received_at >= $2 AND e.received_at < $3
                   AND ($4::uuid IS NULL OR e.id > $4)
                 ORDER BY e.id LIMIT $5",
                &[&job.source_id, &job.from, &job.to, &cursor, &BATCH],
            )
            .await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let tx = client.transaction().await?;
        let (mut matched, mut created) = (0i64, 0i64);
        for r in &rows {
            let event = StoredEvent {
                id: r.get(0),
                source_id: r.get(1),
                source_slug: r.get(2),
                headers: r.get(3),
                body: r.get(4),
                event_type: r.get(5),
                received_at: r.get(6),
            };
            if let Some(f) = &filter {
                let input = event.jq_input();
                let outcome = hookgate_actors::jq::evaluate(
                    Some(f.clone()),
                    None,
                    Arc::new(input),
                    state.jq_timeout,
                    state.jq_max_output,
                )
                .await;
                if !matches!(outcome, RouteOutcome::Deliver(_)) {
                    continue;
                }
            }
            matched += 1;
            created += replay_into(state, &tx, &event, job.destinations.as_deref()).await?.len() as i64;
        }
        cursor = rows.last().map(|r| r.get(0));
        tx.execute(
            "UPDATE replay_jobs SET cursor_id = $2, events_scanned = events_scanned + $3,
                    events_matched = events_matched + $4, deliveries_created = deliveries_created + $5,
                    heartbeat_at = now(), updated_at = now()
             WHERE id = $1",
            &[&job.id, &cursor, &(rows.len() as i64), &matched, &created],
        )
        .await?;
        if created > 0 {
            notify_deliveries(&tx).await?;
        }
        tx.commit().await?;
    }
}
