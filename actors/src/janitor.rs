//! Runs the cluster's periodic singleton jobs (retention, the auto-disable sweep, the lease reaper) on exactly one
//! node at a time, under a PostgreSQL advisory lock.
//!
//! Every node runs a Janitor; each round, the one that takes `pg_try_advisory_lock` does the work and the others
//! skip it. A node that dies mid-round releases the lock with its connection, so the next round runs elsewhere.
//!
//! A round is a series of short transactions (see [`hookgate_store::maintenance`]): each partition created or dropped
//! in its own, under a lock time-out (`retention.ddl_lock_timeout_ms`), so that ingest never queues for long behind
//! the janitor's DDL; a change that times out is logged, counted in `hookgate_janitor_ddl_deferred_total{action}` and
//! tried again next round. Idempotency keys past the dedupe window are deleted in batches of
//! `retention.key_prune_batch` until none is left, however fast they arrived.
//!
//! Retention never removes an unfinished delivery in silence: before a daily partition past the retention age is
//! dropped, every `pending` delivery in it (leased or not, e.g. of a paused or disabled destination) is made
//! `dead` with the reason [`EXPIRED_REASON`], counted in `hookgate_deliveries_expired_total{destination}` and logged
//! as a warning per destination. A delivery lives in its event's partition (its `created_at` is the event's
//! `received_at`), so the two are dropped together.
//!
//! Every `statistics_interval_secs` (10 s) it also refreshes the planner statistics of the partitions that at least
//! doubled since their last `ANALYZE` ([`refresh_statistics`]): autovacuum looks only once a minute, and a plan cached
//! while a daily partition was still empty (every midnight, every new cluster) reads the whole partition where it
//! should probe one row.
//!
//! Every `vacuum_interval_secs` (10 s) it vacuums the partitions of `deliveries` whose dead row versions reach
//! `vacuum_dead_rows` (50,000) and `vacuum_dead_fraction` (0.1) of their live rows ([`vacuum_deliveries`]): each
//! finished delivery leaves entries in the indexes every claim round walks, and nothing but a vacuum removes them
//! (ADR-0025). Every node looks; `VACUUM (SKIP_LOCKED)` passes over a partition another node is vacuuming. The
//! statistics refresh and the vacuum look do not run at once on a node: one whose interval comes while the other runs
//! starts right after it ([`UpkeepQueue`]), instead of passing over the partition the other holds; a job that has run
//! for five minutes no longer holds the other back, which then runs beside it (never two of the same job).
//!
//! [`EXPIRED_REASON`]: hookgate_store::maintenance::EXPIRED_REASON

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use hookgate_core::internal_events::{
    emit, DeliveriesDead, DeliveriesExpired, DeliveriesVacuumed, PartitionChangeDeferred,
};
use hookgate_core::notification::{DeadReason, Happening};
use hookgate_store::maintenance::{refresh_statistics, vacuum_deliveries, RoundReport, VacuumPolicy};
use hookgate_store::Pool;
use serde::Deserialize;

use crate::health::{ActorState, ActorStatus};
use crate::notifier::Notices;
use crate::shutdown::Shutdown;
use crate::supervision::{guarded, Panicked};

/// Retention and the periodic singleton jobs (run on one node at a time): the `[retention]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Seconds between rounds of the singleton jobs.
    pub interval_secs: u64,
    /// Events, deliveries and attempts are kept this many days (then their daily partitions are dropped).
    pub days: u32,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// How long PostgreSQL remembers an idempotency key: a repeat within this window is a duplicate.
    pub dedupe_window_secs: u64,
    /// Seconds between planner-statistics refreshes of the partitions that doubled (0: autovacuum alone).
    pub statistics_interval_secs: u64,
    /// Seconds between looks for partitions of `deliveries` worth a vacuum (0: autovacuum alone).
    pub vacuum_interval_secs: u64,
    /// A partition is vacuumed once its dead row versions reach this many…
    pub vacuum_dead_rows: u64,
    /// …and this fraction of its live rows.
    pub vacuum_dead_fraction: f64,
    /// Idempotency keys deleted per statement when pruning; a round deletes batches until none past the window is
    /// left.
    pub key_prune_batch: u64,
    /// Longest a partition's creation or drop waits for its locks (`lock_timeout`); past it the change is left for
    /// the next round, and ingest stops queueing behind it.
    pub ddl_lock_timeout_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            days: 30,
            partitions_ahead_days: 3,
            dedupe_window_secs: 7 * 24 * 3600,
            statistics_interval_secs: 10,
            vacuum_interval_secs: 10,
            vacuum_dead_rows: 50_000,
            vacuum_dead_fraction: 0.1,
            key_prune_batch: 10_000,
            ddl_lock_timeout_ms: 2_000,
        }
    }
}

/// Run one round now and answer with its report (the tests send it). Nothing sends it at start-up: the first round
/// runs one `interval_secs` after the actor starts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunNow(pub tokio::sync::oneshot::Sender<anyhow::Result<RoundReport>>);

pub struct Janitor {
    pool: Pool,
    cfg: RetentionSettings,
    /// A destination failing without a success for this long is disabled (`delivery.auto_disable_after_secs`, the
    /// result writer's setting, applied here also to destinations whose deliveries are all waiting).
    auto_disable_after: Duration,
    pub(crate) status: Arc<ActorStatus>,
    /// Set by [`Shutdown`]: no round starts after it.
    stopped: bool,
    /// The statistics refresh and the vacuum look: one at a time, the other waiting for its turn.
    upkeep: UpkeepQueue,
    /// After a restart: how long to wait before taking work again (the supervision back-off).
    resume_delay: Duration,
    /// Where disabled destinations and expired deliveries are told (operational notifications).
    notices: Notices,
}

impl Janitor {
    pub fn new(pool: Pool, cfg: RetentionSettings, auto_disable_after: Duration, status: Arc<ActorStatus>) -> Self {
        Self {
            pool,
            cfg,
            auto_disable_after,
            status,
            stopped: false,
            upkeep: UpkeepQueue::default(),
            resume_delay: Duration::ZERO,
            notices: Notices::off(),
        }
    }

    /// Tells `notices` of the destinations a round disables and the deliveries retention expires.
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = notices;
        self
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        let (status, delay) = (self.status.clone(), std::mem::take(&mut self.resume_delay));
        status.resume_after(delay, self, ctx);
        ctx.run_interval(Duration::from_secs(self.cfg.interval_secs.max(1)), |act, ctx| {
            if act.stopped {
                return;
            }
            let fut = guarded(round(act.pool.clone(), act.cfg.clone(), act.auto_disable_after, act.notices.clone()));
            ctx.spawn(fut.into_actor(act).map(|res, act, ctx| match res {
                Ok(res) => act.log(res),
                Err(Panicked(what)) => {
                    act.status.record_panic(&what);
                    ctx.stop();
                }
            }));
        });
        if self.cfg.statistics_interval_secs > 0 {
            ctx.run_interval(Duration::from_secs(self.cfg.statistics_interval_secs), |act, ctx| {
                act.upkeep_due(Upkeep::Statistics, ctx)
            });
        }
        if self.cfg.vacuum_interval_secs > 0 {
            ctx.run_interval(Duration::from_secs(self.cfg.vacuum_interval_secs), |act, ctx| {
                act.upkeep_due(Upkeep::Vacuum, ctx)
            });
        }
    }
}

/// The two upkeep jobs on the partitions, each on its own interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upkeep {
    /// `ANALYZE` of the partitions that doubled ([`refresh_statistics`]).
    Statistics,
    /// `VACUUM` of the delivery partitions past the policy ([`vacuum_deliveries`]).
    Vacuum,
}

/// Runs the upkeep jobs one at a time. Both take the same lock on a partition, and each passes over a partition
/// the other holds (`SKIP_LOCKED`): run at once, on intervals that fall together, the one that started second would
/// pass over the busiest partition at every interval. A job whose interval comes while the other runs waits for it
/// and starts right after; one whose interval comes while it still runs itself skips that interval. A job that has
/// run for [`UPKEEP_HOLD`] no longer holds the other back (a vacuum of a huge partition, or one stuck on a lock): the
/// other then starts at its next interval beside it. Never two of the same job at once.
#[derive(Debug, Default)]
struct UpkeepQueue {
    /// Each job's run, if one is running: since when, and its ticket (what its end is matched by).
    runs: [Option<(Instant, u64)>; 2],
    waiting: Option<Upkeep>,
    tickets: u64,
}

/// How long one upkeep job may hold the other back.
const UPKEEP_HOLD: Duration = Duration::from_secs(300);

impl Upkeep {
    fn slot(self) -> usize {
        match self {
            Upkeep::Statistics => 0,
            Upkeep::Vacuum => 1,
        }
    }

    fn other(self) -> Upkeep {
        match self {
            Upkeep::Statistics => Upkeep::Vacuum,
            Upkeep::Vacuum => Upkeep::Statistics,
        }
    }
}

impl UpkeepQueue {
    /// `job`'s interval came at `now`: the ticket to start it with now, or `None` (it waits, or still runs).
    fn due(&mut self, job: Upkeep, now: Instant) -> Option<u64> {
        if self.runs[job.slot()].is_some() {
            return None;
        }
        if self.holds_back(job, now) {
            self.waiting = Some(job);
            return None;
        }
        // Nothing else runs, or the other job has held this one back long enough: it starts beside it.
        if self.waiting == Some(job) {
            self.waiting = None;
        }
        Some(self.start(job, now))
    }

    /// Whether the other job runs and has not yet run for the hold.
    fn holds_back(&self, job: Upkeep, now: Instant) -> bool {
        self.runs[job.other().slot()].is_some_and(|(since, _)| now.saturating_duration_since(since) < UPKEEP_HOLD)
    }

    /// Forgets the running and the waiting job (a restart, a shutdown); tickets stay unique, so the end of a job
    /// forgotten here never matches a later one.
    fn reset(&mut self) {
        (self.runs, self.waiting) = ([None, None], None);
    }

    fn start(&mut self, job: Upkeep, now: Instant) -> u64 {
        self.tickets += 1;
        self.runs[job.slot()] = Some((now, self.tickets));
        self.tickets
    }

    /// The run of `ticket` finished at `now`: the job to start now and its ticket, if one waited and nothing holds it
    /// back any more.
    fn finished(&mut self, ticket: u64, now: Instant) -> Option<(Upkeep, u64)> {
        let slot = self.runs.iter().position(|r| r.is_some_and(|(_, t)| t == ticket))?;
        self.runs[slot] = None;
        let next = self.waiting?;
        if self.runs[next.slot()].is_some() || self.holds_back(next, now) {
            return None;
        }
        self.waiting = None;
        Some((next, self.start(next, now)))
    }
}

impl Janitor {
    /// `job`'s interval came: starts it, unless the other upkeep job runs (it then starts after it) or it still does.
    fn upkeep_due(&mut self, job: Upkeep, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        if let Some(ticket) = self.upkeep.due(job, Instant::now()) {
            self.start_upkeep(job, ticket, ctx);
        }
    }

    fn start_upkeep(&mut self, job: Upkeep, ticket: u64, ctx: &mut Context<Self>) {
        match job {
            Upkeep::Statistics => self.refresh_statistics(ticket, ctx),
            Upkeep::Vacuum => self.vacuum(ticket, ctx),
        }
    }

    /// The upkeep job of `ticket` finished: starts the one that waited for it, if any.
    fn upkeep_finished(&mut self, ticket: u64, ctx: &mut Context<Self>) {
        if let Some((next, ticket)) = self.upkeep.finished(ticket, Instant::now()) {
            if self.stopped {
                self.upkeep.reset();
            } else {
                self.start_upkeep(next, ticket, ctx);
            }
        }
    }

    /// Refreshes the planner statistics of the partitions that doubled.
    fn refresh_statistics(&mut self, ticket: u64, ctx: &mut Context<Self>) {
        let fut = guarded(refresh_statistics(self.pool.clone()));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(res) => {
                match res {
                    Ok(analyzed) if !analyzed.is_empty() => {
                        tracing::debug!(message = "Planner statistics refreshed.", partitions = ?analyzed)
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(message = "Could not refresh planner statistics.", error = %format!("{error:#}"))
                    }
                }
                act.upkeep_finished(ticket, ctx);
            }
            Err(Panicked(what)) => {
                act.status.record_panic(&what);
                ctx.stop();
            }
        }));
    }

    /// Vacuums the partitions of `deliveries` the policy names. The look is a task of its own on the arbiter: an
    /// actor restart or a shutdown never drops it halfway, with a pooled connection still vacuuming and its
    /// statement time-out lifted.
    fn vacuum(&mut self, ticket: u64, ctx: &mut Context<Self>) {
        let policy = VacuumPolicy {
            min_dead_rows: i64::try_from(self.cfg.vacuum_dead_rows).unwrap_or(i64::MAX),
            dead_fraction: self.cfg.vacuum_dead_fraction,
        };
        let started = std::time::Instant::now();
        let look = actix::spawn(vacuum_deliveries(self.pool.clone(), policy));
        ctx.spawn(look.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(vacuumed)) if !vacuumed.is_empty() => {
                    let partitions: Vec<String> = vacuumed.iter().map(|v| v.partition.clone()).collect();
                    let dead_rows = vacuumed.iter().map(|v| v.dead_rows).sum();
                    emit(DeliveriesVacuumed { partitions: &partitions, dead_rows, took: started.elapsed() });
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(message = "Could not vacuum the delivery partitions.", error = %format!("{error:#}"))
                }
                Err(join) if join.is_panic() => {
                    act.status.record_panic(&join.to_string());
                    ctx.stop();
                    return;
                }
                // Cancelled: the arbiter is stopping.
                Err(_) => return,
            }
            act.upkeep_finished(ticket, ctx);
        }));
    }

    fn log(&self, res: anyhow::Result<RoundReport>) {
        match res {
            Ok(r) if r.ran => {
                self.status.set_state(ActorState::Running);
                tracing::debug!(message = "Janitor round.", ?r);
            }
            Ok(_) => {}
            Err(error) => {
                self.status.set_state(ActorState::Degraded);
                tracing::warn!(message = "Janitor round failed.", error = %format!("{error:#}"));
            }
        }
    }
}

impl actix::Supervised for Janitor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // A look still running finishes on its own; the next one passes over the partition it holds.
        self.upkeep.reset();
        self.resume_delay = self.status.record_restart();
    }
}

/// Starts no round after it; a round running now is a series of short transactions, each committing or rolling back
/// whole, so it needs no waiting for: stopped between two of them, the next round (on any node) goes on from there.
impl Handler<Shutdown> for Janitor {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) {
        self.stopped = true;
        let _ = msg.reply.send(());
    }
}

impl Handler<RunNow> for Janitor {
    type Result = ();
    fn handle(&mut self, msg: RunNow, ctx: &mut Self::Context) {
        let fut = guarded(round(self.pool.clone(), self.cfg.clone(), self.auto_disable_after, self.notices.clone()));
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            let res = match res {
                Ok(res) => res,
                Err(Panicked(what)) => {
                    act.status.record_panic(&what);
                    let _ = msg.0.send(Err(anyhow::anyhow!("the janitor round panicked: {what}")));
                    ctx.stop();
                    return;
                }
            };
            let copy = res.as_ref().map(Clone::clone).map_err(|e| anyhow::anyhow!("{e:#}"));
            act.log(copy);
            let _ = msg.0.send(res);
        }));
    }
}

/// One janitor round, if this node takes the lock; its expired deliveries and disabled destinations are counted,
/// logged and told to `notices` here.
pub async fn round(
    pool: Pool,
    cfg: RetentionSettings,
    auto_disable_after: Duration,
    notices: Notices,
) -> anyhow::Result<RoundReport> {
    let job = hookgate_store::maintenance::Round {
        partitions_ahead_days: i32::try_from(cfg.partitions_ahead_days).unwrap_or(i32::MAX),
        retention_days: i32::try_from(cfg.days.max(1)).unwrap_or(i32::MAX),
        dedupe_window_secs: cfg.dedupe_window_secs as f64,
        auto_disable_after_secs: auto_disable_after.as_secs_f64(),
        key_batch: i64::try_from(cfg.key_prune_batch.max(1)).unwrap_or(i64::MAX),
        ddl_lock_timeout: Duration::from_millis(cfg.ddl_lock_timeout_ms.max(1)),
    };
    let report = hookgate_store::maintenance::round(&pool, &job).await?;
    for (id, slug, count) in &report.expired_by_destination {
        emit(DeliveriesExpired { destination: slug, count: *count, retention_days: job.retention_days });
        let (count, reason) = ((*count).max(0) as u64, DeadReason::Expired);
        emit(DeliveriesDead { destination: *id, reason, count });
        notices.send(Happening::Dead { destination: *id, count, reason });
    }
    for d in &report.destinations_disabled {
        tracing::warn!(message = "Destination disabled: failing continuously.", destination = %d.slug, reason = %d.reason);
        notices.send(Happening::Disabled {
            destination: d.id,
            slug: d.slug.clone(),
            reason: d.reason.clone(),
            disabled_at: d.disabled_at,
        });
    }
    for d in &report.ddl_deferred {
        emit(PartitionChangeDeferred { action: d.action, partition: &d.partition, reason: &d.reason });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_jobs_run_one_at_a_time_and_one_whose_turn_came_meanwhile_runs_next() {
        let (mut q, t) = (UpkeepQueue::default(), Instant::now());
        let vacuum = q.due(Upkeep::Vacuum, t).expect("nothing running: the vacuum starts");
        assert_eq!(q.due(Upkeep::Statistics, t), None, "the statistics refresh waits for the vacuum");
        assert_eq!(q.due(Upkeep::Vacuum, t), None, "a vacuum still running skips its next interval");
        let (next, refresh) = q.finished(vacuum, t).expect("a job waited");
        assert_eq!(next, Upkeep::Statistics, "the refresh runs right after the vacuum");
        assert_eq!(q.due(Upkeep::Vacuum, t), None, "and the vacuum now waits for it");
        assert_eq!(q.due(Upkeep::Statistics, t), None, "a refresh still running skips its next interval");
        let (next, vacuum) = q.finished(refresh, t).expect("a job waited");
        assert_eq!(next, Upkeep::Vacuum);
        assert_eq!(q.finished(vacuum, t), None, "nothing waited");
        assert!(q.due(Upkeep::Statistics, t).is_some(), "nothing running: the refresh starts at once");
    }

    #[test]
    fn a_job_that_runs_past_the_hold_no_longer_holds_the_other_back_and_never_runs_twice() {
        let (mut q, t) = (UpkeepQueue::default(), Instant::now());
        let stuck = q.due(Upkeep::Vacuum, t).expect("the vacuum starts");
        let almost = t + UPKEEP_HOLD - Duration::from_secs(1);
        assert_eq!(q.due(Upkeep::Statistics, almost), None, "within the hold, the refresh waits");
        let late = t + UPKEEP_HOLD;
        let refresh = q.due(Upkeep::Statistics, late).expect("past the hold, the refresh starts beside the vacuum");
        assert_eq!(q.due(Upkeep::Statistics, late), None, "a refresh still running skips its next interval");
        assert_eq!(q.due(Upkeep::Vacuum, late), None, "the stuck vacuum still runs: no second one");
        assert_eq!(q.finished(refresh, late), None, "nothing waited");
        let later = late + Duration::from_secs(10);
        assert_eq!(q.due(Upkeep::Vacuum, later), None, "the stuck vacuum outlived the refresh: still no second one");
        let again = q.due(Upkeep::Statistics, later).expect("the refresh keeps its intervals beside the stuck vacuum");
        assert_eq!(q.finished(again, later), None);
        assert_eq!(q.finished(stuck, later), None, "the stuck vacuum's end starts nothing: nothing waited");
        assert!(q.due(Upkeep::Vacuum, later).is_some(), "and the next vacuum starts at its interval");
        assert_eq!(q.finished(stuck, later), None, "an old ticket matches nothing");
    }

    #[test]
    fn a_job_waiting_for_one_that_ends_after_the_hold_starts_when_it_ends() {
        let (mut q, t) = (UpkeepQueue::default(), Instant::now());
        let vacuum = q.due(Upkeep::Vacuum, t).expect("the vacuum starts");
        assert_eq!(q.due(Upkeep::Statistics, t + Duration::from_secs(10)), None, "the refresh waits");
        let end = t + UPKEEP_HOLD + Duration::from_secs(1);
        let (next, _) = q.finished(vacuum, end).expect("the waiting refresh starts when the vacuum ends");
        assert_eq!(next, Upkeep::Statistics);
    }
}
