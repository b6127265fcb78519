//! Builds the application: pool, migrations, declared sources, actors, then the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Supervisor};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hookgate_actors::{ActorStatus, Cache, CacheConfig, Drain, EventWriter, Health, HealthRegistry};
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
    pub ingest_timeout: Duration,
    pub cache_timeout: Duration,
    pub retry_after_secs: u64,
}

/// A running hookgate node.
pub struct Application {
    port: u16,
    server: Server,
    writer: Addr<EventWriter>,
    health: Arc<HealthRegistry>,
    writer_arbiter: ArbiterGuard,
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
        tracing::info!(message = "Sources loaded.", sources = n);

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
        let cache = {
            let (status, health) = (cache_status.clone(), health.clone());
            Supervisor::start(move |_| Cache::new(redis_client, cache_cfg, status, health))
        };

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
            ingest_timeout: Duration::from_millis(settings.server.ingest_timeout_ms),
            // The cache answers "miss" on its own after its op timeout; this only bounds a stuck mailbox.
            cache_timeout: Duration::from_millis(settings.redis.op_timeout_ms.saturating_mul(2)),
            retry_after_secs: settings.server.retry_after_secs,
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
        Ok(Self { port, server: server.run(), writer, health, writer_arbiter: ArbiterGuard(writer_arbiter) })
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
