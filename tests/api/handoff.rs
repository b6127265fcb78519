//! The hand-off: a fresh delivery is attempted by the node that ingested it with no claim round, under the same
//! limits as a claimed one; one without a slot yet waits on the node for one, and what the limits refuse (or what
//! waits too long) goes back to the claim path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hookgate_store::locks::CLAIM_LOCK;

use crate::helpers::{connect, destination, route, spawn_app_with, TestApp};
use crate::receiver::{Receiver, Reply};

/// A node with one destination, "sink", on a local receiver, routed from the `hmac` source.
async fn sink_app(handoff: bool) -> (Receiver, TestApp) {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.delivery.handoff = handoff;
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("to-sink", "hmac", "sink"));
    })
    .await;
    (rx, app)
}

/// A node with one destination, "narrow" (`max_in_flight` 2, a 60 s timeout), on a receiver that holds every request
/// until the gate lets it answer (what it has received is what is in flight), and `lease_margin_ms` when given.
async fn narrow_app(lease_margin_ms: Option<u64>) -> (Arc<tokio::sync::Semaphore>, Receiver, TestApp) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let rx = Receiver::start(vec![], Some(Reply::Gate(gate.clone(), 200)));
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        if let Some(ms) = lease_margin_ms {
            s.delivery.lease_margin_ms = ms;
        }
        let mut d = destination("narrow", &url);
        d.max_in_flight = 2;
        d.timeout_ms = 60_000;
        s.destinations.push(d);
        s.routes.push(route("to-narrow", "hmac", "narrow"));
    })
    .await;
    (gate, rx, app)
}

/// Posts `n` signed events, each acknowledged.
async fn post_events(app: &TestApp, n: usize) {
    for i in 0..n {
        assert_eq!(app.post_signed(format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("k{i}")).await.status, 202);
    }
}

/// Another session holding the cluster-wide claim lock, until it unlocks or is dropped.
async fn hold_claim_lock(app: &TestApp) -> tokio_postgres::Client {
    let blocker = connect(&app._db.url()).await;
    blocker.execute("SELECT pg_advisory_lock($1)", &[&CLAIM_LOCK]).await.unwrap();
    blocker
}

#[actix_rt::test]
async fn a_fresh_delivery_is_attempted_while_no_claim_round_can_run() {
    let (rx, app) = sink_app(true).await;
    // Another session holds the cluster-wide claim lock: every claim round waits for it, then fails.
    let blocker = hold_claim_lock(&app).await;

    post_events(&app, 5).await;
    rx.wait_for(5).await;
    app.wait_count("five delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 5).await;
    let attempts: i64 = app.db.query_one("SELECT count(*) FROM attempts", &[]).await.unwrap().get(0);
    assert_eq!(attempts, 5, "one attempt each");
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&CLAIM_LOCK]).await.unwrap();
}

#[actix_rt::test]
async fn a_handed_off_delivery_keeps_the_destinations_max_in_flight_and_the_rest_waits_unleased() {
    let (gate, rx, app) = narrow_app(None).await;
    post_events(&app, 6).await;
    rx.wait_for(2).await;
    // The four the destination has no room for are pending and unleased, claimable by any node: two waited for a
    // slot here and were given back after half the lease margin (0.5 s); the other two found the waiting room full
    // (inserted unleased, or given back at once).
    app.wait_count(
        "the deliveries past max_in_flight released",
        "SELECT count(*) FROM deliveries WHERE state = 'pending' AND lease_id IS NULL",
        4,
    )
    .await;
    assert_eq!(rx.count(), 2, "never more than max_in_flight at once");
    assert_eq!(rx.state.overlaps.load(Ordering::SeqCst), 0);

    // Once the receiver answers, the claim path delivers the rest.
    gate.add_permits(1_000);
    app.wait_count("all six delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 6).await;
    assert_eq!(rx.count(), 6, "each delivered once");
}

/// Posts four events to "narrow" while no claim round can run and waits until two are in flight and the other two
/// wait leased on the node (`lease_margin_ms` 600 s: they may wait longer than the test runs).
async fn two_in_flight_two_waiting() -> (Arc<tokio::sync::Semaphore>, Receiver, TestApp, tokio_postgres::Client) {
    let (gate, rx, app) = narrow_app(Some(600_000)).await;
    let blocker = hold_claim_lock(&app).await;
    post_events(&app, 4).await;
    rx.wait_for(2).await;
    app.wait_count(
        "all four leased",
        "SELECT count(*) FROM deliveries WHERE state = 'pending' AND lease_id IS NOT NULL",
        4,
    )
    .await;
    (gate, rx, app, blocker)
}

#[actix_rt::test]
async fn a_handed_off_delivery_without_a_slot_waits_leased_and_starts_when_one_frees_with_no_claim_round() {
    // No claim round can run: whatever is attempted came through the hand-off.
    let (gate, rx, app, blocker) = two_in_flight_two_waiting().await;
    assert_eq!(rx.count(), 2, "never more than max_in_flight at once");

    // The two in flight are answered: their slots go to the two waiting, and no more than two are in flight.
    gate.add_permits(2);
    rx.wait_for(4).await;
    app.wait_count("two delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 2).await;
    assert_eq!(rx.count(), 4);
    gate.add_permits(1_000);
    app.wait_count("all four delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 4).await;
    assert_eq!(rx.count(), 4, "each delivered once");
    assert_eq!(rx.state.overlaps.load(Ordering::SeqCst), 0);
    let claimed: i64 = app.db.query_one("SELECT count(*) FROM attempts", &[]).await.unwrap().get(0);
    assert_eq!(claimed, 4, "one attempt each");
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&CLAIM_LOCK]).await.unwrap();
}

const RELEASED: &str = "SELECT count(*) FROM deliveries d JOIN routes r ON r.id = d.route_id
                        WHERE r.slug = 'to-narrow' AND d.state = 'pending' AND d.lease_id IS NULL";

#[actix_rt::test]
async fn a_destination_paused_while_hand_offs_wait_for_it_gets_them_released_when_a_slot_frees() {
    let (gate, rx, app, blocker) = two_in_flight_two_waiting().await;
    // Paused, and in the same transaction a route from `open` to it: once an event to `open` gets that route's
    // delivery, this node serves the catalog in which "narrow" is paused.
    app.db
        .batch_execute(
            "UPDATE destinations SET state = 'paused' WHERE slug = 'narrow';
             INSERT INTO routes (id, slug, source_id, destination_id)
             SELECT gen_random_uuid(), 'probe', s.id, d.id FROM sources s, destinations d
             WHERE s.slug = 'open' AND d.slug = 'narrow';
             NOTIFY hookgate_catalog",
        )
        .await
        .unwrap();
    let mut n = 0;
    crate::helpers::eventually("the node serves the paused catalog", std::time::Duration::from_secs(60), || {
        n += 1;
        let body = format!(r#"{{"probe":{n}}}"#);
        let app = &app;
        async move {
            let resp = app.http.post(app.url("/ingest/open")).send_body(body).await.unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            let probes: i64 = app
                .db
                .query_one(
                    "SELECT count(*) FROM deliveries d JOIN routes r ON r.id = d.route_id WHERE r.slug = 'probe'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (probes > 0).then_some(())
        }
    })
    .await;

    // One attempt ends: its slot would go to a waiting hand-off, but the destination is paused. Both are released
    // for the claim path (which, while paused, leaves them alone) and nothing more is sent.
    gate.add_permits(1);
    app.wait_count("the two waiting released", RELEASED, 2).await;
    app.wait_count("one delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 1).await;
    assert_eq!(rx.count(), 2, "nothing started for a paused destination");
    gate.add_permits(1_000);
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&CLAIM_LOCK]).await.unwrap();
}

#[actix_rt::test]
async fn a_restarted_scheduler_releases_the_hand_offs_waiting_on_it_and_they_are_delivered_once() {
    let (gate, rx, app, blocker) = two_in_flight_two_waiting().await;
    let scheduler = app.actors.scheduler.clone().expect("delivery is enabled in tests");
    scheduler.send(hookgate_actors::supervision::InjectPanic).await.unwrap();
    // Released at the restart, not at the end of their leases (the destination's timeout plus 600 s).
    app.wait_count("the two waiting released", RELEASED, 2).await;
    assert_eq!(rx.count(), 2);

    // The claim path delivers them; the two in flight across the restart finish as well, each once.
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&CLAIM_LOCK]).await.unwrap();
    gate.add_permits(1_000);
    app.wait_count("all four delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 4).await;
    assert_eq!(rx.count(), 4, "each delivered once");
    assert_eq!(rx.state.overlaps.load(Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn with_the_hand_off_off_fresh_deliveries_wait_for_a_claim_round() {
    let (rx, app) = sink_app(false).await;
    let blocker = hold_claim_lock(&app).await;
    post_events(&app, 5).await;
    // Committed unleased: only a claim round can take them, and none can run yet.
    let unleased: i64 = app
        .db
        .query_one("SELECT count(*) FROM deliveries WHERE state = 'pending' AND lease_id IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unleased, 5);
    blocker.execute("SELECT pg_advisory_unlock($1)", &[&CLAIM_LOCK]).await.unwrap();
    app.wait_count("five delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 5).await;
    assert_eq!(rx.count(), 5);
}

#[actix_rt::test]
async fn a_destination_paused_in_the_database_gets_no_lease_at_insert_even_before_the_node_reloads() {
    let (rx, app) = sink_app(true).await;
    // Paused without NOTIFY: the node's catalog still says active (as on a node that has not reloaded yet).
    app.db.execute("UPDATE destinations SET state = 'paused' WHERE slug = 'sink'", &[]).await.unwrap();
    assert_eq!(app.post_signed(br#"{"n":1}"#, "after-pause").await.status, 202);
    let row = app.db.query_one("SELECT state, lease_id IS NULL FROM deliveries", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("pending".to_owned(), true), "waits, unleased");
    assert_eq!(rx.count(), 0);
}
