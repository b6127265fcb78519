//! Sources: who may POST to `/ingest/{slug}`, how their requests are verified, and where their idempotency key
//! comes from. Declared sources are applied into PostgreSQL at start; the front end reads an in-memory snapshot
//! ([`SourceRegistry`]) and never queries PostgreSQL on the ingest path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use hookgate_store::sources::SourceSettings;
use hookgate_store::Pool;
use uuid::Uuid;

use hookgate_core::source::{IdempotencyConfig, SourceConfig, SourceOptions, VerificationConfig};
use hookgate_core::verify::{RequestHeaders, Verifier};

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
pub fn declared_rows(declared: &[SourceConfig]) -> anyhow::Result<Vec<SourceSettings<'_>>> {
    declared.iter().map(|s| SourceSettings::of(s).with_context(|| format!("source {:?}", s.slug))).collect()
}

/// actix-web's request headers as the verifier reads them.
pub struct Headers<'a>(pub &'a actix_web::http::header::HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name).map(|v| v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn actix_headers_reach_the_verifier_as_received() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("x-sig");
        h.append(name.clone(), HeaderValue::from_static("a"));
        h.append(name, HeaderValue::from_bytes(b"b\xff").unwrap());
        let headers = Headers(&h);
        let values: Vec<&[u8]> = headers.values("x-sig").collect();
        assert_eq!(values, [&b"a"[..], &b"b\xff"[..]]);
        assert_eq!(headers.values("x-other").count(), 0);
    }
}
