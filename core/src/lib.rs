//! hookgate's domain, without I/O: the rules that the store, the actors and the server share.
//!
//! The layers, each depending only on those before it: **`hookgate-core`** (this crate) ← `hookgate-actors` ←
//! `hookgate`. Nothing here opens a socket, a file or a database connection, so every rule is tested in isolation
//! and reused by every layer above; `tests/layering.rs` keeps it that way.
//!
//! | module | what it decides |
//! |---|---|
//! | [`catalog`] | destinations and routes, declared and compiled; the `Catalog` whose `plan` decides an event's deliveries |
//! | [`cloudevents`] | the CloudEvents 1.0 HTTP binding: modes, attributes, the idempotency key of an event |
//! | [`event`] | an event's idempotency key and type, taken where its source says and checked once (newtypes) |
//! | [`notification`] | operational notifications: the reserved `hookgate` source and route, each type's key and body |
//! | [`retry`] | when a failed delivery is tried again (delays, jitter, `Retry-After` with its floor) |
//! | [`signing`] | Standard Webhooks signatures of outgoing deliveries |
//! | [`internal_events`] | everything hookgate reports about itself: one typed event per thing that happens, its log line and its metric together |
//! | [`jq`] | route filters and transforms: compiled once, evaluated with a time and output budget |
//! | [`backoff`] | exponential back-off with jitter, for restarts and reconnects |
//! | [`delivery`] | a leased delivery (`Job`) as the engine carries it from claim to attempt |
//! | [`ssrf`] | the SSRF policy: which destination addresses outbound requests may use |
//! | [`tail`] | live tail: what is published on Redis after a COMMIT for the SSE stream, and the body's shape there |
//! | [`state`] | the typed states of deliveries and destinations, and their stored text |
//! | [`snapshot`] | a value many readers share and one reloader swaps whole (sources, catalog) |
//! | [`source`] | the source model (verification, idempotency key, event type) and its one validation |
//! | [`verify`] | request verification: every scheme a source can use, and the header parsers they rely on |

pub mod backoff;
pub mod catalog;
pub mod cloudevents;
pub mod delivery;
pub mod event;
pub mod internal_events;
pub mod jq;
pub mod notification;
pub mod retry;
pub mod signing;
pub mod snapshot;
pub mod source;
pub mod ssrf;
pub mod state;
pub mod tail;
pub mod verify;
