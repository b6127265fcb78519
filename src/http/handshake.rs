//! `OPTIONS /ingest/{source}`: the CloudEvents webhook abuse-protection handshake.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::problem::IngestError;
use crate::http::AppState;

/// `OPTIONS /ingest/{source}`: the CloudEvents webhook abuse-protection handshake. An origin listed in the source's
/// `allowed_origins` (or `"*"`) is echoed in `WebHook-Allowed-Origin`, with `WebHook-Allowed-Rate` when configured.
#[tracing::instrument(name = "handshake", skip_all, fields(source = %path.as_str()))]
pub async fn handshake(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let source =
        state.sources.get().get(path.as_str()).cloned().ok_or_else(|| IngestError::UnknownSource(path.into_inner()))?;
    let origin = req
        .headers()
        .get("webhook-request-origin")
        .ok_or_else(|| IngestError::BadRequest("the WebHook-Request-Origin header is missing".into()))?
        .to_str()
        .map_err(|_| IngestError::BadRequest("the WebHook-Request-Origin header must be visible ASCII".into()))?
        .trim();
    if origin.is_empty() || origin.len() > 255 {
        return Err(IngestError::BadRequest("the WebHook-Request-Origin header must hold 1 to 255 characters".into()));
    }
    let allowed = source.options.allowed_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
    if !allowed {
        return Err(IngestError::OriginNotAllowed(format!("the origin {origin:?} may not send to this source")));
    }
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("WebHook-Allowed-Origin", origin)).insert_header((header::ALLOW, "POST, OPTIONS"));
    if let Some(rate) = source.options.allowed_rate {
        resp.insert_header(("WebHook-Allowed-Rate", rate.to_string()));
    }
    Ok(resp.finish())
}
