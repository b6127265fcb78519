//! Operational notifications as rows: hookgate's own source and route (reconciled at start, like the declared
//! objects), and the insert of one notification: an event of that source with one delivery to the notification
//! destination, so that it is signed, retried, dead-lettered, listed and replayable like any other delivery.

use anyhow::Context;
use chrono::{DateTime, Utc};
use hookgate_core::notification::{SYSTEM_ROUTE_ID, SYSTEM_SLUG, SYSTEM_SOURCE_ID};
use hookgate_core::source::SourceConfig;
use hookgate_core::state::DeliveryState;
use uuid::Uuid;

use crate::deliveries::{insert_planned, NewDelivery};
use crate::error::StoreResult;
use crate::events::{insert_new, EventRow};
use crate::Pool;

/// The notification destination, as resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationDestination {
    pub id: Uuid,
    pub slug: String,
}

/// Reconciles hookgate's own source and route (part of [`crate::apply_declared`]'s transaction, after the declared
/// objects): the source `hookgate` always exists, disabled (so never ingestible) and marked declared (so the admin
/// API never edits it); the route `hookgate` leads from it to `destination` when notifications are on (which must
/// name an existing destination), and is disabled when they are off. Answers the destination.
pub(crate) async fn reconcile(
    tx: &deadpool_postgres::Transaction<'_>,
    destination: Option<&str>,
) -> anyhow::Result<Option<NotificationDestination>> {
    let model: SourceConfig = serde_json::from_value(serde_json::json!({"slug": SYSTEM_SLUG, "enabled": false}))
        .context("hookgate's own source")?;
    let s = crate::sources::SourceSettings::of(&model).context("hookgate's own source")?;
    let n = tx
        .execute(
            "INSERT INTO sources (id, slug, max_body_bytes, require_json, idempotency, verification, options, enabled,
                                  declared)
             VALUES ($1, $2, $3, true, $4, $5, $6, false, true)
             ON CONFLICT (slug) DO UPDATE SET enabled = false, declared = true
             WHERE sources.id = $1",
            &[&SYSTEM_SOURCE_ID, &SYSTEM_SLUG, &s.max_body_bytes, &s.idempotency, &s.verification, &s.options],
        )
        .await
        .context("Failed to reconcile hookgate's own source")?;
    if n == 0 {
        anyhow::bail!(
            "a source named {SYSTEM_SLUG:?} exists: that slug is reserved for hookgate's own notifications; rename \
             the source (admin API or configuration) before starting this version"
        );
    }
    let Some(slug) = destination else {
        tx.execute("UPDATE routes SET enabled = false WHERE id = $1 AND enabled", &[&SYSTEM_ROUTE_ID])
            .await
            .context("Failed to disable hookgate's own route")?;
        return Ok(None);
    };
    let Some(row) = tx
        .query_opt("SELECT id FROM destinations WHERE slug = $1", &[&slug])
        .await
        .context("Failed to look up the notification destination")?
    else {
        anyhow::bail!(
            "notifications.destination = {slug:?} names no destination: declare it in [[destinations]], or create it \
             through the admin API before turning notifications on"
        );
    };
    let id: Uuid = row.try_get(0)?;
    let n = tx
        .execute(
            "INSERT INTO routes (id, slug, source_id, destination_id, enabled, declared)
             VALUES ($1, $2, $3, $4, true, true)
             ON CONFLICT (slug) DO UPDATE SET destination_id = EXCLUDED.destination_id, source_id = EXCLUDED.source_id,
                filter = NULL, transform = NULL, enabled = true, declared = true, updated_at = now()
             WHERE routes.id = $1",
            &[&SYSTEM_ROUTE_ID, &SYSTEM_SLUG, &SYSTEM_SOURCE_ID, &id],
        )
        .await
        .context("Failed to reconcile hookgate's own route")?;
    if n == 0 {
        anyhow::bail!(
            "a route named {SYSTEM_SLUG:?} exists: that slug is reserved for hookgate's own notifications; rename \
             the route before starting this version"
        );
    }
    Ok(Some(NotificationDestination { id, slug: slug.to_owned() }))
}

/// One notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    /// The same on every replica that observes the same happening: stored once.
    pub key: &'a str,
    /// `destination.disabled`, `delivery.dead`, …
    pub event_type: &'a str,
    pub body: &'a [u8],
    /// The notification destination.
    pub destination_id: Uuid,
    pub received_at: DateTime<Utc>,
}

/// Stores a notification in a short transaction of its own: the event (its key first, in `event_keys`: a key
/// already stored by another replica stores nothing) and one pending delivery to the notification destination by
/// hookgate's own route; the schedulers are woken at COMMIT. Answers whether it was new.
pub async fn insert(pool: &Pool, n: &NewNotification<'_>) -> StoreResult<bool> {
    let mut client = crate::connect(pool).await?;
    let tx = crate::begin(&mut client).await?;
    let id = Uuid::now_v7();
    let headers = serde_json::json!({});
    let event = EventRow {
        id,
        source_id: SYSTEM_SOURCE_ID,
        idempotency_key: n.key,
        received_at: n.received_at,
        content_type: Some("application/json"),
        headers: &headers,
        body: n.body,
        event_type: Some(n.event_type.into()),
        // No request stored it: its deliveries' attempts get the trace derived from the event id.
        traceparent: None,
    };
    if !insert_new(&tx, std::slice::from_ref(&event)).await?.contains(&id) {
        crate::rollback(tx).await?;
        return Ok(false);
    }
    let delivery = NewDelivery {
        id: Uuid::now_v7(),
        event_id: id,
        route_id: SYSTEM_ROUTE_ID,
        destination_id: n.destination_id,
        state: DeliveryState::Pending,
        payload: None,
        last_error: None,
        created_at: n.received_at,
        needs_routing: false,
        lease: None,
    };
    insert_planned(&tx, &[delivery]).await?;
    crate::channels::notify_deliveries(&tx, "notification").await?;
    crate::commit(tx).await?;
    Ok(true)
}
