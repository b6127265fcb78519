//! The dead letter: list a destination's deliveries by state, retry dead ones (one, or all of a destination), and
//! cancel pending ones. Retrying keeps the attempt history; a leased delivery (an attempt in flight) is never changed
//! here, because only the holder of a delivery's lease may change it.

use actix_web::{web, HttpResponse};
use hookgate_core::state::DeliveryState;
use hookgate_store::deliveries as store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;

use super::events::DeliveryView;
use super::sources::IdPath;
use super::{notify_deliveries, page_limit, AdminError, AdminState};

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
    let client = hookgate_store::connect(&state.pool).await?;
    let limit = page_limit(query.limit);
    let st = query.state.unwrap_or(DeliveryState::Dead).as_str();
    let rows = store::list_for_destination(&client, path.id, st, query.cursor, limit + 1).await?;
    let mut items: Vec<DeliveryView> = rows.into_iter().map(DeliveryView::from).collect();
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(|d| d.id) } else { None };
    Ok(HttpResponse::Ok().json(DeliveryPage { items, next_cursor }))
}

async fn state_of(client: &deadpool_postgres::Object, id: Uuid) -> Result<DeliveryState, AdminError> {
    store::state_of(client, id).await?.ok_or_else(|| AdminError::NotFound(format!("no delivery has id {id}")))
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
    let mut client = hookgate_store::connect(&state.pool).await?;
    let st = state_of(&client, path.id).await?;
    // For a failed delivery: the payload its route yields now (None: the event's body).
    let payload: Option<Vec<u8>> = match st {
        DeliveryState::Dead => None,
        DeliveryState::Failed => reevaluate(&state, &client, path.id).await?,
        other => {
            return Err(AdminError::WrongState(format!(
                "only dead or failed deliveries can be retried; this one is {other}"
            )))
        }
    };
    let tx = hookgate_store::begin(&mut client).await?;
    let row = store::retry(&tx, path.id, st, payload.as_deref()).await?;
    let Some(row) = row else {
        drop(tx);
        let now = state_of(&client, path.id).await?;
        return Err(AdminError::WrongState(format!("the delivery changed meanwhile; it is {now} now")));
    };
    notify_deliveries(&tx).await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(DeliveryView::from(row)))
}

/// Runs a failed delivery's route again on its event; the payload to deliver when it now succeeds.
async fn reevaluate(
    state: &AdminState,
    client: &deadpool_postgres::Object,
    id: Uuid,
) -> Result<Option<Vec<u8>>, AdminError> {
    use hookgate_core::jq::{evaluate, RouteOutcome};
    let row = store::route_input(client, id)
        .await?
        .ok_or_else(|| AdminError::WrongState("the delivery's event is no longer stored".into()))?;
    let route_id = row.route_id;
    let event = super::events::StoredEvent {
        id: row.event_id,
        source_id: row.source_id,
        source_slug: row.source_slug,
        headers: row.headers,
        body: row.body,
        event_type: row.event_type,
        received_at: row.received_at,
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
    let client = hookgate_store::connect(&state.pool).await?;
    let row = store::cancel(&client, path.id).await?;
    match row {
        Some(row) => Ok(HttpResponse::Ok().json(DeliveryView::from(row))),
        None => {
            let st = state_of(&client, path.id).await?;
            Err(AdminError::WrongState(if st == DeliveryState::Pending {
                "this delivery is being attempted right now; try again when the attempt is over".into()
            } else {
                format!("only pending deliveries can be cancelled; this one is {st}")
            }))
        }
    }
}

async fn destination_exists(client: &deadpool_postgres::Object, id: Uuid) -> Result<(), AdminError> {
    match store::destination_exists(client, id).await? {
        true => Ok(()),
        false => Err(AdminError::NotFound(format!("no destination has id {id}"))),
    }
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
    let mut client = hookgate_store::connect(&state.pool).await?;
    destination_exists(&client, path.id).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let count = store::retry_dead_of_destination(&tx, path.id).await?;
    notify_deliveries(&tx).await?;
    hookgate_store::commit(tx).await?;
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
    let client = hookgate_store::connect(&state.pool).await?;
    destination_exists(&client, path.id).await?;
    let count = store::cancel_pending_of_destination(&client, path.id).await?;
    Ok(HttpResponse::Ok().json(Affected { count }))
}
