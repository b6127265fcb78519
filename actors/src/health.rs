//! Probes PostgreSQL and publishes each actor's state and mailbox depth, for `/readyz` and `/metrics`.
//!
//! The probe has a PostgreSQL connection of its own ([`hookgate_store::probe::Probe`]), never a pooled one: a busy
//! pool (slow admin queries, an ingest burst) must not read as "PostgreSQL down" and take the node out of the load
//! balancer. A lost connection is opened again by the next probe, within the same time limit.
//!
//! The shared [`HealthRegistry`] lives outside the actors so that it survives their restarts; the HTTP front end reads
//! it without messaging anyone, so a readiness probe never waits behind a busy mailbox.
//!
//! Readiness answers one question: can this node take ingest traffic? Only what ingest needs (PostgreSQL, the
//! critical ingest actors) can make it false. The delivery side reports in its own section of the report
//! ([`ReadinessReport::delivery`]): a stalled or failing Scheduler makes the node `degraded`, visible to operators
//! and in metrics, but never takes ingest out of the load balancer. An actor with a heartbeat (the Scheduler's
//! claim loop) that has not beaten for its `stall_after` is reported [`ActorState::Stalled`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use hookgate_core::backoff::Backoff;
use hookgate_core::internal_events::{
    emit, ActorBudgetExhausted, ActorObserved, ActorPanicked, ActorRegistered, ActorRestarted, DependencyObserved,
    ReadinessObserved,
};
use hookgate_store::probe::Probe;
use serde::Serialize;

use crate::pg_tls::{PgConnect, PgTls};
use crate::supervision::RestartPolicy;

/// What an actor is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Starting,
    Running,
    /// Running without its backing service (e.g. the cache while Redis is away).
    Degraded,
    /// Stopped and waiting for its back-off delay before resuming.
    Restarting,
    /// Restarted more than its budget allows within the window.
    Failed,
    /// Shutting down.
    Stopped,
    /// Alive by its own account, but its heartbeat is older than allowed (e.g. a claim loop that stopped turning).
    Stalled,
}

impl ActorState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Running,
            2 => Self::Degraded,
            3 => Self::Restarting,
            4 => Self::Failed,
            6 => Self::Stalled,
            _ => Self::Stopped,
        }
    }
}

/// Which side of the node an actor serves, which decides what its health affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Needed to take events in: when it is not running, the node is unready (critical) or degraded.
    Ingest,
    /// Delivers events: reported in the delivery section; never makes the node unready.
    Delivery,
    /// Background work (routing snapshot, janitor): degrades, never unready.
    Background,
}

/// One actor's externally visible status. Shared (`Arc`) between the actor, its senders and the health report.
#[derive(Debug)]
pub struct ActorStatus {
    name: &'static str,
    /// A critical actor that is not running makes the node unready; a non-critical one only degrades it.
    critical: bool,
    role: Role,
    /// Milliseconds since `epoch` of the last heartbeat (actors with `stall_after` only).
    heartbeat_ms: AtomicU64,
    epoch: Instant,
    stall_after: Option<Duration>,
    panics: AtomicU64,
    state: AtomicU8,
    queued: AtomicI64,
    restarts: AtomicU64,
    recent_restarts: Mutex<VecDeque<Instant>>,
    budget_exhausted: AtomicBool,
    policy: RestartPolicy,
    backoff: Mutex<Backoff>,
    /// The back-off of the last restart, in milliseconds.
    last_backoff_ms: AtomicU64,
}

impl ActorStatus {
    pub fn new(name: &'static str, critical: bool, policy: RestartPolicy) -> Arc<Self> {
        let role = if critical { Role::Ingest } else { Role::Background };
        Self::with_role(name, critical, role, None, policy)
    }

    /// A status with a role and, optionally, a heartbeat that must beat at least every `stall_after`.
    pub fn with_role(
        name: &'static str,
        critical: bool,
        role: Role,
        stall_after: Option<Duration>,
        policy: RestartPolicy,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            critical,
            role,
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_after,
            panics: AtomicU64::new(0),
            state: AtomicU8::new(ActorState::Starting as u8),
            queued: AtomicI64::new(0),
            restarts: AtomicU64::new(0),
            recent_restarts: Mutex::new(VecDeque::new()),
            budget_exhausted: AtomicBool::new(false),
            backoff: Mutex::new(policy.backoff()),
            last_backoff_ms: AtomicU64::new(0),
            policy,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_critical(&self) -> bool {
        self.critical
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> ActorState {
        if self.budget_exhausted.load(Ordering::Relaxed) {
            return ActorState::Failed;
        }
        let state = ActorState::from_u8(self.state.load(Ordering::Relaxed));
        match (state, self.stall_after, self.heartbeat_age()) {
            (ActorState::Running | ActorState::Degraded, Some(limit), Some(age)) if age > limit => ActorState::Stalled,
            _ => state,
        }
    }

    /// Records that the actor's loop turned (actors registered with a heartbeat).
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis().min(u64::MAX as u128 - 1) as u64 + 1;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the actor last beat; `None` without a heartbeat. An actor that never beat counts from its
    /// registration.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        self.stall_after?;
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed).saturating_sub(1));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// Records a panic caught in the actor (it is then stopped and restarted by its supervisor).
    pub fn record_panic(&self, what: &str) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        emit(ActorPanicked { actor: self.name, panic: what });
    }

    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Records the actor's own view of its state. Reaching `Running` clears an exhausted budget once the restarts
    /// have aged out of the window.
    pub fn set_state(&self, state: ActorState) {
        self.state.store(state as u8, Ordering::Relaxed);
        if state == ActorState::Running
            && self.budget_exhausted.load(Ordering::Relaxed)
            && self.restarts_in_window() <= self.policy.budget as usize
        {
            self.budget_exhausted.store(false, Ordering::Relaxed);
            tracing::info!(message = "Actor recovered after exhausting its restart budget.", actor = self.name);
        }
    }

    /// Counts a message accepted into the actor's mailbox (call after a successful `try_send`).
    pub fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message taken out of the mailbox (first line of each handler).
    pub fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Messages waiting in the mailbox.
    pub fn mailbox_depth(&self) -> i64 {
        self.queued.load(Ordering::Relaxed).max(0)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Records a restart and returns how long the actor should wait before resuming work. The delay doubles with
    /// each restart and starts over once the actor has run for longer than the maximum delay without restarting,
    /// so an actor that connects and then fails at once keeps backing off.
    pub fn record_restart(&self) -> Duration {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let stable_for = Duration::from_millis(self.policy.backoff_max_ms);
        self.state.store(ActorState::Restarting as u8, Ordering::Relaxed);
        let in_window = {
            let mut recent = self.recent_restarts.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if recent.back().is_none_or(|last| now.duration_since(*last) > stable_for) {
                self.lock_backoff().reset();
            }
            recent.push_back(now);
            while recent.front().is_some_and(|t| now.duration_since(*t) > self.policy.window()) {
                recent.pop_front();
            }
            recent.len()
        };
        if in_window > self.policy.budget as usize && !self.budget_exhausted.swap(true, Ordering::Relaxed) {
            emit(ActorBudgetExhausted {
                actor: self.name,
                restarts: in_window,
                window_secs: self.policy.window_secs,
                critical: self.critical,
            });
        }
        let delay = self.lock_backoff().next_delay();
        emit(ActorRestarted { actor: self.name, backoff: delay });
        self.last_backoff_ms.store(delay.as_millis().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        delay
    }

    /// Holds a (re)started actor's mailbox for `delay`, the back-off [`record_restart`](Self::record_restart) asked
    /// for: no message is handled and no timer fires before it is over, so a failing actor cannot spin. The actor
    /// shows as `restarting` meanwhile and as `running` once it resumes.
    pub fn resume_after<A>(self: &Arc<Self>, delay: Duration, act: &mut A, ctx: &mut actix::Context<A>)
    where
        A: actix::Actor<Context = actix::Context<A>>,
    {
        use actix::{ActorFutureExt, AsyncContext, WrapFuture};
        if delay.is_zero() {
            self.set_state(ActorState::Running);
            return;
        }
        let status = self.clone();
        ctx.wait(tokio::time::sleep(delay).into_actor(act).map(move |(), _, _| status.set_state(ActorState::Running)));
    }

    /// The back-off the last restart waited before resuming work.
    pub fn last_backoff(&self) -> Duration {
        Duration::from_millis(self.last_backoff_ms.load(Ordering::Relaxed))
    }

    fn restarts_in_window(&self) -> usize {
        let recent = self.recent_restarts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        recent.iter().filter(|t| now.duration_since(**t) <= self.policy.window()).count()
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state of a backing service as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyState {
    Unknown,
    Up,
    Down,
}

#[derive(Debug)]
struct Dependency {
    state: AtomicU8,
}

impl Dependency {
    fn new() -> Self {
        Self { state: AtomicU8::new(0) }
    }
    fn get(&self) -> DependencyState {
        match self.state.load(Ordering::Relaxed) {
            1 => DependencyState::Up,
            2 => DependencyState::Down,
            _ => DependencyState::Unknown,
        }
    }
    fn set(&self, s: DependencyState) {
        self.state.store(
            match s {
                DependencyState::Unknown => 0,
                DependencyState::Up => 1,
                DependencyState::Down => 2,
            },
            Ordering::Relaxed,
        );
    }
}

/// Every actor's status and every dependency's state, shared by reference.
#[derive(Debug)]
pub struct HealthRegistry {
    actors: Mutex<Vec<Arc<ActorStatus>>>,
    postgres: Dependency,
    redis: Dependency,
    draining: AtomicBool,
}

/// The body of `/readyz`.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    /// `ready`, `degraded` (serving, but without an optional dependency) or `unready`.
    pub status: &'static str,
    pub ready: bool,
    pub postgres: DependencyState,
    pub redis: DependencyState,
    /// The delivery side: `running`, `degraded` (an actor restarting or without a dependency), `stalled` (the claim
    /// loop stopped turning), `failed` (out of restart budget) or `disabled` (this node does not deliver). Never
    /// affects `ready`.
    pub delivery: &'static str,
    pub actors: Vec<ActorReport>,
}

#[derive(Debug, Serialize)]
pub struct ActorReport {
    pub name: &'static str,
    pub role: Role,
    pub state: ActorState,
    pub critical: bool,
    pub mailbox_depth: i64,
    pub restarts: u64,
    pub panics: u64,
    /// How long the last restart waited before the actor resumed work (the supervision back-off), in milliseconds.
    pub last_backoff_ms: u64,
    /// Milliseconds since the actor's loop last turned (actors with a heartbeat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_ms: Option<u64>,
}

impl HealthRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            actors: Mutex::new(Vec::new()),
            postgres: Dependency::new(),
            redis: Dependency::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// Creates and registers the status of a new actor.
    pub fn register(&self, name: &'static str, critical: bool, policy: RestartPolicy) -> Arc<ActorStatus> {
        self.add(ActorStatus::new(name, critical, policy))
    }

    /// Registers a delivery-side actor; with `stall_after`, it must [`ActorStatus::beat`] at least that often.
    pub fn register_delivery(
        &self,
        name: &'static str,
        stall_after: Option<Duration>,
        policy: RestartPolicy,
    ) -> Arc<ActorStatus> {
        self.add(ActorStatus::with_role(name, false, Role::Delivery, stall_after, policy))
    }

    fn add(&self, status: Arc<ActorStatus>) -> Arc<ActorStatus> {
        emit(ActorRegistered { actor: status.name() });
        self.actors.lock().unwrap_or_else(|e| e.into_inner()).push(status.clone());
        status
    }

    pub fn set_postgres(&self, s: DependencyState) {
        self.postgres.set(s);
    }

    pub fn set_redis(&self, s: DependencyState) {
        self.redis.set(s);
    }

    /// Marks the node as shutting down: readiness turns false at once.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn actors(&self) -> Vec<Arc<ActorStatus>> {
        self.actors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn report(&self) -> ReadinessReport {
        let actors: Vec<ActorReport> = self
            .actors()
            .iter()
            .map(|a| ActorReport {
                name: a.name(),
                role: a.role(),
                state: a.state(),
                critical: a.is_critical(),
                mailbox_depth: a.mailbox_depth(),
                restarts: a.restarts(),
                panics: a.panics(),
                last_backoff_ms: a.last_backoff().as_millis().min(u128::from(u64::MAX)) as u64,
                heartbeat_age_ms: a.heartbeat_age().map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            })
            .collect();
        let critical_ok = actors.iter().filter(|a| a.critical).all(|a| a.state == ActorState::Running);
        let optional_ok = actors.iter().filter(|a| !a.critical).all(|a| a.state == ActorState::Running);
        let postgres = self.postgres.get();
        let redis = self.redis.get();
        let ready = critical_ok && postgres == DependencyState::Up && !self.draining.load(Ordering::Relaxed);
        let delivery = delivery_status(actors.iter().filter(|a| a.role == Role::Delivery).map(|a| a.state));
        let status = if !ready {
            "unready"
        } else if !optional_ok || redis != DependencyState::Up {
            "degraded"
        } else {
            "ready"
        };
        ReadinessReport { status, ready, postgres, redis, delivery, actors }
    }

    /// Copies mailbox depths and states into gauges.
    pub fn publish_metrics(&self) {
        for a in self.actors() {
            let state = a.state();
            emit(ActorObserved {
                actor: a.name(),
                mailbox_depth: a.mailbox_depth(),
                running: state == ActorState::Running,
                heartbeat: a.heartbeat_age().map(|age| (state == ActorState::Stalled, age)),
            });
        }
        emit(DependencyObserved { dependency: "postgres", up: self.postgres.get() == DependencyState::Up });
        emit(DependencyObserved { dependency: "redis", up: self.redis.get() == DependencyState::Up });
        let report = self.report();
        emit(ReadinessObserved { ready: report.ready, delivery: report.delivery });
    }
}

/// The delivery section of the report, from the states of the delivery-side actors.
fn delivery_status(states: impl Iterator<Item = ActorState>) -> &'static str {
    let states: Vec<ActorState> = states.collect();
    if states.is_empty() {
        "disabled"
    } else if states.contains(&ActorState::Failed) {
        "failed"
    } else if states.contains(&ActorState::Stalled) {
        "stalled"
    } else if states.iter().all(|s| *s == ActorState::Running) {
        "running"
    } else {
        "degraded"
    }
}

/// Probes PostgreSQL on a timer, on a connection of its own, and publishes metrics from the registry.
pub struct Health {
    /// The probe's connection; taken out while a probe runs (one at a time).
    connection: Option<Probe<PgTls>>,
    registry: Arc<HealthRegistry>,
    interval: Duration,
    probe_timeout: Duration,
    /// Set by [`Shutdown`]: no probe starts after it.
    stopped: bool,
}

impl Health {
    /// `pg` is how the probe's connection is made (the pool's settings and TLS; give it an application name of its
    /// own); `probe_timeout` bounds each probe, connecting included.
    pub fn new(pg: &PgConnect, registry: Arc<HealthRegistry>, interval: Duration, probe_timeout: Duration) -> Self {
        let probe = Probe::new(pg.config.clone(), pg.tls.clone());
        Self { connection: Some(probe), registry, interval, probe_timeout, stopped: false }
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        self.registry.publish_metrics();
        if self.stopped {
            return;
        }
        // None while the previous probe runs.
        let Some(mut probe) = self.connection.take() else { return };
        let limit = self.probe_timeout;
        let fut = async move {
            let res = probe.ping(limit).await;
            (probe, res)
        };
        ctx.spawn(fut.into_actor(self).map(|(probe, res), act, _| {
            act.connection = Some(probe);
            match res {
                Ok(()) => act.registry.set_postgres(DependencyState::Up),
                Err(error) => {
                    if act.registry.postgres.get() != DependencyState::Down {
                        tracing::warn!(message = "PostgreSQL probe failed.", %error);
                    }
                    act.registry.set_postgres(DependencyState::Down);
                }
            }
        }));
    }
}

impl Actor for Health {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.probe(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.probe(ctx));
    }
}

/// Starts no probe after it (ingest has stopped; nothing reads readiness any more).
impl Handler<crate::shutdown::Shutdown> for Health {
    type Result = ();
    fn handle(&mut self, msg: crate::shutdown::Shutdown, _: &mut Self::Context) {
        self.stopped = true;
        let _ = msg.reply.send(());
    }
}

/// Runs one probe now and answers when it has been recorded (used at start-up and by tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProbeNow;

impl Handler<ProbeNow> for Health {
    type Result = ();
    fn handle(&mut self, _: ProbeNow, ctx: &mut Self::Context) {
        self.probe(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget: u32) -> RestartPolicy {
        RestartPolicy { backoff_initial_ms: 10, backoff_max_ms: 40, budget, window_secs: 60 }
    }

    #[test]
    fn a_critical_actor_over_its_restart_budget_makes_the_node_unready() {
        let reg = HealthRegistry::new();
        reg.set_postgres(DependencyState::Up);
        reg.set_redis(DependencyState::Up);
        let a = reg.register("writer", true, policy(2));
        a.set_state(ActorState::Running);
        assert!(reg.report().ready);
        for _ in 0..2 {
            a.record_restart();
            a.set_state(ActorState::Running);
        }
        assert!(reg.report().ready, "two restarts are within a budget of two");
        a.record_restart();
        a.set_state(ActorState::Running);
        let report = reg.report();
        assert!(!report.ready);
        assert_eq!(report.actors[0].state, ActorState::Failed);
        assert_eq!(report.actors[0].restarts, 3);
    }

    #[test]
    fn restart_delays_grow_even_when_the_actor_briefly_runs_between_restarts() {
        let reg = HealthRegistry::new();
        let a = reg.register("cache", false, policy(100));
        let d1 = a.record_restart();
        a.set_state(ActorState::Running);
        let _ = a.record_restart();
        a.set_state(ActorState::Running);
        let d3 = a.record_restart();
        assert!(d1 <= Duration::from_millis(10));
        assert!(d3 >= Duration::from_millis(20), "third delay {d3:?} should be at least half of 40ms");
    }

    #[test]
    fn restart_delays_start_over_after_a_stable_period() {
        let reg = HealthRegistry::new();
        let a = reg.register("cache", false, policy(100));
        for _ in 0..4 {
            a.record_restart();
        }
        // Backdate the last restart beyond the stable period (backoff_max = 40 ms).
        {
            let mut recent = a.recent_restarts.lock().unwrap();
            let last = recent.back_mut().unwrap();
            *last = Instant::now() - Duration::from_millis(100);
        }
        assert!(a.record_restart() <= Duration::from_millis(10));
    }

    #[test]
    fn an_optional_actor_down_or_redis_down_is_degraded_not_unready() {
        let reg = HealthRegistry::new();
        reg.set_postgres(DependencyState::Up);
        reg.set_redis(DependencyState::Down);
        let w = reg.register("writer", true, policy(5));
        let c = reg.register("cache", false, policy(5));
        w.set_state(ActorState::Running);
        c.set_state(ActorState::Degraded);
        let r = reg.report();
        assert!(r.ready);
        assert_eq!(r.status, "degraded");
        reg.set_postgres(DependencyState::Down);
        assert!(!reg.report().ready);
    }

    #[test]
    fn draining_turns_readiness_false() {
        let reg = HealthRegistry::new();
        reg.set_postgres(DependencyState::Up);
        reg.register("writer", true, policy(5)).set_state(ActorState::Running);
        assert!(reg.report().ready);
        reg.set_draining();
        assert!(!reg.report().ready);
    }

    #[test]
    fn the_delivery_side_never_makes_the_node_unready() {
        let reg = HealthRegistry::new();
        reg.set_postgres(DependencyState::Up);
        reg.set_redis(DependencyState::Up);
        reg.register("writer", true, policy(5)).set_state(ActorState::Running);
        let scheduler = reg.register_delivery("scheduler", Some(Duration::from_secs(3600)), policy(1));
        scheduler.set_state(ActorState::Running);
        scheduler.beat();
        let r = reg.report();
        assert_eq!((r.ready, r.status, r.delivery), (true, "ready", "running"));
        scheduler.set_state(ActorState::Degraded);
        let r = reg.report();
        assert_eq!((r.ready, r.status, r.delivery), (true, "degraded", "degraded"));
        scheduler.record_restart();
        scheduler.record_restart();
        let r = reg.report();
        assert_eq!((r.ready, r.status, r.delivery), (true, "degraded", "failed"));
    }

    #[test]
    fn an_actor_whose_heartbeat_is_too_old_is_stalled() {
        let reg = HealthRegistry::new();
        reg.set_postgres(DependencyState::Up);
        let fresh = reg.register_delivery("scheduler", Some(Duration::from_secs(3600)), policy(5));
        fresh.set_state(ActorState::Running);
        fresh.beat();
        assert_eq!(fresh.state(), ActorState::Running);
        assert!(fresh.heartbeat_age().unwrap() < Duration::from_secs(3600));
        // A zero allowance: any age is too old.
        let stuck = reg.register_delivery("claim", Some(Duration::ZERO), policy(5));
        stuck.set_state(ActorState::Running);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stuck.heartbeat_age().unwrap().is_zero() {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert_eq!(stuck.state(), ActorState::Stalled);
        let r = reg.report();
        assert!(r.ready, "a stalled delivery side never makes the node unready");
        assert_eq!(r.delivery, "stalled");
        assert_eq!(r.actors.iter().find(|a| a.name == "claim").unwrap().state, ActorState::Stalled);
    }
}
