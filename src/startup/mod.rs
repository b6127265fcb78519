//! Builds a node and stops it in order. [`Application::build`] reads as the list of what starts; each step is a
//! small builder in its own module:
//!
//! - `database.rs`: the pools (the main one, the admin API's), the migrations, the declared objects, the snapshots;
//! - `actors.rs`: every actor under supervision, registered in the health registry;
//! - `server.rs`: the front end's and the admin API's state, and the bound HTTP server;
//! - `shutdown.rs`: `run_until_stopped`, one `Shutdown` per actor in order.

mod actors;
mod database;
mod server;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::dev::Server;
use hookgate_actors::janitor::Janitor;
use hookgate_actors::tail::TailHub;
use hookgate_actors::{Health, HealthRegistry};

pub use actors::Actors;
pub use database::{build_pool, connect_pool};

use crate::config::Settings;
use crate::telemetry;

/// A running hookgate node.
pub struct Application {
    port: u16,
    server: Server,
    /// The operators' listener (`server.admin_port`) and its port.
    admin_server: Option<(Server, u16)>,
    actors: Actors,
    prober: Addr<Health>,
    health: Arc<HealthRegistry>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    /// The writer's arbiter and the deliverers' (with `delivery.deliverer_threads`), stopped when the node is.
    arbiters: Vec<actors::ArbiterGuard>,
    /// The live tail's hub: its streams end when the node stops.
    tail: Arc<TailHub>,
    /// Ingest's admission, shared with the EventWriter.
    admission: Arc<hookgate_actors::admission::Admission>,
}

impl Application {
    /// Binds the listener, prepares the database, starts the actors and the server. Must run inside an actix
    /// `System`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listeners = server::listeners(&settings)?;
        // Installed first, so that metrics recorded while starting are kept.
        let metrics = telemetry::metrics_handle();
        // The one rustls crypto provider (ring) of every TLS connection (destinations, PostgreSQL, Redis).
        hookgate_actors::tls::install_crypto_provider();
        // How every PostgreSQL connection is made (the pools', the probe's, the LISTEN connections'), TLS included.
        let pg = settings.database.pg_connect()?;
        let (pool, notifications) = database::prepare(&settings, &pg).await?;
        hookgate_core::internal_events::set_destination_label_limit(settings.server.metrics_destination_labels);
        let (sources, catalog) = database::load_snapshots(&pool).await?;
        let health = HealthRegistry::new();
        let started = actors::start(&settings, &pool, &pg, &sources, &catalog, &health, notifications)?;
        let tail = started.tail.clone();
        let admission = started.admission.clone();
        let admin_pool = database::admin_pool(&settings, &pg)?;
        let admin = server::admin_state(&settings, admin_pool, &started, catalog.clone());
        let state = server::app_state(&settings, &started, sources, catalog, health.clone(), metrics);
        let servers = server::serve(listeners, &settings, state, admin)?;
        Ok(Self {
            port: servers.port,
            server: servers.main,
            admin_server: servers.admin,
            actors: started.actors,
            prober: started.prober,
            health,
            drain_delay: Duration::from_millis(settings.server.drain_delay_ms),
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_secs),
            arbiters: started.arbiters,
            tail,
            admission,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the operators' listener (`server.admin_port`), when there is one.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_server.as_ref().map(|(_, port)| *port)
    }

    /// The singleton-jobs actor (tests run a round with `RunNow`).
    pub fn janitor(&self) -> Addr<Janitor> {
        self.actors.janitor.clone()
    }

    /// Ingest's admission state (the writer's queueing delay, the bytes of bodies in progress).
    pub fn admission(&self) -> Arc<hookgate_actors::admission::Admission> {
        self.admission.clone()
    }

    /// The addresses of the node's supervised actors (the supervision tests inject failures through them).
    pub fn actors(&self) -> Actors {
        self.actors.clone()
    }
}
