//! Claims due deliveries from PostgreSQL with leases and hands them to the Deliverers, fairly across destinations.
//!
//! Woken by NOTIFY `hookgate_deliveries` (new deliveries committed), by `hookgate_catalog` (a destination resumed),
//! by a Deliverer finishing an attempt, and by a timer (retries coming due, leases expiring after a crash). One claim
//! round: find the active destinations with due work; give each a budget (its free `max_in_flight` cluster-wide,
//! capped by its fair share of this node's capacity, by its rate-limit tokens and by its circuit breaker); then, in one
//! transaction under a cluster-wide advisory lock, lease up to each budget with `FOR UPDATE SKIP LOCKED`. Because each
//! destination gets its own budget, a backlog of 100,000 deliveries on one destination takes only that
//! destination's slots and never delays another. FIFO destinations lease only their oldest pending delivery, and only
//! when it is due and not leased: one in flight, in event order, and a failing head holds the rest.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hookgate_store::deliveries::{release_leases, Lease};
use rand::seq::SliceRandom;
use uuid::Uuid;

use crate::catalog::{Destination, DestinationState, SharedCatalog, CATALOG_CHANNEL};
use crate::config::DeliveryConfig;
use crate::deliverer::{Deliver, Deliverer};
use crate::health::{ActorState, ActorStatus};
use crate::limits::Limits;
use crate::listen::{self, ListenEvent};
use crate::redis_link::RedisLink;
use crate::supervision::{guarded, Panicked};
use crate::writer::DELIVERIES_CHANNEL;
use crate::Pool;

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
}

/// What a deferred route evaluation reads besides the body: the event as stored.
#[derive(Debug, Clone)]
pub struct RoutingInput {
    pub source: String,
    pub headers: serde_json::Value,
    pub event_type: Option<String>,
}

/// A Deliverer finished an attempt (its result is on its way to the ResultWriter).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Completed {
    pub delivery_id: Uuid,
    pub destination_id: Uuid,
}

/// Stop claiming; answer once the attempts in flight have finished, or, past `grace`, after releasing the leases of
/// those still running so that another node takes them over at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub grace: std::time::Duration,
    pub reply: tokio::sync::oneshot::Sender<()>,
}

/// Look for work now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

pub use hookgate_store::locks::CLAIM_LOCK;

/// The destinations with claimable work, with their deliveries in flight cluster-wide (counted up to `cap`, the
/// destination's `max_in_flight`: past it the number no longer matters). A FIFO destination has claimable work only
/// when its head is due and not leased.
///
/// Every lookup here and in [`CLAIM`] is an ordered index walk per destination (`ORDER BY … LIMIT`), which the
/// planner takes whatever the statistics say: a daily partition is new and unanalyzed every midnight, and a plan
/// chosen on guessed statistics (a hash join over every due row, a count through the wrong index) made each claim
/// round cost as much as the whole backlog.
const DUE: &str = "\
SELECT d.id, (SELECT count(*)::int FROM (
                  SELECT 1 FROM deliveries b
                  WHERE b.destination_id = d.id AND b.state = 'pending' AND b.lease_expires_at > now()
                  ORDER BY b.lease_expires_at LIMIT d.cap) l)
FROM UNNEST($1::uuid[], $3::int[]) AS d(id, cap)
CROSS JOIN LATERAL (
    SELECT 1 FROM deliveries x
    WHERE x.destination_id = d.id AND x.state = 'pending' AND x.next_attempt_at <= now()
      AND (x.lease_expires_at IS NULL OR x.lease_expires_at <= now())
    ORDER BY x.next_attempt_at LIMIT 1) due
UNION ALL
SELECT f.id, 0 FROM UNNEST($2::uuid[]) AS f(id)
CROSS JOIN LATERAL (
    SELECT next_attempt_at, lease_expires_at FROM deliveries h
    WHERE h.destination_id = f.id AND h.state = 'pending' ORDER BY h.seq LIMIT 1) h
WHERE h.next_attempt_at <= now() AND (h.lease_expires_at IS NULL OR h.lease_expires_at <= now())";

/// Leases up to each budget. The rows are then updated by their whole primary key (id and partition key): a probe
/// per row, never a join the planner could drive from another table.
const CLAIM: &str = "\
WITH budget AS (
    SELECT b.* FROM UNNEST($1::uuid[], $2::int[], $3::int[]) AS b(destination_id, n, cap)
    JOIN destinations x ON x.id = b.destination_id AND x.state = 'active'
), picked AS (
    SELECT x.id, x.created_at FROM budget b
    CROSS JOIN LATERAL (
        SELECT count(*)::int AS n FROM (
            SELECT 1 FROM deliveries l
            WHERE l.destination_id = b.destination_id AND l.state = 'pending' AND l.lease_expires_at > now()
            ORDER BY l.lease_expires_at LIMIT b.cap) l
    ) busy
    CROSS JOIN LATERAL (
        SELECT id, created_at FROM deliveries d
        WHERE d.destination_id = b.destination_id AND d.state = 'pending' AND d.next_attempt_at <= now()
          AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
        ORDER BY d.next_attempt_at
        LIMIT GREATEST(LEAST(b.n, b.cap - busy.n), 0)
        FOR UPDATE SKIP LOCKED
    ) x
    UNION ALL
    SELECT h.id, h.created_at FROM UNNEST($4::uuid[]) AS f(destination_id)
    JOIN destinations x ON x.id = f.destination_id AND x.state = 'active'
    CROSS JOIN LATERAL (
        SELECT id, created_at, next_attempt_at, lease_expires_at FROM deliveries d
        WHERE d.destination_id = f.destination_id AND d.state = 'pending'
        ORDER BY d.seq
        LIMIT 1
    ) h
    WHERE h.next_attempt_at <= now() AND (h.lease_expires_at IS NULL OR h.lease_expires_at <= now())
)
UPDATE deliveries d
SET lease_owner = $5, lease_id = gen_random_uuid(),
    lease_expires_at = now()
        + ((SELECT x.timeout_ms FROM destinations x WHERE x.id = d.destination_id) + $6::int) * interval '1 millisecond',
    updated_at = now()
FROM picked p
WHERE d.id = p.id AND d.created_at = p.created_at
  -- Re-checked on the locked row: a result committed meanwhile is not claimed again.
  AND d.state = 'pending' AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
-- The event is looked up in its own partition (a delivery's created_at is its event's received_at), then, for rows
-- older than that rule, by id alone: one index probe instead of one per partition.
RETURNING d.id, d.event_id, d.destination_id, d.attempts,
          coalesce(d.payload,
                   (SELECT e.body FROM events e WHERE e.id = d.event_id AND e.received_at = d.created_at),
                   (SELECT e.body FROM events e WHERE e.id = d.event_id)),
          d.payload IS NOT NULL,
          coalesce((SELECT e.content_type FROM events e WHERE e.id = d.event_id AND e.received_at = d.created_at),
                   (SELECT e.content_type FROM events e WHERE e.id = d.event_id)),
          d.lease_id, d.route_id, d.needs_routing,
          CASE WHEN d.needs_routing THEN
              (SELECT jsonb_build_object('source', s.slug, 'headers', e.headers, 'type', e.type)
               FROM events e JOIN sources s ON s.id = e.source_id WHERE e.id = d.event_id)
          END,
          d.created_at";

pub struct Scheduler {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    catalog: Arc<SharedCatalog>,
    limits: Arc<Limits>,
    redis: Arc<RedisLink>,
    deliverers: Vec<Addr<Deliverer>>,
    node_id: String,
    cfg: DeliveryConfig,
    status: Arc<ActorStatus>,
    /// How long to wait before resuming after a restart (from the restart policy's back-off).
    resume_delay: std::time::Duration,
    /// False while waiting out that delay: nothing may claim before `resume`.
    resumed: bool,
    inflight: usize,
    /// This node's attempts in flight per destination (for the fair share).
    inflight_by_destination: HashMap<Uuid, u32>,
    /// The lease of every delivery in flight here, to release them at shutdown.
    leases: HashMap<Uuid, (Uuid, DateTime<Utc>)>,
    /// Set by `Shutdown`: no more claims; answered when nothing is in flight.
    stopping: Option<tokio::sync::oneshot::Sender<()>>,
    claiming: bool,
    again: bool,
    next_deliverer: usize,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        pg_config: tokio_postgres::Config,
        catalog: Arc<SharedCatalog>,
        limits: Arc<Limits>,
        redis: Arc<RedisLink>,
        deliverers: Vec<Addr<Deliverer>>,
        node_id: String,
        cfg: DeliveryConfig,
        status: Arc<ActorStatus>,
    ) -> Self {
        Self {
            pool,
            pg_config,
            catalog,
            limits,
            redis,
            deliverers,
            node_id,
            cfg,
            status,
            resume_delay: std::time::Duration::ZERO,
            resumed: false,
            inflight: 0,
            inflight_by_destination: HashMap::new(),
            leases: HashMap::new(),
            stopping: None,
            claiming: false,
            again: false,
            next_deliverer: 0,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping.is_some() || !self.resumed {
            return;
        }
        if self.claiming {
            self.again = true;
            return;
        }
        // The claim loop turned: nothing is stuck in a round.
        self.status.beat();
        let free = self.cfg.max_in_flight.saturating_sub(self.inflight);
        if free == 0 || self.deliverers.is_empty() {
            return;
        }
        let catalog = self.catalog.get();
        let mut active: Vec<Arc<Destination>> =
            catalog.destinations.values().filter(|d| d.state == DestinationState::Active).cloned().collect();
        if active.is_empty() {
            return;
        }
        // A different order every round, so no destination is always served last.
        active.shuffle(&mut rand::thread_rng());
        self.claiming = true;
        let round = ClaimRound {
            pool: self.pool.clone(),
            limits: self.limits.clone(),
            redis: self.redis.get(),
            node_id: self.node_id.clone(),
            lease_margin_ms: self.cfg.lease_margin_ms.min(i32::MAX as u64) as i32,
        };
        let local = self.inflight_by_destination.clone();
        let capacity = self.cfg.max_in_flight;
        let fut = guarded(round.run(active, free, capacity, local));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.claiming = false;
            act.status.beat();
            let full = match res {
                Err(Panicked(what)) => {
                    // Counted and restarted by the supervisor; the claim (if committed) expires with its leases.
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
                Ok(Ok((jobs, buried))) => {
                    act.status.set_state(ActorState::Running);
                    let n = jobs.len();
                    for job in jobs {
                        act.dispatch(job, ctx);
                    }
                    // Buried rows took budget without being sent: look again at once for the work behind them.
                    (n > 0 && n >= free) || buried > 0
                }
                Ok(Err(error)) => {
                    // The delivery side's own health: reported in /readyz's delivery section, never unready.
                    act.status.set_state(ActorState::Degraded);
                    metrics::counter!("hookgate_scheduler_claim_failures_total").increment(1);
                    tracing::warn!(message = "Claim round failed.", error = %format!("{error:#}"));
                    false
                }
            };
            if std::mem::take(&mut act.again) || full {
                act.tick(ctx);
            }
        }));
    }

    fn dispatch(&mut self, job: Job, ctx: &mut Context<Self>) {
        let catalog = self.catalog.get();
        let Some(destination) = catalog.destinations.get(&job.destination_id).cloned() else {
            // Unknown to this node's snapshot yet: give the delivery back at once.
            self.release(job, ctx);
            return;
        };
        // A deferred evaluation needs the route's programs (None: the route is disabled or gone).
        let route = job.routing.as_ref().and_then(|_| catalog.route(job.route_id).cloned());
        let i = self.next_deliverer % self.deliverers.len();
        self.next_deliverer = self.next_deliverer.wrapping_add(1);
        let (destination_id, delivery_id, lease) =
            (job.destination_id, job.delivery_id, (job.lease_id, job.created_at));
        match self.deliverers[i].try_send(Deliver { job, destination, route }) {
            Ok(()) => {
                self.inflight += 1;
                self.leases.insert(delivery_id, lease);
                *self.inflight_by_destination.entry(destination_id).or_default() += 1;
            }
            Err(e) => {
                metrics::counter!("hookgate_scheduler_dispatch_refused_total").increment(1);
                tracing::warn!(message = "Deliverer mailbox full; giving the delivery back.");
                let Deliver { job, .. } = e.into_inner();
                self.release(job, ctx);
            }
        }
    }

    /// Releases a lease this node will not use, so that the delivery is claimable again now, and gives back what
    /// its claim took from the destination's limits (a circuit grant, a rate-limit token).
    fn release(&mut self, job: Job, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let (limits, redis) = (self.limits.clone(), self.redis.get());
        let rate = self.catalog.get().destinations.get(&job.destination_id).and_then(|d| d.rate_limit);
        let fut = async move {
            if let Some(rate) = rate {
                limits.return_tokens(redis.clone(), job.destination_id, rate, 1).await;
            }
            limits.release_grants(redis, job.destination_id, 1).await;
            let client = pool.get().await?;
            let lease = Lease { delivery_id: job.delivery_id, created_at: job.created_at, lease_id: job.lease_id };
            release_leases(&client, &[lease]).await?;
            Ok::<_, anyhow::Error>(())
        };
        ctx.spawn(guarded(fut).into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(message = "Could not release a lease; it will expire.", error = %format!("{error:#}"))
            }
            Err(Panicked(what)) => {
                act.status.record_panic(&what);
                ctx.stop();
            }
        }));
    }

    /// Starts listening and claiming (at start, and after a restart's back-off delay).
    fn resume(&mut self, ctx: &mut Context<Self>) {
        self.resumed = true;
        self.status.set_state(ActorState::Running);
        self.status.beat();
        let rx = listen::spawn_listener(self.pg_config.clone(), &[DELIVERIES_CHANNEL, CATALOG_CHANNEL]);
        ctx.add_stream(listen::stream(rx));
        ctx.run_interval(self.cfg.poll_interval(), |act, ctx| act.tick(ctx));
        self.tick(ctx);
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_in_flight.max(16) * 2);
        let delay = std::mem::take(&mut self.resume_delay);
        if delay.is_zero() {
            self.resume(ctx);
        } else {
            ctx.run_later(delay, |act, ctx| act.resume(ctx));
        }
    }
}

impl actix::Supervised for Scheduler {
    fn restarting(&mut self, _: &mut Self::Context) {
        // Attempts in flight keep their bookkeeping: their `Completed` still arrives here.
        self.claiming = false;
        self.again = false;
        self.resumed = false;
        self.resume_delay = self.status.record_restart();
    }
}

impl StreamHandler<ListenEvent> for Scheduler {
    fn handle(&mut self, _: ListenEvent, ctx: &mut Self::Context) {
        self.tick(ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<Completed> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: Completed, ctx: &mut Self::Context) {
        self.inflight = self.inflight.saturating_sub(1);
        self.leases.remove(&msg.delivery_id);
        if self.inflight == 0 {
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(());
                // Stay stopped: a later Completed or Wake must not claim again.
                self.stopping = Some(tokio::sync::oneshot::channel().0);
            }
        }
        if let Some(n) = self.inflight_by_destination.get_mut(&msg.destination_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inflight_by_destination.remove(&msg.destination_id);
            }
        }
        self.tick(ctx);
    }
}

impl Handler<Shutdown> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        if self.inflight == 0 {
            let _ = msg.reply.send(());
            self.stopping = Some(tokio::sync::oneshot::channel().0);
            return;
        }
        self.stopping = Some(msg.reply);
        ctx.run_later(msg.grace, |act, ctx| {
            if act.leases.is_empty() {
                return;
            }
            let leases: Vec<Lease> = act
                .leases
                .drain()
                .map(|(delivery_id, (lease_id, created_at))| Lease { delivery_id, created_at, lease_id })
                .collect();
            tracing::info!(message = "Releasing the leases of unfinished attempts.", count = leases.len());
            let pool = act.pool.clone();
            let fut = async move {
                let client = pool.get().await?;
                release_leases(&client, &leases).await?;
                Ok::<_, anyhow::Error>(())
            };
            ctx.spawn(fut.into_actor(act).map(|res, act, _| {
                if let Err(error) = res {
                    tracing::warn!(message = "Could not release leases; they will expire.", error = %format!("{error:#}"));
                }
                if let Some(reply) = act.stopping.take() {
                    let _ = reply.send(());
                }
                act.stopping = Some(tokio::sync::oneshot::channel().0);
            }));
        });
    }
}

impl Handler<Wake> for Scheduler {
    type Result = ();
    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.tick(ctx);
    }
}

/// The inputs of one claim round, moved into its future.
struct ClaimRound {
    pool: Pool,
    limits: Arc<Limits>,
    redis: Option<redis::aio::MultiplexedConnection>,
    node_id: String,
    lease_margin_ms: i32,
}

/// One claimed row, read without trusting any column.
enum Claimed {
    Job(Job),
    /// The delivery's event row is gone (and it has no payload of its own): nothing can be sent.
    Orphan(Uuid),
    /// A column could not be read: the delivery cannot be attempted; why.
    Unreadable(Uuid, String),
}

/// Reads one row of `CLAIM`'s RETURNING. Never panics: a NULL or a wrong type is a value, not a crash.
fn read_claimed(r: &tokio_postgres::Row) -> Option<Claimed> {
    let id: Uuid = r.try_get(0).ok()?;
    let job = (|| -> Result<Option<Job>, tokio_postgres::Error> {
        let Some(body) = r.try_get::<_, Option<Vec<u8>>>(4)? else { return Ok(None) };
        let routing = match r.try_get::<_, bool>(9)? {
            false => None,
            true => match r.try_get::<_, Option<serde_json::Value>>(10)? {
                // The event is gone: nothing to evaluate, nothing to send.
                None => return Ok(None),
                Some(v) => Some(RoutingInput {
                    source: v["source"].as_str().unwrap_or_default().to_owned(),
                    headers: v["headers"].clone(),
                    event_type: v["type"].as_str().map(str::to_owned),
                }),
            },
        };
        Ok(Some(Job {
            delivery_id: id,
            event_id: r.try_get(1)?,
            destination_id: r.try_get(2)?,
            attempt: r.try_get::<_, i32>(3)?.saturating_add(1),
            body: Bytes::from(body),
            transformed: r.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
            content_type: r.try_get(6)?,
            lease_id: r.try_get(7)?,
            route_id: r.try_get(8)?,
            routing,
            created_at: r.try_get(11)?,
        }))
    })();
    Some(match job {
        Ok(Some(job)) => Claimed::Job(job),
        Ok(None) => Claimed::Orphan(id),
        Err(e) => Claimed::Unreadable(id, format!("unreadable delivery row: {e}")),
    })
}

/// Ends claimed deliveries that can never be attempted, in the claim's transaction: `dead` with their reason.
const BURY: &str = "\
UPDATE deliveries d
SET state = 'dead', last_error = u.reason, lease_owner = NULL, lease_id = NULL, lease_expires_at = NULL,
    updated_at = now()
FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason)
WHERE d.id = u.id AND d.state = 'pending'";

impl ClaimRound {
    /// `capacity` is the node's limit and `free` what is left of it; `local` what this node has in flight per
    /// destination.
    async fn run(
        self,
        active: Vec<Arc<Destination>>,
        free: usize,
        capacity: usize,
        local: HashMap<Uuid, u32>,
    ) -> anyhow::Result<(Vec<Job>, usize)> {
        let (fifo_all, normal_all): (Vec<_>, Vec<_>) = active.iter().partition(|d| d.fifo);
        let normal_ids: Vec<Uuid> = normal_all.iter().map(|d| d.id).collect();
        let normal_caps: Vec<i32> = normal_all.iter().map(|d| d.max_in_flight.min(i32::MAX as u32) as i32).collect();
        let fifo_ids: Vec<Uuid> = fifo_all.iter().map(|d| d.id).collect();
        // The connection goes back to the pool before any Redis call: a slow Redis never holds PostgreSQL.
        let busy: HashMap<Uuid, u32> = {
            let client = self.pool.get().await?;
            // Prepared once per connection: planning a statement over every daily partition costs more than running it.
            let due = client.prepare_cached(DUE).await?;
            let rows = client.query(&due, &[&normal_ids, &fifo_ids, &normal_caps]).await?;
            rows.iter()
                .filter_map(|r| {
                    Some((r.try_get(0).ok()?, r.try_get::<_, Option<i32>>(1).ok()?.unwrap_or(0).max(0) as u32))
                })
                .collect()
        };
        if busy.is_empty() {
            return Ok((Vec::new(), 0));
        }

        // Budgets: what the destination may still have in flight cluster-wide, capped by its fair share of this
        // node, then by its rate-limit tokens, then by its circuit breaker. The fair share is the node's capacity
        // split evenly among the destinations with work due or in flight here, and never more than three quarters
        // of it: a slow destination can never hold every slot, so work for another always finds one free.
        let contending = busy.keys().chain(local.keys()).collect::<std::collections::HashSet<_>>().len().max(1);
        let ceiling = (capacity - capacity / 4).max(1);
        let share = (capacity / contending).clamp(1, ceiling) as u32;
        let mut remaining = free as u32;
        let mut wants: Vec<(Arc<Destination>, u32)> = Vec::new();
        for d in active.into_iter() {
            let Some(in_flight) = busy.get(&d.id) else { continue };
            if remaining == 0 {
                break;
            }
            let mine = local.get(&d.id).copied().unwrap_or(0);
            let want = if d.fifo { 1 } else { d.max_in_flight.saturating_sub(*in_flight) };
            let want = want.min(share.saturating_sub(mine)).min(remaining);
            if want > 0 {
                remaining -= want;
                wants.push((d, want));
            }
        }
        // Every destination's limits at once: a round waits for Redis at most once, however many destinations.
        let admitted = futures::future::join_all(wants.into_iter().map(|(d, want)| {
            let (limits, redis) = (self.limits.clone(), self.redis.clone());
            async move {
                let tokens = match d.rate_limit {
                    Some(rate) => limits.take_tokens(redis.clone(), d.id, rate, want).await.0,
                    None => want,
                };
                let admitted = if tokens > 0 { limits.admit(redis.clone(), d.id, tokens).await.0 } else { 0 };
                if let (Some(rate), true) = (d.rate_limit, admitted < tokens) {
                    limits.return_tokens(redis, d.id, rate, tokens - admitted).await;
                }
                (d, admitted)
            }
        }))
        .await;
        let budgets: Vec<(Arc<Destination>, u32)> = admitted.into_iter().filter(|(_, n)| *n > 0).collect();
        if budgets.is_empty() {
            return Ok((Vec::new(), 0));
        }

        let (fifo, normal): (Vec<_>, Vec<_>) = budgets.iter().partition(|(d, _)| d.fifo);
        let normal_ids: Vec<Uuid> = normal.iter().map(|(d, _)| d.id).collect();
        let normal_n: Vec<i32> = normal.iter().map(|(_, n)| *n as i32).collect();
        let normal_cap: Vec<i32> = normal.iter().map(|(d, _)| d.max_in_flight.min(i32::MAX as u32) as i32).collect();
        let fifo_ids: Vec<Uuid> = fifo.iter().map(|(d, _)| d.id).collect();

        let claimed_rows = async {
            let mut jobs = Vec::new();
            let mut buried: Vec<(Uuid, String)> = Vec::new();
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            // A claimer stuck holding the lock (a partitioned node) delays the others by at most this.
            tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await?;
            let claim = tx.prepare_cached(CLAIM).await?;
            let rows = tx
                .query(&claim, &[&normal_ids, &normal_n, &normal_cap, &fifo_ids, &self.node_id, &self.lease_margin_ms])
                .await?;
            for row in &rows {
                match read_claimed(row) {
                    Some(Claimed::Job(job)) => jobs.push(job),
                    Some(Claimed::Orphan(id)) => buried.push((id, ORPHAN_REASON.to_owned())),
                    Some(Claimed::Unreadable(id, why)) => buried.push((id, why)),
                    // No id: nothing to name or bury; its lease expires and the reaper clears it.
                    None => tracing::error!(message = "A claimed delivery row has no readable id."),
                }
            }
            if !buried.is_empty() {
                let (ids, reasons): (Vec<Uuid>, Vec<&str>) = buried.iter().map(|(id, r)| (*id, r.as_str())).unzip();
                tx.execute(BURY, &[&ids, &reasons]).await?;
            }
            tx.commit().await?;
            Ok::<_, anyhow::Error>((jobs, buried))
        }
        .await;
        let (jobs, buried) = match claimed_rows {
            Ok(claimed) => claimed,
            Err(error) => {
                // Nothing was claimed: every grant and token of this round goes back now, not at its expiry.
                self.give_back(&budgets, &HashMap::new()).await;
                return Err(error);
            }
        };
        for (id, reason) in &buried {
            metrics::counter!("hookgate_deliveries_unattemptable_total").increment(1);
            tracing::warn!(message = "Delivery cannot be attempted; it is dead.", delivery = %id, reason = %reason);
        }

        let mut claimed: HashMap<Uuid, u32> = HashMap::new();
        for j in &jobs {
            *claimed.entry(j.destination_id).or_default() += 1;
        }
        self.give_back(&budgets, &claimed).await;
        metrics::counter!("hookgate_scheduler_claimed_total").increment(jobs.len() as u64);
        Ok((jobs, buried.len()))
    }

    /// Gives back what a round was granted and did not use: rate-limit tokens, and half-open or ramping grants of
    /// the circuit breaker (which must not sit unused until they expire).
    async fn give_back(&self, budgets: &[(Arc<Destination>, u32)], claimed: &HashMap<Uuid, u32>) {
        futures::future::join_all(budgets.iter().map(|(d, granted)| {
            let used = claimed.get(&d.id).copied().unwrap_or(0);
            let (limits, redis) = (self.limits.clone(), self.redis.clone());
            async move {
                if let (Some(rate), true) = (d.rate_limit, used < *granted) {
                    limits.return_tokens(redis.clone(), d.id, rate, granted - used).await;
                }
                if used < *granted {
                    limits.release_grants(redis, d.id, granted - used).await;
                }
            }
        }))
        .await;
    }
}
