//! Destinations and routes: their declared form (`DestinationSpec`, `RouteSpec`, checked against the SSRF policy
//! and compiled), and the in-memory [`Catalog`] every node serves from, whose [`Catalog::plan`] decides an event's
//! deliveries. Loading it from PostgreSQL and keeping it current is the actors' (`hookgate_actors::catalog`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::internal_events::{emit, RouteEvaluationDeferred};
use crate::jq::{self, JqProgram, RouteOutcome};
use crate::retry::RetryPolicy;
use crate::signing::{SigningKey, SigningSecret};
use crate::ssrf::SsrfPolicy;
use crate::state::DestinationState;

/// A destination as declared in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub slug: String,
    /// `http://` or `https://` URL; checked against the SSRF policy.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight to this destination at once, cluster-wide.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Requests per second, cluster-wide (token bucket); none by default.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// `whsec_…` secrets; every delivery carries one signature per secret (rotation: add the new one first).
    #[serde(default)]
    pub signing_secrets: Vec<String>,
    /// `whsk_…` ed25519 keys; every delivery carries one `v1a` signature per key, beside the `v1` ones (or instead
    /// of them when `signing_secrets` is empty). Receivers verify with the public key (`whpk_…`).
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// One delivery in flight at a time, in event order; a failing head holds the rest.
    #[serde(default)]
    pub fifo: bool,
    #[serde(default)]
    pub state: DestinationState,
    /// The destination's own TLS settings: PEM files, read when the configuration is loaded.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Headers sent on every attempt (see [`validate_headers`] for those that cannot be set).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A destination's TLS settings in the configuration file: paths of PEM files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Extra trusted CA certificates (a PEM bundle), beside `delivery.tls_roots`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first) presented for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A destination's own TLS material as stored and used: PEM text. The key is a secret: never logged, never shown.
#[derive(Debug, Clone, Default)]
pub struct DestinationTls {
    /// Extra trusted CA certificates (PEM bundle).
    pub ca_pem: Option<String>,
    /// Client certificate chain (PEM, leaf first).
    pub cert_pem: Option<String>,
    /// The client certificate's private key (PEM).
    pub key_pem: Option<SecretString>,
}

impl DestinationTls {
    /// Whether nothing is set (the destination then uses the shared client and trust roots only).
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.cert_pem.is_none() && self.key_pem.is_none()
    }

    /// A digest of the whole material: a client built from it is reused while the digest stays the same.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [self.ca_pem.as_deref(), self.cert_pem.as_deref(), self.key_pem.as_ref().map(|k| k.expose_secret())]
        {
            match part {
                Some(text) => {
                    h.update([1u8]);
                    h.update((text.len() as u64).to_be_bytes());
                    h.update(text.as_bytes());
                }
                None => h.update([0u8]),
            }
        }
        h.finalize().into()
    }

    /// Which fields belong together: a client certificate needs its key and a key its certificate. Names the
    /// field at fault with `names` (`(ca, cert, key)`: the file or PEM field names of the caller's form).
    pub fn check_pairing(&self, names: (&str, &str, &str)) -> Result<(), TlsFieldError> {
        match (&self.cert_pem, &self.key_pem) {
            (Some(_), None) => Err(TlsFieldError::new(names.2, "a client certificate needs its private key")),
            (None, Some(_)) => Err(TlsFieldError::new(names.1, "a private key needs its client certificate")),
            _ => Ok(()),
        }
    }
}

/// A refused TLS setting: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tls.{field}: {reason}")]
pub struct TlsFieldError {
    pub field: String,
    pub reason: String,
}

impl TlsFieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.to_owned(), reason: reason.into() }
    }
}

/// Headers hookgate sets itself (the signature's, tracing, framing) or that belong to one connection: a
/// destination cannot set them.
const RESERVED_HEADERS: &[&str] = &[
    "traceparent",
    "content-type",
    "content-length",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks a destination's extra headers: valid names and values, none that hookgate sets or that is hop-by-hop
/// (`webhook-*`, `traceparent`, `content-type`, `content-length`, `host`, `connection`, `keep-alive`, `proxy-*`,
/// `te`, `trailer`, `transfer-encoding`, `upgrade`), no name given twice. Answers the headers with lower-case names.
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    if headers.len() > 64 {
        return Err("headers: at most 64".into());
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let parsed = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
        let lower = parsed.as_str();
        if lower.starts_with("webhook-") || lower.starts_with("proxy-") || RESERVED_HEADERS.contains(&lower) {
            return Err(format!(
                "headers: {name:?} cannot be set on a destination (hookgate sets it, or it is hop-by-hop)"
            ));
        }
        if value.len() > 8192 {
            return Err(format!("headers: the value of {name:?} is longer than 8192 bytes"));
        }
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of {name:?} is not a valid header value"))?;
        if out.iter().any(|(n, _)| n == lower) {
            return Err(format!("headers: {name:?} is given twice"));
        }
        out.push((lower.to_owned(), value.clone()));
    }
    Ok(out)
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_in_flight() -> u32 {
    16
}

impl DestinationSpec {
    pub fn validate(&self, policy: &SsrfPolicy) -> Result<(), String> {
        policy.check_url(&self.url).map_err(|e| e.to_string())?;
        if self.timeout_ms == 0 || self.max_in_flight == 0 {
            return Err("timeout_ms and max_in_flight must be positive".into());
        }
        if self.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("rate_limit must be a positive number".into());
        }
        self.retry.validate()?;
        for s in &self.signing_secrets {
            SigningSecret::parse(s)?;
        }
        for k in &self.signing_keys {
            SigningKey::parse(k).map_err(|e| format!("signing_keys: {e}"))?;
        }
        validate_headers(&self.headers)?;
        Ok(())
    }
}

/// A route as declared in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub slug: String,
    /// Source slug.
    pub source: String,
    /// Destination slug.
    pub destination: String,
    /// jq program over `{body, headers, source, type}`; the event is delivered when its first output is truthy.
    #[serde(default)]
    pub filter: Option<String>,
    /// jq program over the same input; its first output, as JSON, is the delivered body.
    #[serde(default)]
    pub transform: Option<String>,
}

impl RouteSpec {
    /// Compiles filter and transform (a configuration error names which one failed).
    pub fn compile(&self) -> Result<(Option<JqProgram>, Option<JqProgram>), String> {
        Ok((compile(self.filter.as_deref(), "filter")?, compile(self.transform.as_deref(), "transform")?))
    }
}

fn compile(code: Option<&str>, what: &str) -> Result<Option<JqProgram>, String> {
    code.filter(|c| !c.trim().is_empty())
        .map(|c| JqProgram::compile(c).map_err(|e| format!("the {what} does not compile: {e}")))
        .transpose()
}

/// A destination as the delivery side uses it.
#[derive(Debug)]
pub struct Destination {
    pub id: Uuid,
    pub slug: String,
    pub url: String,
    pub timeout: Duration,
    pub max_in_flight: u32,
    pub rate_limit: Option<f64>,
    pub retry: RetryPolicy,
    pub secrets: Vec<SigningSecret>,
    /// ed25519 keys, one `v1a` signature each.
    pub keys: Vec<SigningKey>,
    pub fifo: bool,
    pub state: DestinationState,
    /// Sent on every attempt (lower-case names, checked by [`validate_headers`]).
    pub headers: Vec<(String, String)>,
    /// The destination's own TLS material, when it has any (then it gets a TLS client of its own).
    pub tls: Option<Arc<DestinationTls>>,
}

/// A route with its programs compiled.
pub struct Route {
    pub id: Uuid,
    pub slug: String,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    pub filter: Option<JqProgram>,
    pub transform: Option<JqProgram>,
}

/// The snapshot: destinations by id, enabled routes by source.
#[derive(Default)]
pub struct Catalog {
    pub destinations: HashMap<Uuid, Arc<Destination>>,
    pub routes_by_source: HashMap<Uuid, Vec<Arc<Route>>>,
}

/// A delivery decided at ingest, inserted with its event.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub id: Uuid,
    pub route_id: Uuid,
    pub destination_id: Uuid,
    /// The destination is FIFO at planning time (the writer serializes flushes that carry such deliveries).
    pub fifo: bool,
    /// The transform's output, when the route has one.
    pub payload: Option<Bytes>,
    /// Why the filter or transform failed (the delivery is stored as `failed`, never attempted).
    pub failed: Option<String>,
    /// The route's programs could not be evaluated now (time bound, runaway budget): the delivery is stored
    /// `pending` with `needs_routing`, and evaluated again when it is claimed (a time-out is never a verdict).
    pub deferred: bool,
    /// Set when the delivery can be attempted as soon as it is committed (its destination is active and not FIFO,
    /// its programs were evaluated): the destination's timeout, from which the ingesting node's lease is sized.
    /// The writer then inserts it already leased and hands it to its own Scheduler, with no claim round.
    pub attempt_now: Option<Duration>,
}

impl Catalog {
    pub fn routes_for(&self, source_id: Uuid) -> &[Arc<Route>] {
        self.routes_by_source.get(&source_id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Decides the deliveries of one event. `input` builds the jq input only when a route needs it.
    ///
    /// A route whose programs could not be evaluated now (time bound, runaway budget) plans a *deferred* delivery:
    /// stored `pending` with `needs_routing`, and evaluated again at delivery. A time-out on a saturated machine
    /// says nothing about the event, so it never fails it, and one slow route never holds up ingest. A program that
    /// fails deterministically plans a `failed` delivery.
    pub async fn plan(
        &self,
        source_id: Uuid,
        input: impl FnOnce() -> serde_json::Value,
        jq_timeout: Duration,
        jq_max_output: usize,
    ) -> Vec<PlannedDelivery> {
        let routes = self.routes_for(source_id);
        let needs_input = routes.iter().any(|r| r.filter.is_some() || r.transform.is_some());
        let input = if needs_input { Some(Arc::new(input())) } else { None };
        let mut planned = Vec::with_capacity(routes.len());
        for route in routes {
            let outcome = match &input {
                Some(input) if route.filter.is_some() || route.transform.is_some() => {
                    jq::evaluate(
                        route.filter.clone(),
                        route.transform.clone(),
                        input.clone(),
                        jq_timeout,
                        jq_max_output,
                    )
                    .await
                }
                _ => RouteOutcome::Deliver(None),
            };
            let (payload, failed, deferred) = match outcome {
                RouteOutcome::Skip => continue,
                RouteOutcome::Deliver(payload) => (payload.map(Bytes::from), None, false),
                RouteOutcome::Failed(why) => (None, Some(without_nul(&why).into_owned()), false),
                RouteOutcome::Unavailable(why) => {
                    emit(RouteEvaluationDeferred { route: &route.slug, why: &why });
                    (None, None, true)
                }
            };
            let destination = self.destinations.get(&route.destination_id);
            let attempt_now = destination
                .filter(|d| d.state == DestinationState::Active && !d.fifo && failed.is_none() && !deferred)
                .map(|d| d.timeout);
            planned.push(PlannedDelivery {
                id: Uuid::now_v7(),
                route_id: route.id,
                destination_id: route.destination_id,
                fifo: destination.is_some_and(|d| d.fifo),
                payload,
                failed,
                deferred,
                attempt_now,
            });
        }
        planned
    }

    /// An enabled route by id.
    pub fn route(&self, id: Uuid) -> Option<&Arc<Route>> {
        self.routes_by_source.values().flatten().find(|r| r.id == id)
    }
}

/// `s` without NUL characters, which PostgreSQL refuses in text (borrowed when it has none). Error messages that
/// quote event data may contain them.
pub fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn destination_headers_are_checked_and_lower_cased() {
        let ok = validate_headers(&headers(&[("X-Env", "prod"), ("Authorization", "Bearer t")])).unwrap();
        assert_eq!(ok, vec![("authorization".into(), "Bearer t".into()), ("x-env".into(), "prod".into())]);
        for name in [
            "Webhook-Signature",
            "webhook-id",
            "traceparent",
            "Content-Type",
            "content-length",
            "Host",
            "Connection",
            "keep-alive",
            "Proxy-Authorization",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
        ] {
            let err = validate_headers(&headers(&[(name, "x")])).unwrap_err();
            assert!(err.contains(name) && err.contains("cannot be set"), "{name}: {err}");
        }
        let err = validate_headers(&headers(&[("bad name", "x")])).unwrap_err();
        assert!(err.contains("\"bad name\"") && err.contains("not a valid header name"), "{err}");
        let err = validate_headers(&headers(&[("x-a", "line\nbreak")])).unwrap_err();
        assert!(err.contains("\"x-a\"") && err.contains("not a valid header value"), "{err}");
        let err = validate_headers(&headers(&[("X-Env", "a"), ("x-env", "b")])).unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn the_tls_fingerprint_changes_with_any_part_and_pairs_are_required() {
        let a = DestinationTls { ca_pem: Some("ca".into()), ..Default::default() };
        let b = DestinationTls { cert_pem: Some("ca".into()), ..Default::default() };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        let names = ("ca_pem", "cert_pem", "key_pem");
        assert_eq!(b.check_pairing(names).unwrap_err().field, "key_pem");
        let key_only = DestinationTls { key_pem: Some(SecretString::from("k")), ..Default::default() };
        assert_eq!(key_only.check_pairing(names).unwrap_err().field, "cert_pem");
        assert!(a.check_pairing(names).is_ok());
        assert!(!format!("{key_only:?}").contains("\"k\""), "the key is redacted: {key_only:?}");
    }
}
