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
    let client = hookgate_store::connect(&state.pool).await?;
    let counts = hookgate_store::stats::window_counts(&client, f64::from(window)).await?;
    let sources = counts.sources.into_iter().map(|(id, slug, events)| SourceStats { id, slug, events }).collect();
    let mut destinations: Vec<DestinationStats> = counts
        .destinations
        .into_iter()
        .map(|(id, slug, attempts)| DestinationStats { id, slug, deliveries: BTreeMap::new(), attempts })
        .collect();
    for (id, state, n) in counts.deliveries {
        if let Some(d) = destinations.iter_mut().find(|d| d.id == id) {
            d.deliveries.insert(state, n);
        }
    }
    Ok(HttpResponse::Ok().json(Stats { window_secs: window, sources, destinations }))
}
