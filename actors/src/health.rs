//! Probes PostgreSQL and publishes each actor's state and mailbox depth, for `/readyz` and `/metrics`.
//!
//! The shared [`HealthRegistry`] lives outside the actors so that it survives their restarts; the HTTP front end reads
//! it without messaging anyone, so a readiness probe never waits behind a busy mailbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::supervision::RestartPolicy;
use crate::Pool;

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
}

impl ActorState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Running,
            2 => Self::Degraded,
            3 => Self::Restarting,
            4 => Self::Failed,
            _ => Self::Stopped,
        }
    }
}

/// One actor's externally visible status. Shared (`Arc`) between the actor, its senders and the health report.
#[derive(Debug)]
pub struct ActorStatus {
    name: &'static str,
    /// A critical actor that is not running makes the node unready; a non-critical one only degrades it.
    critical: bool,
    state: AtomicU8,
    queued: AtomicI64,
    restarts: AtomicU64,
    recent_restarts: Mutex<VecDeque<Instant>>,
    budget_exhausted: AtomicBool,
    policy: RestartPolicy,
    backoff: Mutex<crate::Backoff>,
}

impl ActorStatus {
    pub fn new(name: &'static str, critical: bool, policy: RestartPolicy) -> Arc<Self> {
        Arc::new(Self {
            name,
            critical,
            state: AtomicU8::new(ActorState::Starting as u8),
            queued: AtomicI64::new(0),
            restarts: AtomicU64::new(0),
            recent_restarts: Mutex::new(VecDeque::new()),
            budget_exhausted: AtomicBool::new(false),
            backoff: Mutex::new(policy.backoff()),
            policy,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_critical(&self) -> bool {
        self.critical
    }

    pub fn state(&self) -> ActorState {
        if self.budget_exhausted.load(Ordering::Relaxed) {
            return ActorState::Failed;
        }
        ActorState::from_u8(self.state.load(Ordering::Relaxed))
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
        metrics::counter!("hookgate_actor_restarts_total", "actor" => self.name).increment(1);
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
            tracing::error!(
                message = "Actor exceeded its restart budget.",
                actor = self.name,
                restarts = in_window,
                window_secs = self.policy.window_secs,
                critical = self.critical,
            );
        }
        self.lock_backoff().next_delay()
    }

    fn restarts_in_window(&self) -> usize {
        let recent = self.recent_restarts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        recent.iter().filter(|t| now.duration_since(**t) <= self.policy.window()).count()
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, crate::Backoff> {
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
    pub actors: Vec<ActorReport>,
}

#[derive(Debug, Serialize)]
pub struct ActorReport {
    pub name: &'static str,
    pub state: ActorState,
    pub critical: bool,
    pub mailbox_depth: i64,
    pub restarts: u64,
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
        let status = ActorStatus::new(name, critical, policy);
        metrics::counter!("hookgate_actor_restarts_total", "actor" => name).absolute(0);
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
                state: a.state(),
                critical: a.is_critical(),
                mailbox_depth: a.mailbox_depth(),
                restarts: a.restarts(),
            })
            .collect();
        let critical_ok = actors.iter().filter(|a| a.critical).all(|a| a.state == ActorState::Running);
        let optional_ok = actors.iter().filter(|a| !a.critical).all(|a| a.state == ActorState::Running);
        let postgres = self.postgres.get();
        let redis = self.redis.get();
        let ready = critical_ok && postgres == DependencyState::Up && !self.draining.load(Ordering::Relaxed);
        let status = if !ready {
            "unready"
        } else if !optional_ok || redis != DependencyState::Up {
            "degraded"
        } else {
            "ready"
        };
        ReadinessReport { status, ready, postgres, redis, actors }
    }

    /// Copies mailbox depths and states into gauges.
    pub fn publish_metrics(&self) {
        for a in self.actors() {
            metrics::gauge!("hookgate_actor_mailbox_depth", "actor" => a.name()).set(a.mailbox_depth() as f64);
            metrics::gauge!("hookgate_actor_running", "actor" => a.name()).set(if a.state() == ActorState::Running {
                1.0
            } else {
                0.0
            });
        }
        let up = |s| if s == DependencyState::Up { 1.0 } else { 0.0 };
        metrics::gauge!("hookgate_dependency_up", "dependency" => "postgres").set(up(self.postgres.get()));
        metrics::gauge!("hookgate_dependency_up", "dependency" => "redis").set(up(self.redis.get()));
    }
}

/// Probes PostgreSQL on a timer and publishes metrics from the registry.
pub struct Health {
    pool: Pool,
    registry: Arc<HealthRegistry>,
    interval: Duration,
    probe_timeout: Duration,
    probing: bool,
}

impl Health {
    pub fn new(pool: Pool, registry: Arc<HealthRegistry>, interval: Duration, probe_timeout: Duration) -> Self {
        Self { pool, registry, interval, probe_timeout, probing: false }
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        self.registry.publish_metrics();
        if self.probing {
            return;
        }
        self.probing = true;
        let pool = self.pool.clone();
        let limit = self.probe_timeout;
        let fut = async move {
            let check = async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            };
            match tokio::time::timeout(limit, check).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("probe timed out".to_owned()),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.probing = false;
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
}
