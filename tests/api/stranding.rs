//! Delivery never strands an acknowledged event: a bad row, a slow route program, retention, a receiver that asks
//! for no wait and a failing claim each end visibly, and never stop delivery for the others.

use std::time::Duration;

use hookgate::config::{AdminRole, AdminToken};
use hookgate_actors::janitor::RunNow;
use hookgate_core::delivery::ORPHAN_REASON;
use hookgate_core::delivery::SKIPPED_AT_DELIVERY;
use hookgate_store::locks::CLAIM_LOCK;
use hookgate_store::maintenance::EXPIRED_REASON;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{destination, eventually, route, spawn_app_with, TestApp};
use crate::receiver::{Receiver, Reply};

const WRITE: &str = "stranding-write-token-0123456789";
const DELIVERED: &str = "SELECT count(*) FROM deliveries WHERE state = 'delivered'";

fn with_sink(url: String) -> impl FnOnce(&mut hookgate::config::Settings) {
    move |s| {
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("hmac-to-sink", "hmac", "sink"));
        s.admin.tokens = vec![AdminToken { token: WRITE.to_owned().into(), role: AdminRole::Write }];
    }
}

async fn set_destination_state(app: &TestApp, state: &str) {
    app.db
        .batch_execute(&format!(
            "UPDATE destinations SET state = '{state}' WHERE slug = 'sink'; NOTIFY hookgate_catalog;"
        ))
        .await
        .unwrap();
}

async fn scheduler_report(app: &TestApp) -> serde_json::Value {
    let r = app.get_json("/readyz").await;
    r.json["actors"].as_array().unwrap().iter().find(|a| a["name"] == "scheduler").cloned().expect("scheduler")
}

#[actix_rt::test]
async fn a_delivery_whose_event_is_gone_ends_dead_and_delivery_goes_on_for_the_others() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(with_sink(rx.url.clone())).await;
    set_destination_state(&app, "paused").await;
    let orphan = app.post_signed(br#"{"n":0}"#, "orphan").await;
    assert_eq!(orphan.status, 202);
    app.db.execute("DELETE FROM events WHERE id = $1", &[&orphan.id()]).await.unwrap();
    set_destination_state(&app, "active").await;
    for n in 1..=10 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(app.post_signed(body.as_bytes(), &format!("after-{n}")).await.status, 202);
    }

    app.wait_count("the 10 others delivered", DELIVERED, 10).await;
    let (state, error): (String, Option<String>) =
        eventually("the orphan to be dead", Duration::from_secs(30), || async {
            let r = app
                .db
                .query_one(
                    "SELECT d.state, d.last_error FROM deliveries d JOIN event_keys k ON k.event_id = d.event_id
                 WHERE k.idempotency_key = 'orphan'",
                    &[],
                )
                .await
                .unwrap();
            let state: String = r.get(0);
            (state != "pending").then(|| (state, r.get(1)))
        })
        .await;
    assert_eq!((state.as_str(), error.as_deref()), ("dead", Some(ORPHAN_REASON)));
    assert_eq!(rx.requests().len(), 10, "only the stored events were sent");

    let scheduler = scheduler_report(&app).await;
    assert_eq!(scheduler["panics"], 0, "{scheduler}");
    assert_eq!(scheduler["state"], "running", "{scheduler}");
    let ready = app.get_json("/readyz").await;
    assert_eq!((ready.status, ready.json["delivery"].as_str()), (200, Some("running")), "{:?}", ready.json);
}

#[actix_rt::test]
async fn a_route_program_that_overruns_its_time_bound_is_deferred_to_delivery_never_failed() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        // Any program misses a 1 ms bound when it counts to a million; it ends soon after, keeping no core.
        s.delivery.jq_timeout_ms = 1;
        let mut d = destination("sink", &url);
        d.retry.delays_ms = vec![60_000];
        s.destinations.push(d);
        let mut slow = route("slow", "hmac", "sink");
        slow.filter = Some("last(range(1000000)) | true".into());
        s.routes.push(slow);
        s.destinations.push(destination("plain-sink", &url));
        s.routes.push(route("plain", "open", "plain-sink"));
    })
    .await;

    // Acknowledged and stored: the time-out decides nothing, the delivery waits for its evaluation.
    let a = app.post_signed(br#"{"n":1}"#, "slow-1").await;
    assert_eq!(a.status, 202, "{:?}", a.json);
    let (state, needs_routing): (String, bool) = {
        let r = app.db.query_one("SELECT state, needs_routing FROM deliveries", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((state.as_str(), needs_routing), ("pending", true));
    // Evaluated again at delivery, where it overruns again: a try of kind route_timeout on the retry schedule.
    app.wait_count("the deferred try recorded", "SELECT count(*) FROM attempts WHERE error_kind = 'route_timeout'", 1)
        .await;
    let r = app.db.query_one("SELECT state, attempts, needs_routing FROM deliveries", &[]).await.unwrap();
    assert_eq!((r.get::<_, String>(0).as_str(), r.get::<_, i32>(1), r.get::<_, bool>(2)), ("pending", 1, true));
    assert!(rx.requests().is_empty(), "nothing was sent for an undecided route");

    // Another route (another program, or none) is not affected by the slow one's budget.
    let resp = app.http.post(app.url("/ingest/open")).send_body(r#"{"plain":true}"#).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    app.wait_count("the plain route delivered", DELIVERED, 1).await;
}

#[actix_rt::test]
async fn a_deferred_route_is_evaluated_at_delivery_its_payload_kept_or_its_filter_obeyed() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("sink", &url));
        let mut shaped = route("shaped", "hmac", "sink");
        shaped.transform = Some("{n: .body.n, type: .type, source: .source}".into());
        s.routes.push(shaped);
        let mut picky = route("picky", "open", "sink");
        picky.filter = Some(".body.n > 100".into());
        s.routes.push(picky);
    })
    .await;
    set_destination_state(&app, "paused").await;
    assert_eq!(app.post_signed(br#"{"n":7}"#, "deferred-1").await.status, 202);
    let resp = app.http.post(app.url("/ingest/open")).send_body(r#"{"n":8}"#).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    // As if both evaluations had overrun at ingest: the shaped delivery loses its payload, and the picky route
    // (whose filter refused the event at ingest) gets a deferred delivery.
    app.db
        .batch_execute(
            "UPDATE deliveries SET needs_routing = true, payload = NULL;
             INSERT INTO deliveries (id, event_id, route_id, destination_id, state, needs_routing, created_at)
             SELECT gen_random_uuid(), e.id, r.id, r.destination_id, 'pending', true, e.received_at
             FROM events e JOIN routes r ON r.source_id = e.source_id WHERE r.slug = 'picky';",
        )
        .await
        .unwrap();
    set_destination_state(&app, "active").await;

    app.wait_count("the shaped delivery delivered", DELIVERED, 1).await;
    app.wait_count("the picky one cancelled", "SELECT count(*) FROM deliveries WHERE state = 'cancelled'", 1).await;
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, json!({"n": 7, "type": null, "source": "hmac"}));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let r =
        app.db.query_one("SELECT payload, needs_routing FROM deliveries WHERE state = 'delivered'", &[]).await.unwrap();
    assert_eq!(r.get::<_, Option<Vec<u8>>>(0).as_deref(), Some(&got[0].body[..]), "the payload is kept for retries");
    assert!(!r.get::<_, bool>(1));
    let r =
        app.db.query_one("SELECT last_error, attempts FROM deliveries WHERE state = 'cancelled'", &[]).await.unwrap();
    assert_eq!(r.get::<_, Option<String>>(0).as_deref(), Some(SKIPPED_AT_DELIVERY));
    assert_eq!(r.get::<_, i32>(1), 0, "no attempt was made");
}

#[actix_rt::test]
async fn a_failed_delivery_can_be_retried_once_its_route_is_fixed() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("sink", &url));
        let mut r = route("shaped", "hmac", "sink");
        r.transform = Some(r#"if .body.ok then .body else error("not ok") end"#.into());
        s.routes.push(r);
        s.admin.tokens = vec![AdminToken { token: WRITE.to_owned().into(), role: AdminRole::Write }];
    })
    .await;
    assert_eq!(app.post_signed(br#"{"ok":false}"#, "f-1").await.status, 202);
    let id: Uuid = app.db.query_one("SELECT id FROM deliveries WHERE state = 'failed'", &[]).await.unwrap().get(0);

    // Still failing: 422 naming why, nothing changes.
    let a = app.admin("post", &format!("/deliveries/{id}/retry"), Some(WRITE), None).await;
    a.assert_problem(422, "validation-failed");
    assert!(a.json["detail"].as_str().unwrap().contains("not ok"), "{:?}", a.json);

    // Fixed route: the delivery is evaluated again, pending with the new payload, then delivered.
    app.db
        .batch_execute(
            "UPDATE routes SET transform = '{fixed: .body.ok}' WHERE slug = 'shaped'; NOTIFY hookgate_catalog;",
        )
        .await
        .unwrap();
    let done = eventually("the retry to be accepted", Duration::from_secs(30), || async {
        let a = app.admin("post", &format!("/deliveries/{id}/retry"), Some(WRITE), None).await;
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(done.json["state"], "pending");
    app.wait_count("the retried delivery delivered", DELIVERED, 1).await;
    assert_eq!(&rx.requests()[0].body[..], br#"{"fixed":false}"#);

    // Delivered is final.
    let a = app.admin("post", &format!("/deliveries/{id}/retry"), Some(WRITE), None).await;
    a.assert_problem(409, "wrong-state");
}

#[actix_rt::test]
async fn retry_after_zero_never_retries_sooner_than_the_schedule_allows() {
    let rx = Receiver::start(vec![Reply::With(503, vec![("retry-after", "0".into())])], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        let mut d = destination("sink", &url);
        d.retry.delays_ms = vec![2_000];
        d.retry.jitter = 0.0;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "ra-0").await.status, 202);
    app.wait_count("the first attempt recorded", "SELECT count(*) FROM attempts", 1).await;
    let wait: f64 = app
        .db
        .query_one(
            "SELECT extract(epoch FROM d.next_attempt_at - a.started_at)::float8
             FROM deliveries d JOIN attempts a ON a.delivery_id = d.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(wait >= 1.9, "Retry-After: 0 scheduled the retry {wait} s after the attempt started");
    app.wait_count("delivered on the retry", DELIVERED, 1).await;
}

#[actix_rt::test]
async fn a_failing_claim_shows_in_the_delivery_section_but_the_node_stays_ready_for_ingest() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        // Every delivery takes the claim path (a fresh one would otherwise be handed off with no claim round).
        s.delivery.handoff = false;
        with_sink(url)(s);
    })
    .await;
    // Another session holds the cluster's claim lock: every claim round times out on its lock.
    let holder = crate::helpers::connect(&app._db.url()).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await.unwrap();
    assert_eq!(app.post_signed(br#"{"n":1}"#, "claim-1").await.status, 202);
    let report =
        app.wait_for_readiness("the delivery side to report its failure", |a| a.json["delivery"] == "degraded").await;
    assert_eq!((report.status, report.json["ready"].as_bool()), (200, Some(true)), "{:?}", report.json);
    assert_eq!(app.post_signed(br#"{"n":2}"#, "claim-2").await.status, 202, "ingest goes on");

    holder.batch_execute("COMMIT").await.unwrap();
    app.wait_count("both delivered once the lock is free", DELIVERED, 2).await;
    app.wait_for_readiness("the delivery side to recover", |a| a.json["delivery"] == "running").await;
}

#[actix_rt::test]
async fn retention_makes_unfinished_deliveries_dead_loudly_before_dropping_their_partition() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.retention.days = 30;
        with_sink(url)(s);
    })
    .await;
    app.ensure_partitions(40, 3).await;
    set_destination_state(&app, "paused").await;
    let a = app.post_signed(br#"{"old":true}"#, "old").await;
    assert_eq!(a.status, 202);
    // Age the event and its delivery into a partition past retention (rows move between partitions).
    app.db
        .batch_execute(
            "UPDATE events SET received_at = now() - interval '35 days';
             UPDATE deliveries SET created_at = now() - interval '35 days';",
        )
        .await
        .unwrap();
    let (tx, rx_report) = tokio::sync::oneshot::channel();
    app.janitor.send(RunNow(tx)).await.unwrap();
    let report = rx_report.await.unwrap().unwrap();
    assert_eq!(report.deliveries_expired, 1, "{report:?}");
    assert!(report.partitions_dropped > 0);
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    let text = String::from_utf8_lossy(&text).to_string();
    assert!(
        text.lines().any(|l| l.starts_with("hookgate_deliveries_expired_total{destination=\"sink\"}")),
        "the expiry is counted per destination"
    );
    assert!(!EXPIRED_REASON.is_empty());
}
#[actix_rt::test]
async fn an_event_and_its_deliveries_share_one_partition_key() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(with_sink(rx.url.clone())).await;
    let a = app.post_signed(br#"{"n":1}"#, "same-clock").await;
    assert_eq!(a.status, 202);
    let same: bool = app
        .db
        .query_one(
            "SELECT bool_and(d.created_at = e.received_at) FROM deliveries d JOIN events e ON e.id = d.event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same, "a delivery's created_at is its event's received_at");
    // A replay of the event keeps the rule.
    let r = app.admin("post", &format!("/events/{}/replay", a.id()), Some(WRITE), Some(json!({}))).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let n: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.created_at = e.received_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
