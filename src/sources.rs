//! Sources: who may POST to `/ingest/{slug}`, how their requests are verified, and where their idempotency key
//! comes from. Declared sources are applied into PostgreSQL at start; the front end reads an in-memory snapshot
//! ([`SourceRegistry`]) and never queries PostgreSQL on the ingest path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix_web::http::header::{HeaderMap, HeaderName};
use anyhow::Context;
use deadpool_postgres::Pool;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::{IdempotencyConfig, SourceConfig, VerificationConfig};

/// Checks a slug: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn validate_slug(slug: &str) -> Result<(), &'static str> {
    let ok_len = (1..=64).contains(&slug.len());
    let ok_chars = slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let ok_first = slug.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_first {
        Ok(())
    } else {
        Err("slug must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit")
    }
}

/// A source as the front end uses it.
#[derive(Debug)]
pub struct Source {
    pub id: Uuid,
    pub slug: String,
    pub max_body_bytes: usize,
    pub require_json: bool,
    pub idempotency: IdempotencyConfig,
    pub verifier: Verifier,
}

/// Why a request failed verification. The message is safe to return to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    Missing(String),
    #[error("the {0} header is malformed")]
    Malformed(String),
    #[error("the signature in the {0} header does not match the body")]
    Mismatch(String),
}

/// A source's request verification, ready to run.
pub enum Verifier {
    None,
    /// `previous`: while the secret rotates, the old secret and when it stops being accepted.
    HmacSha256 {
        header: HeaderName,
        prefix: Option<String>,
        secret: SecretString,
        previous: Option<(SecretString, chrono::DateTime<chrono::Utc>)>,
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::HmacSha256 { header, prefix, previous, .. } => f
                .debug_struct("HmacSha256")
                .field("header", header)
                .field("prefix", prefix)
                .field("secret", &"[REDACTED]")
                .field("previous_until", &previous.as_ref().map(|(_, until)| until))
                .finish(),
        }
    }
}

impl Verifier {
    fn from_config(
        cfg: &VerificationConfig,
        previous: Option<(SecretString, chrono::DateTime<chrono::Utc>)>,
    ) -> anyhow::Result<Self> {
        Ok(match cfg {
            VerificationConfig::None => Self::None,
            VerificationConfig::HmacSha256 { header, prefix, secret } => Self::HmacSha256 {
                header: HeaderName::try_from(header.as_str()).context("invalid signature header name")?,
                prefix: prefix.clone().filter(|p| !p.is_empty()),
                secret: secret.clone(),
                previous,
            },
        })
    }

    /// Verifies `body` against the request's headers. The comparison is constant-time (`Mac::verify_slice`).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let Self::HmacSha256 { header, prefix, secret, previous } = self else {
            return Ok(());
        };
        let name = || header.as_str().to_owned();
        let mut values = headers.get_all(header);
        let value = values.next().ok_or_else(|| VerifyError::Missing(name()))?;
        if values.next().is_some() {
            return Err(VerifyError::Malformed(name()));
        }
        let value = value.to_str().map_err(|_| VerifyError::Malformed(name()))?.trim();
        let hex_sig = match prefix {
            Some(p) => value.strip_prefix(p.as_str()).ok_or_else(|| VerifyError::Malformed(name()))?,
            None => value,
        };
        let sig = hex::decode(hex_sig).map_err(|_| VerifyError::Malformed(name()))?;
        if sig.is_empty() {
            return Err(VerifyError::Malformed(name()));
        }
        let matches = |key: &SecretString| {
            Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
                .map(|mut mac| {
                    mac.update(body);
                    mac.verify_slice(&sig).is_ok()
                })
                .unwrap_or(false)
        };
        if matches(secret) {
            return Ok(());
        }
        match previous {
            Some((old, until)) if chrono::Utc::now() < *until && matches(old) => Ok(()),
            _ => Err(VerifyError::Mismatch(name())),
        }
    }
}

/// Signs `body` as an HMAC-SHA256 source expects (hex, without prefix). Used by tests, benchmarks and examples.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The enabled sources by slug; swapped whole when sources change.
#[derive(Debug, Default)]
pub struct SourceRegistry {
    snapshot: RwLock<Arc<HashMap<String, Arc<Source>>>>,
}

impl SourceRegistry {
    pub fn get(&self, slug: &str) -> Option<Arc<Source>> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).get(slug).cloned()
    }

    pub fn replace(&self, sources: Vec<Source>) {
        let map = sources.into_iter().map(|s| (s.slug.clone(), Arc::new(s))).collect();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Loads the enabled sources from PostgreSQL.
    pub async fn reload(&self, pool: &Pool) -> anyhow::Result<usize> {
        let client = pool.get().await.context("Failed to get a connection to load sources")?;
        let rows = client
            .query(
                "SELECT id, slug, max_body_bytes, require_json, idempotency, verification, previous_secret,
                        previous_secret_until
                 FROM sources WHERE enabled",
                &[],
            )
            .await
            .context("Failed to load sources")?;
        let mut sources = Vec::with_capacity(rows.len());
        for row in rows {
            let slug: String = row.get(1);
            let idempotency: IdempotencyConfig = serde_json::from_value(row.get(4))
                .with_context(|| format!("source {slug}: invalid idempotency settings"))?;
            let verification: VerificationConfig = serde_json::from_value(row.get(5))
                .with_context(|| format!("source {slug}: invalid verification settings"))?;
            let previous =
                match (row.get::<_, Option<String>>(6), row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(7)) {
                    (Some(old), Some(until)) => Some((SecretString::from(old), until)),
                    _ => None,
                };
            sources.push(Source {
                id: row.get(0),
                max_body_bytes: row.get::<_, i32>(2) as usize,
                require_json: row.get(3),
                idempotency,
                verifier: Verifier::from_config(&verification, previous).with_context(|| format!("source {slug}"))?,
                slug,
            });
        }
        let n = sources.len();
        self.replace(sources);
        Ok(n)
    }
}

/// Upserts the declared sources by slug and disables declared sources no longer in the configuration.
pub async fn apply_declared(pool: &Pool, declared: &[SourceConfig]) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("Failed to get a connection to apply sources")?;
    let tx = client.transaction().await?;
    for s in declared {
        let max_body = i32::try_from(s.max_body_bytes).context("max_body_bytes too large")?;
        tx.execute(
            "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, enabled, declared)
             VALUES ($1, $2, $3, $4, $5, $6, true, true)
             ON CONFLICT (slug) DO UPDATE SET
                max_body_bytes = EXCLUDED.max_body_bytes, require_json = EXCLUDED.require_json,
                idempotency = EXCLUDED.idempotency, verification = EXCLUDED.verification,
                enabled = true, declared = true, updated_at = now()",
            &[
                &Uuid::now_v7(),
                &s.slug,
                &max_body,
                &s.require_json,
                &serde_json::to_value(&s.idempotency)?,
                &serde_json::to_value(&s.verification)?,
            ],
        )
        .await
        .with_context(|| format!("Failed to apply source {}", s.slug))?;
    }
    let slugs: Vec<&str> = declared.iter().map(|s| s.slug.as_str()).collect();
    tx.execute(
        "UPDATE sources SET enabled = false, updated_at = now() WHERE declared AND enabled AND slug <> ALL($1)",
        &[&slugs],
    )
    .await
    .context("Failed to disable sources removed from the configuration")?;
    tx.commit().await.context("Failed to commit declared sources")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn verifier(prefix: Option<&str>, secret: &str) -> Verifier {
        Verifier::HmacSha256 {
            header: HeaderName::from_static("x-hub-signature-256"),
            prefix: prefix.map(str::to_owned),
            secret: SecretString::from(secret),
            previous: None,
        }
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
}
