//! `/healthz` (the process answers), `/readyz` (it can take traffic), `/metrics` (Prometheus text).

use actix_web::{web, HttpResponse};
use hookgate_core::internal_events::{emit, AdmissionObserved};

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
    let a = &state.admission;
    emit(AdmissionObserved {
        queue_delay: a.queue_delay(),
        body_bytes: a.body_bytes_in_use(),
        body_budget: a.body_budget(),
    });
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
