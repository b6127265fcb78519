//! The enabled sources as the front end serves them: each one's settings with its compiled verifier, by slug. The
//! Router reloads them with the catalog; the ingest path reads the snapshot and never queries PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use hookgate_core::internal_events::{emit, SourceUnusable};
use hookgate_core::snapshot::Snapshot;
use hookgate_core::source::{IdempotencyConfig, SourceOptions, VerificationConfig};
use hookgate_core::verify::Verifier;
use hookgate_store::Pool;
use uuid::Uuid;

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

/// The enabled sources by slug.
pub type Sources = HashMap<String, Arc<Source>>;

/// The sources every node serves from, swapped whole on reload.
pub type SourceRegistry = Snapshot<Sources>;

/// Loads the enabled sources from PostgreSQL, compiles their verifiers, and swaps them in; answers how many. A source
/// whose stored settings do not compile is left out (its requests answer 404) and logged: one bad row never keeps
/// the others from being served, or a node from starting.
pub async fn reload(registry: &SourceRegistry, pool: &Pool) -> anyhow::Result<usize> {
    let mut sources = Vec::new();
    for row in hookgate_store::sources::load_enabled(pool).await? {
        let slug = row.slug.clone();
        match compile(row) {
            Ok(source) => sources.push(source),
            Err(error) => emit(SourceUnusable { source: &slug, error: &format!("{error:#}") }),
        }
    }
    let n = sources.len();
    registry.replace(sources.into_iter().map(|s| (s.slug.clone(), Arc::new(s))).collect());
    Ok(n)
}

/// A stored source, ready for ingest.
fn compile(row: hookgate_store::sources::SourceRecord) -> anyhow::Result<Source> {
    {
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
        Ok(Source {
            id: row.id,
            max_body_bytes: usize::try_from(row.max_body_bytes).unwrap_or(0),
            require_json: row.require_json,
            idempotency,
            options,
            verifier: Verifier::from_config(&verification).with_context(|| format!("source {slug}"))?,
            slug,
        })
    }
}
