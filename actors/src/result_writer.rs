//! Batches attempt rows and delivery state changes into one transaction per flush, and applies what outcomes mean
//! for destinations (410 disables, continuous failure auto-disables).
//!
//! Per result: 2xx → `delivered`; otherwise the retry policy decides the next attempt (with jitter, or after a
//! `Retry-After` on 429/503, capped, and never sooner than the policy's own lower bound nor 1 s:
//! [`RetryPolicy::delay_after`](crate::retry::RetryPolicy::delay_after)), or `dead` when attempts are exhausted. Every state change releases the lease,
//! and only if this node still holds it. Attempt rows are inserted whatever happens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::{without_nul, SharedCatalog, CATALOG_CHANNEL};
use crate::config::DeliveryConfig;
use crate::deliverer::{AttemptResult, Routed};
use crate::health::{ActorState, ActorStatus};
use crate::scheduler::Wake;
use crate::supervision::{guarded, Panicked};
use crate::Pool;

/// Flush everything buffered and answer when nothing is left (shutdown, after the deliverers finished).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainResults {
    pub reply: tokio::sync::oneshot::Sender<()>,
}

/// Where the scheduler can be woken once results are committed (set after both are started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectScheduler(pub Recipient<Wake>);

pub struct ResultWriter {
    pool: Pool,
    catalog: Arc<SharedCatalog>,
    node_id: String,
    cfg: DeliveryConfig,
    status: Arc<ActorStatus>,
    scheduler: Option<Recipient<Wake>>,
    buffer: Vec<AttemptResult>,
    timer: Option<SpawnHandle>,
    flushing: bool,
    drains: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The back-off delay of the last restart.
    resume_delay: Duration,
}

impl ResultWriter {
    pub fn new(
        pool: Pool,
        catalog: Arc<SharedCatalog>,
        node_id: String,
        cfg: DeliveryConfig,
        status: Arc<ActorStatus>,
    ) -> Self {
        Self {
            pool,
            catalog,
            node_id,
            cfg,
            status,
            scheduler: None,
            buffer: Vec::new(),
            timer: None,
            flushing: false,
            drains: Vec::new(),
            resume_delay: Duration::ZERO,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if self.flushing || self.buffer.is_empty() {
            return;
        }
        self.flushing = true;
        let n = self.buffer.len().min(self.cfg.result_batch_max.max(1));
        let batch: Vec<AttemptResult> = self.buffer.drain(..n).collect();
        let plan = Plan::new(&batch, &self.catalog, &self.cfg);
        let (pool, node_id, auto_disable) = (self.pool.clone(), self.node_id.clone(), self.cfg.auto_disable_after_secs);
        let fut = async move {
            let res = write(&pool, &node_id, &batch, &plan, auto_disable).await;
            (res, batch)
        };
        ctx.spawn(guarded(fut).into_actor(self).map(|outcome, act, ctx| {
            act.flushing = false;
            let (res, batch) = match outcome {
                Ok(done) => done,
                Err(Panicked(what)) => {
                    // The batch's leases expire and their deliveries are attempted again.
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
            };
            match res {
                Ok(()) => {
                    act.status.set_state(ActorState::Running);
                    metrics::counter!("hookgate_results_stored_total").increment(batch.len() as u64);
                    if let Some(s) = &act.scheduler {
                        let _ = s.try_send(Wake);
                    }
                }
                Err(error) => {
                    // Kept and retried: the batch is bounded by the deliveries in flight, and no new ones are claimed
                    // while PostgreSQL is away. A result whose lease expired meanwhile finds no row to update.
                    act.status.set_state(ActorState::Degraded);
                    metrics::counter!("hookgate_result_flush_failures_total").increment(1);
                    tracing::warn!(message = "Attempt results not stored; retrying.", error = %format!("{error:#}"));
                    act.buffer.splice(0..0, batch);
                    act.timer = Some(ctx.run_later(Duration::from_millis(500), |act, ctx| {
                        act.timer = None;
                        act.flush(ctx);
                    }));
                    return;
                }
            }
            if !act.buffer.is_empty() {
                act.flush(ctx);
            } else {
                act.answer_drains();
            }
        }));
    }

    fn answer_drains(&mut self) {
        if self.buffer.is_empty() && !self.flushing {
            for reply in self.drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

impl Handler<DrainResults> for ResultWriter {
    type Result = ();
    fn handle(&mut self, msg: DrainResults, ctx: &mut Self::Context) {
        self.drains.push(msg.reply);
        self.flush(ctx);
        self.answer_drains();
    }
}

impl Actor for ResultWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_in_flight.max(16) * 2);
        self.status.set_state(ActorState::Running);
        // After a restart: what was buffered is flushed once the back-off delay is over, not when the next result
        // happens to arrive (on a quiet node their leases would expire first, and the deliveries be sent again).
        let delay = std::mem::take(&mut self.resume_delay);
        if !self.buffer.is_empty() {
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }
}

impl actix::Supervised for ResultWriter {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.flushing = false;
        self.timer = None;
        self.resume_delay = self.status.record_restart();
    }
}

impl Handler<ConnectScheduler> for ResultWriter {
    type Result = ();
    fn handle(&mut self, msg: ConnectScheduler, _: &mut Self::Context) {
        self.scheduler = Some(msg.0);
    }
}

impl Handler<AttemptResult> for ResultWriter {
    type Result = ();

    fn handle(&mut self, msg: AttemptResult, ctx: &mut Self::Context) {
        self.buffer.push(msg);
        if self.buffer.len() >= self.cfg.result_batch_max {
            self.flush(ctx);
        } else if self.timer.is_none() {
            let after = Duration::from_millis(self.cfg.result_flush_interval_ms);
            self.timer = Some(ctx.run_later(after, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }
}

/// Why a delivery whose route was evaluated at delivery (deferred at ingest) was cancelled.
pub const SKIPPED_AT_DELIVERY: &str = "the route's filter does not take this event (evaluated at delivery)";

/// What a batch changes, decided before the transaction.
struct Plan {
    /// Per result: (new state, next attempt time, last error).
    deliveries: Vec<(&'static str, DateTime<Utc>, Option<String>)>,
    /// Per result: whether it is a try on the retry schedule (an attempt row is written and counted).
    counted: Vec<bool>,
    gone: Vec<Uuid>,
    failing: Vec<Uuid>,
    healthy: Vec<Uuid>,
}

impl Plan {
    fn new(batch: &[AttemptResult], catalog: &SharedCatalog, cfg: &DeliveryConfig) -> Self {
        let catalog = catalog.get();
        let now = Utc::now();
        let mut last_outcome: HashMap<Uuid, bool> = HashMap::new();
        let mut gone = Vec::new();
        let counted = batch.iter().map(|r| !matches!(r.routed, Some(Routed::Skipped | Routed::Failed(_)))).collect();
        let deliveries = batch
            .iter()
            .map(|r| {
                match &r.routed {
                    // Decided by the route's programs at delivery: final, and nothing to do with the destination.
                    Some(Routed::Skipped) => {
                        return ("cancelled", now, Some(SKIPPED_AT_DELIVERY.to_owned()));
                    }
                    Some(Routed::Failed(why)) => return ("failed", now, Some(without_nul(why).into_owned())),
                    _ => {}
                }
                if r.reached_destination() {
                    last_outcome.insert(r.destination_id, r.succeeded());
                }
                if r.succeeded() {
                    return ("delivered", now, None);
                }
                if r.status == Some(410) {
                    gone.push(r.destination_id);
                }
                let error = Some(
                    without_nul(&format!(
                        "{}: {}",
                        r.error_kind.unwrap_or("error"),
                        r.error.as_deref().unwrap_or("attempt failed")
                    ))
                    .into_owned(),
                );
                let policy = catalog.destinations.get(&r.destination_id).map(|d| d.retry.clone()).unwrap_or_default();
                let attempts = r.attempt.max(1) as u32;
                let cap = Duration::from_secs(cfg.max_retry_after_secs);
                match policy.delay_after(attempts, r.retry_after, cap) {
                    None => ("dead", now, error),
                    Some(delay) => {
                        let next =
                            now + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::hours(1));
                        ("pending", next, error)
                    }
                }
            })
            .collect();
        let (healthy, failing): (Vec<_>, Vec<_>) = last_outcome.into_iter().partition(|(_, ok)| *ok);
        Self {
            deliveries,
            counted,
            gone,
            failing: failing.into_iter().map(|(id, _)| id).collect(),
            healthy: healthy.into_iter().map(|(id, _)| id).collect(),
        }
    }
}

async fn write(
    pool: &Pool,
    node_id: &str,
    batch: &[AttemptResult],
    plan: &Plan,
    auto_disable_after_secs: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let delivery_ids: Vec<Uuid> = batch.iter().map(|r| r.delivery_id).collect();
    let attempts: Vec<i32> = batch.iter().map(|r| r.attempt).collect();
    let started_at: Vec<DateTime<Utc>> = batch.iter().map(|r| r.started_at).collect();
    let statuses: Vec<Option<i32>> = batch.iter().map(|r| r.status.map(i32::from)).collect();
    let latencies: Vec<i32> = batch.iter().map(|r| r.latency_ms).collect();
    let headers: Vec<&serde_json::Value> = batch.iter().map(|r| &r.response_headers).collect();
    let excerpts: Vec<Option<&[u8]>> = batch.iter().map(|r| r.excerpt.as_deref()).collect();
    let kinds: Vec<Option<&str>> = batch.iter().map(|r| r.error_kind).collect();
    let errors: Vec<Option<std::borrow::Cow<'_, str>>> =
        batch.iter().map(|r| r.error.as_deref().map(without_nul)).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO attempts (id, delivery_id, attempt, node_id, started_at, status, latency_ms,
                                   response_headers, response_excerpt, error_kind, error)
             SELECT a.id, a.delivery_id, a.attempt, $4, a.started_at, a.status, a.latency_ms, a.headers, a.excerpt,
                    a.kind, a.error
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $5::timestamptz[], $6::int[], $7::int[], $8::jsonb[],
                         $9::bytea[], $10::text[], $11::text[], $12::bool[])
                  AS a(id, delivery_id, attempt, started_at, status, latency_ms, headers, excerpt, kind, error,
                       counted)
             WHERE a.counted",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &ids,
            &delivery_ids,
            &attempts,
            &node_id,
            &started_at,
            &statuses,
            &latencies,
            &headers,
            &excerpts,
            &kinds,
            &errors,
            &plan.counted,
        ],
    )
    .await?;

    let states: Vec<&str> = plan.deliveries.iter().map(|d| d.0).collect();
    let next: Vec<DateTime<Utc>> = plan.deliveries.iter().map(|d| d.1).collect();
    let last_errors: Vec<Option<&str>> = plan.deliveries.iter().map(|d| d.2.as_deref()).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE deliveries d
             SET state = u.state, attempts = GREATEST(d.attempts, u.attempt), next_attempt_at = u.next,
                 last_error = u.err, lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL,
                 payload = CASE WHEN u.routed THEN u.payload ELSE d.payload END,
                 needs_routing = d.needs_routing AND NOT u.routed,
                 updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::uuid[], $7::bool[],
                         $8::bytea[], $9::timestamptz[])
                  AS u(id, state, attempt, next, err, lease_id, routed, payload, created_at)
             -- The whole primary key (id and partition key): one probe per row in one partition, whatever the
             -- backlog (a join on the id alone lets a generic plan scan the pending index for every row).
             WHERE d.id = u.id AND d.created_at = u.created_at AND d.state = 'pending' AND d.lease_id = u.lease_id",
        )
        .await?;
    let leases: Vec<Uuid> = batch.iter().map(|r| r.lease_id).collect();
    // A try that was not counted (the route cancelled or failed the delivery) leaves the attempt count alone.
    let counts: Vec<i32> =
        batch.iter().zip(&plan.counted).map(|(r, c)| if *c { r.attempt } else { r.attempt - 1 }).collect();
    // The route evaluated at delivery: its decision is final (its payload is what every retry sends).
    let routed: Vec<bool> = batch
        .iter()
        .map(|r| matches!(r.routed, Some(Routed::Payload(_) | Routed::Skipped | Routed::Failed(_))))
        .collect();
    let payloads: Vec<Option<&[u8]>> = batch
        .iter()
        .map(|r| match &r.routed {
            Some(Routed::Payload(p)) => p.as_deref(),
            _ => None,
        })
        .collect();
    let created: Vec<DateTime<Utc>> = batch.iter().map(|r| r.created_at).collect();
    tx.execute(&stmt, &[&delivery_ids, &states, &counts, &next, &last_errors, &leases, &routed, &payloads, &created])
        .await?;

    let mut changed = tx
        .execute(
            "UPDATE destinations
             SET state = 'disabled', disabled_reason = 'auto: 410 Gone', failing_since = NULL, updated_at = now()
             WHERE id = ANY($1) AND state = 'active'",
            &[&plan.gone],
        )
        .await?;
    if !plan.healthy.is_empty() {
        tx.execute(
            "UPDATE destinations SET failing_since = NULL WHERE id = ANY($1) AND failing_since IS NOT NULL",
            &[&plan.healthy],
        )
        .await?;
    }
    if !plan.failing.is_empty() {
        let secs = auto_disable_after_secs as f64;
        tx.execute(
            "UPDATE destinations SET failing_since = now() WHERE id = ANY($1) AND failing_since IS NULL",
            &[&plan.failing],
        )
        .await?;
        changed += hookgate_store::deliveries::disable_failing(&tx, Some(&plan.failing), secs).await?;
    }
    if changed > 0 {
        tracing::warn!(message = "Destinations disabled by their outcomes.", count = changed);
        tx.execute("SELECT pg_notify($1, 'destination-disabled')", &[&CATALOG_CHANNEL]).await?;
    }
    tx.commit().await?;
    metrics::histogram!("hookgate_result_flush_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("hookgate_result_batch_size").record(batch.len() as f64);
    Ok(())
}
