//! The routing catalog as every node serves it: core's [`Catalog`] in a [`Snapshot`], loaded from the store's
//! `destinations` and `routes` rows (and the configuration's declared ones written there at start). The front end,
//! the Scheduler, the Deliverers and the ResultWriter read it; the Router reloads it when PostgreSQL says it changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hookgate_core::catalog::{
    validate_headers, Catalog, Destination, DestinationSpec, DestinationTls, Route, RouteSpec,
};
use hookgate_core::internal_events::label_destinations;
use hookgate_core::signing::{SigningKey, SigningSecret};
use hookgate_core::snapshot::Snapshot;
use hookgate_core::state::DestinationState;
use hookgate_store::catalog::{DeclaredDestination, DeclaredRoute, DestinationTlsColumns};
use hookgate_store::Pool;

/// The routing catalog every node serves from, swapped whole on reload.
pub type SharedCatalog = Snapshot<Catalog>;

/// Loads destinations and enabled routes from PostgreSQL, compiles the routes' programs, and swaps them in.
pub async fn reload(catalog: &SharedCatalog, pool: &Pool) -> anyhow::Result<()> {
    let loaded = load(pool).await?;
    label_destinations(loaded.destinations.values().map(|d| (d.id, d.slug.as_str())));
    catalog.replace(loaded);
    Ok(())
}

async fn load(pool: &Pool) -> anyhow::Result<Catalog> {
    let (destinations, routes) = hookgate_store::catalog::load(pool).await?;
    let mut catalog = Catalog::default();
    for row in destinations {
        let slug = row.slug;
        let secrets: Vec<String> = serde_json::from_value(row.signing_secrets).unwrap_or_default();
        let secrets = secrets
            .iter()
            .map(|s| SigningSecret::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("destination {slug}: {e}"))?;
        let keys: Vec<String> = serde_json::from_value(row.signing_keys).unwrap_or_default();
        let keys = keys
            .iter()
            .map(|k| SigningKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("destination {slug}: signing_keys: {e}"))?;
        // Checked when set; a stored value that no longer passes is dropped (with a warning) rather than stopping
        // every other destination's deliveries.
        let headers = serde_json::from_value::<BTreeMap<String, String>>(row.headers)
            .map_err(|e| e.to_string())
            .and_then(|h| validate_headers(&h))
            .unwrap_or_else(|e| {
                tracing::warn!(message = "A destination's stored headers are unusable; sent without them.", destination = %slug, error = %e);
                Vec::new()
            });
        let tls = DestinationTls { ca_pem: row.tls.ca_pem, cert_pem: row.tls.cert_pem, key_pem: row.tls.key_pem };
        let d = Destination {
            id: row.id,
            url: row.url,
            timeout: Duration::from_millis(u64::try_from(row.timeout_ms).unwrap_or(0)),
            max_in_flight: u32::try_from(row.max_in_flight).unwrap_or(0),
            rate_limit: row.rate_limit,
            retry: serde_json::from_value(row.retry).with_context(|| format!("destination {slug}: retry"))?,
            secrets,
            keys,
            fifo: row.fifo,
            state: DestinationState::parse(&row.state).unwrap_or_default(),
            headers,
            tls: (!tls.is_empty()).then(|| Arc::new(tls)),
            slug,
        };
        catalog.destinations.insert(d.id, Arc::new(d));
    }
    for row in routes {
        let spec = RouteSpec {
            slug: row.slug,
            source: String::new(),
            destination: String::new(),
            filter: row.filter,
            transform: row.transform,
        };
        let (filter, transform) = spec.compile().map_err(|e| anyhow::anyhow!("route {}: {e}", spec.slug))?;
        let route = Route {
            id: row.id,
            slug: spec.slug,
            source_id: row.source_id,
            destination_id: row.destination_id,
            filter,
            transform,
        };
        catalog.routes_by_source.entry(route.source_id).or_default().push(Arc::new(route));
    }
    Ok(catalog)
}

/// The declared destinations and routes as the store applies them ([`hookgate_store::apply_declared`]); `tls`
/// holds each destination's TLS material as read from its files (in the same order; missing entries: none).
pub fn declared_rows<'a>(
    destinations: &'a [DestinationSpec],
    tls: &[DestinationTls],
    routes: &'a [RouteSpec],
) -> anyhow::Result<(Vec<DeclaredDestination<'a>>, Vec<DeclaredRoute<'a>>)> {
    let destinations = destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let tls = tls.get(i).cloned().unwrap_or_default();
            Ok(DeclaredDestination {
                slug: &d.slug,
                url: &d.url,
                timeout_ms: i32::try_from(d.timeout_ms).context("timeout_ms too large")?,
                max_in_flight: i32::try_from(d.max_in_flight).context("max_in_flight too large")?,
                rate_limit: d.rate_limit,
                retry: serde_json::to_value(&d.retry)?,
                signing_secrets: serde_json::to_value(&d.signing_secrets)?,
                signing_keys: serde_json::to_value(&d.signing_keys)?,
                fifo: d.fifo,
                state: d.state.as_str(),
                headers: serde_json::to_value(&d.headers)?,
                tls: DestinationTlsColumns { ca_pem: tls.ca_pem, cert_pem: tls.cert_pem, key_pem: tls.key_pem },
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let routes = routes
        .iter()
        .map(|r| DeclaredRoute {
            slug: &r.slug,
            source: &r.source,
            destination: &r.destination,
            filter: r.filter.as_deref(),
            transform: r.transform.as_deref(),
        })
        .collect();
    Ok((destinations, routes))
}
