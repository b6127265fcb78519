//! Destinations and routes: their declared form (`DestinationSpec`, `RouteSpec`, checked against the SSRF policy
//! and compiled), and the in-memory [`Catalog`] every node serves from, whose [`Catalog::plan`] decides an event's
//! deliveries. Loading it from PostgreSQL and keeping it current is the actors' (`hookgate_actors::catalog`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use uuid::Uuid;

use crate::internal_events::{emit, RouteEvaluationDeferred};
use crate::jq::{self, JqProgram, RouteOutcome};
use crate::retry::RetryPolicy;
use crate::signing::SigningSecret;
use crate::ssrf::SsrfPolicy;
use crate::state::DestinationState;

/// A destination as declared in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub slug: String,
    /// `http://` or `https://` URL; checked against the SSRF policy.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight to this destination at once, cluster-wide.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Requests per second, cluster-wide (token bucket); none by default.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// `whsec_…` secrets; every delivery carries one signature per secret (rotation: add the new one first).
    #[serde(default)]
    pub signing_secrets: Vec<String>,
    /// One delivery in flight at a time, in event order; a failing head holds the rest.
    #[serde(default)]
    pub fifo: bool,
    #[serde(default)]
    pub state: DestinationState,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_in_flight() -> u32 {
    16
}

impl DestinationSpec {
    pub fn validate(&self, policy: &SsrfPolicy) -> Result<(), String> {
        policy.check_url(&self.url).map_err(|e| e.to_string())?;
        if self.timeout_ms == 0 || self.max_in_flight == 0 {
            return Err("timeout_ms and max_in_flight must be positive".into());
        }
        if self.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("rate_limit must be a positive number".into());
        }
        self.retry.validate()?;
        for s in &self.signing_secrets {
            SigningSecret::parse(s)?;
        }
        Ok(())
    }
}

/// A route as declared in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub slug: String,
    /// Source slug.
    pub source: String,
    /// Destination slug.
    pub destination: String,
    /// jq program over `{body, headers, source, type}`; the event is delivered when its first output is truthy.
    #[serde(default)]
    pub filter: Option<String>,
    /// jq program over the same input; its first output, as JSON, is the delivered body.
    #[serde(default)]
    pub transform: Option<String>,
}

impl RouteSpec {
    /// Compiles filter and transform (a configuration error names which one failed).
    pub fn compile(&self) -> Result<(Option<JqProgram>, Option<JqProgram>), String> {
        Ok((compile(self.filter.as_deref(), "filter")?, compile(self.transform.as_deref(), "transform")?))
    }
}

fn compile(code: Option<&str>, what: &str) -> Result<Option<JqProgram>, String> {
    code.filter(|c| !c.trim().is_empty())
        .map(|c| JqProgram::compile(c).map_err(|e| format!("the {what} does not compile: {e}")))
        .transpose()
}

/// A destination as the delivery side uses it.
#[derive(Debug)]
pub struct Destination {
    pub id: Uuid,
    pub slug: String,
    pub url: String,
    pub timeout: Duration,
    pub max_in_flight: u32,
    pub rate_limit: Option<f64>,
    pub retry: RetryPolicy,
    pub secrets: Vec<SigningSecret>,
    pub fifo: bool,
    pub state: DestinationState,
}

/// A route with its programs compiled.
pub struct Route {
    pub id: Uuid,
    pub slug: String,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    pub filter: Option<JqProgram>,
    pub transform: Option<JqProgram>,
}

/// The snapshot: destinations by id, enabled routes by source.
#[derive(Default)]
pub struct Catalog {
    pub destinations: HashMap<Uuid, Arc<Destination>>,
    pub routes_by_source: HashMap<Uuid, Vec<Arc<Route>>>,
}

/// A delivery decided at ingest, inserted with its event.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub id: Uuid,
    pub route_id: Uuid,
    pub destination_id: Uuid,
    /// The destination is FIFO at planning time (the writer serializes flushes that carry such deliveries).
    pub fifo: bool,
    /// The transform's output, when the route has one.
    pub payload: Option<Bytes>,
    /// Why the filter or transform failed (the delivery is stored as `failed`, never attempted).
    pub failed: Option<String>,
    /// The route's programs could not be evaluated now (time bound, runaway budget): the delivery is stored
    /// `pending` with `needs_routing`, and evaluated again when it is claimed (a time-out is never a verdict).
    pub deferred: bool,
    /// Set when the delivery can be attempted as soon as it is committed (its destination is active and not FIFO,
    /// its programs were evaluated): the destination's timeout, from which the ingesting node's lease is sized.
    /// The writer then inserts it already leased and hands it to its own Scheduler, with no claim round.
    pub attempt_now: Option<Duration>,
}

impl Catalog {
    pub fn routes_for(&self, source_id: Uuid) -> &[Arc<Route>] {
        self.routes_by_source.get(&source_id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Decides the deliveries of one event. `input` builds the jq input only when a route needs it.
    ///
    /// A route whose programs could not be evaluated now (time bound, runaway budget) plans a *deferred* delivery:
    /// stored `pending` with `needs_routing`, and evaluated again at delivery. A time-out on a saturated machine
    /// says nothing about the event, so it never fails it, and one slow route never holds up ingest. A program that
    /// fails deterministically plans a `failed` delivery.
    pub async fn plan(
        &self,
        source_id: Uuid,
        input: impl FnOnce() -> serde_json::Value,
        jq_timeout: Duration,
        jq_max_output: usize,
    ) -> Vec<PlannedDelivery> {
        let routes = self.routes_for(source_id);
        let needs_input = routes.iter().any(|r| r.filter.is_some() || r.transform.is_some());
        let input = if needs_input { Some(Arc::new(input())) } else { None };
        let mut planned = Vec::with_capacity(routes.len());
        for route in routes {
            let outcome = match &input {
                Some(input) if route.filter.is_some() || route.transform.is_some() => {
                    jq::evaluate(
                        route.filter.clone(),
                        route.transform.clone(),
                        input.clone(),
                        jq_timeout,
                        jq_max_output,
                    )
                    .await
                }
                _ => RouteOutcome::Deliver(None),
            };
            let (payload, failed, deferred) = match outcome {
                RouteOutcome::Skip => continue,
                RouteOutcome::Deliver(payload) => (payload.map(Bytes::from), None, false),
                RouteOutcome::Failed(why) => (None, Some(without_nul(&why).into_owned()), false),
                RouteOutcome::Unavailable(why) => {
                    emit(RouteEvaluationDeferred { route: &route.slug, why: &why });
                    (None, None, true)
                }
            };
            let destination = self.destinations.get(&route.destination_id);
            let attempt_now = destination
                .filter(|d| d.state == DestinationState::Active && !d.fifo && failed.is_none() && !deferred)
                .map(|d| d.timeout);
            planned.push(PlannedDelivery {
                id: Uuid::now_v7(),
                route_id: route.id,
                destination_id: route.destination_id,
                fifo: destination.is_some_and(|d| d.fifo),
                payload,
                failed,
                deferred,
                attempt_now,
            });
        }
        planned
    }

    /// An enabled route by id.
    pub fn route(&self, id: Uuid) -> Option<&Arc<Route>> {
        self.routes_by_source.values().flatten().find(|r| r.id == id)
    }
}

/// `s` without NUL characters, which PostgreSQL refuses in text (borrowed when it has none). Error messages that
/// quote event data may contain them.
pub fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}
