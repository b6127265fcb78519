//! Counts over a recent window, for the admin API's statistics.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::error::{Columns, StoreResult};

/// What happened in the window: events per source, attempts per destination, deliveries per destination and state.
#[derive(Debug, Default)]
pub struct WindowCounts {
    /// (source id, slug, events received), by slug.
    pub sources: Vec<(Uuid, String, i64)>,
    /// (destination id, slug, attempts started), by slug.
    pub destinations: Vec<(Uuid, String, i64)>,
    /// (destination id, current state, deliveries created).
    pub deliveries: Vec<(Uuid, String, i64)>,
}

/// The counts of the last `secs` seconds.
pub async fn window_counts(client: &impl GenericClient, secs: f64) -> StoreResult<WindowCounts> {
    let triple = |rows: Vec<tokio_postgres::Row>| -> StoreResult<Vec<(Uuid, String, i64)>> {
        rows.iter().map(|r| Ok((r.column(0)?, r.column(1)?, r.column(2)?))).collect()
    };
    let sources = client
        .query(
            "SELECT s.id, s.slug,
                    (SELECT count(*) FROM events e
                     WHERE e.source_id = s.id AND e.received_at > now() - make_interval(secs => $1))
             FROM sources s ORDER BY s.slug",
            &[&secs],
        )
        .await?;
    let destinations = client
        .query(
            "SELECT d.id, d.slug,
                    (SELECT count(*) FROM attempts a JOIN deliveries x ON x.id = a.delivery_id
                     WHERE x.destination_id = d.id AND a.started_at > now() - make_interval(secs => $1))
             FROM destinations d ORDER BY d.slug",
            &[&secs],
        )
        .await?;
    let deliveries = client
        .query(
            "SELECT destination_id, state, count(*) FROM deliveries
             WHERE created_at > now() - make_interval(secs => $1) GROUP BY destination_id, state",
            &[&secs],
        )
        .await?;
    Ok(WindowCounts { sources: triple(sources)?, destinations: triple(destinations)?, deliveries: triple(deliveries)? })
}
