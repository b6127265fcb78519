//! Everything hookgate reports about itself, one typed event per thing that happens: each event emits its log line
//! and its metric together, so the two never drift apart and every metric has exactly one place that records it.
//!
//! Call sites build an event and [`emit`] it. The metric names are the public contract (the README lists every
//! one); the labels are bounded (actor and source names, destination ids, outcome kinds; never an event id).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, SharedString};
use uuid::Uuid;

/// Something that happened, reported as a log line and a metric at once.
pub trait InternalEvent {
    fn emit(self);
}

/// Reports `event`.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// How many destinations get their own `destination` label (`server.metrics_destination_labels`).
static DESTINATION_LABEL_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_DESTINATION_LABELS);
/// Each labelled destination's label, by id (swapped whole when the catalog reloads).
static DESTINATION_LABELS: RwLock<Option<Arc<Labels>>> = RwLock::new(None);

/// Each labelled destination's label, by id.
type Labels = HashMap<Uuid, Arc<str>>;

/// The default of `server.metrics_destination_labels`.
pub const DEFAULT_DESTINATION_LABELS: usize = 100;
/// The `destination` label of every destination past the limit, and of one no longer in the catalog.
pub const OTHER_DESTINATION: &str = "other";

/// Sets how many destinations get a `destination` label of their own (set once at start, before the catalog loads).
pub fn set_destination_label_limit(limit: usize) {
    DESTINATION_LABEL_LIMIT.store(limit, Ordering::Relaxed);
}

/// The catalog's destinations, as `(id, slug)`, at each load: a destination keeps the label it was given (its
/// slug, updated when the slug changes), and a new one gets its slug while fewer than
/// [`set_destination_label_limit`] have one (new ones in slug order), else `other`. So a per-destination series
/// count stays bounded however many destinations are created, and no series flips between its slug and `other`
/// while the process runs; nodes started on the same catalog label the same destinations.
pub fn label_destinations<'a>(destinations: impl IntoIterator<Item = (Uuid, &'a str)>) {
    let mut all: Vec<(Uuid, &str)> = destinations.into_iter().collect();
    all.sort_unstable_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    let limit = DESTINATION_LABEL_LIMIT.load(Ordering::Relaxed);
    let mut guard = DESTINATION_LABELS.write().unwrap_or_else(|e| e.into_inner());
    let mut labels: HashMap<Uuid, Arc<str>> = guard.as_deref().cloned().unwrap_or_default();
    for (id, slug) in all {
        let labelled = labels.len();
        match labels.get_mut(&id) {
            Some(label) if label.as_ref() != slug => *label = Arc::from(slug),
            Some(_) => {}
            None if labelled < limit => {
                labels.insert(id, Arc::from(slug));
            }
            None => {}
        }
    }
    *guard = Some(Arc::new(labels));
}

/// The `destination` label of `id`: its slug, or `other` (past the limit, or unknown to the catalog).
pub fn destination_label(id: Uuid) -> SharedString {
    let labels = DESTINATION_LABELS.read().unwrap_or_else(|e| e.into_inner()).clone();
    match labels.as_ref().and_then(|l| l.get(&id)) {
        Some(slug) => SharedString::from(slug.to_string()),
        None => SharedString::const_str(OTHER_DESTINATION),
    }
}

/// The `destination` label of the destination slugged `slug`: the slug when it is labelled, else `other`.
pub fn slug_label(slug: &str) -> SharedString {
    let labels = DESTINATION_LABELS.read().unwrap_or_else(|e| e.into_inner()).clone();
    match labels.as_ref().and_then(|l| l.values().find(|s| s.as_ref() == slug)) {
        Some(slug) => SharedString::from(slug.to_string()),
        None => SharedString::const_str(OTHER_DESTINATION),
    }
}

/// `/readyz` as it would answer now (published when `/metrics` is scraped): `hookgate_ready` (1 ready, 0 not:
/// PostgreSQL down, the event writer failed, draining) and `hookgate_delivery_running` (1 when the delivery side
/// is `running`, 0 when `degraded`, `stalled` or `failed`; absent when delivery is disabled).
pub struct ReadinessObserved<'a> {
    pub ready: bool,
    /// The delivery section: `running`, `degraded`, `stalled`, `failed` or `disabled`.
    pub delivery: &'a str,
}

impl InternalEvent for ReadinessObserved<'_> {
    fn emit(self) {
        gauge!("hookgate_ready").set(if self.ready { 1.0 } else { 0.0 });
        if self.delivery != "disabled" {
            gauge!("hookgate_delivery_running").set(if self.delivery == "running" { 1.0 } else { 0.0 });
        }
    }
}

/// The metrics recorder was installed: the build's version and commit, as `hookgate_build_info` (always 1).
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
}

impl InternalEvent for BuildInfo {
    fn emit(self) {
        gauge!("hookgate_build_info", "version" => self.version, "commit" => self.commit).set(1.0);
    }
}

/// An actor registered in the health registry: its counters start at zero, so they exist before the first failure.
pub struct ActorRegistered {
    pub actor: &'static str,
}

impl InternalEvent for ActorRegistered {
    fn emit(self) {
        counter!("hookgate_actor_restarts_total", "actor" => self.actor).absolute(0);
        counter!("hookgate_actor_panics_total", "actor" => self.actor).absolute(0);
    }
}

/// A panic was caught in an actor's guarded work; the actor stops and its supervisor restarts it.
pub struct ActorPanicked<'a> {
    pub actor: &'static str,
    pub panic: &'a str,
}

impl InternalEvent for ActorPanicked<'_> {
    fn emit(self) {
        counter!("hookgate_actor_panics_total", "actor" => self.actor).increment(1);
        tracing::error!(message = "Actor panicked; restarting it.", actor = self.actor, panic = self.panic);
    }
}

/// An actor is restarting; it resumes work after `backoff`.
pub struct ActorRestarted {
    pub actor: &'static str,
    pub backoff: Duration,
}

impl InternalEvent for ActorRestarted {
    fn emit(self) {
        counter!("hookgate_actor_restarts_total", "actor" => self.actor).increment(1);
        tracing::info!(message = "Actor restarting.", actor = self.actor, backoff_ms = self.backoff.as_millis() as u64);
    }
}

/// An actor's restarts within the window passed its budget: it counts as failed until they age out.
pub struct ActorBudgetExhausted {
    pub actor: &'static str,
    pub restarts: usize,
    pub window_secs: u64,
    pub critical: bool,
}

impl InternalEvent for ActorBudgetExhausted {
    fn emit(self) {
        tracing::error!(
            message = "Actor exceeded its restart budget.",
            actor = self.actor,
            restarts = self.restarts,
            window_secs = self.window_secs,
            critical = self.critical,
        );
    }
}

/// An actor's state as the health registry last saw it (published on every probe and every scrape).
pub struct ActorObserved {
    pub actor: &'static str,
    pub mailbox_depth: i64,
    pub running: bool,
    /// For an actor with a heartbeat: whether it is stalled, and how old its last beat is.
    pub heartbeat: Option<(bool, Duration)>,
}

impl InternalEvent for ActorObserved {
    fn emit(self) {
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        gauge!("hookgate_actor_mailbox_depth", "actor" => self.actor).set(self.mailbox_depth as f64);
        gauge!("hookgate_actor_running", "actor" => self.actor).set(flag(self.running));
        if let Some((stalled, age)) = self.heartbeat {
            gauge!("hookgate_actor_stalled", "actor" => self.actor).set(flag(stalled));
            gauge!("hookgate_actor_heartbeat_age_seconds", "actor" => self.actor).set(age.as_secs_f64());
        }
    }
}

/// Whether a dependency (`postgres`, `redis`) answered its last probe.
pub struct DependencyObserved {
    pub dependency: &'static str,
    pub up: bool,
}

impl InternalEvent for DependencyObserved {
    fn emit(self) {
        gauge!("hookgate_dependency_up", "dependency" => self.dependency).set(if self.up { 1.0 } else { 0.0 });
    }
}

/// A stored source could not be compiled (its settings or secrets do not verify); it is left out of the snapshot.
pub struct SourceUnusable<'a> {
    pub source: &'a str,
    pub error: &'a str,
}

impl InternalEvent for SourceUnusable<'_> {
    fn emit(self) {
        counter!("hookgate_sources_unusable_total").increment(1);
        tracing::error!(
            message = "A stored source cannot be used; its requests answer 404.",
            source = self.source,
            error = self.error
        );
    }
}

/// An ingest request was answered, `elapsed` after its handler began (the acknowledgement latency producers see,
/// less the network and the HTTP parsing before the handler).
pub struct IngestAnswered<'a> {
    /// The source's slug, or `unknown` for a slug that names no source (the label stays bounded).
    pub source: Cow<'a, str>,
    pub outcome: &'static str,
    pub elapsed: Duration,
}

impl InternalEvent for IngestAnswered<'_> {
    fn emit(self) {
        let source = self.source.into_owned();
        histogram!("hookgate_ingest_duration_seconds", "source" => source.clone(), "outcome" => self.outcome)
            .record(self.elapsed.as_secs_f64());
        counter!("hookgate_ingest_requests_total", "source" => source, "outcome" => self.outcome).increment(1);
    }
}

/// Ingest admission's state, read at each scrape of `/metrics`: how long the oldest event waiting for the writer
/// has waited (refusals start past `server.admission_target_ms`) and the bytes of request bodies in progress
/// against their budget (`server.max_ingest_bytes`).
pub struct AdmissionObserved {
    pub queue_delay: Duration,
    pub body_bytes: usize,
    pub body_budget: usize,
}

impl InternalEvent for AdmissionObserved {
    fn emit(self) {
        gauge!("hookgate_ingest_queue_delay_seconds").set(self.queue_delay.as_secs_f64());
        gauge!("hookgate_ingest_body_bytes").set(self.body_bytes as f64);
        gauge!("hookgate_ingest_body_budget_bytes").set(self.body_budget as f64);
    }
}

/// The EventWriter committed (or failed) a batch of `size` events in `elapsed`.
pub struct EventsFlushed {
    pub size: usize,
    pub elapsed: Duration,
}

impl InternalEvent for EventsFlushed {
    fn emit(self) {
        histogram!("hookgate_writer_batch_size").record(self.size as f64);
        histogram!("hookgate_writer_flush_seconds").record(self.elapsed.as_secs_f64());
    }
}

/// A batch of events was not stored; its senders are answered with the error.
pub struct EventsNotStored<'a> {
    pub units: usize,
    pub batch: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for EventsNotStored<'_> {
    fn emit(self) {
        counter!("hookgate_writer_flush_failures_total").increment(1);
        tracing::warn!(message = "Events not stored.", units = self.units, batch = self.batch, error = %self.error);
    }
}

/// Buffered events were dropped before their flush because their senders had gone (the ingest request timed out
/// or its client disconnected): nothing was acknowledged for them.
pub struct EventsAbandoned {
    pub units: usize,
    pub events: usize,
}

impl InternalEvent for EventsAbandoned {
    fn emit(self) {
        counter!("hookgate_writer_abandoned_total").increment(self.events as u64);
        tracing::debug!(
            message = "Events abandoned by their senders dropped before flushing.",
            units = self.units,
            events = self.events
        );
    }
}

/// A Redis command of the cache timed out (the lookup answers "miss").
pub struct CacheTimedOut;

impl InternalEvent for CacheTimedOut {
    fn emit(self) {
        counter!("hookgate_cache_timeouts_total").increment(1);
        tracing::debug!(message = "A cache command timed out.");
    }
}

/// Why the delivery limits' Redis connection is being replaced.
pub enum RedisReconnectReason<'a> {
    /// The connection is broken (closed, reset).
    Broken(&'a dyn std::fmt::Display),
    /// It stopped answering PINGs.
    Unanswered { failed_pings: u32 },
}

/// The delivery limits' own Redis connection is being replaced.
pub struct RedisReconnecting<'a> {
    pub link: &'static str,
    pub reason: RedisReconnectReason<'a>,
}

impl InternalEvent for RedisReconnecting<'_> {
    fn emit(self) {
        counter!("hookgate_redis_reconnects_total", "link" => self.link).increment(1);
        match self.reason {
            RedisReconnectReason::Broken(error) => {
                tracing::warn!(message = "A Redis connection was lost; reconnecting.", link = self.link, %error)
            }
            RedisReconnectReason::Unanswered { failed_pings } => tracing::warn!(
                message = "Redis stopped answering on a connection; reconnecting.",
                link = self.link,
                failed_pings
            ),
        }
    }
}

/// A circuit-breaker or rate-limit operation fell back to this process's own state (Redis failed).
pub struct LimitsFellBack<'a> {
    pub op: &'static str,
    pub error: &'a str,
    /// The first fallback since Redis last answered: only that one is logged.
    pub first: bool,
}

impl InternalEvent for LimitsFellBack<'_> {
    fn emit(self) {
        counter!("hookgate_limits_local_fallback_total", "op" => self.op).increment(1);
        if self.first {
            tracing::warn!(
                message = "Redis failed; circuit breakers and rate limits fall back to this process.",
                op = self.op,
                error = self.error
            );
        }
    }
}

/// A destination's circuit state as this process last saw it (`code`: 0 closed, 1 open, 2 half-open, 3 ramping).
pub struct CircuitObserved {
    pub destination: uuid::Uuid,
    pub code: i64,
    /// The circuit has just opened.
    pub opened: bool,
}

impl InternalEvent for CircuitObserved {
    fn emit(self) {
        let label = destination_label(self.destination);
        gauge!("hookgate_circuit_state", "destination" => label.clone()).set(self.code as f64);
        if self.opened {
            counter!("hookgate_circuit_opens_total", "destination" => label).increment(1);
            tracing::info!(message = "Circuit opened.", destination = %self.destination);
        }
    }
}

/// A route's programs could not be decided at ingest (time or concurrency budget); the Deliverer decides later.
pub struct RouteEvaluationDeferred<'a> {
    pub route: &'a str,
    pub why: &'a str,
}

impl InternalEvent for RouteEvaluationDeferred<'_> {
    fn emit(self) {
        counter!("hookgate_route_evaluations_deferred_total").increment(1);
        tracing::debug!(message = "Route evaluation deferred to delivery.", route = self.route, why = self.why);
    }
}

/// The Scheduler leased `count` deliveries in one claim round, which spent `due` finding the destinations with due
/// work, `limits` asking their limits (Redis) and `claim` leasing (under the claim lock).
pub struct DeliveriesClaimed {
    pub count: usize,
    pub due: Duration,
    pub limits: Duration,
    pub claim: Duration,
}

impl InternalEvent for DeliveriesClaimed {
    fn emit(self) {
        counter!("hookgate_scheduler_claimed_total").increment(self.count as u64);
        histogram!("hookgate_scheduler_claim_round_size").record(self.count as f64);
        for (step, took) in [("due", self.due), ("limits", self.limits), ("claim", self.claim)] {
            histogram!("hookgate_scheduler_claim_round_seconds", "step" => step).record(took.as_secs_f64());
        }
    }
}

/// The Scheduler took deliveries handed off by the writer (committed already leased to this node): `started` went to
/// the Deliverers, `given_back` were released for the claim path (refused by the rate limit or circuit, past the
/// bound of those waiting for a slot, waited past half the lease margin, their destination paused meanwhile, or the
/// Scheduler stopping or restarting).
pub struct DeliveriesHandedOff {
    pub started: usize,
    pub given_back: usize,
}

impl InternalEvent for DeliveriesHandedOff {
    fn emit(self) {
        counter!("hookgate_scheduler_handed_off_total").increment(self.started as u64);
        counter!("hookgate_scheduler_handoff_given_back_total").increment(self.given_back as u64);
    }
}

/// How many handed-off deliveries wait on the Scheduler for a slot of their destination (leased to this node, not
/// attempted yet).
pub struct HandOffsWaiting {
    pub count: usize,
}

impl InternalEvent for HandOffsWaiting {
    fn emit(self) {
        gauge!("hookgate_scheduler_handoffs_waiting").set(self.count as f64);
    }
}

/// The writer could not hand committed, leased deliveries to the Scheduler (its mailbox was full, or it had just
/// stopped): their leases are released for the claim path.
pub struct HandOffRefused {
    pub count: usize,
}

impl InternalEvent for HandOffRefused {
    fn emit(self) {
        counter!("hookgate_writer_handoff_refused_total").increment(self.count as u64);
        tracing::debug!(message = "Scheduler refused a hand-off; releasing the leases.", count = self.count);
    }
}

/// The Scheduler started a claim round: a look for due work (`claims::DUE`), whether or not it then claims.
pub struct ClaimRoundStarted;

impl InternalEvent for ClaimRoundStarted {
    fn emit(self) {
        counter!("hookgate_scheduler_rounds_total").increment(1);
    }
}

/// A claim round failed (the delivery side degrades; the next round tries again).
pub struct ClaimRoundFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ClaimRoundFailed<'_> {
    fn emit(self) {
        counter!("hookgate_scheduler_claim_failures_total").increment(1);
        tracing::warn!(message = "Claim round failed.", error = %self.error);
    }
}

/// A Deliverer's mailbox was full; the claimed delivery's lease is given back.
pub struct DispatchRefused;

impl InternalEvent for DispatchRefused {
    fn emit(self) {
        counter!("hookgate_scheduler_dispatch_refused_total").increment(1);
        tracing::warn!(message = "Deliverer mailbox full; giving the delivery back.");
    }
}

/// A claimed delivery could not be attempted (its event is gone, a column is unreadable): it is made dead.
pub struct DeliveryUnattemptable<'a> {
    pub delivery: uuid::Uuid,
    pub reason: &'a str,
}

impl InternalEvent for DeliveryUnattemptable<'_> {
    fn emit(self) {
        counter!("hookgate_deliveries_unattemptable_total").increment(1);
        tracing::warn!(message = "Delivery cannot be attempted; it is dead.", delivery = %self.delivery, reason = self.reason);
    }
}

/// An HTTP attempt to `destination` ended: `outcome` is `success` or the error kind. Logged at `debug` when it
/// succeeded, `info` when it did not (inside the attempt's span, so the line carries the trace id when traces are
/// recorded).
pub struct AttemptMade {
    pub destination: Uuid,
    pub delivery: Uuid,
    pub attempt: i32,
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub elapsed: Duration,
}

impl InternalEvent for AttemptMade {
    fn emit(self) {
        let label = destination_label(self.destination);
        counter!("hookgate_delivery_attempts_total", "destination" => label.clone(), "outcome" => self.outcome)
            .increment(1);
        histogram!("hookgate_delivery_attempt_seconds", "destination" => label, "outcome" => self.outcome)
            .record(self.elapsed.as_secs_f64());
        let elapsed_ms = self.elapsed.as_secs_f64() * 1000.0;
        let (attempt, outcome, status) = (self.attempt, self.outcome, self.status);
        if outcome == "success" {
            tracing::debug!(message = "Delivery attempted.", delivery = %self.delivery, attempt, outcome, status, elapsed_ms);
        } else {
            tracing::info!(message = "Delivery attempt failed.", delivery = %self.delivery, attempt, outcome, status, elapsed_ms);
        }
    }
}

/// Spans could not be exported to the OTLP collector (a batch was dropped). Logged at most once per `interval`
/// by its reporter: `unlogged` failures happened since the last line.
pub struct TracesNotExported<'a> {
    pub spans: usize,
    pub error: &'a dyn std::fmt::Display,
    /// Whether this failure writes a log line (the reporter's once-per-interval decision).
    pub log: bool,
    pub unlogged: u64,
}

impl InternalEvent for TracesNotExported<'_> {
    fn emit(self) {
        counter!("hookgate_trace_export_failures_total").increment(1);
        counter!("hookgate_trace_spans_dropped_total").increment(self.spans as u64);
        if self.log {
            tracing::warn!(
                message = "Spans could not be exported; they are dropped (ingest and delivery go on).",
                spans = self.spans,
                error = %self.error,
                failures_since_last_line = self.unlogged
            );
        }
    }
}

/// An attempt panicked: that attempt only ends; its lease expires and the delivery is attempted again.
pub struct AttemptPanicked<'a> {
    pub delivery: uuid::Uuid,
    pub panic: &'a str,
}

impl InternalEvent for AttemptPanicked<'_> {
    fn emit(self) {
        counter!("hookgate_actor_panics_total", "actor" => "deliverer").increment(1);
        tracing::error!(message = "An attempt panicked; its lease will expire.", delivery = %self.delivery, panic = self.panic);
    }
}

/// The ResultWriter stored a batch of `size` attempt results in `elapsed`.
pub struct ResultsStored {
    pub size: usize,
    pub elapsed: Duration,
}

impl InternalEvent for ResultsStored {
    fn emit(self) {
        counter!("hookgate_results_stored_total").increment(self.size as u64);
        histogram!("hookgate_result_batch_size").record(self.size as f64);
        histogram!("hookgate_result_flush_seconds").record(self.elapsed.as_secs_f64());
    }
}

/// A batch of attempt results was not stored; it is kept and retried.
pub struct ResultsNotStored<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ResultsNotStored<'_> {
    fn emit(self) {
        counter!("hookgate_result_flush_failures_total").increment(1);
        tracing::warn!(message = "Attempt results not stored; retrying.", error = %self.error);
    }
}

/// Retention expired `count` deliveries of a destination that were never delivered; they are dead.
pub struct DeliveriesExpired<'a> {
    /// The destination's slug.
    pub destination: &'a str,
    pub count: i64,
    pub retention_days: i32,
}

impl InternalEvent for DeliveriesExpired<'_> {
    fn emit(self) {
        counter!("hookgate_deliveries_expired_total", "destination" => slug_label(self.destination))
            .increment(self.count.max(0) as u64);
        tracing::warn!(
            message = "Retention expired deliveries that were never delivered; they are dead.",
            destination = self.destination,
            count = self.count,
            retention_days = self.retention_days,
        );
    }
}

/// A janitor round gave up creating or dropping a partition: it did not get its locks within
/// `retention.ddl_lock_timeout_ms` (or PostgreSQL broke a deadlock by cancelling it). Nothing changed; the next round
/// tries again.
pub struct PartitionChangeDeferred<'a> {
    /// `create` or `drop`.
    pub action: &'static str,
    pub partition: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for PartitionChangeDeferred<'_> {
    fn emit(self) {
        counter!("hookgate_janitor_ddl_deferred_total", "action" => self.action).increment(1);
        tracing::warn!(
            message = "Partition change deferred to the next janitor round: its locks were not free in time.",
            action = self.action,
            partition = self.partition,
            reason = self.reason,
        );
    }
}

/// The partitions of `deliveries` one janitor look vacuumed (those another vacuum held are not among them).
pub struct DeliveriesVacuumed<'a> {
    pub partitions: &'a [String],
    /// Dead row versions PostgreSQL counted in them before.
    pub dead_rows: i64,
    /// How long their vacuums took together.
    pub took: Duration,
}

impl InternalEvent for DeliveriesVacuumed<'_> {
    fn emit(self) {
        counter!("hookgate_janitor_vacuums_total").increment(self.partitions.len() as u64);
        histogram!("hookgate_janitor_vacuum_seconds").record(self.took.as_secs_f64());
        tracing::debug!(
            message = "Delivery partitions vacuumed.",
            partitions = ?self.partitions,
            dead_rows = self.dead_rows,
            took_ms = self.took.as_millis() as u64,
        );
    }
}

/// Live tail messages that did not reach Redis (the publish queue was full, or Redis refused or did not answer);
/// the tail clients miss them, ingest and delivery never notice.
pub struct TailNotPublished<'a> {
    /// `events` or `outcomes`.
    pub kind: &'static str,
    pub count: usize,
    pub reason: &'a str,
}

impl InternalEvent for TailNotPublished<'_> {
    fn emit(self) {
        counter!("hookgate_tail_dropped_total", "stage" => "publish").increment(self.count as u64);
        tracing::debug!(
            message = "Live tail items not published.",
            kind = self.kind,
            count = self.count,
            reason = self.reason
        );
    }
}

/// A tail client fell behind its buffer (`tail.buffer`): it was told how many items it missed.
pub struct TailClientLagged {
    pub count: u64,
}

impl InternalEvent for TailClientLagged {
    fn emit(self) {
        counter!("hookgate_tail_dropped_total", "stage" => "client").increment(self.count);
        tracing::debug!(message = "A live tail client fell behind; items dropped for it.", count = self.count);
    }
}

/// The number of live tail (SSE) clients on this node changed.
pub struct TailClients {
    pub count: usize,
}

impl InternalEvent for TailClients {
    fn emit(self) {
        gauge!("hookgate_tail_clients").set(self.count as f64);
    }
}

/// The node's live tail subscription to Redis was lost or could not be made; its clients were told.
pub struct TailSubscriptionLost<'a> {
    pub reason: &'a str,
}

impl InternalEvent for TailSubscriptionLost<'_> {
    fn emit(self) {
        counter!("hookgate_tail_subscription_failures_total").increment(1);
        tracing::warn!(message = "Live tail: the Redis subscription is down; retrying.", reason = self.reason);
    }
}

/// A sample of each destination's waiting deliveries (every `server.metrics_destination_interval_secs`, on each node
/// from PostgreSQL, so every node reports the same figures): `backlog` pending deliveries, the oldest created
/// `oldest_pending` ago. Destinations sharing the `other` label add up, and show the oldest of theirs.
pub struct DestinationBacklogSampled<'a> {
    /// `(destination id, pending deliveries, age of the oldest)`, one per destination (those with none included,
    /// at zero, so a drained backlog reads 0 rather than its last value).
    pub destinations: &'a [(Uuid, i64, Duration)],
}

impl InternalEvent for DestinationBacklogSampled<'_> {
    fn emit(self) {
        let mut by_label: HashMap<SharedString, (i64, Duration)> = HashMap::new();
        for (id, backlog, oldest) in self.destinations {
            let entry = by_label.entry(destination_label(*id)).or_default();
            entry.0 += backlog;
            entry.1 = entry.1.max(*oldest);
        }
        for (label, (backlog, oldest)) in by_label {
            gauge!("hookgate_destination_backlog", "destination" => label.clone()).set(backlog as f64);
            gauge!("hookgate_destination_oldest_pending_seconds", "destination" => label).set(oldest.as_secs_f64());
        }
    }
}

/// The destination sampler's query failed; the gauges keep their last values until the next sample.
pub struct DestinationBacklogNotSampled<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for DestinationBacklogNotSampled<'_> {
    fn emit(self) {
        tracing::warn!(message = "Sampling the destinations' backlog failed.", error = %self.error);
    }
}

/// `count` deliveries of a destination ended `dead` (`reason`: `exhausted`, `unattemptable` or `expired`).
pub struct DeliveriesDead {
    pub destination: Uuid,
    pub reason: crate::notification::DeadReason,
    pub count: u64,
}

impl InternalEvent for DeliveriesDead {
    fn emit(self) {
        counter!(
            "hookgate_deliveries_dead_total",
            "destination" => destination_label(self.destination),
            "reason" => self.reason.as_str(),
        )
        .increment(self.count);
        tracing::debug!(
            message = "Deliveries are dead.",
            destination = %self.destination,
            reason = self.reason.as_str(),
            count = self.count,
        );
    }
}

/// What became of one operational notification (`outcome`: `stored`, `duplicate` (another replica stored it
/// first), `suppressed` (about the notification destination itself), `dropped` (the Notifier's mailbox or queue
/// was full) or `failed` (PostgreSQL refused it; tried again)).
pub struct NotificationHandled<'a> {
    pub kind: crate::notification::NotificationType,
    pub outcome: &'static str,
    pub destination: Uuid,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl InternalEvent for NotificationHandled<'_> {
    fn emit(self) {
        counter!("hookgate_notifications_total", "type" => self.kind.as_str(), "outcome" => self.outcome).increment(1);
        match (self.outcome, self.error) {
            ("stored", _) => tracing::info!(
                message = "Operational notification stored.",
                r#type = self.kind.as_str(),
                destination = %self.destination,
            ),
            ("dropped", _) => tracing::warn!(
                message = "Operational notification dropped: the notifier is full.",
                r#type = self.kind.as_str(),
                destination = %self.destination,
            ),
            (_, Some(error)) => tracing::warn!(
                message = "Operational notification not stored; trying again.",
                r#type = self.kind.as_str(),
                destination = %self.destination,
                error = %error,
            ),
            _ => tracing::debug!(
                message = "Operational notification not stored.",
                r#type = self.kind.as_str(),
                outcome = self.outcome,
                destination = %self.destination,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_labels_are_capped_with_other_and_never_flip() {
        // The only test that labels destinations (the registry is process-wide).
        set_destination_label_limit(2);
        let (a, b, c, d) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        label_destinations([(c, "charlie"), (a, "alpha"), (b, "bravo")]);
        assert_eq!(&*destination_label(a), "alpha");
        assert_eq!(&*destination_label(b), "bravo");
        assert_eq!(&*destination_label(c), OTHER_DESTINATION, "past the limit, in slug order");
        assert_eq!(&*destination_label(d), OTHER_DESTINATION, "unknown to the catalog");
        assert_eq!(&*slug_label("bravo"), "bravo");
        assert_eq!(&*slug_label("charlie"), OTHER_DESTINATION);

        // A later load with a new destination that sorts first: the labelled ones keep their labels; a rename
        // follows the slug; a destination gone from the catalog keeps its label for the process's life.
        label_destinations([(d, "aardvark"), (b, "bravo-2"), (c, "charlie")]);
        assert_eq!(&*destination_label(d), OTHER_DESTINATION);
        assert_eq!(&*destination_label(a), "alpha");
        assert_eq!(&*destination_label(b), "bravo-2");
        assert_eq!(&*destination_label(c), OTHER_DESTINATION);
        set_destination_label_limit(DEFAULT_DESTINATION_LABELS);
    }
}
