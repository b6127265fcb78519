//! Builds the application: pool, migrations, declared sources, actors, then the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, AsyncContext, Supervisor};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hookgate_actors::catalog::{self, SharedCatalog};
use hookgate_actors::deliverer::Deliverer;
use hookgate_actors::janitor::Janitor;
use hookgate_actors::limits::Limits;
use hookgate_actors::result_writer::{ConnectScheduler, ResultWriter};
use hookgate_actors::router::{ReloadHook, Router};
use hookgate_actors::scheduler::Scheduler;
use hookgate_actors::{
    shut_down, Cache, CacheConfig, EventWriter, Health, HealthRegistry, Mailbox, RedisLink, RedisLinkConfig,
};
use hookgate_store::migrations;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;

use crate::config::{DatabaseSettings, Settings};
use crate::sources::SourceRegistry;
use crate::{admin, routes, sources, telemetry};

/// What every request handler can reach. Built once, before the HTTP workers start.
pub struct AppState {
    pub sources: Arc<SourceRegistry>,
    pub writer: Mailbox<EventWriter>,
    pub cache: Mailbox<Cache>,
    pub health: Arc<HealthRegistry>,
    pub metrics: PrometheusHandle,
    pub catalog: Arc<SharedCatalog>,
    /// One permit per ingest request in progress (`server.max_inflight_ingest`).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    pub ingest_timeout: Duration,
    pub cache_timeout: Duration,
    pub retry_after_secs: u64,
    pub jq_timeout: Duration,
    pub jq_max_output: usize,
}

/// A running hookgate node.
pub struct Application {
    port: u16,
    server: Server,
    writer: Addr<EventWriter>,
    health: Arc<HealthRegistry>,
    delivery: Option<(Addr<Scheduler>, Addr<ResultWriter>)>,
    janitor: Addr<Janitor>,
    router: Addr<Router>,
    cache: Addr<Cache>,
    prober: Addr<Health>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    writer_arbiter: ArbiterGuard,
    _deliverer_arbiters: Vec<ArbiterGuard>,
}

/// The addresses of a node's supervised actors; the delivery side's only when delivery is enabled.
#[derive(Clone)]
pub struct Actors {
    pub writer: Addr<EventWriter>,
    pub cache: Addr<Cache>,
    pub router: Addr<Router>,
    pub janitor: Addr<Janitor>,
    pub scheduler: Option<Addr<Scheduler>>,
    pub result_writer: Option<Addr<ResultWriter>>,
}

/// Stops the writer's arbiter when the application is dropped.
struct ArbiterGuard(Arbiter);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Builds the connection pool; no connection is opened until first use.
pub fn build_pool(db: &DatabaseSettings) -> anyhow::Result<Pool> {
    let mgr = Manager::from_config(
        db.pg_config()?,
        tokio_postgres::NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(mgr)
        .max_size(db.pool_size)
        .wait_timeout(Some(Duration::from_millis(db.pool_wait_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(db.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(db.connect_timeout_ms)))
        .runtime(Runtime::Tokio1)
        .build()
        .context("Failed to build the PostgreSQL pool")
}

impl Application {
    /// Prepares the database, starts the actors and binds the listener. Must run inside an actix `System`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Installed first, so that metrics recorded while starting are kept.
        let metrics = telemetry::metrics_handle();
        let pool = build_pool(&settings.database)?;
        if settings.database.migrate_on_start {
            migrations::run(&pool).await?;
        }
        let (destinations, routes) = catalog::declared_rows(&settings.destinations, &settings.routes)?;
        hookgate_store::apply_declared(&pool, &sources::declared_rows(&settings.sources)?, &destinations, &routes)
            .await?;
        let registry = Arc::new(SourceRegistry::default());
        let n = registry.reload(&pool).await?;
        let catalog = Arc::new(SharedCatalog::default());
        catalog.reload(&pool).await?;
        tracing::info!(message = "Sources, destinations and routes loaded.", sources = n);
        let node_id = settings.server.node_id();
        let pg_config = settings.database.pg_config()?;

        let health = HealthRegistry::new();
        let policy = settings.supervision;

        let writer_status = health.register("event_writer", true, policy);
        let writer_arbiter = Arbiter::new();
        let writer = {
            let (pool, cfg, status, health) =
                (pool.clone(), settings.writer.clone(), writer_status.clone(), health.clone());
            Supervisor::start_in_arbiter(&writer_arbiter.handle(), move |_| EventWriter::new(pool, cfg, status, health))
        };

        let cache_status = health.register("cache", false, policy);
        let redis_client = redis::Client::open(settings.redis.url.expose_secret())
            .map_err(|_| anyhow::anyhow!("redis.url is not a valid Redis URL"))?;
        let limits_client = redis_client.clone();
        let cache_cfg = CacheConfig {
            key_prefix: settings.redis.key_prefix.clone(),
            op_timeout: Duration::from_millis(settings.redis.op_timeout_ms),
            connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
            dedupe_ttl: Duration::from_secs(settings.redis.dedupe_ttl_secs),
            mailbox_capacity: settings.redis.mailbox_capacity,
            ping_interval: Duration::from_millis(settings.server.health_interval_ms),
        };
        let cache = {
            let (status, health) = (cache_status.clone(), health.clone());
            Supervisor::start(move |_| Cache::new(redis_client, cache_cfg, status, health))
        };

        let router_status = health.register("router", false, policy);
        let sources_hook: ReloadHook = {
            let registry = registry.clone();
            Arc::new(move |pool| {
                let registry = registry.clone();
                Box::pin(async move { registry.reload(&pool).await.map(|_| ()) })
            })
        };
        let router = {
            let (pool, pg_config, catalog) = (pool.clone(), pg_config.clone(), catalog.clone());
            Supervisor::start(move |_| Router::new(pool, pg_config, catalog, vec![sources_hook], router_status))
        };

        let janitor_status = health.register("janitor", false, policy);
        let janitor = {
            let cfg = settings.retention.clone();
            let auto_disable = Duration::from_secs(settings.delivery.auto_disable_after_secs);
            let pool = pool.clone();
            Supervisor::start(move |_| Janitor::new(pool, cfg, auto_disable, janitor_status))
        };

        // Circuit breakers and rate limits: one instance and one Redis connection of their own (never the cache's,
        // never its fate), shared by the delivery side and the admin API's destination health.
        let limits = Arc::new(
            Limits::new(&settings.redis.key_prefix, settings.delivery.circuit)
                .with_op_timeout(Duration::from_millis(settings.delivery.limits_timeout_ms)),
        );
        let limits_redis = RedisLink::start(
            limits_client,
            RedisLinkConfig {
                response_timeout: Duration::from_millis(settings.delivery.limits_timeout_ms),
                connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
                ping_interval: Duration::from_millis(settings.server.health_interval_ms.max(100)),
            },
        );

        let mut deliverer_arbiters = Vec::new();
        let mut delivery = None;
        if settings.delivery.enabled {
            let cfg = settings.delivery.clone();
            let results_status = health.register_delivery("result_writer", None, policy);
            let results = {
                let (pool, catalog, node, cfg) = (pool.clone(), catalog.clone(), node_id.clone(), cfg.clone());
                Supervisor::start(move |_| ResultWriter::new(pool, catalog, node, cfg, results_status))
            };
            let ssrf = Arc::new(cfg.ssrf_policy());
            let arbiters: Vec<Arbiter> = (0..cfg.deliverers.max(1)).map(|_| Arbiter::new()).collect();
            let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
            // The claim loop turns at least every poll interval; a round may wait on the claim lock (5 s) and the
            // pool, so only a loop silent for much longer than that counts as stalled.
            let stall_after =
                Duration::from_millis(cfg.poll_interval_ms.saturating_mul(10)).max(Duration::from_secs(30));
            let scheduler_status = health.register_delivery("scheduler", Some(stall_after), policy);
            let scheduler = {
                let (pool, catalog, redis, node) =
                    (pool.clone(), catalog.clone(), limits_redis.clone(), node_id.clone());
                let limits = limits.clone();
                let results = results.clone();
                Supervisor::start(move |ctx: &mut actix::Context<Scheduler>| {
                    let me = ctx.address();
                    let deliverers = handles
                        .iter()
                        .map(|h| {
                            let (ssrf, results, me) =
                                (ssrf.clone(), results.clone().recipient(), me.clone().recipient());
                            let (limits, redis) = (limits.clone(), redis.clone());
                            let (max, cap) = (cfg.max_in_flight, cfg.max_in_flight.max(16));
                            let (jq_timeout, jq_max) =
                                (Duration::from_millis(cfg.jq_timeout_ms), cfg.jq_max_output_bytes);
                            Supervisor::start_in_arbiter(h, move |_| {
                                Deliverer::new(ssrf, limits, redis, max, cap, results, me)
                                    .with_jq_bounds(jq_timeout, jq_max)
                            })
                        })
                        .collect();
                    Scheduler::new(pool, pg_config, catalog, limits, redis, deliverers, node, cfg, scheduler_status)
                })
            };
            results
                .try_send(ConnectScheduler(scheduler.clone().recipient()))
                .context("Failed to connect the scheduler")?;
            delivery = Some((scheduler, results));
            deliverer_arbiters = arbiters.into_iter().map(ArbiterGuard).collect();
        }

        let prober = Health::new(
            pool.clone(),
            health.clone(),
            Duration::from_millis(settings.server.health_interval_ms),
            Duration::from_millis(settings.database.connect_timeout_ms),
        )
        .start();

        let admin = {
            let state = Arc::new(admin::AdminState {
                pool: pool.clone(),
                tokens: admin::auth::Tokens::new(&settings.admin.tokens),
                ssrf: settings.delivery.ssrf_policy(),
                catalog: catalog.clone(),
                limits: limits.clone(),
                redis: limits_redis.clone(),
                rotation_grace: Duration::from_secs(settings.admin.rotation_grace_secs),
                jq_timeout: Duration::from_millis(settings.delivery.jq_timeout_ms),
                jq_max_output: settings.delivery.jq_max_output_bytes,
                max_body_bytes: settings.server.max_body_bytes,
            });
            let interval = Duration::from_millis(settings.admin.job_interval_ms.max(10));
            actix_rt::spawn(admin::jobs::run(state.clone(), node_id.clone(), interval));
            web::Data::from(state)
        };

        let state = web::Data::new(AppState {
            sources: registry,
            writer: Mailbox::new(writer.clone(), writer_status),
            cache: Mailbox::new(cache.clone(), cache_status),
            health: health.clone(),
            metrics,
            catalog,
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(settings.server.max_inflight_ingest.max(1))),
            ingest_timeout: Duration::from_millis(settings.server.ingest_timeout_ms),
            // The cache answers "miss" on its own after its op timeout; this only bounds a stuck mailbox.
            cache_timeout: Duration::from_millis(settings.redis.op_timeout_ms.saturating_mul(2)),
            retry_after_secs: settings.server.retry_after_secs,
            jq_timeout: Duration::from_millis(settings.delivery.jq_timeout_ms),
            jq_max_output: settings.delivery.jq_max_output_bytes,
        });

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| format!("Failed to bind {}:{}", settings.server.host, settings.server.port))?;
        let port = listener.local_addr()?.port();
        let shutdown_timeout = Duration::from_secs(settings.server.shutdown_timeout_secs);
        let mut server = HttpServer::new(move || {
            App::new().app_data(state.clone()).app_data(admin.clone()).configure(routes::configure)
        })
        // Signals are handled in `run_until_stopped`, which drains in order.
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .listen(listener)?;
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        tracing::info!(message = "Listening.", host = %settings.server.host, port, node = %node_id);
        Ok(Self {
            port,
            server: server.run(),
            writer,
            health,
            delivery,
            janitor,
            router,
            cache,
            prober,
            drain_delay: Duration::from_millis(settings.server.drain_delay_ms),
            shutdown_timeout,
            writer_arbiter: ArbiterGuard(writer_arbiter),
            _deliverer_arbiters: deliverer_arbiters,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The singleton-jobs actor (tests run a round with `RunNow`).
    pub fn janitor(&self) -> Addr<Janitor> {
        self.janitor.clone()
    }

    /// The addresses of the node's supervised actors (the supervision tests inject failures through them).
    pub fn actors(&self) -> Actors {
        Actors {
            writer: self.writer.clone(),
            cache: self.cache.clone(),
            router: self.router.clone(),
            janitor: self.janitor.clone(),
            scheduler: self.delivery.as_ref().map(|(s, _)| s.clone()),
            result_writer: self.delivery.as_ref().map(|(_, r)| r.clone()),
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down in order:
    ///
    /// 1. readiness turns false at once (`/readyz` answers 503) while ingest keeps serving for `drain_delay_ms`,
    ///    so that load balancers stop sending before anything is refused;
    /// 2. ingest stops accepting; requests in progress finish (each waits for its COMMIT), for at most
    ///    `shutdown_timeout_secs`;
    /// 3. the EventWriter flushes what it holds;
    /// 4. the Scheduler stops claiming; attempts in flight finish, and those still running when the rest of the
    ///    grace period is over give their leases back so that another node takes them over at once;
    /// 5. the ResultWriter flushes the last attempt results;
    /// 6. the Janitor, the Router, the Cache and Health stop.
    ///
    /// Each step is one [`Shutdown`](hookgate_actors::Shutdown) with the same deadline, answered when the actor is
    /// done.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            writer,
            health,
            delivery,
            janitor,
            router,
            cache,
            prober,
            drain_delay,
            shutdown_timeout,
            writer_arbiter,
            ..
        } = self;
        let handle = server.handle();
        let mut serving = actix_rt::spawn(server);
        tokio::select! {
            result = &mut serving => {
                return result.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
            signal = shutdown_signal() => {
                tracing::info!(message = "Shutting down.", signal);
            }
        }
        let deadline = tokio::time::Instant::now() + drain_delay + shutdown_timeout;
        health.set_draining();
        tokio::time::sleep(drain_delay).await;
        tracing::info!(message = "Ingest stops accepting.");
        handle.stop(true).await;
        let _ = serving.await;

        shut_down(&writer, deadline).await;
        if let Some((scheduler, results)) = delivery {
            shut_down(&scheduler, deadline).await;
            // The last results arrive as the attempts end, possibly after the deadline: they get time of their own.
            shut_down(&results, tokio::time::Instant::now() + Duration::from_secs(5)).await;
        }
        shut_down(&janitor, deadline).await;
        shut_down(&router, deadline).await;
        shut_down(&cache, deadline).await;
        shut_down(&prober, deadline).await;
        drop(writer_arbiter);
        tracing::info!(message = "Stopped.");
        Ok(())
    }
}

/// Resolves on the first SIGTERM or SIGINT, with its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
        "ctrl-c"
    }
}
