//! The operator commands: `hookgate tail`, `events list|get`, `replay`, `deliveries retry`. They speak to a running
//! hookgate's admin API over HTTP (awc) with the token in `HOOKGATE_TOKEN`; they need no configuration file and no
//! database. Requests and answers are the admin API's own types (`crate::http::admin`), so the commands cannot
//! drift from the API and its OpenAPI document. A refusal is printed as `hookgate: <title>: <detail>`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::http::admin::error::ProblemBody;
use crate::http::admin::events::{DeliveryView, EventDetail, EventPage, EventQuery, ReplayInput, ReplayResult};
use crate::http::admin::tail::{TailDropped, TailEventView, TailInterrupted, TailOutcomeView, TailQuery};

/// Where the admin API is, and the token to present.
pub struct Remote {
    base: String,
    token: Option<String>,
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The API refused: its problem.
    Problem(ProblemBody),
    /// No answer: the node is not reachable at this URL.
    Unreachable { url: String, reason: String },
    /// Anything else (an unreadable answer, a stream cut).
    Other(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Problem(p) => write!(f, "{}: {}", p.title, p.detail),
            Self::Unreachable { url, reason } => write!(f, "cannot reach hookgate at {url}: {reason}"),
            Self::Other(what) => f.write_str(what),
        }
    }
}

impl Remote {
    /// `url` is the node's base URL (`http://127.0.0.1:8080`); the token is `HOOKGATE_TOKEN`'s.
    pub fn new(url: &str) -> Self {
        let token = std::env::var("HOOKGATE_TOKEN").ok().filter(|t| !t.is_empty());
        Self { base: url.trim_end_matches('/').to_owned(), token }
    }

    fn request(&self, client: &awc::Client, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let req = client.request(method, format!("{}/admin/v1{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn client() -> awc::Client {
        awc::Client::builder().timeout(Duration::from_secs(30)).finish()
    }

    fn unreachable(&self, e: impl fmt::Display) -> CliError {
        CliError::Unreachable { url: self.base.clone(), reason: e.to_string() }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        query: Option<&impl Serialize>,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let client = Self::client();
        let mut req = self.request(&client, method, path);
        if let Some(q) = query {
            req = req.query(q).map_err(|e| CliError::Other(format!("invalid query: {e}")))?;
        }
        let resp = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let bytes = resp.body().limit(64 << 20).await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(problem(resp.status(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Other(format!("unreadable answer: {e}")))
    }

    /// `GET /events`.
    pub async fn list_events(&self, query: &EventQuery) -> Result<EventPage, CliError> {
        self.call(awc::http::Method::GET, "/events", Some(query), None::<&()>).await
    }

    /// `GET /events/{id}`.
    pub async fn get_event(&self, id: Uuid) -> Result<EventDetail, CliError> {
        self.call(awc::http::Method::GET, &format!("/events/{id}"), None::<&()>, None::<&()>).await
    }

    /// `POST /events/{id}/replay`.
    pub async fn replay(&self, id: Uuid, input: &ReplayInput) -> Result<ReplayResult, CliError> {
        self.call(awc::http::Method::POST, &format!("/events/{id}/replay"), None::<&()>, Some(input)).await
    }

    /// `POST /deliveries/{id}/retry`.
    pub async fn retry_delivery(&self, id: Uuid) -> Result<DeliveryView, CliError> {
        self.call(awc::http::Method::POST, &format!("/deliveries/{id}/retry"), None::<&()>, None::<&()>).await
    }

    /// `GET /events/stream`: calls `on` for each SSE event until the stream ends (`Ok`) or breaks (`Err`).
    pub async fn tail(&self, query: &TailQuery, mut on: impl FnMut(SseEvent)) -> Result<(), CliError> {
        let client = awc::Client::builder().disable_timeout().finish();
        let req = self
            .request(&client, awc::http::Method::GET, "/events/stream")
            .query(query)
            .map_err(|e| CliError::Other(format!("invalid query: {e}")))?;
        let mut resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let bytes = resp.body().limit(1 << 20).await.unwrap_or_default();
            return Err(problem(resp.status(), &bytes));
        }
        let mut parser = SseParser::default();
        while let Some(chunk) = resp.next().await {
            let chunk: Bytes = chunk.map_err(|e| CliError::Other(format!("the stream broke: {e}")))?;
            for event in parser.push(&chunk) {
                on(event);
            }
        }
        Ok(())
    }
}

/// The problem in a refusal's body, or one made from its status.
fn problem(status: awc::http::StatusCode, body: &[u8]) -> CliError {
    match serde_json::from_slice::<ProblemBody>(body) {
        Ok(p) => CliError::Problem(p),
        Err(_) => CliError::Problem(ProblemBody {
            type_uri: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: format!("the server answered {status}"),
        }),
    }
}

/// One Server-Sent Event: its `event:` name (`message` when absent), `id:` and `data:`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a byte stream into SSE events (the parts of the format hookgate sends: `event`, `id`, `data`, comments).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            let mut any = false;
            for line in String::from_utf8_lossy(&block).lines() {
                if line.starts_with(':') || line.is_empty() {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                any = true;
                match field {
                    "event" => event.event = value.to_owned(),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if any {
                if event.event.is_empty() {
                    event.event = "message".into();
                }
                events.push(event);
            }
        }
        events
    }
}

/// What `hookgate tail` prints for one SSE event: a line for stdout, or a notice for stderr.
pub enum TailLine {
    Out(String),
    Notice(String),
}

/// Renders one SSE event of the live tail (`json`: one JSON object per line, `{"event": …, "data": …}`).
pub fn tail_line(event: &SseEvent, json: bool) -> Option<TailLine> {
    match event.event.as_str() {
        "event" | "outcome" if json => {
            let data: serde_json::Value = serde_json::from_str(&event.data).ok()?;
            Some(TailLine::Out(serde_json::json!({ "event": event.event, "data": data }).to_string()))
        }
        "event" => {
            let e: TailEventView = serde_json::from_str(&event.data).ok()?;
            let body = match (&e.body, &e.body_base64) {
                (Some(doc), _) => doc.to_string(),
                (None, Some(b64)) => format!("base64:{b64}{}", if e.truncated { " (truncated)" } else { "" }),
                (None, None) => String::new(),
            };
            Some(TailLine::Out(format!(
                "{} {} {} {} {} {}B {}",
                e.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.node,
                e.source,
                e.event_type.as_deref().unwrap_or("-"),
                e.id,
                e.size,
                body
            )))
        }
        "outcome" => {
            let o: TailOutcomeView = serde_json::from_str(&event.data).ok()?;
            Some(TailLine::Out(format!(
                "{} {} outcome {} {} status={} {}ms attempt={} delivery={} event={}{}",
                o.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                o.node,
                o.destination,
                o.outcome,
                o.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                o.latency_ms,
                o.attempt,
                o.delivery_id,
                o.event_id,
                o.error_kind.map(|k| format!(" error={k}")).unwrap_or_default()
            )))
        }
        "dropped" => {
            let d: TailDropped = serde_json::from_str(&event.data).ok()?;
            Some(TailLine::Notice(format!("hookgate: this tail fell behind; {} item(s) were skipped", d.count)))
        }
        "error" => {
            let e: TailInterrupted = serde_json::from_str(&event.data).ok()?;
            Some(TailLine::Notice(format!("hookgate: {}: {}", e.title, e.detail)))
        }
        "resumed" => Some(TailLine::Notice("hookgate: live tail resumed".into())),
        _ => None,
    }
}

/// One line per event of a page.
pub fn event_lines(page: &EventPage) -> Vec<String> {
    page.items
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}B source_id={}",
                e.id,
                e.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.event_type.as_deref().unwrap_or("-"),
                e.body_bytes,
                e.source_id
            )
        })
        .collect()
}

/// One line per delivery.
pub fn delivery_line(d: &DeliveryView) -> String {
    format!(
        "{} {} attempts={} destination_id={} next_attempt_at={}{}",
        d.id,
        d.state.as_str(),
        d.attempts,
        d.destination_id,
        d.next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        d.last_error.as_deref().map(|e| format!(" last_error={e:?}")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_across_chunks_and_comments_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": hello\n\nid: 1\nevent: ev").is_empty());
        let got = p.push(b"ent\ndata: {\"a\":1}\n\n: heartbeat\n\nevent: dropped\ndata: {\"count\":3}\n\n");
        assert_eq!(
            got,
            vec![
                SseEvent { event: "event".into(), id: Some("1".into()), data: "{\"a\":1}".into() },
                SseEvent { event: "dropped".into(), id: None, data: "{\"count\":3}".into() },
            ]
        );
    }
}
