//! The thin HTTP front end: it validates, then hands work to actors. It never talks to PostgreSQL directly.

pub mod health;
pub mod ingest;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ingest/{source}", web::post().to(ingest::ingest))
        .route("/ingest/{source}", web::method(actix_web::http::Method::OPTIONS).to(ingest::handshake))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics));
}
