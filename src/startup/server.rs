//! The HTTP half of start-up: the front end's state, the admin API's state (and its background jobs), and the
//! bound server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use deadpool_postgres::Pool;
use hookgate_actors::catalog::SharedCatalog;
use hookgate_actors::sources::SourceRegistry;
use hookgate_actors::HealthRegistry;
use metrics_exporter_prometheus::PrometheusHandle;

use super::actors::Started;
use crate::config::Settings;
use crate::http::{self, admin, AppState};

/// What the ingest handlers reach.
pub(super) fn app_state(
    settings: &Settings,
    started: &Started,
    sources: Arc<SourceRegistry>,
    catalog: Arc<SharedCatalog>,
    health: Arc<HealthRegistry>,
    metrics: PrometheusHandle,
) -> web::Data<AppState> {
    web::Data::new(AppState {
        sources,
        writer: started.writer.clone(),
        health,
        metrics,
        catalog,
        ingest_permits: Arc::new(tokio::sync::Semaphore::new(settings.server.max_inflight_ingest.max(1))),
        admission: started.admission.clone(),
        ingest_timeout: Duration::from_millis(settings.server.ingest_timeout_ms),
        body_timeout: Duration::from_millis(settings.server.body_timeout_ms),
        retry_after_secs: settings.server.retry_after_secs,
        jq_timeout: Duration::from_millis(settings.delivery.jq_timeout_ms),
        jq_max_output: settings.delivery.jq_max_output_bytes,
    })
}

/// What the admin handlers reach, with the admin API's own `pool`; starts the admin background task (replay jobs,
/// rotated-secret expiry), which uses that pool too.
pub(super) fn admin_state(
    settings: &Settings,
    pool: Pool,
    started: &Started,
    catalog: Arc<SharedCatalog>,
) -> web::Data<admin::AdminState> {
    let state = Arc::new(admin::AdminState {
        pool,
        tokens: admin::auth::Tokens::new(&settings.admin.tokens),
        ssrf: settings.delivery.ssrf_policy(),
        catalog,
        limits: started.limits.clone(),
        redis: started.limits_redis.clone(),
        rotation_grace: Duration::from_secs(settings.admin.rotation_grace_secs),
        jq_timeout: Duration::from_millis(settings.delivery.jq_timeout_ms),
        jq_max_output: settings.delivery.jq_max_output_bytes,
        source_bounds: settings.source_bounds(),
        tail: started.tail.clone(),
        tail_heartbeat: Duration::from_millis(settings.tail.heartbeat_ms),
        node_id: settings.server.node_id(),
    });
    let interval = Duration::from_millis(settings.admin.job_interval_ms.max(10));
    actix_rt::spawn(admin::jobs::run(state.clone(), settings.server.node_id(), interval));
    let every = Duration::from_secs(settings.server.metrics_destination_interval_secs.max(1));
    actix_rt::spawn(admin::jobs::sample_destinations(state.pool.clone(), every));
    web::Data::from(state)
}

/// The bound listening sockets: the main one, and the operators' one when `server.admin_port` is set.
pub(super) struct Listeners {
    pub main: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Binds the listening sockets (port 0 picks a free one). Done first at start, so that a port already taken ends
/// start before any actor runs.
pub(super) fn listeners(settings: &Settings) -> anyhow::Result<Listeners> {
    let backlog = settings.server.listen_backlog;
    let main = bind(&settings.server.host, settings.server.port, backlog)
        .with_context(|| format!("Failed to bind {}:{}", settings.server.host, settings.server.port))?;
    let admin = match settings.server.admin_port {
        None => None,
        Some(port) => {
            let host = settings.server.admin_host.as_deref().unwrap_or(&settings.server.host);
            Some(
                bind(host, port, backlog)
                    .with_context(|| format!("Failed to bind server.admin_port: {host}:{port}"))?,
            )
        }
    };
    Ok(Listeners { main, admin })
}

/// A listening socket on the first address `host` resolves to that can be bound (as the standard library tries
/// each), with room for `backlog` connections the kernel has completed and hookgate not yet accepted
/// (`server.listen_backlog`; the kernel caps it at `net.core.somaxconn`). The standard library's bind listens with a
/// backlog of 128: past it the kernel drops the client's handshake, and the client tries again only a second later,
/// so a burst of connections (producers reconnecting after a deploy) would wait a second each for nothing.
fn bind(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "the host resolves to nothing");
    for addr in (host, port).to_socket_addrs()? {
        let listening =
            socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).and_then(|socket| {
                // As the standard library does on Unix: a restarted node binds its port again at once.
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
                Ok(socket)
            });
        match listening {
            Ok(socket) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The running HTTP servers and their bound ports.
pub(super) struct Servers {
    pub main: Server,
    pub port: u16,
    /// `/metrics` and `/admin` on `server.admin_port`, when it is set.
    pub admin: Option<(Server, u16)>,
}

/// Builds the servers on the bound listeners: everything on the main one, or ingest and health there and the
/// operators' routes (with health) on the admin one.
pub(super) fn serve(
    listeners: Listeners,
    settings: &Settings,
    state: web::Data<AppState>,
    admin: web::Data<admin::AdminState>,
) -> anyhow::Result<Servers> {
    let split = listeners.admin.is_some();
    let port = listeners.main.local_addr()?.port();
    let (main_state, main_admin) = (state.clone(), admin.clone());
    let main = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(http::access_log::access_log))
            .app_data(main_state.clone())
            .app_data(main_admin.clone())
            .configure(if split { http::configure_ingest } else { http::configure })
    })
    // Signals are handled in `run_until_stopped`, which drains in order.
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_timeout_secs)
    .max_connections(settings.server.max_connections_per_worker());
    let main = match settings.server.workers {
        Some(workers) => main.workers(workers),
        None => main,
    }
    .listen(listeners.main)?;
    tracing::info!(message = "Listening.", host = %settings.server.host, port, node = %settings.server.node_id());
    let admin = match listeners.admin {
        None => None,
        Some(listener) => {
            let admin_port = listener.local_addr()?.port();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(actix_web::middleware::from_fn(http::access_log::access_log))
                    .app_data(state.clone())
                    .app_data(admin.clone())
                    .configure(http::configure_operator)
                    .configure(http::configure_health)
            })
            // Operators' traffic is light: two workers are enough.
            .workers(2)
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_timeout_secs)
            .listen(listener)?;
            tracing::info!(message = "Listening for /metrics and /admin.", port = admin_port);
            Some((server.run(), admin_port))
        }
    };
    Ok(Servers { main: main.run(), port, admin })
}
