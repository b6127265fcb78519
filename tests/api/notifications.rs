//! Operational notifications: hookgate's own Standard Webhooks events about its destinations (disabled, circuit
//! opened and closed, dead deliveries, backlog age), delivered through its own engine to the notification
//! destination, once across replicas, never about the notification destination itself.

use std::time::Duration;

use hookgate::config::Settings;
use hookgate::startup::Application;
use hookgate_core::catalog::DestinationSpec;
use hookgate_core::retry::RetryPolicy;
use hookgate_core::state::DestinationState;
use serde_json::{json, Value};

use crate::admin::{with_tokens, WRITE};
use crate::helpers::{destination, eventually, route, spawn_app_with, TestApp};
use crate::receiver::{Received, Receiver, Reply};

/// Events stored under hookgate's own source, by type.
const STORED: &str = "SELECT count(*) FROM events e JOIN sources s ON s.id = e.source_id
                      WHERE s.slug = 'hookgate' AND e.type = $1";

/// Turns notifications on, to a destination `ops` at `url` signed with `secret`, with fast timers.
fn notify_to(s: &mut Settings, url: &str, secret: &str) {
    let mut ops = destination("ops", url);
    ops.signing_secrets = vec![secret.to_owned()];
    s.destinations.push(ops);
    s.notifications.destination = Some("ops".into());
    s.notifications.dead_window_secs = 1;
    s.notifications.backlog_check_secs = 1;
}

/// A destination that retries every 50 ms, `attempts` times in all.
fn quick(slug: &str, url: &str, attempts: u32) -> DestinationSpec {
    let mut d = destination(slug, url);
    d.retry = RetryPolicy { delays_ms: vec![50], max_attempts: attempts, jitter: 0.0 };
    d
}

/// The body of a notification request, after checking its Standard Webhooks signature with the reference library.
fn verified(req: &Received, secret: &str) -> Value {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, req.header(name).unwrap_or_else(|| panic!("no {name}")).parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret).unwrap().verify(&req.body, &headers).expect("the signature verifies");
    assert_eq!(req.header("content-type"), Some("application/json"));
    serde_json::from_slice(&req.body).expect("a JSON body")
}

/// Every notification of `kind` the receiver got (signatures verified), once per `webhook-id`.
fn received(rx: &Receiver, secret: &str, kind: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    rx.requests()
        .iter()
        .filter(|r| seen.insert(r.header("webhook-id").unwrap_or_default().to_owned()))
        .map(|r| verified(r, secret))
        .filter(|b| b["type"] == kind)
        .collect()
}

/// Waits until the receiver got a notification of `kind` about `slug`; answers every such one.
async fn wait_for(rx: &Receiver, secret: &str, kind: &str, slug: &str) -> Vec<Value> {
    eventually(&format!("a {kind} notification about {slug}"), Duration::from_secs(60), || {
        let got: Vec<Value> =
            received(rx, secret, kind).into_iter().filter(|b| b["data"]["destination"]["slug"] == slug).collect();
        async move { (!got.is_empty()).then_some(got) }
    })
    .await
}

async fn stored(app: &TestApp, kind: &str) -> i64 {
    app.db.query_one(STORED, &[&kind]).await.unwrap().get(0)
}

/// Waits until PostgreSQL's clock is `secs` past the moment `sql` (one timestamptz) names.
async fn wait_past(app: &TestApp, sql: &str, secs: f64) {
    let query = format!("SELECT EXTRACT(EPOCH FROM now() - ({sql}))::float8 >= $1");
    eventually(&format!("{secs} s past {sql}"), Duration::from_secs(60), || async {
        app.db.query_one(&query, &[&secs]).await.unwrap().get::<_, Option<bool>>(0).unwrap_or(false).then_some(())
    })
    .await
}

#[actix_rt::test]
async fn a_destination_answering_410_is_disabled_and_the_operator_is_told_once() {
    let ops = Receiver::start(vec![], None);
    let gone = Receiver::start(vec![], Some(Reply::Status(410)));
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, gone_url, key) = (ops.url.clone(), gone.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        with_tokens(s);
        s.destinations.push(destination("gone", &gone_url));
        s.routes.push(route("r", "hmac", "gone"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "e-1").await.status, 202);

    let got = wait_for(&ops, &secret, "destination.disabled", "gone").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body = &got[0];
    let id: uuid::Uuid = app.db.query_one("SELECT id FROM destinations WHERE slug = 'gone'", &[]).await.unwrap().get(0);
    assert_eq!(body["data"]["destination"]["id"], id.to_string());
    assert_eq!(body["data"]["reason"], "auto: 410 Gone");
    assert_eq!(body["data"]["gone"], true);
    assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    assert_eq!(stored(&app, "destination.disabled").await, 1, "stored as an event of type destination.disabled");

    // Stored like any event: listed by the admin API under the `hookgate` source with its one delivery, and
    // replayable to the notification destination.
    let listed = app.admin_ok("get", "/events?source=hookgate", None).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    let event = items[0]["id"].as_str().unwrap().to_owned();
    crate::helpers::delivered_to(&app, "ops").await;
    let replayed = app.admin_ok("post", &format!("/events/{event}/replay"), Some(json!({}))).await;
    assert_eq!(replayed["deliveries"].as_array().unwrap().len(), 1, "{replayed}");
    let again = eventually("the replayed notification", Duration::from_secs(60), || {
        let got = ops.requests();
        async move { (got.len() >= 2).then_some(got) }
    })
    .await;
    assert_eq!(verified(&again[1], &secret), *body, "the same notification, signed again");
}

#[actix_rt::test]
async fn deliveries_made_dead_are_counted_in_one_notification_per_window_with_their_count() {
    let ops = Receiver::start(vec![], None);
    let failing = Receiver::start(vec![], Some(Reply::Status(500)));
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, failing_url, key) = (ops.url.clone(), failing.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        s.notifications.dead_window_secs = 3;
        s.destinations.push(quick("failing", &failing_url, 2));
        s.routes.push(route("r", "hmac", "failing"));
    })
    .await;
    for i in 0..3 {
        assert_eq!(app.post_signed(format!(r#"{{"n":{i}}}"#).as_bytes(), &format!("d-{i}")).await.status, 202);
    }
    app.wait_count("three dead deliveries", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 3).await;

    let got = eventually("delivery.dead notifications counting 3", Duration::from_secs(60), || {
        let got: Vec<Value> = received(&ops, &secret, "delivery.dead");
        let total: u64 = got.iter().map(|b| b["data"]["count"].as_u64().unwrap()).sum();
        async move { (total >= 3).then_some(got) }
    })
    .await;
    let total: u64 = got.iter().map(|b| b["data"]["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 3, "{got:?}");
    // Three deaths within moments of each other: one window, or two when they straddle its end; never one each.
    assert!(got.len() <= 2, "aggregated per window: {got:?}");
    for body in &got {
        assert_eq!(body["data"]["destination"]["slug"], "failing");
        assert_eq!(body["data"]["by_reason"]["exhausted"], body["data"]["count"]);
        assert_eq!(body["data"]["window"]["seconds"], 3);
    }

    // The metric counts them by destination and reason.
    let mut resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(resp.body().limit(1 << 24).await.unwrap().to_vec()).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("hookgate_deliveries_dead_total{")
                && l.contains(r#"destination="failing""#)
                && l.contains(r#"reason="exhausted""#)
        })
        .unwrap_or_else(|| panic!("no hookgate_deliveries_dead_total for failing in /metrics"));
    assert_eq!(line.rsplit(' ').next(), Some("3"), "{line}");
}

#[actix_rt::test]
async fn a_circuit_that_opens_and_recovers_is_told_opened_then_closed() {
    let ops = Receiver::start(vec![], None);
    // Two failures open the circuit; the probe after the open period succeeds.
    let flaky = Receiver::start(vec![Reply::Status(500), Reply::Status(500)], None);
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, flaky_url, key) = (ops.url.clone(), flaky.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        s.delivery.circuit.failure_threshold = 2;
        s.delivery.circuit.open_initial_ms = 300;
        s.delivery.circuit.open_secs = 1;
        s.delivery.circuit.ramp_initial = 1;
        s.delivery.circuit.ramp_max = 1;
        s.destinations.push(quick("flaky", &flaky_url, 100));
        s.routes.push(route("r", "hmac", "flaky"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "c-1").await.status, 202);

    let opened = wait_for(&ops, &secret, "destination.circuit_opened", "flaky").await;
    let closed = wait_for(&ops, &secret, "destination.circuit_closed", "flaky").await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(closed.len(), 1, "{closed:?}");
    let circuit = &opened[0]["data"]["circuit"];
    assert_eq!(circuit["scope"], "cluster");
    assert_eq!(circuit["open_period_ms"], 300);
    assert_eq!(circuit["opens_since_closed"], 1);
    assert!(circuit["opened_at_ms"].as_i64().is_some_and(|ms| ms > 0), "{circuit}");
    assert_eq!(closed[0]["data"]["circuit"]["opened_at_ms"], circuit["opened_at_ms"], "the close names its open");
    crate::helpers::delivered_to(&app, "flaky").await;
}

#[actix_rt::test]
async fn a_backlog_older_than_its_threshold_is_told_once_per_repeat_period() {
    let ops = Receiver::start(vec![], None);
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, key) = (ops.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        s.notifications.backlog_age_overrides.insert("paused".into(), 1);
        // One repeat period for the whole test, wherever it falls (periods are counted from the Unix epoch).
        s.notifications.backlog_repeat_secs = 1_000_000_000;
        let mut d = destination("paused", "http://127.0.0.1:9/never");
        d.state = DestinationState::Paused;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "paused"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "b-1").await.status, 202);

    let got = wait_for(&ops, &secret, "backlog.age_exceeded", "paused").await;
    let data = &got[0]["data"];
    assert_eq!(data["threshold_secs"], 1);
    assert_eq!(data["pending"], 1);
    assert!(data["oldest_pending_age_secs"].as_f64().is_some_and(|a| a >= 1.0), "{data}");
    // Several checks later (one a second), still one within the repeat period (an hour).
    wait_past(&app, "SELECT min(created_at) FROM deliveries WHERE state = 'pending'", 5.0).await;
    assert_eq!(stored(&app, "backlog.age_exceeded").await, 1);
    assert_eq!(received(&ops, &secret, "backlog.age_exceeded").len(), 1);
}

#[actix_rt::test]
async fn nothing_is_told_about_the_notification_destination_itself_so_its_failures_never_loop() {
    // The notification destination fails every attempt: its deliveries die, its circuit opens.
    let ops = Receiver::start(vec![], Some(Reply::Status(500)));
    let gone = Receiver::start(vec![], Some(Reply::Status(410)));
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, gone_url, key) = (ops.url.clone(), gone.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        let ops = s.destinations.iter_mut().find(|d| d.slug == "ops").unwrap();
        ops.retry = RetryPolicy { delays_ms: vec![50], max_attempts: 3, jitter: 0.0 };
        s.delivery.circuit.failure_threshold = 2;
        s.delivery.circuit.open_initial_ms = 100;
        s.notifications.backlog_age_overrides.insert("ops".into(), 1);
        s.destinations.push(destination("gone", &gone_url));
        s.routes.push(route("r", "hmac", "gone"));
        // The notification destination's own backlog, too, with events routed to it.
        s.routes.push(route("to-ops", "open", "ops"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "l-1").await.status, 202);
    let a = app.http.post(app.url("/ingest/open")).send_body("anything").await.unwrap();
    assert_eq!(a.status().as_u16(), 202);

    // The one notification (about `gone`) is attempted and dies at the notification destination.
    let dead_at = "SELECT max(d.updated_at) FROM deliveries d JOIN destinations t ON t.id = d.destination_id
                   WHERE t.slug = 'ops' AND d.state = 'dead'";
    app.wait_count(
        "both deliveries to ops dead",
        "SELECT count(*) FROM deliveries d JOIN destinations t ON t.id = d.destination_id
         WHERE t.slug = 'ops' AND d.state = 'dead'",
        2,
    )
    .await;
    let notified = ops
        .requests()
        .iter()
        .filter(|r| serde_json::from_slice::<Value>(&r.body).is_ok_and(|b| b["type"] == "destination.disabled"))
        .count();
    assert_eq!(notified, 3, "the notification about `gone`: tried three times, then dead");
    // Past several dead windows and backlog checks: nothing but that one notification was ever stored.
    wait_past(&app, dead_at, 4.0).await;
    let kinds: Vec<(Option<String>, i64)> = app
        .db
        .query(
            "SELECT e.type, count(*) FROM events e JOIN sources s ON s.id = e.source_id
             WHERE s.slug = 'hookgate' GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kinds, vec![(Some("destination.disabled".to_owned()), 1)]);
}

#[actix_rt::test]
async fn two_replicas_seeing_the_same_happenings_store_one_notification_each() {
    let ops = Receiver::start(vec![], None);
    let gone = Receiver::start(vec![], Some(Reply::Status(410)));
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, gone_url, key) = (ops.url.clone(), gone.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        s.server.node_id = Some("a".into());
        notify_to(s, &ops_url, &key);
        s.notifications.backlog_age_overrides.insert("paused".into(), 1);
        // One repeat period for the whole test, wherever it falls (periods are counted from the Unix epoch).
        s.notifications.backlog_repeat_secs = 1_000_000_000;
        let mut d = destination("paused", "http://127.0.0.1:9/never");
        d.state = DestinationState::Paused;
        s.destinations.push(d);
        s.destinations.push(destination("gone", &gone_url));
        s.routes.push(route("to-paused", "hmac", "paused"));
        s.routes.push(route("to-gone", "hmac", "gone"));
    })
    .await;
    // The second replica: the same configuration and database, another node id.
    let mut settings = app.settings.clone();
    settings.server.node_id = Some("b".into());
    let replica = Application::build(settings).await.expect("build the second replica");
    let replica_port = replica.port();
    actix_rt::spawn(replica.run_until_stopped());

    // One event through each replica: both attempt `gone` (410), both check the backlog of `paused`.
    assert_eq!(app.post_signed(br#"{"n":1}"#, "r-1").await.status, 202);
    let body = br#"{"n":2}"#;
    let resp = app
        .http
        .post(format!("http://127.0.0.1:{replica_port}/ingest/hmac"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Signature", crate::helpers::sign(body)))
        .insert_header(("X-Request-Id", "r-2"))
        .send_body(body.to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    wait_for(&ops, &secret, "destination.disabled", "gone").await;
    wait_for(&ops, &secret, "backlog.age_exceeded", "paused").await;
    // Several backlog checks by each replica later: one of each.
    wait_past(&app, "SELECT min(created_at) FROM deliveries WHERE state = 'pending'", 5.0).await;
    assert_eq!(stored(&app, "destination.disabled").await, 1);
    assert_eq!(stored(&app, "backlog.age_exceeded").await, 1);
    assert_eq!(received(&ops, &secret, "destination.disabled").len(), 1);
    assert_eq!(received(&ops, &secret, "backlog.age_exceeded").len(), 1);
}

#[actix_rt::test]
async fn the_hookgate_source_is_not_ingestible_nor_editable() {
    let ops = Receiver::start(vec![], None);
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (ops_url, key) = (ops.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        notify_to(s, &ops_url, &key);
        with_tokens(s);
    })
    .await;

    // Nothing is ingested under the reserved slug.
    let resp = app.http.post(app.url("/ingest/hookgate")).send_body(r#"{"type":"forged"}"#).await.unwrap();
    let a = crate::helpers::answer(resp).await;
    a.assert_problem(404, "unknown-source");
    assert_eq!(app.event_count().await, 0);

    // The admin API shows hookgate's own source and route, and changes neither.
    let sources = app.admin_ok("get", "/sources", None).await;
    let own = sources.as_array().unwrap().iter().find(|s| s["slug"] == "hookgate").expect("the hookgate source");
    assert_eq!(own["enabled"], false);
    let id = own["id"].as_str().unwrap().to_owned();
    let a = app.admin("put", &format!("/sources/{id}"), Some(WRITE), Some(json!({"slug": "hookgate"}))).await;
    a.assert_problem(409, "declared-in-config");
    assert!(a.json["detail"].as_str().unwrap().contains("hookgate's own"), "{a:?}");
    app.admin("delete", &format!("/sources/{id}"), Some(WRITE), None).await.assert_problem(409, "declared-in-config");
    let routes = app.admin_ok("get", "/routes", None).await;
    let own = routes.as_array().unwrap().iter().find(|r| r["slug"] == "hookgate").expect("the hookgate route");
    assert_eq!(own["destination"], "ops");
    let route_id = own["id"].as_str().unwrap().to_owned();
    let edit = json!({"slug": "hookgate", "source": "hmac", "destination": "ops"});
    app.admin("put", &format!("/routes/{route_id}"), Some(WRITE), Some(edit))
        .await
        .assert_problem(422, "validation-failed");
    app.admin("delete", &format!("/routes/{route_id}"), Some(WRITE), None)
        .await
        .assert_problem(409, "declared-in-config");

    // Nor can anyone create one of their own under that slug, or route from it.
    let a = app.admin("post", "/sources", Some(WRITE), Some(json!({"slug": "hookgate"}))).await;
    assert_eq!(a.status, 422, "{a:?}");
    let a = app
        .admin(
            "post",
            "/routes",
            Some(WRITE),
            Some(json!({"slug": "steal", "source": "hookgate", "destination": "ops"})),
        )
        .await;
    assert_eq!(a.status, 422, "{a:?}");
}

#[actix_rt::test]
async fn notifications_to_a_destination_that_does_not_exist_fail_the_start_with_the_reason() {
    let db = crate::helpers::TestDb::create().await;
    let mut settings = Settings::from_toml(&crate::helpers::test_config_toml()).unwrap();
    settings.database.url = db.url().into();
    settings.redis.url = crate::helpers::redis_url().into();
    settings.redis.key_prefix = format!("hgtest-{}", uuid::Uuid::new_v4().simple());
    settings.notifications.destination = Some("nowhere".into());
    let error = Application::build(settings).await.err().expect("the start fails");
    let text = format!("{error:#}");
    assert!(text.contains("notifications.destination = \"nowhere\" names no destination"), "{text}");
}
