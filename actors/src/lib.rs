//! hookgate's actors: each owns one concern and talks to the others through bounded mailboxes.
//!
//! | actor | its one job | receives | sends to | batching |
//! |---|---|---|---|---|
//! | [`EventWriter`] | group-commits ingested events to PostgreSQL and answers each sender after COMMIT | [`Persist`], [`PersistMany`] | PostgreSQL, [`Cache`] | flush at `batch_max` events or `flush_interval` |
//! | [`Cache`] | the Redis idempotency fast path, degrading to "miss" when Redis is away | [`CacheLookup`], [`CacheRemember`] (from the EventWriter, on its arbiter) | Redis | one `MGET` and one pipeline of `SET`s per flush |
//! | [`Health`] | probes PostgreSQL (on a connection of its own) and publishes each actor's state and mailbox depth | timer only | [`HealthRegistry`] | probe every `probe_interval` |
//! | [`router::Router`] | keeps the routing snapshot ([`catalog::SharedCatalog`]) current | LISTEN `hookgate_catalog` | the snapshot | reload on change, at most one at a time |
//! | [`scheduler::Scheduler`] | claims due deliveries with leases, fairly per destination | `Completed`, `Wake`, LISTEN `hookgate_deliveries` | [`deliverer::Deliverer`] | one claim round at a time, polled every `poll_interval_ms` |
//! | [`deliverer::Deliverer`] | makes one signed, SSRF-guarded HTTP attempt per delivery | `Deliver` | `ResultWriter`, `Scheduler` | none (many attempts at once) |
//! | [`janitor::Janitor`] | the cluster's singleton jobs: partitions, retention, key pruning, lease reaper, auto-disable sweep | timer, `RunNow` | PostgreSQL | one round per `interval_secs`, on the node holding the advisory lock; short transactions, DDL under a lock time-out |
//! | [`result_writer::ResultWriter`] | batches attempt rows and delivery state changes | `AttemptResult` | PostgreSQL, [`notifier::Notifier`] | flush at `result_batch_max` or `result_flush_interval_ms`, two batches at once |
//! | [`notifier::Notifier`] | turns what hookgate sees about its destinations into operational notifications, delivered like any event | `Notice` (from the ResultWriter, the Scheduler, the Janitor, the circuit breakers), timers | PostgreSQL | `delivery.dead` added up per `dead_window_secs`; one store at a time |
//!
//! Beside the actors, [`admission`] holds what ingest's admission reads (the writer's queueing delay, which the
//! EventWriter publishes, and the byte budget of bodies in progress), and [`tail`] publishes what the writers committed on Redis while someone tails (offered with
//! `try_send` into a bounded queue after COMMIT) and fans the cluster's messages out to this node's SSE clients.
//!
//! Every message that can arrive in a flood carries its own reply channel and is sent with `try_send`: a full
//! mailbox is an immediate, visible refusal (the front end answers 503), never an unbounded queue.
//! Actors run under [`actix::Supervisor`]; [`supervision`] adds what actix lacks (back-off, a restart budget).
//! Every actor handles the one [`Shutdown`] message, which the server sends in order at SIGTERM.

pub mod admission;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod deliverer;
pub mod handoff;
pub mod health;
pub mod janitor;
pub mod limits;
pub mod mailbox;
pub mod notifier;
pub mod pg_tls;
pub mod proxy;
pub mod redis_link;
pub mod result_writer;
pub mod router;
pub mod scheduler;
pub mod shutdown;
pub mod sources;
pub mod ssrf;
pub mod supervision;
pub mod tail;
pub mod tls;
pub mod trace;
pub mod writer;

pub use cache::{Cache, CacheConfig, CacheLookup, CacheRemember, Remembered};
pub use config::DeliveryConfig;
pub use health::{ActorState, ActorStatus, DependencyState, Health, HealthRegistry, ReadinessReport};
pub use mailbox::{Mailbox, Refused};
pub use redis_link::{RedisLink, RedisLinkConfig};
pub use shutdown::{shut_down, Shutdown};
pub use supervision::RestartPolicy;
pub use writer::{CacheLink, EventWriter, NewEvent, Persist, PersistError, PersistMany, Persisted, WriterConfig};
