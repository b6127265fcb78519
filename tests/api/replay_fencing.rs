//! Bulk replay jobs are fenced: once another node took a job over, the first node's next batch writes nothing, and
//! no batch is applied twice.

use std::sync::Arc;
use std::time::Duration;

use hookgate::http::admin::jobs::{JobLease, JobRunner, ReplayJob, Step};
use hookgate_actors::catalog::SharedCatalog;
use uuid::Uuid;

use crate::helpers::{destination, route, spawn_app_with, TestApp};
use crate::receiver::Receiver;

async fn runner(app: &TestApp, batch: i64) -> JobRunner {
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let catalog = Arc::new(SharedCatalog::default());
    hookgate_actors::catalog::reload(&catalog, &pool).await.expect("catalog");
    JobRunner { pool, catalog, jq_timeout: Duration::from_secs(5), jq_max_output: 1 << 20, batch }
}

/// An app with 5 stored events of `hmac`, each with its one delivery, and a replay job of them that `node-a` holds
/// (as its `take` would have left it). The admin task's next round is an hour away, so only the test runs jobs.
async fn app_with_a_running_job() -> (TestApp, Receiver, JobLease) {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.admin.job_interval_ms = 3_600_000;
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    for i in 0..5 {
        assert_eq!(app.post_signed(format!(r#"{{"n":{i}}}"#).as_bytes(), &format!("e{i}")).await.status, 202);
    }
    let source: Uuid = app.db.query_one("SELECT id FROM sources WHERE slug = 'hmac'", &[]).await.unwrap().get(0);
    let (from, to) = (chrono::Utc::now() - chrono::Duration::hours(1), chrono::Utc::now() + chrono::Duration::hours(1));
    let (id, lease_id) = (Uuid::now_v7(), Uuid::new_v4());
    let row = app
        .db
        .query_one(
            "INSERT INTO replay_jobs (id, source_id, from_time, to_time, status, owner, lease_id, heartbeat_at)
             VALUES ($1, $2, $3, $4, 'running', 'node-a', $5, now()) RETURNING created_at",
            &[&id, &source, &from, &to, &lease_id],
        )
        .await
        .unwrap();
    let job = ReplayJob {
        id,
        source_id: source,
        from,
        to,
        filter: None,
        destinations: None,
        status: "running".into(),
        cancel_requested: false,
        events_scanned: 0,
        events_matched: 0,
        deliveries_created: 0,
        error: None,
        created_at: row.get(0),
        updated_at: row.get(0),
    };
    (app, rx, JobLease { job, node: "node-a".into(), lease_id })
}

/// Deliveries per (event, destination), and how many events have that many.
async fn deliveries_per_event(app: &TestApp) -> Vec<(i64, i64)> {
    app.db
        .query(
            "SELECT n, count(*) FROM (SELECT count(*) AS n FROM deliveries GROUP BY event_id, destination_id) c
             GROUP BY n ORDER BY n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[actix_rt::test]
async fn a_job_taken_over_by_another_node_is_abandoned_by_the_first_without_writing() {
    let (app, _rx, lease_a) = app_with_a_running_job().await;
    let runner = runner(&app, 2).await;
    assert_eq!(runner.step(&lease_a).await.unwrap(), Step::Progressed, "node-a replays the first 2 events");
    assert!(runner.take("node-c").await.unwrap().is_none(), "a job with a fresh heartbeat is not taken over");

    // node-a stalls past the heartbeat; node-b takes the job over with a new lease.
    app.db.execute("UPDATE replay_jobs SET heartbeat_at = now() - interval '1 hour'", &[]).await.unwrap();
    let lease_b = runner.take("node-b").await.unwrap().expect("the stale job is taken over");
    assert_ne!(lease_b.lease_id, lease_a.lease_id);
    assert_eq!(lease_b.job.events_scanned, 2, "node-b resumes after node-a's committed batch");

    // node-a wakes up: its next batch finds the lease gone, writes nothing, and it cannot record an end either.
    assert_eq!(runner.step(&lease_a).await.unwrap(), Step::LeaseLost);
    assert!(!runner.finish(&lease_a, "succeeded", None).await.unwrap());
    assert_eq!(deliveries_per_event(&app).await, [(1, 3), (2, 2)], "only node-a's first batch is applied");

    let mut steps = 0;
    loop {
        match runner.step(&lease_b).await.unwrap() {
            Step::Progressed => steps += 1,
            Step::Done => break,
            other => panic!("node-b's job ended with {other:?}"),
        }
        assert!(steps <= 5, "the job ends");
    }
    assert!(runner.finish(&lease_b, "succeeded", None).await.unwrap());
    assert_eq!(runner.step(&lease_a).await.unwrap(), Step::LeaseLost, "node-a stays fenced out");

    assert_eq!(deliveries_per_event(&app).await, [(2, 5)], "every event replayed exactly once");
    let job = app
        .db
        .query_one(
            "SELECT status, owner, lease_id, events_scanned, deliveries_created FROM replay_jobs WHERE id = $1",
            &[&lease_a.job.id],
        )
        .await
        .unwrap();
    assert_eq!(job.get::<_, String>(0), "succeeded");
    assert_eq!(job.get::<_, String>(1), "node-b");
    assert_eq!(job.get::<_, Uuid>(2), lease_b.lease_id);
    assert_eq!((job.get::<_, i64>(3), job.get::<_, i64>(4)), (5, 5), "progress counts each event once");
}

#[actix_rt::test]
async fn a_job_whose_batch_is_being_written_is_not_taken_over_even_with_a_stale_heartbeat() {
    let (app, _rx, lease_a) = app_with_a_running_job().await;
    let runner = runner(&app, 2).await;
    app.db.execute("UPDATE replay_jobs SET heartbeat_at = now() - interval '1 hour'", &[]).await.unwrap();
    // A batch holds the job's row locked from its heartbeat to its COMMIT; stand in for one on another connection.
    let mut other = crate::helpers::connect(&app._db.url()).await;
    let batch = other.transaction().await.unwrap();
    batch
        .execute("UPDATE replay_jobs SET heartbeat_at = heartbeat_at WHERE lease_id = $1", &[&lease_a.lease_id])
        .await
        .unwrap();
    assert!(runner.take("node-b").await.unwrap().is_none(), "no take-over while a batch is being written");
    batch.rollback().await.unwrap();
    assert!(runner.take("node-b").await.unwrap().is_some(), "taken over once no batch holds it");
}

#[actix_rt::test]
async fn a_whole_job_run_by_the_task_entry_point_still_succeeds() {
    let (app, _rx, lease_a) = app_with_a_running_job().await;
    let runner = runner(&app, 2).await;
    app.db
        .execute("UPDATE replay_jobs SET status = 'queued', owner = NULL, lease_id = NULL, heartbeat_at = NULL", &[])
        .await
        .unwrap();
    assert!(runner.run_one("node-a").await.unwrap());
    let job = app
        .db
        .query_one(
            "SELECT status, events_scanned, deliveries_created FROM replay_jobs WHERE id = $1",
            &[&lease_a.job.id],
        )
        .await
        .unwrap();
    assert_eq!((job.get::<_, String>(0), job.get::<_, i64>(1), job.get::<_, i64>(2)), ("succeeded".into(), 5, 5));
    assert_eq!(deliveries_per_event(&app).await, [(2, 5)]);
}
