//! Runs the cluster's periodic singleton jobs (retention, the auto-disable sweep, the lease reaper) on exactly one
//! node at a time, under a PostgreSQL advisory lock.
//!
//! Every node runs a Janitor; each round, the one that takes `pg_try_advisory_xact_lock` does the work and the others
//! skip it. A node that dies mid-round releases the lock with its connection, so the next round runs elsewhere.
//!
//! Retention never removes an unfinished delivery in silence: before the daily partitions past the retention age
//! are dropped, every `pending` delivery in them (leased or not, e.g. of a paused or disabled destination) is made
//! `dead` with the reason [`EXPIRED_REASON`], counted in `hookgate_deliveries_expired_total{destination}` and logged
//! as a warning per destination. A delivery lives in its event's partition (its `created_at` is the event's
//! `received_at`), so the two are dropped together.
//!
//! Every `statistics_interval_secs` (10 s) it also refreshes the planner statistics of the partitions that at least
//! doubled since their last `ANALYZE` ([`refresh_statistics`]): autovacuum looks only once a minute, and a plan cached
//! while a daily partition was still empty (every midnight, every new cluster) reads the whole partition where it
//! should probe one row.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Deserialize;

use crate::catalog::CATALOG_CHANNEL;
use crate::health::{ActorState, ActorStatus};
use crate::supervision::{guarded, Panicked};
use crate::Pool;

/// Why a delivery still pending when retention dropped its partition ended `dead`.
pub const EXPIRED_REASON: &str = "expired by retention";

pub use hookgate_store::locks::{JANITOR_LOCK, STATISTICS_LOCK};

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
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            days: 30,
            partitions_ahead_days: 3,
            dedupe_window_secs: 7 * 24 * 3600,
            statistics_interval_secs: 10,
        }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// False when another node held the lock.
    pub ran: bool,
    pub partitions_created: i32,
    pub partitions_dropped: i32,
    /// Pending deliveries made `dead` because their partition was dropped.
    pub deliveries_expired: i64,
    pub keys_pruned: i64,
    pub leases_reaped: u64,
    pub destinations_disabled: u64,
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
    status: Arc<ActorStatus>,
}

impl Janitor {
    pub fn new(pool: Pool, cfg: RetentionSettings, auto_disable_after: Duration, status: Arc<ActorStatus>) -> Self {
        Self { pool, cfg, auto_disable_after, status }
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        self.status.set_state(ActorState::Running);
        ctx.run_interval(Duration::from_secs(self.cfg.interval_secs.max(1)), |act, ctx| {
            let fut = guarded(round(act.pool.clone(), act.cfg.clone(), act.auto_disable_after));
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
                let fut = guarded(refresh_statistics(act.pool.clone()));
                ctx.spawn(fut.into_actor(act).map(|res, act, ctx| match res {
                    Ok(Ok(analyzed)) if !analyzed.is_empty() => {
                        tracing::debug!(message = "Planner statistics refreshed.", partitions = ?analyzed)
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(message = "Could not refresh planner statistics.", error = %format!("{error:#}"))
                    }
                    Err(Panicked(what)) => {
                        act.status.record_panic(&what);
                        ctx.stop();
                    }
                }));
            });
        }
    }
}

impl Janitor {
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
        self.status.record_restart();
    }
}

impl Handler<RunNow> for Janitor {
    type Result = ();
    fn handle(&mut self, msg: RunNow, ctx: &mut Self::Context) {
        let fut = guarded(round(self.pool.clone(), self.cfg.clone(), self.auto_disable_after));
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

/// One janitor round, if this node takes the lock.
pub async fn round(pool: Pool, cfg: RetentionSettings, auto_disable_after: Duration) -> anyhow::Result<RoundReport> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&JANITOR_LOCK]).await?.try_get(0)?;
    if !locked {
        return Ok(RoundReport::default());
    }
    let mut report = RoundReport { ran: true, ..Default::default() };
    report.partitions_created = tx
        .query_one(
            "SELECT hookgate_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, $1)",
            &[&(cfg.partitions_ahead_days as i32)],
        )
        .await?
        .try_get(0)?;
    let keep_days = cfg.days.max(1) as i32;
    // Unfinished deliveries in the partitions about to go: dead, with a reason, counted and logged first.
    let expired = tx
        .query(
            "WITH expired AS (
                 UPDATE deliveries d
                 SET state = 'dead', last_error = $2, lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL,
                     updated_at = now()
                 WHERE d.state = 'pending'
                   AND d.created_at < ((now() AT TIME ZONE 'UTC')::date - $1::int)::timestamp AT TIME ZONE 'UTC'
                   AND d.tableoid::regclass::text ~ '_p[0-9]{8}$'
                 RETURNING d.destination_id)
             SELECT x.slug, count(*) FROM expired JOIN destinations x ON x.id = expired.destination_id
             GROUP BY x.slug",
            &[&keep_days, &EXPIRED_REASON],
        )
        .await?;
    for row in &expired {
        let slug: String = row.try_get(0).unwrap_or_default();
        let count: i64 = row.try_get(1).unwrap_or(0);
        report.deliveries_expired += count;
        metrics::counter!("hookgate_deliveries_expired_total", "destination" => slug.clone())
            .increment(count.max(0) as u64);
        tracing::warn!(
            message = "Retention expired deliveries that were never delivered; they are dead.",
            destination = %slug,
            count,
            retention_days = keep_days,
        );
    }
    report.partitions_dropped = tx
        .query_one("SELECT hookgate_drop_partitions((now() AT TIME ZONE 'UTC')::date - $1::int)", &[&keep_days])
        .await?
        .try_get(0)?;
    let window_secs = cfg.dedupe_window_secs as f64;
    report.keys_pruned = tx
        .query_one(
            "WITH old AS (
                 SELECT source_id, idempotency_key FROM event_keys
                 WHERE received_at < now() - $1 * interval '1 second' LIMIT 50000)
             , gone AS (
                 DELETE FROM event_keys k USING old
                 WHERE k.source_id = old.source_id AND k.idempotency_key = old.idempotency_key RETURNING 1)
             SELECT count(*) FROM gone",
            &[&window_secs],
        )
        .await?
        .try_get(0)?;
    // Expired leases are claimable anyway; clearing them keeps "who holds what" honest for operators.
    report.leases_reaped = tx
        .execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL
             WHERE state = 'pending' AND lease_expires_at < now() - interval '1 minute'",
            &[],
        )
        .await?;
    let auto_disable = auto_disable_after.as_secs_f64();
    report.destinations_disabled = hookgate_store::deliveries::disable_failing(&tx, None, auto_disable).await?;
    if report.destinations_disabled > 0 {
        tx.execute("SELECT pg_notify($1, 'destination-disabled')", &[&CATALOG_CHANNEL]).await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// Runs `ANALYZE` on every partition of `events`, `deliveries` and `attempts` whose changes since it was last
/// analyzed exceed its size then (at least 1,000 rows), if this node takes the lock; answers the partitions analyzed.
/// Analyzing invalidates the plans cached on every connection, so the hot statements are planned again with sizes
/// at most about twice off: enough to keep a primary-key probe from turning into a scan, while the replanning it
/// costs every connection happens a few times per partition (1k, 2k, 4k, … rows), not every few seconds.
pub async fn refresh_statistics(pool: Pool) -> anyhow::Result<Vec<String>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&STATISTICS_LOCK]).await?.try_get(0)?;
    if !locked {
        return Ok(Vec::new());
    }
    let stale = tx
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_stat_all_tables s ON s.relid = c.oid
             WHERE i.inhparent IN ('events'::regclass, 'deliveries'::regclass, 'attempts'::regclass)
               AND s.n_mod_since_analyze > greatest(c.reltuples, 1000)",
            &[],
        )
        .await?;
    let mut analyzed = Vec::with_capacity(stale.len());
    for row in &stale {
        let name: String = row.try_get(0)?;
        // The name comes from the catalog, quoted by format('%I'): nothing from outside reaches this statement.
        tx.batch_execute(&format!("ANALYZE {name}")).await?;
        analyzed.push(name);
    }
    tx.commit().await?;
    Ok(analyzed)
}
