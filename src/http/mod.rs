//! The HTTP front end: ingest verifies and validates, then hands work to the actors (it never talks to PostgreSQL
//! or Redis itself); the handshake, the health endpoints and the admin API (`/admin/v1`, which calls the store).
//!
//! - `ingest.rs`: `POST /ingest/{source}`; `handshake.rs`: `OPTIONS /ingest/{source}` (CloudEvents abuse protection);
//! - `health.rs`: `/healthz`, `/readyz`, `/metrics`; `problem.rs`: `IngestError`, the RFC 7807 answers of ingest;
//! - `admin/`: the admin API; `console/`: the web console over it (`/console`);
//! - `access_log.rs`: a log line per request and its `X-Request-Id`.

pub mod access_log;
pub mod admin;
pub mod console;
pub mod handshake;
pub mod health;
pub mod ingest;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use hookgate_actors::catalog::SharedCatalog;
use hookgate_actors::{EventWriter, HealthRegistry, Mailbox};
use metrics_exporter_prometheus::PrometheusHandle;

use hookgate_actors::sources::SourceRegistry;

/// What every ingest and health handler can reach. Built once, before the HTTP workers start.
pub struct AppState {
    pub sources: Arc<SourceRegistry>,
    /// The EventWriter, behind its bounded mailbox (it asks the dedupe cache itself, ADR-0022).
    pub writer: Mailbox<EventWriter>,
    pub health: Arc<HealthRegistry>,
    pub metrics: PrometheusHandle,
    pub catalog: Arc<SharedCatalog>,
    /// One permit per ingest request in progress once its body has arrived (`server.max_inflight_ingest`).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    /// Admission by time (the writer's queueing delay) and the byte budget of bodies in progress.
    pub admission: Arc<hookgate_actors::admission::Admission>,
    pub ingest_timeout: Duration,
    /// Longest wait for a request's body to arrive (`server.body_timeout_ms`); past it, 408.
    pub body_timeout: Duration,
    pub retry_after_secs: u64,
    pub jq_timeout: Duration,
    pub jq_max_output: usize,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(configure_ingest).configure(configure_operator);
}

/// The public listener's routes when `server.admin_port` is set: ingest and the health endpoints.
pub fn configure_ingest(cfg: &mut web::ServiceConfig) {
    cfg.route("/ingest/{source}", web::post().to(ingest::ingest))
        .route("/ingest/{source}", web::method(actix_web::http::Method::OPTIONS).to(handshake::handshake))
        .configure(configure_health);
}

/// The operators' routes: `/metrics`, `/admin` and `/console` (on `server.admin_port` when it is set).
pub fn configure_operator(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(health::metrics)).configure(admin::configure).configure(console::configure);
}

/// `/healthz` and `/readyz`, on every listener (probes may target either port).
pub fn configure_health(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz)).route("/readyz", web::get().to(health::readyz));
}
