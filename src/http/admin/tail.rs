//! The live tail, `GET /admin/v1/events/stream`: Server-Sent Events of the events every node of the cluster stores
//! from now on (and, on request, every attempt's outcome), filtered by source, type and a jq program.
//!
//! The events come from this node's [`TailHub`](hookgate_actors::tail::TailHub), which hears what every node
//! publishes on Redis after its COMMITs (ADR-0012). SSE events: `event` (one stored event), `outcome` (one attempt's
//! outcome), `dropped` (this client fell behind its buffer; `count` items were skipped), `error` (the Redis
//! subscription is down: nothing arrives meanwhile) and `resumed` (it is back); comment lines are heartbeats.
//! The view types here are the CLI's too (`hookgate tail`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hookgate_actors::tail::{TailClient, TailItem};
use hookgate_core::jq::{evaluate, JqProgram, RouteOutcome};
use hookgate_core::tail::{TailBody, TailEvent, TailOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ProblemBody;
use super::events::StoredEvent;
use super::{AdminError, AdminState};

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Only events of this source (slug); with `outcomes`, only the outcomes of this source's events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// A jq program over the input route filters see (`{"body", "headers", "source", "type"}`): an event is shown
    /// when its first output is neither `false` nor `null`. Evaluated with the routes' time and output bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Also stream the outcome of every delivery attempt (`event: outcome`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<bool>,
}

/// `event: event`: one stored event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TailEventView {
    pub id: Uuid,
    /// The source's slug.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The node that stored it.
    pub node: String,
    /// The body's size in bytes.
    pub size: usize,
    /// The body, when it is JSON (and not cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The body in base64, when it is not JSON or was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body was longer than `tail.max_body_bytes`: `body_base64` holds its beginning.
    #[serde(default)]
    pub truncated: bool,
}

impl TailEventView {
    pub fn of(node: &str, e: &TailEvent) -> Self {
        let (body, body_base64, truncated) = match &e.body {
            TailBody::Json(doc) => (Some(doc.clone()), None, false),
            TailBody::Base64 { data, truncated } => (None, Some(data.clone()), *truncated),
        };
        Self {
            id: e.id,
            source: e.source.clone(),
            event_type: e.event_type.clone(),
            received_at: e.received_at,
            node: node.to_owned(),
            size: e.size,
            body,
            body_base64,
            truncated,
        }
    }
}

/// `event: outcome`: one delivery attempt's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TailOutcomeView {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    /// The destination's slug.
    pub destination: String,
    /// `delivered`, `retrying`, `dead`, `failed` or `cancelled`: what the attempt made of the delivery.
    pub outcome: String,
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    pub latency_ms: i32,
    /// The attempt's number (1 for the first).
    pub attempt: i32,
    /// `timeout`, `connect`, `tls`, `http_status`, … (absent on success).
    pub error_kind: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The node that made the attempt.
    pub node: String,
}

impl TailOutcomeView {
    pub fn of(node: &str, o: &TailOutcome) -> Self {
        Self {
            delivery_id: o.delivery_id,
            event_id: o.event_id,
            destination: o.destination.clone(),
            outcome: o.outcome.clone(),
            status: o.status,
            latency_ms: o.latency_ms,
            attempt: o.attempt,
            error_kind: o.error_kind.clone(),
            started_at: o.started_at,
            node: node.to_owned(),
        }
    }
}

/// `event: dropped`: this client fell behind; so many items were skipped for it, and the stream goes on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TailDropped {
    pub count: u64,
}

/// `event: error`: the stream cannot see the cluster's events now (Redis is down); it resumes (`event: resumed`)
/// when the subscription is back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TailInterrupted {
    pub title: String,
    pub detail: String,
}

/// Streams new events from every node (Server-Sent Events). SSE events: `event` ([`TailEventView`]), `outcome`
/// ([`TailOutcomeView`], with `outcomes=true`), `dropped` ([`TailDropped`]), `error` ([`TailInterrupted`]),
/// `resumed`; comment lines are heartbeats. The stream never ends on its own.
#[utoipa::path(get, path = "/admin/v1/events/stream", tag = "events", security(("bearer" = [])), params(TailQuery),
    responses(
        (status = 200, description = "An endless Server-Sent Events stream: `event`, `outcome`, `dropped`, `error` \
            and `resumed` events (their data: TailEventView, TailOutcomeView, TailDropped, TailInterrupted, {}) and \
            heartbeat comments", content_type = "text/event-stream", body = String),
        (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody),
        (status = 422, body = ProblemBody), (status = 503, body = ProblemBody)))]
pub async fn stream(state: web::Data<AdminState>, query: web::Query<TailQuery>) -> Result<HttpResponse, AdminError> {
    let query = query.into_inner();
    let filter = match query.filter.as_deref() {
        Some(code) => Some(JqProgram::compile(code).map_err(|e| AdminError::Invalid(format!("filter: {e}")))?),
        None => None,
    };
    let source_id = match &query.source {
        Some(slug) => {
            let client = hookgate_store::connect(&state.pool).await?;
            Some(
                hookgate_store::sources::id_by_slug(&client, slug)
                    .await?
                    .ok_or_else(|| AdminError::NotFound(format!("no source is named {slug:?}")))?,
            )
        }
        None => None,
    };
    let client = state.tail.join().ok_or_else(|| {
        AdminError::Busy("this node serves as many live tails as it may (tail.max_clients), or is stopping".into())
    })?;
    let mut first = format!(": hookgate live tail, node {}\n\n", state.node_id);
    if let Some(reason) = state.tail.down_reason() {
        first.push_str(&interrupted(&reason));
    }
    let heartbeat = state.tail_heartbeat.max(Duration::from_millis(10));
    let tail = Tail {
        client,
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        source_id,
        event_type: query.event_type,
        filter,
        outcomes: query.outcomes.unwrap_or(false),
        state: state.clone(),
    };
    let frames = futures::stream::once(async move { Ok(Bytes::from(first)) })
        .chain(futures::stream::unfold(tail, |mut tail| async move {
            tail.next_frame().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), tail))
        }));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // Reverse proxies that buffer responses (nginx) pass this stream through as it comes.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(frames))
}

use futures::StreamExt;

/// One client's stream.
struct Tail {
    client: TailClient,
    heartbeat: tokio::time::Interval,
    source_id: Option<Uuid>,
    event_type: Option<String>,
    filter: Option<JqProgram>,
    outcomes: bool,
    state: web::Data<AdminState>,
}

impl Tail {
    /// The next frame to send; `None` ends the stream (the node is stopping).
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            let item = tokio::select! {
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
                item = self.client.rx.recv() => item,
            };
            let frame = match item {
                Ok(item) => match &*item {
                    TailItem::Event { node, event } => self.event_frame(node, event).await,
                    TailItem::Outcome { node, outcome } => self.outcome_frame(node, outcome),
                    TailItem::Down(reason) => Some(interrupted(reason)),
                    TailItem::Up => Some("event: resumed\ndata: {}\n\n".to_owned()),
                    TailItem::Closed => return None,
                },
                Err(RecvError::Lagged(count)) => {
                    hookgate_core::internal_events::emit(hookgate_core::internal_events::TailClientLagged { count });
                    Some(frame("dropped", None, &TailDropped { count }))
                }
                Err(RecvError::Closed) => return None,
            };
            if let Some(frame) = frame {
                self.heartbeat.reset();
                return Some(Bytes::from(frame));
            }
        }
    }

    async fn event_frame(&self, node: &str, event: &TailEvent) -> Option<String> {
        if self.source_id.is_some_and(|id| id != event.source_id)
            || self.event_type.as_ref().is_some_and(|t| event.event_type.as_ref() != Some(t))
        {
            return None;
        }
        if let Some(filter) = &self.filter {
            let input = match event.route_input() {
                Some(input) => input,
                // The body was cut for the tail: the filter reads the stored event, as a route would.
                None => match self.stored_input(event.id).await {
                    Ok(input) => input,
                    Err(e) => return Some(format!(": event {} skipped, its body cannot be read: {e}\n\n", event.id)),
                },
            };
            let (timeout, max_output) = (self.state.jq_timeout, self.state.jq_max_output);
            match evaluate(Some(filter.clone()), None, Arc::new(input), timeout, max_output).await {
                RouteOutcome::Deliver(_) => {}
                RouteOutcome::Skip => return None,
                RouteOutcome::Failed(why) | RouteOutcome::Unavailable(why) => {
                    return Some(format!(": event {} skipped: {}\n\n", event.id, one_line(&why)));
                }
            }
        }
        Some(frame("event", Some(&event.id.to_string()), &TailEventView::of(node, event)))
    }

    fn outcome_frame(&self, node: &str, outcome: &TailOutcome) -> Option<String> {
        if !self.outcomes || self.source_id.is_some_and(|id| outcome.source_id != Some(id)) {
            return None;
        }
        let id = format!("{}/{}", outcome.delivery_id, outcome.attempt);
        Some(frame("outcome", Some(&id), &TailOutcomeView::of(node, outcome)))
    }

    async fn stored_input(&self, id: Uuid) -> Result<serde_json::Value, AdminError> {
        let client = hookgate_store::connect(&self.state.pool).await?;
        let record = hookgate_store::events::fetch(&client, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no event has id {id}")))?;
        Ok(StoredEvent::from(record).jq_input())
    }
}

/// One SSE event: its `event:` name, its `id:` line, its data as one line of JSON.
fn frame(name: &str, id: Option<&str>, data: &impl Serialize) -> String {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    match id {
        Some(id) => format!("id: {id}\nevent: {name}\ndata: {data}\n\n"),
        None => format!("event: {name}\ndata: {data}\n\n"),
    }
}

fn interrupted(reason: &str) -> String {
    let body = TailInterrupted {
        title: "Live tail interrupted".into(),
        detail: format!("{reason}; events stored meanwhile are not shown (the stream resumes by itself)"),
    };
    frame("error", None, &body)
}

/// A message fit for an SSE comment line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
