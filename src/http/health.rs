//! `/healthz` (the process answers), `/readyz` (it can take traffic), `/metrics` (Prometheus text).

use actix_web::{web, HttpResponse};

use crate::http::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let report = state.health.report();
    if report.ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.health.publish_metrics();
    crate::telemetry::collect_process_metrics();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
