use crate::helpers::spawn_app;

#[actix_rt::test]
async fn healthz_answers_while_the_process_lives() {
    let app = spawn_app().await;
    let a = app.get_json("/healthz").await;
    assert_eq!((a.status, a.json["status"].as_str()), (200, Some("alive")));
}

#[actix_rt::test]
async fn readyz_reports_postgres_redis_and_every_actor() {
    let app = spawn_app().await;
    let a = app.wait_for_readiness("ready", |a| a.json["status"] == "ready").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["postgres"], "up");
    assert_eq!(a.json["redis"], "up");
    let names: Vec<&str> = a.json["actors"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["event_writer", "cache"]);
    for actor in a.json["actors"].as_array().unwrap() {
        assert_eq!(actor["state"], "running", "{actor}");
        assert!(actor["mailbox_depth"].is_i64(), "{actor}");
        assert!(actor["restarts"].is_u64(), "{actor}");
    }
}

#[actix_rt::test]
async fn metrics_expose_ingest_outcomes_batches_flushes_mailboxes_and_restarts() {
    let app = spawn_app().await;
    assert_eq!(app.post_signed(br#"{"m":1}"#, "m-1").await.status, 202);
    assert_eq!(app.post_signed(br#"{"m":1}"#, "m-1").await.status, 202);
    let mut resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    for needle in [
        r#"hookgate_ingest_requests_total{source="hmac",outcome="accepted"}"#,
        r#"hookgate_ingest_requests_total{source="hmac",outcome="duplicate"}"#,
        "hookgate_writer_batch_size_bucket",
        "hookgate_writer_flush_seconds_bucket",
        r#"hookgate_actor_mailbox_depth{actor="event_writer"}"#,
        r#"hookgate_actor_restarts_total{actor="cache"}"#,
        r#"hookgate_dependency_up{dependency="postgres"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(!text.contains("test-secret"), "metrics never carry secrets");
}
