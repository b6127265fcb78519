//! [`AdminError`]: every refusal of the admin API, as an RFC 7807 problem with a stable `type`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use hookgate_store::error::StoreError;

use crate::http::problem::problem_type;

/// An RFC 7807 problem (`Content-Type: application/problem+json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProblemBody {
    /// Stable URI naming the kind of problem, e.g. `urn:hookgate:problem:not-found`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this token may only read")]
    Forbidden,
    /// A write authenticated by the console's session cookie without its CSRF token.
    #[error("a write authenticated by the console's session cookie must carry the session's X-CSRF-Token header")]
    CsrfMissing,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A slug already taken.
    #[error("{0}")]
    SlugTaken(String),
    /// The object is referenced (events, deliveries, routes) and cannot be deleted.
    #[error("{0}")]
    InUse(String),
    /// The object is declared in the configuration, which wins at every start.
    #[error("{0}")]
    Declared(String),
    /// The object is not in a state that allows this (e.g. retrying a delivery that is not dead).
    #[error("{0}")]
    WrongState(String),
    /// The object fails validation (SSRF check, jq compilation, limits).
    #[error("{0}")]
    Invalid(String),
    #[error("the database is unavailable right now; retry later")]
    Unavailable,
    /// Something could not be decided now (e.g. a route's jq program overran its time bound); retry later.
    #[error("{0}; retry later")]
    Busy(String),
    #[error("an unexpected error occurred")]
    Unexpected(#[from] anyhow::Error),
}

impl AdminError {
    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::Forbidden | Self::CsrfMissing => ("forbidden", "Forbidden"),
            Self::BadRequest(_) => ("bad-request", "Bad request"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::SlugTaken(_) => ("slug-taken", "Slug already taken"),
            Self::InUse(_) => ("in-use", "Object in use"),
            Self::Declared(_) => ("declared-in-config", "Object declared in the configuration"),
            Self::WrongState(_) => ("wrong-state", "Not allowed in the current state"),
            Self::Invalid(_) => ("validation-failed", "Validation failed"),
            Self::Unavailable => ("storage-unavailable", "Storage unavailable"),
            Self::Busy(_) => ("busy", "Try again later"),
            Self::Unexpected(_) => ("internal", "Internal error"),
        }
    }
}

/// What a store failure means to an operator. The answers are those the admin API always gave: a taken slug or a
/// referenced object is a conflict, a value PostgreSQL refuses is the request's fault, a lost or refused connection
/// is "retry later"; the rest is unexpected (and logged with its source).
impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => Self::SlugTaken("this slug is already taken".into()),
            StoreError::Referenced { .. } => {
                Self::InUse("other objects (events, deliveries or routes) refer to this one".into())
            }
            // Class 22 (data exception: NUL in text, out-of-range values, …): the input.
            StoreError::Rejected { .. } => Self::BadRequest("a value is not acceptable to the database".into()),
            StoreError::OutOfRange { .. } => Self::Invalid("a value is out of its allowed range".into()),
            StoreError::Unavailable { .. } | StoreError::Refused(_) => {
                tracing::warn!(message = "No usable database connection for an admin request.", error = %e);
                Self::Unavailable
            }
            // A row that cannot be decoded will not decode on retry either: an internal error (500), logged.
            StoreError::Unreadable(_) => Self::Unexpected(anyhow::anyhow!("a stored row cannot be read: {e}")),
            // PostgreSQL's "not now" (deadlock, serialization failure, statement time-out, …) always answered 500 here.
            StoreError::Transient(_) | StoreError::Other(_) => {
                Self::Unexpected(anyhow::Error::new(e).context("Admin query failed"))
            }
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::CsrfMissing => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::SlugTaken(_) | Self::InUse(_) | Self::Declared(_) | Self::WrongState(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let Self::Unexpected(e) = self {
            tracing::error!(message = "Admin request failed.", error = ?e);
        }
        let (slug, title) = self.slug_and_title();
        let body = ProblemBody {
            type_uri: problem_type(slug),
            title: title.into(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut resp = HttpResponse::build(status);
        resp.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json")));
        match self {
            Self::Unauthorized => {
                resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::Unavailable | Self::Busy(_) => {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            _ => {}
        }
        resp.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Malformed JSON bodies answer a problem, not actix's plain-text error.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(256 * 1024)
        .error_handler(|e, _| AdminError::BadRequest(format!("invalid JSON body: {e}")).into())
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, _| AdminError::BadRequest(format!("invalid query: {e}")).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|e, _| AdminError::BadRequest(format!("invalid path: {e}")).into())
}
