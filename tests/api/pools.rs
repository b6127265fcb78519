//! PostgreSQL connections apart: the admin API's pool, the main pool (the writer, the delivery side) and the
//! readiness probe's own connection. One of them held up never starves the others.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::admin::{with_tokens, READ};
use crate::helpers::{connect, connections_waiting_for_a_lock, eventually, sign, until_stuck, TestApp};

const ADMIN: &str = "hookgate-admin";
const MAIN: &str = "hookgate";
const PROBE: &str = "hookgate-health";

/// The start of the readiness probe's latest round trip, once it is later than `after`.
async fn probe_started_after(app: &TestApp, after: DateTime<Utc>) -> DateTime<Utc> {
    eventually("a readiness probe", Duration::from_secs(60), || async {
        let row = app
            .db
            .query_one(
                "SELECT max(query_start) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                &[&PROBE],
            )
            .await
            .unwrap();
        row.get::<_, Option<DateTime<Utc>>>(0).filter(|t| *t > after)
    })
    .await
}

/// `/readyz` after a probe that ran entirely after now: probes run one at a time and each records its verdict before
/// the next starts, so once a second probe has started, the first one's verdict is what `/readyz` shows.
async fn readiness_probed_from_now(app: &TestApp) -> crate::helpers::Answer {
    let now: DateTime<Utc> = app.db.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let first = probe_started_after(app, now).await;
    probe_started_after(app, first).await;
    app.get_json("/readyz").await
}

#[actix_rt::test]
async fn with_every_admin_connection_stuck_ingest_commits_and_the_node_stays_ready() {
    let app = crate::helpers::spawn_app_with(|s| {
        with_tokens(s);
        s.admin.pool_size = 2;
        // Stuck admin queries stay stuck until the test lets them go.
        s.database.statement_timeout_ms = 0;
    })
    .await;
    app.wait_for_readiness("ready", |a| a.status == 200).await;

    // Slow admin queries: a lock on the replay jobs' table holds every admin read of it (the requests', and the
    // admin background task's).
    let blocker = connect(&app._db.url()).await;
    blocker.batch_execute("BEGIN; LOCK TABLE replay_jobs IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let req = app.http.get(app.url("/admin/v1/replay-jobs")).bearer_auth(READ);
            actix_rt::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    until_stuck(&app, ADMIN, 2).await;

    // Ingest has the main pool to itself; the probe its own connection.
    let a = app.post_signed(br#"{"admin":"stuck"}"#, "while-admin-stuck").await;
    assert_eq!((a.status, a.duplicate()), (202, false), "{a:?}");
    let ready = readiness_probed_from_now(&app).await;
    assert_eq!((ready.status, ready.json["postgres"].as_str()), (200, Some("up")), "{ready:?}");
    // The admin API itself is out of connections: it answers 503 once its wait for one is over.
    app.admin("get", "/sources", Some(READ), None).await.assert_problem(503, "storage-unavailable");
    assert_eq!(connections_waiting_for_a_lock(&app, MAIN).await, 0, "nothing of the main pool waited");

    blocker.batch_execute("COMMIT").await.unwrap();
    for request in stuck {
        let status = request.await.unwrap().expect("the stuck admin request was answered");
        assert!(status == 200 || status == 503, "{status}");
    }
    let sources = app.admin("get", "/sources", Some(READ), None).await;
    assert_eq!(sources.status, 200, "{sources:?}");
}

#[actix_rt::test]
async fn with_every_main_pool_connection_stuck_the_admin_api_answers_and_the_node_stays_ready() {
    let app = crate::helpers::spawn_app_with(|s| {
        with_tokens(s);
        s.delivery.enabled = false;
        s.database.pool_size = 2;
        s.writer.max_inflight_flushes = 2;
        // Stuck flushes stay stuck (and keep their connections) until the test lets them go.
        s.database.statement_timeout_ms = 0;
        s.database.pool_wait_timeout_ms = 120_000;
        s.writer.flush_timeout_ms = 300_000;
        s.server.ingest_timeout_ms = 300_000;
    })
    .await;
    app.wait_for_readiness("ready", |a| a.status == 200).await;

    // Two flushes, each on one of the two main-pool connections, waiting for a lock on the keys' table.
    let blocker = connect(&app._db.url()).await;
    blocker.batch_execute("BEGIN; LOCK TABLE event_keys IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut held = Vec::new();
    for n in 1..=2 {
        let body = format!(r#"{{"flush":{n}}}"#);
        let req = app
            .http
            .post(app.url("/ingest/hmac"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(body.as_bytes())))
            .insert_header(("X-Request-Id", format!("held-{n}")));
        held.push(actix_rt::spawn(async move { req.send_body(body).await.map(|r| r.status().as_u16()) }));
        until_stuck(&app, MAIN, n).await;
    }

    // The admin API has its own pool; readiness its own connection.
    let sources = app.admin("get", "/sources", Some(READ), None).await;
    assert_eq!(sources.status, 200, "{sources:?}");
    let events = app.admin("get", "/events", Some(READ), None).await;
    assert_eq!(events.status, 200, "{events:?}");
    let ready = readiness_probed_from_now(&app).await;
    assert_eq!((ready.status, ready.json["postgres"].as_str()), (200, Some("up")), "{ready:?}");

    blocker.batch_execute("COMMIT").await.unwrap();
    for request in held {
        assert_eq!(request.await.unwrap().expect("answered"), 202);
    }
    assert_eq!(app.event_count().await, 2);
}
