//! A FIFO destination receives the events of a source in the order they arrived, not in idempotency-key order, and
//! a delivery is created in its event's partition (`created_at` = the event's `received_at`).

use std::time::Duration;

use chrono::Utc;
use hookgate_actors::WriterConfig;

use crate::helpers::{destination, route, spawn_app_with, TestApp};
use crate::poison::{answer, batch_of, event, id_of, persist, planned, start_writer};
use crate::receiver::Receiver;

fn fifo_app_settings(url: String, flush_interval_us: u64) -> impl FnOnce(&mut hookgate::config::Settings) {
    move |s| {
        s.writer.flush_interval_us = flush_interval_us;
        s.writer.batch_max = 64;
        let mut d = destination("ordered", &url);
        d.fifo = true;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "ordered"));
    }
}

/// Idempotency keys of the FIFO deliveries in `seq` order.
async fn keys_in_seq_order(app: &TestApp) -> Vec<String> {
    let rows = app
        .db
        .query("SELECT e.idempotency_key FROM deliveries d JOIN events e ON e.id = d.event_id ORDER BY d.seq", &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Every delivery is created at its event's `received_at`, so it lives in its event's partition.
async fn assert_created_at_received_at(app: &TestApp) {
    let off: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.created_at <> e.received_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(off, 0, "deliveries whose created_at is not their event's received_at");
}

fn body_key(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn a_fifo_destination_gets_one_batch_in_arrival_order_not_key_order() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(fifo_app_settings(rx.url.clone(), 50_000)).await;
    // `b` first, `a` 1 ms later: both land in one 50 ms group-commit batch, which sorts them by key.
    let (b, a) = futures::join!(app.post_signed(br#"{"key":"b"}"#, "b"), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        app.post_signed(br#"{"key":"a"}"#, "a").await
    });
    assert_eq!((b.status, a.status), (202, 202), "{b:?} {a:?}");
    let got: Vec<String> = rx.wait_for(2).await.iter().map(|r| body_key(&r.body)).collect();
    // The order the gateway saw them in (their `received_at`); `b` was sent first, so it is `b, a` unless the box
    // delayed `b` by more than a millisecond before it reached the writer.
    let arrival: Vec<String> = app
        .db
        .query("SELECT idempotency_key FROM events ORDER BY received_at, id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, arrival, "delivered in arrival order");
    assert_eq!(keys_in_seq_order(&app).await, arrival, "numbered in arrival order");
    assert_created_at_received_at(&app).await;
}

#[actix_rt::test]
async fn deliveries_of_one_batch_are_numbered_by_received_at_then_arrival() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(fifo_app_settings(rx.url.clone(), 200)).await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let route_id = id_of(&app, "SELECT id FROM routes WHERE slug = 'r'").await;
    let dest = id_of(&app, "SELECT id FROM destinations WHERE slug = 'ordered'").await;
    let t0 = Utc::now();
    let ms = chrono::Duration::milliseconds;
    // One batch of four, in this arrival order; `z` and `y` were received at the same instant.
    let writer = start_writer(&app, batch_of(4)).await;
    let replies: Vec<_> = [("b", t0), ("a", t0 + ms(1)), ("z", t0 + ms(2)), ("y", t0 + ms(2))]
        .into_iter()
        .map(|(key, at)| persist(&writer, event(source, key, at, vec![planned(route_id, dest, true)])))
        .collect();
    for r in replies {
        answer(r).await.expect("stored");
    }
    assert_eq!(keys_in_seq_order(&app).await, ["b", "a", "z", "y"]);
    let got: Vec<String> = rx.wait_for(4).await.iter().map(|r| body_key(&r.body)).collect();
    assert_eq!(got, ["b", "a", "z", "y"]);
    assert_created_at_received_at(&app).await;
}

#[actix_rt::test]
async fn fifo_deliveries_keep_arrival_order_across_concurrent_flushes() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(fifo_app_settings(rx.url.clone(), 200)).await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let route_id = id_of(&app, "SELECT id FROM routes WHERE slug = 'r'").await;
    let dest = id_of(&app, "SELECT id FROM destinations WHERE slug = 'ordered'").await;
    // One event per flush, four flushes at once: FIFO-carrying flushes must still commit one after the other,
    // while events without a FIFO delivery (here: none at all) keep flowing beside them.
    let cfg = WriterConfig { batch_max: 1, flush_interval_us: 0, max_inflight_flushes: 4, ..WriterConfig::default() };
    let writer = start_writer(&app, cfg).await;
    let keys: Vec<String> = (0..24).map(|i| format!("k{:02}", 23 - i)).collect();
    let mut replies = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let deliveries = if i % 3 == 2 { vec![] } else { vec![planned(route_id, dest, true)] };
        replies.push(persist(&writer, event(source, key, Utc::now(), deliveries)));
    }
    for r in replies {
        answer(r).await.expect("stored");
    }
    let fifo: Vec<String> = keys.iter().enumerate().filter(|(i, _)| i % 3 != 2).map(|(_, k)| k.clone()).collect();
    assert_eq!(keys_in_seq_order(&app).await, fifo);
    let got: Vec<String> = rx.wait_for(fifo.len()).await.iter().map(|r| body_key(&r.body)).collect();
    assert_eq!(got, fifo);
    assert_created_at_received_at(&app).await;
}
