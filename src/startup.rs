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
use hookgate_actors::limits::Limits;
use hookgate_actors::result_writer::{ConnectScheduler, ResultWriter};
use hookgate_actors::router::{ReloadHook, Router};
use hookgate_actors::scheduler::Scheduler;
use hookgate_actors::{ActorStatus, Cache, CacheConfig, Drain, EventWriter, Health, HealthRegistry, RedisHandle};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;

use crate::config::{DatabaseSettings, Settings};
use crate::sources::SourceRegistry;
use crate::{migrations, routes, sources, telemetry};

/// What every request handler can reach. Built once, before the HTTP workers start.
pub struct AppState {
    pub sources: Arc<SourceRegistry>,
    pub writer: Addr<EventWriter>,
    pub writer_status: Arc<ActorStatus>,
    pub cache: Addr<Cache>,
    pub cache_status: Arc<ActorStatus>,
    pub health: Arc<HealthRegistry>,
    pub metrics: PrometheusHandle,
    pub catalog: Arc<SharedCatalog>,
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
    writer_arbiter: ArbiterGuard,
    _deliverer_arbiters: Vec<ArbiterGuard>,
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
        sources::apply_declared(&pool, &settings.sources).await?;
        let registry = Arc::new(SourceRegistry::default());
        let n = registry.reload(&pool).await?;
        catalog::apply_declared(&pool, &settings.destinations, &settings.routes).await?;
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
        let cache_cfg = CacheConfig {
            key_prefix: settings.redis.key_prefix.clone(),
            op_timeout: Duration::from_millis(settings.redis.op_timeout_ms),
            connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
            dedupe_ttl: Duration::from_secs(settings.redis.dedupe_ttl_secs),
            mailbox_capacity: settings.redis.mailbox_capacity,
            ping_interval: Duration::from_millis(settings.server.health_interval_ms),
        };
        let redis_handle = Arc::new(RedisHandle::default());
        let cache = {
            let (status, health, shared) = (cache_status.clone(), health.clone(), redis_handle.clone());
            Supervisor::start(move |_| Cache::new(redis_client, cache_cfg, status, health, shared))
        };

        let router_status = health.register("router", false, policy);
        let sources_hook: ReloadHook = {
            let registry = registry.clone();
            Arc::new(move |pool| {
                let registry = registry.clone();
                Box::pin(async move { registry.reload(&pool).await.map(|_| ()) })
            })
        };
        {
            let (pool, pg_config, catalog) = (pool.clone(), pg_config.clone(), catalog.clone());
            Supervisor::start(move |_| Router::new(pool, pg_config, catalog, vec![sources_hook], router_status));
        }

        let mut deliverer_arbiters = Vec::new();
        if settings.delivery.enabled {
            let cfg = settings.delivery.clone();
            let limits = Arc::new(Limits::new(&settings.redis.key_prefix, cfg.circuit));
            let results_status = health.register("result_writer", true, policy);
            let results = {
                let (pool, catalog, node, cfg) = (pool.clone(), catalog.clone(), node_id.clone(), cfg.clone());
                Supervisor::start(move |_| ResultWriter::new(pool, catalog, node, cfg, results_status))
            };
            let ssrf = Arc::new(cfg.ssrf_policy());
            let arbiters: Vec<Arbiter> = (0..cfg.deliverers.max(1)).map(|_| Arbiter::new()).collect();
            let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
            let scheduler_status = health.register("scheduler", true, policy);
            let scheduler = {
                let (pool, catalog, redis, node) =
                    (pool.clone(), catalog.clone(), redis_handle.clone(), node_id.clone());
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
                            Supervisor::start_in_arbiter(h, move |_| {
                                Deliverer::new(ssrf, limits, redis, max, cap, results, me)
                            })
                        })
                        .collect();
                    Scheduler::new(pool, pg_config, catalog, limits, redis, deliverers, node, cfg, scheduler_status)
                })
            };
            results.try_send(ConnectScheduler(scheduler.recipient())).context("Failed to connect the scheduler")?;
            deliverer_arbiters = arbiters.into_iter().map(ArbiterGuard).collect();
        }

        Health::new(
            pool.clone(),
            health.clone(),
            Duration::from_millis(settings.server.health_interval_ms),
            Duration::from_millis(settings.database.connect_timeout_ms),
        )
        .start();

        let state = web::Data::new(AppState {
            sources: registry,
            writer: writer.clone(),
            writer_status,
            cache,
            cache_status,
            health: health.clone(),
            metrics,
            catalog,
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
        let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes::configure))
            .listen(listener)?;
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        tracing::info!(message = "Listening.", host = %settings.server.host, port);
        Ok(Self {
            port,
            server: server.run(),
            writer,
            health,
            writer_arbiter: ArbiterGuard(writer_arbiter),
            _deliverer_arbiters: deliverer_arbiters,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGTERM/SIGINT, or the future is dropped).
    ///
    /// On SIGTERM readiness turns false at once; actix-web stops accepting and waits for the requests in progress
    /// (each of which waits for its COMMIT); then the writer is drained before its arbiter stops.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self { server, writer, health, writer_arbiter, .. } = self;
        #[cfg(unix)]
        actix_rt::spawn(async move {
            use actix_rt::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                tracing::info!(message = "SIGTERM received; draining.");
                health.set_draining();
            }
        });
        let result = server.await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if writer.send(Drain { reply: tx }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
        drop(writer_arbiter);
        result
    }
}
