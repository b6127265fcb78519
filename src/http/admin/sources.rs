//! Sources: CRUD and secret rotation, through the same source model and validation as the configuration file
//! ([`hookgate_core::source::SourceConfig`]): every verification kind and option the TOML accepts, the API accepts.
//! Secrets are shown once (creation, rotation) and never returned by GET.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use hookgate_core::source::{EventTypeConfig, IdempotencyConfig, SourceConfig};
use hookgate_store::sources::{self as store, SourceRecord, SourceSettings};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::{notify_catalog, AdminError, AdminState};

/// A source as the API shows it: every setting, never a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub id: Uuid,
    pub slug: String,
    pub max_body_bytes: i32,
    pub require_json: bool,
    /// Where the idempotency key comes from (defaults applied).
    pub idempotency: IdempotencyConfig,
    /// Where the event type comes from (defaults applied); none when absent.
    pub event_type: Option<EventTypeConfig>,
    pub dedupe_window_secs: Option<u64>,
    pub cloudevents: bool,
    pub allowed_origins: Vec<String>,
    pub allowed_rate: Option<u32>,
    /// The verification's `kind` and its other settings, without secrets (public keys are shown); while a secret
    /// rotates, `previous_secret_valid_until` says until when the previous one is still accepted.
    #[schema(value_type = Object)]
    pub verification: serde_json::Value,
    pub enabled: bool,
    /// Declared in the configuration file: the configuration wins at every start, so the API refuses to edit it.
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The answer to a creation (or an update that changed the verification kind): the only time a secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceWithSecret {
    pub source: SourceView,
    /// The shared secret (HMAC secret, password, token or key), shown now and never again; absent when nothing was
    /// created or chosen (unverified sources, public-key verification, an update that kept the secret).
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

fn view(record: &SourceRecord) -> Result<SourceView, AdminError> {
    let model = record.model().map_err(|e| anyhow::anyhow!("stored source {}: {e}", record.slug))?;
    let mut verification = model.verification.redacted();
    let until = record.previous_secret_until.filter(|u| *u > Utc::now());
    if let Some(map) = verification.as_object_mut() {
        map.insert("previous_secret_valid_until".into(), serde_json::json!(until));
    }
    Ok(SourceView {
        id: record.id,
        slug: model.slug,
        max_body_bytes: record.max_body_bytes,
        require_json: model.require_json,
        idempotency: model.idempotency.unwrap_or_default(),
        event_type: model.event_type,
        dedupe_window_secs: model.dedupe_window_secs,
        cloudevents: model.cloudevents,
        allowed_origins: model.allowed_origins,
        allowed_rate: model.allowed_rate,
        verification,
        enabled: record.enabled,
        declared: record.declared,
        created_at: record.created_at,
        updated_at: record.updated_at,
    })
}

/// Validates an input exactly as the configuration file is validated, after giving a kind that needs a shared secret
/// and names none a generated one (answered, to be shown once).
fn validate(state: &AdminState, input: &mut SourceConfig) -> Result<Option<String>, AdminError> {
    let shown = input.verification.fill_missing_secret();
    input.validate(&state.source_bounds).map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(shown)
}

fn settings(input: &SourceConfig) -> Result<SourceSettings<'_>, AdminError> {
    SourceSettings::of(input).map_err(|e| AdminError::Invalid(e.to_string()))
}

async fn fetch(client: &deadpool_postgres::Object, id: Uuid) -> Result<SourceView, AdminError> {
    view(&store::fetch(client, id).await?.ok_or_else(|| not_found(id))?)
}

fn not_found(id: Uuid) -> AdminError {
    AdminError::NotFound(format!("no source has id {id}"))
}

/// Lists sources.
#[utoipa::path(get, path = "/admin/v1/sources", tag = "sources", security(("bearer" = [])),
    responses((status = 200, body = Vec<SourceView>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let items = store::list(&client).await?.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(items))
}

/// Creates a source. It takes what a `[[sources]]` table of the configuration file takes, as JSON; a kind that
/// verifies with a shared secret and is given none gets a generated one, shown in this answer only.
#[utoipa::path(post, path = "/admin/v1/sources", tag = "sources", security(("bearer" = [])), request_body = SourceConfig,
    responses((status = 201, body = SourceWithSecret), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(state: web::Data<AdminState>, input: web::Json<SourceConfig>) -> Result<HttpResponse, AdminError> {
    let mut input = input.into_inner();
    let generated = validate(&state, &mut input)?;
    // A secret chosen by the producer is echoed once too, so the answer always says which secret is active.
    let shown = generated.or_else(|| input.verification.secrets().first().map(|s| s.expose_secret().to_owned()));
    let id = Uuid::now_v7();
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    store::insert(&tx, id, &settings(&input)?).await?;
    notify_catalog(&tx, "admin:source").await?;
    hookgate_store::commit(tx).await?;
    let source = fetch(&client, id).await?;
    Ok(HttpResponse::Created().json(SourceWithSecret { source, secret: shown }))
}

/// Reads one source.
#[utoipa::path(get, path = "/admin/v1/sources/{id}", tag = "sources", security(("bearer" = [])), params(IdPath),
    responses((status = 200, body = SourceView), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

/// Replaces a source's settings. The secrets stay while the verification kind does (rotate them with
/// `rotate-secret`); a new kind takes the secret given, or a generated one shown in this answer.
#[utoipa::path(put, path = "/admin/v1/sources/{id}", tag = "sources", security(("bearer" = [])), params(IdPath),
    request_body = SourceConfig,
    responses((status = 200, body = SourceWithSecret), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn update(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: web::Json<SourceConfig>,
) -> Result<HttpResponse, AdminError> {
    let mut input = input.into_inner();
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let stored = store::fetch_for_update(&tx, path.id).await?.ok_or_else(|| not_found(path.id))?;
    if stored.declared {
        return Err(refused("source", stored.id));
    }
    let stored = stored.model().map_err(|e| anyhow::anyhow!("stored source {}: {e}", stored.slug))?;
    input.verification.keep_secrets_of(&stored.verification);
    let shown = validate(&state, &mut input)?;
    let same_secrets = input.verification.kind() == stored.verification.kind()
        && input.verification.secrets().iter().map(|s| s.expose_secret()).eq(stored
            .verification
            .secrets()
            .iter()
            .map(|s| s.expose_secret()));
    store::update(&tx, path.id, &settings(&input)?, !same_secrets).await?;
    notify_catalog(&tx, "admin:source").await?;
    hookgate_store::commit(tx).await?;
    let source = fetch(&client, path.id).await?;
    Ok(HttpResponse::Ok().json(SourceWithSecret { source, secret: shown }))
}

/// The refusal to edit a declared object: hookgate's own source and route (operational notifications) are declared
/// too, with a message of their own.
pub(super) fn refused(what: &str, id: Uuid) -> AdminError {
    use hookgate_core::notification::{SYSTEM_ROUTE_ID, SYSTEM_SOURCE_ID};
    if id == SYSTEM_SOURCE_ID || id == SYSTEM_ROUTE_ID {
        return AdminError::Declared(format!(
            "this {what} is hookgate's own: it carries the operational notifications ([notifications] in the \
             configuration file) and cannot be changed"
        ));
    }
    declared(what)
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
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    super::lock_before_delete(&tx, "events").await?;
    let stored = store::fetch_for_update(&tx, path.id).await?.ok_or_else(|| not_found(path.id))?;
    if stored.declared {
        return Err(refused("source", stored.id));
    }
    if store::in_use(&tx, path.id).await? {
        return Err(AdminError::InUse("this source has events or routes; disable it instead".into()));
    }
    store::delete(&tx, path.id).await?;
    notify_catalog(&tx, "admin:source").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rotates a source's shared secret (HMAC secret, password, token or key): the new one is active at once, the
/// previous one stays valid for the grace period.
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
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let stored = store::fetch_for_update(&tx, path.id).await?.ok_or_else(|| not_found(path.id))?;
    if stored.declared {
        return Err(refused("source", stored.id));
    }
    let mut model = stored.model().map_err(|e| anyhow::anyhow!("stored source {}: {e}", stored.slug))?;
    let kind = model.verification.kind();
    let (new, previous) =
        model.verification.rotate().map_err(|why| AdminError::WrongState(format!("a {kind} source: {why}")))?;
    let verification = serde_json::to_value(&model.verification).map_err(|e| AdminError::Unexpected(e.into()))?;
    let until = Utc::now() + grace;
    store::rotate(&tx, path.id, &verification, previous.expose_secret(), until).await?;
    notify_catalog(&tx, "admin:source").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(RotatedSecret { secret: new, previous_valid_until: until }))
}

pub(super) fn grace(state: &AdminState, secs: Option<u32>) -> chrono::Duration {
    let d = secs.map(|s| std::time::Duration::from_secs(u64::from(s))).unwrap_or(state.rotation_grace);
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
}
