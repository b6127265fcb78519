//! Turns what hookgate sees about its destinations into operational notifications, stored as events delivered
//! through hookgate's own delivery engine to the `[notifications] destination`.
//!
//! Producers (the ResultWriter, the Scheduler, the Janitor, the circuit breakers in [`crate::limits`]) hold a
//! [`Notices`] and `try_send` each [`Happening`] into the Notifier's bounded mailbox: a full mailbox drops the notice
//! and counts it (`hookgate_notifications_total{outcome="dropped"}`), it never slows the delivery path. The Notifier
//! itself
//!
//! - stores `destination.disabled`, `destination.circuit_opened` and `destination.circuit_closed` at once;
//! - adds up `delivery.dead` per destination over `dead_window_secs` and stores one notification per destination
//!   and window (this node's count, keyed by the node and the window);
//! - every `backlog_check_secs` reads each destination's oldest pending delivery (one query) and stores
//!   `backlog.age_exceeded` for those older than their threshold, at most once per `backlog_repeat_secs` period.
//!
//! Each notification is one short transaction ([`hookgate_store::notifications::insert`]): an event of hookgate's own
//! source, its idempotency key in `event_keys` (so that replicas observing the same happening store it once), and
//! one delivery to the notification destination, which the Schedulers claim like any other (woken by the COMMIT's
//! NOTIFY). Stores happen one at a time from a bounded queue; one that fails for want of PostgreSQL waits and is
//! tried again.
//!
//! No loop: a happening about the notification destination itself is never stored (it is logged at warn, at most
//! once a minute per type), so its own dead deliveries, circuit, disablement and backlog, which include every
//! notification delivery's fate, cause no notification.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use hookgate_core::internal_events::{emit, NotificationHandled};
use hookgate_core::notification::{DeadReason, Happening, Notification, NotificationType};
use hookgate_store::notifications::{NewNotification, NotificationDestination};
use hookgate_store::Pool;
use serde::Deserialize;
use uuid::Uuid;

use crate::catalog::SharedCatalog;
use crate::health::{ActorState, ActorStatus};
use crate::mailbox::{Mailbox, Refused};
use crate::shutdown::Shutdown;
use crate::supervision::{guarded, Panicked};

/// The `[notifications]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// The slug of the destination that receives the notifications (declared, or created through the admin API
    /// before start); unset: notifications are off.
    pub destination: Option<String>,
    /// A destination whose oldest pending delivery is older than this is reported (`backlog.age_exceeded`).
    pub backlog_age_secs: u64,
    /// `backlog_age_secs` for particular destinations, by slug.
    pub backlog_age_overrides: BTreeMap<String, u64>,
    /// At most one `backlog.age_exceeded` per destination per this many seconds.
    pub backlog_repeat_secs: u64,
    /// Seconds between checks of the destinations' backlog (one query per check, on every node).
    pub backlog_check_secs: u64,
    /// `delivery.dead` is added up per destination over this many seconds (on each node).
    pub dead_window_secs: u64,
    /// Happenings waiting for the Notifier; past it they are dropped (and counted).
    pub mailbox_capacity: usize,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            destination: None,
            backlog_age_secs: 900,
            backlog_age_overrides: BTreeMap::new(),
            backlog_repeat_secs: 3600,
            backlog_check_secs: 30,
            dead_window_secs: 60,
            mailbox_capacity: 1024,
        }
    }
}

impl NotificationSettings {
    /// What serde cannot check: positive periods and valid slugs.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(slug) = &self.destination {
            hookgate_core::source::validate_slug(slug).map_err(|e| format!("notifications.destination: {e}"))?;
        }
        let periods = [
            ("backlog_age_secs", self.backlog_age_secs),
            ("backlog_repeat_secs", self.backlog_repeat_secs),
            ("backlog_check_secs", self.backlog_check_secs),
            ("dead_window_secs", self.dead_window_secs),
            ("mailbox_capacity", self.mailbox_capacity as u64),
        ];
        if let Some((name, _)) = periods.iter().find(|(_, v)| *v == 0) {
            return Err(format!("notifications.{name} must be positive"));
        }
        for (slug, secs) in &self.backlog_age_overrides {
            hookgate_core::source::validate_slug(slug)
                .map_err(|e| format!("notifications.backlog_age_overrides: {slug:?}: {e}"))?;
            if *secs == 0 {
                return Err(format!("notifications.backlog_age_overrides.{slug} must be positive"));
            }
        }
        Ok(())
    }
}

/// Something a notification may be about, sent by the part of hookgate that saw it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Notice(pub Happening);

/// Where producers send what they see: the Notifier's bounded mailbox, or nowhere when notifications are off.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Notices(Option<Mailbox<Notifier>>);

impl Notices {
    /// Notifications are off: every notice is ignored.
    pub fn off() -> Self {
        Self(None)
    }

    pub fn new(mailbox: Mailbox<Notifier>) -> Self {
        Self(Some(mailbox))
    }

    /// Queues `happening` if the Notifier has room; otherwise it is dropped and counted. Never waits.
    pub fn send(&self, happening: Happening) {
        let Some(mailbox) = &self.0 else { return };
        let (kind, destination) = (happening.kind(), happening.destination());
        if let Err(Refused::Full | Refused::Closed) = mailbox.try_send(Notice(happening)) {
            emit(NotificationHandled { kind, outcome: "dropped", destination, error: None });
        }
    }
}

/// Notifications waiting to be stored, at most this many (past it they are dropped and counted).
const QUEUE_MAX: usize = 1024;
/// The wait before a store that failed is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A suppressed notice (about the notification destination itself) is logged at most this often per type.
const SUPPRESSED_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Notifier {
    pool: Pool,
    catalog: Arc<SharedCatalog>,
    node_id: String,
    ops: NotificationDestination,
    cfg: NotificationSettings,
    pub(crate) status: Arc<ActorStatus>,
    /// `delivery.dead` of the current window, per destination and reason.
    dead: HashMap<Uuid, BTreeMap<DeadReason, u64>>,
    window_start: DateTime<Utc>,
    queue: VecDeque<Notification>,
    storing: bool,
    /// The key of the last `backlog.age_exceeded` queued per destination (the database dedupes; this saves asking).
    backlog_sent: HashMap<Uuid, String>,
    suppressed_logged: HashMap<NotificationType, Instant>,
    stopped: bool,
    drains: Vec<tokio::sync::oneshot::Sender<()>>,
    resume_delay: Duration,
}

impl Notifier {
    pub fn new(
        pool: Pool,
        catalog: Arc<SharedCatalog>,
        node_id: String,
        ops: NotificationDestination,
        cfg: NotificationSettings,
        status: Arc<ActorStatus>,
    ) -> Self {
        Self {
            pool,
            catalog,
            node_id,
            ops,
            cfg,
            status,
            dead: HashMap::new(),
            window_start: Utc::now(),
            queue: VecDeque::new(),
            storing: false,
            backlog_sent: HashMap::new(),
            suppressed_logged: HashMap::new(),
            stopped: false,
            drains: Vec::new(),
            resume_delay: Duration::ZERO,
        }
    }

    fn slug(&self, id: Uuid) -> String {
        self.catalog.get().destinations.get(&id).map(|d| d.slug.clone()).unwrap_or_default()
    }

    /// A notice about the notification destination itself is never sent (no loop); logged at most once a minute
    /// per type.
    fn suppressed(&mut self, kind: NotificationType, destination: Uuid) -> bool {
        if destination != self.ops.id {
            return false;
        }
        emit(NotificationHandled { kind, outcome: "suppressed", destination, error: None });
        let now = Instant::now();
        let due = self.suppressed_logged.get(&kind).is_none_or(|at| now.duration_since(*at) >= SUPPRESSED_LOG_EVERY);
        if due {
            self.suppressed_logged.insert(kind, now);
            tracing::warn!(
                message = "Not notifying about the notification destination itself.",
                r#type = kind.as_str(),
                destination = %self.ops.slug,
            );
        }
        true
    }

    fn enqueue(&mut self, n: Notification, ctx: &mut Context<Self>) {
        if self.queue.len() >= QUEUE_MAX {
            emit(NotificationHandled { kind: n.kind, outcome: "dropped", destination: n.destination, error: None });
            return;
        }
        self.queue.push_back(n);
        self.store_next(ctx);
    }

    /// Stores the queue's head, then the next, one at a time.
    fn store_next(&mut self, ctx: &mut Context<Self>) {
        if self.storing {
            return;
        }
        let Some(n) = self.queue.front().cloned() else {
            self.answer_drains();
            return;
        };
        self.storing = true;
        let (pool, ops) = (self.pool.clone(), self.ops.id);
        let fut = async move {
            let body = n.body();
            let row = NewNotification {
                key: &n.key,
                event_type: n.kind.as_str(),
                body: &body,
                destination_id: ops,
                received_at: Utc::now(),
            };
            let res = hookgate_store::notifications::insert(&pool, &row).await;
            (n, res)
        };
        ctx.spawn(guarded(fut).into_actor(self).map(|res, act, ctx| {
            act.storing = false;
            let (n, res) = match res {
                Ok(done) => done,
                Err(Panicked(what)) => {
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
            };
            match res {
                Ok(stored) => {
                    act.status.set_state(ActorState::Running);
                    act.queue.pop_front();
                    let outcome = if stored { "stored" } else { "duplicate" };
                    emit(NotificationHandled { kind: n.kind, outcome, destination: n.destination, error: None });
                    act.store_next(ctx);
                }
                Err(e) if e.is_unavailable() || e.is_transient() => {
                    act.status.set_state(ActorState::Degraded);
                    emit(NotificationHandled {
                        kind: n.kind,
                        outcome: "failed",
                        destination: n.destination,
                        error: Some(&e),
                    });
                    if act.stopped {
                        // Shutting down: what is left is dropped, its happenings are in the logs and metrics.
                        act.queue.clear();
                        act.answer_drains();
                        return;
                    }
                    ctx.run_later(RETRY_AFTER, |act, ctx| act.store_next(ctx));
                }
                Err(e) => {
                    // PostgreSQL refused this one for good (e.g. a row it cannot hold): it is dropped, logged.
                    act.queue.pop_front();
                    emit(NotificationHandled {
                        kind: n.kind,
                        outcome: "failed",
                        destination: n.destination,
                        error: Some(&e),
                    });
                    act.store_next(ctx);
                }
            }
        }));
    }

    /// Queues one `delivery.dead` per destination for the window that ends now, and starts the next window.
    fn close_dead_window(&mut self, ctx: &mut Context<Self>) {
        let now = Utc::now();
        let start = std::mem::replace(&mut self.window_start, now);
        let dead = std::mem::take(&mut self.dead);
        for (destination, counts) in dead {
            let counts: Vec<(DeadReason, u64)> = counts.into_iter().collect();
            let slug = self.slug(destination);
            let n =
                Notification::dead(destination, &slug, &counts, start, self.cfg.dead_window_secs, &self.node_id, now);
            self.enqueue(n, ctx);
        }
    }

    /// Reads every destination's backlog and queues `backlog.age_exceeded` for those past their threshold.
    fn check_backlog(&mut self, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let fut = async move {
            let client = hookgate_store::connect(&pool).await?;
            hookgate_store::destinations::backlogs(&client).await
        };
        ctx.spawn(guarded(fut).into_actor(self).map(|res, act, ctx| {
            let rows = match res {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::warn!(message = "Could not check the destinations' backlog.", error = %e);
                    return;
                }
                Err(Panicked(what)) => {
                    act.status.record_panic(&what);
                    ctx.stop();
                    return;
                }
            };
            let now = Utc::now();
            for (destination, pending, age) in rows {
                if pending == 0 || act.stopped {
                    continue;
                }
                let slug = act.slug(destination);
                let threshold = act.cfg.backlog_age_overrides.get(&slug).copied().unwrap_or(act.cfg.backlog_age_secs);
                if age < threshold as f64 {
                    continue;
                }
                if act.suppressed(NotificationType::BacklogAgeExceeded, destination) {
                    continue;
                }
                let n = Notification::backlog_age_exceeded(
                    destination,
                    &slug,
                    age,
                    threshold,
                    pending,
                    act.cfg.backlog_repeat_secs,
                    &act.node_id,
                    now,
                );
                if act.backlog_sent.get(&destination) == Some(&n.key) {
                    continue;
                }
                act.backlog_sent.insert(destination, n.key.clone());
                act.enqueue(n, ctx);
            }
        }));
    }

    fn answer_drains(&mut self) {
        if self.queue.is_empty() && !self.storing {
            for reply in self.drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.mailbox_capacity.max(1));
        let (status, delay) = (self.status.clone(), std::mem::take(&mut self.resume_delay));
        status.resume_after(delay, self, ctx);
        ctx.run_interval(Duration::from_secs(self.cfg.dead_window_secs.max(1)), |act, ctx| {
            if !act.stopped {
                act.close_dead_window(ctx);
            }
        });
        ctx.run_interval(Duration::from_secs(self.cfg.backlog_check_secs.max(1)), |act, ctx| {
            if !act.stopped {
                act.check_backlog(ctx);
            }
        });
        // After a restart: what was queued is stored again (the keys make a repeat harmless).
        self.store_next(ctx);
    }
}

impl actix::Supervised for Notifier {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.storing = false;
        self.resume_delay = self.status.record_restart();
    }
}

impl Handler<Notice> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Notice, ctx: &mut Self::Context) {
        self.status.dequeued();
        let happening = msg.0;
        if self.stopped || self.suppressed(happening.kind(), happening.destination()) {
            return;
        }
        let now = Utc::now();
        let n = match happening {
            Happening::Dead { destination, count, reason } => {
                *self.dead.entry(destination).or_default().entry(reason).or_default() += count;
                return;
            }
            Happening::Disabled { destination, slug, reason, disabled_at } => {
                Notification::disabled(destination, &slug, &reason, disabled_at, &self.node_id)
            }
            Happening::CircuitOpened { destination, opened_at_ms, open_period_ms, opens, scope } => {
                let slug = self.slug(destination);
                Notification::circuit_opened(
                    destination,
                    &slug,
                    opened_at_ms,
                    open_period_ms,
                    opens,
                    scope,
                    &self.node_id,
                    now,
                )
            }
            Happening::CircuitClosed { destination, opened_at_ms, scope } => {
                let slug = self.slug(destination);
                Notification::circuit_closed(destination, &slug, opened_at_ms, scope, &self.node_id, now)
            }
        };
        self.enqueue(n, ctx);
    }
}

/// Closes the current `delivery.dead` window and stores what is queued, until the deadline; takes no notice after.
impl Handler<Shutdown> for Notifier {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.close_dead_window(ctx);
        self.stopped = true;
        self.drains.push(msg.reply);
        ctx.run_later(msg.deadline.saturating_duration_since(tokio::time::Instant::now()), |act, _| {
            act.queue.clear();
            for reply in act.drains.drain(..) {
                let _ = reply.send(());
            }
        });
        self.answer_drains();
    }
}
