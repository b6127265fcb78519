//! A unit PostgreSQL refuses for good fails alone: the rest of its group-commit batch is stored.
//!
//! These tests drive an [`EventWriter`] of their own (beside the app's, on the app's database) with crafted
//! messages, so that the batch's composition is exact: `batch_max` equals the number of events sent and the flush
//! interval is long, so the batch is flushed exactly when its last event arrives.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hookgate_actors::{
    ActorStatus, EventWriter, HealthRegistry, NewEvent, Persist, PersistError, PersistMany, Persisted, RestartPolicy,
    WriterConfig,
};
use hookgate_core::catalog::PlannedDelivery;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::helpers::{destination, route, spawn_app_with, TestApp};
use crate::receiver::Receiver;

/// An event writer of the test's own, on the app's database, started (its mailbox capacity is set).
pub async fn start_writer(app: &TestApp, cfg: WriterConfig) -> Addr<EventWriter> {
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let status = ActorStatus::new("test_writer", false, RestartPolicy::default());
    let writer = EventWriter::new(pool, cfg, status, HealthRegistry::new()).start();
    // A round trip through the mailbox: once answered, the writer has started.
    let (reply, answered) = oneshot::channel();
    writer
        .send(PersistMany { events: Vec::new(), reply, sent_at: std::time::Instant::now() })
        .await
        .expect("the writer runs");
    answer(answered).await.expect("an empty unit is answered at once");
    writer
}

/// A writer that flushes exactly when `batch_max` events are buffered (the interval is far beyond any test).
pub fn batch_of(batch_max: usize) -> WriterConfig {
    WriterConfig { batch_max, flush_interval_us: 600_000_000, flush_timeout_ms: 60_000, ..WriterConfig::default() }
}

pub async fn id_of(app: &TestApp, sql: &str) -> Uuid {
    app.db.query_one(sql, &[]).await.unwrap().get(0)
}

pub fn event(source_id: Uuid, key: &str, received_at: DateTime<Utc>, deliveries: Vec<PlannedDelivery>) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        source_id,
        idempotency_key: key.into(),
        dedupe_ttl: None,
        event_type: None,
        received_at,
        content_type: Some("application/json".into()),
        headers: serde_json::json!({}).into(),
        body: Bytes::from(format!(r#"{{"key":"{key}"}}"#)),
        deliveries,
        traceparent: None,
    }
}

pub fn planned(route_id: Uuid, destination_id: Uuid, fifo: bool) -> PlannedDelivery {
    PlannedDelivery {
        id: Uuid::now_v7(),
        route_id,
        destination_id,
        fifo,
        payload: None,
        failed: None,
        deferred: false,
        attempt_now: None,
    }
}

pub fn persist(writer: &Addr<EventWriter>, event: NewEvent) -> oneshot::Receiver<Result<Persisted, PersistError>> {
    let (reply, rx) = oneshot::channel();
    writer.try_send(Persist { event, reply, sent_at: std::time::Instant::now() }).map_err(|_| "mailbox full").unwrap();
    rx
}

fn persist_many(
    writer: &Addr<EventWriter>,
    events: Vec<NewEvent>,
) -> oneshot::Receiver<Result<Vec<Persisted>, PersistError>> {
    let (reply, rx) = oneshot::channel();
    writer
        .try_send(PersistMany { events, reply, sent_at: std::time::Instant::now() })
        .map_err(|_| "mailbox full")
        .unwrap();
    rx
}

/// Waits for a writer's answer, at most a minute.
pub async fn answer<T>(rx: oneshot::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), rx).await.expect("the writer answers in time").expect("answered")
}

async fn stored(app: &TestApp, key: &str) -> i64 {
    app.db.query_one("SELECT count(*) FROM events WHERE idempotency_key = $1", &[&key]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn a_poison_unit_fails_alone_and_the_rest_of_its_batch_commits() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let route_id = id_of(&app, "SELECT id FROM routes WHERE slug = 'r'").await;
    let dest = id_of(&app, "SELECT id FROM destinations WHERE slug = 'sink'").await;
    let good = || vec![planned(route_id, dest, false)];
    // One delivery planned twice under one id: its primary key refuses the second, for good. (A route deleted after
    // planning is no poison: its delivery is not made, ADR-0021.)
    let poison = || {
        let twice = planned(route_id, dest, false);
        vec![twice.clone(), twice]
    };
    let now = Utc::now();

    let writer = start_writer(&app, batch_of(7)).await;
    let g1 = persist(&writer, event(source, "g1", now, good()));
    let p1 = persist(&writer, event(source, "p1", now, poison()));
    let many_ok = persist_many(&writer, vec![event(source, "g2", now, good()), event(source, "g3", now, good())]);
    // A CloudEvents batch is one unit: a poison event in it fails the whole unit, never half of it.
    let many_bad = persist_many(&writer, vec![event(source, "g4", now, good()), event(source, "p2", now, poison())]);
    // NUL in a delivery's error or in the event type is stripped, not a poison.
    let mut nul = event(source, "g5", now, vec![]);
    nul.event_type = Some("order.\0created".into());
    nul.deliveries =
        vec![PlannedDelivery { failed: Some("jq: error: \0 in the input".into()), ..planned(route_id, dest, false) }];
    let g5 = persist(&writer, nul);

    assert!(matches!(answer(g1).await, Ok(Persisted { duplicate: false, .. })));
    assert!(matches!(answer(p1).await, Err(PersistError::Internal(_))));
    assert_eq!(answer(many_ok).await.expect("the good CloudEvents batch is stored").len(), 2);
    assert!(matches!(answer(many_bad).await, Err(PersistError::Internal(_))));
    assert!(matches!(answer(g5).await, Ok(Persisted { duplicate: false, .. })));

    for key in ["g1", "g2", "g3", "g5"] {
        assert_eq!(stored(&app, key).await, 1, "{key} is stored");
    }
    for key in ["p1", "g4", "p2"] {
        assert_eq!(stored(&app, key).await, 0, "{key} is not stored");
    }
    let keys: i64 = app.db.query_one("SELECT count(*) FROM event_keys", &[]).await.unwrap().get(0);
    assert_eq!(keys, 4, "no key of a refused unit is kept");
    let row = app
        .db
        .query_one(
            "SELECT e.type, d.state, d.last_error FROM events e JOIN deliveries d ON d.event_id = e.id
             WHERE e.idempotency_key = 'g5'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("order.created"));
    assert_eq!(row.get::<_, String>(1), "failed");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("jq: error:  in the input"));
    let deliveries: i64 = app.db.query_one("SELECT count(*) FROM deliveries", &[]).await.unwrap().get(0);
    assert_eq!(deliveries, 4, "g1, g2, g3 and g5 have their delivery");
}

#[actix_rt::test]
async fn a_batch_of_good_units_is_still_one_transaction_and_duplicates_are_answered() {
    let app = spawn_app_with(|_| {}).await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let now = Utc::now();
    let writer = start_writer(&app, batch_of(3)).await;
    let a = persist(&writer, event(source, "same", now, vec![]));
    let b = persist(&writer, event(source, "other", now, vec![]));
    let c = persist(&writer, event(source, "same", now, vec![]));
    let a = answer(a).await.unwrap();
    assert!(!a.duplicate);
    assert!(!answer(b).await.unwrap().duplicate);
    assert_eq!(answer(c).await.unwrap(), Persisted { id: a.id, duplicate: true });
}
