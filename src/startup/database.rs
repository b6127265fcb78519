//! The database half of start-up: the pools (the main one, the admin API's), the migrations, the configuration's
//! declared objects, and the snapshots (sources, catalog) every node serves from.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hookgate_actors::catalog::{self, SharedCatalog};
use hookgate_actors::pg_tls::{tls_failure, PgConnect};
use hookgate_actors::sources::{self as source_snapshot, SourceRegistry};
use hookgate_store::notifications::NotificationDestination;

use crate::config::{DatabaseSettings, Settings};
use crate::sources;

/// The admin API's connections, as `pg_stat_activity` names them.
const ADMIN_APPLICATION_NAME: &str = "hookgate-admin";

/// Builds the connection pool; no connection is opened until first use.
pub fn build_pool(db: &DatabaseSettings) -> anyhow::Result<Pool> {
    pool(db, &db.pg_connect()?, db.pool_size)
}

/// The admin API's own pool (`admin.pool_size`, named `hookgate-admin`), apart from the writer's and the delivery
/// side's: slow admin queries wait for each other, never take a connection ingest needs. No connection is opened
/// until the first admin request.
pub fn admin_pool(settings: &Settings, pg: &PgConnect) -> anyhow::Result<Pool> {
    let mut pg = pg.clone();
    pg.config.application_name(ADMIN_APPLICATION_NAME);
    pool(&settings.database, &pg, settings.admin.pool_size)
}

/// The pool, with its first connection open: a wrong address, password or TLS setting (a wrong CA, say) fails here
/// with its reason.
pub async fn connect_pool(db: &DatabaseSettings) -> anyhow::Result<Pool> {
    let pool = build_pool(db)?;
    first_connection(&pool).await?;
    Ok(pool)
}

fn pool(db: &DatabaseSettings, pg: &PgConnect, size: usize) -> anyhow::Result<Pool> {
    let mgr = Manager::from_config(
        pg.config.clone(),
        pg.tls.clone(),
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(Duration::from_millis(db.pool_wait_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(db.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(db.connect_timeout_ms)))
        .runtime(Runtime::Tokio1)
        .build()
        .context("Failed to build the PostgreSQL pool")
}

/// Opens one connection; a TLS failure is told in its own words (the mode, what was trusted, why it failed).
async fn first_connection(pool: &Pool) -> anyhow::Result<()> {
    match hookgate_store::connect(pool).await {
        Ok(_) => Ok(()),
        Err(e) => match tls_failure(&e) {
            Some(tls) => Err(anyhow::anyhow!("Cannot connect to PostgreSQL: {tls}")),
            // (The store's error already tells its sources on its one line.)
            None => Err(anyhow::anyhow!("Cannot connect to PostgreSQL: {e}")),
        },
    }
}

/// The pool (its first connection open), with the schema migrated (unless `database.migrate_on_start` is off) and
/// the configuration's declared sources, destinations and routes applied in one transaction, with hookgate's own
/// source and route (see `[notifications]`). `pg` is how every connection reaches PostgreSQL (the pools', the
/// probe's, the LISTEN connections'). Answers the notification destination too, when notifications are on.
pub async fn prepare(settings: &Settings, pg: &PgConnect) -> anyhow::Result<(Pool, Option<NotificationDestination>)> {
    let pool = pool(&settings.database, pg, settings.database.pool_size)?;
    first_connection(&pool).await?;
    if settings.database.migrate_on_start {
        hookgate_store::migrations::run(&pool).await?;
    }
    let tls = settings.destination_tls()?;
    let (destinations, routes) = catalog::declared_rows(&settings.destinations, &tls, &settings.routes)?;
    let ops = hookgate_store::apply_declared(
        &pool,
        &sources::declared_rows(&settings.sources)?,
        &destinations,
        &routes,
        settings.notifications.destination.as_deref(),
    )
    .await?;
    Ok((pool, ops))
}

/// The snapshots the front end and the actors read: the enabled sources and the routing catalog.
pub async fn load_snapshots(pool: &Pool) -> anyhow::Result<(Arc<SourceRegistry>, Arc<SharedCatalog>)> {
    let registry = Arc::new(SourceRegistry::default());
    let n = source_snapshot::reload(&registry, pool).await?;
    let catalog = Arc::new(SharedCatalog::default());
    catalog::reload(&catalog, pool).await?;
    tracing::info!(message = "Sources, destinations and routes loaded.", sources = n);
    Ok((registry, catalog))
}
