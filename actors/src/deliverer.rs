//! Makes one HTTP attempt per leased delivery: signed (Standard Webhooks), traced, time-bounded, never redirected,
//! and only to addresses the SSRF guard vetted (or through the egress proxy, once the destination's addresses were
//! vetted); reports the outcome to the ResultWriter.
//!
//! Each Deliverer runs on the arbiter it was started on (the system arbiter with the Scheduler and the ResultWriter
//! by default, ADR-0027) and owns its `awc::Client`s (which are `!Send`): one shared by the
//! destinations without TLS settings of their own, and one per destination that has some (its own CA certificates
//! or client certificate need a rustls `ClientConfig` of their own), kept while the destination's TLS material
//! stays the same and rebuilt when it changes. It runs many attempts at once; the Scheduler bounds how many it is
//! given.
//!
//! A delivery whose route could not be evaluated at ingest (`needs_routing`) is evaluated here first, with the
//! same input and the same bounds: its filter may cancel it, its programs may fail it, their output becomes the
//! payload (stored, so that retries send the same bytes), or, when the evaluation still cannot finish in time, it
//! counts as a failed try of kind `route_timeout` on the destination's retry schedule (never against the
//! destination's circuit or health).
//!
//! With traces on, each attempt is an `attempt` span, a child of its event's ingest span (from the context stored with the event,
//! carried in the [`Job`]; see [`crate::trace`]), and its outbound `traceparent` carries the attempt span's
//! context.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hookgate_core::catalog::{Destination, DestinationTls, Route};
use hookgate_core::delivery::{AttemptOutcome, Job, Routed};
use hookgate_core::internal_events::{emit, AttemptMade, AttemptPanicked};
use hookgate_core::jq::{self, RouteOutcome};
use hookgate_core::retry::parse_retry_after;
use hookgate_core::signing::signature_header;
use hookgate_core::ssrf::SsrfPolicy;
use tracing::Instrument;
use uuid::Uuid;

use crate::limits::{Limits, HELD_FLUSH_EVERY};
use crate::proxy::EgressProxy;
use crate::redis_link::RedisLink;
use crate::shutdown::Shutdown;
use crate::ssrf::{classify_send_error, guarded_client, GuardedClient};
use crate::supervision::{guarded, Panicked};
use crate::tls::OutboundTls;

/// The largest part of a response body kept with an attempt.
pub const EXCERPT_BYTES: usize = 4096;
/// Response headers kept with an attempt.
const KEPT_HEADERS: &[&str] =
    &["content-type", "content-length", "retry-after", "location", "server", "date", "x-request-id"];

/// Attempt this delivery now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub job: Job,
    pub destination: Arc<Destination>,
    /// The route, when the job's programs must be evaluated now (`None` then: the route is disabled or gone).
    pub route: Option<Arc<Route>>,
}

/// The outcome of one attempt.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AttemptResult {
    pub delivery_id: Uuid,
    /// The delivery's partition key (see [`Job::created_at`]).
    pub created_at: DateTime<Utc>,
    pub lease_id: Uuid,
    pub destination_id: Uuid,
    /// The delivery's event and route (what the live tail shows of an outcome).
    pub event_id: Uuid,
    pub route_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status: Option<u16>,
    pub latency_ms: i32,
    pub response_headers: serde_json::Value,
    pub excerpt: Option<Bytes>,
    /// `timeout`, `connect`, `tls`, `ssrf`, `dns`, `redirect`, `http_status`, … (None on success).
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    /// Set when the route was evaluated at delivery (deferred at ingest).
    pub routed: Option<Routed>,
}

impl AttemptResult {
    /// What the outcome plan reads of this attempt.
    pub fn outcome(&self) -> AttemptOutcome<'_> {
        AttemptOutcome {
            destination_id: self.destination_id,
            attempt: self.attempt,
            status: self.status,
            error_kind: self.error_kind,
            error: self.error.as_deref(),
            retry_after: self.retry_after,
            routed: self.routed.as_ref(),
        }
    }

    /// Whether this outcome says anything about the destination (an HTTP attempt was made).
    pub fn reached_destination(&self) -> bool {
        self.outcome().reached_destination()
    }

    /// The destination did not answer, or answered "overloaded" (5xx, 429, 408). Other answers, even errors, show
    /// that it is up.
    pub fn counts_against_circuit(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s >= 500 || s == 429 || s == 408,
        }
    }
}

/// A Deliverer finished an attempt (its result is on its way to the ResultWriter); sent to the Scheduler, which
/// frees the attempt's slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Completed {
    pub delivery_id: Uuid,
    pub destination_id: Uuid,
}

/// A destination's own client, and the TLS material it was built from.
struct OwnClient {
    material: Arc<DestinationTls>,
    fingerprint: [u8; 32],
    /// The client, or why the material gives none (each attempt then fails with kind `tls` and this reason).
    client: Result<GuardedClient, String>,
}

/// Past this many destinations with clients of their own, the cache starts over (clients of destinations long
/// gone are not kept forever).
const MAX_OWN_CLIENTS: usize = 1024;

pub struct Deliverer {
    policy: Arc<SsrfPolicy>,
    /// The egress proxy (`delivery.proxy`), which every client of this deliverer goes through.
    proxy: Option<Arc<EgressProxy>>,
    tls: OutboundTls,
    limits: Arc<Limits>,
    redis: Arc<RedisLink>,
    max_connections: usize,
    mailbox_capacity: usize,
    client: Option<GuardedClient>,
    /// Clients of destinations with TLS settings of their own, by destination id.
    own_clients: HashMap<Uuid, OwnClient>,
    results: Recipient<AttemptResult>,
    scheduler: Recipient<Completed>,
    jq_timeout: Duration,
    jq_max_output: usize,
    /// Attempts running now.
    inflight: usize,
    /// Shutdowns waiting for the attempts in flight.
    shutdowns: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Arc<SsrfPolicy>,
        tls: OutboundTls,
        limits: Arc<Limits>,
        redis: Arc<RedisLink>,
        max_connections: usize,
        mailbox_capacity: usize,
        results: Recipient<AttemptResult>,
        scheduler: Recipient<Completed>,
    ) -> Self {
        Self {
            policy,
            proxy: None,
            tls,
            limits,
            redis,
            max_connections,
            mailbox_capacity,
            client: None,
            own_clients: HashMap::new(),
            results,
            scheduler,
            jq_timeout: Duration::from_millis(100),
            jq_max_output: 1024 * 1024,
            inflight: 0,
            shutdowns: Vec::new(),
        }
    }

    /// Deliveries go through this egress proxy (`delivery.proxy`, `delivery.no_proxy`).
    pub fn with_proxy(mut self, proxy: Option<Arc<EgressProxy>>) -> Self {
        self.proxy = proxy;
        self
    }

    /// The bounds of deferred route evaluations (`delivery.jq_timeout_ms`, `delivery.jq_max_output_bytes`).
    pub fn with_jq_bounds(mut self, timeout: Duration, max_output: usize) -> Self {
        self.jq_timeout = timeout;
        self.jq_max_output = max_output;
        self
    }
}

impl Actor for Deliverer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        self.client =
            Some(guarded_client(self.policy.clone(), self.proxy.clone(), self.max_connections, self.tls.shared()));
        // Successes to closed circuits are held by the limits and counted in bulk (see `limits`).
        ctx.run_interval(HELD_FLUSH_EVERY, |act, ctx| {
            if act.limits.holds_successes() {
                let (limits, redis) = (act.limits.clone(), act.redis.clone());
                ctx.spawn(async move { limits.flush_held(redis.get()).await }.into_actor(act));
            }
        });
    }
}

impl actix::Supervised for Deliverer {}

impl Handler<Deliver> for Deliverer {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let client = self.client_for(&msg.destination);
        let (results, scheduler) = (self.results.clone(), self.scheduler.clone());
        let (limits, redis) = (self.limits.clone(), self.redis.clone());
        let (jq_timeout, jq_max_output) = (self.jq_timeout, self.jq_max_output);
        let span = attempt_span(&msg.job);
        ctx.spawn(
            async move {
                let delivery = msg.job.delivery_id;
                let sent = guarded(
                    async {
                        let result = match route_now(&msg, jq_timeout, jq_max_output).await {
                            None => attempt_with(&client, &msg.job, &msg.destination).await,
                            Some(Routed::Payload(payload)) => {
                                let mut job = msg.job.clone();
                                if let Some(p) = &payload {
                                    job.body = p.clone();
                                    job.transformed = true;
                                }
                                let mut result = attempt_with(&client, &job, &msg.destination).await;
                                result.routed = Some(Routed::Payload(payload));
                                result
                            }
                            Some(other) => not_attempted(&msg.job, other),
                        };
                        // The circuit learns the outcome before the delivery's next attempt can be scheduled.
                        if result.reached_destination() {
                            let elapsed = Duration::from_millis(result.latency_ms.max(0) as u64);
                            let ok = !result.counts_against_circuit();
                            limits.record(redis.get(), result.destination_id, ok, elapsed).await;
                        }
                        record_outcome(&tracing::Span::current(), &result);
                        // The result must reach the ResultWriter (it releases the lease): wait for mailbox space.
                        if results.send(result).await.is_err() {
                            tracing::warn!(message = "ResultWriter gone; the lease will expire.");
                        }
                    }
                    .instrument(span),
                )
                .await;
                if let Err(Panicked(what)) = sent {
                    // This attempt only: its lease expires and the delivery is attempted again.
                    emit(AttemptPanicked { delivery, panic: &what });
                }
                let done = Completed { delivery_id: msg.job.delivery_id, destination_id: msg.job.destination_id };
                let _ = scheduler.send(done).await;
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.inflight -= 1;
                act.answer_shutdown(ctx);
            }),
        );
        self.inflight += 1;
    }
}

impl Deliverer {
    /// The client for this destination: the shared one, or the destination's own when it has TLS settings (built
    /// on first use and whenever its TLS material changed).
    fn client_for(&mut self, dest: &Destination) -> Result<GuardedClient, String> {
        let Some(material) = &dest.tls else {
            let (policy, proxy, max, tls) = (&self.policy, &self.proxy, self.max_connections, &self.tls);
            let shared = || guarded_client(policy.clone(), proxy.clone(), max, tls.shared());
            return Ok(self.client.get_or_insert_with(shared).clone());
        };
        if let Some(own) = self.own_clients.get_mut(&dest.id) {
            if Arc::ptr_eq(&own.material, material) {
                return own.client.clone();
            }
            // A reloaded catalog carries new values: the same material is recognised by its fingerprint.
            if own.fingerprint == material.fingerprint() {
                own.material = material.clone();
                return own.client.clone();
            }
        }
        if self.own_clients.len() >= MAX_OWN_CLIENTS {
            self.own_clients.clear();
        }
        let client = self
            .tls
            .for_destination(material, ("ca_pem", "cert_pem", "key_pem"))
            .map(|config| guarded_client(self.policy.clone(), self.proxy.clone(), self.max_connections, config))
            .map_err(|e| format!("the destination's TLS settings are unusable: {e}"));
        let own = OwnClient { material: material.clone(), fingerprint: material.fingerprint(), client };
        let client = own.client.clone();
        self.own_clients.insert(dest.id, own);
        client
    }

    /// Once no attempt is in flight, counts the held successes and answers the [`Shutdown`]s waiting for them.
    fn answer_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.inflight == 0 && !self.shutdowns.is_empty() {
            let replies = std::mem::take(&mut self.shutdowns);
            let (limits, redis) = (self.limits.clone(), self.redis.clone());
            ctx.spawn(
                async move {
                    limits.flush_held(redis.get()).await;
                    for reply in replies {
                        let _ = reply.send(());
                    }
                }
                .into_actor(self),
            );
        }
    }
}

/// Answers once the attempts in flight have ended (the Scheduler sends it when it stops claiming; past the deadline
/// their leases were given back, and the ResultWriter fences their late results).
impl Handler<Shutdown> for Deliverer {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.shutdowns.push(msg.reply);
        self.answer_shutdown(ctx);
    }
}

/// The span of one attempt: a child of its event's ingest span, in the event's trace (see [`crate::trace`]). None
/// without traces (the outbound `traceparent` is then the event's trace with a fresh span id).
fn attempt_span(job: &Job) -> tracing::Span {
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "attempt",
        "otel.kind" = "client",
        delivery = %job.delivery_id,
        event = %job.event_id,
        destination = %job.destination_id,
        attempt = job.attempt,
        "http.response.status_code" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
    );
    crate::trace::join_event_trace(&span, job.traceparent.as_deref(), job.event_id);
    span
}

/// Records an attempt's outcome on its span: the status received, the kind of error.
fn record_outcome(span: &tracing::Span, result: &AttemptResult) {
    if let Some(status) = result.status {
        span.record("http.response.status_code", status);
    }
    if let Some(kind) = result.error_kind {
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
}

/// Evaluates a deferred route's programs now; `None` when the job needs no evaluation.
async fn route_now(msg: &Deliver, timeout: Duration, max_output: usize) -> Option<Routed> {
    let input = msg.job.routing.as_ref()?;
    let Some(route) = &msg.route else {
        return Some(Routed::Failed("the route was disabled or removed before it could be evaluated".into()));
    };
    let value =
        jq::stored_route_input_from_bytes(&input.source, &input.headers, &msg.job.body, input.event_type.as_deref());
    let outcome =
        jq::evaluate(route.filter.clone(), route.transform.clone(), Arc::new(value), timeout, max_output).await;
    Some(match outcome {
        RouteOutcome::Deliver(payload) => Routed::Payload(payload.map(Bytes::from)),
        RouteOutcome::Skip => Routed::Skipped,
        RouteOutcome::Failed(why) => Routed::Failed(why),
        RouteOutcome::Unavailable(why) => Routed::Deferred(why),
    })
}

/// The result of a job whose destination's TLS material gives no client: a failed try of kind `tls`.
fn unusable_tls(job: &Job, why: String) -> AttemptResult {
    emit(AttemptMade {
        destination: job.destination_id,
        delivery: job.delivery_id,
        attempt: job.attempt,
        outcome: "tls",
        status: None,
        elapsed: Duration::ZERO,
    });
    without_request(job, Some("tls"), Some(why), None)
}

/// The result of a job whose route evaluation decided that no HTTP attempt is made now.
fn not_attempted(job: &Job, routed: Routed) -> AttemptResult {
    let (kind, error) = match &routed {
        Routed::Deferred(why) => (Some("route_timeout"), Some(why.clone())),
        Routed::Failed(why) => (Some("route_failed"), Some(why.clone())),
        Routed::Skipped => (None, None),
        Routed::Payload(_) => (None, None),
    };
    without_request(job, kind, error, Some(routed))
}

/// The result of a job that sent no request: no status, no latency, no response.
fn without_request(
    job: &Job,
    error_kind: Option<&'static str>,
    error: Option<String>,
    routed: Option<Routed>,
) -> AttemptResult {
    AttemptResult {
        delivery_id: job.delivery_id,
        created_at: job.created_at,
        lease_id: job.lease_id,
        destination_id: job.destination_id,
        event_id: job.event_id,
        route_id: job.route_id,
        attempt: job.attempt,
        started_at: Utc::now(),
        status: None,
        latency_ms: 0,
        response_headers: serde_json::json!({}),
        excerpt: None,
        error_kind,
        error,
        retry_after: None,
        routed,
    }
}

async fn attempt_with(client: &Result<GuardedClient, String>, job: &Job, dest: &Destination) -> AttemptResult {
    match client {
        Ok(client) => attempt(client, job, dest).await,
        Err(why) => unusable_tls(job, why.clone()),
    }
}

async fn attempt(client: &GuardedClient, job: &Job, dest: &Destination) -> AttemptResult {
    let started_at = Utc::now();
    let clock = Instant::now();
    // Stable across this delivery's retries and distinct per destination and route, as receivers de-duplicate on it.
    let msg_id = format!("msg_{}", job.delivery_id.simple());
    let timestamp = started_at.timestamp();
    let content_type = if job.transformed {
        "application/json".to_owned()
    } else {
        job.content_type.clone().unwrap_or_else(|| "application/octet-stream".into())
    };
    let mut req = client
        .post(&dest.url)
        .timeout(dest.timeout)
        .insert_header(("content-type", content_type))
        .insert_header(("user-agent", concat!("hookgate/", env!("CARGO_PKG_VERSION"))))
        .insert_header(("webhook-id", msg_id.as_str()))
        .insert_header(("webhook-timestamp", timestamp.to_string()))
        .insert_header((
            "traceparent",
            crate::trace::outbound(&tracing::Span::current(), job.traceparent.as_deref(), job.event_id),
        ));
    if let Some(signatures) = signature_header(&dest.secrets, &dest.keys, &msg_id, timestamp, &job.body) {
        req = req.insert_header(("webhook-signature", signatures));
    }
    // Checked when set: none of them is one of the headers above (only `user-agent` may be replaced).
    for (name, value) in &dest.headers {
        req = req.insert_header((name.as_str(), value.as_str()));
    }
    let mut result = AttemptResult {
        delivery_id: job.delivery_id,
        created_at: job.created_at,
        lease_id: job.lease_id,
        destination_id: job.destination_id,
        event_id: job.event_id,
        route_id: job.route_id,
        attempt: job.attempt,
        started_at,
        status: None,
        latency_ms: 0,
        response_headers: serde_json::json!({}),
        excerpt: None,
        error_kind: None,
        error: None,
        retry_after: None,
        routed: None,
    };
    match req.send_body(job.body.clone()).await {
        Ok(mut resp) => {
            let status = resp.status();
            result.status = Some(status.as_u16());
            let mut kept = serde_json::Map::new();
            for name in KEPT_HEADERS {
                if let Some(v) = resp.headers().get(*name).and_then(|v| v.to_str().ok()) {
                    kept.insert((*name).to_owned(), serde_json::Value::String(v.chars().take(256).collect()));
                }
            }
            if matches!(status.as_u16(), 429 | 503) {
                result.retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()));
            }
            result.response_headers = serde_json::Value::Object(kept);
            let left = dest.timeout.saturating_sub(clock.elapsed()).max(Duration::from_millis(100));
            result.excerpt = tokio::time::timeout(left, read_excerpt(&mut resp)).await.ok().filter(|b| !b.is_empty());
            if status.is_redirection() {
                result.error_kind = Some("redirect");
                result.error = Some(format!("{status} (redirects are not followed)"));
            } else if !status.is_success() {
                result.error_kind = Some("http_status");
                result.error = Some(status.to_string());
            }
        }
        Err(e) => {
            let (kind, message) = classify_send_error(&e);
            result.error_kind = Some(kind);
            result.error = Some(message);
        }
    }
    result.latency_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
    emit(AttemptMade {
        destination: result.destination_id,
        delivery: job.delivery_id,
        attempt: job.attempt,
        outcome: result.error_kind.unwrap_or("success"),
        status: result.status,
        elapsed: clock.elapsed(),
    });
    result
}

/// Reads at most [`EXCERPT_BYTES`] of the body, then stops.
async fn read_excerpt<S>(resp: &mut awc::ClientResponse<S>) -> Bytes
where
    S: futures::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut buf = BytesMut::new();
    while let Some(Ok(chunk)) = resp.next().await {
        let room = EXCERPT_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= EXCERPT_BYTES {
            break;
        }
    }
    buf.freeze()
}
