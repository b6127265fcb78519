//! The dead letter: list a destination's deliveries by state, retry dead ones (one, or all of a destination), and
//! cancel pending ones. Retrying keeps the attempt history; a leased delivery (an attempt in flight) is never changed
//! here, because only the holder of a delivery's lease may change it.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::events::{delivery_view, DeliveryState, DeliveryView, DELIVERY_COLUMNS};
use super::sources::IdPath;
use super::{notify_deliveries, page_limit, AdminError, AdminState};

/// Not leased, or the lease has expired.
const LEASE_FREE: &str = "(lease_expires_at IS NULL OR lease_expires_at < now())";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this state (default `dead`).
    pub state: Option<DeliveryState>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Affected {
    /// How many deliveries changed.
    pub count: u64,
}

/// A destination's deliveries in one state (the dead letter by default), newest first.
#[utoipa::path(get, path = "/admin/v1/destinations/{id}/deliveries", tag = "deliveries", security(("bearer" = [])),
    params(IdPath, DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn list_for_destination(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let limit = page_limit(query.limit);
    let st = query.state.unwrap_or(DeliveryState::Dead).as_str();
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE destination_id = $1 AND state = $2 AND ($3::uuid IS NULL OR id < $3)
                 ORDER BY id DESC LIMIT $4"
            ),
            &[&path.id, &st, &query.cursor, &(limit + 1)],
        )
        .await?;
    let mut items: Vec<DeliveryView> = rows.iter().map(delivery_view).collect();
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(|d| d.id) } else { None };
    Ok(HttpResponse::Ok().json(DeliveryPage { items, next_cursor }))
}

async fn state_of(client: &deadpool_postgres::Object, id: Uuid) -> Result<String, AdminError> {
    Ok(client
        .query_opt("SELECT state FROM deliveries WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no delivery has id {id}")))?
        .get(0))
}

/// Retries a `dead` or `failed` delivery: `pending`, due now, attempts kept. A `failed` delivery (its route's filter
/// or transform failed on the event) is evaluated again with the route's current programs first: it becomes
/// `pending` with the new payload when they now succeed, and the answer is 422 naming the failure when they still
/// fail, 409 when the filter no longer takes the event, 503 when the evaluation could not finish in time.
#[utoipa::path(post, path = "/admin/v1/deliveries/{id}/retry", tag = "deliveries", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DeliveryView), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 503, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn retry(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let mut client = state.pool.get().await?;
    let st = state_of(&client, path.id).await?;
    // For a failed delivery: the payload its route yields now (None: the event's body).
    let payload: Option<Vec<u8>> = match st.as_str() {
        "dead" => None,
        "failed" => reevaluate(&state, &client, path.id).await?,
        other => {
            return Err(AdminError::WrongState(format!(
                "only dead or failed deliveries can be retried; this one is {other}"
            )))
        }
    };
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_id = NULL,
                        lease_expires_at = NULL, updated_at = now(),
                        payload = CASE WHEN state = 'failed' THEN $3 ELSE payload END,
                        last_error = CASE WHEN state = 'failed' THEN NULL ELSE last_error END
                 WHERE id = $1 AND state = $2
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&path.id, &st, &payload],
        )
        .await?;
    let Some(row) = row else {
        drop(tx);
        let now = state_of(&client, path.id).await?;
        return Err(AdminError::WrongState(format!("the delivery changed meanwhile; it is {now} now")));
    };
    notify_deliveries(&tx).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(delivery_view(&row)))
}

/// Runs a failed delivery's route again on its event; the payload to deliver when it now succeeds.
async fn reevaluate(
    state: &AdminState,
    client: &deadpool_postgres::Object,
    id: Uuid,
) -> Result<Option<Vec<u8>>, AdminError> {
    use hookgate_actors::jq::{evaluate, RouteOutcome};
    let row = client
        .query_opt(
            "SELECT d.route_id, e.id, e.source_id, s.slug, e.headers, e.body, e.type, e.received_at
             FROM deliveries d
             JOIN events e ON e.id = d.event_id
             JOIN sources s ON s.id = e.source_id
             WHERE d.id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| AdminError::WrongState("the delivery's event is no longer stored".into()))?;
    let route_id: Uuid = row.get(0);
    let event = super::events::StoredEvent {
        id: row.get(1),
        source_id: row.get(2),
        source_slug: row.get(3),
        headers: row.get(4),
        body: row.get(5),
        event_type: row.get(6),
        received_at: row.get(7),
    };
    let catalog = state.catalog.get();
    let route = catalog
        .routes_for(event.source_id)
        .iter()
        .find(|r| r.id == route_id)
        .cloned()
        .ok_or_else(|| AdminError::WrongState("the delivery's route is disabled or gone".into()))?;
    let input = std::sync::Arc::new(event.jq_input());
    match evaluate(route.filter.clone(), route.transform.clone(), input, state.jq_timeout, state.jq_max_output).await {
        RouteOutcome::Deliver(payload) => Ok(payload),
        RouteOutcome::Skip => Err(AdminError::WrongState("the route's filter no longer takes this event".into())),
        RouteOutcome::Failed(why) => Err(AdminError::Invalid(format!("the route still fails: {why}"))),
        RouteOutcome::Unavailable(why) => Err(AdminError::Busy(why)),
    }
}

/// Cancels a pending delivery that is not being attempted right now.
#[utoipa::path(post, path = "/admin/v1/deliveries/{id}/cancel", tag = "deliveries", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DeliveryView), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn cancel(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE deliveries SET state = 'cancelled', last_error = 'cancelled by an operator', updated_at = now()
                 WHERE id = $1 AND state = 'pending' AND {LEASE_FREE}
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&path.id],
        )
        .await?;
    match row {
        Some(row) => Ok(HttpResponse::Ok().json(delivery_view(&row))),
        None => {
            let st = state_of(&client, path.id).await?;
            Err(AdminError::WrongState(if st == "pending" {
                "this delivery is being attempted right now; try again when the attempt is over".into()
            } else {
                format!("only pending deliveries can be cancelled; this one is {st}")
            }))
        }
    }
}

async fn destination_exists(client: &deadpool_postgres::Object, id: Uuid) -> Result<(), AdminError> {
    client
        .query_opt("SELECT 1 FROM destinations WHERE id = $1", &[&id])
        .await?
        .map(|_| ())
        .ok_or_else(|| AdminError::NotFound(format!("no destination has id {id}")))
}

/// Retries every dead delivery of a destination.
#[utoipa::path(post, path = "/admin/v1/destinations/{id}/retry-dead", tag = "deliveries", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = Affected), (status = 404, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn retry_dead_of_destination(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, AdminError> {
    let mut client = state.pool.get().await?;
    destination_exists(&client, path.id).await?;
    let tx = client.transaction().await?;
    let count = tx
        .execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_id = NULL,
                    lease_expires_at = NULL, updated_at = now()
             WHERE destination_id = $1 AND state = 'dead'",
            &[&path.id],
        )
        .await?;
    notify_deliveries(&tx).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(Affected { count }))
}

/// Cancels every pending delivery of a destination that is not being attempted right now.
#[utoipa::path(post, path = "/admin/v1/destinations/{id}/cancel-pending", tag = "deliveries",
    security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = Affected), (status = 404, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn cancel_pending_of_destination(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    destination_exists(&client, path.id).await?;
    let count = client
        .execute(
            &format!(
                "UPDATE deliveries SET state = 'cancelled', last_error = 'cancelled by an operator', updated_at = now()
                 WHERE destination_id = $1 AND state = 'pending' AND {LEASE_FREE}"
            ),
            &[&path.id],
        )
        .await?;
    Ok(HttpResponse::Ok().json(Affected { count }))
}
