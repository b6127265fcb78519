//! Many requests at once: nothing lost, nothing unbounded.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{eventually, spawn_app, spawn_app_with};

#[actix_rt::test]
async fn a_thousand_concurrent_posts_make_a_thousand_rows_with_distinct_ids() {
    let app = spawn_app().await;
    let keys: Vec<String> = (0..1000).map(|i| format!("bulk-{i}")).collect();
    let bodies: Vec<Vec<u8>> = keys.iter().map(|k| format!(r#"{{"i":"{k}"}}"#).into_bytes()).collect();
    let answers = futures::future::join_all(keys.iter().zip(&bodies).map(|(k, b)| app.post_signed(b, k))).await;
    assert!(answers.iter().all(|a| a.status == 202), "{:?}", answers.iter().find(|a| a.status != 202));
    let ids: HashSet<Uuid> = answers.iter().map(|a| a.id()).collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(app.event_count().await, 1000);
}

#[actix_rt::test]
async fn a_tiny_writer_under_a_burst_refuses_some_with_503_and_loses_no_acknowledged_event() {
    let app = spawn_app_with(|s| {
        s.writer.mailbox_capacity = 1;
        s.writer.max_pending = 4;
        s.writer.batch_max = 2;
        s.database.statement_timeout_ms = 60_000;
        s.writer.flush_timeout_ms = 60_000;
    })
    .await;
    // Hold the events table so no flush can finish: the writer fills up deterministically.
    let locker = crate::helpers::connect(&app._db.url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app_ref = &app;
    let burst = futures::future::join_all((0..40).map(|i| {
        let tx = tx.clone();
        async move {
            let a = app_ref.post_signed(br#"{"burst":true}"#.as_slice(), &format!("burst-{i}")).await;
            let _ = tx.send(a.status);
            (format!("burst-{i}"), a)
        }
    }));
    let watcher = async {
        // Release the lock once the writer has refused at least one request.
        eventually("a 503 while the table is locked", Duration::from_secs(60), || {
            let got = std::iter::from_fn(|| rx.try_recv().ok()).any(|s| s == 503);
            async move { got.then_some(()) }
        })
        .await;
        locker.batch_execute("COMMIT").await.unwrap();
    };
    let (answers, ()) = futures::join!(burst, watcher);

    let accepted: Vec<_> = answers.iter().filter(|(_, a)| a.status == 202).collect();
    let refused: Vec<_> = answers.iter().filter(|(_, a)| a.status == 503).collect();
    assert_eq!(accepted.len() + refused.len(), 40, "only 202 or 503: {answers:?}");
    assert!(!refused.is_empty() && !accepted.is_empty(), "{answers:?}");
    for (_, a) in &refused {
        a.assert_problem(503, "overloaded");
        assert!(a.retry_after.is_some());
    }
    for (key, a) in &accepted {
        let row = app.db.query_one("SELECT id FROM events WHERE idempotency_key = $1", &[key]).await.unwrap();
        assert_eq!(row.get::<_, Uuid>(0), a.id(), "acknowledged {key} is stored under its id");
    }
    assert_eq!(app.event_count().await, accepted.len() as i64);
}

#[actix_rt::test]
async fn past_max_inflight_ingest_complete_requests_are_refused_with_503() {
    let app = spawn_app_with(|s| {
        s.server.max_inflight_ingest = 2;
        s.database.statement_timeout_ms = 60_000;
        s.writer.flush_timeout_ms = 60_000;
    })
    .await;
    // Hold the events so that the two admitted requests stay in progress.
    let locker = crate::helpers::connect(&app._db.url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let app_ref = &app;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let burst = futures::future::join_all((0..12).map(|i| {
        let tx = tx.clone();
        async move {
            let a = app_ref.post_signed(br#"{"a":1}"#.as_slice(), &format!("adm-{i}")).await;
            let _ = tx.send(a.status);
            (format!("adm-{i}"), a)
        }
    }));
    let release = async {
        // Ten of twelve must be refused while two are held.
        let mut refused = 0;
        eventually("ten refusals", Duration::from_secs(60), || {
            refused += std::iter::from_fn(|| rx.try_recv().ok()).filter(|s| *s == 503).count();
            let done = refused >= 10;
            async move { done.then_some(()) }
        })
        .await;
        locker.batch_execute("COMMIT").await.unwrap();
    };
    let (answers, ()) = futures::join!(burst, release);
    let accepted: Vec<_> = answers.iter().filter(|(_, a)| a.status == 202).collect();
    assert_eq!(accepted.len(), 2, "{answers:?}");
    for (_, a) in answers.iter().filter(|(_, a)| a.status != 202) {
        a.assert_problem(503, "overloaded");
        let secs: u64 = a.retry_after.as_deref().and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
        assert!((1..=2).contains(&secs), "retry_after_secs (1) jittered up to twice: {secs}");
    }
    assert_eq!(app.event_count().await, 2);
}
