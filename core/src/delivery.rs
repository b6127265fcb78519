//! A leased delivery as the delivery engine carries it from claim to attempt, and the pure plan of what a batch of
//! attempt outcomes changes ([`OutcomePlan`]): next state, next attempt time, destination health.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::{without_nul, Catalog};
use crate::state::DeliveryState;

/// Why a delivery whose event row is gone (retention, a row deleted by hand) ends `dead`.
pub const ORPHAN_REASON: &str = "event no longer stored";

/// One leased delivery, with what its attempt needs.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: Uuid,
    /// The delivery's partition key (its event's `received_at`): with the id, one primary-key probe finds the row.
    pub created_at: DateTime<Utc>,
    /// This claim's lease; the result is applied only while it still holds.
    pub lease_id: Uuid,
    pub event_id: Uuid,
    pub destination_id: Uuid,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The body is a transform's output (JSON).
    pub transformed: bool,
    pub route_id: Uuid,
    /// Set when the route's programs could not be evaluated at ingest: what they read, to evaluate them now.
    pub routing: Option<RoutingInput>,
    /// The W3C `traceparent` its event stored (its ingest span's context), which the attempt's span continues;
    /// `None` for an event stored without one.
    pub traceparent: Option<String>,
}

/// What a deferred route evaluation reads besides the body: the event as stored.
#[derive(Debug, Clone)]
pub struct RoutingInput {
    pub source: String,
    pub headers: serde_json::Value,
    pub event_type: Option<String>,
}

/// What a deferred route evaluation decided at delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Evaluated: the attempt was made with this payload (`None`: the event's body), which is stored.
    Payload(Option<Bytes>),
    /// The filter does not take the event: no attempt; the delivery is cancelled.
    Skipped,
    /// A program failed: no attempt; the delivery is `failed` with the reason.
    Failed(String),
    /// Still not evaluated in time: a failed try of kind `route_timeout`, retried on schedule.
    Deferred(String),
}

/// Why a delivery whose route was evaluated at delivery (deferred at ingest) was cancelled.
pub const SKIPPED_AT_DELIVERY: &str = "the route's filter does not take this event (evaluated at delivery)";

/// What the outcome plan reads of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptOutcome<'a> {
    pub destination_id: Uuid,
    /// The attempt's number (1 for the first).
    pub attempt: i32,
    pub status: Option<u16>,
    /// `timeout`, `connect`, `ssrf`, … (None on success).
    pub error_kind: Option<&'static str>,
    pub error: Option<&'a str>,
    pub retry_after: Option<Duration>,
    pub routed: Option<&'a Routed>,
}

impl AttemptOutcome<'_> {
    /// Whether this outcome says anything about the destination (an HTTP attempt was made).
    pub fn reached_destination(&self) -> bool {
        matches!(self.routed, None | Some(Routed::Payload(_)))
    }

    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What a batch of attempt outcomes changes, decided before the transaction that records it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomePlan {
    /// Per outcome: (new state, next attempt time, last error).
    pub deliveries: Vec<(DeliveryState, DateTime<Utc>, Option<String>)>,
    /// Per outcome: whether it is a try on the retry schedule (an attempt row is written and counted).
    pub counted: Vec<bool>,
    /// Destinations that answered 410 Gone.
    pub gone: Vec<Uuid>,
    /// Destinations whose last outcome in the batch failed, and those whose last one succeeded.
    pub failing: Vec<Uuid>,
    pub healthy: Vec<Uuid>,
}

impl OutcomePlan {
    /// Plans `outcomes` at `now`: a success is `delivered`; a failure is `pending` again after its destination's retry
    /// delay (honouring `Retry-After` up to `max_retry_after`), or `dead` once the schedule is over; a route decided
    /// at delivery is `cancelled` (its filter declined) or `failed` (a program failed).
    pub fn new(
        outcomes: &[AttemptOutcome<'_>],
        catalog: &Catalog,
        max_retry_after: Duration,
        now: DateTime<Utc>,
    ) -> Self {
        let mut last_outcome: HashMap<Uuid, bool> = HashMap::new();
        let mut gone = Vec::new();
        let counted = outcomes.iter().map(|r| !matches!(r.routed, Some(Routed::Skipped | Routed::Failed(_)))).collect();
        let deliveries = outcomes
            .iter()
            .map(|r| {
                match r.routed {
                    // Decided by the route's programs at delivery: final, and nothing to do with the destination.
                    Some(Routed::Skipped) => {
                        return (DeliveryState::Cancelled, now, Some(SKIPPED_AT_DELIVERY.to_owned()));
                    }
                    Some(Routed::Failed(why)) => {
                        return (DeliveryState::Failed, now, Some(without_nul(why).into_owned()))
                    }
                    _ => {}
                }
                if r.reached_destination() {
                    last_outcome.insert(r.destination_id, r.succeeded());
                }
                if r.succeeded() {
                    return (DeliveryState::Delivered, now, None);
                }
                if r.status == Some(410) {
                    gone.push(r.destination_id);
                }
                let error = Some(
                    without_nul(&format!(
                        "{}: {}",
                        r.error_kind.unwrap_or("error"),
                        r.error.unwrap_or("attempt failed")
                    ))
                    .into_owned(),
                );
                let policy = catalog.destinations.get(&r.destination_id).map(|d| d.retry.clone()).unwrap_or_default();
                let attempts = r.attempt.max(1) as u32;
                match policy.delay_after(attempts, r.retry_after, max_retry_after) {
                    None => (DeliveryState::Dead, now, error),
                    Some(delay) => {
                        let next =
                            now + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::hours(1));
                        (DeliveryState::Pending, next, error)
                    }
                }
            })
            .collect();
        let (healthy, failing): (Vec<_>, Vec<_>) = last_outcome.into_iter().partition(|(_, ok)| *ok);
        Self {
            deliveries,
            counted,
            gone,
            failing: failing.into_iter().map(|(id, _)| id).collect(),
            healthy: healthy.into_iter().map(|(id, _)| id).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(destination_id: Uuid, attempt: i32, status: Option<u16>) -> AttemptOutcome<'static> {
        AttemptOutcome {
            destination_id,
            attempt,
            status,
            error_kind: status.filter(|s| *s >= 300).map(|_| "http_status").or(status.is_none().then_some("connect")),
            error: None,
            retry_after: None,
            routed: None,
        }
    }

    #[test]
    fn each_outcome_gets_its_next_state_and_the_destinations_their_health() {
        let (up, down, gone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        let skipped = Routed::Skipped;
        let broken = Routed::Failed("jq: error\0".into());
        let outcomes = [
            outcome(up, 1, Some(204)),
            outcome(down, 1, None),
            outcome(gone, 1, Some(410)),
            AttemptOutcome { routed: Some(&skipped), ..outcome(up, 1, None) },
            AttemptOutcome { routed: Some(&broken), ..outcome(up, 1, None) },
            outcome(down, 1_000, Some(500)),
        ];
        let plan = OutcomePlan::new(&outcomes, &Catalog::default(), Duration::from_secs(3600), now);
        let states: Vec<DeliveryState> = plan.deliveries.iter().map(|d| d.0).collect();
        use DeliveryState::*;
        assert_eq!(states, [Delivered, Pending, Pending, Cancelled, Failed, Dead]);
        assert!(plan.deliveries[1].1 > now, "a retry waits");
        assert_eq!(plan.deliveries[1].2.as_deref(), Some("connect: attempt failed"));
        assert_eq!(plan.deliveries[4].2.as_deref(), Some("jq: error"), "no NUL reaches the database");
        assert_eq!(plan.counted, [true, true, true, false, false, true], "route decisions are not tries");
        assert_eq!(plan.gone, [gone]);
        assert_eq!(plan.healthy, [up], "the skipped and failed routes say nothing about the destination");
        let mut failing = plan.failing.clone();
        failing.sort();
        let mut expected = vec![down, gone];
        expected.sort();
        assert_eq!(failing, expected);
    }
}
