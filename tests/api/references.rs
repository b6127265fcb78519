//! References from the hot tables without foreign keys (ADR-0021): an event is stored only while its source exists,
//! a delivery only while its route and destination exist, and deleting one of those waits for the inserts in flight
//! before it looks for rows that refer to it.

use std::time::Duration;

use chrono::Utc;
use hookgate_core::state::DeliveryState;
use hookgate_store::deliveries::{insert_planned, NewDelivery, NewLease};
use uuid::Uuid;

use crate::admin::{with_tokens, WRITE};
use crate::helpers::{answer, eventually, spawn_app_with, TestApp};

/// A destination and a route from the source `open` to it, written directly (not declared, so deletable).
async fn route_and_destination(app: &TestApp) -> (Uuid, Uuid) {
    let (destination, route) = (Uuid::now_v7(), Uuid::now_v7());
    app.db
        .execute(
            "INSERT INTO destinations (id, slug, url, timeout_ms, max_in_flight, retry)
             VALUES ($1, 'refs', 'http://127.0.0.1:9/', 1000, 1, '{}')",
            &[&destination],
        )
        .await
        .unwrap();
    app.db
        .execute(
            "INSERT INTO routes (id, slug, source_id, destination_id)
             SELECT $1, 'refs', id, $2 FROM sources WHERE slug = 'open'",
            &[&route, &destination],
        )
        .await
        .unwrap();
    (route, destination)
}

fn planned(route_id: Uuid, destination_id: Uuid) -> NewDelivery<'static> {
    NewDelivery {
        id: Uuid::now_v7(),
        event_id: Uuid::now_v7(),
        route_id,
        destination_id,
        state: DeliveryState::Pending,
        payload: None,
        last_error: None,
        created_at: Utc::now(),
        needs_routing: false,
        lease: None,
    }
}

#[actix_rt::test]
async fn a_delivery_is_stored_only_while_its_route_exists_and_goes_where_the_route_points_now() {
    let app = spawn_app_with(|_| {}).await;
    let (route, destination) = route_and_destination(&app).await;
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let client = pool.get().await.unwrap();
    let lease = || NewLease { owner: "node-a", lease_id: Uuid::new_v4(), ms: 30_000 };

    let kept = NewDelivery { lease: Some(lease()), ..planned(route, destination) };
    let no_route = planned(Uuid::now_v7(), destination);
    // Planned for a destination the route no longer names (pointed elsewhere, the old one deleted).
    let repointed = NewDelivery { lease: Some(lease()), ..planned(route, Uuid::now_v7()) };
    let inserted = insert_planned(&client, &[kept.clone(), no_route.clone(), repointed.clone()]).await.unwrap();
    assert_eq!(inserted.ids, [kept.id, repointed.id].into_iter().collect(), "not the one whose route is gone");
    assert_eq!(inserted.leased, [kept.id].into_iter().collect(), "no lease but for the planned destination");
    let stored: Vec<(Uuid, Uuid, Option<String>)> = app
        .db
        .query("SELECT id, destination_id, lease_owner FROM deliveries ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(stored, vec![(kept.id, destination, Some("node-a".into())), (repointed.id, destination, None)]);
}

#[actix_rt::test]
async fn an_event_for_a_source_deleted_meanwhile_is_answered_404_and_nothing_is_stored() {
    let app = spawn_app_with(|_| {}).await;
    // Deleted in the database only: this node's snapshot of the sources still has it (the catalog channel is not
    // told), so the request reaches the writer. Should the minute's reload come first, the answer is the same.
    app.db.execute("DELETE FROM sources WHERE slug = 'open'", &[]).await.unwrap();
    let resp = app.http.post(app.url("/ingest/open")).send_body("{\"a\":1}").await.unwrap();
    let a = answer(resp).await;
    a.assert_problem(404, "unknown-source");
    let counts: (i64, i64) = {
        let row = app
            .db
            .query_one("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_keys)", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (0, 0), "nothing half-stored");
    // The node is still serving the other source.
    let other = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(other.status().is_success());
}

#[actix_rt::test]
async fn deleting_a_route_waits_for_a_delivery_insert_in_flight_then_refuses() {
    let app = spawn_app_with(with_tokens).await;
    let (route, destination) = route_and_destination(&app).await;
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let delivery = planned(route, destination);
    let inserted = insert_planned(&tx, std::slice::from_ref(&delivery)).await.unwrap();
    assert!(inserted.ids.contains(&delivery.id));

    // The delete starts while that insert is uncommitted: it must wait for it, not miss it.
    let deleting = {
        let (http, url) = (app.http.clone(), app.url(&format!("/admin/v1/routes/{route}")));
        actix_rt::spawn(async move { answer(http.delete(url).bearer_auth(WRITE).send().await.unwrap()).await })
    };
    eventually("the delete waiting for the insert", Duration::from_secs(30), || async {
        (deleting.is_finished() || app.waiting_for_a_lock("LOCK TABLE ONLY deliveries").await == 1).then_some(())
    })
    .await;
    tx.commit().await.unwrap();
    let mut refused = deleting.await.unwrap();
    if refused.status == 503 {
        // Its tries ran out before the commit (a very slow machine): nothing was deleted; once more, now.
        let url = app.url(&format!("/admin/v1/routes/{route}"));
        refused = answer(app.http.delete(url).bearer_auth(WRITE).send().await.unwrap()).await;
    }
    refused.assert_problem(409, "in-use");
    let routes: i64 = app.db.query_one("SELECT count(*) FROM routes WHERE id = $1", &[&route]).await.unwrap().get(0);
    assert_eq!(routes, 1, "the route its delivery refers to is still there");
}

#[actix_rt::test]
async fn a_delivery_insert_that_comes_during_a_route_delete_waits_for_it_and_then_stores_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let (route, destination) = route_and_destination(&app).await;
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    assert!(hookgate_store::lock_against_inserts(&tx, "deliveries").await.unwrap());
    assert!(hookgate_store::routes::delete_unused(&tx, route).await.unwrap(), "nothing refers to the route yet");

    // The insert starts while the delete is uncommitted: it must wait, then see the route gone.
    let inserting = {
        let pool = pool.clone();
        let delivery = planned(route, destination);
        actix_rt::spawn(async move {
            let client = pool.get().await.unwrap();
            insert_planned(&client, std::slice::from_ref(&delivery)).await.unwrap()
        })
    };
    eventually("the insert waiting for the delete", Duration::from_secs(30), || async {
        (app.waiting_for_a_lock("WITH planned AS").await == 1).then_some(())
    })
    .await;
    tx.commit().await.unwrap();
    let inserted = inserting.await.unwrap();
    assert!(inserted.ids.is_empty(), "a delivery for the deleted route: {inserted:?}");
    let orphans: i64 = app.db.query_one("SELECT count(*) FROM deliveries", &[]).await.unwrap().get(0);
    assert_eq!(orphans, 0);
}

/// A transaction that keeps writing `deliveries` (a bulk replay's batch can, for seconds) does not make the delete
/// hold every other write of the table behind its queued lock: it gives way, and in the end answers 503.
#[actix_rt::test]
async fn a_delete_that_cannot_get_its_lock_answers_503_and_deletes_nothing() {
    let app = spawn_app_with(with_tokens).await;
    let (route, destination) = route_and_destination(&app).await;
    let pool = hookgate::startup::build_pool(&app.settings.database).expect("pool");
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    // A write to another route's deliveries: it holds the table, not this route.
    let other = Uuid::now_v7();
    tx.execute(
        "INSERT INTO routes (id, slug, source_id, destination_id) SELECT $1, 'other', source_id, destination_id
         FROM routes WHERE id = $2",
        &[&other, &route],
    )
    .await
    .unwrap();
    insert_planned(&tx, &[planned(other, destination)]).await.unwrap();

    let url = app.url(&format!("/admin/v1/routes/{route}"));
    let refused = answer(app.http.delete(url).bearer_auth(WRITE).send().await.unwrap()).await;
    refused.assert_problem(503, "busy");
    assert!(refused.retry_after.is_some(), "{refused:?}");
    tx.commit().await.unwrap();
    let routes: i64 = app.db.query_one("SELECT count(*) FROM routes WHERE id = $1", &[&route]).await.unwrap().get(0);
    assert_eq!(routes, 1, "nothing deleted");
    // Once the table is free, the same delete goes through.
    let deleted = app.http.delete(app.url(&format!("/admin/v1/routes/{route}"))).bearer_auth(WRITE).send().await;
    assert_eq!(deleted.unwrap().status(), 204);
}
