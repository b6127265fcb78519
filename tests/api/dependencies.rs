//! PostgreSQL and Redis going away and coming back, without restarting hookgate.

use std::time::Duration;

use secrecy::SecretString;

use crate::helpers::{pg_base, redis_url, socket_of, spawn_app_with, Proxy, TestDb};

#[actix_rt::test]
async fn with_redis_unreachable_ingest_still_answers_202_and_dedupe_holds() {
    let app = spawn_app_with(|s| s.redis.url = SecretString::from("redis://127.0.0.1:1")).await;
    let first = app.post_signed(br#"{"n":1}"#, "r-1").await;
    assert_eq!((first.status, first.duplicate()), (202, false), "{first:?}");
    let again = app.post_signed(br#"{"n":1}"#, "r-1").await;
    assert_eq!((again.status, again.id(), again.duplicate()), (202, first.id(), true));
    assert_eq!(app.event_count().await, 1);

    let ready = app.wait_for_readiness("redis to be reported down", |a| a.json["redis"] == "down").await;
    assert_eq!(ready.status, 200, "Redis down is degraded, not unready: {ready:?}");
    assert_eq!(ready.json["status"], "degraded");
}

#[actix_rt::test]
async fn losing_redis_mid_run_restarts_the_cache_which_reconnects_when_redis_returns() {
    let proxy = Proxy::start(socket_of(&redis_url())).await;
    let app = spawn_app_with(|s| {
        s.redis.url = SecretString::from(format!("redis://{}", proxy.addr));
        // Generous, so that on a busy machine the cut shows as a dropped connection rather than a slow answer.
        s.redis.op_timeout_ms = 2_000;
    })
    .await;
    app.wait_for_readiness("redis up", |a| a.json["redis"] == "up").await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "a").await.status, 202);

    proxy.down();
    // Dedupe stays correct while Redis is away: PostgreSQL decides.
    let b1 = app.post_signed(br#"{"n":2}"#, "b").await;
    let b2 = app.post_signed(br#"{"n":2}"#, "b").await;
    assert_eq!((b1.status, b2.status, b2.id(), b2.duplicate()), (202, 202, b1.id(), true));
    app.wait_for_readiness("redis down", |a| a.json["redis"] == "down" && a.status == 200).await;

    proxy.restore();
    let ready = app.wait_for_readiness("the cache to reconnect", |a| a.json["redis"] == "up").await;
    let cache = ready.json["actors"].as_array().unwrap().iter().find(|a| a["name"] == "cache").unwrap().clone();
    assert_eq!(cache["state"], "running", "{ready:?}");
    assert!(cache["restarts"].as_u64().unwrap() >= 1, "the lost connection restarted the cache: {ready:?}");
    assert_eq!(app.event_count().await, 2);
}

#[actix_rt::test]
async fn with_postgresql_unreachable_ingest_answers_503_then_recovers_by_itself() {
    let proxy = Proxy::start(socket_of(&pg_base())).await;
    // The app reaches its database through the proxy; the test's own connection goes direct.
    let db = TestDb::create().await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let app = spawn_app_with(|s| {
        s.database.url = SecretString::from(via_proxy);
        s.database.pool_wait_timeout_ms = 1_000;
        s.database.connect_timeout_ms = 1_000;
    })
    .await;
    let db_client = crate::helpers::connect(&db.url()).await;
    let count = || async { db_client.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get::<_, i64>(0) };

    assert_eq!(app.post_signed(br#"{"n":1}"#, "before").await.status, 202);
    proxy.down();
    let refused = app.post_signed(br#"{"n":2}"#, "during").await;
    refused.assert_problem(503, "storage-unavailable");
    let secs: u64 = refused.retry_after.as_deref().and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!((1..=2).contains(&secs), "retry_after_secs (1), jittered up to twice: {secs}");
    let unready = app.wait_for_readiness("readiness to turn false", |a| a.status == 503).await;
    assert_eq!(unready.json["postgres"], "down");
    assert_eq!(count().await, 1, "nothing from the outage was stored");

    proxy.restore();
    let ok = crate::helpers::eventually("ingest to recover", Duration::from_secs(30), || async {
        let a = app.post_signed(br#"{"n":3}"#, "after").await;
        (a.status == 202).then_some(a)
    })
    .await;
    assert!(!ok.duplicate());
    app.wait_for_readiness("readiness to return", |a| a.status == 200).await;
    assert_eq!(count().await, 2);
}
