//! RFC 7807 problem responses. Each error kind has a stable `type` URI; internal detail is logged, never returned.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use hookgate_core::cloudevents::CloudEventError;
use hookgate_core::verify::VerifyError;

/// The JSON body of every error answer (`Content-Type: application/problem+json`).
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

/// Everything the ingest endpoint can refuse with.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no source is named {0:?}")]
    UnknownSource(String),
    /// Deleted while the event was on its way to the database: nothing was stored.
    #[error("the source was deleted before the event could be stored")]
    SourceDeleted,
    #[error("{0}")]
    Unauthorized(#[from] VerifyError),
    #[error("the body is larger than this source accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("the body did not fully arrive within {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidCloudEvent(#[from] CloudEventError),
    #[error("{0}")]
    OriginNotAllowed(String),
    #[error("hookgate is at capacity; retry after the delay in Retry-After")]
    Overloaded { retry_after_secs: u64 },
    #[error("the event could not be stored right now; retry after the delay in Retry-After")]
    Unavailable { retry_after_secs: u64 },
    #[error("an unexpected error occurred")]
    Unexpected(#[from] anyhow::Error),
}

impl From<hookgate_core::event::ExtractError> for IngestError {
    fn from(e: hookgate_core::event::ExtractError) -> Self {
        use hookgate_core::event::ExtractError;
        match e {
            ExtractError::Invalid(why) => Self::BadRequest(why),
            ExtractError::NotJson(why) => Self::InvalidJson(why),
            ExtractError::NotACloudEvent => CloudEventError::NotACloudEvent.into(),
        }
    }
}

impl IngestError {
    /// A short, bounded label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownSource(_) | Self::SourceDeleted => "unknown_source",
            Self::Unauthorized(_) => "unauthorized",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::InvalidJson(_) => "invalid_json",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidCloudEvent(_) => "invalid_cloudevent",
            Self::OriginNotAllowed(_) => "origin_not_allowed",
            Self::Overloaded { .. } => "overloaded",
            Self::Unavailable { .. } => "unavailable",
            Self::Unexpected(_) => "error",
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::UnknownSource(_) | Self::SourceDeleted => ("unknown-source", "Unknown source"),
            Self::Unauthorized(_) => ("invalid-signature", "Request verification failed"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            Self::RequestTimeout { .. } => ("request-timeout", "Request timeout"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::InvalidJson(_) => ("invalid-json", "Invalid JSON"),
            Self::BadRequest(_) => ("bad-request", "Bad request"),
            Self::InvalidCloudEvent(_) => ("invalid-cloudevent", "Invalid CloudEvent"),
            Self::OriginNotAllowed(_) => ("origin-not-allowed", "Origin not allowed"),
            Self::Overloaded { .. } => ("overloaded", "Service overloaded"),
            Self::Unavailable { .. } => ("storage-unavailable", "Storage unavailable"),
            Self::Unexpected(_) => ("internal", "Internal error"),
        }
    }
}

/// The stable `type` of a problem.
pub fn problem_type(slug: &str) -> String {
    format!("urn:hookgate:problem:{slug}")
}

/// `Retry-After` for a refusal: between `secs` and twice `secs`, drawn at random, so that the producers refused in
/// one burst do not all come back in the same second.
fn jittered(secs: u64) -> u64 {
    use rand::Rng;
    secs.saturating_add(rand::thread_rng().gen_range(0..=secs))
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::UnknownSource(_) | Self::SourceDeleted => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidJson(_) | Self::BadRequest(_) | Self::InvalidCloudEvent(_) => StatusCode::BAD_REQUEST,
            Self::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::Overloaded { .. } | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (slug, title) = self.slug_and_title();
        let problem =
            Problem { type_uri: problem_type(slug), title, status: status.as_u16(), detail: self.to_string() };
        let mut resp = HttpResponse::build(status);
        resp.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json")));
        if let Self::Overloaded { retry_after_secs } | Self::Unavailable { retry_after_secs } = self {
            resp.insert_header((header::RETRY_AFTER, jittered(*retry_after_secs).to_string()));
        }
        if let Self::RequestTimeout { .. } = self {
            // The rest of the body may still come: this connection cannot carry another request (RFC 9110 §15.5.9).
            resp.force_close();
        }
        resp.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}
