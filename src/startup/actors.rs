//! Starts the node's actors under supervision, each with its status in the health registry.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, AsyncContext, Supervisor};
use anyhow::Context;
use deadpool_postgres::Pool;
use hookgate_actors::admission::Admission;
use hookgate_actors::catalog::SharedCatalog;
use hookgate_actors::deliverer::Deliverer;
use hookgate_actors::handoff::HandOffPort;
use hookgate_actors::janitor::Janitor;
use hookgate_actors::limits::Limits;
use hookgate_actors::notifier::{Notices, Notifier};
use hookgate_actors::pg_tls::PgConnect;
use hookgate_actors::result_writer::{ConnectScheduler, ResultWriter};
use hookgate_actors::router::{Router, WakeAfterReload};
use hookgate_actors::scheduler::Scheduler;
use hookgate_actors::sources::SourceRegistry;
use hookgate_actors::tail::{self, TailContext, TailHub, TailPublisher};
use hookgate_actors::tls::OutboundTls;
use hookgate_actors::{
    ActorStatus, Cache, CacheConfig, CacheLink, EventWriter, Health, HealthRegistry, Mailbox, RedisLink,
    RedisLinkConfig,
};
use hookgate_store::notifications::NotificationDestination;

use crate::config::Settings;

/// The readiness probe's connection, as `pg_stat_activity` names it.
const PROBE_APPLICATION_NAME: &str = "hookgate-health";

/// The addresses of a node's supervised actors; the delivery side's only when delivery is enabled.
#[derive(Clone)]
pub struct Actors {
    pub writer: Addr<EventWriter>,
    pub cache: Addr<Cache>,
    pub router: Addr<Router>,
    pub janitor: Addr<Janitor>,
    pub scheduler: Option<Addr<Scheduler>>,
    pub result_writer: Option<Addr<ResultWriter>>,
    /// Only when notifications are on.
    pub notifier: Option<Addr<Notifier>>,
}

/// Stops an arbiter (the writer's, and the deliverers' when `delivery.deliverer_threads` gives them some) when dropped.
pub(super) struct ArbiterGuard(Arbiter);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Everything the actors' start gives the rest of the node.
pub(super) struct Started {
    pub actors: Actors,
    /// The front end's bounded address of the EventWriter (the one ingest actor it talks to).
    pub writer: Mailbox<EventWriter>,
    pub prober: Addr<Health>,
    /// Circuit breakers and rate limits, shared by the delivery side and the admin API's destination health.
    pub limits: Arc<Limits>,
    /// The limits' own Redis connection (never the cache's, never its fate).
    pub limits_redis: Arc<RedisLink>,
    pub arbiters: Vec<ArbiterGuard>,
    /// The live tail's fan-out to this node's SSE clients.
    pub tail: Arc<TailHub>,
    /// Ingest's admission, which the EventWriter keeps informed of its queueing delay.
    pub admission: Arc<Admission>,
}

/// Starts every actor: the Notifier (when notifications are on), the ingest side, the background side, the delivery
/// side (when enabled), then the prober.
pub(super) fn start(
    settings: &Settings,
    pool: &Pool,
    pg: &PgConnect,
    registry: &Arc<SourceRegistry>,
    catalog: &Arc<SharedCatalog>,
    health: &Arc<HealthRegistry>,
    notifications: Option<NotificationDestination>,
) -> anyhow::Result<Started> {
    let policy = settings.supervision;
    let (tail_publisher, tail) = tail::start(
        &settings.tail,
        TailContext {
            client: settings.redis.client()?,
            key_prefix: settings.redis.key_prefix.clone(),
            node_id: settings.server.node_id(),
            connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
            sources: registry.clone(),
        },
    );
    let (notifier, notices) = match notifications {
        Some(ops) => {
            let mailbox = notifier(settings, pool, catalog, ops, health.register("notifier", false, policy));
            (Some(mailbox.addr().clone()), Notices::new(mailbox))
        }
        None => (None, Notices::off()),
    };
    // Fresh deliveries go from the writer to this node's Scheduler in memory, when both run here.
    let handoff = (settings.delivery.enabled && settings.delivery.handoff)
        .then(|| HandOffPort::new(settings.server.node_id(), settings.delivery.lease_margin_ms));
    let admission = Arc::new(Admission::new(
        Duration::from_millis(settings.server.admission_target_ms),
        Duration::from_millis(settings.server.admission_grace_ms),
        usize::try_from(settings.server.ingest_bytes_bound()).unwrap_or(usize::MAX),
    ));
    // The dedupe cache's one client is the writer: both live on the writer's arbiter (ADR-0022).
    let writer_arbiter = Arbiter::new();
    let writer_status = health.register("event_writer", true, policy);
    let cache = cache(settings, health, &writer_arbiter)?;
    let writer = event_writer(
        settings,
        pool,
        writer_status,
        health,
        &writer_arbiter,
        cache.clone(),
        handoff.clone(),
        tail_publisher.clone(),
        admission.clone(),
    );
    let router = router(pool, pg, catalog, registry, health.register("router", false, policy));
    let janitor = janitor(settings, pool, health.register("janitor", false, policy), notices.clone());
    let (limits, limits_redis) = limits(settings, notices.clone())?;
    let mut arbiters = vec![ArbiterGuard(writer_arbiter)];
    let (scheduler, result_writer) = if settings.delivery.enabled {
        let (scheduler, results, deliverer_arbiters) =
            delivery(settings, pool, pg, catalog, health, &limits, &limits_redis, handoff, tail_publisher, notices)?;
        arbiters.extend(deliverer_arbiters);
        router
            .try_send(WakeAfterReload(scheduler.clone().recipient()))
            .context("Failed to connect the scheduler to the router")?;
        (Some(scheduler), Some(results))
    } else {
        (None, None)
    };
    // The readiness probe's own connection, never a pooled one.
    let mut probe = pg.clone();
    probe.config.application_name(PROBE_APPLICATION_NAME);
    let prober = Health::new(
        &probe,
        health.clone(),
        Duration::from_millis(settings.server.health_interval_ms),
        Duration::from_millis(settings.database.connect_timeout_ms),
    )
    .start();
    Ok(Started {
        actors: Actors {
            writer: writer.addr().clone(),
            cache: cache.addr().clone(),
            router,
            janitor,
            scheduler,
            result_writer,
            notifier,
        },
        writer,
        prober,
        limits,
        limits_redis,
        arbiters,
        tail,
        admission,
    })
}

/// The EventWriter, on an arbiter of its own (its flushes never wait behind HTTP work), asking `cache` (on the same
/// arbiter) around each flush.
#[allow(clippy::too_many_arguments)]
fn event_writer(
    settings: &Settings,
    pool: &Pool,
    status: Arc<ActorStatus>,
    health: &Arc<HealthRegistry>,
    arbiter: &Arbiter,
    cache: Mailbox<Cache>,
    handoff: Option<Arc<HandOffPort>>,
    tail: Arc<TailPublisher>,
    admission: Arc<Admission>,
) -> Mailbox<EventWriter> {
    // The cache answers "miss" on its own after its op timeout; this only bounds a stuck mailbox.
    let cache = CacheLink::new(cache, Duration::from_millis(settings.redis.op_timeout_ms.saturating_mul(2)));
    let addr = {
        let (pool, cfg, status, health) = (pool.clone(), settings.writer.clone(), status.clone(), health.clone());
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
            let writer =
                EventWriter::new(pool, cfg, status, health).with_tail(tail).with_admission(admission).with_cache(cache);
            match handoff {
                Some(port) => writer.with_handoff(port),
                None => writer,
            }
        })
    };
    Mailbox::new(addr, status)
}

/// The Cache: the Redis idempotency fast path.
fn cache(settings: &Settings, health: &Arc<HealthRegistry>, arbiter: &Arbiter) -> anyhow::Result<Mailbox<Cache>> {
    let status = health.register("cache", false, settings.supervision);
    let cfg = CacheConfig {
        key_prefix: settings.redis.key_prefix.clone(),
        op_timeout: Duration::from_millis(settings.redis.op_timeout_ms),
        connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
        dedupe_ttl: Duration::from_secs(settings.redis.dedupe_ttl_secs),
        max_ttl: Duration::from_secs(settings.retention.dedupe_window_secs),
        mailbox_capacity: settings.redis.mailbox_capacity,
        ping_interval: Duration::from_millis(settings.server.health_interval_ms),
    };
    let client = settings.redis.client()?;
    let addr = {
        let (status, health) = (status.clone(), health.clone());
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Cache::new(client, cfg, status, health))
    };
    Ok(Mailbox::new(addr, status))
}

/// The Router: reloads the catalog and the sources when PostgreSQL announces a change.
fn router(
    pool: &Pool,
    pg: &PgConnect,
    catalog: &Arc<SharedCatalog>,
    registry: &Arc<SourceRegistry>,
    status: Arc<ActorStatus>,
) -> Addr<Router> {
    let (pool, pg) = (pool.clone(), pg.clone());
    let (catalog, registry) = (catalog.clone(), registry.clone());
    Supervisor::start(move |_| Router::new(pool, pg, catalog, registry, status))
}

/// The Notifier: operational notifications, stored and delivered like any event.
fn notifier(
    settings: &Settings,
    pool: &Pool,
    catalog: &Arc<SharedCatalog>,
    ops: NotificationDestination,
    status: Arc<ActorStatus>,
) -> Mailbox<Notifier> {
    tracing::info!(message = "Operational notifications are on.", destination = %ops.slug);
    let (pool, catalog, node, cfg) =
        (pool.clone(), catalog.clone(), settings.server.node_id(), settings.notifications.clone());
    let addr = {
        let status = status.clone();
        Supervisor::start(move |_| Notifier::new(pool, catalog, node, ops, cfg, status))
    };
    Mailbox::new(addr, status)
}

/// The Janitor: the cluster's singleton jobs.
fn janitor(settings: &Settings, pool: &Pool, status: Arc<ActorStatus>, notices: Notices) -> Addr<Janitor> {
    let cfg = settings.retention.clone();
    let auto_disable = Duration::from_secs(settings.delivery.auto_disable_after_secs);
    let pool = pool.clone();
    Supervisor::start(move |_| Janitor::new(pool, cfg, auto_disable, status).with_notices(notices))
}

/// Circuit breakers and rate limits, with one Redis connection of their own.
fn limits(settings: &Settings, notices: Notices) -> anyhow::Result<(Arc<Limits>, Arc<RedisLink>)> {
    let limits = Arc::new(
        Limits::new(&settings.redis.key_prefix, settings.delivery.circuit)
            .with_op_timeout(Duration::from_millis(settings.delivery.limits_timeout_ms))
            .with_notices(notices),
    );
    let link = RedisLink::start(
        settings.redis.client()?,
        RedisLinkConfig {
            name: "limits",
            response_timeout: Duration::from_millis(settings.delivery.limits_timeout_ms),
            connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
            ping_interval: Duration::from_millis(settings.server.health_interval_ms.max(100)),
        },
    );
    Ok((limits, link))
}

/// The delivery side: the ResultWriter, then the Scheduler with its Deliverers: on the system arbiter with them
/// (`delivery.deliverer_threads = 0`, the default: ADR-0027), or spread over arbiters of their own.
#[allow(clippy::too_many_arguments)]
fn delivery(
    settings: &Settings,
    pool: &Pool,
    pg: &PgConnect,
    catalog: &Arc<SharedCatalog>,
    health: &Arc<HealthRegistry>,
    limits: &Arc<Limits>,
    limits_redis: &Arc<RedisLink>,
    handoff: Option<Arc<HandOffPort>>,
    tail: Arc<TailPublisher>,
    notices: Notices,
) -> anyhow::Result<(Addr<Scheduler>, Addr<ResultWriter>, Vec<ArbiterGuard>)> {
    let cfg = settings.delivery.clone();
    let policy = settings.supervision;
    let node_id = settings.server.node_id();
    let pg = pg.clone();
    let results_status = health.register_delivery("result_writer", None, policy);
    let results = {
        let (pool, catalog, node, cfg) = (pool.clone(), catalog.clone(), node_id.clone(), cfg.clone());
        let notices = notices.clone();
        Supervisor::start(move |_| {
            ResultWriter::new(pool, catalog, node, cfg, results_status)
                .with_tail(tail.clone())
                .with_notices(notices.clone())
        })
    };
    let ssrf = Arc::new(cfg.ssrf_policy());
    // Read once (the system store is files on disk); every deliverer's clients trust these roots.
    let tls = OutboundTls::load(cfg.tls_roots).context("Failed to load the TLS trust roots (delivery.tls_roots)")?;
    let proxy = cfg.egress_proxy()?;
    if let Some(p) = &proxy {
        tracing::info!(message = "Deliveries go through the egress proxy.", proxy = %p.address());
    }
    let placement = deliverer_placement(cfg.deliverers, cfg.deliverer_threads);
    let threads = placement.iter().flatten().max().map_or(0, |t| t + 1);
    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    tracing::info!(message = "The delivery side's layout.", deliverers = placement.len(), deliverer_threads = threads);
    let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
    // The claim loop turns at least every poll interval; a round may wait on the claim lock (5 s) and the pool, so
    // only a loop silent for much longer than that counts as stalled.
    let stall_after = Duration::from_millis(cfg.poll_interval_ms.saturating_mul(10)).max(Duration::from_secs(30));
    let scheduler_status = health.register_delivery("scheduler", Some(stall_after), policy);
    let scheduler = {
        let (pool, catalog, redis, node) = (pool.clone(), catalog.clone(), limits_redis.clone(), node_id);
        let limits = limits.clone();
        let results = results.clone();
        let handoff = handoff.clone();
        Supervisor::start(move |ctx: &mut actix::Context<Scheduler>| {
            let me = ctx.address();
            let deliverers = placement
                .iter()
                .map(|thread| {
                    let (ssrf, tls, proxy) = (ssrf.clone(), tls.clone(), proxy.clone());
                    let (results, me) = (results.clone().recipient(), me.clone().recipient());
                    let (limits, redis) = (limits.clone(), redis.clone());
                    let (max, cap) = (cfg.max_in_flight, cfg.max_in_flight.max(16));
                    let (jq_timeout, jq_max) = (Duration::from_millis(cfg.jq_timeout_ms), cfg.jq_max_output_bytes);
                    let make = move |_: &mut actix::Context<Deliverer>| {
                        Deliverer::new(ssrf, tls, limits, redis, max, cap, results, me)
                            .with_jq_bounds(jq_timeout, jq_max)
                            .with_proxy(proxy)
                    };
                    match thread {
                        Some(t) => Supervisor::start_in_arbiter(&handles[*t], make),
                        None => Supervisor::start(make),
                    }
                })
                .collect();
            let scheduler = Scheduler::new(pool, pg, catalog, limits, redis, deliverers, node, cfg, scheduler_status)
                .with_notices(notices.clone());
            match handoff {
                Some(port) => scheduler.with_handoff(port),
                None => scheduler,
            }
        })
    };
    if let Some(port) = &handoff {
        port.connect(scheduler.clone().recipient());
    }
    results.try_send(ConnectScheduler(scheduler.clone())).context("Failed to connect the scheduler")?;
    Ok((scheduler, results, arbiters.into_iter().map(ArbiterGuard).collect()))
}

/// Where each Deliverer runs: `None` on the system arbiter, beside the Scheduler and the ResultWriter, so a hand-off,
/// a result and a completion stay on one thread (`threads = 0`, the default: ADR-0027); `Some(t)` on thread `t` of
/// the deliverers' own, deliverer `i` on `i mod threads`. At least one deliverer, at most one thread per deliverer.
fn deliverer_placement(deliverers: usize, threads: usize) -> Vec<Option<usize>> {
    let deliverers = deliverers.max(1);
    let threads = threads.min(deliverers);
    (0..deliverers).map(|i| (threads > 0).then(|| i % threads)).collect()
}

#[cfg(test)]
mod tests {
    use super::deliverer_placement;

    #[test]
    fn by_default_every_deliverer_runs_on_the_system_arbiter() {
        let default = hookgate_actors::config::DeliveryConfig::default();
        assert_eq!(deliverer_placement(default.deliverers, default.deliverer_threads), vec![None, None]);
    }

    #[test]
    fn deliverer_threads_spread_the_deliverers_round_robin_one_thread_each_at_most() {
        assert_eq!(deliverer_placement(3, 2), vec![Some(0), Some(1), Some(0)]);
        assert_eq!(deliverer_placement(2, 5), vec![Some(0), Some(1)]);
        assert_eq!(deliverer_placement(0, 0), vec![None]);
    }
}
