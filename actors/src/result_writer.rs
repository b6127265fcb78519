//! Batches attempt rows and delivery state changes into one transaction per flush, and applies what outcomes mean
//! for destinations (410 disables, continuous failure auto-disables).
//!
//! Per result: 2xx → `delivered`; otherwise the retry policy decides the next attempt (with jitter, or after a
//! `Retry-After` on 429/503, capped, and never sooner than the policy's own lower bound nor 1 s:
//! [`RetryPolicy::delay_after`](hookgate_core::retry::RetryPolicy::delay_after)), or `dead` when attempts are exhausted. Every state change releases the lease,
//! and only if this node still holds it. Attempt rows are inserted whatever happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use hookgate_core::internal_events::{emit, DeliveriesDead, ResultsNotStored, ResultsStored};
use hookgate_core::notification::{DeadReason, Happening};

use hookgate_core::catalog::without_nul;
use hookgate_core::delivery::{AttemptOutcome, OutcomePlan, Routed};
use hookgate_core::state::DeliveryState;
use hookgate_store::results::{DestinationOutcomes, Outcome};
use hookgate_store::Pool;

use crate::catalog::SharedCatalog;
use crate::config::DeliveryConfig;
use crate::deliverer::AttemptResult;
use crate::health::{ActorState, ActorStatus};
use crate::notifier::Notices;
use crate::scheduler::{LeasesFreed, Scheduler, Wake, WakeAt};
use crate::shutdown::Shutdown;
use crate::supervision::{guarded, Panicked};
use crate::tail::{Publish, TailPublisher};

/// Batches written at once. Two: a batch's results no longer wait for the previous batch's COMMIT (results are
/// attempts already made; their leases count against their destinations' `max_in_flight` until committed). Each
/// batch holds other deliveries, so the order between batches does not matter.
const FLUSHES: usize = 2;

/// Where the scheduler can be woken once results are committed (set after both are started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectScheduler(pub Addr<Scheduler>);

pub struct ResultWriter {
    pool: Pool,
    catalog: Arc<SharedCatalog>,
    node_id: String,
    cfg: DeliveryConfig,
    pub(crate) status: Arc<ActorStatus>,
    scheduler: Option<Addr<Scheduler>>,
    buffer: Vec<AttemptResult>,
    timer: Option<SpawnHandle>,
    /// Flushes running now (at most [`FLUSHES`]).
    flushing: usize,
    drains: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The back-off delay of the last restart.
    resume_delay: Duration,
    /// The live tail: outcomes are offered to it after COMMIT while someone tails.
    tail: Option<Arc<TailPublisher>>,
    /// Where disabled destinations and dead deliveries are told (operational notifications).
    notices: Notices,
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
            flushing: 0,
            drains: Vec::new(),
            resume_delay: Duration::ZERO,
            tail: None,
            notices: Notices::off(),
        }
    }

    /// Offers the outcomes it records to the live tail (after COMMIT, only while someone tails, never waiting).
    pub fn with_tail(mut self, tail: Arc<TailPublisher>) -> Self {
        self.tail = Some(tail);
        self
    }

    /// Tells `notices` of the destinations each batch disables and the deliveries it makes dead.
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = notices;
        self
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if self.flushing >= FLUSHES || self.buffer.is_empty() {
            return;
        }
        self.flushing += 1;
        let n = self.buffer.len().min(self.cfg.result_batch_max.max(1));
        let batch: Vec<AttemptResult> = self.buffer.drain(..n).collect();
        let outcomes: Vec<AttemptOutcome<'_>> = batch.iter().map(AttemptResult::outcome).collect();
        let cap = Duration::from_secs(self.cfg.max_retry_after_secs);
        let catalog = self.catalog.get();
        let plan = OutcomePlan::new(&outcomes, &catalog, cap, Utc::now());
        // What the committed batch makes claimable: a FIFO destination's next head at once, retries when due.
        let fifo = batch.iter().any(|r| catalog.destinations.get(&r.destination_id).is_some_and(|d| d.fifo));
        let next_due =
            plan.deliveries.iter().filter(|(state, ..)| *state == DeliveryState::Pending).map(|(_, at, _)| *at).min();
        let tail = self.tail.clone().filter(|t| t.active()).map(|t| (t, tail_outcomes(&batch, &plan, &catalog)));
        let (pool, node_id, auto_disable) = (self.pool.clone(), self.node_id.clone(), self.cfg.auto_disable_after_secs);
        let notices = self.notices.clone();
        let fut = async move {
            let res = write(&pool, &node_id, &batch, &plan, auto_disable, &notices).await;
            (res, batch)
        };
        ctx.spawn(guarded(fut).into_actor(self).map(move |outcome, act, ctx| {
            act.flushing = act.flushing.saturating_sub(1);
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
                    if let Some((tail, outcomes)) = tail {
                        tail.offer(Publish::Outcomes(outcomes));
                    }
                    if let Some(s) = &act.scheduler {
                        if fifo {
                            let _ = s.try_send(Wake);
                        } else {
                            let _ = s.try_send(LeasesFreed);
                        }
                        if let Some(at) = next_due {
                            let _ = s.try_send(WakeAt(at));
                        }
                    }
                }
                Err(error) => {
                    // Kept and retried: the batch is bounded by the deliveries in flight, and no new ones are claimed
                    // while PostgreSQL is away. A result whose lease expired meanwhile finds no row to update.
                    act.status.set_state(ActorState::Degraded);
                    emit(ResultsNotStored { error: &format!("{error:#}") });
                    act.buffer.splice(0..0, batch);
                    if let Some(t) = act.timer.take() {
                        ctx.cancel_future(t);
                    }
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
        if self.buffer.is_empty() && self.flushing == 0 {
            for reply in self.drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

/// Flushes everything buffered and answers when nothing is left (sent after the deliverers finished).
impl Handler<Shutdown> for ResultWriter {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.drains.push(msg.reply);
        self.flush(ctx);
        self.answer_drains();
    }
}

impl Actor for ResultWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_in_flight.max(16) * 2);
        // After a restart: no result is taken before the back-off is over, and what was buffered is flushed then,
        // not when the next result happens to arrive (on a quiet node their leases would expire first, and the
        // deliveries be sent again).
        let (status, delay) = (self.status.clone(), std::mem::take(&mut self.resume_delay));
        status.resume_after(delay, self, ctx);
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
        self.flushing = 0;
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

async fn write(
    pool: &Pool,
    node_id: &str,
    batch: &[AttemptResult],
    plan: &OutcomePlan,
    auto_disable_after_secs: u64,
    notices: &Notices,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let errors: Vec<Option<std::borrow::Cow<'_, str>>> =
        batch.iter().map(|r| r.error.as_deref().map(without_nul)).collect();
    let outcomes: Vec<Outcome<'_>> = batch
        .iter()
        .zip(&plan.counted)
        .zip(&plan.deliveries)
        .zip(&errors)
        .map(|(((r, counted), (state, next, last_error)), error)| Outcome {
            delivery_id: r.delivery_id,
            destination_id: r.destination_id,
            created_at: r.created_at,
            lease_id: r.lease_id,
            counted: *counted,
            attempt: r.attempt,
            started_at: r.started_at,
            status: r.status.map(i32::from),
            latency_ms: r.latency_ms,
            response_headers: &r.response_headers,
            excerpt: r.excerpt.as_deref(),
            error_kind: r.error_kind,
            error: error.as_deref(),
            state: state.as_str(),
            next_attempt_at: *next,
            last_error: last_error.as_deref(),
            // A try that was not counted (the route cancelled or failed the delivery) leaves the count alone.
            attempts: if *counted { r.attempt } else { r.attempt - 1 },
            // The route evaluated at delivery: its decision is final (its payload is what every retry sends).
            routed: matches!(r.routed, Some(Routed::Payload(_) | Routed::Skipped | Routed::Failed(_))),
            payload: match &r.routed {
                Some(Routed::Payload(p)) => p.as_deref(),
                _ => None,
            },
        })
        .collect();
    let destinations = DestinationOutcomes {
        gone: plan.gone.clone(),
        healthy: plan.healthy.clone(),
        failing: plan.failing.clone(),
        auto_disable_after_secs: auto_disable_after_secs as f64,
    };
    let recorded = hookgate_store::results::record(pool, node_id, &outcomes, &destinations).await?;
    for d in recorded.disabled {
        tracing::warn!(message = "Destination disabled by its outcomes.", destination = %d.slug, reason = %d.reason);
        notices.send(Happening::Disabled {
            destination: d.id,
            slug: d.slug,
            reason: d.reason,
            disabled_at: d.disabled_at,
        });
    }
    for (destination, count) in recorded.dead {
        let (count, reason) = (count.max(0) as u64, DeadReason::Exhausted);
        emit(DeliveriesDead { destination, reason, count });
        notices.send(Happening::Dead { destination, count, reason });
    }
    emit(ResultsStored { size: batch.len(), elapsed: started.elapsed() });
    Ok(())
}

/// What the live tail shows of a batch's outcomes: each attempt with what it made of its delivery.
fn tail_outcomes(
    batch: &[AttemptResult],
    plan: &OutcomePlan,
    catalog: &hookgate_core::catalog::Catalog,
) -> Vec<hookgate_core::tail::TailOutcome> {
    let source_of = |route_id: uuid::Uuid| {
        catalog.routes_by_source.values().flatten().find(|r| r.id == route_id).map(|r| r.source_id)
    };
    batch
        .iter()
        .zip(&plan.deliveries)
        .map(|(r, (state, ..))| hookgate_core::tail::TailOutcome {
            delivery_id: r.delivery_id,
            event_id: r.event_id,
            source_id: source_of(r.route_id),
            destination_id: r.destination_id,
            destination: catalog
                .destinations
                .get(&r.destination_id)
                .map_or_else(|| "unknown".to_owned(), |d| d.slug.clone()),
            attempt: r.attempt,
            outcome: hookgate_core::tail::outcome_word(*state).to_owned(),
            status: r.status,
            latency_ms: r.latency_ms,
            error_kind: r.error_kind.map(str::to_owned),
            started_at: r.started_at,
        })
        .collect()
}
