//! Bulk replay jobs (`replay_jobs`) and the admin background task.
//!
//! A job replays every event of one source in a time range (optionally only those a jq filter accepts) to the
//! current routes, or to chosen destinations, by inserting new deliveries. Any node's task may take a queued job,
//! or a running one whose owner stopped heart-beating; it works in batches after `cursor_id`, records progress after
//! each batch (in the batch's transaction) and stops at the next batch once `cancel_requested` is set.
//!
//! Jobs are fenced like delivery leases. Taking a job sets a new random `lease_id` (the fencing token). Each batch
//! is one transaction that first heart-beats the job `WHERE id = $1 AND lease_id = $2` (which also locks the row
//! until COMMIT, so no node can take the job over while a batch is being written: the take-over query skips locked
//! rows), then reads the events after the stored cursor, inserts their deliveries and records progress under the
//! same condition. When the lease was taken over between two batches, the check finds no row: the batch is rolled
//! back and the node abandons the job (logged); the final status update is fenced the same way. [`JobRunner`]
//! exposes the steps (`take`, `step`, `finish`) so that tests can interleave two nodes deterministically.
//! The same task removes rotated-out destination secrets once their grace period is over.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use hookgate_actors::catalog::SharedCatalog;
use hookgate_core::internal_events::{emit, DestinationBacklogNotSampled, DestinationBacklogSampled};
use hookgate_core::jq::{JqProgram, RouteOutcome};
use hookgate_store::replay_jobs as store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ProblemBody;
use super::events::{destination_ids, replay_into, ReplayPlanner, StoredEvent};
use super::sources::IdPath;
use super::{notify_catalog, notify_deliveries, AdminError, AdminState};

/// Batches in a row that may be deferred (a jq time-out, the database away) before the job fails.
const MAX_TRANSIENT_RETRIES: u32 = 30;
/// The pause before a deferred batch is tried again.
const TRANSIENT_PAUSE: Duration = Duration::from_secs(1);
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

impl From<store::ReplayJobRow> for ReplayJob {
    fn from(r: store::ReplayJobRow) -> Self {
        Self {
            id: r.id,
            source_id: r.source_id,
            from: r.from,
            to: r.to,
            filter: r.filter,
            destinations: r.destinations,
            status: r.status,
            cancel_requested: r.cancel_requested,
            events_scanned: r.events_scanned,
            events_matched: r.events_matched,
            deliveries_created: r.deliveries_created,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
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
    let client = hookgate_store::connect(&state.pool).await?;
    let source_id = hookgate_store::sources::id_by_slug(&client, &input.source)
        .await?
        .ok_or_else(|| AdminError::Invalid(format!("no source is named {:?}", input.source)))?;
    let only = destination_ids(&client, &input.destinations).await?;
    let job = store::NewReplayJob {
        id: Uuid::now_v7(),
        source_id,
        from: input.from,
        to: input.to,
        filter: input.filter.as_deref(),
        destinations: only.as_deref(),
    };
    let row = store::create(&client, &job).await?;
    Ok(HttpResponse::Accepted().json(ReplayJob::from(row)))
}

/// Lists replay jobs, newest first (the last 100).
#[utoipa::path(get, path = "/admin/v1/replay-jobs", tag = "replay", security(("bearer" = [])),
    responses((status = 200, body = Vec<ReplayJob>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let rows = store::list_latest(&client).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(ReplayJob::from).collect::<Vec<_>>()))
}

/// One replay job with its progress.
#[utoipa::path(get, path = "/admin/v1/replay-jobs/{id}", tag = "replay", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = ReplayJob), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let row = store::fetch(&client, path.id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no replay job has id {}", path.id)))?;
    Ok(HttpResponse::Ok().json(ReplayJob::from(row)))
}

/// Cancels a replay job: a queued job is cancelled at once, a running one after its current batch.
#[utoipa::path(post, path = "/admin/v1/replay-jobs/{id}/cancel", tag = "replay", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = ReplayJob), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn cancel(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    match store::request_cancel(&client, path.id).await? {
        Some(row) => Ok(HttpResponse::Ok().json(ReplayJob::from(row))),
        None => {
            let status = store::status_of(&client, path.id)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no replay job has id {}", path.id)))?;
            Err(AdminError::WrongState(format!("the job is already {status}")))
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

/// Samples every destination's backlog and oldest pending delivery into their gauges every `interval`, forever
/// (on the admin pool: a slow sample never holds a connection ingest or delivery needs).
pub async fn sample_destinations(pool: hookgate_store::Pool, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sampled = async {
            let client = hookgate_store::connect(&pool).await?;
            hookgate_store::destinations::backlogs(&client).await.map_err(AdminError::from)
        };
        match sampled.await {
            Ok(rows) => {
                let rows: Vec<(Uuid, i64, Duration)> = rows
                    .into_iter()
                    .map(|(id, n, age)| (id, n, Duration::try_from_secs_f64(age).unwrap_or_default()))
                    .collect();
                emit(DestinationBacklogSampled { destinations: &rows });
            }
            Err(error) => emit(DestinationBacklogNotSampled { error: &error }),
        }
    }
}

/// Removes rotated-out destination secrets past their grace period and notifies every node.
async fn expire_secrets(state: &AdminState) -> Result<(), AdminError> {
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let n = hookgate_store::destinations::expire_retiring_secrets(&tx).await?;
    let m = hookgate_store::sources::expire_previous_secrets(&tx).await?;
    if n + m > 0 {
        notify_catalog(&tx, "admin:secret-expired").await?;
    }
    hookgate_store::commit(tx).await?;
    Ok(())
}

/// Takes one job (queued, or running with a stale heartbeat) and runs it to its end. Returns whether one ran.
pub async fn run_one(state: &AdminState, node: &str) -> Result<bool, AdminError> {
    JobRunner::new(state).run_one(node).await
}

/// A job this node took: the job as it was then, and the fencing token every later write must still match.
#[derive(Debug)]
pub struct JobLease {
    pub job: ReplayJob,
    pub node: String,
    pub lease_id: Uuid,
}

/// What one batch ([`JobRunner::step`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A batch was committed; more may follow.
    Progressed,
    /// No event is left after the cursor.
    Done,
    /// `cancel_requested` is set.
    Cancelled,
    /// Another node took the job over: nothing was written, and this node must stop working on it.
    LeaseLost,
}

/// Runs replay jobs: take one, run its batches, record how it ended, every write fenced by the job's lease.
pub struct JobRunner {
    pub pool: Pool,
    pub catalog: Arc<SharedCatalog>,
    pub jq_timeout: Duration,
    pub jq_max_output: usize,
    /// Events per batch (one transaction each).
    pub batch: i64,
}

impl JobRunner {
    pub fn new(state: &AdminState) -> Self {
        Self {
            pool: state.pool.clone(),
            catalog: state.catalog.clone(),
            jq_timeout: state.jq_timeout,
            jq_max_output: state.jq_max_output,
            batch: BATCH,
        }
    }

    /// Takes one job and runs it until it ends, is cancelled or is taken over. Returns whether one was taken.
    pub async fn run_one(&self, node: &str) -> Result<bool, AdminError> {
        let Some(lease) = self.take(node).await? else { return Ok(false) };
        tracing::info!(message = "Replay job started.", job = %lease.job.id, lease = %lease.lease_id);
        let mut transient = 0u32;
        let outcome = loop {
            match self.step(&lease).await {
                Ok(Step::Progressed) => transient = 0,
                Ok(step) => break Ok(step),
                // A time-out (jq, database) says nothing about the job: the batch was rolled back; try it again.
                Err(e @ (AdminError::Busy(_) | AdminError::Unavailable)) if transient < MAX_TRANSIENT_RETRIES => {
                    transient += 1;
                    tracing::warn!(message = "Replay batch deferred; retrying.", job = %lease.job.id, error = %e);
                    tokio::time::sleep(TRANSIENT_PAUSE).await;
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(Step::LeaseLost) => {}
            Ok(step) => {
                let status = if step == Step::Cancelled { "cancelled" } else { "succeeded" };
                if self.finish(&lease, status, None).await? {
                    tracing::info!(message = "Replay job ended.", job = %lease.job.id, status);
                }
            }
            Err(e) => {
                tracing::warn!(message = "Replay job failed.", job = %lease.job.id, error = %e);
                self.finish(&lease, "failed", Some(&e.to_string())).await?;
            }
        }
        Ok(true)
    }

    /// Takes the oldest queued job, or a running one whose owner stopped heart-beating, with a new lease.
    pub async fn take(&self, node: &str) -> Result<Option<JobLease>, AdminError> {
        let client = hookgate_store::connect(&self.pool).await?;
        let lease_id = Uuid::new_v4();
        let row = store::take(&client, node, lease_id, STALE_SECS).await?;
        Ok(row.map(|row| JobLease { job: row.into(), node: node.to_owned(), lease_id }))
    }

    /// Runs one batch in one transaction, fenced by the lease (see the module documentation).
    pub async fn step(&self, lease: &JobLease) -> Result<Step, AdminError> {
        let job = &lease.job;
        let filter = match job.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(f) => Some(JqProgram::compile(f).map_err(|e| AdminError::Invalid(format!("filter: {e}")))?),
            None => None,
        };
        let mut client = hookgate_store::connect(&self.pool).await?;
        let tx = hookgate_store::begin(&mut client).await?;
        // The heartbeat checks the lease and locks the row until COMMIT: no take-over while this batch runs.
        let Some(beat) = store::heartbeat(&tx, job.id, lease.lease_id).await? else {
            hookgate_store::rollback(tx).await?;
            tracing::warn!(message = "Replay job taken over by another node; abandoning it here.", job = %job.id,
                           node = %lease.node, lease = %lease.lease_id);
            return Ok(Step::LeaseLost);
        };
        if beat.cancel_requested {
            hookgate_store::commit(tx).await?;
            return Ok(Step::Cancelled);
        }
        // Oldest first, after the cursor: the (source_id, id) index with the time range pruning partitions.
        let rows = hookgate_store::events::of_source_after(
            &tx,
            job.source_id,
            job.from,
            job.to,
            beat.cursor,
            self.batch.max(1),
        )
        .await?;
        if rows.is_empty() {
            hookgate_store::commit(tx).await?;
            return Ok(Step::Done);
        }
        let planner =
            ReplayPlanner { catalog: &self.catalog, jq_timeout: self.jq_timeout, jq_max_output: self.jq_max_output };
        let scanned = rows.len() as i64;
        let cursor: Option<Uuid> = rows.last().map(|r| r.id);
        let (mut matched, mut created) = (0i64, 0i64);
        for r in rows {
            let event = StoredEvent::from(r);
            if let Some(f) = &filter {
                let input = event.jq_input();
                let outcome = hookgate_core::jq::evaluate(
                    Some(f.clone()),
                    None,
                    Arc::new(input),
                    self.jq_timeout,
                    self.jq_max_output,
                )
                .await;
                match outcome {
                    RouteOutcome::Deliver(_) => {}
                    // Not evaluated in time: this batch is not decided; it rolls back and is tried again.
                    RouteOutcome::Unavailable(why) => return Err(AdminError::Busy(format!("job filter: {why}"))),
                    RouteOutcome::Skip | RouteOutcome::Failed(_) => continue,
                }
            }
            matched += 1;
            created += replay_into(&planner, &tx, &event, job.destinations.as_deref()).await?.len() as i64;
        }
        let progress =
            store::Progress { cursor, events_scanned: scanned, events_matched: matched, deliveries_created: created };
        if !store::record_progress(&tx, job.id, lease.lease_id, &progress).await? {
            // Cannot happen while the row is locked; never commit a batch whose progress was not recorded.
            hookgate_store::rollback(tx).await?;
            tracing::warn!(message = "Replay job lease lost mid-batch; abandoning it here.", job = %job.id);
            return Ok(Step::LeaseLost);
        }
        if created > 0 {
            notify_deliveries(&tx).await?;
        }
        hookgate_store::commit(tx).await?;
        Ok(Step::Progressed)
    }

    /// Records how the job ended, if this node still holds its lease. Returns whether it did.
    pub async fn finish(&self, lease: &JobLease, status: &str, error: Option<&str>) -> Result<bool, AdminError> {
        let client = hookgate_store::connect(&self.pool).await?;
        let recorded = store::finish(&client, lease.job.id, lease.lease_id, status, error).await?;
        if !recorded {
            tracing::warn!(message = "Replay job taken over by another node; its end is not recorded here.",
                           job = %lease.job.id, status);
        }
        Ok(recorded)
    }
}
