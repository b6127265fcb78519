//! The cluster's periodic maintenance statements: partitions, retention, key pruning, the lease reaper, the
//! auto-disable sweep, and planner statistics. Each runs on one node at a time, under its advisory lock.
//!
//! A janitor [`round`] is a series of short transactions on one connection that holds the janitor's lock for the
//! session, never one long transaction: whatever one step locks is released when that step commits.
//!
//! - **Partitions** are created and dropped one at a time, each in a transaction of its own whose locks are waited
//!   for at most [`Round::ddl_lock_timeout`] (`lock_timeout`, and `statement_timeout` around the statement that takes
//!   them). A change that cannot have its locks in time (or that PostgreSQL cancels to break a deadlock) is rolled
//!   back and reported in [`RoundReport::ddl_deferred`]: the next round tries it again. Before a partition is dropped,
//!   its pending deliveries are made `dead` in a transaction that locks only their rows, and the janitor waits for
//!   the partition's own lock alone and lets it go, so that the usual wait (a long read of old data) holds no lock
//!   on the parent table that ingest writes to; the drop itself then locks the parent and the partition, in the
//!   order every statement does, for as long as the catalog change takes.
//! - **Idempotency keys** past the dedupe window are deleted in batches of [`Round::key_batch`], each its own
//!   statement, until none is left: pruning keeps up with any ingest rate, and no statement holds many row locks.
//! - The **lease reaper** is one statement; the **auto-disable sweep** one transaction with its NOTIFY.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

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
    /// Idempotency keys deleted per statement (at least 1).
    pub key_batch: i64,
    /// Longest a partition's creation or drop waits for a lock (`lock_timeout`) before it is left for the next round.
    pub ddl_lock_timeout: Duration,
}

/// A partition change a round gave up on, to be tried again next round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredDdl {
    /// `create` or `drop`.
    pub action: &'static str,
    /// The partition, as PostgreSQL names it.
    pub partition: String,
    /// PostgreSQL's reason (a lock time-out, a deadlock broken, a cancelled statement).
    pub reason: String,
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
    /// The same, per destination (id, slug, count).
    pub expired_by_destination: Vec<(Uuid, String, i64)>,
    pub keys_pruned: i64,
    /// The statements that pruned them (the last one found fewer than a batch).
    pub key_batches: u32,
    pub leases_reaped: u64,
    /// The destinations the auto-disable sweep disabled.
    pub destinations_disabled: Vec<crate::deliveries::DisabledDestination>,
    /// Partition changes that did not get their locks in time; the next round tries them again.
    pub ddl_deferred: Vec<DeferredDdl>,
}

/// One round of the cluster's singleton jobs, if this node takes the lock: partitions ahead, retention (pending
/// deliveries in each partition to drop made `dead` first, with [`EXPIRED_REASON`]), idempotency keys past the
/// dedupe window, expired leases, and the auto-disable sweep; each step in short transactions of its own (see the
/// module documentation).
pub async fn round(pool: &Pool, job: &Round) -> anyhow::Result<RoundReport> {
    let Some(mut session) = Session::lock(pool, JANITOR_LOCK).await? else { return Ok(RoundReport::default()) };
    let mut report = RoundReport { ran: true, ..Default::default() };
    let client = session.client();
    create_partitions(client, job, &mut report).await?;
    drop_partitions(client, job, &mut report).await?;
    prune_keys(client, job, &mut report).await?;
    // Expired leases are claimable anyway; clearing them keeps "who holds what" honest for operators.
    report.leases_reaped = client
        .execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL
             WHERE state = 'pending' AND lease_expires_at < now() - interval '1 minute'",
            &[],
        )
        .await?;
    let tx = client.transaction().await?;
    report.destinations_disabled = crate::deliveries::disable_failing(&tx, None, job.auto_disable_after_secs).await?;
    if !report.destinations_disabled.is_empty() {
        tx.execute("SELECT pg_notify($1, 'destination-disabled')", &[&CATALOG_CHANNEL]).await?;
    }
    tx.commit().await?;
    session.unlock(JANITOR_LOCK).await?;
    Ok(report)
}

/// A pooled connection holding a session-level advisory lock (a round is several transactions, so the lock cannot be
/// one transaction's). [`Session::unlock`] releases it and gives the connection back to the pool; dropped any other
/// way (an error, a panic), the connection is taken out of the pool and closed, which releases the lock: a pooled
/// connection never goes back holding it.
struct Session(Option<Object>);

impl Session {
    /// The lock, if no other session holds it.
    async fn lock(pool: &Pool, lock: i64) -> anyhow::Result<Option<Self>> {
        let mut session = Self(Some(pool.get().await?));
        let locked: bool = session.client().query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await?.try_get(0)?;
        if locked {
            Ok(Some(session))
        } else {
            session.0.take();
            Ok(None)
        }
    }

    fn client(&mut self) -> &mut Object {
        self.0.as_mut().expect("a session holds its connection until it is unlocked or dropped")
    }

    /// Releases the lock; the connection goes back to the pool.
    async fn unlock(mut self, lock: i64) -> anyhow::Result<()> {
        self.client().execute("SELECT pg_advisory_unlock($1)", &[&lock]).await?;
        self.0.take();
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Whether a statement gave up waiting: a lock time-out, the statement time-out of a partition change's locks, or a
/// deadlock PostgreSQL broke by cancelling it. Trying again later may succeed.
fn gave_up_waiting(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::QUERY_CANCELED
    })
}

/// PostgreSQL's own words for an error (its message, not the driver's "db error").
fn reason(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string())
}

/// Creates the missing daily partitions of events, deliveries and attempts from yesterday to
/// `partitions_ahead_days` after today (UTC days), each in a transaction of its own under the lock time-out.
async fn create_partitions(client: &mut Object, job: &Round, report: &mut RoundReport) -> anyhow::Result<()> {
    let missing = client
        .query(
            "SELECT format('%I', t || '_p' || to_char(d, 'YYYYMMDD')),
                    format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           t || '_p' || to_char(d, 'YYYYMMDD'), t,
                           d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00')
             FROM generate_series(-1, $1::int) AS n,
                  LATERAL (SELECT (now() AT TIME ZONE 'UTC')::date + n AS d) AS days,
                  unnest(ARRAY['events', 'deliveries', 'attempts']) WITH ORDINALITY AS tables(t, ord)
             WHERE to_regclass(format('%I', t || '_p' || to_char(d, 'YYYYMMDD'))) IS NULL
             ORDER BY d, ord",
            &[&job.partitions_ahead_days],
        )
        .await?;
    for row in &missing {
        let (partition, statement): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        match create_partition(client, &statement, job.ddl_lock_timeout).await {
            Ok(()) => report.partitions_created += 1,
            Err(e) if gave_up_waiting(&e) => {
                report.ddl_deferred.push(DeferredDdl { action: "create", partition, reason: reason(&e) })
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("Failed to create partition {partition}"))),
        }
    }
    Ok(())
}

async fn create_partition(
    client: &mut Object,
    statement: &str,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // The statement was written by `format()` above from fixed table names and a date.
    tx.batch_execute(&bounded(timeout, statement)).await?;
    tx.commit().await
}

/// Drops the daily partitions whose whole day is older than `retention_days` (UTC), oldest day first and, within a
/// day, deliveries, attempts, then events: a day whose deliveries could not go keeps its events too.
async fn drop_partitions(client: &mut Object, job: &Round, report: &mut RoundReport) -> anyhow::Result<()> {
    let old = client
        .query(
            "SELECT right(c.relname, 8), p.relname = 'deliveries', i.inhparent::regclass::text,
                    i.inhrelid::regclass::text
             FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE i.inhparent IN ('events'::regclass, 'deliveries'::regclass, 'attempts'::regclass)
               AND c.relname ~ '_p[0-9]{8}$'
               AND to_date(right(c.relname, 8), 'YYYYMMDD') < (now() AT TIME ZONE 'UTC')::date - $1::int
             ORDER BY right(c.relname, 8),
                      array_position(ARRAY['deliveries', 'attempts', 'events']::name[], p.relname)",
            &[&job.retention_days],
        )
        .await?;
    let mut deferred_day: Option<String> = None;
    for row in &old {
        let (day, deliveries, parent, partition): (String, bool, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        if deferred_day.as_deref() == Some(day.as_str()) {
            continue;
        }
        if deliveries {
            // Dead first, in a transaction that locks only their rows (the drop below catches any added since).
            let tx = client.transaction().await?;
            let expired = expire_pending(&tx, &partition).await?;
            tx.commit().await?;
            report.count_expired(expired);
        }
        let dropped = match wait_for_partition(client, &partition, job.ddl_lock_timeout).await {
            Ok(()) => drop_partition(client, &parent, &partition, deliveries, job.ddl_lock_timeout).await,
            Err(e) => Err(e),
        };
        match dropped {
            Ok(expired) => {
                report.partitions_dropped += 1;
                report.count_expired(expired);
            }
            Err(e) if gave_up_waiting(&e) => {
                report.ddl_deferred.push(DeferredDdl { action: "drop", partition, reason: reason(&e) });
                deferred_day = Some(day);
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("Failed to drop partition {partition}"))),
        }
    }
    Ok(())
}

impl RoundReport {
    fn count_expired(&mut self, expired: Vec<(Uuid, String, i64)>) {
        for (id, slug, count) in expired {
            self.deliveries_expired += count;
            match self.expired_by_destination.iter_mut().find(|(i, _, _)| *i == id) {
                Some((_, _, n)) => *n += count,
                None => self.expired_by_destination.push((id, slug, count)),
            }
        }
    }
}

/// The statements that take a partition change's locks: each waits at most `timeout` for any one lock
/// (`lock_timeout`) and for all of them together (`statement_timeout`, set back to the session's after `locks`).
fn bounded(timeout: Duration, locks: &str) -> String {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
    format!(
        "SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}; {locks}; \
         SET LOCAL statement_timeout TO DEFAULT"
    )
}

/// Waits (at most `timeout`) until nothing else holds the partition, then lets it go at once: the wait for a
/// reader of old data happens here, holding nothing that ingest needs.
async fn wait_for_partition(
    client: &mut Object,
    partition: &str,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&bounded(timeout, &format!("LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE"))).await?;
    tx.rollback().await
}

/// Drops one partition: its parent and it locked first (in that order, as every statement locks them), then, for a
/// deliveries partition, any delivery still `pending` in it made `dead` (see [`expire_pending`]). Answers those
/// expired deliveries per destination (id, slug, count).
async fn drop_partition(
    client: &mut Object,
    parent: &str,
    partition: &str,
    deliveries: bool,
    timeout: Duration,
) -> Result<Vec<(Uuid, String, i64)>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Both names come from the catalog, quoted by regclass: nothing from outside reaches these statements.
    tx.batch_execute(&bounded(timeout, &format!("LOCK TABLE ONLY {parent}, {partition} IN ACCESS EXCLUSIVE MODE")))
        .await?;
    // With the partition locked, no replay can add a delivery to it between this and the drop.
    let expired = if deliveries { expire_pending(&tx, partition).await? } else { Vec::new() };
    tx.batch_execute(&format!("DROP TABLE {partition}")).await?;
    tx.commit().await?;
    Ok(expired)
}

/// Makes every `pending` delivery of a deliveries partition `dead` with [`EXPIRED_REASON`]; answers how many per
/// destination (id, slug, count).
async fn expire_pending(
    tx: &deadpool_postgres::Transaction<'_>,
    partition: &str,
) -> Result<Vec<(Uuid, String, i64)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "WITH expired AS (
                     UPDATE {partition} d
                     SET state = 'dead', last_error = $1, lease_owner = NULL, lease_id = NULL,
                         lease_expires_at = NULL, updated_at = now()
                     WHERE d.state = 'pending'
                     RETURNING d.destination_id)
                 SELECT x.id, x.slug, count(*) FROM expired JOIN destinations x ON x.id = expired.destination_id
                 GROUP BY x.id, x.slug"
            ),
            &[&EXPIRED_REASON],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<_, Uuid>(0).ok()?,
                r.try_get::<_, String>(1).unwrap_or_default(),
                r.try_get(2).unwrap_or(0),
            ))
        })
        .collect())
}

/// Deletes the idempotency keys older than the dedupe window, `key_batch` at a time, until none is left. The cutoff is
/// taken once, so the round ends even while ingest goes on; each batch is its own statement, and the round yields
/// between batches.
async fn prune_keys(client: &mut Object, job: &Round, report: &mut RoundReport) -> anyhow::Result<()> {
    let cutoff: DateTime<Utc> =
        client.query_one("SELECT now() - $1 * interval '1 second'", &[&job.dedupe_window_secs]).await?.try_get(0)?;
    let batch = job.key_batch.max(1);
    loop {
        let pruned = client
            .execute(
                "DELETE FROM event_keys k
                 USING (SELECT source_id, idempotency_key FROM event_keys
                        WHERE received_at < $1 ORDER BY received_at LIMIT $2) old
                 WHERE k.source_id = old.source_id AND k.idempotency_key = old.idempotency_key",
                &[&cutoff, &batch],
            )
            .await?;
        report.keys_pruned += i64::try_from(pruned).unwrap_or(i64::MAX);
        report.key_batches += 1;
        if pruned < batch.unsigned_abs() {
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
}

/// When a partition of `deliveries` is worth a vacuum: its dead row versions reach `min_dead_rows` and
/// `dead_fraction` of its live rows (PostgreSQL's own counts, `pg_stat_all_tables`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VacuumPolicy {
    pub min_dead_rows: i64,
    pub dead_fraction: f64,
}

/// A partition [`vacuum_deliveries`] vacuumed, and how many dead row versions PostgreSQL counted in it before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    pub partition: String,
    pub dead_rows: i64,
}

/// Vacuums every partition of `deliveries` whose dead row versions reach the policy, most dead first; answers those
/// it vacuumed. Each finished delivery leaves its `pending` version's entries in the partial indexes the claim walks
/// (`deliveries_due`, `deliveries_leased`) until a vacuum removes them; nothing else does, since no insert lands
/// among old entries (ADR-0025).
///
/// `VACUUM (SKIP_LOCKED)` passes over a partition that another node, autovacuum or a DDL statement holds: no node
/// waits for another, and no lock is queued where ingest could queue behind it; a partition passed over is not in
/// the answer (its vacuum count did not move). `TRUNCATE false`: giving empty pages at the end back to the file
/// system would take an `ACCESS EXCLUSIVE` lock on a partition ingest writes to. The vacuums run without the
/// connection's statement time-out, which is set back after them; a connection that failed meanwhile is closed
/// rather than returned to the pool.
pub async fn vacuum_deliveries(pool: Pool, policy: VacuumPolicy) -> anyhow::Result<Vec<Vacuumed>> {
    let client = pool.get().await?;
    let dead = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), s.n_dead_tup, s.vacuum_count
             FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_stat_all_tables s ON s.relid = c.oid
             WHERE i.inhparent = 'deliveries'::regclass
               AND s.n_dead_tup >= greatest($1::bigint, $2::float8 * s.n_live_tup)
             ORDER BY s.n_dead_tup DESC",
            &[&policy.min_dead_rows.max(1), &policy.dead_fraction.max(0.0)],
        )
        .await?;
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let candidates = dead
        .iter()
        .map(|r| Ok((Vacuumed { partition: r.try_get(0)?, dead_rows: r.try_get(1)? }, r.try_get::<_, i64>(2)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let vacuumed = async {
        // Separate statements, not one string: VACUUM cannot run inside the implicit transaction of a
        // multi-statement query.
        client.batch_execute("SET statement_timeout = 0").await?;
        let mut vacuumed = Vec::with_capacity(candidates.len());
        for (v, count_before) in candidates {
            // The name comes from the catalog, quoted by format('%I'): nothing from outside reaches this statement.
            client.batch_execute(&format!("VACUUM (SKIP_LOCKED, TRUNCATE false) {}", v.partition)).await?;
            let count: i64 = client
                .query_one("SELECT pg_stat_get_vacuum_count($1::text::regclass)", &[&v.partition])
                .await?
                .try_get(0)?;
            if count > count_before {
                vacuumed.push(v);
            }
        }
        client.batch_execute("RESET statement_timeout").await?;
        Ok::<_, anyhow::Error>(vacuumed)
    }
    .await;
    if vacuumed.is_err() {
        // It may still have no statement time-out: closed, not handed to the next user.
        drop(deadpool_postgres::Object::take(client));
    }
    vacuumed
}

/// Runs `ANALYZE` on every partition of `events`, `deliveries` and `attempts` whose changes since it was last
/// analyzed exceed its size then (at least 1,000 rows), if this node takes the lock; answers the partitions analyzed
/// (or passed over while a vacuum held them: they are found again next time).
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
        // SKIP_LOCKED: a partition being vacuumed (by `vacuum_deliveries` or autovacuum) is left for the next look
        // rather than waited for, holding this connection and the lock.
        tx.batch_execute(&format!("ANALYZE (SKIP_LOCKED) {name}")).await?;
        analyzed.push(name);
    }
    tx.commit().await?;
    Ok(analyzed)
}
