//! What an operator watches: per-destination metrics, the README's metric list against a real `/metrics`, and the
//! operators' own listener (`server.admin_port`).

use std::collections::BTreeSet;
use std::time::Duration;

use hookgate_core::state::DestinationState;

use crate::admin::{with_tokens, WRITE};
use crate::helpers::{destination, eventually, http_client, route, sign, spawn_app_with, TestApp};
use crate::receiver::Receiver;

/// `/metrics` of `app` as text.
async fn scrape(app: &TestApp) -> String {
    let mut resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    String::from_utf8(resp.body().limit(1 << 24).await.unwrap().to_vec()).unwrap()
}

/// The value of the first series of `name` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_rt::test]
async fn per_destination_metrics_show_attempts_latency_backlog_and_the_oldest_pending_age() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        s.server.metrics_destination_interval_secs = 1;
        s.destinations.push(destination("obs-live", &url));
        let mut paused = destination("obs-paused", &url);
        paused.state = DestinationState::Paused;
        s.destinations.push(paused);
        s.routes.push(route("to-live", "hmac", "obs-live"));
        s.routes.push(route("to-paused", "hmac", "obs-paused"));
    })
    .await;
    for i in 0..3 {
        let answer = app.post_signed(format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("obs-{i}")).await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    rx.wait_for(3).await;

    // Attempts and their latency, by destination and outcome.
    let live = r#"destination="obs-live""#;
    let text = eventually("the paused destination's backlog sampled", Duration::from_secs(30), || async {
        let text = scrape(&app).await;
        let backlog = value(&text, "hookgate_destination_backlog", &[r#"destination="obs-paused""#]);
        let age = value(&text, "hookgate_destination_oldest_pending_seconds", &[r#"destination="obs-paused""#]);
        (backlog == Some(3.0) && age.is_some_and(|a| a > 0.0)).then_some(text)
    })
    .await;
    let success = r#"outcome="success""#;
    assert_eq!(value(&text, "hookgate_delivery_attempts_total", &[live, success]), Some(3.0), "{text}");
    assert_eq!(value(&text, "hookgate_delivery_attempt_seconds_count", &[live, success]), Some(3.0), "{text}");
    assert_eq!(value(&text, "hookgate_destination_backlog", &[live]), Some(0.0), "{text}");
    assert_eq!(value(&text, "hookgate_destination_oldest_pending_seconds", &[live]), Some(0.0), "{text}");

    // Resumed, the backlog drains and its gauges read zero again (not their last value).
    let id: uuid::Uuid =
        app.db.query_one("SELECT id FROM destinations WHERE slug = 'obs-paused'", &[]).await.unwrap().get(0);
    let resumed = app.admin("POST", &format!("/destinations/{id}/resume"), Some(WRITE), None).await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    rx.wait_for(6).await;
    eventually("the drained backlog sampled", Duration::from_secs(30), || async {
        let text = scrape(&app).await;
        let paused = r#"destination="obs-paused""#;
        (value(&text, "hookgate_destination_backlog", &[paused]) == Some(0.0)
            && value(&text, "hookgate_destination_oldest_pending_seconds", &[paused]) == Some(0.0))
        .then_some(())
    })
    .await;

    // Every metric family /metrics exposes is in the README (the static check in core covers those recorded in
    // code; this one also covers what the exporter and the process collector add).
    let text = scrape(&app).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let families: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    assert!(families.contains("hookgate_destination_backlog") && families.contains("process_open_fds"), "{families:?}");
    let missing: Vec<&&str> = families.iter().filter(|f| !readme.contains(&format!("`{f}"))).collect();
    assert!(missing.is_empty(), "README.md does not list {missing:?}");
}

#[actix_rt::test]
async fn admin_port_serves_metrics_and_the_admin_api_and_the_public_port_does_not() {
    let app = spawn_app_with(|s| {
        with_tokens(s);
        s.server.admin_port = Some(0);
    })
    .await;
    let admin_port = app.admin_port.expect("an admin listener");
    assert_ne!(admin_port, app.port);
    let http = http_client();
    let get = |port: u16, path: &str, token: bool| {
        let mut req = http.get(format!("http://127.0.0.1:{port}{path}"));
        if token {
            req = req.insert_header(("Authorization", format!("Bearer {WRITE}")));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let post_event = |port: u16| {
        let body = br#"{"split":true}"#;
        let req = http
            .post(format!("http://127.0.0.1:{port}/ingest/hmac"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(body)))
            .insert_header(("X-Request-Id", format!("split-{port}")));
        async move { req.send_body(&body[..]).await.unwrap().status().as_u16() }
    };

    // The public port: ingest and health only.
    assert_eq!(post_event(app.port).await, 202);
    assert_eq!(get(app.port, "/healthz", false).await, 200);
    assert_eq!(get(app.port, "/readyz", false).await, 200);
    assert_eq!(get(app.port, "/metrics", false).await, 404);
    assert_eq!(get(app.port, "/admin/v1/sources", true).await, 404);
    assert_eq!(get(app.port, "/admin/v1/openapi.json", false).await, 404);

    // The operators' port: metrics, the admin API (still behind its tokens) and health; no ingest.
    assert_eq!(get(admin_port, "/metrics", false).await, 200);
    assert_eq!(get(admin_port, "/admin/v1/sources", true).await, 200);
    assert_eq!(get(admin_port, "/admin/v1/sources", false).await, 401);
    assert_eq!(get(admin_port, "/healthz", false).await, 200);
    assert_eq!(get(admin_port, "/readyz", false).await, 200);
    assert_eq!(post_event(admin_port).await, 404);
}
