//! Runs the cluster's periodic singleton jobs (retention, the auto-disable sweep, the lease reaper) on exactly one
//! node at a time, under a PostgreSQL advisory lock.
//!
//! Every node runs a Janitor; each round, the one that takes `pg_try_advisory_xact_lock` does the work and the others
//! skip it. A node that dies mid-round releases the lock with its connection, so the next round runs elsewhere.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Deserialize;

use crate::catalog::CATALOG_CHANNEL;
use crate::health::{ActorState, ActorStatus};
use crate::Pool;

/// The lock that makes a janitor round a singleton.
pub const JANITOR_LOCK: i64 = 0x686f_6f6b_6a61_6e69; // "hookjani"

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JanitorConfig {
    /// Seconds between rounds.
    pub interval_secs: u64,
    /// Events, deliveries and attempts older than this many days are removed (whole daily partitions).
    pub retention_days: u32,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// A destination failing without a success for this long is disabled (the same setting as the result
    /// writer's, applied here also to destinations whose deliveries are all waiting).
    pub auto_disable_after_secs: u64,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self { interval_secs: 60, retention_days: 30, partitions_ahead_days: 3, auto_disable_after_secs: 5 * 24 * 3600 }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// False when another node held the lock.
    pub ran: bool,
    pub partitions_created: i32,
    pub partitions_dropped: i32,
    pub keys_pruned: i64,
    pub leases_reaped: u64,
    pub destinations_disabled: u64,
}

/// Run one round now and answer with its report (tests, and `hookgate` at start-up).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunNow(pub tokio::sync::oneshot::Sender<anyhow::Result<RoundReport>>);

pub struct Janitor {
    pool: Pool,
    cfg: JanitorConfig,
    /// How long an idempotency key is kept (the PostgreSQL side of the dedupe window).
    dedupe_window: Duration,
    status: Arc<ActorStatus>,
}

impl Janitor {
    pub fn new(pool: Pool, cfg: JanitorConfig, dedupe_window: Duration, status: Arc<ActorStatus>) -> Self {
        Self { pool, cfg, dedupe_window, status }
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        self.status.set_state(ActorState::Running);
        ctx.run_interval(Duration::from_secs(self.cfg.interval_secs.max(1)), |act, ctx| {
            let fut = round(act.pool.clone(), act.cfg.clone(), act.dedupe_window);
            ctx.spawn(fut.into_actor(act).map(|res, act, _| act.log(res)));
        });
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
        let fut = round(self.pool.clone(), self.cfg.clone(), self.dedupe_window);
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            let copy = res.as_ref().map(Clone::clone).map_err(|e| anyhow::anyhow!("{e:#}"));
            act.log(copy);
            let _ = msg.0.send(res);
        }));
    }
}

/// One janitor round, if this node takes the lock.
pub async fn round(pool: Pool, cfg: JanitorConfig, dedupe_window: Duration) -> anyhow::Result<RoundReport> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&JANITOR_LOCK]).await?.get(0);
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
        .get(0);
    let keep_days = cfg.retention_days.max(1) as i32;
    report.partitions_dropped = tx
        .query_one("SELECT hookgate_drop_partitions((now() AT TIME ZONE 'UTC')::date - $1::int)", &[&keep_days])
        .await?
        .get(0);
    let window_secs = dedupe_window.as_secs_f64();
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
        .get(0);
    // Expired leases are claimable anyway; clearing them keeps "who holds what" honest for operators.
    report.leases_reaped = tx
        .execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL
             WHERE state = 'pending' AND lease_expires_at < now() - interval '1 minute'",
            &[],
        )
        .await?;
    let auto_disable = cfg.auto_disable_after_secs as f64;
    report.destinations_disabled = tx
        .execute(
            "UPDATE destinations
             SET state = 'disabled', updated_at = now(), failing_since = NULL,
                 disabled_reason = 'auto: failing continuously since ' || failing_since::text
             WHERE state = 'active' AND failing_since < now() - $1 * interval '1 second'",
            &[&auto_disable],
        )
        .await?;
    if report.destinations_disabled > 0 {
        tx.execute("SELECT pg_notify($1, 'destination-disabled')", &[&CATALOG_CHANNEL]).await?;
    }
    tx.commit().await?;
    Ok(report)
}
