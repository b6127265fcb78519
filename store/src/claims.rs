//! Claiming due deliveries: which destinations have claimable work, and the claim itself (leases under the
//! cluster-wide claim lock). Every row read here is read without trusting any column: a NULL or a wrong type makes
//! the delivery `dead` with its reason, never a panic.

use std::collections::HashMap;

use bytes::Bytes;
use hookgate_core::delivery::{Job, RoutingInput, ORPHAN_REASON};
use uuid::Uuid;

use crate::locks::CLAIM_LOCK;
use crate::Pool;

/// The destinations with claimable work, with their deliveries in flight cluster-wide (counted up to `cap`, the
/// destination's `max_in_flight`: past it the number no longer matters). A FIFO destination has claimable work only
/// when its head is due and not leased.
///
/// Every lookup here and in [`CLAIM`] is an ordered index walk per destination (`ORDER BY … LIMIT`), which the
/// planner takes whatever the statistics say: a daily partition is new and unanalyzed every midnight, and a plan
/// chosen on guessed statistics (a hash join over every due row, a count through the wrong index) made each claim
/// round cost as much as the whole backlog.
pub const DUE: &str = "\
SELECT d.id, (SELECT count(*)::int FROM (
                  SELECT 1 FROM deliveries b
                  WHERE b.destination_id = d.id AND b.state = 'pending' AND b.lease_expires_at > now()
                  ORDER BY b.lease_expires_at LIMIT d.cap) l)
FROM UNNEST($1::uuid[], $3::int[]) AS d(id, cap)
CROSS JOIN LATERAL (
    SELECT 1 FROM deliveries x
    WHERE x.destination_id = d.id AND x.state = 'pending' AND x.next_attempt_at <= now()
      AND (x.lease_expires_at IS NULL OR x.lease_expires_at <= now())
    ORDER BY x.next_attempt_at LIMIT 1) due
UNION ALL
SELECT f.id, 0 FROM UNNEST($2::uuid[]) AS f(id)
CROSS JOIN LATERAL (
    SELECT next_attempt_at, lease_expires_at FROM deliveries h
    WHERE h.destination_id = f.id AND h.state = 'pending' ORDER BY h.seq LIMIT 1) h
WHERE h.next_attempt_at <= now() AND (h.lease_expires_at IS NULL OR h.lease_expires_at <= now())";

/// Leases up to each budget. The rows are then updated by their whole primary key (id and partition key): a probe
/// per row, never a join the planner could drive from another table (`tests/api/plans.rs` checks the plan with the
/// whole backlog due and with little of it due).
pub const CLAIM: &str = "\
WITH budget AS (
    SELECT b.* FROM UNNEST($1::uuid[], $2::int[], $3::int[]) AS b(destination_id, n, cap)
    JOIN destinations x ON x.id = b.destination_id AND x.state = 'active'
), picked AS (
    SELECT x.id, x.created_at, x.event_id FROM budget b
    CROSS JOIN LATERAL (
        SELECT count(*)::int AS n FROM (
            SELECT 1 FROM deliveries l
            WHERE l.destination_id = b.destination_id AND l.state = 'pending' AND l.lease_expires_at > now()
            ORDER BY l.lease_expires_at LIMIT b.cap) l
    ) busy
    CROSS JOIN LATERAL (
        SELECT id, created_at, event_id FROM deliveries d
        WHERE d.destination_id = b.destination_id AND d.state = 'pending' AND d.next_attempt_at <= now()
          AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
        ORDER BY d.next_attempt_at
        LIMIT GREATEST(LEAST(b.n, b.cap - busy.n), 0)
        FOR UPDATE SKIP LOCKED
    ) x
    UNION ALL
    SELECT h.id, h.created_at, h.event_id FROM UNNEST($4::uuid[]) AS f(destination_id)
    JOIN destinations x ON x.id = f.destination_id AND x.state = 'active'
    CROSS JOIN LATERAL (
        SELECT id, created_at, event_id, next_attempt_at, lease_expires_at FROM deliveries d
        WHERE d.destination_id = f.destination_id AND d.state = 'pending'
        ORDER BY d.seq
        LIMIT 1
    ) h
    WHERE h.next_attempt_at <= now() AND (h.lease_expires_at IS NULL OR h.lease_expires_at <= now())
-- Through arrays, so that the planner cannot join `picked` to the table as a set: it estimates a LIMIT whose value
-- is a parameter at thousands of rows, and with the whole backlog due it then hashed every pending row to update a
-- few hundred. An unnested array is estimated small, which makes the join a primary-key probe per picked row.
), ids AS (
    SELECT array_agg(id) AS id, array_agg(created_at) AS created_at, array_agg(event_id) AS event_id FROM picked
)
UPDATE deliveries d
SET lease_owner = $5, lease_id = gen_random_uuid(),
    lease_expires_at = now()
        + ((SELECT x.timeout_ms FROM destinations x WHERE x.id = d.destination_id) + $6::int) * interval '1 millisecond',
    updated_at = now()
FROM ids CROSS JOIN LATERAL UNNEST(ids.id, ids.created_at, ids.event_id) AS p(id, created_at, event_id)
-- The event, probed once by its whole primary key in its own partition (a delivery's created_at is its event's
-- received_at); for rows older than that rule, the fallbacks below look it up by id alone.
LEFT JOIN LATERAL (
    SELECT e.body, e.content_type, e.traceparent FROM events e WHERE e.id = p.event_id AND e.received_at = p.created_at
) ev ON true
WHERE d.id = p.id AND d.created_at = p.created_at
  -- Re-checked on the locked row: a result committed meanwhile is not claimed again.
  AND d.state = 'pending' AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
-- COALESCE evaluates a fallback only when what precedes it is NULL.
RETURNING d.id, d.event_id, d.destination_id, d.attempts,
          coalesce(d.payload, ev.body, (SELECT e.body FROM events e WHERE e.id = d.event_id)),
          d.payload IS NOT NULL,
          coalesce(ev.content_type, (SELECT e.content_type FROM events e WHERE e.id = d.event_id)),
          d.lease_id, d.route_id, d.needs_routing,
          CASE WHEN d.needs_routing THEN
              (SELECT jsonb_build_object('source', s.slug, 'headers', e.headers, 'type', e.type)
               FROM events e JOIN sources s ON s.id = e.source_id WHERE e.id = d.event_id)
          END,
          d.created_at,
          -- In the event's own partition only: rows older than that rule predate stored trace contexts.
          ev.traceparent";

/// One claimed row, read without trusting any column.
enum Claimed {
    Job(Box<Job>),
    /// The delivery's event row is gone (and it has no payload of its own): nothing can be sent.
    Orphan(Uuid),
    /// A column could not be read: the delivery cannot be attempted; why.
    Unreadable(Uuid, String),
}

/// Reads one row of `CLAIM`'s RETURNING. Never panics: a NULL or a wrong type is a value, not a crash.
fn read_claimed(r: &tokio_postgres::Row) -> Option<Claimed> {
    let id: Uuid = r.try_get(0).ok()?;
    let job = (|| -> Result<Option<Box<Job>>, tokio_postgres::Error> {
        let Some(body) = r.try_get::<_, Option<Vec<u8>>>(4)? else { return Ok(None) };
        let routing = match r.try_get::<_, bool>(9)? {
            false => None,
            true => match r.try_get::<_, Option<serde_json::Value>>(10)? {
                // The event is gone: nothing to evaluate, nothing to send.
                None => return Ok(None),
                Some(v) => Some(RoutingInput {
                    source: v["source"].as_str().unwrap_or_default().to_owned(),
                    headers: v["headers"].clone(),
                    event_type: v["type"].as_str().map(str::to_owned),
                }),
            },
        };
        Ok(Some(Box::new(Job {
            delivery_id: id,
            event_id: r.try_get(1)?,
            destination_id: r.try_get(2)?,
            attempt: r.try_get::<_, i32>(3)?.saturating_add(1),
            body: Bytes::from(body),
            transformed: r.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
            content_type: r.try_get(6)?,
            lease_id: r.try_get(7)?,
            route_id: r.try_get(8)?,
            routing,
            created_at: r.try_get(11)?,
            // Tracing never makes a delivery unattemptable: an unreadable context is no context.
            traceparent: r.try_get::<_, Option<String>>(12).ok().flatten(),
        })))
    })();
    Some(match job {
        Ok(Some(job)) => Claimed::Job(job),
        Ok(None) => Claimed::Orphan(id),
        Err(e) => Claimed::Unreadable(id, format!("unreadable delivery row: {e}")),
    })
}

/// Ends claimed deliveries that can never be attempted, in the claim's transaction: `dead` with their reason.
const BURY: &str = "\
UPDATE deliveries d
SET state = 'dead', last_error = u.reason, lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL,
    updated_at = now()
FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason)
WHERE d.id = u.id AND d.state = 'pending'
RETURNING d.id, d.destination_id";

/// A claimed delivery that can never be attempted, made `dead` in the claim's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buried {
    pub id: Uuid,
    pub reason: String,
    /// Its destination, when the row was made dead by this claim (`None`: it had changed meanwhile).
    pub destination_id: Option<Uuid>,
}

/// What one claim round asks for: per destination, how many and its `max_in_flight`; the FIFO destinations (their
/// head only); who claims, and the margin added to each destination's timeout for its leases.
pub struct Budgets<'a> {
    pub destinations: &'a [Uuid],
    pub wanted: &'a [i32],
    pub caps: &'a [i32],
    pub fifo: &'a [Uuid],
    pub node_id: &'a str,
    pub lease_margin_ms: i32,
}

/// The destinations (of these) with claimable work now, with their deliveries in flight cluster-wide.
pub async fn due(
    pool: &Pool,
    destinations: &[Uuid],
    caps: &[i32],
    fifo: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, u32>> {
    let client = pool.get().await?;
    // Prepared once per connection and planned once (generic): planning it over every daily partition costs more
    // than running it.
    let due = client.prepare_cached(DUE).await?;
    let rows = crate::read_hot(&client, &due, &[&destinations, &fifo, &caps]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get::<_, Option<i32>>(1).ok()?.unwrap_or(0).max(0) as u32)))
        .collect())
}

/// Leases up to each budget in one transaction under the claim lock; answers the jobs to attempt, and the claimed
/// deliveries that can never be attempted, made `dead` in the same transaction, with their reasons.
pub async fn claim(pool: &Pool, b: &Budgets<'_>) -> anyhow::Result<(Vec<Job>, Vec<Buried>)> {
    let mut jobs = Vec::new();
    let mut buried: Vec<(Uuid, String)> = Vec::new();
    let mut client = pool.get().await?;
    let tx = crate::begin(&mut client).await?;
    let claim = tx.prepare_cached(CLAIM).await?;
    // The settings, the lock and the claim are sent together (pipelined; executed in this order): one round trip.
    // A claimer stuck holding the lock (a partitioned node) delays the others by at most the lock time-out.
    let prelude =
        format!("{}; SET LOCAL lock_timeout = '5s'; SELECT pg_advisory_xact_lock({CLAIM_LOCK})", crate::GENERIC_PLANS);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&b.destinations, &b.wanted, &b.caps, &b.fifo, &b.node_id, &b.lease_margin_ms];
    let (locked, rows) = futures::join!(tx.batch_execute(&prelude), tx.query(&claim, &params));
    locked?;
    let rows = rows?;
    for row in &rows {
        match read_claimed(row) {
            Some(Claimed::Job(job)) => jobs.push(*job),
            Some(Claimed::Orphan(id)) => buried.push((id, ORPHAN_REASON.to_owned())),
            Some(Claimed::Unreadable(id, why)) => buried.push((id, why)),
            // No id: nothing to name or bury; its lease expires and the reaper clears it.
            None => tracing::error!(message = "A claimed delivery row has no readable id."),
        }
    }
    let mut dead: HashMap<Uuid, Uuid> = HashMap::new();
    if !buried.is_empty() {
        let (ids, reasons): (Vec<Uuid>, Vec<&str>) = buried.iter().map(|(id, r)| (*id, r.as_str())).unzip();
        for row in tx.query(BURY, &[&ids, &reasons]).await? {
            if let (Ok(id), Ok(destination)) = (row.try_get(0), row.try_get(1)) {
                dead.insert(id, destination);
            }
        }
    }
    tx.commit().await?;
    let buried =
        buried.into_iter().map(|(id, reason)| Buried { id, reason, destination_id: dead.get(&id).copied() }).collect();
    Ok((jobs, buried))
}
