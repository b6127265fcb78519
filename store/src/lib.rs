//! hookgate's PostgreSQL layer: the schema and its migrations, the NOTIFY channels, the advisory locks and the
//! LISTEN connection, and the readiness probe's connection. Its functions fail with [`error::StoreError`], which says
//! what a failure means (unavailable, conflict, rejected value, …) so that no layer above looks at a driver's error.
//!
//! The layers, each depending only on those before it: `hookgate-core` ← **`hookgate-store`** (this crate) ←
//! `hookgate-actors` ← `hookgate`.

pub mod catalog;
pub mod channels;
pub mod claims;
pub mod deliveries;
pub mod destinations;
pub mod error;
pub mod events;
pub mod listen;
pub mod locks;
pub mod maintenance;
pub mod migrations;
pub mod notifications;
pub mod probe;
pub mod replay_jobs;
pub mod results;
pub mod routes;
pub mod sources;
pub mod stats;

use error::StoreResult;

/// The PostgreSQL connection pool every database-facing part of hookgate borrows from.
pub type Pool = deadpool_postgres::Pool;

/// A connection from the pool; failing as [`error::StoreError::Unavailable`] (or `Refused`) when there is none.
pub async fn connect(pool: &Pool) -> StoreResult<deadpool_postgres::Object> {
    Ok(pool.get().await?)
}

/// Begins a transaction on `client`.
pub async fn begin(client: &mut deadpool_postgres::Object) -> StoreResult<deadpool_postgres::Transaction<'_>> {
    Ok(client.transaction().await?)
}

/// Begins a transaction whose prepared statements are planned once per connection (a generic plan) instead of at
/// every execution, in two round trips. The ingest flush, claims and results send [`GENERIC_PLANS`] pipelined with
/// their first statement instead ([`events::insert_new_after`]), and `DUE` goes through [`read_hot`] (ADR-0018).
/// These statements never prune partitions by a parameter, so the generic plan is the custom one; but PostgreSQL
/// keeps choosing custom plans for some of them, and planning one over every daily partition cost more than running
/// it (3–5 ms against 0.5–1 ms, see `tests/api/plans.rs`).
pub async fn begin_hot(client: &mut deadpool_postgres::Object) -> StoreResult<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    tx.batch_execute(GENERIC_PLANS).await?;
    Ok(tx)
}

/// Sets the current transaction's prepared statements to reuse one generic plan (see [`begin_hot`]).
pub const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

/// The settings of a result batch's transaction: generic plans, and a commit that does not wait for its WAL flush
/// (ADR-0021). Losing such a commit in a crash of PostgreSQL only leaves its deliveries leased as they were, to be
/// attempted again when the lease expires (at least once); the next synchronous commit on the server (an ingest
/// flush, a claim) flushes it with its own. `LOCAL`: the connection goes back to the pool with the session's
/// `synchronous_commit = on` (a test checks it).
pub const RESULT_SETTINGS: &str = "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL synchronous_commit = off";

/// Runs one prepared read-only statement with generic plans (see [`begin_hot`]) in a single round trip: the
/// transaction's `BEGIN` and settings, the statement and the `COMMIT` are pipelined (sent together, executed in
/// order). All three are always awaited, so the connection goes back to the pool outside any transaction whatever
/// fails.
pub async fn read_hot(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let begin = format!("BEGIN READ ONLY; {GENERIC_PLANS}");
    let (begun, rows, ended) =
        futures::join!(client.batch_execute(&begin), client.query(statement, params), client.batch_execute("COMMIT"));
    begun?;
    let rows = rows?;
    ended?;
    Ok(rows)
}

/// Holds off every transaction that would write `table` (`events` or `deliveries`) until `tx` ends, after waiting
/// for those in flight: a SHARE lock on the parent table (`ONLY`: its partitions' maintenance, an `ANALYZE`, does not
/// conflict), taken before looking for rows that refer to a source, route or destination about to be deleted (no
/// foreign key guards them: ADR-0021). A lock waiting in PostgreSQL's queue stalls every write queued behind it, and
/// a bulk replay's transaction can hold `deliveries` for seconds; so each try waits at most [`LOCK_TRY`] and gives way
/// for [`LOCK_PAUSE`] before the next, and after [`LOCK_TRIES`] it answers `false` (nothing locked, `tx` still usable:
/// the caller answers "retry later"). Later statements of `tx` wait for locks at most 5 s.
pub async fn lock_against_inserts(tx: &deadpool_postgres::Transaction<'_>, table: &str) -> StoreResult<bool> {
    debug_assert!(matches!(table, "events" | "deliveries"));
    let lock = format!(
        "SAVEPOINT lock_against_inserts; SET LOCAL lock_timeout = {}; LOCK TABLE ONLY {table} IN SHARE MODE",
        LOCK_TRY.as_millis()
    );
    for _ in 0..LOCK_TRIES {
        match tx.batch_execute(&lock).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT lock_against_inserts; SET LOCAL lock_timeout = '5s'").await?;
                return Ok(true);
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT lock_against_inserts; RELEASE SAVEPOINT lock_against_inserts")
                    .await?;
                tokio::time::sleep(LOCK_PAUSE).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// How long one try of [`lock_against_inserts`] waits for its lock (and so stalls the writes queued behind it).
pub const LOCK_TRY: std::time::Duration = std::time::Duration::from_millis(100);
/// The pause between two tries, in which the writes that waited go through.
pub const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// Tries before [`lock_against_inserts`] gives up (about 3 s in all).
pub const LOCK_TRIES: u32 = 20;

/// Commits `tx`.
pub async fn commit(tx: deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
    Ok(tx.commit().await?)
}

/// Rolls `tx` back (dropping it does too, without waiting for the server's answer).
pub async fn rollback(tx: deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
    Ok(tx.rollback().await?)
}

/// Applies the configuration's declared sources, destinations and routes in one transaction, then hookgate's own
/// source and route (the route to `notifications`, the notification destination's slug, when notifications are
/// on): a configuration is applied whole or not at all (a route naming a missing source, a notification
/// destination that does not exist, fails it), and every node is told at COMMIT. Answers the notification
/// destination.
pub async fn apply_declared(
    pool: &Pool,
    sources: &[sources::SourceSettings<'_>],
    destinations: &[catalog::DeclaredDestination<'_>],
    routes: &[catalog::DeclaredRoute<'_>],
    notifications: Option<&str>,
) -> anyhow::Result<Option<notifications::NotificationDestination>> {
    use anyhow::Context;
    let mut client = pool.get().await.context("Failed to get a connection to apply the configuration")?;
    let tx = client.transaction().await?;
    sources::apply_declared(&tx, sources).await?;
    catalog::apply_declared(&tx, destinations, routes).await?;
    let ops = notifications::reconcile(&tx, notifications).await?;
    tx.commit().await.context("Failed to commit the declared sources, destinations and routes")?;
    Ok(ops)
}
