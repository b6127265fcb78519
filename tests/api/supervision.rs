//! Supervision of the real actors: a failure injected into each one (a panic in its guarded work, as a bug would
//! cause) is counted, restarted behind the same address after a back-off, and readiness follows the restart budget.

use actix::Addr;
use hookgate_actors::supervision::InjectPanic;
use serde_json::Value;

use crate::helpers::{spawn_app_with, Answer, TestApp};

/// Two restarts within a minute are tolerated; the third exhausts the budget. The back-off starts at 300 ms.
fn tight_budget(s: &mut hookgate::config::Settings) {
    s.supervision.budget = 2;
    s.supervision.window_secs = 600;
    s.supervision.backoff_initial_ms = 300;
    s.supervision.backoff_max_ms = 5_000;
}

fn actor<'a>(ready: &'a Answer, name: &str) -> &'a Value {
    ready.json["actors"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("{name}"))
}

/// Injects one panic and waits until the actor has been restarted `n` times in all and runs again.
async fn fail_and_recover<A>(app: &TestApp, name: &str, addr: &Addr<A>, n: u64) -> Answer
where
    A: actix::Actor<Context = actix::Context<A>> + actix::Handler<InjectPanic>,
{
    let injected = std::time::Instant::now();
    addr.send(InjectPanic).await.unwrap_or_else(|e| panic!("{name} takes the injected failure: {e}"));
    let ready = app
        .wait_for_readiness(&format!("{name} restarted {n} time(s) and running"), |a| {
            let x = actor(a, name);
            x["restarts"] == n && x["panics"] == n && x["state"] == "running"
        })
        .await;
    // It ran again only once its back-off was over (a lower bound: the sleep cannot end early).
    let backoff = actor(&ready, name)["last_backoff_ms"].as_u64().expect("last_backoff_ms");
    assert!(backoff > 0, "{name} backed off: {ready:?}");
    assert!(
        injected.elapsed() >= std::time::Duration::from_millis(backoff),
        "{name} was running again {:?} after the failure, before its {backoff} ms back-off was over",
        injected.elapsed()
    );
    ready
}

#[actix_rt::test]
async fn the_event_writer_restarts_with_back_off_and_past_its_budget_the_node_is_unready() {
    let app = spawn_app_with(tight_budget).await;
    let writer = app.actors.writer.clone();
    app.wait_for_readiness("ready", |a| a.json["status"] == "ready").await;

    let first = fail_and_recover(&app, "event_writer", &writer, 1).await;
    assert_eq!(first.status, 200, "one restart within the budget keeps the node ready: {first:?}");
    // Behind the same address, the restarted writer commits again.
    assert_eq!(app.post_signed(br#"{"n":1}"#, "after-restart").await.status, 202);

    fail_and_recover(&app, "event_writer", &writer, 2).await;
    writer.send(InjectPanic).await.expect("the writer takes a third failure");
    let unready =
        app.wait_for_readiness("the budget exhausted", |a| actor(a, "event_writer")["state"] == "failed").await;
    assert_eq!(unready.status, 503, "a critical actor past its budget makes the node unready: {unready:?}");
    assert_eq!(unready.json["status"], "unready");
}

#[actix_rt::test]
async fn every_other_actor_restarts_with_back_off_and_past_its_budget_only_degrades_the_node() {
    let app = spawn_app_with(tight_budget).await;
    let a = app.actors.clone();
    app.wait_for_readiness("ready", |a| a.json["status"] == "ready").await;
    let scheduler = a.scheduler.clone().expect("delivery is enabled in tests");
    let results = a.result_writer.clone().expect("delivery is enabled in tests");

    macro_rules! check {
        ($name:literal, $addr:expr) => {{
            let addr = $addr;
            fail_and_recover(&app, $name, &addr, 1).await;
            fail_and_recover(&app, $name, &addr, 2).await;
            addr.send(InjectPanic).await.expect("a third failure");
            let over = app
                .wait_for_readiness(concat!($name, " past its budget"), |a| actor(a, $name)["state"] == "failed")
                .await;
            assert_eq!(over.status, 200, "{} is not critical: the node stays ready: {over:?}", $name);
            assert_ne!(over.json["status"], "ready", "but it is not healthy either: {over:?}");
            over
        }};
    }
    check!("cache", a.cache.clone());
    check!("router", a.router.clone());
    check!("janitor", a.janitor.clone());
    let over = check!("scheduler", scheduler);
    assert_eq!(over.json["delivery"], "failed", "the delivery section says why: {over:?}");
    check!("result_writer", results);
}
