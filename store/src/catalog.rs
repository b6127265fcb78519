//! The `destinations` and `routes` tables as the routing snapshot reads them, and the declared ones applied at
//! start.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use uuid::Uuid;

use crate::channels::CATALOG_CHANNEL;
use crate::Pool;

/// A destination as stored.
#[derive(Debug, Clone)]
pub struct DestinationRow {
    pub id: Uuid,
    pub slug: String,
    pub url: String,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    pub retry: Value,
    /// Its signing secrets, then the rotated-out ones still within their grace period (they keep signing).
    pub signing_secrets: Value,
    /// Its ed25519 signing keys (`whsk_…`, an array of strings).
    pub signing_keys: Value,
    pub fifo: bool,
    pub state: String,
    /// Headers sent on every attempt (an object of strings).
    pub headers: Value,
    pub tls: DestinationTlsColumns,
}

/// A destination's own TLS material as stored (PEM text); the key is a secret.
#[derive(Debug, Clone, Default)]
pub struct DestinationTlsColumns {
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<SecretString>,
}

impl DestinationTlsColumns {
    pub(crate) fn key(&self) -> Option<&str> {
        self.key_pem.as_ref().map(|k| k.expose_secret())
    }
}

/// An enabled route as the routing snapshot reads it.
#[derive(Debug, Clone)]
pub struct EnabledRoute {
    pub id: Uuid,
    pub slug: String,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    pub filter: Option<String>,
    pub transform: Option<String>,
}

/// Every destination, and the enabled routes, read on one connection.
pub async fn load(pool: &Pool) -> anyhow::Result<(Vec<DestinationRow>, Vec<EnabledRoute>)> {
    let client = pool.get().await.context("Failed to get a connection to load the catalog")?;
    let destinations = client
        .query(
            "SELECT id, slug, url, timeout_ms, max_in_flight, rate_limit, retry,
                    signing_secrets || COALESCE((SELECT jsonb_agg(r->'secret') FROM jsonb_array_elements(retiring_secrets) r
                                                 WHERE (r->>'until')::timestamptz > now()), '[]'::jsonb),
                    fifo, state, headers, tls_ca_pem, tls_cert_pem, tls_key_pem, signing_keys
             FROM destinations",
            &[],
        )
        .await
        .context("Failed to load destinations")?
        .iter()
        .map(|row| {
            Ok(DestinationRow {
                id: row.try_get(0)?,
                slug: row.try_get(1)?,
                url: row.try_get(2)?,
                timeout_ms: row.try_get(3)?,
                max_in_flight: row.try_get(4)?,
                rate_limit: row.try_get(5)?,
                retry: row.try_get(6)?,
                signing_secrets: row.try_get(7)?,
                signing_keys: row.try_get(14)?,
                fifo: row.try_get(8)?,
                state: row.try_get(9)?,
                headers: row.try_get(10)?,
                tls: DestinationTlsColumns {
                    ca_pem: row.try_get(11)?,
                    cert_pem: row.try_get(12)?,
                    key_pem: row.try_get::<_, Option<String>>(13)?.map(SecretString::from),
                },
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .context("Failed to read a destination row")?;
    let routes = client
        .query("SELECT id, slug, source_id, destination_id, filter, transform FROM routes WHERE enabled", &[])
        .await
        .context("Failed to load routes")?
        .iter()
        .map(|row| {
            Ok(EnabledRoute {
                id: row.try_get(0)?,
                slug: row.try_get(1)?,
                source_id: row.try_get(2)?,
                destination_id: row.try_get(3)?,
                filter: row.try_get(4)?,
                transform: row.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .context("Failed to read a route row")?;
    Ok((destinations, routes))
}

/// A destination declared in the configuration, as it is stored.
#[derive(Debug, Clone)]
pub struct DeclaredDestination<'a> {
    pub slug: &'a str,
    pub url: &'a str,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    pub retry: Value,
    pub signing_secrets: Value,
    /// ed25519 signing keys (an array of `whsk_…` strings).
    pub signing_keys: Value,
    pub fifo: bool,
    pub state: &'a str,
    /// Headers sent on every attempt (an object of strings).
    pub headers: Value,
    /// The TLS material read from the files the configuration names.
    pub tls: DestinationTlsColumns,
}

/// A route declared in the configuration: its source and destination by slug.
#[derive(Debug, Clone)]
pub struct DeclaredRoute<'a> {
    pub slug: &'a str,
    pub source: &'a str,
    pub destination: &'a str,
    pub filter: Option<&'a str>,
    pub transform: Option<&'a str>,
}

/// Upserts declared destinations and routes by slug, and notifies every node (part of [`crate::apply_declared`]'s
/// transaction). Declared routes and destinations no longer in the configuration are disabled (their history stays).
/// A destination that hookgate disabled itself (`disabled_reason` starting with `auto:`) keeps that state across
/// restarts.
pub(crate) async fn apply_declared(
    tx: &deadpool_postgres::Transaction<'_>,
    destinations: &[DeclaredDestination<'_>],
    routes: &[DeclaredRoute<'_>],
) -> anyhow::Result<()> {
    for d in destinations {
        tx.execute(
            "INSERT INTO destinations (id, slug, url, timeout_ms, max_in_flight, rate_limit, retry, signing_secrets,
                                       fifo, state, declared, headers, tls_ca_pem, tls_cert_pem, tls_key_pem,
                                       signing_keys)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, true, $11, $12, $13, $14, $15)
             ON CONFLICT (slug) DO UPDATE SET url = EXCLUDED.url, timeout_ms = EXCLUDED.timeout_ms,
                max_in_flight = EXCLUDED.max_in_flight, rate_limit = EXCLUDED.rate_limit, retry = EXCLUDED.retry,
                signing_secrets = EXCLUDED.signing_secrets, fifo = EXCLUDED.fifo, declared = true,
                headers = EXCLUDED.headers, tls_ca_pem = EXCLUDED.tls_ca_pem, tls_cert_pem = EXCLUDED.tls_cert_pem,
                tls_key_pem = EXCLUDED.tls_key_pem, signing_keys = EXCLUDED.signing_keys,
                -- A destination hookgate disabled itself (410, continuous failure) stays disabled until an
                -- operator acts; restarting a node must not silently resume it.
                state = CASE WHEN destinations.disabled_reason LIKE 'auto:%' THEN destinations.state
                             ELSE EXCLUDED.state END,
                disabled_reason = CASE WHEN destinations.disabled_reason LIKE 'auto:%'
                                       THEN destinations.disabled_reason END,
                updated_at = now()",
            &[
                &Uuid::now_v7(),
                &d.slug,
                &d.url,
                &d.timeout_ms,
                &d.max_in_flight,
                &d.rate_limit,
                &d.retry,
                &d.signing_secrets,
                &d.fifo,
                &d.state,
                &d.headers,
                &d.tls.ca_pem,
                &d.tls.cert_pem,
                &d.tls.key(),
                &d.signing_keys,
            ],
        )
        .await
        .with_context(|| format!("Failed to apply destination {}", d.slug))?;
    }
    let slugs: Vec<&str> = destinations.iter().map(|d| d.slug).collect();
    tx.execute(
        "UPDATE destinations SET state = 'disabled', disabled_reason = 'removed from the configuration',
                updated_at = now()
         WHERE declared AND state <> 'disabled' AND slug <> ALL($1)",
        &[&slugs],
    )
    .await?;
    for r in routes {
        let n = tx
            .execute(
                "INSERT INTO routes (id, slug, source_id, destination_id, filter, transform, enabled, declared)
                 SELECT $1, $2, s.id, d.id, $5, $6, true, true
                 FROM sources s, destinations d WHERE s.slug = $3 AND d.slug = $4
                 ON CONFLICT (slug) DO UPDATE SET source_id = EXCLUDED.source_id,
                    destination_id = EXCLUDED.destination_id, filter = EXCLUDED.filter,
                    transform = EXCLUDED.transform, enabled = true, declared = true, updated_at = now()",
                &[&Uuid::now_v7(), &r.slug, &r.source, &r.destination, &r.filter, &r.transform],
            )
            .await
            .with_context(|| format!("Failed to apply route {}", r.slug))?;
        if n == 0 {
            anyhow::bail!("route {}: source {:?} or destination {:?} does not exist", r.slug, r.source, r.destination);
        }
    }
    let slugs: Vec<&str> = routes.iter().map(|r| r.slug).collect();
    tx.execute(
        "UPDATE routes SET enabled = false, updated_at = now() WHERE declared AND enabled AND slug <> ALL($1)",
        &[&slugs],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, 'declared')", &[&CATALOG_CHANNEL]).await?;
    Ok(())
}
