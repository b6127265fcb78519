//! Counts per source (events received) and per destination (deliveries by state) over a recent window.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::{AdminError, AdminState};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Window length in seconds, ending now: 60 to 604800 (default 3600).
    pub window_secs: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceStats {
    pub id: Uuid,
    pub slug: String,
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationStats {
    pub id: Uuid,
    pub slug: String,
    /// Deliveries created in the window, by current state.
    pub deliveries: BTreeMap<String, i64>,
    /// Attempts started in the window.
    pub attempts: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub window_secs: u32,
    pub sources: Vec<SourceStats>,
    pub destinations: Vec<DestinationStats>,
}

/// Counts per source and destination over the last `window_secs`.
#[utoipa::path(get, path = "/admin/v1/stats", tag = "stats", security(("bearer" = [])), params(StatsQuery),
    responses((status = 200, body = Stats), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn stats(state: web::Data<AdminState>, query: web::Query<StatsQuery>) -> Result<HttpResponse, AdminError> {
    let window = query.window_secs.unwrap_or(3600);
    if !(60..=604_800).contains(&window) {
        return Err(AdminError::BadRequest("window_secs must be between 60 and 604800".into()));
    }
    let secs = f64::from(window);
    let client = state.pool.get().await?;
    let sources = client
        .query(
            "SELECT s.id, s.slug,
                    (SELECT count(*) FROM events e
                     WHERE e.source_id = s.id AND e.received_at > now() - make_interval(secs => $1))
             FROM sources s ORDER BY s.slug",
            &[&secs],
        )
        .await?
        .iter()
        .map(|r| SourceStats { id: r.get(0), slug: r.get(1), events: r.get(2) })
        .collect();
    let mut destinations: Vec<DestinationStats> = client
        .query(
            "SELECT d.id, d.slug,
                    (SELECT count(*) FROM attempts a JOIN deliveries x ON x.id = a.delivery_id
                     WHERE x.destination_id = d.id AND a.started_at > now() - make_interval(secs => $1))
             FROM destinations d ORDER BY d.slug",
            &[&secs],
        )
        .await?
        .iter()
        .map(|r| DestinationStats { id: r.get(0), slug: r.get(1), deliveries: BTreeMap::new(), attempts: r.get(2) })
        .collect();
    for r in client
        .query(
            "SELECT destination_id, state, count(*) FROM deliveries
             WHERE created_at > now() - make_interval(secs => $1) GROUP BY destination_id, state",
            &[&secs],
        )
        .await?
    {
        let id: Uuid = r.get(0);
        if let Some(d) = destinations.iter_mut().find(|d| d.id == id) {
            d.deliveries.insert(r.get(1), r.get(2));
        }
    }
    Ok(HttpResponse::Ok().json(Stats { window_secs: window, sources, destinations }))
}
