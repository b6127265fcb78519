//! Destinations: CRUD, signing-secret rotation, pause/resume and health.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use hookgate_actors::tls::{check as check_tls, describe_certificate, OutboundTls};
use hookgate_core::catalog::{DestinationSpec, DestinationTls};
use hookgate_core::retry::RetryPolicy;
use hookgate_core::signing::{SigningKey, SigningSecret};
use hookgate_core::source::validate_slug;
use hookgate_core::state::DestinationState;
use hookgate_store::catalog::DestinationTlsColumns;
use hookgate_store::destinations as store;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ProblemBody;
use super::sources::{declared, grace, IdPath, RotateInput, RotatedSecret};
use super::{notify_catalog, AdminError, AdminState};

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationView {
    pub id: Uuid,
    pub slug: String,
    pub url: String,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    pub retry: RetryInput,
    pub fifo: bool,
    /// `active`, `paused` or `disabled`.
    pub state: String,
    pub disabled_reason: Option<String>,
    /// How many HMAC secrets sign each delivery now (`v1`; the secrets themselves are never shown again).
    pub signing_secrets: usize,
    /// The public keys (`whpk_…`) of the ed25519 keys that sign each delivery (`v1a`): what receivers verify with.
    pub public_keys: Vec<String>,
    /// Rotated-out secrets still signing, and until when.
    pub retiring_secrets_until: Vec<DateTime<Utc>>,
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Headers sent on every attempt.
    pub headers: BTreeMap<String, String>,
    /// The destination's own TLS settings (null when it has none). The client key is never shown.
    pub tls: Option<TlsView>,
}

/// A destination's own TLS settings as the API shows them: the certificates (public), whether a client key is
/// set, never the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsView {
    /// Extra trusted CA certificates (PEM), beside `delivery.tls_roots`.
    pub ca_pem: Option<String>,
    /// The client certificate chain (PEM) presented for mutual TLS.
    pub cert_pem: Option<String>,
    /// Whether the client certificate's private key is set.
    pub has_client_key: bool,
    /// The client certificate's subject.
    pub client_cert_subject: Option<String>,
    /// When the client certificate expires.
    pub client_cert_not_after: Option<DateTime<Utc>>,
}

/// A destination's own TLS settings, PEM text. On update, an omitted `tls` keeps what is set and `{}` removes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsInput {
    /// Extra trusted CA certificates (a PEM bundle).
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Client certificate chain (PEM, leaf first) for mutual TLS; needs `key_pem`.
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Never shown again.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub key_pem: Option<SecretString>,
}

/// The names of the TLS fields in the admin API, for its error messages.
const TLS_PEM_FIELDS: (&str, &str, &str) = ("ca_pem", "cert_pem", "key_pem");

/// Retry schedule; omitted fields take the defaults.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// Delay before attempt n+1 after attempt n failed; the last entry repeats.
    #[serde(default)]
    pub delays_ms: Option<Vec<u64>>,
    /// Attempts in all (the first included); then the delivery is `dead`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Random factor in `[1 - jitter, 1 + jitter]` applied to each delay (0 to 1).
    #[serde(default)]
    pub jitter: Option<f64>,
}

impl RetryInput {
    fn policy(&self) -> RetryPolicy {
        let d = RetryPolicy::default();
        RetryPolicy {
            delays_ms: self.delays_ms.clone().unwrap_or(d.delays_ms),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            jitter: self.jitter.unwrap_or(d.jitter),
        }
    }

    fn from_policy(p: RetryPolicy) -> Self {
        Self { delays_ms: Some(p.delays_ms), max_attempts: Some(p.max_attempts), jitter: Some(p.jitter) }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationInput {
    pub slug: String,
    /// `http://` or `https://`; must pass the SSRF policy (no private, loopback or metadata addresses).
    pub url: String,
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Requests per second, cluster-wide.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub retry: Option<RetryInput>,
    #[serde(default)]
    pub fifo: bool,
    /// Headers sent on every attempt. `webhook-*`, `traceparent`, `content-type`, `content-length`, `host` and
    /// hop-by-hop headers cannot be set.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The destination's own TLS settings: extra CA certificates, a client certificate and key for mutual TLS.
    /// On update, omitted keeps what is set; `{}` removes it.
    #[serde(default)]
    pub tls: Option<TlsInput>,
    /// ed25519 signing keys (`whsk_…`, e.g. from `hookgate generate-signing-key`): each delivery carries one `v1a`
    /// signature per key. Never shown again (answers show `public_keys`). On update, omitted keeps them and `[]`
    /// removes them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub signing_keys: Option<Vec<SecretString>>,
    /// On create only: whether hookgate makes an HMAC secret (`whsec_…`, `v1` signatures). Default `true`;
    /// `false` signs with `signing_keys` alone.
    #[serde(default)]
    pub hmac: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationWithSecret {
    pub destination: DestinationView,
    /// The Standard Webhooks signing secret (`whsec_…`), shown now and never again; null with `"hmac": false`.
    pub secret: Option<String>,
}

fn view(row: store::DestinationRecord) -> Result<DestinationView, AdminError> {
    let retry: RetryPolicy = serde_json::from_value(row.retry).map_err(|e| anyhow::anyhow!("stored retry: {e}"))?;
    let secrets: Vec<String> = serde_json::from_value(row.signing_secrets).unwrap_or_default();
    let retiring: Vec<Retiring> = serde_json::from_value(row.retiring_secrets).unwrap_or_default();
    let headers: BTreeMap<String, String> = serde_json::from_value(row.headers).unwrap_or_default();
    let keys: Vec<String> = serde_json::from_value(row.signing_keys).unwrap_or_default();
    let public_keys = keys.iter().filter_map(|k| SigningKey::parse(k).ok()).map(|k| k.public_key()).collect();
    let tls = (row.tls_ca_pem.is_some() || row.tls_cert_pem.is_some() || row.has_tls_key).then(|| {
        let cert = row.tls_cert_pem.as_deref().and_then(describe_certificate);
        TlsView {
            client_cert_subject: cert.as_ref().map(|c| c.subject.clone()),
            client_cert_not_after: cert.map(|c| c.not_after),
            ca_pem: row.tls_ca_pem,
            cert_pem: row.tls_cert_pem,
            has_client_key: row.has_tls_key,
        }
    });
    Ok(DestinationView {
        id: row.id,
        slug: row.slug,
        url: row.url,
        timeout_ms: row.timeout_ms,
        max_in_flight: row.max_in_flight,
        rate_limit: row.rate_limit,
        retry: RetryInput::from_policy(retry),
        fifo: row.fifo,
        state: row.state,
        disabled_reason: row.disabled_reason,
        signing_secrets: secrets.len(),
        public_keys,
        retiring_secrets_until: retiring.iter().map(|r| r.until).filter(|u| *u > Utc::now()).collect(),
        declared: row.declared,
        created_at: row.created_at,
        updated_at: row.updated_at,
        headers,
        tls,
    })
}

/// A rotated-out secret in `destinations.retiring_secrets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Retiring {
    pub secret: String,
    pub until: DateTime<Utc>,
}

fn spec(state: &AdminState, input: &DestinationInput) -> Result<DestinationSpec, AdminError> {
    validate_slug(&input.slug).map_err(|e| AdminError::Invalid(e.into()))?;
    let spec = DestinationSpec {
        slug: input.slug.clone(),
        url: input.url.clone(),
        timeout_ms: u64::from(input.timeout_ms.unwrap_or(10_000)),
        max_in_flight: input.max_in_flight.unwrap_or(16),
        rate_limit: input.rate_limit,
        retry: input.retry.as_ref().map(RetryInput::policy).unwrap_or_default(),
        signing_secrets: vec![],
        signing_keys: vec![],
        fifo: input.fifo,
        state: DestinationState::Active,
        tls: None,
        headers: input.headers.clone(),
    };
    spec.validate(&state.ssrf).map_err(AdminError::Invalid)?;
    if spec.timeout_ms > 600_000 || spec.max_in_flight > 100_000 {
        return Err(AdminError::Invalid("timeout_ms must be at most 600000 and max_in_flight at most 100000".into()));
    }
    if spec.retry.max_attempts > 1000
        || spec.retry.delays_ms.len() > 100
        || spec.retry.delays_ms.iter().any(|d| *d > 86_400_000 * 30)
    {
        return Err(AdminError::Invalid("retry: at most 1000 attempts, 100 delays of at most 30 days".into()));
    }
    Ok(spec)
}

/// The signing keys the input sets, checked (422 naming the one at fault) and as stored; `None` when the input
/// leaves them alone.
fn signing_keys(input: &DestinationInput) -> Result<Option<serde_json::Value>, AdminError> {
    let Some(keys) = &input.signing_keys else { return Ok(None) };
    for (i, k) in keys.iter().enumerate() {
        SigningKey::parse(k.expose_secret()).map_err(|e| AdminError::Invalid(format!("signing_keys[{i}]: {e}")))?;
    }
    let texts: Vec<&str> = keys.iter().map(|k| k.expose_secret()).collect();
    Ok(Some(to_json(&texts)?))
}

/// Refuses a destination that would sign nothing: one made through the API always signs its deliveries.
fn must_sign(hmac_secrets: usize, keys: Option<&serde_json::Value>) -> Result<(), AdminError> {
    let keys = keys.and_then(|k| k.as_array()).map_or(0, Vec::len);
    if hmac_secrets == 0 && keys == 0 {
        return Err(AdminError::Invalid(
            "signing_keys: a destination must sign its deliveries: keep its HMAC secret or give a signing key".into(),
        ));
    }
    Ok(())
}

/// The TLS material the input sets, checked (422 naming the field); `None` when the input leaves it alone.
fn tls_columns(input: &DestinationInput) -> Result<Option<DestinationTlsColumns>, AdminError> {
    let Some(t) = &input.tls else { return Ok(None) };
    let tls = DestinationTls { ca_pem: t.ca_pem.clone(), cert_pem: t.cert_pem.clone(), key_pem: t.key_pem.clone() };
    if !tls.is_empty() {
        let checker = OutboundTls::for_checks().map_err(AdminError::Unexpected)?;
        check_tls(&checker, &tls, TLS_PEM_FIELDS, std::time::SystemTime::now())
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    Ok(Some(DestinationTlsColumns { ca_pem: tls.ca_pem, cert_pem: tls.cert_pem, key_pem: tls.key_pem }))
}

pub(super) async fn fetch(client: &deadpool_postgres::Object, id: Uuid) -> Result<DestinationView, AdminError> {
    let row =
        store::fetch(client, id).await?.ok_or_else(|| AdminError::NotFound(format!("no destination has id {id}")))?;
    view(row)
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(v).map_err(|e| AdminError::Unexpected(e.into()))
}

/// The destination's settings as stored (`retry`, `headers`: as JSON, which the fields borrow).
fn fields<'a>(
    spec: &'a DestinationSpec,
    retry: &'a serde_json::Value,
    headers: &'a serde_json::Value,
    tls: Option<&'a DestinationTlsColumns>,
    signing_keys: Option<&'a serde_json::Value>,
) -> store::DestinationFields<'a> {
    store::DestinationFields {
        slug: &spec.slug,
        url: &spec.url,
        timeout_ms: spec.timeout_ms as i32,
        max_in_flight: spec.max_in_flight as i32,
        rate_limit: spec.rate_limit,
        retry,
        fifo: spec.fifo,
        headers,
        tls,
        signing_keys,
    }
}

/// Lists destinations.
#[utoipa::path(get, path = "/admin/v1/destinations", tag = "destinations", security(("bearer" = [])),
    responses((status = 200, body = Vec<DestinationView>), (status = 401, body = ProblemBody)))]
pub async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let rows = store::list(&client).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(view).collect::<Result<Vec<_>, _>>()?))
}

/// Creates a destination with a new signing secret, shown in this answer only.
#[utoipa::path(post, path = "/admin/v1/destinations", tag = "destinations", security(("bearer" = [])),
    request_body = DestinationInput,
    responses((status = 201, body = DestinationWithSecret), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn create(
    state: web::Data<AdminState>,
    input: web::Json<DestinationInput>,
) -> Result<HttpResponse, AdminError> {
    let spec = spec(&state, &input)?;
    let tls = tls_columns(&input)?;
    let keys = signing_keys(&input)?;
    let secret = input.hmac.unwrap_or(true).then(SigningSecret::generate);
    must_sign(usize::from(secret.is_some()), keys.as_ref())?;
    let id = Uuid::now_v7();
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let (retry, headers) = (to_json(&spec.retry)?, to_json(&spec.headers)?);
    let secrets = to_json(&secret.iter().collect::<Vec<_>>())?;
    store::create(&tx, id, &fields(&spec, &retry, &headers, tls.as_ref(), keys.as_ref()), &secrets).await?;
    notify_catalog(&tx, "admin:destination").await?;
    hookgate_store::commit(tx).await?;
    let destination = fetch(&client, id).await?;
    Ok(HttpResponse::Created().json(DestinationWithSecret { destination, secret }))
}

/// Reads one destination.
#[utoipa::path(get, path = "/admin/v1/destinations/{id}", tag = "destinations", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DestinationView), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn get(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

async fn lock_editable(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
) -> Result<store::LockedDestination, AdminError> {
    let row = store::lock(tx, id).await?.ok_or_else(|| AdminError::NotFound(format!("no destination has id {id}")))?;
    if row.declared {
        return Err(declared("destination"));
    }
    Ok(row)
}

/// Replaces a destination's settings (secrets and state stay; TLS settings too when `tls` is omitted).
#[utoipa::path(put, path = "/admin/v1/destinations/{id}", tag = "destinations", security(("bearer" = [])),
    params(IdPath), request_body = DestinationInput,
    responses((status = 200, body = DestinationView), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 422, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn update(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: web::Json<DestinationInput>,
) -> Result<HttpResponse, AdminError> {
    let spec = spec(&state, &input)?;
    let tls = tls_columns(&input)?;
    let keys = signing_keys(&input)?;
    if input.hmac.is_some() {
        return Err(AdminError::Invalid("hmac: set when a destination is created; rotate-secret replaces it".into()));
    }
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let row = lock_editable(&tx, path.id).await?;
    if keys.is_some() {
        let hmac: Vec<String> = serde_json::from_value(row.signing_secrets).unwrap_or_default();
        must_sign(hmac.len(), keys.as_ref())?;
    }
    let (retry, headers) = (to_json(&spec.retry)?, to_json(&spec.headers)?);
    store::update(&tx, path.id, &fields(&spec, &retry, &headers, tls.as_ref(), keys.as_ref())).await?;
    notify_catalog(&tx, "admin:destination").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, path.id).await?))
}

/// Deletes a destination that no route and no delivery refers to (otherwise 409: pause it instead).
#[utoipa::path(delete, path = "/admin/v1/destinations/{id}", tag = "destinations", security(("bearer" = [])),
    params(IdPath),
    responses((status = 204), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn delete(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    super::lock_before_delete(&tx, "deliveries").await?;
    lock_editable(&tx, path.id).await?;
    if !store::delete_unused(&tx, path.id).await? {
        return Err(AdminError::InUse("routes or deliveries refer to this destination; pause it instead".into()));
    }
    notify_catalog(&tx, "admin:destination").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rotates the signing secret: the new secret signs at once; the previous ones keep signing (a second signature in
/// `webhook-signature`) until the grace period ends, then the admin task removes them.
#[utoipa::path(post, path = "/admin/v1/destinations/{id}/rotate-secret", tag = "destinations",
    security(("bearer" = [])), params(IdPath), request_body(content = Option<RotateInput>),
    responses((status = 200, body = RotatedSecret), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn rotate_secret(
    state: web::Data<AdminState>,
    path: web::Path<IdPath>,
    input: Option<web::Json<RotateInput>>,
) -> Result<HttpResponse, AdminError> {
    let until = Utc::now() + grace(&state, input.as_ref().and_then(|i| i.grace_secs));
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    let row = lock_editable(&tx, path.id).await?;
    let old: Vec<String> = serde_json::from_value(row.signing_secrets).unwrap_or_default();
    let mut retiring: Vec<Retiring> = serde_json::from_value(row.retiring_secrets).unwrap_or_default();
    retiring.retain(|r| r.until > Utc::now());
    retiring.extend(old.into_iter().map(|secret| Retiring { secret, until }));
    let new = SigningSecret::generate();
    store::set_secrets(&tx, path.id, &to_json(&vec![new.clone()])?, &to_json(&retiring)?).await?;
    notify_catalog(&tx, "admin:destination").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(RotatedSecret { secret: new, previous_valid_until: until }))
}

async fn set_state(state: &AdminState, id: Uuid, to: DestinationState) -> Result<HttpResponse, AdminError> {
    let mut client = hookgate_store::connect(&state.pool).await?;
    let tx = hookgate_store::begin(&mut client).await?;
    if !store::set_state(&tx, id, to).await? {
        return Err(AdminError::NotFound(format!("no destination has id {id}")));
    }
    notify_catalog(&tx, "admin:destination-state").await?;
    hookgate_store::commit(tx).await?;
    Ok(HttpResponse::Ok().json(fetch(&client, id).await?))
}

/// Pauses a destination: its deliveries wait (on every node) until it is resumed.
#[utoipa::path(post, path = "/admin/v1/destinations/{id}/pause", tag = "destinations", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DestinationView), (status = 404, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn pause(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    set_state(&state, path.id, DestinationState::Paused).await
}

/// Resumes a paused or disabled destination.
#[utoipa::path(post, path = "/admin/v1/destinations/{id}/resume", tag = "destinations", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DestinationView), (status = 404, body = ProblemBody),
              (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn resume(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    set_state(&state, path.id, DestinationState::Active).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthWindow {
    /// The window's length in seconds, ending now.
    pub window_secs: i64,
    pub attempts: i64,
    /// Share of attempts answered 2xx (null without attempts).
    pub success_ratio: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationHealth {
    pub id: Uuid,
    pub state: String,
    /// `closed`, `open`, `half_open` (one probe may go) or `ramping` (after a successful probe: a limited,
    /// growing concurrency until `delivery.circuit.ramp_max`).
    pub circuit: String,
    /// `cluster` (read from Redis) or `local` (Redis unreachable: this node's own view).
    pub circuit_scope: String,
    /// While `ramping`: how many deliveries may be in flight at once right now (null otherwise).
    pub circuit_ramp_allowance: Option<u32>,
    /// Deliveries admitted while `half_open` or `ramping` whose outcome is not recorded yet.
    pub circuit_grants: u32,
    /// Opens since the circuit was last fully closed; each re-open doubles the open period.
    pub circuit_opens: u32,
    /// The current (or last) open period in milliseconds; 0 when fully closed.
    pub circuit_open_period_ms: u64,
    /// Pending deliveries.
    pub backlog: i64,
    /// Pending deliveries already due.
    pub due: i64,
    /// When the oldest pending delivery was created (null without pending deliveries).
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub dead: i64,
    pub windows: Vec<HealthWindow>,
}

/// Health: success ratio and latency over the last 5 minutes, hour and day; circuit state; backlog.
#[utoipa::path(get, path = "/admin/v1/destinations/{id}/health", tag = "destinations", security(("bearer" = [])),
    params(IdPath),
    responses((status = 200, body = DestinationHealth), (status = 404, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn health(state: web::Data<AdminState>, path: web::Path<IdPath>) -> Result<HttpResponse, AdminError> {
    let client = hookgate_store::connect(&state.pool).await?;
    let dest = fetch(&client, path.id).await?;
    let backlog = store::backlog(&client, path.id).await?;
    let mut windows = Vec::new();
    for secs in [300i64, 3600, 86_400] {
        let w = store::attempt_window(&client, path.id, secs as f64).await?;
        windows.push(HealthWindow {
            window_secs: secs,
            attempts: w.attempts,
            success_ratio: w.success_ratio,
            latency_p50_ms: w.latency_p50_ms,
            latency_p99_ms: w.latency_p99_ms,
        });
    }
    let (breaker, scope) = state.limits.health(state.redis.get(), path.id).await;
    let circuit =
        serde_json::to_value(breaker.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    Ok(HttpResponse::Ok().json(DestinationHealth {
        id: dest.id,
        state: dest.state,
        circuit,
        circuit_scope: format!("{scope:?}").to_lowercase(),
        circuit_ramp_allowance: breaker.ramp_allowance,
        circuit_grants: breaker.grants,
        circuit_opens: breaker.opens,
        circuit_open_period_ms: breaker.open_period_ms,
        backlog: backlog.pending,
        due: backlog.due,
        oldest_pending_at: backlog.oldest_pending_at,
        dead: backlog.dead,
        windows,
    }))
}
