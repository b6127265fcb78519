//! The Redis idempotency fast path: answers "seen before" without touching PostgreSQL, and "miss" when Redis is away.
//!
//! Redis is an accelerator, never the truth: a miss (or an unreachable Redis) only means the event goes on to
//! PostgreSQL, where the unique constraint decides. A key is written only after its event is committed, so a hit
//! always names a stored event.
//!
//! Its one client is the [`EventWriter`](crate::EventWriter), on whose arbiter it runs: each flush asks about all its
//! events' keys at once (one `MGET`) before it opens a transaction, answers the hits as duplicates, and after COMMIT
//! tells the cache every key it stored or found (one pipelined round of `SET NX EX`). Both messages stay on one
//! thread, and Redis sees two commands per flush, not two per event (ADR-0022).
//!
//! Connection handling: the actor connects in `started`, retrying with back-off while Redis is down (state
//! `degraded`). When an established connection is lost it stops itself; its supervisor restarts it after the delay
//! given by its [`ActorStatus`], which also counts the restart against the budget. A Redis that accepts but never
//! answers (blackholed) closes nothing: after [`TIMEOUTS_BEFORE_RECONNECT`] commands in a row time out (PINGs
//! included), the connection counts as lost too.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookgate_core::backoff::Backoff;
use hookgate_core::internal_events::{emit, CacheTimedOut};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::health::{ActorState, ActorStatus, DependencyState, HealthRegistry};
use crate::shutdown::Shutdown;

/// Ask which of these idempotency keys (source, key) were seen; answers, in order, each one's first event id, or
/// `None` on a miss. Every answer is `None` when Redis is away. One `MGET` for all of them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CacheLookup {
    pub keys: Vec<(Uuid, String)>,
    pub reply: oneshot::Sender<Vec<Option<Uuid>>>,
}

/// Record that these idempotency keys now belong to committed events (`SET NX` with each one's dedupe TTL), in one
/// pipelined round trip.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CacheRemember {
    pub entries: Vec<Remembered>,
}

/// One committed event's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub source_id: Uuid,
    pub idempotency_key: String,
    /// The (first) event's id.
    pub id: Uuid,
    /// The source's dedupe window; `None` uses the cache's default TTL.
    pub ttl: Option<std::time::Duration>,
}

/// Commands in a row that time out before the connection is treated as lost.
pub const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// How the cache reaches Redis.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Prefix of every key hookgate writes (lets several deployments or tests share one Redis).
    pub key_prefix: String,
    /// Longest wait for one Redis command; past it the answer is "miss".
    pub op_timeout: Duration,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Lifetime of an idempotency entry (the Redis side of the dedupe window).
    pub dedupe_ttl: Duration,
    /// Longest lifetime of any entry: PostgreSQL's dedupe window (`retention.dedupe_window_secs`). A source's own
    /// window is checked against it when the source is saved; a source saved before the window was shortened is
    /// held to it here.
    pub max_ttl: Duration,
    pub mailbox_capacity: usize,
    /// How often an idle connection is checked with PING.
    pub ping_interval: Duration,
}

pub struct Cache {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    cfg: CacheConfig,
    pub(crate) status: Arc<ActorStatus>,
    registry: Arc<HealthRegistry>,
    connect_backoff: Backoff,
    resume_delay: Duration,
    /// Commands in a row that timed out on the current connection.
    timeouts_in_a_row: u32,
}

impl Cache {
    pub fn new(
        client: redis::Client,
        cfg: CacheConfig,
        status: Arc<ActorStatus>,
        registry: Arc<HealthRegistry>,
    ) -> Self {
        Self {
            client,
            conn: None,
            connect_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            cfg,
            status,
            registry,
            resume_delay: Duration::ZERO,
            timeouts_in_a_row: 0,
        }
    }

    fn key(&self, source_id: Uuid, idempotency_key: &str) -> String {
        format!("{}:idem:{}:{}", self.cfg.key_prefix, source_id, idempotency_key)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.cfg.op_timeout));
        let fut = async move { client.get_multiplexed_async_connection_with_config(&config).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(conn) => {
                act.conn = Some(conn);
                act.connect_backoff.reset();
                act.status.set_state(ActorState::Running);
                act.registry.set_redis(DependencyState::Up);
                tracing::info!(message = "Connected to Redis.");
            }
            Err(error) => {
                let delay = act.connect_backoff.next_delay();
                if act.status.state() != ActorState::Degraded {
                    tracing::warn!(message = "Redis unreachable; dedupe falls back to PostgreSQL.", %error);
                }
                act.status.set_state(ActorState::Degraded);
                act.registry.set_redis(DependencyState::Down);
                ctx.run_later(delay, |act, ctx| act.connect(ctx));
            }
        }));
    }

    /// Drops a connection that failed at the transport level; the supervisor restarts the actor. A slow answer
    /// (timeout) is only a miss: the connection stays.
    fn on_error(&mut self, error: &redis::RedisError, ctx: &mut Context<Self>) {
        let timed_out = error.is_timeout();
        if timed_out {
            emit(CacheTimedOut);
            self.timeouts_in_a_row += 1;
        }
        let blackholed = timed_out && self.timeouts_in_a_row >= TIMEOUTS_BEFORE_RECONNECT;
        if blackholed
            || (!timed_out && (error.is_connection_dropped() || error.is_unrecoverable_error() || error.is_io_error()))
        {
            if self.conn.take().is_some() {
                tracing::warn!(message = "Lost the Redis connection; restarting the cache.", %error);
                self.registry.set_redis(DependencyState::Down);
                ctx.stop();
            }
        } else {
            tracing::debug!(message = "Redis command failed.", %error);
        }
    }

    /// PINGs Redis so that a silent outage is noticed without ingest traffic.
    fn ping(&mut self, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.conn.clone() else { return };
        let fut = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(_) => act.timeouts_in_a_row = 0,
            Err(error) => act.on_error(&error, ctx),
        }));
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.mailbox_capacity);
        ctx.run_interval(self.cfg.ping_interval, |act, ctx| act.ping(ctx));
        let delay = std::mem::take(&mut self.resume_delay);
        if delay.is_zero() {
            self.connect(ctx);
        } else {
            ctx.run_later(delay, |act, ctx| act.connect(ctx));
        }
    }
}

impl actix::Supervised for Cache {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.conn = None;
        self.timeouts_in_a_row = 0;
        self.resume_delay = self.status.record_restart();
    }
}

/// Answers at once: the cache holds nothing that must be written (a remembered key lost at shutdown costs one
/// fast-path miss; PostgreSQL decides duplicates), and the lookups still queued are answered "miss" on their own.
impl Handler<Shutdown> for Cache {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) {
        let _ = msg.reply.send(());
    }
}

impl Handler<CacheLookup> for Cache {
    type Result = ();

    fn handle(&mut self, msg: CacheLookup, ctx: &mut Self::Context) {
        self.status.dequeued();
        let n = msg.keys.len();
        let Some(mut conn) = self.conn.clone().filter(|_| n > 0) else {
            let _ = msg.reply.send(vec![None; n]);
            return;
        };
        let keys: Vec<String> = msg.keys.iter().map(|(source, key)| self.key(*source, key)).collect();
        // MGET always answers an array, even for one key.
        let fut = async move { redis::cmd("MGET").arg(&keys).query_async::<Vec<Option<String>>>(&mut conn).await };
        let reply = msg.reply;
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let hits = match res {
                Ok(values) if values.len() == n => {
                    act.timeouts_in_a_row = 0;
                    values.into_iter().map(|v| v.and_then(|s| Uuid::parse_str(&s).ok())).collect()
                }
                Ok(_) => vec![None; n],
                Err(error) => {
                    act.on_error(&error, ctx);
                    vec![None; n]
                }
            };
            let _ = reply.send(hits);
        }));
    }
}

impl Handler<CacheRemember> for Cache {
    type Result = ();

    fn handle(&mut self, msg: CacheRemember, ctx: &mut Self::Context) {
        self.status.dequeued();
        let Some(mut conn) = self.conn.clone().filter(|_| !msg.entries.is_empty()) else {
            return;
        };
        let mut pipe = redis::pipe();
        for e in &msg.entries {
            let ttl = e.ttl.unwrap_or(self.cfg.dedupe_ttl).min(self.cfg.max_ttl).as_secs().max(1);
            let key = self.key(e.source_id, &e.idempotency_key);
            pipe.cmd("SET").arg(key).arg(e.id.to_string()).arg("NX").arg("EX").arg(ttl).ignore();
        }
        let fut = async move { pipe.query_async::<()>(&mut conn).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => act.timeouts_in_a_row = 0,
            Err(error) => act.on_error(&error, ctx),
        }));
    }
}
