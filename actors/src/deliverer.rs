//! Makes one HTTP attempt per leased delivery: signed (Standard Webhooks), traced, time-bounded, never redirected,
//! and only to addresses the SSRF guard vetted; reports the outcome to the ResultWriter.
//!
//! Each Deliverer runs on its own arbiter and owns its `awc::Client` (which is `!Send`). It runs many attempts at
//! once; the Scheduler bounds how many it is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use uuid::Uuid;

use crate::catalog::Destination;
use crate::limits::Limits;
use crate::redis_link::RedisLink;
use crate::retry::parse_retry_after;
use crate::scheduler::{Completed, Job};
use crate::signing::{signature_header, traceparent};
use crate::ssrf::{classify_send_error, guarded_client, SsrfPolicy};
use crate::supervision::{guarded, Panicked};

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
}

/// The outcome of one attempt.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AttemptResult {
    pub delivery_id: Uuid,
    pub lease_id: Uuid,
    pub destination_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status: Option<u16>,
    pub latency_ms: i32,
    pub response_headers: serde_json::Value,
    pub excerpt: Option<Bytes>,
    /// `timeout`, `connect`, `ssrf`, `dns`, `redirect`, `http_status`, … (None on success).
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
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

pub struct Deliverer {
    policy: Arc<SsrfPolicy>,
    limits: Arc<Limits>,
    redis: Arc<RedisLink>,
    max_connections: usize,
    mailbox_capacity: usize,
    client: Option<awc::Client>,
    results: Recipient<AttemptResult>,
    scheduler: Recipient<Completed>,
}

impl Deliverer {
    pub fn new(
        policy: Arc<SsrfPolicy>,
        limits: Arc<Limits>,
        redis: Arc<RedisLink>,
        max_connections: usize,
        mailbox_capacity: usize,
        results: Recipient<AttemptResult>,
        scheduler: Recipient<Completed>,
    ) -> Self {
        Self { policy, limits, redis, max_connections, mailbox_capacity, client: None, results, scheduler }
    }
}

impl Actor for Deliverer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        self.client = Some(guarded_client(self.policy.clone(), self.max_connections));
    }
}

impl actix::Supervised for Deliverer {}

impl Handler<Deliver> for Deliverer {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let client = self.client.clone().unwrap_or_else(|| guarded_client(self.policy.clone(), self.max_connections));
        let (results, scheduler) = (self.results.clone(), self.scheduler.clone());
        let (limits, redis) = (self.limits.clone(), self.redis.clone());
        ctx.spawn(
            async move {
                let delivery = msg.job.delivery_id;
                let sent = guarded(async {
                    let result = attempt(&client, &msg.job, &msg.destination).await;
                    // The circuit learns the outcome before the delivery's next attempt can be scheduled.
                    let elapsed = Duration::from_millis(result.latency_ms.max(0) as u64);
                    limits.record(redis.get(), result.destination_id, !result.counts_against_circuit(), elapsed).await;
                    // The result must reach the ResultWriter (it releases the lease): wait for mailbox space.
                    if results.send(result).await.is_err() {
                        tracing::warn!(message = "ResultWriter gone; the lease will expire.");
                    }
                })
                .await;
                if let Err(Panicked(what)) = sent {
                    // This attempt only: its lease expires and the delivery is attempted again.
                    metrics::counter!("hookgate_actor_panics_total", "actor" => "deliverer").increment(1);
                    tracing::error!(message = "An attempt panicked; its lease will expire.", %delivery, panic = %what);
                }
                let done = Completed { delivery_id: msg.job.delivery_id, destination_id: msg.job.destination_id };
                let _ = scheduler.send(done).await;
            }
            .into_actor(self),
        );
    }
}

async fn attempt(client: &awc::Client, job: &Job, dest: &Destination) -> AttemptResult {
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
        .insert_header(("traceparent", traceparent(job.event_id)));
    if !dest.secrets.is_empty() {
        req = req.insert_header(("webhook-signature", signature_header(&dest.secrets, &msg_id, timestamp, &job.body)));
    }
    let mut result = AttemptResult {
        delivery_id: job.delivery_id,
        lease_id: job.lease_id,
        destination_id: job.destination_id,
        attempt: job.attempt,
        started_at,
        status: None,
        latency_ms: 0,
        response_headers: serde_json::json!({}),
        excerpt: None,
        error_kind: None,
        error: None,
        retry_after: None,
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
    metrics::counter!("hookgate_delivery_attempts_total", "outcome" => result.error_kind.unwrap_or("success"))
        .increment(1);
    metrics::histogram!("hookgate_delivery_attempt_seconds").record(clock.elapsed().as_secs_f64());
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
