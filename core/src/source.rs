//! The source model: who may POST to `/ingest/{slug}`, how their requests are verified, where the idempotency key
//! and the event type come from. One model for the configuration file and the admin API, checked by one
//! [`SourceConfig::validate`].

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::verify::Verifier;

/// Why a source (or a slug) was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSource(pub String);

/// The name of a source, destination or route in URLs and in the configuration: 1 to 64 of `a-z`, `0-9`, `-`, `_`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    pub fn parse(slug: &str) -> Result<Self, &'static str> {
        let ok_len = (1..=64).contains(&slug.len());
        let ok_chars = slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        let ok_first = slug.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if ok_len && ok_chars && ok_first {
            Ok(Self(slug.to_owned()))
        } else {
            Err("slug must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a slug ([`Slug::parse`]) where only the verdict is needed.
pub fn validate_slug(slug: &str) -> Result<(), &'static str> {
    Slug::parse(slug).map(drop)
}

/// A source's default body limit (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A producer that may POST to `/ingest/{slug}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// URL path segment: lower-case letters, digits, `-` and `_`, 1 to 64 characters.
    pub slug: String,
    /// Largest accepted body, in bytes (capped by `server.max_body_bytes`).
    #[serde(default = "default_source_body")]
    pub max_body_bytes: usize,
    /// Require `Content-Type: application/json` (or `+json`) and a well-formed JSON body.
    #[serde(default)]
    pub require_json: bool,
    /// Where the idempotency key comes from; default: the verification preset's (e.g. `X-GitHub-Delivery`), the
    /// CloudEvents `source` + `id` when `cloudevents` is on, else a hash of the body.
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
    /// Where the event type comes from; default: the verification preset's (e.g. `X-GitHub-Event`), else none.
    /// CloudEvents always use their `type` attribute.
    #[serde(default)]
    pub event_type: Option<EventTypeConfig>,
    /// How long the Redis fast path remembers a key (default: `redis.dedupe_ttl_secs`). At most
    /// `retention.dedupe_window_secs`, how long PostgreSQL remembers keys (7 days by default).
    #[serde(default)]
    pub dedupe_window_secs: Option<u64>,
    /// Accept only CloudEvents (binary, structured or batch mode of the HTTP binding).
    #[serde(default)]
    pub cloudevents: bool,
    /// Origins granted by the abuse-protection handshake (`OPTIONS` with `WebHook-Request-Origin`); `"*"` grants
    /// any. Empty: the handshake is refused.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Requests per minute advertised in `WebHook-Allowed-Rate`; none by default.
    #[serde(default)]
    pub allowed_rate: Option<u32>,
    /// How requests are authenticated.
    #[serde(default)]
    pub verification: VerificationConfig,
    /// A disabled source answers 404 as if it did not exist; its events and routes stay.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl SourceConfig {
    /// The idempotency key's origin after defaults.
    pub fn effective_idempotency(&self) -> IdempotencyConfig {
        if let Some(cfg) = &self.idempotency {
            return cfg.clone();
        }
        if self.cloudevents {
            return IdempotencyConfig::Cloudevents;
        }
        self.verification.default_idempotency().unwrap_or_default()
    }

    /// The per-source options stored beside verification and idempotency (`sources.options`).
    pub fn options(&self) -> SourceOptions {
        SourceOptions {
            event_type: self.event_type.clone().or_else(|| self.verification.default_event_type()),
            dedupe_window_secs: self.dedupe_window_secs,
            cloudevents: self.cloudevents,
            allowed_origins: self.allowed_origins.clone(),
            allowed_rate: self.allowed_rate,
        }
    }
}

/// A source's options as stored in `sources.options` (defaults already applied).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct SourceOptions {
    pub event_type: Option<EventTypeConfig>,
    pub dedupe_window_secs: Option<u64>,
    pub cloudevents: bool,
    pub allowed_origins: Vec<String>,
    pub allowed_rate: Option<u32>,
}

/// Where a source's event type comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventTypeConfig {
    /// A request header (optional: absent means no type).
    Header { header: String },
    /// A JSON pointer (RFC 6901) into the body, e.g. `/type` (optional: absent means no type).
    JsonPointer { pointer: String },
}

fn default_source_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// Where a source's idempotency key comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdempotencyConfig {
    /// A request header (required on every request).
    Header { header: String },
    /// A JSON pointer (RFC 6901) into the body, e.g. `/id`; the value must be a string or a number.
    JsonPointer { pointer: String },
    /// The CloudEvents `source` and `id` together (requires `cloudevents = true`).
    Cloudevents,
    /// The hex SHA-256 of the body: identical bodies are the same event.
    #[default]
    BodyHash,
}

/// How a source's requests are verified. Every `secret`-like field takes one string or a list of two (rotation:
/// a request passes if it matches any of them). See `docs/adr/0005-verification-schemes.md`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerificationConfig {
    #[default]
    None,
    /// Hex HMAC-SHA256 of the raw body in `header`, optionally after `prefix` (e.g. `sha256=`). Same as
    /// `kind = "hmac"` with its defaults; kept for existing configurations.
    HmacSha256 {
        header: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        secret: Secrets,
    },
    /// Generic HMAC: `algorithm` over the `signed` template, `encoding` of the MAC in `header` after `prefix`.
    Hmac {
        header: String,
        #[serde(default)]
        algorithm: HmacAlgorithm,
        #[serde(default)]
        encoding: SignatureEncoding,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        secret: Secrets,
        /// What is signed: `{body}` (default) or a template such as `{timestamp}.{body}`.
        #[serde(default)]
        signed: Option<String>,
        /// The header holding Unix seconds; required when `signed` uses `{timestamp}`.
        #[serde(default)]
        timestamp_header: Option<String>,
        /// Largest accepted distance between the timestamp and now, in seconds (default 300).
        #[serde(default)]
        tolerance_secs: Option<u64>,
    },
    /// `X-Hub-Signature-256: sha256=<hex>`; key `X-GitHub-Delivery`, type `X-GitHub-Event`.
    Github {
        #[serde(default)]
        secret: Secrets,
    },
    /// `Stripe-Signature: t=…,v1=…[,v1=…]` over `t.body`; key and type from the body's `/id` and `/type`.
    Stripe {
        #[serde(default)]
        secret: Secrets,
        /// Default 300.
        #[serde(default)]
        tolerance_secs: Option<u64>,
    },
    /// `X-Shopify-Hmac-Sha256: <base64>`; key `X-Shopify-Webhook-Id`, type `X-Shopify-Topic`.
    Shopify {
        #[serde(default)]
        secret: Secrets,
    },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64>` HMAC with `whsec_`
    /// secrets, `v1a,<base64>` ed25519 with `whpk_` public keys); key `webhook-id`.
    StandardWebhooks {
        #[serde(default)]
        secret: Secrets,
        #[serde(default)]
        public_key: Secrets,
        /// Default 300.
        #[serde(default)]
        tolerance_secs: Option<u64>,
    },
    /// HTTP Basic authentication.
    Basic {
        username: String,
        #[serde(default)]
        password: Secrets,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        #[serde(default)]
        token: Secrets,
    },
    /// A static key in a header such as `X-Api-Key`.
    ApiKey {
        header: String,
        #[serde(default)]
        key: Secrets,
    },
}

impl VerificationConfig {
    /// Accepts one more secret (the previous one while a secret rotates); no effect on kinds without secrets.
    pub fn add_secret(&mut self, secret: SecretString) {
        let secrets = match self {
            Self::None => return,
            Self::HmacSha256 { secret, .. }
            | Self::Hmac { secret, .. }
            | Self::Github { secret }
            | Self::Stripe { secret, .. }
            | Self::Shopify { secret }
            | Self::StandardWebhooks { secret, .. } => secret,
            Self::Basic { password, .. } => password,
            Self::Bearer { token } => token,
            Self::ApiKey { key, .. } => key,
        };
        secrets.0.push(secret);
    }

    /// The preset's idempotency key, if it has one.
    pub fn default_idempotency(&self) -> Option<IdempotencyConfig> {
        let header = |h: &str| Some(IdempotencyConfig::Header { header: h.into() });
        match self {
            Self::Github { .. } => header("X-GitHub-Delivery"),
            Self::Shopify { .. } => header("X-Shopify-Webhook-Id"),
            Self::StandardWebhooks { .. } => header("webhook-id"),
            Self::Stripe { .. } => Some(IdempotencyConfig::JsonPointer { pointer: "/id".into() }),
            _ => None,
        }
    }

    /// The preset's event type, if it has one.
    pub fn default_event_type(&self) -> Option<EventTypeConfig> {
        let header = |h: &str| Some(EventTypeConfig::Header { header: h.into() });
        match self {
            Self::Github { .. } => header("X-GitHub-Event"),
            Self::Shopify { .. } => header("X-Shopify-Topic"),
            Self::Stripe { .. } => Some(EventTypeConfig::JsonPointer { pointer: "/type".into() }),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// One secret, or several while rotating. `Debug` prints `[REDACTED]`; serializing (into `sources.verification`)
/// writes the secrets, since that is where they are kept.
#[derive(Clone, Default)]
pub struct Secrets(pub Vec<SecretString>);

/// At most this many secrets are active per source (old and new while rotating).
pub const MAX_SECRETS: usize = 2;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Secrets {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String);
        OneOfBuilder::new()
            .item(text())
            .item(ArrayBuilder::new().items(text()).max_items(Some(MAX_SECRETS)))
            .description(Some("One secret, or a list of two while rotating. Write-only: never shown."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Secrets {}

impl Secrets {
    pub fn exposed(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.expose_secret())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[REDACTED; {}]", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => Secrets(vec![SecretString::from(s)]),
            OneOrMany::Many(v) => Secrets(v.into_iter().map(SecretString::from).collect()),
        })
    }
}

impl Serialize for Secrets {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.exposed())
    }
}

/// The server's settings that bound every source's: what [`SourceConfig::validate`] checks a source against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceBounds {
    /// `server.max_body_bytes`: no source accepts larger bodies.
    pub max_body_bytes: usize,
    /// `retention.dedupe_window_secs`: how long PostgreSQL remembers a key. A source's Redis window may not be
    /// longer, or a repeat would be a duplicate or not depending on whether Redis still had the key.
    pub dedupe_window_secs: u64,
}

impl SourceConfig {
    /// Checks what serde cannot, the same way for the configuration file and the admin API: the slug, the body
    /// limit and the dedupe window against the server's [`SourceBounds`], header names, JSON pointers, and the
    /// verification (header names, templates, secret counts and key formats). Every message names the field.
    pub fn validate(&self, bounds: &SourceBounds) -> Result<(), InvalidSource> {
        let bad = |msg: String| Err(InvalidSource(msg));
        let server_max_body_bytes = bounds.max_body_bytes;
        validate_slug(&self.slug).map_err(|e| InvalidSource(e.into()))?;
        if crate::notification::is_reserved(&self.slug) {
            return bad(format!("slug {:?} is reserved for hookgate's own notifications", self.slug));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > server_max_body_bytes {
            return bad(format!(
                "max_body_bytes must be between 1 and server.max_body_bytes ({server_max_body_bytes})"
            ));
        }
        match &self.effective_idempotency() {
            IdempotencyConfig::Header { header } => header_name(header, "idempotency.header")?,
            IdempotencyConfig::JsonPointer { pointer } => json_pointer(pointer, "idempotency.pointer")?,
            IdempotencyConfig::Cloudevents if !self.cloudevents => {
                return bad("idempotency from cloudevents needs cloudevents = true".into())
            }
            IdempotencyConfig::Cloudevents | IdempotencyConfig::BodyHash => {}
        }
        match &self.options().event_type {
            Some(EventTypeConfig::Header { header }) => header_name(header, "event_type.header")?,
            Some(EventTypeConfig::JsonPointer { pointer }) => json_pointer(pointer, "event_type.pointer")?,
            None => {}
        }
        match self.dedupe_window_secs {
            Some(0) => return bad("dedupe_window_secs must be positive".into()),
            Some(w) if w > bounds.dedupe_window_secs => {
                return bad(format!(
                    "dedupe_window_secs ({w}) must be at most retention.dedupe_window_secs ({}), how long \
                     PostgreSQL remembers a key",
                    bounds.dedupe_window_secs
                ))
            }
            _ => {}
        }
        if let Some(origin) = self.allowed_origins.iter().find(|o| o.is_empty() || o.chars().any(char::is_whitespace)) {
            return bad(format!("allowed_origins: {origin:?} is not an origin"));
        }
        Verifier::from_config(&self.verification).map(|_| ()).map_err(|e| InvalidSource(format!("verification: {e}")))
    }
}

fn header_name(name: &str, field: &str) -> Result<(), InvalidSource> {
    http::HeaderName::try_from(name)
        .map(|_| ())
        .map_err(|_| InvalidSource(format!("{field}: {name:?} is not a header name")))
}

fn json_pointer(pointer: &str, field: &str) -> Result<(), InvalidSource> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(InvalidSource(format!("{field}: the JSON pointer {pointer:?} must start with '/', e.g. /id")))
    }
}

/// The fields of [`VerificationConfig`] that hold secrets; everything else about a verification may be shown.
pub const SECRET_FIELDS: &[&str] = &["secret", "password", "token", "key"];

impl VerificationConfig {
    /// The kind's name as configured, e.g. `github`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::HmacSha256 { .. } => "hmac_sha256",
            Self::Hmac { .. } => "hmac",
            Self::Github { .. } => "github",
            Self::Stripe { .. } => "stripe",
            Self::Shopify { .. } => "shopify",
            Self::StandardWebhooks { .. } => "standard_webhooks",
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
            Self::ApiKey { .. } => "api_key",
        }
    }

    /// The shared secrets (secret, password, token or key), if the kind has any.
    fn secrets_mut(&mut self) -> Option<&mut Secrets> {
        match self {
            Self::None => None,
            Self::HmacSha256 { secret, .. }
            | Self::Hmac { secret, .. }
            | Self::Github { secret }
            | Self::Stripe { secret, .. }
            | Self::Shopify { secret }
            | Self::StandardWebhooks { secret, .. } => Some(secret),
            Self::Basic { password, .. } => Some(password),
            Self::Bearer { token } => Some(token),
            Self::ApiKey { key, .. } => Some(key),
        }
    }

    /// The active shared secrets (empty for `none`).
    pub fn secrets(&self) -> &[SecretString] {
        match self {
            Self::None => &[],
            Self::HmacSha256 { secret, .. }
            | Self::Hmac { secret, .. }
            | Self::Github { secret }
            | Self::Stripe { secret, .. }
            | Self::Shopify { secret }
            | Self::StandardWebhooks { secret, .. }
            | Self::Basic { password: secret, .. }
            | Self::Bearer { token: secret }
            | Self::ApiKey { key: secret, .. } => &secret.0,
        }
    }

    /// Whether this kind verifies with a shared secret that hookgate can generate (not `none`, and not a Standard
    /// Webhooks source that verifies with public keys only).
    pub fn uses_shared_secret(&self) -> bool {
        match self {
            Self::None => false,
            Self::StandardWebhooks { secret, public_key, .. } => !secret.0.is_empty() || public_key.0.is_empty(),
            _ => true,
        }
    }

    /// A new random secret in this kind's format: `whsec_<base64 of 32 bytes>` for Standard Webhooks, 64 hex
    /// characters otherwise.
    pub fn generate_secret(&self) -> String {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        match self {
            Self::StandardWebhooks { .. } => {
                format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
            }
            _ => key.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Gives a kind that needs a shared secret and has none a generated one, and answers it (to be shown once).
    pub fn fill_missing_secret(&mut self) -> Option<String> {
        if !self.uses_shared_secret() || !self.secrets().is_empty() {
            return None;
        }
        let new = self.generate_secret();
        self.secrets_mut()?.0 = vec![SecretString::from(new.clone())];
        Some(new)
    }

    /// Moves the shared secrets of `stored` into this one when both are the same kind and this one names none
    /// (an update keeps the secrets; they change by rotation).
    pub fn keep_secrets_of(&mut self, stored: &VerificationConfig) {
        if self.kind() == stored.kind() && self.secrets().is_empty() {
            let kept = Secrets(stored.secrets().to_vec());
            if let Some(s) = self.secrets_mut() {
                *s = kept;
            }
        }
    }

    /// Replaces the shared secret with a generated one; answers `(new, previous)`, or `None` for a kind without
    /// a shared secret.
    /// Refused for a kind without a shared secret, and while two secrets are active (only one can stay valid
    /// through a grace period: update to one first).
    pub fn rotate(&mut self) -> Result<(String, SecretString), &'static str> {
        if !self.uses_shared_secret() {
            return Err("this verification has no shared secret to rotate");
        }
        let previous = match self.secrets() {
            [one] => one.clone(),
            [] => return Err("this verification has no secret yet"),
            _ => return Err("two secrets are active; update the source to one of them before rotating"),
        };
        let new = self.generate_secret();
        if let Some(secrets) = self.secrets_mut() {
            secrets.0 = vec![SecretString::from(new.clone())];
        }
        Ok((new, previous))
    }

    /// The verification as it may be shown: every setting, no secret (public keys are not secrets).
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            for field in SECRET_FIELDS {
                map.remove(*field);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{hmac_sha256_hex, VerifyError};
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn verifier(prefix: Option<&str>, secret: &str) -> Verifier {
        Verifier::from_config(&VerificationConfig::HmacSha256 {
            header: "x-hub-signature-256".into(),
            prefix: prefix.map(str::to_owned),
            secret: Secrets(vec![SecretString::from(secret)]),
        })
        .unwrap()
    }

    fn headers(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-hub-signature-256"), HeaderValue::from_bytes(value).unwrap());
        h
    }

    #[test]
    fn githubs_documented_vector_verifies() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        let v = verifier(Some("sha256="), "It's a Secret to Everybody");
        let sig = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(v.verify(&headers(sig), b"Hello, World!"), Ok(()));
        assert!(matches!(v.verify(&headers(sig), b"Hello, World?"), Err(VerifyError::Mismatch(_))));
    }

    #[test]
    fn malformed_and_missing_signatures_are_told_apart() {
        let v = verifier(Some("sha256="), "k");
        let good = format!("sha256={}", hmac_sha256_hex(b"k", b"body"));
        assert_eq!(v.verify(&headers(good.as_bytes()), b"body"), Ok(()));
        assert!(matches!(v.verify(&HeaderMap::new(), b"body"), Err(VerifyError::Missing(_))));
        for bad in [
            &b"sha1=abcd"[..],
            b"sha256=zz",
            b"sha256=",
            b"sha256=\xff\xfe",
            good.trim_start_matches("sha256=").as_bytes(),
        ] {
            assert!(matches!(v.verify(&headers(bad), b"body"), Err(VerifyError::Malformed(_))), "{bad:?}");
        }
        let short = format!("sha256={}", &hmac_sha256_hex(b"k", b"body")[..32]);
        assert!(matches!(v.verify(&headers(short.as_bytes()), b"body"), Err(VerifyError::Mismatch(_))));
    }

    #[test]
    fn slugs_are_checked() {
        for ok in ["github", "a", "stripe-live_2"] {
            assert!(validate_slug(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GitHub", "-x", "a b", "é", &"x".repeat(65)] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verifier_debug_hides_the_secret() {
        assert!(!format!("{:?}", verifier(None, "topsecret")).contains("topsecret"));
    }

    fn source(json: serde_json::Value) -> SourceConfig {
        serde_json::from_value(json).unwrap()
    }

    fn bounds(max_body_bytes: usize) -> SourceBounds {
        SourceBounds { max_body_bytes, dedupe_window_secs: 7 * 24 * 3600 }
    }

    fn invalid(json: serde_json::Value) -> String {
        source(json).validate(&bounds(1024 * 1024)).expect_err("refused").0
    }

    #[test]
    fn one_validation_names_the_field_it_refuses() {
        assert!(source(serde_json::json!({"slug": "gh", "verification": {"kind": "github", "secret": "s"}}))
            .validate(&bounds(1024 * 1024))
            .is_ok());
        assert!(invalid(serde_json::json!({"slug": "Bad"})).contains("slug"));
        assert!(invalid(serde_json::json!({"slug": "x", "max_body_bytes": 2_000_000})).contains("max_body_bytes"));
        assert!(invalid(serde_json::json!({"slug": "x", "max_body_bytes": 0})).contains("max_body_bytes"));
        let bad_header = invalid(serde_json::json!({"slug": "x", "idempotency": {"from": "header", "header": "a b"}}));
        assert!(bad_header.contains("idempotency.header"), "{bad_header}");
        let bad_pointer =
            invalid(serde_json::json!({"slug": "x", "idempotency": {"from": "json_pointer", "pointer": ""}}));
        assert!(bad_pointer.contains("idempotency.pointer"), "{bad_pointer}");
        let bad_type =
            invalid(serde_json::json!({"slug": "x", "event_type": {"from": "json_pointer", "pointer": "type"}}));
        assert!(bad_type.contains("event_type.pointer"), "{bad_type}");
        assert!(
            invalid(serde_json::json!({"slug": "x", "idempotency": {"from": "cloudevents"}})).contains("cloudevents")
        );
        assert!(invalid(serde_json::json!({"slug": "x", "dedupe_window_secs": 0})).contains("dedupe_window_secs"));
        let week = 7 * 24 * 3600;
        assert!(source(serde_json::json!({"slug": "x", "dedupe_window_secs": week}))
            .validate(&bounds(1024 * 1024))
            .is_ok());
        let too_long = invalid(serde_json::json!({"slug": "x", "dedupe_window_secs": week + 1}));
        assert!(
            too_long.starts_with("dedupe_window_secs (604801) must be at most retention.dedupe_window_secs (604800)"),
            "{too_long}"
        );
        let no_secret = invalid(serde_json::json!({"slug": "x", "verification": {"kind": "stripe"}}));
        assert!(no_secret.starts_with("verification:") && no_secret.contains("secret"), "{no_secret}");
        let template = invalid(serde_json::json!({"slug": "x", "verification":
            {"kind": "hmac", "header": "x-sig", "secret": "s", "signed": "{timestamp}.{body}"}}));
        assert!(template.contains("timestamp_header"), "{template}");
    }

    #[test]
    fn every_kind_that_needs_a_shared_secret_can_be_given_one() {
        let kinds = [
            serde_json::json!({"kind": "hmac_sha256", "header": "x-sig"}),
            serde_json::json!({"kind": "hmac", "header": "x-sig", "algorithm": "sha512", "encoding": "base64"}),
            serde_json::json!({"kind": "github"}),
            serde_json::json!({"kind": "stripe"}),
            serde_json::json!({"kind": "shopify"}),
            serde_json::json!({"kind": "standard_webhooks"}),
            serde_json::json!({"kind": "basic", "username": "u"}),
            serde_json::json!({"kind": "bearer"}),
            serde_json::json!({"kind": "api_key", "header": "x-api-key"}),
        ];
        for kind in kinds {
            let mut s = source(serde_json::json!({"slug": "x", "verification": kind}));
            assert!(s.validate(&bounds(1024)).is_err(), "{kind}: no secret yet");
            let generated = s.verification.fill_missing_secret().expect("generated");
            s.validate(&bounds(1024 * 1024)).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(s.verification.secrets().len(), 1);
            assert_eq!(s.verification.secrets()[0].expose_secret(), generated);
            assert_eq!(s.verification.fill_missing_secret(), None, "{kind}: a second call keeps the secret");
            let shown = s.verification.redacted().to_string();
            assert!(!shown.contains(&generated), "{kind}: {shown}");
            assert_eq!(s.verification.redacted()["kind"], kind["kind"]);
        }
        let mut none = VerificationConfig::None;
        assert_eq!(none.fill_missing_secret(), None);
        assert!(none.rotate().is_err());
    }

    #[test]
    fn rotation_answers_the_new_secret_and_the_one_it_replaced() {
        let mut v: VerificationConfig = serde_json::from_value(serde_json::json!({"kind": "standard_webhooks",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))
        .unwrap();
        let (new, previous) = v.rotate().expect("rotates");
        assert_eq!(previous.expose_secret(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(new.starts_with("whsec_"));
        Verifier::from_config(&v).expect("a generated Standard Webhooks secret is a valid one");
        let public_only: VerificationConfig = serde_json::from_value(serde_json::json!({"kind": "standard_webhooks",
            "public_key": "whpk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="}))
        .unwrap();
        assert!(!public_only.uses_shared_secret());
        assert!(public_only.clone().rotate().is_err());
        let mut two: VerificationConfig =
            serde_json::from_value(serde_json::json!({"kind": "bearer", "token": ["a", "b"]})).unwrap();
        assert!(two.rotate().unwrap_err().contains("two secrets"), "the second one would lose its grace");
        assert!(public_only.redacted().get("public_key").is_some(), "public keys are not secrets");
    }

    #[test]
    fn an_update_keeps_the_stored_secrets_only_for_the_same_kind() {
        let stored: VerificationConfig =
            serde_json::from_value(serde_json::json!({"kind": "bearer", "token": "old"})).unwrap();
        let mut same: VerificationConfig = serde_json::from_value(serde_json::json!({"kind": "bearer"})).unwrap();
        same.keep_secrets_of(&stored);
        assert_eq!(same.secrets()[0].expose_secret(), "old");
        let mut other: VerificationConfig =
            serde_json::from_value(serde_json::json!({"kind": "api_key", "header": "x-key"})).unwrap();
        other.keep_secrets_of(&stored);
        assert!(other.secrets().is_empty());
        let mut given: VerificationConfig =
            serde_json::from_value(serde_json::json!({"kind": "bearer", "token": "new"})).unwrap();
        given.keep_secrets_of(&stored);
        assert_eq!(given.secrets()[0].expose_secret(), "new");
    }
}
