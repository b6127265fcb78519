//! Request verification: the schemes a source can use (generic HMAC, the GitHub, Stripe, Shopify and Standard
//! Webhooks presets, HTTP Basic, bearer tokens and API keys) and the header parsers they rely on.
//!
//! Every comparison is constant-time: MACs through `Mac::verify_slice`, ed25519 through `VerifyingKey::verify`, and
//! passwords and tokens by comparing SHA-256 digests with `subtle::ConstantTimeEq` (so not even the length leaks).
//! Secrets live in `SecretString`/`SecretSlice` and never reach `Debug`, logs or error messages. The parsers are
//! public so that the fuzz targets (`fuzz/`) and the property tests call exactly what ingest calls.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use http::HeaderName;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::signing::SigningSecret;
use crate::source::{HmacAlgorithm, Secrets, SignatureEncoding, VerificationConfig, MAX_SECRETS};

/// The request headers a verifier reads. The server implements it for its HTTP framework's header map; this crate
/// for [`http::HeaderMap`].
pub trait RequestHeaders {
    /// Every value of the header `name` (lower-case), in the order received.
    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;
}

impl RequestHeaders for http::HeaderMap {
    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

/// Default largest distance between a signed timestamp and now.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Longest header value a parser looks at; longer values are malformed.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
/// At most this many signatures are tried from one header (bounds the work a request can cause).
pub const MAX_SIGNATURES: usize = 8;

/// Why a request failed verification. The message is safe to return to the client: it names headers, never
/// secrets or expected values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    Missing(String),
    #[error("the {0} header is malformed")]
    Malformed(String),
    #[error("the signature in the {0} header does not match the body")]
    Mismatch(String),
    #[error("the credentials in the {0} header are not accepted")]
    Credentials(String),
    #[error(
        "the timestamp in the {header} header is {age} s old, past the {tolerance} s tolerance (stale or replayed)"
    )]
    Stale { header: String, age: u64, tolerance: u64 },
    #[error("the timestamp in the {header} header is {ahead} s in the future, past the {tolerance} s tolerance")]
    Future { header: String, ahead: u64, tolerance: u64 },
}

/// What a header parser refuses; the caller turns it into [`VerifyError::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed header value: {0}")]
pub struct ParseError(pub &'static str);

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSignature {
    pub timestamp: i64,
    /// The decoded `v1` signatures (several while Stripe rolls a secret).
    pub v1: Vec<Vec<u8>>,
}

/// Parses `t=1492774577,v1=5257a8…,v1=…,v0=…`. Unknown schemes are ignored; a second `t`, a missing `t`, no `v1`,
/// a non-hex `v1` or more than [`MAX_SIGNATURES`] `v1` values are malformed.
pub fn parse_stripe_signature(value: &str) -> Result<StripeSignature, ParseError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(ParseError("too long"));
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in value.split(',') {
        let (k, v) = item.trim().split_once('=').ok_or(ParseError("an item is not key=value"))?;
        match k {
            "t" if timestamp.is_some() => return Err(ParseError("t appears twice")),
            "t" => timestamp = Some(parse_timestamp(v)?),
            "v1" => {
                if v1.len() == MAX_SIGNATURES {
                    return Err(ParseError("too many v1 signatures"));
                }
                let sig = hex::decode(v).map_err(|_| ParseError("v1 is not hex"))?;
                if sig.len() != 32 {
                    return Err(ParseError("v1 is not a SHA-256 MAC"));
                }
                v1.push(sig);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(ParseError("t is missing"))?;
    if v1.is_empty() {
        return Err(ParseError("no v1 signature"));
    }
    Ok(StripeSignature { timestamp, v1 })
}

/// One signature of a `webhook-signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookSignature {
    /// `v1,<base64 HMAC-SHA256>`
    V1(Vec<u8>),
    /// `v1a,<base64 ed25519 signature>`
    V1a([u8; 64]),
}

/// Parses a Standard Webhooks `webhook-signature` header: space-separated `version,base64` items. Unknown versions
/// are skipped; a bad item of a known version is malformed, and so is a header with no usable signature.
pub fn parse_webhook_signatures(value: &str) -> Result<Vec<WebhookSignature>, ParseError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(ParseError("too long"));
    }
    let mut out = Vec::new();
    for item in value.split(' ').filter(|s| !s.is_empty()) {
        let (version, sig) = item.split_once(',').ok_or(ParseError("an item is not version,signature"))?;
        let sig = match version {
            "v1" => {
                let raw = B64.decode(sig).map_err(|_| ParseError("v1 is not base64"))?;
                if raw.len() != 32 {
                    return Err(ParseError("v1 is not a SHA-256 MAC"));
                }
                WebhookSignature::V1(raw)
            }
            "v1a" => {
                let raw = B64.decode(sig).map_err(|_| ParseError("v1a is not base64"))?;
                WebhookSignature::V1a(raw.try_into().map_err(|_| ParseError("v1a is not an ed25519 signature"))?)
            }
            _ => continue,
        };
        if out.len() == MAX_SIGNATURES {
            return Err(ParseError("too many signatures"));
        }
        out.push(sig);
    }
    if out.is_empty() {
        return Err(ParseError("no v1 or v1a signature"));
    }
    Ok(out)
}

/// Parses `Authorization: Basic <base64(user:password)>` into its user and password.
pub fn parse_basic_authorization(value: &str) -> Result<(String, String), ParseError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(ParseError("too long"));
    }
    let (scheme, rest) = value.trim().split_once(' ').ok_or(ParseError("no credentials"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ParseError("not the Basic scheme"));
    }
    let raw = B64.decode(rest.trim()).map_err(|_| ParseError("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| ParseError("not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or(ParseError("no ':' between user and password"))?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Parses `Authorization: Bearer <token>` into the token (RFC 6750 `b64token` characters).
pub fn parse_bearer_authorization(value: &str) -> Result<&str, ParseError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(ParseError("too long"));
    }
    let (scheme, token) = value.trim().split_once(' ').ok_or(ParseError("no token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ParseError("not the Bearer scheme"));
    }
    let token = token.trim();
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || !token.bytes().all(ok) {
        return Err(ParseError("not a b64token"));
    }
    Ok(token)
}

/// Parses a generic HMAC signature header: strips `prefix`, decodes `encoding`.
pub fn parse_hmac_signature(
    value: &str,
    prefix: Option<&str>,
    encoding: SignatureEncoding,
) -> Result<Vec<u8>, ParseError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(ParseError("too long"));
    }
    let value = value.trim();
    let sig = match prefix {
        Some(p) => value.strip_prefix(p).ok_or(ParseError("the prefix is missing"))?,
        None => value,
    };
    let raw = match encoding {
        SignatureEncoding::Hex => hex::decode(sig).map_err(|_| ParseError("not hex"))?,
        SignatureEncoding::Base64 => B64.decode(sig).map_err(|_| ParseError("not base64"))?,
    };
    if raw.is_empty() {
        return Err(ParseError("empty signature"));
    }
    Ok(raw)
}

/// Parses Unix seconds: 1 to 12 ASCII digits.
pub fn parse_timestamp(value: &str) -> Result<i64, ParseError> {
    let value = value.trim();
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError("the timestamp is not Unix seconds"));
    }
    value.parse().map_err(|_| ParseError("the timestamp is not Unix seconds"))
}

/// A piece of what a generic HMAC signs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Timestamp,
    Body,
}

/// Parses a `signed` template: `{body}` exactly once, `{timestamp}` at most once, anything else literal.
fn parse_template(template: &str) -> anyhow::Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let next = [("{body}", Part::Body), ("{timestamp}", Part::Timestamp)]
            .into_iter()
            .filter_map(|(pat, part)| rest.find(pat).map(|i| (i, pat.len(), part)))
            .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, len, part)) => {
                if i > 0 {
                    parts.push(Part::Literal(rest.as_bytes()[..i].to_vec()));
                }
                parts.push(part);
                rest = &rest[i + len..];
            }
            None => {
                parts.push(Part::Literal(rest.as_bytes().to_vec()));
                rest = "";
            }
        }
    }
    let count = |p: &Part| parts.iter().filter(|x| *x == p).count();
    anyhow::ensure!(count(&Part::Body) == 1, "the signed template must contain {{body}} exactly once");
    anyhow::ensure!(count(&Part::Timestamp) <= 1, "the signed template may contain {{timestamp}} at most once");
    Ok(parts)
}

/// A configured generic HMAC check (also what the GitHub, Shopify and legacy `hmac_sha256` kinds compile to).
struct HmacCheck {
    header: HeaderName,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: Option<String>,
    keys: Vec<SecretSlice<u8>>,
    template: Vec<Part>,
    timestamp: Option<(HeaderName, u64)>,
}

/// A source's request verification, ready to run. `Debug` never shows keys.
pub struct Verifier(Scheme);

enum Scheme {
    None,
    Hmac(HmacCheck),
    Stripe { keys: Vec<SecretSlice<u8>>, tolerance: u64 },
    StandardWebhooks { keys: Vec<SigningSecret>, public_keys: Vec<VerifyingKey>, tolerance: u64 },
    Basic { user: [u8; 32], passwords: Vec<[u8; 32]> },
    Token { header: HeaderName, bearer: bool, tokens: Vec<[u8; 32]> },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.0 {
            Scheme::None => "None",
            Scheme::Hmac(_) => "Hmac",
            Scheme::Stripe { .. } => "Stripe",
            Scheme::StandardWebhooks { .. } => "StandardWebhooks",
            Scheme::Basic { .. } => "Basic",
            Scheme::Token { .. } => "Token",
        };
        f.debug_struct("Verifier").field("scheme", &name).field("keys", &"[REDACTED]").finish()
    }
}

fn header_name(name: &str) -> anyhow::Result<HeaderName> {
    HeaderName::try_from(name).with_context(|| format!("{name:?} is not a header name"))
}

/// Checks 1 to [`MAX_SECRETS`] non-empty secrets.
fn check_secrets(secrets: &Secrets, what: &str, allow_none: bool) -> anyhow::Result<()> {
    let n = secrets.0.len();
    anyhow::ensure!(n <= MAX_SECRETS, "at most {MAX_SECRETS} {what}s may be active at once, got {n}");
    anyhow::ensure!(allow_none || n > 0, "the {what} is missing");
    anyhow::ensure!(secrets.exposed().all(|s| !s.is_empty()), "the {what} is empty");
    Ok(())
}

fn raw_keys(secrets: &Secrets) -> Vec<SecretSlice<u8>> {
    secrets.exposed().map(|s| SecretSlice::from(s.as_bytes().to_vec())).collect()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Decodes `whsec_<base64>` (the prefix is optional) into the HMAC key.
fn whsec_key(secret: &str) -> anyhow::Result<SigningSecret> {
    SigningSecret::parse(secret).map_err(|e| anyhow::anyhow!(e))
}

/// Decodes `whpk_<base64>` (the prefix is optional) into an ed25519 public key.
fn whpk_key(key: &str) -> anyhow::Result<VerifyingKey> {
    let b64 = key.strip_prefix("whpk_").unwrap_or(key);
    let raw = B64.decode(b64).map_err(|_| anyhow::anyhow!("a Standard Webhooks public key is not base64"))?;
    let raw: [u8; 32] =
        raw.try_into().map_err(|_| anyhow::anyhow!("a Standard Webhooks public key is not 32 bytes"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| anyhow::anyhow!("a Standard Webhooks public key is not a valid point"))
}

impl Verifier {
    pub fn none() -> Self {
        Self(Scheme::None)
    }

    /// Compiles a configuration; refuses bad header names, templates, keys and secret counts.
    pub fn from_config(cfg: &VerificationConfig) -> anyhow::Result<Self> {
        let check = |header: &str, prefix: Option<&str>, secret: &Secrets, encoding| -> anyhow::Result<HmacCheck> {
            check_secrets(secret, "secret", false)?;
            Ok(HmacCheck {
                header: header_name(header)?,
                algorithm: HmacAlgorithm::Sha256,
                encoding,
                prefix: prefix.filter(|p| !p.is_empty()).map(str::to_owned),
                keys: raw_keys(secret),
                template: vec![Part::Body],
                timestamp: None,
            })
        };
        let hmac = |header: &str, prefix: Option<&str>, secret: &Secrets, encoding| {
            check(header, prefix, secret, encoding).map(Scheme::Hmac)
        };
        let tol = |t: &Option<u64>| t.unwrap_or(DEFAULT_TOLERANCE_SECS);
        Ok(Self(match cfg {
            VerificationConfig::None => Scheme::None,
            VerificationConfig::HmacSha256 { header, prefix, secret } => {
                hmac(header, prefix.as_deref(), secret, SignatureEncoding::Hex)?
            }
            VerificationConfig::Github { secret } => {
                hmac("x-hub-signature-256", Some("sha256="), secret, SignatureEncoding::Hex)?
            }
            VerificationConfig::Shopify { secret } => {
                hmac("x-shopify-hmac-sha256", None, secret, SignatureEncoding::Base64)?
            }
            VerificationConfig::Hmac {
                header,
                algorithm,
                encoding,
                prefix,
                secret,
                signed,
                timestamp_header,
                tolerance_secs,
            } => {
                let mut check = check(header, prefix.as_deref(), secret, *encoding)?;
                check.algorithm = *algorithm;
                check.template = parse_template(signed.as_deref().unwrap_or("{body}"))?;
                let needs_ts = check.template.contains(&Part::Timestamp);
                check.timestamp = match (needs_ts, timestamp_header) {
                    (true, Some(h)) => Some((header_name(h)?, tol(tolerance_secs))),
                    (true, None) => anyhow::bail!("the signed template uses {{timestamp}}: set timestamp_header"),
                    (false, Some(_)) => {
                        anyhow::bail!("timestamp_header is set but the signed template has no {{timestamp}}")
                    }
                    (false, None) => None,
                };
                Scheme::Hmac(check)
            }
            VerificationConfig::Stripe { secret, tolerance_secs } => {
                check_secrets(secret, "secret", false)?;
                Scheme::Stripe { keys: raw_keys(secret), tolerance: tol(tolerance_secs) }
            }
            VerificationConfig::StandardWebhooks { secret, public_key, tolerance_secs } => {
                check_secrets(secret, "secret", true)?;
                check_secrets(public_key, "public key", true)?;
                anyhow::ensure!(
                    !secret.0.is_empty() || !public_key.0.is_empty(),
                    "standard_webhooks needs a secret (whsec_…) or a public_key (whpk_…)"
                );
                Scheme::StandardWebhooks {
                    keys: secret.exposed().map(whsec_key).collect::<anyhow::Result<_>>()?,
                    public_keys: public_key.exposed().map(whpk_key).collect::<anyhow::Result<_>>()?,
                    tolerance: tol(tolerance_secs),
                }
            }
            VerificationConfig::Basic { username, password } => {
                check_secrets(password, "password", false)?;
                anyhow::ensure!(!username.contains(':'), "a Basic username cannot contain ':'");
                Scheme::Basic {
                    user: digest(username.as_bytes()),
                    passwords: password.exposed().map(|p| digest(p.as_bytes())).collect(),
                }
            }
            VerificationConfig::Bearer { token } => {
                check_secrets(token, "token", false)?;
                Scheme::Token {
                    header: HeaderName::from_static("authorization"),
                    bearer: true,
                    tokens: token.exposed().map(|t| digest(t.as_bytes())).collect(),
                }
            }
            VerificationConfig::ApiKey { header, key } => {
                check_secrets(key, "key", false)?;
                Scheme::Token {
                    header: header_name(header)?,
                    bearer: false,
                    tokens: key.exposed().map(|t| digest(t.as_bytes())).collect(),
                }
            }
        }))
    }

    /// The request header that carries this scheme's credential, if it has one: `authorization` for `basic` and
    /// `bearer`, the configured header for `api_key`. Whoever reads a credential can send any request as the
    /// producer, so ingest never stores it (nor shows it, nor gives it to jq). The headers of the signature schemes
    /// (`hmac`, `github`, `shopify`, `stripe`, `standard_webhooks`) carry a MAC or a signature of this one body (and
    /// timestamp), not a secret: they are kept, and `none` has no credential.
    pub fn credential_header(&self) -> Option<&str> {
        match &self.0 {
            Scheme::Basic { .. } => Some("authorization"),
            Scheme::Token { header, .. } => Some(header.as_str()),
            Scheme::None | Scheme::Hmac(_) | Scheme::Stripe { .. } | Scheme::StandardWebhooks { .. } => None,
        }
    }

    /// Verifies a request against the current time.
    pub fn verify(&self, headers: &impl RequestHeaders, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_at(headers, body, chrono::Utc::now().timestamp())
    }

    /// Verifies a request as if the time were `now` (Unix seconds).
    pub fn verify_at(&self, headers: &impl RequestHeaders, body: &[u8], now: i64) -> Result<(), VerifyError> {
        match &self.0 {
            Scheme::None => Ok(()),
            Scheme::Hmac(check) => check.verify(headers, body, now),
            Scheme::Stripe { keys, tolerance } => {
                let name = "stripe-signature";
                let value = single(headers, name)?;
                let sig = parse_stripe_signature(value).map_err(|_| VerifyError::Malformed(name.into()))?;
                check_time(name, sig.timestamp, now, *tolerance)?;
                let ts = sig.timestamp.to_string();
                let parts: [&[u8]; 3] = [ts.as_bytes(), b".", body];
                let ok = keys.iter().any(|k| sig.v1.iter().any(|s| hmac_ok(HmacAlgorithm::Sha256, k, &parts, s)));
                ok.then_some(()).ok_or_else(|| VerifyError::Mismatch(name.into()))
            }
            Scheme::StandardWebhooks { keys, public_keys, tolerance } => {
                let id = single(headers, "webhook-id")?;
                if id.is_empty() || id.len() > 256 {
                    return Err(VerifyError::Malformed("webhook-id".into()));
                }
                let ts_value = single(headers, "webhook-timestamp")?;
                let ts = parse_timestamp(ts_value).map_err(|_| VerifyError::Malformed("webhook-timestamp".into()))?;
                check_time("webhook-timestamp", ts, now, *tolerance)?;
                let sigs = parse_webhook_signatures(single(headers, "webhook-signature")?)
                    .map_err(|_| VerifyError::Malformed("webhook-signature".into()))?;
                let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_value.trim().as_bytes(), b".", body];
                let ok = sigs.iter().any(|sig| match sig {
                    WebhookSignature::V1(mac) => keys.iter().any(|k| k.verify(id, ts_value.trim(), body, mac)),
                    WebhookSignature::V1a(sig) => {
                        let sig = Signature::from_bytes(sig);
                        let msg = parts.concat();
                        public_keys.iter().any(|pk| pk.verify_strict(&msg, &sig).is_ok())
                    }
                });
                ok.then_some(()).ok_or_else(|| VerifyError::Mismatch("webhook-signature".into()))
            }
            Scheme::Basic { user, passwords } => {
                let name = "authorization";
                let (u, p) = parse_basic_authorization(single(headers, name)?)
                    .map_err(|_| VerifyError::Malformed(name.into()))?;
                let user_ok = digest(u.as_bytes()).ct_eq(user);
                let p = digest(p.as_bytes());
                let pass_ok = passwords.iter().fold(subtle::Choice::from(0), |acc, x| acc | p.ct_eq(x));
                bool::from(user_ok & pass_ok).then_some(()).ok_or_else(|| VerifyError::Credentials(name.into()))
            }
            Scheme::Token { header, bearer, tokens } => {
                let name = header.as_str();
                let value = single(headers, name)?;
                let token = if *bearer {
                    parse_bearer_authorization(value).map_err(|_| VerifyError::Malformed(name.into()))?
                } else {
                    value.trim()
                };
                let t = digest(token.as_bytes());
                let ok = tokens.iter().fold(subtle::Choice::from(0), |acc, x| acc | t.ct_eq(x));
                bool::from(ok).then_some(()).ok_or_else(|| VerifyError::Credentials(name.into()))
            }
        }
    }
}

impl HmacCheck {
    fn verify(&self, headers: &impl RequestHeaders, body: &[u8], now: i64) -> Result<(), VerifyError> {
        let name = self.header.as_str();
        let value = single(headers, name)?;
        let sig = parse_hmac_signature(value, self.prefix.as_deref(), self.encoding)
            .map_err(|_| VerifyError::Malformed(name.into()))?;
        let ts_value = match &self.timestamp {
            Some((h, tolerance)) => {
                let v = single(headers, h.as_str())?.trim();
                let ts = parse_timestamp(v).map_err(|_| VerifyError::Malformed(h.as_str().into()))?;
                check_time(h.as_str(), ts, now, *tolerance)?;
                Some(v)
            }
            None => None,
        };
        let parts: Vec<&[u8]> = self
            .template
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_slice(),
                Part::Body => body,
                Part::Timestamp => ts_value.unwrap_or_default().as_bytes(),
            })
            .collect();
        let ok = self.keys.iter().any(|k| hmac_ok(self.algorithm, k, &parts, &sig));
        ok.then_some(()).ok_or_else(|| VerifyError::Mismatch(name.into()))
    }
}

/// The one value of a header that must appear once, as visible ASCII.
fn single<'a>(headers: &'a impl RequestHeaders, name: &str) -> Result<&'a str, VerifyError> {
    let mut values = headers.values(name);
    let value = values.next().ok_or_else(|| VerifyError::Missing(name.into()))?;
    if values.next().is_some() {
        return Err(VerifyError::Malformed(name.into()));
    }
    visible_ascii(value).ok_or_else(|| VerifyError::Malformed(name.into()))
}

/// A header value as text when it is visible ASCII and tabs (what `HeaderValue::to_str` accepts); `None` otherwise.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    let visible = value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    std::str::from_utf8(value).ok().filter(|_| visible)
}

fn check_time(header: &str, ts: i64, now: i64, tolerance: u64) -> Result<(), VerifyError> {
    let diff = now.saturating_sub(ts);
    if diff > 0 && diff.unsigned_abs() > tolerance {
        return Err(VerifyError::Stale { header: header.into(), age: diff.unsigned_abs(), tolerance });
    }
    if diff < 0 && diff.unsigned_abs() > tolerance {
        return Err(VerifyError::Future { header: header.into(), ahead: diff.unsigned_abs(), tolerance });
    }
    Ok(())
}

/// Computes the MAC of `parts` (concatenated) and compares it with `sig` in constant time.
fn hmac_ok(algorithm: HmacAlgorithm, key: &SecretSlice<u8>, parts: &[&[u8]], sig: &[u8]) -> bool {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], sig: &[u8]) -> bool {
        let Ok(mut mac) = <M as Mac>::new_from_slice(key) else { return false };
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(sig).is_ok()
    }
    let key = key.expose_secret();
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts, sig),
        HmacAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts, sig),
        HmacAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, parts, sig),
    }
}

/// Signs `body` as an HMAC-SHA256 source expects (hex, without prefix). Used by tests, benchmarks and examples.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Signs like a Standard Webhooks sender: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` with a `whsec_` secret.
pub fn standard_webhooks_v1(secret: &SecretString, id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    Ok(format!("v1,{}", whsec_key(secret.expose_secret())?.sign(id, timestamp, body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use http::{HeaderMap, HeaderValue};

    fn cfg(toml: &str) -> Verifier {
        #[derive(serde::Deserialize)]
        struct W {
            v: VerificationConfig,
        }
        let w: W = figment::Figment::from(<figment::providers::Toml as figment::providers::Format>::string(&format!(
            "v = {}",
            toml.replace('\n', " ")
        )))
        .extract()
        .unwrap_or_else(|e| panic!("{toml}: {e}"));
        Verifier::from_config(&w.v).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn githubs_documented_vector_verifies_through_the_preset() {
        let v = cfg(r#"{ kind = "github", secret = "It's a Secret to Everybody" }"#);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("X-Hub-Signature-256", sig)]);
        assert_eq!(v.verify(&h, b"Hello, World!"), Ok(()));
        assert!(matches!(v.verify(&h, b"Hello, World?"), Err(VerifyError::Mismatch(_))));
    }

    #[test]
    fn the_standard_webhooks_spec_vector_verifies() {
        // From the Standard Webhooks specification's test vectors.
        let v = cfg(r#"{ kind = "standard_webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }"#);
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        ]);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(v.verify_at(&h, body, 1614265330), Ok(()));
        assert!(matches!(v.verify_at(&h, b"{}", 1614265330), Err(VerifyError::Mismatch(_))));
        assert!(matches!(v.verify_at(&h, body, 1614265330 + 301), Err(VerifyError::Stale { age: 301, .. })));
        assert!(matches!(v.verify_at(&h, body, 1614265330 - 301), Err(VerifyError::Future { ahead: 301, .. })));
        let ours = standard_webhooks_v1(
            &SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        )
        .unwrap();
        assert_eq!(ours, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_standard_webhooks_source_secret_follows_the_signing_key_rule() {
        use base64::Engine;
        let config = |bytes: usize| {
            let secret = format!("whsec_{}", B64.encode(vec![7u8; bytes]));
            let toml = format!(r#"{{ kind = "standard_webhooks", secret = "{secret}" }}"#);
            let w: std::collections::HashMap<String, VerificationConfig> = figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&format!("v = {toml}")),
            )
            .extract()
            .unwrap();
            Verifier::from_config(&w["v"])
        };
        // The same 24-to-64-byte rule as the secrets hookgate signs with (crate::signing::decode_secret).
        assert!(config(24).is_ok() && config(64).is_ok());
        for bytes in [1, 23, 65] {
            let err = config(bytes).unwrap_err();
            assert!(format!("{err:#}").contains("24 to 64 bytes"), "{bytes} bytes: {err:#}");
        }
    }

    #[test]
    fn standard_webhooks_ed25519_signatures_verify_among_several() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = format!("whpk_{}", B64.encode(sk.verifying_key().to_bytes()));
        let v = cfg(&format!(r#"{{ kind = "standard_webhooks", public_key = "{pk}" }}"#));
        let sig = sk.sign(b"msg_1.1700000000.{}");
        let value = format!("v1,{} v1a,{} v9,zzz", B64.encode([0u8; 32]), B64.encode(sig.to_bytes()));
        let h = headers(&[("webhook-id", "msg_1"), ("webhook-timestamp", "1700000000"), ("webhook-signature", &value)]);
        assert_eq!(v.verify_at(&h, b"{}", 1700000000), Ok(()));
        assert!(matches!(v.verify_at(&h, b"{ }", 1700000000), Err(VerifyError::Mismatch(_))));
    }

    #[test]
    fn stripe_accepts_any_of_several_v1_and_either_rotating_secret() {
        let v = cfg(r#"{ kind = "stripe", secret = ["whsec_old", "whsec_new"] }"#);
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let mac = |k: &str| hmac_sha256_hex(k.as_bytes(), &[b"1700000000.".as_slice(), body].concat());
        let value = format!("t=1700000000,v1={},v1={},v0=abc", hex::encode([1u8; 32]), mac("whsec_new"));
        let h = headers(&[("Stripe-Signature", &value)]);
        assert_eq!(v.verify_at(&h, body, 1700000100), Ok(()));
        assert!(matches!(v.verify_at(&h, body, 1700000301), Err(VerifyError::Stale { .. })));
        let h = headers(&[("Stripe-Signature", &format!("t=1700000000,v1={}", mac("whsec_other")))]);
        assert!(matches!(v.verify_at(&h, body, 1700000000), Err(VerifyError::Mismatch(_))));
    }

    #[test]
    fn generic_hmac_signs_a_timestamp_template_with_any_algorithm_and_encoding() {
        let v = cfg(r#"{ kind = "hmac", header = "X-Sig", algorithm = "sha512", encoding = "base64", prefix = "v1=",
                 secret = "k", signed = "{timestamp}.{body}", timestamp_header = "X-Ts", tolerance_secs = 10 }"#);
        let mut mac = Hmac::<Sha512>::new_from_slice(b"k").unwrap();
        mac.update(b"100.hello");
        let sig = format!("v1={}", B64.encode(mac.finalize().into_bytes()));
        let h = headers(&[("X-Sig", &sig), ("X-Ts", "100")]);
        assert_eq!(v.verify_at(&h, b"hello", 105), Ok(()));
        assert!(matches!(v.verify_at(&h, b"hello", 111), Err(VerifyError::Stale { age: 11, tolerance: 10, .. })));
        assert!(matches!(v.verify_at(&headers(&[("X-Sig", &sig)]), b"hello", 100), Err(VerifyError::Missing(_))));
    }

    #[test]
    fn sha1_hmac_in_hex_verifies() {
        let v =
            cfg(r#"{ kind = "hmac", header = "X-Hub-Signature", algorithm = "sha1", prefix = "sha1=", secret = "k" }"#);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"k").unwrap();
        mac.update(b"x");
        let h = headers(&[("X-Hub-Signature", &format!("sha1={}", hex::encode(mac.finalize().into_bytes())))]);
        assert_eq!(v.verify(&h, b"x"), Ok(()));
    }

    #[test]
    fn shopify_is_base64_hmac_of_the_body() {
        let v = cfg(r#"{ kind = "shopify", secret = "shpss" }"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"shpss").unwrap();
        mac.update(b"{}");
        let h = headers(&[("X-Shopify-Hmac-Sha256", &B64.encode(mac.finalize().into_bytes()))]);
        assert_eq!(v.verify(&h, b"{}"), Ok(()));
        let h = headers(&[("X-Shopify-Hmac-Sha256", "not base64!")]);
        assert!(matches!(v.verify(&h, b"{}"), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn basic_bearer_and_api_keys_accept_either_rotating_secret() {
        let v = cfg(r#"{ kind = "basic", username = "hook", password = ["old", "new"] }"#);
        let auth = |u: &str, p: &str| format!("Basic {}", B64.encode(format!("{u}:{p}")));
        assert_eq!(v.verify(&headers(&[("Authorization", &auth("hook", "new"))]), b""), Ok(()));
        assert_eq!(v.verify(&headers(&[("Authorization", &auth("hook", "old"))]), b""), Ok(()));
        for (u, p) in [("hook", "bad"), ("other", "new")] {
            let r = v.verify(&headers(&[("Authorization", &auth(u, p))]), b"");
            assert!(matches!(r, Err(VerifyError::Credentials(_))));
        }
        let v = cfg(r#"{ kind = "bearer", token = "t0k" }"#);
        assert_eq!(v.verify(&headers(&[("Authorization", "Bearer t0k")]), b""), Ok(()));
        assert!(matches!(v.verify(&headers(&[("Authorization", "Bearer t0")]), b""), Err(VerifyError::Credentials(_))));
        assert!(matches!(v.verify(&headers(&[("Authorization", "Basic t0k")]), b""), Err(VerifyError::Malformed(_))));
        let v = cfg(r#"{ kind = "api_key", header = "X-Api-Key", key = "k1" }"#);
        assert_eq!(v.verify(&headers(&[("X-Api-Key", "k1")]), b""), Ok(()));
    }

    #[test]
    fn the_credential_header_is_the_one_that_carries_a_secret() {
        let cases = [
            (r#"{ kind = "none" }"#, None),
            (r#"{ kind = "hmac_sha256", header = "X-Signature", secret = "s" }"#, None),
            (r#"{ kind = "hmac", header = "X-Sig", secret = "s" }"#, None),
            (r#"{ kind = "github", secret = "s" }"#, None),
            (r#"{ kind = "shopify", secret = "s" }"#, None),
            (r#"{ kind = "stripe", secret = "whsec_s" }"#, None),
            (r#"{ kind = "standard_webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }"#, None),
            (r#"{ kind = "basic", username = "u", password = "p" }"#, Some("authorization")),
            (r#"{ kind = "bearer", token = "t" }"#, Some("authorization")),
            // Lower-cased, as header maps name headers.
            (r#"{ kind = "api_key", header = "X-Api-Key", key = "k" }"#, Some("x-api-key")),
        ];
        for (toml, header) in cases {
            assert_eq!(cfg(toml).credential_header(), header, "{toml}");
        }
        assert_eq!(Verifier::none().credential_header(), None);
    }

    #[test]
    fn parsers_refuse_duplicates_and_garbage() {
        assert!(parse_stripe_signature("t=1,t=2,v1=00").is_err());
        assert!(parse_stripe_signature("v1=00").is_err());
        assert!(parse_stripe_signature("t=1").is_err());
        assert!(parse_stripe_signature("t=1,v1=zz").is_err());
        assert!(parse_webhook_signatures("").is_err());
        assert!(parse_webhook_signatures("v1,!!").is_err());
        assert!(parse_webhook_signatures("v2,abc").is_err());
        assert!(parse_basic_authorization("Basic").is_err());
        assert!(parse_basic_authorization("Basic Zm9v").is_err(), "no colon");
        assert!(parse_bearer_authorization("Bearer a b").is_err());
        assert!(parse_timestamp("-1").is_err());
        assert!(parse_timestamp("99999999999999999999").is_err());
        assert!(parse_template("{timestamp}").is_err());
    }

    #[test]
    fn debug_never_shows_keys() {
        let v = cfg(r#"{ kind = "stripe", secret = "whsec_topsecret" }"#);
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn header_parsers_never_panic(s in "\\PC{0,300}", raw in proptest::collection::vec(any::<u8>(), 0..300)) {
                let lossy = String::from_utf8_lossy(&raw);
                for v in [s.as_str(), &lossy] {
                    let _ = parse_stripe_signature(v);
                    let _ = parse_webhook_signatures(v);
                    let _ = parse_basic_authorization(v);
                    let _ = parse_bearer_authorization(v);
                    let _ = parse_timestamp(v);
                    let _ = parse_hmac_signature(v, Some("sha256="), SignatureEncoding::Hex);
                    let _ = parse_hmac_signature(v, None, SignatureEncoding::Base64);
                }
            }

            #[test]
            fn structured_stripe_headers_never_panic(
                items in proptest::collection::vec(("(t|v1|v0|x|)", "[0-9a-f=,]{0,70}"), 0..12)
            ) {
                let v = items.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                let _ = parse_stripe_signature(&v);
                let w = items.iter().map(|(k, v)| format!("{k},{v}")).collect::<Vec<_>>().join(" ");
                let _ = parse_webhook_signatures(&w);
            }
        }
    }
}
