//! The cluster's periodic maintenance statements: partitions, retention, key pruning, the lease reaper, the
//! auto-disable sweep, and planner statistics. Each runs on one node at a time, under its advisory lock.

use crate::channels::CATALOG_CHANNEL;
use crate::locks::{JANITOR_LOCK, STATISTICS_LOCK};
use crate::Pool;

/// Why a delivery still pending when retention dropped its partition ended `dead`.
pub const EXPIRED_REASON: &str = "expired by retention";

/// What a round keeps and for how long.
#[derive(Debug, Clone)]
pub struct Round {
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: i32,
    /// Daily partitions older than this many days are dropped.
    pub retention_days: i32,
    /// Idempotency keys older than this are pruned.
    pub dedupe_window_secs: f64,
    /// Destinations failing without a success for longer than this are disabled.
    pub auto_disable_after_secs: f64,
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
    /// The same, per destination (slug, count).
    pub expired_by_destination: Vec<(String, i64)>,
    pub keys_pruned: i64,
    pub leases_reaped: u64,
    pub destinations_disabled: u64,
}

/// One round of the cluster's singleton jobs, if this node takes the lock: partitions ahead, retention (pending
/// deliveries in the partitions to drop made `dead` first, with [`EXPIRED_REASON`]), idempotency keys past the
/// dedupe window, expired leases, and the auto-disable sweep.
pub async fn round(pool: &Pool, job: &Round) -> anyhow::Result<RoundReport> {
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
            &[&job.partitions_ahead_days],
        )
        .await?
        .try_get(0)?;
    let keep_days = job.retention_days;
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
        report.expired_by_destination.push((slug, count));
    }
    report.partitions_dropped = tx
        .query_one("SELECT hookgate_drop_partitions((now() AT TIME ZONE 'UTC')::date - $1::int)", &[&keep_days])
        .await?
        .try_get(0)?;
    let window_secs = job.dedupe_window_secs;
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
    let auto_disable = job.auto_disable_after_secs;
    report.destinations_disabled = crate::deliveries::disable_failing(&tx, None, auto_disable).await?;
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
