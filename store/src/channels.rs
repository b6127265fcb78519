//! The NOTIFY channels hookgate's nodes talk over, in one place.

/// New deliveries were committed (payload unused): schedulers look for work.
pub const DELIVERIES_CHANNEL: &str = "hookgate_deliveries";

/// Sources, destinations or routes changed: every node reloads its routing snapshot.
pub const CATALOG_CHANNEL: &str = "hookgate_catalog";

use deadpool_postgres::GenericClient;

use crate::error::StoreResult;

/// Tells every node to reload sources, destinations and routes (delivered at the transaction's COMMIT).
pub async fn notify_catalog(client: &impl GenericClient, why: &str) -> StoreResult<()> {
    client.execute("SELECT pg_notify($1, $2)", &[&CATALOG_CHANNEL, &why]).await?;
    Ok(())
}

/// Wakes every Scheduler: deliveries became due (delivered at the transaction's COMMIT).
pub async fn notify_deliveries(client: &impl GenericClient, why: &str) -> StoreResult<()> {
    client.execute("SELECT pg_notify($1, $2)", &[&DELIVERIES_CHANNEL, &why]).await?;
    Ok(())
}
