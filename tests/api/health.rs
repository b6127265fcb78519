use crate::helpers::{http_client, spawn_app, test_config_toml, Node, RedisPrefix, TempConfig, TestDb};

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
    assert_eq!(names, ["event_writer", "cache", "router", "janitor", "result_writer", "scheduler"]);
    for actor in a.json["actors"].as_array().unwrap() {
        assert_eq!(actor["state"], "running", "{actor}");
        assert!(actor["mailbox_depth"].is_i64(), "{actor}");
        assert!(actor["restarts"].is_u64(), "{actor}");
    }
}

/// Runs against its own process: the Prometheus recorder is process-wide, so in-process apps would share it.
#[actix_rt::test]
async fn metrics_expose_ingest_outcomes_batches_flushes_mailboxes_and_restarts() {
    let db = TestDb::create().await;
    let prefix = format!("hgtest-{}", uuid::Uuid::new_v4().simple());
    let _redis = RedisPrefix(prefix.clone());
    let config = TempConfig::new(&test_config_toml());
    let node = Node::start(&config.0, &db.url(), &prefix, &[("HOOKGATE_SERVER__NODE_ID", "node-7")]).await;
    let http = http_client();
    for _ in 0..2 {
        assert_eq!(node.post_signed(&http, br#"{"m":1}"#, "m-1").await.unwrap().status, 202);
    }
    assert_eq!(node.post_signed(&http, br#"{"m":1}"#, "").await.unwrap().status, 400);
    let mut resp = http.get(format!("{}/metrics", node.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    // Every series carries the node id; the value is the last field of its line.
    let series = |name: &str, labels: &[&str], value: &str| {
        text.lines().any(|l| {
            l.starts_with(name)
                && l.contains(r#"node="node-7""#)
                && labels.iter().all(|x| l.contains(x))
                && l.rsplit(' ').next() == Some(value)
        })
    };
    for (name, labels, value) in [
        ("hookgate_ingest_requests_total{", &[r#"source="hmac""#, r#"outcome="accepted""#][..], "1"),
        ("hookgate_ingest_requests_total{", &[r#"source="hmac""#, r#"outcome="duplicate""#][..], "1"),
        ("hookgate_ingest_requests_total{", &[r#"source="hmac""#, r#"outcome="bad_request""#][..], "1"),
        ("hookgate_writer_batch_size_count", &[][..], "1"),
        ("hookgate_writer_flush_seconds_count", &[][..], "1"),
        ("hookgate_actor_mailbox_depth{", &[r#"actor="event_writer""#][..], "0"),
        ("hookgate_actor_restarts_total{", &[r#"actor="cache""#][..], "0"),
        ("hookgate_dependency_up{", &[r#"dependency="postgres""#][..], "1"),
        ("hookgate_build_info{", &[r#"version=""#, r#"commit=""#][..], "1"),
        ("hookgate_ingest_duration_seconds_count{", &[r#"source="hmac""#, r#"outcome="accepted""#][..], "1"),
        ("hookgate_ingest_duration_seconds_count{", &[r#"source="hmac""#, r#"outcome="bad_request""#][..], "1"),
    ] {
        assert!(series(name, labels, value), "missing {name} {labels:?} = {value} in:\n{text}");
    }
    // (CPU seconds are whole seconds, still 0 for this young process: its presence is what is checked.)
    for process in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        let value = text
            .lines()
            .find(|l| l.starts_with(process) && l.contains(r#"node="node-7""#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert!(value.is_some_and(|v| v > 0.0), "{process}: {value:?} in:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("process_cpu_seconds_total{")), "{text}");
    assert!(!text.contains("test-secret"), "metrics never carry secrets");
}
