//! Keeps the snapshots every node serves from current (the routing catalog: destinations and routes; the sources): reloads it when
//! PostgreSQL announces a change (LISTEN `hookgate_catalog`), when its listener reconnects, and every minute.
//!
//! Deciding an event's deliveries is a pure function of the snapshot ([`Catalog::plan`](crate::catalog::Catalog::plan)),
//! run by the front end on the HTTP worker that holds the event, so filter evaluation is spread over all workers and
//! never waits in this actor's mailbox.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookgate_store::channels::CATALOG_CHANNEL;
use hookgate_store::listen::{self, ListenEvent};
use hookgate_store::Pool;

use crate::catalog::SharedCatalog;
use crate::health::{ActorState, ActorStatus};
use crate::pg_tls::PgConnect;
use crate::scheduler::Wake;
use crate::shutdown::Shutdown;
use crate::sources::SourceRegistry;
use crate::supervision::{guarded, Panicked};

pub struct Router {
    pool: Pool,
    /// How the LISTEN connection reaches PostgreSQL (the pool's settings and TLS).
    pg: PgConnect,
    catalog: Arc<SharedCatalog>,
    sources: Arc<SourceRegistry>,
    pub(crate) status: Arc<ActorStatus>,
    reloading: bool,
    again: bool,
    /// Set by [`Shutdown`]: no reload starts after it.
    stopped: bool,
    /// After a restart: how long to wait before listening again (the supervision back-off).
    resume_delay: Duration,
    /// This node's Scheduler, woken after every reload ([`WakeAfterReload`]).
    scheduler: Option<Recipient<Wake>>,
}

/// Wakes this Scheduler after every reload: a destination resumed (or a route added) is claimable here only once
/// this node's snapshot says so, and the Scheduler's own wake-up by the same NOTIFY may come before the reload (it
/// then found nothing and waited for its poll, up to a second, before starting a resumed destination's backlog).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WakeAfterReload(pub Recipient<Wake>);

impl Handler<WakeAfterReload> for Router {
    type Result = ();
    fn handle(&mut self, msg: WakeAfterReload, _: &mut Self::Context) {
        self.scheduler = Some(msg.0);
    }
}

impl Router {
    pub fn new(
        pool: Pool,
        pg: PgConnect,
        catalog: Arc<SharedCatalog>,
        sources: Arc<SourceRegistry>,
        status: Arc<ActorStatus>,
    ) -> Self {
        Self {
            pool,
            pg,
            catalog,
            sources,
            status,
            reloading: false,
            again: false,
            stopped: false,
            resume_delay: Duration::ZERO,
            scheduler: None,
        }
    }

    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        if self.reloading {
            self.again = true;
            return;
        }
        self.reloading = true;
        let (pool, catalog, sources) = (self.pool.clone(), self.catalog.clone(), self.sources.clone());
        let fut = async move {
            crate::catalog::reload(&catalog, &pool).await?;
            crate::sources::reload(&sources, &pool).await?;
            Ok::<_, anyhow::Error>(())
        };
        ctx.spawn(guarded(fut).into_actor(self).map(|res, act, ctx| {
            act.reloading = false;
            let res = match res {
                Ok(res) => res,
                Err(Panicked(what)) => {
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
            };
            match res {
                Ok(()) => {
                    act.status.set_state(ActorState::Running);
                    tracing::debug!(message = "Catalog reloaded.");
                    if let Some(scheduler) = &act.scheduler {
                        // A full mailbox already holds a wake-up.
                        let _ = scheduler.try_send(Wake);
                    }
                }
                Err(error) => {
                    act.status.set_state(ActorState::Degraded);
                    tracing::warn!(message = "Catalog reload failed; keeping the previous snapshot.", error = %format!("{error:#}"));
                }
            }
            if std::mem::take(&mut act.again) {
                act.reload(ctx);
            }
        }));
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (status, delay) = (self.status.clone(), std::mem::take(&mut self.resume_delay));
        status.resume_after(delay, self, ctx);
        ctx.add_stream(listen::stream(listen::spawn_listener(
            self.pg.config.clone(),
            self.pg.tls.clone(),
            &[CATALOG_CHANNEL],
        )));
        ctx.run_interval(Duration::from_secs(60), |act, ctx| act.reload(ctx));
    }
}

impl actix::Supervised for Router {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.reloading = false;
        self.resume_delay = self.status.record_restart();
    }
}

/// Starts no reload after it (the node is going away); a reload running now ends on its own.
impl Handler<Shutdown> for Router {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) {
        self.stopped = true;
        let _ = msg.reply.send(());
    }
}

impl StreamHandler<ListenEvent> for Router {
    fn handle(&mut self, _: ListenEvent, ctx: &mut Self::Context) {
        self.reload(ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}
