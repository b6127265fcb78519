//! Claims due deliveries from PostgreSQL with leases and hands them to the Deliverers, fairly across destinations.
//!
//! Woken by NOTIFY `hookgate_deliveries` (new deliveries committed unleased), by `hookgate_catalog` and by the Router
//! once it has reloaded the catalog (a destination resumed), by a Deliverer finishing an attempt and by the
//! ResultWriter committing results ([`LeasesFreed`]) when the last round may have left due work behind (for lack of
//! room, or cut short by leases taken since its look), by the ResultWriter at once for a FIFO destination's result (its
//! next head is then due) and at the due time of the earliest retry it scheduled ([`WakeAt`]), and by the poll timer
//! (other nodes' retries, expired leases). A round runs only when there may be work for it: each round costs PostgreSQL
//! two planned statements. One claim round: find the active destinations with due work; give each a budget (its free
//! `max_in_flight` cluster-wide, capped by its fair share of this node's capacity, by its rate-limit tokens and by its
//! circuit breaker); then, in one transaction under a cluster-wide advisory lock, lease up to each budget with `FOR
//! UPDATE SKIP LOCKED`. Because each destination gets its own budget, a backlog of 100,000 deliveries on one
//! destination takes only that destination's slots and never delays another. FIFO destinations lease only their oldest
//! pending delivery, and only when it is due and not leased: one in flight, in event order, and a failing head holds
//! the rest.
//!
//! A fresh delivery needs no claim round: the EventWriter commits it already leased to this node and sends it here
//! ([`HandOff`], see [`crate::handoff`]); it passes the same limits as a claimed one (node capacity, fair share,
//! rate limit, circuit breaker). One whose destination has no free slot here waits for one in memory, still leased,
//! and starts when an attempt of that destination ends; what the limits refuse, or what waits past its bounds, is
//! released for the claim path. Claim rounds remain the path for retries, paused work, FIFO destinations, other
//! nodes' expired leases and recovery after a crash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use hookgate_core::catalog::Destination;
use hookgate_core::delivery::Job;
use hookgate_core::internal_events::{
    emit, ClaimRoundFailed, ClaimRoundStarted, DeliveriesClaimed, DeliveriesDead, DeliveriesHandedOff,
    DeliveryUnattemptable, DispatchRefused, HandOffsWaiting,
};
use hookgate_core::notification::{DeadReason, Happening};
use hookgate_core::state::DestinationState;
use hookgate_store::channels::{CATALOG_CHANNEL, DELIVERIES_CHANNEL};
use hookgate_store::claims;
use hookgate_store::deliveries::{release_leases, Lease};
use hookgate_store::listen::{self, ListenEvent};
use hookgate_store::Pool;
use rand::seq::SliceRandom;
use uuid::Uuid;

use crate::catalog::SharedCatalog;
use crate::config::DeliveryConfig;
use crate::deliverer::{Completed, Deliver, Deliverer};
use crate::handoff::{self, Blocked, HandOff, HandOffPort};
use crate::health::{ActorState, ActorStatus};
use crate::limits::Limits;
use crate::notifier::Notices;
use crate::pg_tls::PgConnect;
use crate::redis_link::RedisLink;
use crate::shutdown::Shutdown;
use crate::supervision::{guarded, Panicked};

/// Look for work now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// The ResultWriter committed results: their leases no longer count against their destinations' `max_in_flight`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeasesFreed;

/// A delivery comes due at this time (a retry the ResultWriter just scheduled): look for work then.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WakeAt(pub DateTime<Utc>);

pub struct Scheduler {
    pool: Pool,
    /// How the LISTEN connection reaches PostgreSQL (the pool's settings and TLS).
    pg: PgConnect,
    catalog: Arc<SharedCatalog>,
    limits: Arc<Limits>,
    redis: Arc<RedisLink>,
    deliverers: Vec<Addr<Deliverer>>,
    node_id: String,
    cfg: DeliveryConfig,
    pub(crate) status: Arc<ActorStatus>,
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
    /// The deadline of the [`Shutdown`] being answered.
    deadline: Option<tokio::time::Instant>,
    /// The deliverers were sent the [`Shutdown`].
    deliverers_told: bool,
    claiming: bool,
    again: bool,
    /// The last claim round may have left due work behind (for lack of room, or cut short by leases taken since its
    /// look): a finished attempt, or committed results, trigger the next round.
    starved: bool,
    /// The last round's claims all came back empty despite a budget, and the next round was asked to look again.
    retried_empty: bool,
    /// Slots counted in flight for hand-offs waiting for their limits' answer, per destination.
    reserved: HashMap<Uuid, i64>,
    /// Hand-offs waiting for a slot of their destination, oldest first, with when each arrived.
    waiting: HashMap<Uuid, VecDeque<(Job, Instant)>>,
    /// How many hand-offs wait in `waiting`.
    waiting_len: usize,
    /// Destinations whose waiting room filled: the writer leases none of their deliveries until it is half empty.
    room_full: HashSet<Uuid>,
    /// Shutting down, the waiting hand-offs' leases are being released: the Shutdown is answered after.
    releasing_waiting: bool,
    /// The timer of the earliest retry the ResultWriter announced ([`WakeAt`]).
    next_wake: Option<(DateTime<Utc>, SpawnHandle)>,
    next_deliverer: usize,
    /// Opened while this scheduler takes hand-offs from the writer.
    handoff: Option<Arc<HandOffPort>>,
    /// Where deliveries made dead at claim (unattemptable) are told (operational notifications).
    notices: Notices,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        pg: PgConnect,
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
            pg,
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
            deadline: None,
            deliverers_told: false,
            claiming: false,
            again: false,
            starved: false,
            retried_empty: false,
            reserved: HashMap::new(),
            waiting: HashMap::new(),
            waiting_len: 0,
            room_full: HashSet::new(),
            releasing_waiting: false,
            notices: Notices::off(),
            next_wake: None,
            next_deliverer: 0,
            handoff: None,
        }
    }

    /// Takes the writer's hand-offs through `port`, opening it while it takes work.
    pub fn with_handoff(mut self, port: Arc<HandOffPort>) -> Self {
        self.handoff = Some(port);
        self
    }

    /// Tells `notices` of the deliveries claim rounds make dead because they can never be attempted.
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = notices;
        self
    }

    fn set_taking_handoffs(&self, open: bool) {
        if let Some(port) = &self.handoff {
            port.set_open(open);
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
        emit(ClaimRoundStarted);
        let round = ClaimRound {
            pool: self.pool.clone(),
            limits: self.limits.clone(),
            redis: self.redis.get(),
            node_id: self.node_id.clone(),
            lease_margin_ms: self.cfg.lease_margin_ms.min(i32::MAX as u64) as i32,
            handoff: self.handoff.clone(),
            notices: self.notices.clone(),
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
                Ok(Ok(RoundOutcome { jobs, buried, starved, claims })) => {
                    act.status.set_state(ActorState::Running);
                    act.starved = look_again(starved, claims, &mut act.retried_empty);
                    let n = jobs.len();
                    for job in jobs {
                        act.dispatch(job, ctx);
                    }
                    // Buried rows took budget without being sent: look again at once for the work behind them.
                    (n > 0 && n >= free) || buried > 0
                }
                Ok(Err(error)) => {
                    // The delivery side's own health: reported in /readyz's delivery section, never unready.
                    act.starved = true;
                    act.status.set_state(ActorState::Degraded);
                    emit(ClaimRoundFailed { error: &format!("{error:#}") });
                    false
                }
            };
            if std::mem::take(&mut act.again) || full {
                act.tick(ctx);
            }
        }));
    }

    fn dispatch(&mut self, job: Job, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            // Claimed by a round that was running when the Shutdown came: give it back for another node.
            self.release(job, ctx);
            return;
        }
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
                emit(DispatchRefused);
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
        self.set_taking_handoffs(true);
        self.status.set_state(ActorState::Running);
        self.status.beat();
        let rx =
            listen::spawn_listener(self.pg.config.clone(), self.pg.tls.clone(), &[DELIVERIES_CHANNEL, CATALOG_CHANNEL]);
        ctx.add_stream(listen::stream(rx));
        ctx.run_interval(self.cfg.poll_interval(), |act, ctx| act.tick(ctx));
        // Hand-offs that wait too long for a slot (a slow destination) are given back, even when no attempt ends.
        let every = Duration::from_millis((self.cfg.lease_margin_ms / 4).max(50));
        ctx.run_interval(every, |act, ctx| {
            if act.waiting_len > 0 {
                act.start_all_waiting(ctx);
            }
        });
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

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.set_taking_handoffs(false);
        Running::Stop
    }
}

impl actix::Supervised for Scheduler {
    fn restarting(&mut self, _: &mut Self::Context) {
        // Attempts in flight keep their bookkeeping: their `Completed` still arrives here. Slots reserved for
        // hand-offs whose limits had not answered are freed: those futures are gone, their leases expire.
        for (destination, n) in std::mem::take(&mut self.reserved) {
            self.count_in_flight(destination, -n);
        }
        self.claiming = false;
        self.again = false;
        self.retried_empty = false;
        self.next_wake = None;
        self.resumed = false;
        self.set_taking_handoffs(false);
        let waiting = self.take_waiting();
        if !waiting.is_empty() {
            // A restarting actor's own futures are dropped with it: released on the arbiter instead.
            drop(actix::spawn(handoff::give_back(self.pool.clone(), waiting, true)));
        }
        self.releasing_waiting = false;
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
        let node_was_full = self.inflight >= self.cfg.max_in_flight;
        self.inflight = self.inflight.saturating_sub(1);
        self.leases.remove(&msg.delivery_id);
        if self.inflight == 0 && self.stopping.is_some() {
            self.answer_shutdown(ctx);
        }
        if let Some(n) = self.inflight_by_destination.get_mut(&msg.destination_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inflight_by_destination.remove(&msg.destination_id);
            }
        }
        // The freed slot goes to a hand-off waiting for it (its destination's, or any when the node was full).
        if self.waiting.contains_key(&msg.destination_id) {
            self.start_waiting(msg.destination_id, ctx);
        } else if let Some(port) = &self.handoff {
            port.unblock(msg.destination_id, Some(Blocked::Full));
        }
        if node_was_full && self.waiting_len > 0 {
            self.start_all_waiting(ctx);
        }
        // A freed slot matters only to work a round had to leave behind; retries come due by `WakeAt` or the poll.
        if self.starved {
            self.tick(ctx);
        }
    }
}

/// Stops claiming; answers once the attempts in flight have finished, or, at the deadline, after releasing the leases
/// of those still running so that another node takes them over at once.
impl Handler<Shutdown> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.set_taking_handoffs(false);
        self.deadline = Some(msg.deadline);
        self.stopping = Some(msg.reply);
        let waiting = self.take_waiting();
        if !waiting.is_empty() {
            // Released (and the other nodes woken) before the Shutdown is answered, or past its deadline.
            self.releasing_waiting = true;
            let fut = handoff::give_back(self.pool.clone(), waiting, true);
            ctx.spawn(fut.into_actor(self).map(|(), act, ctx| {
                act.releasing_waiting = false;
                if act.inflight == 0 {
                    act.answer_shutdown(ctx);
                }
            }));
        }
        if self.inflight == 0 && !self.releasing_waiting {
            self.answer_shutdown(ctx);
            return;
        }
        ctx.run_later(msg.deadline.saturating_duration_since(tokio::time::Instant::now()), |act, ctx| {
            // Past the deadline, leases still held expire.
            act.releasing_waiting = false;
            if act.leases.is_empty() {
                act.answer_shutdown(ctx);
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
            ctx.spawn(fut.into_actor(act).map(|res, act, ctx| {
                if let Err(error) = res {
                    tracing::warn!(message = "Could not release leases; they will expire.", error = %format!("{error:#}"));
                }
                act.answer_shutdown(ctx);
            }));
        });
    }
}

impl Scheduler {
    /// Passes the [`Shutdown`] on to the deliverers once, and answers it when they have (each once its own
    /// attempts end, at the latest past the deadline). The scheduler stays stopped, so a later `Completed` or
    /// `Wake` never claims again.
    fn answer_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.releasing_waiting {
            return;
        }
        let Some(reply) = self.stopping.take() else { return };
        self.stopping = Some(tokio::sync::oneshot::channel().0);
        if std::mem::replace(&mut self.deliverers_told, true) {
            let _ = reply.send(());
            return;
        }
        let deadline = self.deadline.unwrap_or_else(tokio::time::Instant::now);
        let deliverers = self.deliverers.clone();
        ctx.spawn(
            async move {
                for deliverer in &deliverers {
                    crate::shutdown::shut_down(deliverer, deadline).await;
                }
                let _ = reply.send(());
            }
            .into_actor(self),
        );
    }
}

impl Handler<Wake> for Scheduler {
    type Result = ();
    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.tick(ctx);
    }
}

/// Work left behind may fit now: a finished attempt frees a slot here, but a destination's cluster-wide count drops
/// only when its result is committed.
impl Handler<LeasesFreed> for Scheduler {
    type Result = ();
    fn handle(&mut self, _: LeasesFreed, ctx: &mut Self::Context) {
        if self.starved {
            self.tick(ctx);
        }
    }
}

/// Keeps one timer for the earliest announced retry; later ones are found by the round that timer starts, or by
/// the poll.
impl Handler<WakeAt> for Scheduler {
    type Result = ();
    fn handle(&mut self, WakeAt(at): WakeAt, ctx: &mut Self::Context) {
        if self.next_wake.as_ref().is_some_and(|(due, _)| *due <= at) {
            return;
        }
        if let Some((_, handle)) = self.next_wake.take() {
            ctx.cancel_future(handle);
        }
        let delay = (at - Utc::now()).to_std().unwrap_or_default();
        let handle = ctx.run_later(delay, |act, ctx| {
            act.next_wake = None;
            act.tick(ctx);
        });
        self.next_wake = Some((at, handle));
    }
}

/// Deliveries the writer committed leased to this node: started at once as far as the limits allow (the same as a
/// claim round's); those without a slot yet wait here for one, up to a bound, and the rest are released for the claim
/// path.
impl Handler<HandOff> for Scheduler {
    type Result = ();

    fn handle(&mut self, HandOff { jobs, leased_at }: HandOff, ctx: &mut Self::Context) {
        if self.stopping.is_some() || !self.resumed {
            emit(DeliveriesHandedOff { started: 0, given_back: jobs.len() });
            self.give_back(jobs, true, ctx);
            return;
        }
        let catalog = self.catalog.get();
        let mut refused = Vec::new();
        let mut arrived = Vec::new();
        for job in jobs {
            let id = job.destination_id;
            if !catalog.destinations.get(&id).is_some_and(|d| takes_handoffs(d)) {
                refused.push(job);
                continue;
            }
            if !arrived.contains(&id) {
                arrived.push(id);
            }
            self.waiting.entry(id).or_default().push_back((job, leased_at));
            self.waiting_len += 1;
        }
        if !refused.is_empty() {
            // Another node may have room for these.
            emit(DeliveriesHandedOff { started: 0, given_back: refused.len() });
            self.give_back(refused, true, ctx);
        }
        for id in arrived {
            self.start_waiting(id, ctx);
        }
    }
}

/// Whether a destination's fresh deliveries may be handed off (and wait for a slot here).
fn takes_handoffs(destination: &Destination) -> bool {
    destination.state == DestinationState::Active && !destination.fifo
}

impl Scheduler {
    /// Starts as many of `id`'s waiting hand-offs as its slots allow, each as soon as its limits answer; gives back
    /// those that waited too long for their lease or past the bound, and tells the writer whether to lease more.
    fn start_waiting(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let Some(mut queue) = self.waiting.remove(&id) else { return };
        self.waiting_len -= queue.len();
        let destination = self.catalog.get().destinations.get(&id).filter(|d| takes_handoffs(d)).cloned();
        let Some(destination) = destination else {
            // Paused, disabled, made FIFO or deleted meanwhile: the claim path decides.
            self.room_full.remove(&id);
            emit(DeliveriesHandedOff { started: 0, given_back: queue.len() });
            self.give_back(queue.into_iter().map(|(job, _)| job).collect(), true, ctx);
            emit(HandOffsWaiting { count: self.waiting_len });
            return;
        };
        let max_wait = self.max_wait();
        let mut back = Vec::new();
        while queue.front().is_some_and(|(_, at)| at.elapsed() > max_wait) {
            back.extend(queue.pop_front().map(|(job, _)| job));
        }
        // The fair share, as in a claim round: the node's capacity split among the destinations with work here.
        let capacity = self.cfg.max_in_flight;
        let contending = self
            .inflight_by_destination
            .keys()
            .chain(self.waiting.keys())
            .chain(std::iter::once(&id))
            .collect::<HashSet<_>>()
            .len();
        let share = (capacity / contending).clamp(1, (capacity - capacity / 4).max(1)) as u32;
        let slots = destination.max_in_flight.min(share);
        let mine = self.inflight_by_destination.get(&id).copied().unwrap_or(0);
        // While claim rounds leave due work behind (retries, FIFO destinations, what went unleased), a quarter of the
        // node stays theirs: waiting hand-offs never take every slot a finished attempt frees.
        let kept = if self.starved { capacity / 4 } else { 0 };
        let free = capacity.saturating_sub(self.inflight + kept).min(u32::MAX as usize) as u32;
        let room = slots.saturating_sub(mine).min(free) as usize;
        let jobs: Vec<Job> = queue.drain(..room.min(queue.len())).map(|(job, _)| job).collect();
        // At most one more round of its slots waits here; the newest past that go to the claim path, and its next
        // deliveries are inserted unleased until the waiting room is half empty again (a writer's flush then fits,
        // rather than being leased and largely released again).
        let bound = slots as usize;
        if queue.len() >= bound {
            back.extend(queue.drain(bound..).map(|(job, _)| job));
            self.room_full.insert(id);
        } else if queue.len() <= bound / 2 {
            self.room_full.remove(&id);
        }
        if self.room_full.contains(&id) {
            // Renewed at every look while the room stays more than half full (a block lapses after a second).
            self.block(id, Blocked::Full);
        } else if let Some(port) = &self.handoff {
            port.unblock(id, Some(Blocked::Full));
        }
        if !queue.is_empty() {
            self.waiting_len += queue.len();
            self.waiting.insert(id, queue);
        }
        emit(HandOffsWaiting { count: self.waiting_len });
        if !back.is_empty() {
            emit(DeliveriesHandedOff { started: 0, given_back: back.len() });
            self.give_back(back, true, ctx);
        }
        if !jobs.is_empty() {
            self.admit_and_start(destination, jobs, ctx);
        }
    }

    /// A lease taken at insert lasts the destination's timeout plus the margin from the start of its transaction: an
    /// attempt started more than half the margin after that might outlive it with its result.
    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.cfg.lease_margin_ms / 2)
    }

    /// Starts the waiting hand-offs of every destination with a free slot (a slot of the node's was freed).
    fn start_all_waiting(&mut self, ctx: &mut Context<Self>) {
        let mut ids: Vec<Uuid> = self.waiting.keys().copied().collect();
        // A different order every time, so no destination is always served last.
        ids.shuffle(&mut rand::thread_rng());
        for id in ids {
            self.start_waiting(id, ctx);
        }
    }

    /// Takes every waiting hand-off out (shutting down, restarting), to be given back: another node, or this one's
    /// claims, take them.
    fn take_waiting(&mut self) -> Vec<Job> {
        let jobs: Vec<Job> =
            self.waiting.drain().flat_map(|(_, queue)| queue.into_iter().map(|(job, _)| job)).collect();
        self.waiting_len = 0;
        self.room_full.clear();
        emit(HandOffsWaiting { count: 0 });
        if !jobs.is_empty() {
            emit(DeliveriesHandedOff { started: 0, given_back: jobs.len() });
        }
        jobs
    }

    /// Takes `jobs`' slots while their destination's limits (rate limit, circuit breaker) answer, then starts those
    /// admitted; the rest are released for a claim round to take when the limits allow.
    fn admit_and_start(&mut self, destination: Arc<Destination>, jobs: Vec<Job>, ctx: &mut Context<Self>) {
        // Reserved while the limits answer, so that a claim round meanwhile does not count on these slots.
        let (id, want) = (destination.id, jobs.len() as u32);
        self.reserve(id, i64::from(want));
        let (limits, redis) = (self.limits.clone(), self.redis.get());
        let fut = async move { admit(&limits, redis, &destination, want).await };
        ctx.spawn(guarded(fut).into_actor(self).map(move |res, act, ctx| {
            act.reserve(id, -i64::from(want));
            let admitted = match res {
                Ok(admitted) => admitted as usize,
                Err(Panicked(what)) => {
                    // The leases expire; the supervisor restarts the scheduler.
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
            };
            let mut jobs = jobs;
            let mut back = jobs.split_off(admitted.min(jobs.len()));
            if admitted == 0 {
                act.block(id, Blocked::Limits);
                // Nothing of it may start now: what waits for it goes the claim path too.
                if let Some(queue) = act.waiting.remove(&id) {
                    act.waiting_len -= queue.len();
                    act.room_full.remove(&id);
                    back.extend(queue.into_iter().map(|(job, _)| job));
                    emit(HandOffsWaiting { count: act.waiting_len });
                }
            } else if let Some(port) = &act.handoff {
                port.unblock(id, Some(Blocked::Limits));
            }
            // Started however long the limits took to answer (bounded by `limits_timeout_ms`), as a claimed
            // delivery is: giving these back would leave nothing deliverable while Redis does not answer.
            emit(DeliveriesHandedOff { started: jobs.len(), given_back: back.len() });
            for job in jobs {
                act.dispatch(job, ctx);
            }
            if !back.is_empty() {
                // The limits are cluster-wide: no node may start these now. A claim round takes them when the
                // limits allow (after a finished attempt here, or at the poll).
                act.starved = true;
                act.give_back(back, false, ctx);
            }
            if act.inflight == 0 && act.stopping.is_some() {
                act.answer_shutdown(ctx);
            }
        }));
    }
}

impl Scheduler {
    /// Counts `n` slots of `destination` as taken while its limits answer a hand-off (negative: frees them).
    fn reserve(&mut self, destination: Uuid, n: i64) {
        let held = self.reserved.entry(destination).or_default();
        // Never frees more than is held: a restart may have freed it already.
        let n = n.max(-*held);
        *held += n;
        if *held <= 0 {
            self.reserved.remove(&destination);
        }
        self.count_in_flight(destination, n);
    }

    fn count_in_flight(&mut self, destination: Uuid, n: i64) {
        self.inflight = (self.inflight as i64 + n).max(0) as usize;
        let slot = self.inflight_by_destination.entry(destination).or_default();
        *slot = (*slot as i64 + n).max(0) as u32;
        if *slot == 0 {
            self.inflight_by_destination.remove(&destination);
        }
    }

    /// Releases handed-off deliveries this node will not attempt now (nothing of the limits was taken for them); with
    /// `wake`, then looks for work and wakes the other nodes: they are claimable again at once.
    fn give_back(&mut self, jobs: Vec<Job>, wake: bool, ctx: &mut Context<Self>) {
        let fut = handoff::give_back(self.pool.clone(), jobs, wake);
        ctx.spawn(fut.into_actor(self).map(move |(), act, ctx| {
            if wake {
                act.tick(ctx);
            }
        }));
    }

    fn block(&self, destination: Uuid, why: Blocked) {
        if let Some(port) = &self.handoff {
            port.block(destination, why);
        }
    }
}

/// Takes up to `want` of the destination's rate-limit tokens, then asks its circuit breaker; returns the tokens it
/// did not admit. Answers how many deliveries may start now.
async fn admit(limits: &Limits, redis: Option<redis::aio::MultiplexedConnection>, d: &Destination, want: u32) -> u32 {
    let tokens = match d.rate_limit {
        Some(rate) => limits.take_tokens(redis.clone(), d.id, rate, want).await.0,
        None => want,
    };
    let admitted = if tokens > 0 { limits.admit(redis.clone(), d.id, tokens).await.0 } else { 0 };
    if let (Some(rate), true) = (d.rate_limit, admitted < tokens) {
        limits.return_tokens(redis, d.id, rate, tokens - admitted).await;
    }
    admitted
}

/// What a claim round's claims yielded for the destinations that are not FIFO (a FIFO head waits for its result, not
/// a slot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Claims {
    /// No such destination had a budget: nothing to learn.
    #[default]
    NoBudget,
    /// At least one yielded work: it may have more behind it.
    Yielded,
    /// Every one that had a budget came back empty: the claim, which counts each destination's leases again under
    /// the claim lock, found its window taken since the look (by the writer's hand-offs or another node), or its due
    /// work claimed or changed meanwhile.
    Empty,
}

impl Claims {
    fn of(budgets: &[(Arc<Destination>, u32)], claimed: &HashMap<Uuid, u32>) -> Self {
        let mut budgeted = budgets.iter().filter(|(d, _)| !d.fifo).peekable();
        if budgeted.peek().is_none() {
            Claims::NoBudget
        } else if budgeted.any(|(d, _)| claimed.contains_key(&d.id)) {
            Claims::Yielded
        } else {
            Claims::Empty
        }
    }
}

/// Whether the next finished attempt, or the next committed results, should start another round. `starved` is the
/// round's own answer (room or limits left due work behind). A round that yielded work may have left more. A round
/// whose claims all came back empty despite a budget looks again once (its look's promise may hold by then),
/// otherwise the destination's backlog would wait for the poll; a second empty round in a row waits for the next
/// wake (a notification, a hand-off given back, a retry coming due, the poll), so that a window held by hand-offs
/// does not start a claim under the cluster-wide lock at every finished attempt (ADR-0028).
fn look_again(starved: bool, claims: Claims, retried_empty: &mut bool) -> bool {
    match claims {
        Claims::Empty => starved || !std::mem::replace(retried_empty, true),
        Claims::Yielded => {
            *retried_empty = false;
            true
        }
        Claims::NoBudget => {
            *retried_empty = false;
            starved
        }
    }
}

/// What one claim round leased, how many rows it buried, whether it left due work behind for lack of room or limits,
/// and what its claims yielded.
#[derive(Default)]
struct RoundOutcome {
    jobs: Vec<Job>,
    buried: usize,
    starved: bool,
    claims: Claims,
}

/// The inputs of one claim round, moved into its future.
struct ClaimRound {
    pool: Pool,
    limits: Arc<Limits>,
    redis: Option<redis::aio::MultiplexedConnection>,
    node_id: String,
    lease_margin_ms: i32,
    handoff: Option<Arc<HandOffPort>>,
    notices: Notices,
}

impl ClaimRound {
    /// `capacity` is the node's limit and `free` what is left of it; `local` what this node has in flight per
    /// destination.
    async fn run(
        self,
        active: Vec<Arc<Destination>>,
        free: usize,
        capacity: usize,
        local: HashMap<Uuid, u32>,
    ) -> anyhow::Result<RoundOutcome> {
        let (fifo_all, normal_all): (Vec<_>, Vec<_>) = active.iter().partition(|d| d.fifo);
        let normal_ids: Vec<Uuid> = normal_all.iter().map(|d| d.id).collect();
        let normal_caps: Vec<i32> = normal_all.iter().map(|d| d.max_in_flight.min(i32::MAX as u32) as i32).collect();
        let fifo_ids: Vec<Uuid> = fifo_all.iter().map(|d| d.id).collect();
        let started = std::time::Instant::now();
        // The connection goes back to the pool before any Redis call: a slow Redis never holds PostgreSQL.
        let busy: HashMap<Uuid, u32> = claims::due(&self.pool, &normal_ids, &normal_caps, &fifo_ids).await?;
        if busy.is_empty() {
            return Ok(RoundOutcome::default());
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
        // Due work was left behind for want of a slot (here or cluster-wide) or of a grant: a finished attempt may
        // make room for it, so the next completion looks again. (A FIFO head waits for its result, not a slot.)
        let mut starved = false;
        for d in active.into_iter() {
            let Some(in_flight) = busy.get(&d.id) else { continue };
            if remaining == 0 {
                starved = true;
                break;
            }
            let mine = local.get(&d.id).copied().unwrap_or(0);
            let uncut = if d.fifo { 1 } else { d.max_in_flight.saturating_sub(*in_flight) };
            let want = uncut.min(share.saturating_sub(mine)).min(remaining);
            starved |= !d.fifo && want < uncut.max(1);
            if want > 0 {
                remaining -= want;
                wants.push((d, want));
            }
        }
        let due_took = started.elapsed();
        // Every destination's limits at once: a round waits for Redis at most once, however many destinations.
        let admitted = futures::future::join_all(wants.into_iter().map(|(d, want)| {
            let (limits, redis) = (self.limits.clone(), self.redis.clone());
            async move {
                let admitted = admit(&limits, redis, &d, want).await;
                (d, want, admitted)
            }
        }))
        .await;
        starved |= admitted.iter().any(|(d, want, n)| !d.fifo && n < want);
        if let Some(port) = &self.handoff {
            // What the limits say now holds for the hand-offs too.
            for (d, _, n) in &admitted {
                match n {
                    0 => port.block(d.id, Blocked::Limits),
                    _ => port.unblock(d.id, Some(Blocked::Limits)),
                }
            }
        }
        let budgets: Vec<(Arc<Destination>, u32)> =
            admitted.into_iter().filter(|(_, _, n)| *n > 0).map(|(d, _, n)| (d, n)).collect();
        if budgets.is_empty() {
            return Ok(RoundOutcome { starved, ..Default::default() });
        }

        let (fifo, normal): (Vec<_>, Vec<_>) = budgets.iter().partition(|(d, _)| d.fifo);
        let normal_ids: Vec<Uuid> = normal.iter().map(|(d, _)| d.id).collect();
        let normal_n: Vec<i32> = normal.iter().map(|(_, n)| *n as i32).collect();
        let normal_cap: Vec<i32> = normal.iter().map(|(d, _)| d.max_in_flight.min(i32::MAX as u32) as i32).collect();
        let fifo_ids: Vec<Uuid> = fifo.iter().map(|(d, _)| d.id).collect();

        let budget = claims::Budgets {
            destinations: &normal_ids,
            wanted: &normal_n,
            caps: &normal_cap,
            fifo: &fifo_ids,
            node_id: &self.node_id,
            lease_margin_ms: self.lease_margin_ms,
        };
        let limits_took = started.elapsed() - due_took;
        let claimed_rows = claims::claim(&self.pool, &budget).await;
        let claim_took = started.elapsed() - due_took - limits_took;
        let (jobs, buried) = match claimed_rows {
            Ok(claimed) => claimed,
            Err(error) => {
                // Nothing was claimed: every grant and token of this round goes back now, not at its expiry.
                self.give_back_unused(&budgets, &HashMap::new()).await;
                return Err(error);
            }
        };
        let mut dead: HashMap<Uuid, u64> = HashMap::new();
        for b in &buried {
            emit(DeliveryUnattemptable { delivery: b.id, reason: &b.reason });
            if let Some(destination) = b.destination_id {
                *dead.entry(destination).or_default() += 1;
            }
        }
        for (destination, count) in dead {
            let reason = DeadReason::Unattemptable;
            emit(DeliveriesDead { destination, reason, count });
            self.notices.send(Happening::Dead { destination, count, reason });
        }

        let mut claimed: HashMap<Uuid, u32> = HashMap::new();
        for j in &jobs {
            *claimed.entry(j.destination_id).or_default() += 1;
        }
        self.give_back_unused(&budgets, &claimed).await;
        let claims = Claims::of(&budgets, &claimed);
        emit(DeliveriesClaimed { count: jobs.len(), due: due_took, limits: limits_took, claim: claim_took });
        Ok(RoundOutcome { jobs, buried: buried.len(), starved, claims })
    }

    /// Gives back what a round was granted and did not use: rate-limit tokens, and half-open or ramping grants of
    /// the circuit breaker (which must not sit unused until they expire).
    async fn give_back_unused(&self, budgets: &[(Arc<Destination>, u32)], claimed: &HashMap<Uuid, u32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(fifo: bool) -> Arc<Destination> {
        Arc::new(Destination {
            id: Uuid::new_v4(),
            slug: "d".into(),
            url: "http://127.0.0.1/".into(),
            timeout: Duration::from_secs(1),
            max_in_flight: 256,
            rate_limit: None,
            retry: Default::default(),
            secrets: Vec::new(),
            keys: Vec::new(),
            fifo,
            state: DestinationState::Active,
            headers: Vec::new(),
            tls: None,
        })
    }

    fn budgets(ds: &[&Arc<Destination>]) -> Vec<(Arc<Destination>, u32)> {
        ds.iter().map(|d| (Arc::clone(d), 20)).collect()
    }

    #[test]
    fn a_round_whose_every_budgeted_claim_came_back_empty_is_told_apart() {
        let (a, b, fifo) = (destination(false), destination(false), destination(true));
        let claimed = HashMap::from([(b.id, 3)]);
        assert_eq!(Claims::of(&budgets(&[&a, &b]), &claimed), Claims::Yielded);
        assert_eq!(Claims::of(&budgets(&[&a]), &claimed), Claims::Empty);
        assert_eq!(Claims::of(&budgets(&[&a, &fifo]), &HashMap::from([(fifo.id, 1)])), Claims::Empty);
        // A FIFO head waits for its result, not a slot.
        assert_eq!(Claims::of(&budgets(&[&fifo]), &HashMap::new()), Claims::NoBudget);
        assert_eq!(Claims::of(&[], &HashMap::new()), Claims::NoBudget);
    }

    /// A round whose claims came back empty although its look found room (leases taken between the look and the
    /// claim) looks again at the next finished attempt, once: before, its destination's backlog waited for the poll.
    #[test]
    fn an_empty_claim_looks_again_once_then_waits_for_the_next_wake() {
        let mut retried = false;
        assert!(look_again(false, Claims::Empty, &mut retried));
        assert!(!look_again(false, Claims::Empty, &mut retried), "a second empty round in a row waits");
        assert!(!look_again(false, Claims::Empty, &mut retried));
        // Work claimed again, or a round with nothing budgeted, ends the streak.
        assert!(look_again(false, Claims::Yielded, &mut retried));
        assert!(look_again(false, Claims::Empty, &mut retried));
        assert!(!look_again(false, Claims::NoBudget, &mut retried));
        assert!(look_again(false, Claims::Empty, &mut retried));
    }

    #[test]
    fn a_round_left_short_of_room_or_limits_looks_again_whatever_it_claimed() {
        let mut retried = true;
        assert!(look_again(true, Claims::Empty, &mut retried));
        assert!(look_again(true, Claims::NoBudget, &mut retried));
        assert!(!look_again(false, Claims::NoBudget, &mut retried));
    }
}
