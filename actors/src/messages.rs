//! The messages between the front end and the actors.
//!
//! Messages that can arrive in a flood carry their own reply channel so that the sender can use `try_send` (refused
//! at once when the mailbox is full) and still get an answer.

use actix::Message;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

/// An event as received, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Time-ordered (UUIDv7), generated at the edge.
    pub id: Uuid,
    pub source_id: Uuid,
    pub idempotency_key: String,
    /// The event's type (from a header, a JSON pointer or the CloudEvents `type`), when the source names one.
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    /// The selected request headers, as a JSON object of lower-case name to value.
    pub headers: serde_json::Value,
    /// The exact bytes of the request body.
    pub body: Bytes,
    /// The deliveries routing decided for it; inserted in the same transaction, only if the event is new.
    pub deliveries: Vec<hookgate_core::catalog::PlannedDelivery>,
}

/// The outcome of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    /// The new event's id, or the first event's id when `duplicate`.
    pub id: Uuid,
    /// The (source, idempotency key) was already stored.
    pub duplicate: bool,
}

/// Why an event was not stored.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// The writer holds as many events as it may; try again shortly.
    #[error("the event writer is at capacity")]
    Overloaded,
    /// PostgreSQL could not be reached or did not answer in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else; a bug or an unexpected database error.
    #[error("unexpected database error: {0}")]
    Internal(String),
}

/// Store one event; answered on `reply` after COMMIT.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    pub event: NewEvent,
    pub reply: oneshot::Sender<Result<Persisted, PersistError>>,
}

/// Store several events as one unit: all of them are committed in one transaction or none is (a CloudEvents batch).
/// The writer never splits a unit across flushes; answered on `reply` after COMMIT, one outcome per event, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistMany {
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<Persisted>, PersistError>>,
}

/// Ask whether an idempotency key was seen; answers the first event's id, or `None` on a miss or when Redis is away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CacheLookup {
    pub source_id: Uuid,
    pub idempotency_key: String,
    pub reply: oneshot::Sender<Option<Uuid>>,
}

/// Record that an idempotency key now belongs to a committed event (SET NX with the dedupe TTL).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CacheRemember {
    pub source_id: Uuid,
    pub idempotency_key: String,
    pub id: Uuid,
    /// The source's dedupe window; `None` uses the cache's default TTL.
    pub ttl: Option<std::time::Duration>,
}
