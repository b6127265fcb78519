//! Traces over OTLP: the real binary exports to a collector run by the test (OTLP/HTTP, protobuf, decoded with
//! `opentelemetry-proto`), and the spans it sends show one trace per event: the ingest span continuing the
//! producer's `traceparent`, the writer's flush linked to it, each attempt (first, and replayed through the claim
//! path) its child, the outbound `traceparent` the attempt's own.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use uuid::Uuid;

use crate::helpers::{
    eventually, hookgate_check_config, http_client, sign, test_config_toml, Node, RedisPrefix, TempConfig, TestDb,
};
use crate::receiver::Receiver;

const ADMIN_TOKEN: &str = "otel-test-write-token-0001";
const NODE_ID: &str = "otel-node-7";

/// One span as the collector decoded it, with its resource's attributes.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: `POST /v1/traces`, protobuf.
struct Collector {
    base: String,
    spans: Arc<Mutex<Vec<Exported>>>,
}

async fn receive_traces(body: Bytes, spans: web::Data<Mutex<Vec<Exported>>>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut got = spans.lock().unwrap();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| text(&r.attributes)).unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Exported {
                name: span.name,
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent: hex::encode(&span.parent_span_id),
                links: span.links.iter().map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id))).collect(),
                attributes: text(&span.attributes),
                resource: resource.clone(),
            });
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

impl Collector {
    fn start() -> Self {
        let spans: Arc<Mutex<Vec<Exported>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(spans.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(receive_traces))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap();
        actix_rt::spawn(server.run());
        Self { base: format!("http://127.0.0.1:{port}"), spans }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for the one span that `pick` selects.
    async fn wait_for(&self, what: &str, pick: impl Fn(&Exported) -> bool) -> Exported {
        eventually(what, Duration::from_secs(60), || {
            let found = self.spans().into_iter().find(|s| pick(s));
            async move { found }
        })
        .await
    }
}

/// `bytes` random bytes (at most 16) as lower-case hex.
fn random_hex(bytes: usize) -> String {
    Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

async fn ingest(http: &awc::Client, base: &str, body: &str, key: &str, traceparent: Option<&str>) -> Uuid {
    let mut req = http
        .post(format!("{base}/ingest/hmac"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Signature", sign(body.as_bytes())))
        .insert_header(("X-Request-Id", key));
    if let Some(tp) = traceparent {
        req = req.insert_header(("traceparent", tp));
    }
    let answer = crate::helpers::answer(req.send_body(body.to_owned()).await.unwrap()).await;
    assert_eq!(answer.status, 202, "{:?}", answer.json);
    answer.id()
}

async fn replay(http: &awc::Client, base: &str, event: Uuid) {
    let resp = http
        .post(format!("{base}/admin/v1/events/{event}/replay"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

fn show(trace: &[&Exported]) -> String {
    trace
        .iter()
        .map(|s| {
            format!(
                "  {:<8} trace {} span {} parent {} links {:?}\n",
                s.name,
                s.trace_id,
                s.span_id,
                if s.parent.is_empty() { "(root)" } else { &s.parent },
                s.links
            )
        })
        .collect()
}

#[actix_rt::test]
async fn each_event_is_one_trace_from_ingest_through_flush_links_to_every_attempt() {
    let collector = Collector::start();
    let sink = Receiver::start(vec![], None);
    let config = TempConfig::new(&format!(
        r#"{}
        [[destinations]]
        slug = "sink"
        url = "{}"
        [[routes]]
        slug = "hmac-to-sink"
        source = "hmac"
        destination = "sink"
        [admin]
        tokens = [{{ token = "{ADMIN_TOKEN}", role = "write" }}]
        [telemetry]
        otlp_endpoint = "{}"
        sampling_ratio = 1.0
        "#,
        test_config_toml(),
        sink.url,
        collector.base
    ));
    let db = TestDb::create().await;
    let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
    let _redis = RedisPrefix(prefix.clone());
    let node = Node::start(
        &config.0,
        &db.url(),
        &prefix,
        &[("HOOKGATE_SERVER__NODE_ID", NODE_ID), ("RUST_LOG", "info,hookgate_core::internal_events=debug")],
    )
    .await;
    let http = http_client();

    // Event A continues the producer's trace; event B starts one of its own.
    let (producer_trace, producer_span) = (random_hex(16), random_hex(8));
    let incoming = format!("00-{producer_trace}-{producer_span}-01");
    let a = ingest(&http, &node.base, r#"{"n":"a"}"#, "otel-a", Some(&incoming)).await;
    let b = ingest(&http, &node.base, r#"{"n":"b"}"#, "otel-b", None).await;
    let delivered = sink.wait_for(2).await;

    let ingest_a = collector.wait_for("A's ingest span", |s| s.name == "ingest" && s.trace_id == producer_trace).await;
    assert_eq!(ingest_a.parent, producer_span, "the ingest span's parent is the producer's span");
    let attempt_of =
        |event: Uuid| move |s: &Exported| s.name == "attempt" && s.attributes["event"] == event.to_string();
    let attempt_a = collector.wait_for("A's attempt span", attempt_of(a)).await;
    assert_eq!((&attempt_a.trace_id, &attempt_a.parent), (&producer_trace, &ingest_a.span_id), "a child of ingest");
    assert_eq!(attempt_a.attributes["http.response.status_code"], "200");
    let flush_a = collector
        .wait_for("the flush that committed A", |s| {
            s.name == "flush" && s.links.contains(&(producer_trace.clone(), ingest_a.span_id.clone()))
        })
        .await;
    assert_ne!(flush_a.trace_id, producer_trace, "the flush has a trace of its own, linked");

    let attempt_b = collector.wait_for("B's attempt span", attempt_of(b)).await;
    let ingest_b = collector.wait_for("B's ingest span", |s| s.name == "ingest" && s.span_id == attempt_b.parent).await;
    assert_eq!(ingest_b.parent, "", "without a producer context, the ingest span is the trace's root");
    assert_eq!(attempt_b.trace_id, ingest_b.trace_id);
    assert_ne!(ingest_b.trace_id, producer_trace);
    let flush_b = collector
        .wait_for("the flush that committed B", |s| {
            s.name == "flush" && s.links.contains(&(ingest_b.trace_id.clone(), ingest_b.span_id.clone()))
        })
        .await;

    // The outbound traceparent carries the attempt span's context.
    let outbound = |body: &str| {
        let req = delivered.iter().find(|r| &r.body[..] == body.as_bytes()).expect("delivered");
        req.header("traceparent").unwrap().to_owned()
    };
    assert_eq!(outbound(r#"{"n":"a"}"#), format!("00-{producer_trace}-{}-01", attempt_a.span_id));
    assert_eq!(outbound(r#"{"n":"b"}"#), format!("00-{}-{}-01", ingest_b.trace_id, attempt_b.span_id));

    // What the event stores is its ingest span's context.
    let pg = crate::helpers::connect(&db.url()).await;
    let stored: Option<String> =
        pg.query_one("SELECT traceparent FROM events WHERE id = $1", &[&a]).await.unwrap().get(0);
    assert_eq!(stored, Some(format!("00-{producer_trace}-{}-01", ingest_a.span_id)));

    // Every span names the service and the node.
    for span in collector.spans() {
        assert_eq!(span.resource.get("service.name").map(String::as_str), Some("hookgate"), "{span:?}");
        assert_eq!(span.resource.get("service.instance.id").map(String::as_str), Some(NODE_ID), "{span:?}");
    }

    // A replay goes the claim path, later: its attempt joins the event's trace all the same.
    replay(&http, &node.base, a).await;
    let replayed_a =
        collector.wait_for("A's replayed attempt", |s| attempt_of(a)(s) && s.span_id != attempt_a.span_id).await;
    assert_eq!((&replayed_a.trace_id, &replayed_a.parent), (&producer_trace, &ingest_a.span_id));
    // An event stored without a context (as before it was stored) gets the trace its id names.
    pg.execute("UPDATE events SET traceparent = NULL WHERE id = $1", &[&b]).await.unwrap();
    replay(&http, &node.base, b).await;
    let replayed_b =
        collector.wait_for("B's replayed attempt", |s| attempt_of(b)(s) && s.span_id != attempt_b.span_id).await;
    assert_eq!(replayed_b.trace_id, b.simple().to_string(), "trace id = the event id");
    let delivered = sink.wait_for(4).await;
    let last_b = delivered.iter().rev().find(|r| &r.body[..] == br#"{"n":"b"}"#).unwrap();
    assert_eq!(last_b.header("traceparent"), Some(format!("00-{}-{}-01", b.simple(), replayed_b.span_id).as_str()));

    // Log lines carry the trace: the access line of A's request, and the attempt's own line.
    let lines = node.log_lines();
    let access = lines
        .iter()
        .find(|l| {
            l["target"] == "hookgate::access" && l["path"] == "/ingest/{source}" && l["trace_id"] == *producer_trace
        })
        .unwrap_or_else(|| panic!("no access line with A's trace id in {lines:#?}"));
    assert_eq!(access["status"], 202);
    let attempted = lines
        .iter()
        .find(|l| l["message"] == "Delivery attempted." && l["span_id"] == *attempt_a.span_id)
        .unwrap_or_else(|| panic!("no attempt line with A's attempt span in {lines:#?}"));
    assert_eq!(attempted["trace_id"], *producer_trace);

    let spans = collector.spans();
    for (event, trace, flush) in [(a, &producer_trace, &flush_a), (b, &ingest_b.trace_id, &flush_b)] {
        let mut members: Vec<&Exported> = spans.iter().filter(|s| &s.trace_id == trace).collect();
        members.push(flush);
        println!("event {event}: trace {trace}\n{}", show(&members));
    }
    println!("event {b} after its context was removed, replayed:\n{}", show(&[&replayed_b]));
}

#[test]
fn check_config_refuses_bad_telemetry_settings_with_the_reason() {
    let cases = [
        ("[telemetry]\nsampling_ratio = 1.5", vec![], "telemetry.sampling_ratio must be between 0 and 1, not 1.5"),
        ("", vec![("HOOKGATE_TELEMETRY__SAMPLING_RATIO", "-1")], "telemetry.sampling_ratio must be between 0 and 1"),
        (
            "[telemetry]\notlp_endpoint = \"collector:4318\"",
            vec![],
            "telemetry.otlp_endpoint must be an http:// or https:// URL with a host",
        ),
        ("", vec![("HOOKGATE_TELEMETRY__OTLP_ENDPOINT", "http://")], "telemetry.otlp_endpoint is not a valid URL"),
    ];
    for (extra, env, reason) in cases {
        let out = hookgate_check_config(&format!("{}\n{extra}", test_config_toml()), &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?} {env:?}: {stderr}");
        assert!(stderr.contains(reason), "{extra:?} {env:?} gave {stderr:?}, expected {reason:?}");
    }
    let good = "[telemetry]\notlp_endpoint = \"https://otel.internal:4318\"\nsampling_ratio = 0.1";
    let out = hookgate_check_config(&format!("{}\n{good}", test_config_toml()), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("traces: exported to https://otel.internal:4318/v1/traces, sampling ratio 0.1"),
        "{stdout}"
    );
}
