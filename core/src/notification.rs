//! Operational notifications: what hookgate tells an operator about itself, as Standard Webhooks events delivered
//! through its own delivery engine to the `[notifications] destination`.
//!
//! This module is the pure half: the reserved `hookgate` source and route the notifications are stored under, the
//! [`Happening`]s the rest of hookgate reports, and what each becomes — its type, its idempotency key (the same on
//! every replica that observes the same happening, so that the key's primary key in PostgreSQL stores it once) and
//! its body `{"type": …, "timestamp": …, "data": {…}}`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// The slug of hookgate's own source and route: reserved, refused for any source or route of the configuration or
/// the admin API. The source is never ingestible (`/ingest/hookgate` finds no source) and neither is editable.
pub const SYSTEM_SLUG: &str = "hookgate";

/// The id of hookgate's own source (fixed, so that a source an operator named `hookgate` before the slug was
/// reserved is told apart and refused at start).
pub const SYSTEM_SOURCE_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_686f_6f6b_6761);

/// The id of hookgate's own route, from its source to the notification destination.
pub const SYSTEM_ROUTE_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_686f_6f6b_6772);

/// Whether `slug` is reserved for hookgate's own objects.
pub fn is_reserved(slug: &str) -> bool {
    slug == SYSTEM_SLUG
}

/// The types of notification, as they appear in `type` (and in `events.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationType {
    DestinationDisabled,
    CircuitOpened,
    CircuitClosed,
    DeliveryDead,
    BacklogAgeExceeded,
}

impl NotificationType {
    pub const ALL: [Self; 5] = [
        Self::DestinationDisabled,
        Self::CircuitOpened,
        Self::CircuitClosed,
        Self::DeliveryDead,
        Self::BacklogAgeExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DestinationDisabled => "destination.disabled",
            Self::CircuitOpened => "destination.circuit_opened",
            Self::CircuitClosed => "destination.circuit_closed",
            Self::DeliveryDead => "delivery.dead",
            Self::BacklogAgeExceeded => "backlog.age_exceeded",
        }
    }
}

/// Why deliveries ended `dead` (the `reason` label of `hookgate_deliveries_dead_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadReason {
    /// Their retry schedule was over (or the destination answered 410 on the last try).
    Exhausted,
    /// They could never be attempted (their event is gone, a column is unreadable).
    Unattemptable,
    /// Retention dropped their partition while they were still pending.
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Unattemptable => "unattemptable",
            Self::Expired => "expired",
        }
    }
}

/// Whose circuit breaker a circuit change was seen in: the cluster's (Redis) or this node's fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitScope {
    Cluster,
    Local,
}

/// Something a notification is about, as the part of hookgate that saw it reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    /// A destination was disabled by hookgate (410 Gone, or failing continuously).
    Disabled { destination: Uuid, slug: String, reason: String, disabled_at: DateTime<Utc> },
    /// A destination's circuit opened; `opened_at_ms` is the open period's start on the breaker's clock (Redis's
    /// for the cluster), the same on every node.
    CircuitOpened { destination: Uuid, opened_at_ms: i64, open_period_ms: u64, opens: u32, scope: CircuitScope },
    /// A destination's circuit closed fully again after being opened at `opened_at_ms`.
    CircuitClosed { destination: Uuid, opened_at_ms: i64, scope: CircuitScope },
    /// `count` deliveries of a destination ended `dead`.
    Dead { destination: Uuid, count: u64, reason: DeadReason },
}

impl Happening {
    /// The destination it is about.
    pub fn destination(&self) -> Uuid {
        match self {
            Self::Disabled { destination, .. }
            | Self::CircuitOpened { destination, .. }
            | Self::CircuitClosed { destination, .. }
            | Self::Dead { destination, .. } => *destination,
        }
    }

    pub fn kind(&self) -> NotificationType {
        match self {
            Self::Disabled { .. } => NotificationType::DestinationDisabled,
            Self::CircuitOpened { .. } => NotificationType::CircuitOpened,
            Self::CircuitClosed { .. } => NotificationType::CircuitClosed,
            Self::Dead { .. } => NotificationType::DeliveryDead,
        }
    }
}

/// A notification ready to store: its type, its idempotency key, and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub kind: NotificationType,
    /// The same on every replica that observes the same happening (see each constructor).
    pub key: String,
    pub destination: Uuid,
    pub timestamp: DateTime<Utc>,
    pub data: Value,
}

impl Notification {
    /// The body delivered: `{"type": …, "timestamp": …, "data": {…}}` (RFC 3339 timestamp, UTC).
    pub fn body(&self) -> Vec<u8> {
        let envelope = json!({
            "type": self.kind.as_str(),
            "timestamp": self.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": self.data,
        });
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// `destination.disabled`, once per disablement (keyed by the destination and the moment it was disabled).
    pub fn disabled(destination: Uuid, slug: &str, reason: &str, disabled_at: DateTime<Utc>, node: &str) -> Self {
        Self {
            kind: NotificationType::DestinationDisabled,
            key: format!("destination.disabled:{destination}:{}", disabled_at.timestamp_micros()),
            destination,
            timestamp: disabled_at,
            data: json!({
                "destination": {"id": destination, "slug": slug},
                "reason": reason,
                "gone": reason.contains("410"),
                "disabled_at": disabled_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "node": node,
            }),
        }
    }

    /// `destination.circuit_opened`, once per open period (keyed by its start; a node's own fallback breaker is
    /// keyed by the node too, as each node has its own).
    #[allow(clippy::too_many_arguments)]
    pub fn circuit_opened(
        destination: Uuid,
        slug: &str,
        opened_at_ms: i64,
        open_period_ms: u64,
        opens: u32,
        scope: CircuitScope,
        node: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            kind: NotificationType::CircuitOpened,
            key: format!("circuit_opened:{destination}:{}", circuit_identity(opened_at_ms, scope, node)),
            destination,
            timestamp: now,
            data: json!({
                "destination": {"id": destination, "slug": slug},
                "circuit": {
                    "opened_at_ms": opened_at_ms,
                    "open_period_ms": open_period_ms,
                    "opens_since_closed": opens,
                    "scope": scope_name(scope),
                },
                "node": node,
            }),
        }
    }

    /// `destination.circuit_closed`, once per return to closed (keyed by the start of the open period it ends).
    pub fn circuit_closed(
        destination: Uuid,
        slug: &str,
        opened_at_ms: i64,
        scope: CircuitScope,
        node: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            kind: NotificationType::CircuitClosed,
            key: format!("circuit_closed:{destination}:{}", circuit_identity(opened_at_ms, scope, node)),
            destination,
            timestamp: now,
            data: json!({
                "destination": {"id": destination, "slug": slug},
                "circuit": {"opened_at_ms": opened_at_ms, "scope": scope_name(scope)},
                "node": node,
            }),
        }
    }

    /// `delivery.dead`: the deliveries of one destination this node saw end `dead` within one aggregation window
    /// (keyed by the node and the window: each node reports what it saw, once).
    pub fn dead(
        destination: Uuid,
        slug: &str,
        counts: &[(DeadReason, u64)],
        window_start: DateTime<Utc>,
        window_secs: u64,
        node: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let by_reason: serde_json::Map<String, Value> =
            counts.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect();
        Self {
            kind: NotificationType::DeliveryDead,
            key: format!("delivery.dead:{destination}:{node}:{}", window_start.timestamp()),
            destination,
            timestamp: now,
            data: json!({
                "destination": {"id": destination, "slug": slug},
                "count": total,
                "by_reason": by_reason,
                "window": {
                    "start": window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
                    "seconds": window_secs,
                },
                "node": node,
            }),
        }
    }

    /// `backlog.age_exceeded`: at most one per destination per `repeat_secs` period (keyed by the period's number).
    #[allow(clippy::too_many_arguments)]
    pub fn backlog_age_exceeded(
        destination: Uuid,
        slug: &str,
        oldest_age_secs: f64,
        threshold_secs: u64,
        pending: i64,
        repeat_secs: u64,
        node: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let period = now.timestamp().div_euclid(repeat_secs.max(1) as i64);
        Self {
            kind: NotificationType::BacklogAgeExceeded,
            key: format!("backlog.age_exceeded:{destination}:{period}"),
            destination,
            timestamp: now,
            data: json!({
                "destination": {"id": destination, "slug": slug},
                "oldest_pending_age_secs": (oldest_age_secs * 1000.0).round() / 1000.0,
                "threshold_secs": threshold_secs,
                "pending": pending,
                "node": node,
            }),
        }
    }
}

fn circuit_identity(opened_at_ms: i64, scope: CircuitScope, node: &str) -> String {
    match scope {
        CircuitScope::Cluster => opened_at_ms.to_string(),
        CircuitScope::Local => format!("{node}:{opened_at_ms}"),
    }
}

fn scope_name(scope: CircuitScope) -> &'static str {
    match scope {
        CircuitScope::Cluster => "cluster",
        CircuitScope::Local => "node",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_a_standard_webhooks_event_with_its_type_and_data() {
        let id = Uuid::now_v7();
        let at = "2024-05-01T10:00:00.250Z".parse::<DateTime<Utc>>().unwrap();
        let n = Notification::disabled(id, "orders", "auto: 410 Gone", at, "0");
        let body: Value = serde_json::from_slice(&n.body()).unwrap();
        assert_eq!(body["type"], "destination.disabled");
        assert_eq!(body["timestamp"], "2024-05-01T10:00:00.250Z");
        assert_eq!(body["data"]["destination"]["slug"], "orders");
        assert_eq!(body["data"]["destination"]["id"], id.to_string());
        assert_eq!(body["data"]["gone"], true);
        assert_eq!(n.key, format!("destination.disabled:{id}:{}", at.timestamp_micros()));
    }

    #[test]
    fn replicas_seeing_the_same_happening_make_the_same_key() {
        let id = Uuid::now_v7();
        let (t1, t2) = (Utc::now(), Utc::now() + chrono::Duration::milliseconds(3));
        let a = Notification::circuit_opened(id, "a", 42, 1000, 1, CircuitScope::Cluster, "0", t1);
        let b = Notification::circuit_opened(id, "a", 42, 1000, 1, CircuitScope::Cluster, "1", t2);
        assert_eq!(a.key, b.key, "the cluster's breaker: one open period, one key");
        let a = Notification::circuit_opened(id, "a", 42, 1000, 1, CircuitScope::Local, "0", t1);
        let b = Notification::circuit_opened(id, "a", 42, 1000, 1, CircuitScope::Local, "1", t2);
        assert_ne!(a.key, b.key, "each node's own breaker is its own");

        let now = "2024-05-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let later = now + chrono::Duration::seconds(59);
        let a = Notification::backlog_age_exceeded(id, "a", 1000.0, 900, 3, 3600, "0", now);
        let b = Notification::backlog_age_exceeded(id, "a", 1059.0, 900, 3, 3600, "1", later);
        assert_eq!(a.key, b.key, "one notice per repeat period");
        let c =
            Notification::backlog_age_exceeded(id, "a", 5000.0, 900, 3, 3600, "1", now + chrono::Duration::hours(1));
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn a_dead_notice_counts_every_reason() {
        let id = Uuid::now_v7();
        let start = "2024-05-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let n = Notification::dead(
            id,
            "a",
            &[(DeadReason::Exhausted, 3), (DeadReason::Expired, 2)],
            start,
            60,
            "0",
            start + chrono::Duration::seconds(60),
        );
        assert_eq!(n.data["count"], 5);
        assert_eq!(n.data["by_reason"]["exhausted"], 3);
        assert_eq!(n.data["by_reason"]["expired"], 2);
        assert_eq!(n.key, format!("delivery.dead:{id}:0:{}", start.timestamp()));
    }

    #[test]
    fn the_system_slug_is_reserved() {
        assert!(is_reserved("hookgate"));
        assert!(!is_reserved("hookgate-ops"));
        assert_ne!(SYSTEM_SOURCE_ID, SYSTEM_ROUTE_ID);
    }
}
