//! Statements on `deliveries` (and the destination changes their outcomes cause) that several parts of hookgate run:
//! one definition each.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use hookgate_core::state::DeliveryState;
use uuid::Uuid;

use crate::error::{Columns, StoreError, StoreResult};

/// A lease a node holds on a delivery: with the row's whole primary key, so the release is one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub delivery_id: Uuid,
    /// The delivery's partition key.
    pub created_at: DateTime<Utc>,
    pub lease_id: Uuid,
}

/// Gives leases back unused, so that their deliveries are claimable again now. A lease that is no longer held
/// (its result was recorded, or it expired and was claimed again) is left alone. Answers how many were released.
pub async fn release_leases(client: &impl GenericClient, leases: &[Lease]) -> StoreResult<u64> {
    let ids: Vec<Uuid> = leases.iter().map(|l| l.delivery_id).collect();
    let created: Vec<DateTime<Utc>> = leases.iter().map(|l| l.created_at).collect();
    let lease_ids: Vec<Uuid> = leases.iter().map(|l| l.lease_id).collect();
    Ok(client
        .execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[]) AS l(id, created_at, lease_id)
             WHERE deliveries.id = l.id AND deliveries.created_at = l.created_at
               AND deliveries.lease_id = l.lease_id",
            &[&ids, &created, &lease_ids],
        )
        .await?)
}

/// A destination hookgate just disabled (410 Gone, or failing continuously): who, why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledDestination {
    pub id: Uuid,
    pub slug: String,
    /// `auto: 410 Gone`, or `auto: failing continuously since …`.
    pub reason: String,
    /// When it was disabled (the statement's `now()`: the same on every node that reads it).
    pub disabled_at: DateTime<Utc>,
}

/// The columns [`DisabledDestination::read`] reads, for an `UPDATE destinations … RETURNING`.
pub(crate) const DISABLED_COLUMNS: &str = "id, slug, COALESCE(disabled_reason, ''), updated_at";

impl DisabledDestination {
    /// Reads the rows of a statement returning [`DISABLED_COLUMNS`].
    pub(crate) fn read_all(rows: &[tokio_postgres::Row]) -> StoreResult<Vec<Self>> {
        rows.iter()
            .map(|r| Ok(Self { id: r.column(0)?, slug: r.column(1)?, reason: r.column(2)?, disabled_at: r.column(3)? }))
            .collect()
    }
}

/// Disables the active destinations that have been failing without a success for longer than `after_secs`
/// (all of them, or only those in `among`), with the reason `auto: failing continuously since …`. Answers those it
/// disabled; the caller notifies the catalog when any were.
pub async fn disable_failing(
    client: &impl GenericClient,
    among: Option<&[Uuid]>,
    after_secs: f64,
) -> StoreResult<Vec<DisabledDestination>> {
    let rows = client
        .query(
            &format!(
                "UPDATE destinations
                 SET state = 'disabled', updated_at = now(), failing_since = NULL,
                     disabled_reason = 'auto: failing continuously since ' || failing_since::text
                 WHERE state = 'active' AND failing_since < now() - $2 * interval '1 second'
                   AND ($1::uuid[] IS NULL OR id = ANY($1))
                 RETURNING {DISABLED_COLUMNS}"
            ),
            &[&among, &after_secs],
        )
        .await?;
    DisabledDestination::read_all(&rows)
}

/// The columns of a [`DeliveryRow`], in its order, for statements that return deliveries.
pub const DELIVERY_COLUMNS: &str =
    "id, event_id, route_id, destination_id, state, attempts, next_attempt_at, last_error, created_at, updated_at";

/// Not leased, or the lease has expired: only the holder of a live lease may change a delivery.
const LEASE_FREE: &str = "(lease_expires_at IS NULL OR lease_expires_at < now())";

/// A delivery as the admin API shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub route_id: Uuid,
    pub destination_id: Uuid,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeliveryRow {
    /// Reads a row selected with [`DELIVERY_COLUMNS`] (first, in that order).
    pub fn read(r: &tokio_postgres::Row) -> StoreResult<Self> {
        Ok(Self {
            id: r.column(0)?,
            event_id: r.column(1)?,
            route_id: r.column(2)?,
            destination_id: r.column(3)?,
            state: stored_state(r.column(4)?)?,
            attempts: r.column(5)?,
            next_attempt_at: r.column(6)?,
            last_error: r.column(7)?,
            created_at: r.column(8)?,
            updated_at: r.column(9)?,
        })
    }

    fn read_all(rows: &[tokio_postgres::Row]) -> StoreResult<Vec<Self>> {
        rows.iter().map(Self::read).collect()
    }
}

/// A destination's deliveries in one state, newest first, older than `before` when given.
pub async fn list_for_destination(
    client: &impl GenericClient,
    destination: Uuid,
    state: &str,
    before: Option<Uuid>,
    limit: i64,
) -> StoreResult<Vec<DeliveryRow>> {
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE destination_id = $1 AND state = $2 AND ($3::uuid IS NULL OR id < $3)
                 ORDER BY id DESC LIMIT $4"
            ),
            &[&destination, &state, &before, &limit],
        )
        .await?;
    DeliveryRow::read_all(&rows)
}

/// Deliveries by id, in id order.
pub async fn by_ids(client: &impl GenericClient, ids: &[Uuid]) -> StoreResult<Vec<DeliveryRow>> {
    let rows = client
        .query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY($1) ORDER BY id"), &[&ids])
        .await?;
    DeliveryRow::read_all(&rows)
}

/// A delivery's state; `None` when there is no such delivery.
pub async fn state_of(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<DeliveryState>> {
    let row = client.query_opt("SELECT state FROM deliveries WHERE id = $1", &[&id]).await?;
    row.map(|r| stored_state(r.column(0)?)).transpose()
}

/// A delivery's state as stored; text that names no state is an unreadable row.
fn stored_state(text: String) -> StoreResult<DeliveryState> {
    DeliveryState::parse(&text).ok_or_else(|| StoreError::Unreadable(format!("{text:?} is no delivery state")))
}

/// Makes a delivery that is still in state `from` (`dead` or `failed`) `pending` and due now, its attempts kept; a
/// `failed` one gets `payload` (its route's output now) and loses its error. `None` when its state changed meanwhile.
pub async fn retry(
    client: &impl GenericClient,
    id: Uuid,
    from: DeliveryState,
    payload: Option<&[u8]>,
) -> StoreResult<Option<DeliveryRow>> {
    client
        .query_opt(
            &format!(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_id = NULL,
                        lease_expires_at = NULL, updated_at = now(),
                        payload = CASE WHEN state = 'failed' THEN $3 ELSE payload END,
                        last_error = CASE WHEN state = 'failed' THEN NULL ELSE last_error END
                 WHERE id = $1 AND state = $2
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&id, &from.as_str(), &payload],
        )
        .await?
        .as_ref()
        .map(DeliveryRow::read)
        .transpose()
}

/// What a delivery's route reads, to evaluate it again: its route, and its event as stored.
#[derive(Debug, Clone)]
pub struct RouteInputRow {
    pub route_id: Uuid,
    pub event_id: Uuid,
    pub source_id: Uuid,
    pub source_slug: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The route and event of a delivery; `None` when the event is no longer stored.
pub async fn route_input(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<RouteInputRow>> {
    let Some(r) = client
        .query_opt(
            "SELECT d.route_id, e.id, e.source_id, s.slug, e.headers, e.body, e.type, e.received_at
             FROM deliveries d
             JOIN events e ON e.id = d.event_id
             JOIN sources s ON s.id = e.source_id
             WHERE d.id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(RouteInputRow {
        route_id: r.column(0)?,
        event_id: r.column(1)?,
        source_id: r.column(2)?,
        source_slug: r.column(3)?,
        headers: r.column(4)?,
        body: r.column(5)?,
        event_type: r.column(6)?,
        received_at: r.column(7)?,
    }))
}

/// Cancels a pending delivery that is not being attempted right now; `None` when it is not such a delivery.
pub async fn cancel(client: &impl GenericClient, id: Uuid) -> StoreResult<Option<DeliveryRow>> {
    client
        .query_opt(
            &format!(
                "UPDATE deliveries SET state = 'cancelled', last_error = 'cancelled by an operator', updated_at = now()
                 WHERE id = $1 AND state = 'pending' AND {LEASE_FREE}
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&id],
        )
        .await?
        .as_ref()
        .map(DeliveryRow::read)
        .transpose()
}

/// Whether a destination with this id exists.
pub async fn destination_exists(client: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    Ok(client.query_opt("SELECT 1 FROM destinations WHERE id = $1", &[&id]).await?.is_some())
}

/// Makes every dead delivery of a destination `pending` and due now; answers how many.
pub async fn retry_dead_of_destination(client: &impl GenericClient, destination: Uuid) -> StoreResult<u64> {
    Ok(client
        .execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_id = NULL,
                    lease_expires_at = NULL, updated_at = now()
             WHERE destination_id = $1 AND state = 'dead'",
            &[&destination],
        )
        .await?)
}

/// Cancels every pending delivery of a destination that is not being attempted right now; answers how many.
pub async fn cancel_pending_of_destination(client: &impl GenericClient, destination: Uuid) -> StoreResult<u64> {
    Ok(client
        .execute(
            &format!(
                "UPDATE deliveries SET state = 'cancelled', last_error = 'cancelled by an operator', updated_at = now()
                 WHERE destination_id = $1 AND state = 'pending' AND {LEASE_FREE}"
            ),
            &[&destination],
        )
        .await?)
}

/// A delivery planned for a stored event, to insert.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: Uuid,
    pub event_id: Uuid,
    pub route_id: Uuid,
    pub destination_id: Uuid,
    /// `pending`, or `failed` when a route program failed at planning.
    pub state: DeliveryState,
    /// A transform's output, sent instead of the event's body.
    pub payload: Option<&'a [u8]>,
    /// Why it failed at planning (no NUL: PostgreSQL text cannot hold one).
    pub last_error: Option<&'a str>,
    /// The event's `received_at`: a delivery lives in its event's partition and never outlives it.
    pub created_at: DateTime<Utc>,
    /// The route's programs could not be evaluated in time: the Deliverer evaluates them at claim.
    pub needs_routing: bool,
    /// Inserted already leased (the ingesting node attempts it at once, with no claim round).
    pub lease: Option<NewLease<'a>>,
}

/// A lease taken with the insert: who holds it, its id, and how long it lasts from the insert.
#[derive(Debug, Clone, Copy)]
pub struct NewLease<'a> {
    pub owner: &'a str,
    pub lease_id: Uuid,
    pub ms: i32,
}

/// The deliveries [`insert_planned`] stored, and which of them it leased.
#[derive(Debug, Clone, Default)]
pub struct Inserted {
    pub ids: HashSet<Uuid>,
    pub leased: HashSet<Uuid>,
}

/// Inserts planned deliveries in one statement, numbering them (`seq`, the FIFO order) in the order given: the
/// writer's batches and the admin API's replays alike. A delivery is stored only while its route exists in the
/// database now, and goes to the destination the route names now (no foreign key checks them: ADR-0021; a route
/// deleted meanwhile routes nothing, one pointed elsewhere delivers there, as either would for an event a moment
/// later). One asking for a lease gets it only if its destination is still the planned one, active and not FIFO as
/// committed now (the caller's snapshot of the catalog may be older than a pause). The caller notifies the
/// schedulers.
pub async fn insert_planned(client: &impl GenericClient, planned: &[NewDelivery<'_>]) -> StoreResult<Inserted> {
    if planned.is_empty() {
        return Ok(Inserted::default());
    }
    let ids: Vec<Uuid> = planned.iter().map(|d| d.id).collect();
    let event_ids: Vec<Uuid> = planned.iter().map(|d| d.event_id).collect();
    let routes: Vec<Uuid> = planned.iter().map(|d| d.route_id).collect();
    let destinations: Vec<Uuid> = planned.iter().map(|d| d.destination_id).collect();
    let states: Vec<&str> = planned.iter().map(|d| d.state.as_str()).collect();
    let payloads: Vec<Option<&[u8]>> = planned.iter().map(|d| d.payload).collect();
    let errors: Vec<Option<&str>> = planned.iter().map(|d| d.last_error).collect();
    let created: Vec<DateTime<Utc>> = planned.iter().map(|d| d.created_at).collect();
    let deferred: Vec<bool> = planned.iter().map(|d| d.needs_routing).collect();
    let owners: Vec<Option<&str>> = planned.iter().map(|d| d.lease.map(|l| l.owner)).collect();
    let lease_ids: Vec<Option<Uuid>> = planned.iter().map(|d| d.lease.map(|l| l.lease_id)).collect();
    let lease_ms: Vec<Option<i32>> = planned.iter().map(|d| d.lease.map(|l| l.ms)).collect();
    // The sequence values are drawn in one go and handed out in the given order (`nextval` per row in a SELECT
    // would follow the plan's order, not the array's).
    let stmt = client
        .prepare_cached(
            "WITH planned AS (
                 SELECT u.id, u.event_id, u.route_id, x.id AS destination_id, u.state, u.payload, u.last_error,
                        u.created_at, u.needs_routing, u.lease_owner, u.lease_id, u.lease_ms, s.seq,
                        u.lease_id IS NOT NULL AND x.id = u.destination_id AND x.state = 'active' AND NOT x.fifo
                            AS leased
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bytea[], $7::text[],
                             $8::timestamptz[], $9::bool[], $10::text[], $11::uuid[], $12::int[])
                          WITH ORDINALITY AS u(id, event_id, route_id, destination_id, state, payload, last_error,
                                               created_at, needs_routing, lease_owner, lease_id, lease_ms, ord)
                 JOIN (SELECT row_number() OVER (ORDER BY v) AS ord, v AS seq
                       FROM (SELECT nextval('deliveries_seq') AS v
                             FROM generate_series(1, cardinality($1::uuid[]))) drawn) s
                   ON s.ord = u.ord
                 JOIN routes r ON r.id = u.route_id
                 JOIN destinations x ON x.id = r.destination_id
             ), inserted AS (
                 INSERT INTO deliveries (id, seq, event_id, route_id, destination_id, state, payload, last_error,
                                         created_at, needs_routing, lease_owner, lease_id, lease_expires_at)
                 SELECT id, seq, event_id, route_id, destination_id, state, payload, last_error, created_at,
                        needs_routing,
                        CASE WHEN leased THEN lease_owner END,
                        CASE WHEN leased THEN lease_id END,
                        CASE WHEN leased THEN now() + lease_ms * interval '1 millisecond' END
                 FROM planned
                 RETURNING id, lease_id IS NOT NULL
             )
             SELECT * FROM inserted",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &event_ids,
                &routes,
                &destinations,
                &states,
                &payloads,
                &errors,
                &created,
                &deferred,
                &owners,
                &lease_ids,
                &lease_ms,
            ],
        )
        .await?;
    let mut inserted = Inserted::default();
    for row in &rows {
        let (id, leased): (Uuid, bool) = (row.column(0)?, row.column(1)?);
        inserted.ids.insert(id);
        if leased {
            inserted.leased.insert(id);
        }
    }
    Ok(inserted)
}
