//! The live tail, `GET /admin/v1/events/stream`: events from every node, filters, outcomes, slow clients, Redis
//! outages, and its refusals.

use std::time::Duration;

use futures::StreamExt;
use hookgate::config::Settings;
use hookgate::startup::Application;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::admin::{with_tokens, READ};
use crate::helpers::{
    destination, http_client, post_signed_to, redis_url, route, socket_of, spawn_app_with, Proxy, TestApp,
};
use crate::receiver::{Receiver, Reply};

/// One SSE event (or comment) as a client reads it.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        self.data.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null)
    }

    pub fn is(&self, name: &str) -> bool {
        self.event.as_deref() == Some(name)
    }
}

type Body = futures::stream::LocalBoxStream<'static, Result<bytes::Bytes, awc::error::PayloadError>>;

/// An open SSE stream.
pub struct Sse {
    body: Body,
    buf: String,
    /// Every frame read so far.
    pub seen: Vec<Frame>,
}

/// Tail settings for tests: presence noticed within 50 ms, heartbeats every 200 ms.
pub fn quick_tail(s: &mut Settings) {
    with_tokens(s);
    s.tail.presence_interval_ms = 50;
    s.tail.heartbeat_ms = 200;
}

impl Sse {
    /// Opens the stream at `base` with `query`; asserts it is one.
    pub async fn open(base: &str, query: &str) -> Sse {
        let client = awc::Client::builder().disable_timeout().finish();
        let resp = client
            .get(format!("{base}/admin/v1/events/stream{query}"))
            .insert_header(("Authorization", format!("Bearer {READ}")))
            .send()
            .await
            .expect("open the stream");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
        let mut sse = Sse { body: resp.boxed_local(), buf: String::new(), seen: Vec::new() };
        let hello = sse.next(Duration::from_secs(10)).await.expect("the first frame");
        assert!(hello.comment.as_deref().is_some_and(|c| c.contains("live tail")), "{hello:?}");
        sse
    }

    /// The next frame, or `None` when none came within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Frame> {
        let until = Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        frame.comment = Some(c.trim().to_owned());
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "event" => frame.event = Some(v.to_owned()),
                            "id" => frame.id = Some(v.to_owned()),
                            "data" => frame.data = Some(v.to_owned()),
                            _ => {}
                        }
                    }
                }
                self.seen.push(frame.clone());
                return Some(frame);
            }
            match tokio::time::timeout_at(until, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8")),
                Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
                Ok(None) => panic!("the stream ended"),
                Err(_) => return None,
            }
        }
    }

    /// Reads until a frame satisfies `pred` (within 30 s); answers it.
    pub async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Frame) -> bool) -> Frame {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(f) if pred(&f) => return f,
                Some(_) => {}
                None => panic!("timed out waiting for {what}; seen: {:#?}", self.seen),
            }
        }
    }
}

/// An `event` frame whose body's `marker` is `m`.
pub fn marked(f: &Frame, m: &str) -> bool {
    f.is("event") && f.json()["body"]["marker"] == m
}

/// Posts signed events to `base` until one shows on `sse`: the cluster publishes (someone tails, and the publishing
/// node noticed). Events posted before that are never published.
pub async fn warm_up(sse: &mut Sse, base: &str) {
    let http = http_client();
    let until = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        assert!(Instant::now() < until, "no event reached the stream; seen: {:#?}", sse.seen);
        let marker = format!("warm-{n}-{}", uuid::Uuid::new_v4().simple());
        let body = serde_json::to_vec(&json!({ "marker": marker, "warm": true })).unwrap();
        post_signed_to(&http, base, &body, &marker).await.unwrap();
        let wait = Instant::now() + Duration::from_millis(500);
        while let Some(f) = sse.next(wait.saturating_duration_since(Instant::now())).await {
            if f.is("event") && f.json()["body"]["warm"] == true {
                return;
            }
        }
    }
}

/// A second node of `a`'s cluster (same database, same Redis prefix), in this process; answers its base URL.
async fn second_node(a: &TestApp, id: &str) -> String {
    let mut settings = a.settings.clone();
    settings.server.node_id = Some(id.into());
    let app = Application::build(settings).await.expect("build the second node");
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    base
}

async fn post_signed(app_base: &str, body: Value, key: &str) -> uuid::Uuid {
    let a = post_signed_to(&http_client(), app_base, &serde_json::to_vec(&body).unwrap(), key).await.unwrap();
    assert_eq!(a.status, 202, "{a:?}");
    a.id()
}

#[actix_rt::test]
async fn an_event_stored_by_one_node_appears_on_another_nodes_stream_without_its_headers() {
    let a = spawn_app_with(|s| {
        quick_tail(s);
        s.server.node_id = Some("node-a".into());
    })
    .await;
    let b = second_node(&a, "node-b").await;
    let mut on_b = Sse::open(&b, "").await;
    warm_up(&mut on_b, &a.address).await;

    let id = post_signed(&a.address, json!({"marker": "cross", "order": {"total": 12}}), "cross-key").await;
    let f = on_b.wait_for("the event from node a", |f| marked(f, "cross")).await;
    assert_eq!(f.id, Some(id.to_string()));
    let data = f.json();
    assert_eq!(data["id"], id.to_string());
    assert_eq!(data["node"], "node-a");
    assert_eq!(data["source"], "hmac");
    assert_eq!(data["body"], json!({"marker": "cross", "order": {"total": 12}}));
    assert_eq!(data["truncated"], false);
    assert!(data["size"].as_u64().unwrap() > 10);
    assert!(data["received_at"].as_str().is_some());
    assert!(data.get("headers").is_none(), "{data}");
    assert!(!f.data.unwrap().contains("sha256="), "no signature is shown");
    // Idle streams get heartbeats.
    on_b.wait_for("a heartbeat", |f| f.comment.as_deref() == Some("heartbeat")).await;
}

fn ce_source() -> hookgate_core::source::SourceConfig {
    let text = "[[sources]]\nslug = \"ce\"\ncloudevents = true\n";
    Settings::from_toml(text).unwrap().sources.remove(0)
}

async fn post_ce(base: &str, events: Value) -> Value {
    let (ct, body) = if events.is_array() {
        ("application/cloudevents-batch+json", events)
    } else {
        ("application/cloudevents+json", events)
    };
    let resp = http_client()
        .post(format!("{base}/ingest/ce"))
        .insert_header(("Content-Type", ct))
        .send_body(serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    let a = crate::helpers::answer(resp).await;
    assert_eq!(a.status, 202, "{a:?}");
    a.json
}

fn ce(id: &str, ty: &str, marker: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/orders", "type": ty, "data": {"marker": marker}})
}

/// The test events a stream showed before its first `end` event, by marker.
async fn markers_until_end(sse: &mut Sse) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let f = sse.wait_for("an event", |f| f.is("event")).await;
        let body = f.json()["body"].clone();
        let marker = body["marker"].as_str().or(body["data"]["marker"].as_str()).unwrap_or_default().to_owned();
        if body["warm"] == true {
            continue;
        }
        if marker == "end" {
            return got;
        }
        got.push(marker);
    }
}

#[actix_rt::test]
async fn streams_show_only_the_events_of_their_source_type_and_jq_filter() {
    let app = spawn_app_with(|s| {
        quick_tail(s);
        s.sources.push(ce_source());
    })
    .await;
    let mut warm = Sse::open(&app.address, "").await;
    warm_up(&mut warm, &app.address).await;
    let mut by_source = Sse::open(&app.address, "?source=open").await;
    let mut by_type = Sse::open(&app.address, "?type=order.created").await;
    let filter = r#"(.body.marker == "two" and .source == "hmac" and (.headers["x-signature"] | startswith("sha256=")))
        or .body.marker == "end""#;
    let query: String = url_encode(filter);
    let mut by_jq = Sse::open(&app.address, &format!("?filter={query}")).await;

    let open = http_client()
        .post(app.url("/ingest/open"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"marker": "one"}"#)
        .await
        .unwrap();
    assert_eq!(open.status(), 202);
    post_ce(&app.address, ce("c-1", "order.created", "created")).await;
    post_ce(&app.address, ce("c-2", "order.deleted", "deleted")).await;
    post_signed(&app.address, json!({"marker": "two"}), "k-two").await;
    let open_two = http_client().post(app.url("/ingest/open")).send_body(r#"{"marker": "two"}"#).await.unwrap();
    assert_eq!(open_two.status(), 202);
    // The ends, after every test event: each stream shows one of them.
    let end = http_client().post(app.url("/ingest/open")).send_body(r#"{"marker": "end"}"#).await.unwrap();
    assert_eq!(end.status(), 202);
    post_ce(&app.address, ce("c-end", "order.created", "end")).await;

    assert_eq!(markers_until_end(&mut by_source).await, ["one", "two"]);
    assert_eq!(markers_until_end(&mut by_type).await, ["created"]);
    assert_eq!(markers_until_end(&mut by_jq).await, ["two"]);
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[actix_rt::test]
async fn outcomes_show_each_attempt_with_its_delivery_destination_and_status() {
    let receiver = Receiver::start(vec![Reply::Status(500)], Some(Reply::Status(200)));
    let url = receiver.url.clone();
    let app = spawn_app_with(move |s| {
        quick_tail(s);
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("hmac-to-sink", "hmac", "sink"));
    })
    .await;
    let mut sse = Sse::open(&app.address, "?source=hmac&outcomes=true").await;
    warm_up(&mut sse, &app.address).await;
    let mut plain = Sse::open(&app.address, "?source=hmac").await;

    let id = post_signed(&app.address, json!({"marker": "paid"}), "paid-key").await;
    let delivered = sse
        .wait_for("the delivered outcome", |f| {
            f.is("outcome") && f.json()["event_id"] == id.to_string() && f.json()["outcome"] == "delivered"
        })
        .await;
    let o = delivered.json();
    assert_eq!(o["destination"], "sink");
    assert_eq!(o["status"], 200);
    assert!(o["latency_ms"].as_i64().is_some());
    assert!(o["delivery_id"].as_str().is_some());
    assert_eq!(delivered.id, Some(format!("{}/{}", o["delivery_id"].as_str().unwrap(), o["attempt"])));
    // The warm-up's first delivery met the receiver's 500: somewhere in the stream, a `retrying` outcome. Result
    // batches commit concurrently, so it may come before or after the delivered one.
    let retrying = |f: &Frame| f.is("outcome") && f.json()["outcome"] == "retrying" && f.json()["status"] == 500;
    if !sse.seen.iter().any(retrying) {
        sse.wait_for("the retrying outcome", retrying).await;
    }
    assert!(sse.seen.iter().any(|f| marked(f, "paid")), "the event itself was shown too");
    // Without `outcomes`, none.
    plain.wait_for("the event", |f| marked(f, "paid")).await;
    let end = post_signed(&app.address, json!({"marker": "end"}), "end-key").await;
    sse.wait_for("the last outcome", |f| f.is("outcome") && f.json()["event_id"] == end.to_string()).await;
    plain.wait_for("the end", |f| marked(f, "end")).await;
    assert!(!plain.seen.iter().any(|f| f.is("outcome")), "{:#?}", plain.seen);
}

#[actix_rt::test]
async fn a_client_that_falls_behind_is_told_how_many_events_it_missed_and_the_stream_goes_on() {
    let app = spawn_app_with(|s| {
        quick_tail(s);
        s.tail.buffer = 2;
        s.sources.push(ce_source());
    })
    .await;
    let mut sse = Sse::open(&app.address, "").await;
    warm_up(&mut sse, &app.address).await;
    // A batch is one COMMIT and one message: its events reach the hub at once, faster than any client reads.
    let mut round = 0;
    let dropped = loop {
        round += 1;
        assert!(round < 20, "no dropped notice: {:#?}", sse.seen);
        let batch: Vec<Value> =
            (0..40).map(|i| ce(&format!("b{round}-{i}"), "bulk", &format!("b{round}-{i}"))).collect();
        post_ce(&app.address, Value::Array(batch)).await;
        let last = format!("b{round}-39");
        let f = sse
            .wait_for("a dropped notice or the batch's last event", |f| {
                f.is("dropped") || (f.is("event") && f.json()["body"]["data"]["marker"] == last)
            })
            .await;
        if f.is("dropped") {
            break f;
        }
    };
    assert!(dropped.json()["count"].as_u64().unwrap() >= 1, "{dropped:?}");
    let id = post_signed(&app.address, json!({"marker": "after"}), "after-key").await;
    let f = sse.wait_for("an event after the notice", |f| marked(f, "after")).await;
    assert_eq!(f.json()["id"], id.to_string());
}

#[actix_rt::test]
async fn a_stream_says_when_redis_is_away_and_resumes_when_it_is_back() {
    let proxy = Proxy::start(socket_of(&redis_url())).await;
    let addr = proxy.addr;
    let app = spawn_app_with(move |s| {
        quick_tail(s);
        s.redis.url = format!("redis://{addr}").into();
    })
    .await;
    let mut sse = Sse::open(&app.address, "").await;
    warm_up(&mut sse, &app.address).await;
    proxy.down();
    let error = sse.wait_for("the error event", |f| f.is("error")).await;
    assert_eq!(error.json()["title"], "Live tail interrupted");
    assert!(error.json()["detail"].as_str().unwrap().contains("Redis"), "{error:?}");
    // Ingest goes on meanwhile.
    post_signed(&app.address, json!({"marker": "during"}), "during-key").await;
    proxy.restore();
    sse.wait_for("the resumed event", |f| f.is("resumed")).await;
    warm_up(&mut sse, &app.address).await;
    let id = post_signed(&app.address, json!({"marker": "back"}), "back-key").await;
    assert_eq!(sse.wait_for("an event after the outage", |f| marked(f, "back")).await.json()["id"], id.to_string());
}

#[actix_rt::test]
async fn a_bad_filter_an_unknown_source_and_a_missing_token_are_refused_before_any_stream() {
    let app = spawn_app_with(quick_tail).await;
    let bad = app.admin("get", "/events/stream?filter=.body%20%7C%7C%7C", Some(READ), None).await;
    bad.assert_problem(422, "validation-failed");
    assert!(bad.json["detail"].as_str().unwrap().contains("filter"), "{bad:?}");
    app.admin("get", "/events/stream?source=nope", Some(READ), None).await.assert_problem(404, "not-found");
    app.admin("get", "/events/stream", None, None).await.assert_problem(401, "unauthorized");
    app.admin("get", "/events/stream", Some("not-a-configured-token-at-all"), None)
        .await
        .assert_problem(401, "unauthorized");
    app.admin("get", "/events/stream?outcomes=maybe", Some(READ), None).await.assert_problem(400, "bad-request");
}

#[actix_rt::test]
async fn the_node_serves_at_most_max_clients_streams() {
    let app = spawn_app_with(|s| {
        quick_tail(s);
        s.tail.max_clients = 1;
    })
    .await;
    let first = Sse::open(&app.address, "").await;
    app.admin("get", "/events/stream", Some(READ), None).await.assert_problem(503, "busy");
    drop(first);
    // The first client's place is free once the server noticed it left (at its next heartbeat).
    crate::helpers::eventually("a free place", Duration::from_secs(30), || async {
        let client = awc::Client::builder().disable_timeout().finish();
        let resp = client
            .get(app.url("/admin/v1/events/stream"))
            .insert_header(("Authorization", format!("Bearer {READ}")))
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
}
