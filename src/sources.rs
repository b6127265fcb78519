//! Sources: who may POST to `/ingest/{slug}`, how their requests are verified, and where their idempotency key
//! comes from. Declared sources are applied into PostgreSQL at start; the front end reads an in-memory snapshot
//! ([`SourceRegistry`]) and never queries PostgreSQL on the ingest path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use hookgate_store::Pool;
use uuid::Uuid;

use crate::config::{IdempotencyConfig, SourceConfig, SourceOptions, VerificationConfig};
pub use crate::verify::{hmac_sha256_hex, Verifier, VerifyError};

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
    /// Event type, dedupe window, CloudEvents mode and handshake origins.
    pub options: SourceOptions,
    pub verifier: Verifier,
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
        let mut sources = Vec::new();
        for row in hookgate_store::sources::load_enabled(pool).await? {
            let slug = row.slug;
            let idempotency: IdempotencyConfig = serde_json::from_value(row.idempotency)
                .with_context(|| format!("source {slug}: invalid idempotency settings"))?;
            let mut verification: VerificationConfig = serde_json::from_value(row.verification)
                .with_context(|| format!("source {slug}: invalid verification settings"))?;
            let options: SourceOptions =
                serde_json::from_value(row.options).with_context(|| format!("source {slug}: invalid options"))?;
            // While a secret rotates (admin API), the previous one stays valid until its time.
            if let (Some(old), Some(until)) = (row.previous_secret, row.previous_secret_until) {
                if until > chrono::Utc::now() {
                    verification.add_secret(secrecy::SecretString::from(old));
                }
            }
            sources.push(Source {
                id: row.id,
                max_body_bytes: usize::try_from(row.max_body_bytes).unwrap_or(0),
                require_json: row.require_json,
                idempotency,
                options,
                verifier: Verifier::from_config(&verification).with_context(|| format!("source {slug}"))?,
                slug,
            });
        }
        let n = sources.len();
        self.replace(sources);
        Ok(n)
    }
}

/// The declared sources as the store applies them ([`hookgate_store::apply_declared`]).
pub fn declared_rows(declared: &[SourceConfig]) -> anyhow::Result<Vec<hookgate_store::sources::DeclaredSource<'_>>> {
    declared
        .iter()
        .map(|s| {
            Ok(hookgate_store::sources::DeclaredSource {
                slug: &s.slug,
                max_body_bytes: i32::try_from(s.max_body_bytes).context("max_body_bytes too large")?,
                require_json: s.require_json,
                idempotency: serde_json::to_value(s.effective_idempotency())?,
                verification: serde_json::to_value(&s.verification)?,
                options: serde_json::to_value(s.options())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secrets;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    use secrecy::SecretString;

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
}
