//! Recording attempt outcomes: the attempt rows, each delivery's next state, and what the outcomes say about their
//! destinations, in one transaction per batch.

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::channels::CATALOG_CHANNEL;
use crate::deliveries::{DisabledDestination, DISABLED_COLUMNS};
use crate::Pool;

/// One attempt's outcome and the state it leaves its delivery in.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub delivery_id: Uuid,
    /// Where the attempt went, stored with it (the admin API's windows count attempts per destination: ADR-0030).
    pub destination_id: Uuid,
    /// The delivery's partition key.
    pub created_at: DateTime<Utc>,
    /// The lease the attempt ran under: the outcome applies only while it still holds.
    pub lease_id: Uuid,
    /// An attempt row is written (false: the route decided at claim that no HTTP attempt is made).
    pub counted: bool,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response_headers: &'a serde_json::Value,
    pub excerpt: Option<&'a [u8]>,
    pub error_kind: Option<&'a str>,
    /// Without NUL (PostgreSQL text cannot hold one).
    pub error: Option<&'a str>,
    /// The delivery's state now, when it is next due, and why it failed last.
    pub state: &'a str,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<&'a str>,
    /// The attempt count stored (an uncounted try leaves it as it was).
    pub attempts: i32,
    /// The route was evaluated at claim: its decision is final, and `payload` is what every retry sends.
    pub routed: bool,
    pub payload: Option<&'a [u8]>,
}

/// What a batch's outcomes say about their destinations.
#[derive(Debug, Clone, Default)]
pub struct DestinationOutcomes {
    /// Answered 410 Gone: disabled now.
    pub gone: Vec<Uuid>,
    /// Succeeded: no longer failing.
    pub healthy: Vec<Uuid>,
    /// Failed without a success in this batch: failing since now (if not already), disabled past the limit.
    pub failing: Vec<Uuid>,
    pub auto_disable_after_secs: f64,
}

/// What a recorded batch changed beyond its deliveries.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The destinations it disabled (every node is told).
    pub disabled: Vec<DisabledDestination>,
    /// Per destination, how many of the batch's deliveries it made `dead` (those whose lease still held).
    pub dead: Vec<(Uuid, i64)>,
}

/// Writes a batch of outcomes in one transaction; answers the destinations it disabled and the deliveries it made
/// dead.
pub async fn record(
    pool: &Pool,
    node_id: &str,
    outcomes: &[Outcome<'_>],
    destinations: &DestinationOutcomes,
) -> anyhow::Result<Recorded> {
    let mut client = pool.get().await.context("Failed to get a connection to record outcomes")?;
    let tx = crate::begin(&mut client).await?;

    let ids: Vec<Uuid> = outcomes.iter().map(|_| Uuid::now_v7()).collect();
    let delivery_ids: Vec<Uuid> = outcomes.iter().map(|o| o.delivery_id).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempt).collect();
    let started_at: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.started_at).collect();
    let destination_ids: Vec<Uuid> = outcomes.iter().map(|o| o.destination_id).collect();
    let statuses: Vec<Option<i32>> = outcomes.iter().map(|o| o.status).collect();
    let latencies: Vec<i32> = outcomes.iter().map(|o| o.latency_ms).collect();
    let headers: Vec<&serde_json::Value> = outcomes.iter().map(|o| o.response_headers).collect();
    let excerpts: Vec<Option<&[u8]>> = outcomes.iter().map(|o| o.excerpt).collect();
    let kinds: Vec<Option<&str>> = outcomes.iter().map(|o| o.error_kind).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error).collect();
    let counted: Vec<bool> = outcomes.iter().map(|o| o.counted).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO attempts (id, delivery_id, attempt, node_id, started_at, status, latency_ms,
                                   response_headers, response_excerpt, error_kind, error, destination_id)
             SELECT a.id, a.delivery_id, a.attempt, $4, a.started_at, a.status, a.latency_ms, a.headers, a.excerpt,
                    a.kind, a.error, a.destination_id
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $5::timestamptz[], $6::int[], $7::int[], $8::jsonb[],
                         $9::bytea[], $10::text[], $11::text[], $12::bool[], $13::uuid[])
                  AS a(id, delivery_id, attempt, started_at, status, latency_ms, headers, excerpt, kind, error,
                       counted, destination_id)
             WHERE a.counted",
        )
        .await?;
    let attempt_params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
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
        &counted,
        &destination_ids,
    ];

    let states: Vec<&str> = outcomes.iter().map(|o| o.state).collect();
    let counts: Vec<i32> = outcomes.iter().map(|o| o.attempts).collect();
    let next: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.next_attempt_at).collect();
    let last_errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.last_error).collect();
    let leases: Vec<Uuid> = outcomes.iter().map(|o| o.lease_id).collect();
    let routed: Vec<bool> = outcomes.iter().map(|o| o.routed).collect();
    let payloads: Vec<Option<&[u8]>> = outcomes.iter().map(|o| o.payload).collect();
    let created: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.created_at).collect();
    let update = tx
        .prepare_cached(
            "WITH upd AS (
             UPDATE deliveries d
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
             WHERE d.id = u.id AND d.created_at = u.created_at AND d.state = 'pending' AND d.lease_id = u.lease_id
             RETURNING d.destination_id, d.state)
             -- What the batch made dead, per destination (only rows whose lease held were updated).
             SELECT destination_id, count(*) FROM upd WHERE state = 'dead' GROUP BY destination_id",
        )
        .await?;
    let gone_stmt = tx
        .prepare_cached(&format!(
            "UPDATE destinations
             SET state = 'disabled', disabled_reason = 'auto: 410 Gone', failing_since = NULL, updated_at = now()
             WHERE id = ANY($1) AND state = 'active'
             RETURNING {DISABLED_COLUMNS}"
        ))
        .await?;
    let healthy_stmt = tx
        .prepare_cached("UPDATE destinations SET failing_since = NULL WHERE id = ANY($1) AND failing_since IS NOT NULL")
        .await?;
    let update_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] =
        [&delivery_ids, &states, &counts, &next, &last_errors, &leases, &routed, &payloads, &created];
    // Every statement of the batch is sent at once (pipelined; executed in this order): one round trip, not one
    // per statement. The settings come first, so that the prepared statements run their generic plans (and the
    // commit does not wait for its WAL flush: ADR-0021).
    let (set, inserted, updated, gone, healthy) = futures::join!(
        tx.batch_execute(crate::RESULT_SETTINGS),
        tx.execute(&insert, &attempt_params),
        tx.query(&update, &update_params),
        async {
            match destinations.gone.is_empty() {
                true => Ok(Vec::new()),
                false => tx.query(&gone_stmt, &[&destinations.gone]).await,
            }
        },
        async {
            match destinations.healthy.is_empty() {
                true => Ok(0),
                false => tx.execute(&healthy_stmt, &[&destinations.healthy]).await,
            }
        },
    );
    set?;
    inserted?;
    let dead = updated?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(Uuid, i64)>, tokio_postgres::Error>>()?;
    let mut disabled = DisabledDestination::read_all(&gone?)?;
    healthy?;
    if !destinations.failing.is_empty() {
        tx.execute(
            "UPDATE destinations SET failing_since = now() WHERE id = ANY($1) AND failing_since IS NULL",
            &[&destinations.failing],
        )
        .await?;
        disabled.extend(
            crate::deliveries::disable_failing(&tx, Some(&destinations.failing), destinations.auto_disable_after_secs)
                .await?,
        );
    }
    if !disabled.is_empty() {
        tx.execute("SELECT pg_notify($1, 'destination-disabled')", &[&CATALOG_CHANNEL]).await?;
    }
    tx.commit().await?;
    Ok(Recorded { disabled, dead })
}
