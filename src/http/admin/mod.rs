//! The admin API, `/admin/v1`: JSON over bearer tokens, for operators (and later a console).
//!
//! Unlike ingest, these handlers read and write PostgreSQL through the store's functions (`hookgate_store`), not
//! through an actor (see ARCHITECTURE.md): they are operator-driven, low-volume, and must answer from the stored
//! truth rather than from a node's snapshot. Every write to sources, destinations or routes ends with a NOTIFY on
//! the catalog channel so every node reloads.
//!
//! - `auth.rs`: tokens, roles and the scope-wide guard (GET needs `read`, every other method needs `write`).
//! - `error.rs`: [`AdminError`], the one error type, rendered as RFC 7807 problems.
//! - `sources.rs`, `destinations.rs`, `routes.rs`: CRUD, secret rotation, pause/resume, health.
//! - `events.rs`: event list (cursor pagination) and detail; single-event replay.
//! - `deliveries.rs`: retry dead deliveries, cancel pending ones, dead-letter listing.
//! - `jobs.rs`: bulk replay jobs and the background task that runs them (and expires rotated secrets).
//! - `stats.rs`: counts per source and destination over time windows.
//! - `tail.rs`: the live tail, Server-Sent Events of the cluster's new events and attempt outcomes (ADR-0012).
//! - `openapi.rs`: the OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.

pub mod auth;
pub mod deliveries;
pub mod destinations;
pub mod error;
pub mod events;
pub mod jobs;
pub mod openapi;
pub mod routes;
pub mod sources;
pub mod stats;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use deadpool_postgres::Pool;
use hookgate_actors::catalog::SharedCatalog;
use hookgate_actors::limits::Limits;
use hookgate_actors::tail::TailHub;
use hookgate_actors::RedisLink;
use hookgate_core::source::SourceBounds;
use hookgate_core::ssrf::SsrfPolicy;

pub use error::AdminError;

/// What the admin handlers reach. Built once in `Application::build`.
pub struct AdminState {
    /// The admin API's own pool (`admin.pool_size`), apart from the writer's and the delivery side's: a slow admin
    /// query never takes a connection ingest is waiting for.
    pub pool: Pool,
    pub tokens: auth::Tokens,
    pub ssrf: SsrfPolicy,
    pub catalog: Arc<SharedCatalog>,
    pub limits: Arc<Limits>,
    /// The delivery limits' own Redis connection (circuit state for destination health).
    pub redis: Arc<RedisLink>,
    pub rotation_grace: Duration,
    pub jq_timeout: Duration,
    pub jq_max_output: usize,
    /// What every source is checked against (`server.max_body_bytes`, `retention.dedupe_window_secs`).
    pub source_bounds: SourceBounds,
    /// The live tail's fan-out to this node's SSE clients.
    pub tail: Arc<TailHub>,
    /// Between SSE heartbeats on an idle stream (`tail.heartbeat_ms`).
    pub tail_heartbeat: Duration,
    /// This node's id (the live tail's first comment names it).
    pub node_id: String,
}

/// Declares every admin route once: the same table registers the handlers and is what the tests enumerate.
macro_rules! admin_routes {
    ($( $method:ident $path:literal => $handler:path ;)*) => {
        /// Every admin route as (method, path under `/admin/v1`).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn register(cfg: &mut web::ServiceConfig) {
            $( cfg.route($path, web::$method().to($handler)); )*
        }
    };
}

admin_routes! {
    get "/openapi.json" => openapi::document;
    get "/sources" => sources::list;
    post "/sources" => sources::create;
    get "/sources/{id}" => sources::get;
    put "/sources/{id}" => sources::update;
    delete "/sources/{id}" => sources::delete;
    post "/sources/{id}/rotate-secret" => sources::rotate_secret;
    get "/destinations" => destinations::list;
    post "/destinations" => destinations::create;
    get "/destinations/{id}" => destinations::get;
    put "/destinations/{id}" => destinations::update;
    delete "/destinations/{id}" => destinations::delete;
    post "/destinations/{id}/rotate-secret" => destinations::rotate_secret;
    post "/destinations/{id}/pause" => destinations::pause;
    post "/destinations/{id}/resume" => destinations::resume;
    get "/destinations/{id}/health" => destinations::health;
    get "/destinations/{id}/deliveries" => deliveries::list_for_destination;
    post "/destinations/{id}/retry-dead" => deliveries::retry_dead_of_destination;
    post "/destinations/{id}/cancel-pending" => deliveries::cancel_pending_of_destination;
    get "/routes" => routes::list;
    post "/routes" => routes::create;
    // Before `/routes/{id}`: the first resource whose path matches answers.
    post "/routes/test" => routes::test;
    get "/routes/{id}" => routes::get;
    put "/routes/{id}" => routes::update;
    delete "/routes/{id}" => routes::delete;
    get "/events" => events::list;
    get "/events/stream" => tail::stream;
    get "/events/{id}" => events::get;
    post "/events/{id}/replay" => events::replay;
    post "/deliveries/{id}/retry" => deliveries::retry;
    post "/deliveries/{id}/cancel" => deliveries::cancel;
    get "/replay-jobs" => jobs::list;
    post "/replay-jobs" => jobs::create;
    get "/replay-jobs/{id}" => jobs::get;
    post "/replay-jobs/{id}/cancel" => jobs::cancel;
    get "/stats" => stats::stats;
}

/// Mounts `/admin/v1`: the token guard wraps the whole scope, so a route added to the table is guarded too.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1")
            .app_data(error::json_config())
            .app_data(error::query_config())
            .app_data(error::path_config())
            .wrap(actix_web::middleware::from_fn(auth::guard))
            .configure(register)
            .default_service(web::to(not_found)),
    );
}

async fn not_found() -> Result<actix_web::HttpResponse, AdminError> {
    Err(AdminError::NotFound("no such admin resource".into()))
}

/// Tells every node to reload sources, destinations and routes (delivered at the transaction's COMMIT).
pub async fn notify_catalog(tx: &deadpool_postgres::Transaction<'_>, why: &str) -> Result<(), AdminError> {
    Ok(hookgate_store::channels::notify_catalog(tx, why).await?)
}

/// Before a delete, holds off the writes of the table that refers to the object (`events` for a source, `deliveries`
/// for a route or destination), taken before the object's own row lock: a result batch holding `deliveries` may be
/// waiting for a destination's row (ADR-0021). 503 (busy) when the table stays busy past the lock's tries.
pub async fn lock_before_delete(tx: &deadpool_postgres::Transaction<'_>, table: &str) -> Result<(), AdminError> {
    match hookgate_store::lock_against_inserts(tx, table).await? {
        true => Ok(()),
        false => Err(AdminError::Busy(format!("writes to {table} kept the delete from starting"))),
    }
}

/// The NOTIFY that wakes every Scheduler when deliveries became due.
pub async fn notify_deliveries(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), AdminError> {
    Ok(hookgate_store::channels::notify_deliveries(tx, "admin").await?)
}

/// A page size from the query: default 50, at most 500.
pub fn page_limit(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(50).clamp(1, 500))
}
