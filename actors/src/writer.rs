//! Group-commits ingested events to PostgreSQL and answers each sender only after COMMIT.
//!
//! [`Persist`] messages are buffered and flushed when `batch_max` events are waiting or `flush_interval` has passed
//! since the first of them arrived. A flush is one transaction with one statement that inserts the batch's new
//! idempotency keys into `event_keys` (`ON CONFLICT DO NOTHING`) and the events whose key was new (one round trip for
//! the whole batch) plus, only when some keys were already stored, one lookup of the first events' ids. Up to
//! `max_inflight_flushes` flushes run at once, each on its own pooled connection; while they are busy, new events
//! accumulate into the next batch, so batches grow with load (classic group commit).
//!
//! Before its transaction, a flush asks the dedupe cache about its single events' keys (one `MGET`) and answers the
//! hits as duplicates; after its COMMIT it tells the cache every key it stored or found (see [`CacheLink`]).
//!
//! A [`PersistMany`] (a CloudEvents batch) is one *unit*: its events always travel in the same flush, so they are
//! committed together or not at all; a unit larger than `batch_max` is flushed alone. Single events stay single
//! units, so their path is unchanged.
//!
//! Order: `event_keys` and `events` rows are inserted sorted by (source, idempotency key), so concurrent flushes
//! take row locks in one global order and cannot deadlock. Deliveries are inserted in *arrival* order instead (the
//! events' `received_at`, then the order the writer received them), with `deliveries.seq` drawn in that order, and
//! `created_at` equal to their event's `received_at` (both tables are partitioned by those columns, so a delivery
//! lands in its event's partition). A flush whose units carry a pending delivery to a FIFO destination never runs
//! beside another such flush: at most one is in flight, so such deliveries commit in the order they arrived (their
//! units wait in the buffer meanwhile; the other units keep flushing).
//!
//! A poison unit (one the database refuses for good, e.g. a value a column cannot hold) does not fail
//! its batch: on a non-transient error ([`PersistError::Internal`]) the batch is retried in halves, whole units only,
//! until only the refused units fail. A transient error ([`PersistError::Unavailable`]) fails every unit not yet
//! committed, as clients retry those. NUL characters, which PostgreSQL refuses in text, are stripped from the stored
//! event type and delivery errors (ingest already refuses control characters in keys and types).
//!
//! A unit whose sender has gone (its reply channel is closed: the ingest request timed out with 503, or its client
//! disconnected) is dropped before it is flushed, counted in `hookgate_writer_abandoned_total`: nothing was
//! acknowledged for it, and the producer retries with the same idempotency key, so storing it would only spend the
//! database's time on work nobody waits for. A unit already in a flush transaction is committed as usual.
//!
//! With traces on, each flush is a `flush` span (in a trace of its own) with a link to the ingest span of every event it committed,
//! read from the context the event carries (see [`crate::trace`]).
//!
//! After COMMIT, while someone tails (see [`crate::tail`]), the events a flush stored are offered to the live tail:
//! one `try_send` per flush, dropped (and counted) when its queue is full; a flush never waits for it.
//!
//! Memory is bounded three times: the mailbox holds at most `mailbox_capacity` messages (senders use `try_send`), and
//! the writer holds at most `max_pending` events and `max_pending_bytes` bytes of bodies (buffered plus in flight);
//! past either it answers [`PersistError::Overloaded`] at once (one unit is always taken when nothing is pending).
//!
//! With an [`Admission`] attached, the writer publishes when the oldest unit still in its buffer was sent to it
//! (`sent_at`, so time spent in the mailbox counts): ingest refuses new requests while that
//! queueing delay is over its target (see [`crate::admission`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hookgate_core::catalog::{without_nul, PlannedDelivery};
use hookgate_core::delivery::Job;
use hookgate_core::internal_events::{emit, EventsAbandoned, EventsFlushed, EventsNotStored, HandOffRefused};
use hookgate_core::state::DeliveryState;
use hookgate_store::deliveries::{NewDelivery, NewLease};
use hookgate_store::error::StoreError;
use hookgate_store::Pool;
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::admission::{cgroup_memory_limit, derived_byte_budget, Admission};
use crate::cache::{Cache, CacheLookup, CacheRemember, Remembered};
use crate::handoff::{Blocked, HandOffPort, LeaseTerms};
use crate::health::{ActorState, ActorStatus, DependencyState, HealthRegistry};
use crate::mailbox::Mailbox;
use crate::shutdown::Shutdown;
use crate::tail::{EventBrief, Publish, TailPublisher};

// The EventWriter's messages. Each carries its own reply channel, so that the front end can `try_send` (refused at
// once when the mailbox is full) and still get an answer after COMMIT.

/// An event as received, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Time-ordered (UUIDv7), generated at the edge.
    pub id: Uuid,
    pub source_id: Uuid,
    pub idempotency_key: String,
    /// How long the dedupe cache keeps its key: its source's `dedupe_window_secs` (`None`: the cache's default).
    pub dedupe_ttl: Option<Duration>,
    /// The event's type (from a header, a JSON pointer or the CloudEvents `type`), when the source names one.
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    /// The selected request headers, as a JSON object of lower-case name to value. Shared: the events of one
    /// CloudEvents batch hold one copy of their request's headers.
    pub headers: Arc<serde_json::Value>,
    /// The exact bytes of the request body.
    pub body: Bytes,
    /// The deliveries routing decided for it; inserted in the same transaction, only if the event is new.
    pub deliveries: Vec<hookgate_core::catalog::PlannedDelivery>,
    /// The W3C `traceparent` of its ingest span (see [`crate::trace::stored_context`]): stored with the event, the
    /// flush links to it, and every attempt of its deliveries is its child.
    pub traceparent: Option<String>,
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
    /// The event's source was deleted before the event could be stored.
    #[error("the source was deleted")]
    SourceDeleted,
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
    /// When it was sent: its wait for a flush, mailbox included, counts from here (see [`crate::admission`]).
    pub sent_at: Instant,
}

/// Store several events as one unit: all of them are committed in one transaction or none is (a CloudEvents batch).
/// The writer never splits a unit across flushes; answered on `reply` after COMMIT, one outcome per event, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistMany {
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<Persisted>, PersistError>>,
    /// When it was sent (see [`Persist::sent_at`]).
    pub sent_at: Instant,
}

/// The writer's tuning. Defaults come from `docs/adr/0002-group-commit.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WriterConfig {
    /// Flush as soon as this many events are buffered.
    pub batch_max: usize,
    /// Flush at most this long (microseconds) after the first buffered event arrived.
    pub flush_interval_us: u64,
    /// Concurrent flush transactions (each holds a pooled connection).
    pub max_inflight_flushes: usize,
    /// Events held at once (buffered + in flight); past it new events are refused with 503.
    pub max_pending: usize,
    /// Bytes of event bodies held at once (buffered + in flight); past it new events are refused with 503. Default:
    /// an eighth of the cgroup memory limit (8 MiB … 1 GiB), or 64 MiB without one.
    pub max_pending_bytes: Option<u64>,
    /// Messages the mailbox holds before `try_send` is refused.
    pub mailbox_capacity: usize,
    /// Longest one flush transaction may take before its events are answered "unavailable" (a client-side
    /// deadline: it also covers a server that stopped answering without closing the connection).
    pub flush_timeout_ms: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            batch_max: 64,
            flush_interval_us: 200,
            max_inflight_flushes: 4,
            max_pending: 16_384,
            max_pending_bytes: None,
            mailbox_capacity: 4_096,
            flush_timeout_ms: 5_000,
        }
    }
}

impl WriterConfig {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_micros(self.flush_interval_us)
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms)
    }

    /// `max_pending_bytes`, or its default derived from the cgroup memory limit.
    pub fn pending_bytes_bound(&self) -> u64 {
        self.max_pending_bytes.unwrap_or_else(|| derived_byte_budget(cgroup_memory_limit()))
    }
}

type Reply = oneshot::Sender<Result<Persisted, PersistError>>;
type ManyReply = oneshot::Sender<Result<Vec<Persisted>, PersistError>>;

/// What the writer buffers: events that must be committed together, with their sender's reply.
enum Unit {
    One(NewEvent, Reply),
    Many(Vec<NewEvent>, ManyReply),
}

impl Unit {
    fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(events, _) => events.len(),
        }
    }

    /// Bytes of its events' bodies.
    fn bytes(&self) -> u64 {
        self.events().map(|e| e.body.len() as u64).sum()
    }

    fn events(&self) -> impl Iterator<Item = &NewEvent> {
        let (one, many) = match self {
            Self::One(e, _) => (Some(e), &[][..]),
            Self::Many(events, _) => (None, events.as_slice()),
        };
        one.into_iter().chain(many.iter())
    }

    /// Its sender has gone (the reply's receiver is dropped): nobody waits for this unit's outcome.
    fn abandoned(&self) -> bool {
        match self {
            Self::One(_, reply) => reply.is_closed(),
            Self::Many(_, reply) => reply.is_closed(),
        }
    }

    /// Carries a delivery to a FIFO destination that will be attempted (a failed one never is).
    fn has_fifo(&self) -> bool {
        self.events().any(|e| e.deliveries.iter().any(|d| d.fifo && d.failed.is_none()))
    }

    fn fail(self, error: PersistError) {
        match self {
            Self::One(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Self::Many(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

pub struct EventWriter {
    pool: Pool,
    cfg: WriterConfig,
    pub(crate) status: Arc<ActorStatus>,
    registry: Arc<HealthRegistry>,
    /// The units waiting for a flush, in arrival order, each with when it was sent.
    buffer: Vec<(Unit, Instant)>,
    /// Events in `buffer` (a unit may hold several).
    buffered: usize,
    flush_timer: Option<SpawnHandle>,
    /// Events buffered or in flight.
    pending: usize,
    /// Bytes of the bodies of the events buffered or in flight.
    pending_bytes: u64,
    /// `cfg.max_pending_bytes`, resolved.
    max_pending_bytes: u64,
    /// Ingest's admission: told when the oldest buffered unit arrived.
    admission: Option<Arc<Admission>>,
    inflight: usize,
    /// A flush carrying FIFO deliveries is in flight; the next such flush waits for it.
    fifo_inflight: bool,
    /// Waiting [`Shutdown`]s, answered when `pending` reaches zero.
    drains: Vec<oneshot::Sender<()>>,
    /// After a restart: how long to wait before taking work again (the supervision back-off).
    resume_delay: Duration,
    /// This node's Scheduler, for deliveries committed already leased (see [`crate::handoff`]).
    handoff: Option<Arc<HandOffPort>>,
    /// The live tail: the events stored are offered to it after COMMIT while someone tails.
    tail: Option<Arc<TailPublisher>>,
    /// The dedupe cache, on this actor's arbiter: asked before each flush, told after its COMMIT. Shared, not cloned,
    /// by the flushes: actix bounds a mailbox only against a sender it has parked, so every flush must use the same
    /// one for the Cache's mailbox bound to hold.
    cache: Option<Arc<CacheLink>>,
}

/// The Redis dedupe fast path as the writer uses it: one [`CacheLookup`] for a flush's single events before its
/// transaction (the hits are answered as duplicates and not written), one [`CacheRemember`] for every key the flush
/// stored or found after its COMMIT. Best effort both ways: a full mailbox, a Redis away or slow is a miss, and a
/// key not remembered costs a later miss; PostgreSQL decides duplicates.
pub struct CacheLink {
    mailbox: Mailbox<Cache>,
    /// Longest wait for the lookup's answer (the cache answers "miss" on its own after its op timeout; this only
    /// bounds a stuck mailbox).
    timeout: Duration,
}

impl CacheLink {
    pub fn new(mailbox: Mailbox<Cache>, timeout: Duration) -> Self {
        Self { mailbox, timeout }
    }

    /// Answers, as duplicates, the single events whose key the cache knows; returns the units still to write, in
    /// order. A CloudEvents batch is all or nothing, so it is never answered from the cache.
    async fn answer_known(&self, batch: Vec<Unit>) -> Vec<Unit> {
        let keys: Vec<(Uuid, String)> = batch
            .iter()
            .filter_map(|unit| match unit {
                Unit::One(e, _) => Some((e.source_id, e.idempotency_key.clone())),
                Unit::Many(..) => None,
            })
            .collect();
        // A cache that is not connected (Redis away, or the actor reconnecting after a restart) answers every key
        // "miss": skip the round trip to it.
        if keys.is_empty() || self.mailbox.status().state() != ActorState::Running {
            return batch;
        }
        let (reply, rx) = oneshot::channel();
        if self.mailbox.try_send(CacheLookup { keys, reply }).is_err() {
            return batch;
        }
        let Ok(Ok(hits)) = tokio::time::timeout(self.timeout, rx).await else { return batch };
        let mut hits = hits.into_iter();
        let mut rest = Vec::with_capacity(batch.len());
        for unit in batch {
            match unit {
                Unit::One(event, reply) => match hits.next().flatten() {
                    Some(id) => {
                        let _ = reply.send(Ok(Persisted { id, duplicate: true }));
                    }
                    None => rest.push(Unit::One(event, reply)),
                },
                many => rest.push(many),
            }
        }
        rest
    }

    /// Tells the cache the keys a flush stored or found (after its COMMIT), never waiting.
    fn remember(&self, entries: Vec<Remembered>) {
        if !entries.is_empty() {
            // A full mailbox only costs later misses.
            let _ = self.mailbox.try_send(CacheRemember { entries });
        }
    }
}

impl EventWriter {
    pub fn new(pool: Pool, cfg: WriterConfig, status: Arc<ActorStatus>, registry: Arc<HealthRegistry>) -> Self {
        Self {
            pool,
            status,
            registry,
            buffer: Vec::new(),
            buffered: 0,
            flush_timer: None,
            pending: 0,
            pending_bytes: 0,
            max_pending_bytes: cfg.pending_bytes_bound(),
            admission: None,
            inflight: 0,
            fifo_inflight: false,
            drains: Vec::new(),
            resume_delay: Duration::ZERO,
            handoff: None,
            tail: None,
            cache: None,
            cfg,
        }
    }

    /// Asks the dedupe cache before each flush and tells it after (see [`CacheLink`]).
    pub fn with_cache(mut self, cache: CacheLink) -> Self {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// Publishes the queueing delay of its buffer to ingest's admission (see [`crate::admission`]).
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Tells admission when the oldest unit still in the buffer arrived.
    fn publish_oldest(&self) {
        if let Some(admission) = &self.admission {
            admission.set_oldest(self.buffer.first().map(|(_, at)| *at));
        }
    }

    /// Offers the events it stores to the live tail (after COMMIT, only while someone tails, never waiting).
    pub fn with_tail(mut self, tail: Arc<TailPublisher>) -> Self {
        self.tail = Some(tail);
        self
    }

    /// Hands the deliveries it commits to this node's Scheduler through `port` (when delivery runs here).
    pub fn with_handoff(mut self, port: Arc<HandOffPort>) -> Self {
        self.handoff = Some(port);
        self
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.flush_timer.take() {
            ctx.cancel_future(h);
        }
        while !self.buffer.is_empty() && self.inflight < self.cfg.max_inflight_flushes.max(1) {
            self.drop_abandoned();
            let Some((batch, n, bytes, fifo)) = self.take_batch() else { break };
            self.publish_oldest();
            self.buffered -= n;
            self.inflight += 1;
            self.fifo_inflight |= fifo;
            let (pool, handoff, tail, cache) =
                (self.pool.clone(), self.handoff.clone(), self.tail.clone(), self.cache.clone());
            let deadline = self.cfg.flush_timeout();
            // No span at all without traces: a flush is hot, and its lines had none before.
            let span =
                if crate::trace::enabled() { tracing::info_span!("flush", events = n) } else { tracing::Span::none() };
            let flush = write_batch(pool, handoff, tail, cache, batch, deadline);
            let fut = crate::supervision::guarded(flush.instrument(span));
            ctx.spawn(fut.into_actor(self).map(move |db_up, act, ctx| {
                act.inflight -= 1;
                act.pending -= n;
                act.pending_bytes -= bytes;
                if fifo {
                    act.fifo_inflight = false;
                }
                let db_up = match db_up {
                    Ok(up) => up,
                    Err(crate::supervision::Panicked(what)) => {
                        // The batch's senders see their reply dropped (503, nothing acknowledged); count, restart.
                        act.status.record_panic(&what);
                        ctx.stop();
                        return;
                    }
                };
                // (A flush the cache answered whole never reached PostgreSQL: it says nothing about it.)
                if let Some(up) = db_up {
                    act.registry.set_postgres(if up { DependencyState::Up } else { DependencyState::Down });
                }
                if !act.buffer.is_empty() && (act.flush_timer.is_none() || act.cfg.flush_interval_us == 0) {
                    act.flush(ctx);
                }
                act.answer_drains();
            }));
        }
    }

    /// Drops the buffered units whose sender has gone (see the module's documentation), just before a flush would
    /// take them.
    fn drop_abandoned(&mut self) {
        if !self.buffer.iter().any(|(unit, _)| unit.abandoned()) {
            return;
        }
        let (mut units, mut events, mut bytes) = (0, 0, 0);
        self.buffer.retain(|(unit, _)| {
            let keep = !unit.abandoned();
            if !keep {
                units += 1;
                events += unit.len();
                bytes += unit.bytes();
            }
            keep
        });
        self.buffered -= events;
        self.pending -= events;
        self.pending_bytes -= bytes;
        self.publish_oldest();
        emit(EventsAbandoned { units, events });
        self.answer_drains();
    }

    /// Takes the next batch from the buffer, in arrival order: whole units only (a unit is never split across
    /// transactions; one bigger than `batch_max` goes alone), and none that carries FIFO deliveries while another
    /// such flush is in flight (those wait, in order, for it to finish). Returns the units, their event count, their
    /// bodies' bytes and whether they carry FIFO deliveries.
    fn take_batch(&mut self) -> Option<(Vec<Unit>, usize, u64, bool)> {
        let max = self.cfg.batch_max.max(1);
        let mut take = vec![false; self.buffer.len()];
        let (mut units, mut n, mut bytes, mut fifo) = (0, 0, 0, false);
        for (i, (unit, _)) in self.buffer.iter().enumerate() {
            let unit_fifo = unit.has_fifo();
            if unit_fifo && self.fifo_inflight {
                continue;
            }
            if units > 0 && n + unit.len() > max {
                break;
            }
            take[i] = true;
            units += 1;
            n += unit.len();
            bytes += unit.bytes();
            fifo |= unit_fifo;
        }
        if units == 0 {
            return None;
        }
        let mut batch = Vec::with_capacity(units);
        let mut rest = Vec::with_capacity(self.buffer.len() - units);
        for (queued, take) in self.buffer.drain(..).zip(take) {
            if take {
                batch.push(queued.0);
            } else {
                rest.push(queued);
            }
        }
        self.buffer = rest;
        Some((batch, n, bytes, fifo))
    }
}

impl Actor for EventWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.mailbox_capacity);
        let (status, delay) = (self.status.clone(), std::mem::take(&mut self.resume_delay));
        status.resume_after(delay, self, ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Graceful shutdown drains through `Shutdown` before this point; whatever is still here is refused.
        self.abandon("the event writer stopped");
        self.status.set_state(ActorState::Stopped);
        Running::Stop
    }
}

impl actix::Supervised for EventWriter {
    fn restarting(&mut self, _: &mut Self::Context) {
        // actix drops the spawned flushes on restart; their senders learn "unavailable" from the dropped reply.
        self.abandon("the event writer restarted");
        self.resume_delay = self.status.record_restart();
    }
}

impl EventWriter {
    /// Answers every buffered event "unavailable" and forgets in-flight bookkeeping (their futures are gone).
    fn abandon(&mut self, why: &str) {
        for (unit, _) in self.buffer.drain(..) {
            unit.fail(PersistError::Unavailable(why.to_owned()));
        }
        self.publish_oldest();
        self.buffered = 0;
        self.pending = 0;
        self.pending_bytes = 0;
        self.inflight = 0;
        self.fifo_inflight = false;
        self.flush_timer = None;
        self.answer_drains();
    }

    fn answer_drains(&mut self) {
        if self.pending == 0 {
            for reply in self.drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

/// Flushes everything buffered and answers once nothing is pending (sent after ingest stopped).
impl Handler<Shutdown> for EventWriter {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.drains.push(msg.reply);
        self.flush(ctx);
        self.answer_drains();
    }
}

impl Handler<Persist> for EventWriter {
    type Result = ();

    fn handle(&mut self, msg: Persist, ctx: &mut Self::Context) {
        self.status.dequeued();
        let (unit, sent_at) = (Unit::One(msg.event, msg.reply), msg.sent_at);
        if self.pending >= self.cfg.max_pending || self.over_bytes(&unit) {
            unit.fail(PersistError::Overloaded);
            return;
        }
        self.enqueue(unit, sent_at, ctx);
    }
}

impl Handler<PersistMany> for EventWriter {
    type Result = ();

    fn handle(&mut self, msg: PersistMany, ctx: &mut Self::Context) {
        self.status.dequeued();
        if msg.events.is_empty() {
            let _ = msg.reply.send(Ok(Vec::new()));
            return;
        }
        let (unit, sent_at) = (Unit::Many(msg.events, msg.reply), msg.sent_at);
        if self.pending + unit.len() > self.cfg.max_pending || self.over_bytes(&unit) {
            unit.fail(PersistError::Overloaded);
            return;
        }
        self.enqueue(unit, sent_at, ctx);
    }
}

impl EventWriter {
    /// Taking `unit` would pass `max_pending_bytes` (a unit is always taken when nothing is pending, so one larger
    /// than the bound is not refused for ever).
    fn over_bytes(&self, unit: &Unit) -> bool {
        self.pending > 0 && self.pending_bytes + unit.bytes() > self.max_pending_bytes
    }

    fn enqueue(&mut self, unit: Unit, sent_at: Instant, ctx: &mut Context<Self>) {
        self.pending += unit.len();
        self.pending_bytes += unit.bytes();
        self.buffered += unit.len();
        self.buffer.push((unit, sent_at));
        if self.buffer.len() == 1 {
            self.publish_oldest();
        }
        let eager = self.cfg.flush_interval_us == 0 && self.inflight < self.cfg.max_inflight_flushes;
        if eager || self.buffered >= self.cfg.batch_max {
            self.flush(ctx);
        } else if self.flush_timer.is_none() {
            self.flush_timer = Some(ctx.run_later(self.cfg.flush_interval(), |act, ctx| {
                act.flush_timer = None;
                act.flush(ctx);
            }));
        }
    }
}

use hookgate_store::events::EventRow;

/// Writes one batch and answers every sender. Returns whether PostgreSQL answered (`None`: the cache answered every
/// event, PostgreSQL was not asked).
///
/// The events the cache knows are answered first, as duplicates (see [`CacheLink`]). The rest is one transaction;
/// when PostgreSQL refuses it for good ([`PersistError::Internal`]), its halves are retried (whole units, in order)
/// until only the refused units remain, so one poison unit fails alone.
async fn write_batch(
    pool: Pool,
    handoff: Option<Arc<HandOffPort>>,
    tail: Option<Arc<TailPublisher>>,
    cache: Option<Arc<CacheLink>>,
    batch: Vec<Unit>,
    deadline: Duration,
) -> Option<bool> {
    let batch = match &cache {
        Some(cache) => cache.answer_known(batch).await,
        None => batch,
    };
    if batch.is_empty() {
        return None;
    }
    let started = Instant::now();
    let size: usize = batch.iter().map(Unit::len).sum();
    let mut outcomes: HashMap<Uuid, Result<Persisted, PersistError>> = HashMap::with_capacity(size);
    let mut failed: Vec<Option<PersistError>> = vec![None; batch.len()];
    let mut db_up = true;
    // Ranges of units still to write, the next one last; the first half goes first so that arrival order holds.
    let mut todo = Vec::new();
    todo.push(0..batch.len());
    while let Some(range) = todo.pop() {
        let units = &batch[range.clone()];
        let result = match tokio::time::timeout(deadline, write_units(&pool, handoff.as_deref(), units)).await {
            Ok(result) => result,
            Err(_) => Err(PersistError::Unavailable(format!("flush did not finish within {deadline:?}"))),
        };
        match result {
            Ok(stored) => outcomes.extend(stored),
            Err(PersistError::Internal(error)) if units.len() > 1 => {
                tracing::debug!(message = "Event batch refused; retrying it in halves.", units = units.len(), %error);
                let mid = range.start + units.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(error) => {
                let (n, unavailable) = (units.len(), matches!(error, PersistError::Unavailable(_)));
                emit(EventsNotStored { units: n, batch: size, error: &error });
                // A transient error fails the rest of the batch too: the database is away, the clients retry.
                let rest = if unavailable { std::mem::take(&mut todo) } else { Vec::new() };
                for i in range.chain(rest.into_iter().flatten()) {
                    failed[i] = Some(error.clone());
                }
                db_up &= !unavailable;
            }
        }
    }
    emit(EventsFlushed { size, elapsed: started.elapsed() });
    // The events stored now (not the duplicates), for the live tail while someone tails.
    let tail = tail.filter(|t| t.active());
    let mut stored = Vec::new();
    let mut take = |e: &NewEvent| {
        let outcome =
            outcomes.remove(&e.id).unwrap_or_else(|| Err(PersistError::Internal("event missing from batch".into())));
        if tail.is_some() && matches!(outcome, Ok(Persisted { duplicate: false, .. })) {
            stored.push(EventBrief {
                id: e.id,
                source_id: e.source_id,
                event_type: e.event_type.clone(),
                received_at: e.received_at,
                headers: e.headers.clone(),
                body: e.body.clone(),
            });
        }
        outcome
    };
    // The keys now stored (new or found), for the cache.
    let mut remember = Vec::new();
    let mut note = |e: NewEvent, outcome: &Result<Persisted, PersistError>| {
        if let (Some(_), Ok(p)) = (&cache, outcome) {
            let (source_id, id, ttl) = (e.source_id, p.id, e.dedupe_ttl);
            remember.push(Remembered { source_id, idempotency_key: e.idempotency_key, id, ttl });
        }
    };
    for (unit, failed) in batch.into_iter().zip(failed) {
        match (unit, failed) {
            (unit, Some(error)) => unit.fail(error),
            (Unit::One(event, reply), None) => {
                let outcome = take(&event);
                note(event, &outcome);
                let _ = reply.send(outcome);
            }
            (Unit::Many(events, reply), None) => {
                let outcomes: Vec<_> = events.iter().map(&mut take).collect();
                for (event, outcome) in events.into_iter().zip(&outcomes) {
                    note(event, outcome);
                }
                let _ = reply.send(outcomes.into_iter().collect());
            }
        }
    }
    if let Some(tail) = tail {
        tail.offer(Publish::Events(stored));
    }
    if let Some(cache) = &cache {
        cache.remember(remember);
    }
    Some(db_up)
}

/// Writes `units` in one transaction; returns each event's outcome by id.
async fn write_units(
    pool: &Pool,
    handoff: Option<&HandOffPort>,
    units: &[Unit],
) -> Result<HashMap<Uuid, Result<Persisted, PersistError>>, PersistError> {
    let arrival: Vec<&NewEvent> = units.iter().flat_map(Unit::events).collect();
    let mut sorted = arrival.clone();
    // Concurrent flushes take row locks in one global order, so they cannot deadlock on shared keys.
    sorted.sort_unstable_by(|a, b| (a.source_id, &a.idempotency_key).cmp(&(b.source_id, &b.idempotency_key)));
    let outcomes = insert(pool, handoff, &sorted, &arrival).await?;
    Ok(sorted.iter().map(|e| e.id).zip(outcomes).collect())
}

/// The rows the store inserts for these events.
pub fn event_rows<'a>(events: &[&'a NewEvent]) -> Vec<EventRow<'a>> {
    events
        .iter()
        .map(|e| EventRow {
            id: e.id,
            source_id: e.source_id,
            idempotency_key: &e.idempotency_key,
            received_at: e.received_at,
            content_type: e.content_type.as_deref(),
            headers: e.headers.as_ref(),
            body: &e.body,
            event_type: e.event_type.as_deref().map(without_nul),
            traceparent: e.traceparent.as_deref(),
        })
        .collect()
}

/// Inserts `events` (sorted by key) and the deliveries of the new ones (in `arrival` order, the same events) in one
/// transaction, then hands those leased at insert to the Scheduler; one outcome per event of `events`, in its order.
async fn insert(
    pool: &Pool,
    handoff: Option<&HandOffPort>,
    events: &[&NewEvent],
    arrival: &[&NewEvent],
) -> Result<Vec<Result<Persisted, PersistError>>, PersistError> {
    // Before the transaction begins: the leases it takes run from its start (PostgreSQL's `now()`), not earlier.
    let leased_at = std::time::Instant::now();
    let mut client = hookgate_store::connect(pool).await.map_err(store_error)?;
    let tx = hookgate_store::begin(&mut client).await.map_err(store_error)?;
    // Generic plans for the flush (ADR-0010), their setting sent with its first statement.
    let inserted = hookgate_store::events::insert_new_after(&tx, hookgate_store::GENERIC_PLANS, &event_rows(events))
        .await
        .map_err(store_error)?;

    let mut existing: HashMap<(Uuid, &str), Uuid> = HashMap::new();
    // Sources that were deleted meanwhile (their events are not stored: no foreign key, ADR-0021).
    let mut deleted: HashSet<Uuid> = HashSet::new();
    if inserted.len() < events.len() {
        let keys: Vec<(Uuid, &str)> = events
            .iter()
            .filter(|e| !inserted.contains(&e.id))
            .map(|e| (e.source_id, e.idempotency_key.as_str()))
            .collect();
        let found = hookgate_store::events::find_existing(&tx, &keys).await.map_err(store_error)?;
        for (event_id, source_id, key) in found {
            if let Some(e) = events.iter().find(|e| e.idempotency_key == key && e.source_id == source_id) {
                existing.insert((e.source_id, e.idempotency_key.as_str()), event_id);
            }
        }
        if existing.len() < keys.len() {
            let mut sources: Vec<Uuid> = keys.iter().map(|(s, _)| *s).collect();
            sources.sort_unstable();
            sources.dedup();
            let live = hookgate_store::sources::existing(&tx, &sources).await.map_err(store_error)?;
            deleted.extend(sources.into_iter().filter(|s| !live.contains(s)));
        }
    }
    let terms = handoff.and_then(HandOffPort::terms);
    let blocked = match (handoff, terms) {
        (Some(port), Some(_)) => port.blocked(),
        _ => HashMap::new(),
    };
    let leased = insert_deliveries(&tx, arrival, &inserted, terms, &blocked).await?;
    hookgate_store::commit(tx).await.map_err(store_error)?;
    // The flush's span links to the ingest spans of the events it committed (not to a duplicate's).
    if crate::trace::enabled() {
        let flush = tracing::Span::current();
        for e in events.iter().filter(|e| inserted.contains(&e.id)) {
            crate::trace::link_stored(&flush, e.traceparent.as_deref());
        }
    }
    if let (Some(port), false) = (handoff, leased.is_empty()) {
        if let Err(refused) = port.send(leased, leased_at) {
            // The Scheduler's mailbox is full or it just stopped: these go the claim path.
            emit(HandOffRefused { count: refused.len() });
            actix::spawn(crate::handoff::give_back(pool.clone(), refused, true));
        }
    }

    Ok(events
        .iter()
        .map(|e| {
            if inserted.contains(&e.id) {
                Ok(Persisted { id: e.id, duplicate: false })
            } else {
                match existing.get(&(e.source_id, e.idempotency_key.as_str())) {
                    Some(id) => Ok(Persisted { id: *id, duplicate: true }),
                    None if deleted.contains(&e.source_id) => Err(PersistError::SourceDeleted),
                    None => Err(PersistError::Internal("conflicting event vanished before lookup".into())),
                }
            }
        })
        .collect())
}

/// Inserts the planned deliveries of the events stored now (a duplicate's deliveries exist already). With lease
/// `terms`, those that can be attempted at once (and whose destination the Scheduler does not refuse now:
/// `blocked`) are inserted leased to this node and returned as jobs, to hand to the Scheduler after COMMIT; the
/// schedulers are woken (NOTIFY at COMMIT) only for the others, unless their destination is blocked.
/// `events` is in arrival order; deliveries are inserted (and numbered) by the events' `received_at`, ties in that
/// order.
async fn insert_deliveries(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[&NewEvent],
    inserted: &HashSet<Uuid>,
    terms: Option<LeaseTerms<'_>>,
    blocked: &HashMap<Uuid, Blocked>,
) -> Result<Vec<Job>, PersistError> {
    let mut stored: Vec<&NewEvent> = events.iter().copied().filter(|e| inserted.contains(&e.id)).collect();
    stored.sort_by_key(|e| e.received_at); // stable: arrival order among equal timestamps
    let planned: Vec<(&NewEvent, &PlannedDelivery)> =
        stored.iter().flat_map(|e| e.deliveries.iter().map(move |d| (*e, d))).collect();
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let errors: Vec<Option<Cow<'_, str>>> = planned.iter().map(|(_, d)| d.failed.as_deref().map(without_nul)).collect();
    let leases: Vec<Option<NewLease<'_>>> = planned
        .iter()
        .map(|(_, d)| {
            let (terms, timeout) = (terms?, d.attempt_now?);
            if blocked.contains_key(&d.destination_id) {
                return None;
            }
            let ms = (timeout.as_millis() as u64).saturating_add(terms.margin_ms).min(i32::MAX as u64) as i32;
            Some(NewLease { owner: terms.owner, lease_id: Uuid::new_v4(), ms })
        })
        .collect();
    let rows: Vec<NewDelivery<'_>> = planned
        .iter()
        .zip(&errors)
        .zip(&leases)
        .map(|(((e, d), error), lease)| NewDelivery {
            id: d.id,
            event_id: e.id,
            route_id: d.route_id,
            destination_id: d.destination_id,
            state: if d.failed.is_some() { DeliveryState::Failed } else { DeliveryState::Pending },
            payload: d.payload.as_deref(),
            last_error: error.as_deref(),
            created_at: e.received_at,
            needs_routing: d.deferred,
            lease: *lease,
        })
        .collect();
    let leased = hookgate_store::deliveries::insert_planned(tx, &rows).await.map_err(store_error)?.leased;
    // A blocked destination's deliveries are found by the Scheduler when it has room again (a finished attempt,
    // the poll), and by other nodes at their poll: no NOTIFY that would start a claim round per flush for them.
    let wakes = |d: &NewDelivery<'_>| {
        d.state == DeliveryState::Pending && !leased.contains(&d.id) && !blocked.contains_key(&d.destination_id)
    };
    if rows.iter().any(wakes) {
        hookgate_store::channels::notify_deliveries(tx, "").await.map_err(store_error)?;
    }
    Ok(planned
        .iter()
        .zip(&leases)
        .filter_map(|((e, d), lease)| {
            let lease = lease.as_ref().filter(|_| leased.contains(&d.id))?;
            Some(Job {
                delivery_id: d.id,
                created_at: e.received_at,
                lease_id: lease.lease_id,
                event_id: e.id,
                destination_id: d.destination_id,
                attempt: 1,
                body: d.payload.clone().unwrap_or_else(|| e.body.clone()),
                content_type: e.content_type.clone(),
                transformed: d.payload.is_some(),
                route_id: d.route_id,
                routing: None,
                traceparent: e.traceparent.clone(),
            })
        })
        .collect())
}

/// What the store says may pass (no connection, or PostgreSQL's "not now": connection loss, shutdown, overload,
/// cancellation, serialization failures, deadlocks, a failover's read-only transaction, a lock not available) is
/// "unavailable" (the client should retry, and the batch is not split); the rest is unexpected.
fn store_error(e: StoreError) -> PersistError {
    if e.is_transient() {
        PersistError::Unavailable(e.to_string())
    } else {
        PersistError::Internal(e.to_string())
    }
}
