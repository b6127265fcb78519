//! The thin HTTP front end: ingest validates, then hands work to actors; it never talks to PostgreSQL directly.
//! The admin API (`/admin/v1`, `crate::admin`) is mounted here too; it uses the pool directly.

pub mod health;
pub mod ingest;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ingest/{source}", web::post().to(ingest::ingest))
        .route("/ingest/{source}", web::method(actix_web::http::Method::OPTIONS).to(ingest::handshake))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .configure(crate::admin::configure);
}
