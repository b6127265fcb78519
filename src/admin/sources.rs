//! Sources: CRUD and HMAC secret rotation. Secrets are shown once (creation, rotation) and never returned by GET.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::{notify_catalog, AdminError, AdminState};
use crate::config::{IdempotencyConfig, Secrets, VerificationConfig};
use crate::sources::validate_slug;

/// A source as the API shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub id: Uuid,
    pub slug: String,
    pub max_body_bytes: i32,
    pub require_json: bool,
    pub idempotency: IdempotencyInput,
    pub verification: VerificationView,
    pub enabled: bool,
    /// Declared in the configuration file: the configuration wins at every start, so the API refuses to edit it.
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    /// `none` or `hmac_sha256`.
    pub kind: String,
    pub header: Option<String>,
    pub prefix: Option<String>,
    /// While a secret rotates: until when the previous secret is still accepted.
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

/// Where the idempotency key comes from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyInput {
    /// `header` (the named request header) or `body_hash` (SHA-256 of the body).
    pub from: IdempotencyFrom,
    /// With `from = header`: the header's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `from = json_pointer`: the pointer, e.g. `/id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyFrom {
    Header,
    BodyHash,
    /// A JSON pointer into the body (`pointer`).
    JsonPointer,
    /// The CloudEvents `source` and `id`.
    Cloudevents,
}

/// How requests are verified. With `hmac_sha256` and no `secret`, hookgate generates one and shows it once.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerificationInput {
    pub kind: VerificationKind,
    /// The header holding the hex HMAC-SHA256 of the body.
    #[serde(default)]
    pub header: Option<String>,
    /// Text before the hex signature, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only at creation: a secret chosen by the producer (e.g. one it generated). Ignored on update.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub secret: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationKind {
    None,
    HmacSha256,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    /// 1 to 64 of `a-z 0-9 - _`, starting with a letter or digit.
    pub slug: String,
    /// Largest accepted body in bytes (default 1 MiB, at most `server.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u32>,
    #[serde(default)]
    pub require_json: bool,
    pub idempotency: IdempotencyInput,
    pub verification: VerificationInput,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The answer to a creation or rotation: the only time a secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceWithSecret {
    pub source: SourceView,
    /// The HMAC secret, shown now and never again (absent for unverified sources).
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// How long the previous secret stays valid (default `admin.rotation_grace_secs`).
    #[serde(default)]
    pub grace_secs: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret, active now; shown once.
    pub secret: String,
    /// Until when the previous secret is still accepted.
    pub previous_valid_until: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// The object's id.
    pub id: Uuid,
}

const COLUMNS: &str = "id, slug, max_body_bytes, require_json, idempotency, verification, enabled, declared, \
                       created_at, updated_at, previous_secret_until";

fn view(row: &Row) -> Result<SourceView, AdminError> {
    let idem: IdempotencyConfig =
        serde_json::from_value(row.get(4)).map_err(|e| anyhow::anyhow!("stored idempotency: {e}"))?;
    let verification: VerificationConfig =
        serde_json::from_value(row.get(5)).map_err(|e| anyhow::anyhow!("stored verification: {e}"))?;
    let until: Option<DateTime<Utc>> = row.get(10);
    Ok(SourceView {
        id: row.get(0),
        slug: row.get(1),
        max_body_bytes: row.get(2),
        require_json: row.get(3),
        idempotency: match idem {
            IdempotencyConfig::Header { header } => {
                IdempotencyInput { from: IdempotencyFrom::Header, header: Some(header), pointer: None }
            }
            IdempotencyConfig::BodyHash => {
                IdempotencyInput { from: IdempotencyFrom::BodyHash, header: None, pointer: None }
            }
            IdempotencyConfig::JsonPointer { pointer } => {
                IdempotencyInput { from: IdempotencyFrom::JsonPointer, header: None, pointer: Some(pointer) }
            }
            IdempotencyConfig::Cloudevents => {
                IdempotencyInput { from: IdempotencyFrom::Cloudevents, header: None, pointer: None }
            }
        },
        verification: verification_view(verification, until),
        enabled: row.get(6),
        declared: row.get(7),
        created_at: row.get(8),
        updated_at: row.get(9),
    })
}

/// What GET shows of a source's verification: its kind and where the signature is, never a secret.
fn verification_view(v: VerificationConfig, until: Option<DateTime<Utc>>) -> VerificationView {
    let until = until.filter(|u| *u > Utc::now());
    let (kind, header, prefix) = match v {
        VerificationConfig::None => ("none", None, None),
        VerificationConfig::HmacSha256 { header, prefix, .. } => ("hmac_sha256", Some(header), prefix),
        VerificationConfig::Hmac { header, prefix, .. } => ("hmac", Some(header), prefix),
        VerificationConfig::Github { .. } => ("github", None, None),
        VerificationConfig::Stripe { .. } => ("stripe", None, None),
        VerificationConfig::Shopify { .. } => ("shopify", None, None),
        VerificationConfig::StandardWebhooks { .. } => ("standard_webhooks", None, None),
        VerificationConfig::Basic { .. } => ("basic", None, None),
        VerificationConfig::Bearer { .. } => ("bearer", None, None),
        VerificationConfig::ApiKey { header, .. } => ("api_key", Some(header), None),
    };
    VerificationView { kind: kind.into(), header, prefix, previous_secret_valid_until: until }
}

fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    hex::encode(key)
}

fn header_name(h: Option<&str>, what: &str) -> Result<String, AdminError> {
    let h = h.filter(|h| !h.is_empty()).ok_or_else(|| AdminError::Invalid(format!("{what} is required")))?;
    actix_web::http::header::HeaderName::try_from(h)
        .map(|n| n.as_str().to_owned())
        .map_err(|_| AdminError::Invalid(format!("{what}: {h:?} is not a header name")))
}

/// Checks an input; returns (idempotency, verification) as stored. `existing_secret` keeps the stored secret.
fn validate(
    state: &AdminState,
    input: &SourceInput,
    existing_secret: Option<SecretString>,
) -> Result<(IdempotencyConfig, VerificationConfig, Option<String>), AdminError> {
    validate_slug(&input.slug).map_err(|e| AdminError::Invalid(e.into()))?;
    let max = input.max_body_bytes.unwrap_or(1024 * 1024) as usize;
    if max == 0 || max > state.max_body_bytes {
        return Err(AdminError::Invalid(format!("max_body_bytes must be between 1 and {}", state.max_body_bytes)));
    }
    let idem = match input.idempotency.from {
        IdempotencyFrom::Header => IdempotencyConfig::Header {
            header: header_name(input.idempotency.header.as_deref(), "idempotency.header")?,
        },
        IdempotencyFrom::BodyHash => IdempotencyConfig::BodyHash,
        IdempotencyFrom::JsonPointer => {
            let pointer = input.idempotency.pointer.clone().filter(|p| p.is_empty() || p.starts_with('/'));
            IdempotencyConfig::JsonPointer {
                pointer: pointer.ok_or_else(|| {
                    AdminError::Invalid("idempotency.pointer must be a JSON pointer such as /id".into())
                })?,
            }
        }
        IdempotencyFrom::Cloudevents => IdempotencyConfig::Cloudevents,
    };
    let v = &input.verification;
    let (verification, shown) = match v.kind {
        VerificationKind::None => (VerificationConfig::None, None),
        VerificationKind::HmacSha256 => {
            let header = header_name(v.header.as_deref(), "verification.header")?;
            let (secret, shown) = match (existing_secret, &v.secret) {
                (Some(s), _) => (s, None),
                (None, Some(s)) if !s.expose_secret().is_empty() => (s.clone(), Some(s.expose_secret().to_owned())),
                (None, _) => {
                    let s = new_secret();
                    (SecretString::from(s.clone()), Some(s))
                }
            };
            let prefix = v.prefix.clone().filter(|p| !p.is_empty());
            (VerificationConfig::HmacSha256 { header, prefix, secret: Secrets(vec![secret]) }, shown)
        }
    };
    Ok((idem, verification, shown))
}

async fn fetch(client: &deadpool_postgres::Object, id: Uuid) -> Result<SourceView, AdminError> {
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM sources WHERE id = $1"), &[&id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no source has id {id}")))?;
    view(&row)
}

/// Lists sources.
#[utoipa::path(get, path = "/admin/v1/sources", tag = "sources", security(("bearer" = [])),
    responses((status = 200, body = Vec<SourceView>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    let rows = client.query(&format!("SELECT {COLUMNS} FROM sources ORDER BY slug"), &[]).await?;
    let items = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(items))
}

/// Creates a source; an HMAC secret is shown in this answer only.
#[utoipa::path(post, path = "/admin/v1/sources", tag = "sources", security(("bearer" = [])), request_body = SourceInput,
    responses((status = 201, body = SourceWithSecret), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(state: web::Data<AdminState>, input: web::Json<SourceInput>) -> Result<HttpResponse, AdminError> {
    let (idem, verification, shown) = validate(&state, &input, None)?;
    let id = Uuid::now_v7();
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, enabled, declared)
         VALUES ($1, $2, $3, $4, $5, $6, $7, false)",
        &[
            &id,
            &input.slug,
            &(input.max_body_bytes.unwrap_or(1024 * 1024) as i32),
            &input.require_json,
            &to_json(&idem)?,
            &to_json(&verification)?,
            &input.enabled,
        ],
    )
    .await?;
    notify_catalog(&tx, "admin:source").await?;
    tx.commit().await?;
    let source = fetch(&client, id).await?;
    Ok(HttpResponse::Created().json(SourceWithSecret { source, secret: shown }))
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(v).map_err(|e| AdminError::Unexpected(e.into()))
}

/// Reads one source.
#[utoipa::path(get, path = "/admin/v1/sources/{id}", tag = "sources", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = SourceView), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = state.pool.get().await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

/// Replaces a source's settings (its secret stays; rotate it with `rotate-secret`).
#[utoipa::path(put, path = "/admin/v1/sources/{id}", tag = "sources", security(("bearer" = [])), params(IdPath),
    request_body = SourceInput,
    responses((status = 200, body = SourceWithSecret), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn update(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: web::Json<SourceInput>,
) -> Result<HttpResponse, AdminError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt("SELECT declared, verification FROM sources WHERE id = $1 FOR UPDATE", &[&path.id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no source has id {}", path.id)))?;
    if row.get::<_, bool>(0) {
        return Err(declared("source"));
    }
    let stored: VerificationConfig =
        serde_json::from_value(row.get(1)).map_err(|e| anyhow::anyhow!("stored verification: {e}"))?;
    // An update keeps the stored secret of an hmac_sha256 source (secrets change only by rotation).
    let existing = match stored {
        VerificationConfig::HmacSha256 { secret, .. } => secret.0.into_iter().next(),
        _ => None,
    };
    let (idem, verification, shown) = validate(&state, &input, existing)?;
    tx.execute(
        "UPDATE sources SET slug = $2, max_body_bytes = $3, require_json = $4, idempotency = $5, verification = $6,
                enabled = $7, updated_at = now()
         WHERE id = $1",
        &[
            &path.id,
            &input.slug,
            &(input.max_body_bytes.unwrap_or(1024 * 1024) as i32),
            &input.require_json,
            &to_json(&idem)?,
            &to_json(&verification)?,
            &input.enabled,
        ],
    )
    .await?;
    notify_catalog(&tx, "admin:source").await?;
    tx.commit().await?;
    let source = fetch(&client, path.id).await?;
    Ok(HttpResponse::Ok().json(SourceWithSecret { source, secret: shown }))
}

pub(super) fn declared(what: &str) -> AdminError {
    AdminError::Declared(format!(
        "this {what} is declared in the configuration file, which is re-applied at every start; change it there"
    ))
}

/// Deletes a source that has no events and no routes (otherwise 409: disable it instead).
#[utoipa::path(delete, path = "/admin/v1/sources/{id}", tag = "sources", security(("bearer" = [])), params(IdPath),
    responses((status = 204), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn delete(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt("SELECT declared FROM sources WHERE id = $1 FOR UPDATE", &[&path.id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no source has id {}", path.id)))?;
    if row.get::<_, bool>(0) {
        return Err(declared("source"));
    }
    let used: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM events WHERE source_id = $1)
                 OR EXISTS (SELECT 1 FROM routes WHERE source_id = $1)
                 OR EXISTS (SELECT 1 FROM replay_jobs WHERE source_id = $1)",
            &[&path.id],
        )
        .await?
        .get(0);
    if used {
        return Err(AdminError::InUse("this source has events or routes; disable it instead".into()));
    }
    tx.execute("DELETE FROM event_keys WHERE source_id = $1", &[&path.id]).await?;
    tx.execute("DELETE FROM sources WHERE id = $1", &[&path.id]).await?;
    notify_catalog(&tx, "admin:source").await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rotates an HMAC source's secret: the new one is active at once, the previous one stays valid for the grace period.
#[utoipa::path(post, path = "/admin/v1/sources/{id}/rotate-secret", tag = "sources", security(("bearer" = [])),
    params(IdPath), request_body(content = Option<RotateInput>),
    responses((status = 200, body = RotatedSecret), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn rotate_secret(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: Option<web::Json<RotateInput>>,
) -> Result<HttpResponse, AdminError> {
    let grace = grace(&state, input.as_ref().and_then(|i| i.grace_secs));
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt("SELECT declared, verification FROM sources WHERE id = $1 FOR UPDATE", &[&path.id])
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no source has id {}", path.id)))?;
    if row.get::<_, bool>(0) {
        return Err(declared("source"));
    }
    let stored: VerificationConfig =
        serde_json::from_value(row.get(1)).map_err(|e| anyhow::anyhow!("stored verification: {e}"))?;
    let VerificationConfig::HmacSha256 { header, prefix, secret: old } = stored else {
        return Err(AdminError::WrongState("only hmac_sha256 sources rotate through the API".into()));
    };
    let old = old.0.into_iter().next().ok_or_else(|| anyhow::anyhow!("stored source has no secret"))?;
    let new = new_secret();
    let verification =
        VerificationConfig::HmacSha256 { header, prefix, secret: Secrets(vec![SecretString::from(new.clone())]) };
    let until = Utc::now() + grace;
    tx.execute(
        "UPDATE sources SET verification = $2, previous_secret = $3, previous_secret_until = $4, updated_at = now()
         WHERE id = $1",
        &[&path.id, &to_json(&verification)?, &old.expose_secret(), &until],
    )
    .await?;
    notify_catalog(&tx, "admin:source").await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(RotatedSecret { secret: new, previous_valid_until: until }))
}

pub(super) fn grace(state: &AdminState, secs: Option<u32>) -> chrono::Duration {
    let d = secs.map(|s| std::time::Duration::from_secs(u64::from(s))).unwrap_or(state.rotation_grace);
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
}
