//! The delivery engine against local receivers: signed, retried, dead-lettered, guarded, ordered and fair.

use std::time::Duration;

use crate::helpers::{destination, eventually, route, spawn_app_with, TestApp};
use crate::receiver::{Receiver, Reply};

const DELIVERED: &str = "SELECT count(*) FROM deliveries WHERE state = 'delivered'";

#[actix_rt::test]
async fn an_event_is_delivered_once_signed_so_that_the_reference_library_verifies_it() {
    let rx = Receiver::start(vec![], None);
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (url, secret2) = (rx.url.clone(), secret.clone());
    let app = spawn_app_with(move |s| {
        let mut d = destination("sink", &url);
        d.signing_secrets = vec![secret2];
        s.destinations.push(d);
        s.routes.push(route("hmac-to-sink", "hmac", "sink"));
    })
    .await;
    let body = br#"{"order":42,"note":"caf\u00e9"}"#;
    let a = app.post_signed(body, "o-42").await;
    assert_eq!(a.status, 202);
    app.wait_count("the delivery to be delivered", DELIVERED, 1).await;

    let got = rx.requests();
    assert_eq!(got.len(), 1, "delivered exactly once");
    let req = &got[0];
    assert_eq!(&req.body[..], body, "the body as routed (no transform: the exact bytes)");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let delivery: uuid::Uuid = app.db.query_one("SELECT id FROM deliveries", &[]).await.unwrap().get(0);
    assert_eq!(req.header("webhook-id"), Some(format!("msg_{}", delivery.simple()).as_str()));
    let traceparent = req.header("traceparent").unwrap();
    assert!(traceparent.contains(&a.id().simple().to_string()), "{traceparent}");

    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, req.header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(&secret).unwrap().verify(&req.body, &headers).expect("signature verifies");

    assert_eq!(app.attempts().await, vec![(1, Some(200), None)]);
}

#[actix_rt::test]
async fn deliverers_on_threads_of_their_own_deliver_each_event_once() {
    // The default runs the deliverers on the system arbiter (every other test here); this is the other layout:
    // three deliverers spread over two threads of their own (one thread carries two).
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.delivery.deliverers = 3;
        s.delivery.deliverer_threads = 2;
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("hmac-to-sink", "hmac", "sink"));
    })
    .await;
    for i in 0..12 {
        assert_eq!(app.post_signed(format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("t{i}")).await.status, 202);
    }
    app.wait_count("every delivery to be delivered", DELIVERED, 12).await;
    let mut ids: Vec<_> = rx.requests().iter().map(|r| r.header("webhook-id").unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((rx.requests().len(), ids.len()), (12, 12), "each delivery reached the receiver once");
}

/// Whether `signature` (base64) is an ed25519 signature of a Standard Webhooks message by `public_key` (`whpk_…`),
/// checked with ring: an implementation independent of the one hookgate signs with.
pub fn v1a_verifies(public_key: &str, req: &crate::receiver::Received, signature: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pk = b64.decode(public_key.strip_prefix("whpk_").unwrap()).unwrap();
    let Ok(sig) = b64.decode(signature) else { return false };
    let content = [
        req.header("webhook-id").unwrap().as_bytes(),
        b".",
        req.header("webhook-timestamp").unwrap().as_bytes(),
        b".",
        &req.body,
    ]
    .concat();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk).verify(&content, &sig).is_ok()
}

#[actix_rt::test]
async fn an_ed25519_v1a_signature_beside_v1_verifies_with_an_independent_implementation() {
    use hookgate_core::signing::{SigningKey, SigningSecret};
    let (rx_both, rx_only) = (Receiver::start(vec![], None), Receiver::start(vec![], None));
    let (secret, key) = (SigningSecret::generate(), SigningKey::generate());
    let public = SigningKey::parse(&key).unwrap().public_key();
    let (url_both, url_only, secret2, key2) = (rx_both.url.clone(), rx_only.url.clone(), secret.clone(), key.clone());
    let app = spawn_app_with(move |s| {
        let mut both = destination("both", &url_both);
        both.signing_secrets = vec![secret2];
        both.signing_keys = vec![key2.clone()];
        let mut only = destination("v1a-only", &url_only);
        only.signing_keys = vec![key2];
        s.destinations.extend([both, only]);
        s.routes.push(route("to-both", "hmac", "both"));
        s.routes.push(route("to-v1a", "hmac", "v1a-only"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"order":7}"#, "o-7").await.status, 202);
    app.wait_count("both deliveries", DELIVERED, 2).await;

    let (got_both, got_only) = (rx_both.requests(), rx_only.requests());
    let both = &got_both[0];
    let sigs: Vec<&str> = both.header("webhook-signature").unwrap().split(' ').collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    let v1a = sigs[1].strip_prefix("v1a,").expect("v1a after v1");
    assert!(v1a_verifies(&public, both, v1a));
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, both.header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(&secret).unwrap().verify(&both.body, &headers).expect("v1 verifies too");

    let only = &got_only[0];
    let sig = only.header("webhook-signature").unwrap();
    assert!(!sig.contains("v1,") && !sig.contains(' '), "one v1a signature only: {sig}");
    assert!(v1a_verifies(&public, only, sig.strip_prefix("v1a,").unwrap()));
    let other = SigningKey::parse(&SigningKey::generate()).unwrap().public_key();
    assert!(!v1a_verifies(&other, only, sig.strip_prefix("v1a,").unwrap()), "another key's check fails");
}

#[actix_rt::test]
async fn a_500_is_retried_on_schedule_then_delivered_and_every_attempt_is_recorded() {
    let rx = Receiver::start(vec![Reply::Status(500), Reply::Status(500)], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        let mut d = destination("sink", &url);
        d.retry.delays_ms = vec![300, 600];
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "retry-1").await.status, 202);
    app.wait_count("delivered after two failures", DELIVERED, 1).await;
    let got = rx.requests();
    assert_eq!(got.len(), 3);
    // Never earlier than scheduled (later is fine on a busy machine).
    assert!(got[1].at - got[0].at >= Duration::from_millis(300), "{:?}", got[1].at - got[0].at);
    assert!(got[2].at - got[1].at >= Duration::from_millis(600), "{:?}", got[2].at - got[1].at);
    assert_eq!(
        app.attempts().await,
        vec![
            (1, Some(500), Some("http_status".into())),
            (2, Some(500), Some("http_status".into())),
            (3, Some(200), None)
        ]
    );
    assert_eq!(app.deliveries().await[0].1, 3);
    // Each attempt row holds the destination it went to (the admin windows count by it: ADR-0030).
    let missing = app
        .db
        .query_one(
            "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE a.destination_id IS DISTINCT FROM d.destination_id",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(missing, 0, "attempts without their delivery's destination");
}

#[actix_rt::test]
async fn retry_after_on_503_is_honoured() {
    let rx = Receiver::start(vec![Reply::With(503, vec![("retry-after", "2".into())])], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "ra").await;
    app.wait_count("delivered", DELIVERED, 1).await;
    let got = rx.requests();
    let attempts: Vec<(i32, Option<i32>, Option<String>, String)> = app
        .db
        .query("SELECT attempt, status, error_kind, node_id FROM attempts ORDER BY attempt", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got.len(), 2, "{attempts:?}");
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}; attempts {attempts:?}");
}

#[actix_rt::test]
async fn a_410_disables_the_destination_and_its_deliveries_wait() {
    let gone = Receiver::start(vec![], Some(Reply::Status(410)));
    let canary = Receiver::start(vec![], None);
    let (g_url, c_url) = (gone.url.clone(), canary.url.clone());
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("gone", &g_url));
        s.destinations.push(destination("canary", &c_url));
        s.routes.push(route("to-gone", "hmac", "gone"));
        s.routes.push(route("to-canary", "hmac", "canary"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "g1").await;
    app.wait_count(
        "the destination to be disabled",
        "SELECT count(*) FROM destinations WHERE state = 'disabled' AND disabled_reason LIKE 'auto: 410%'",
        1,
    )
    .await;
    app.post_signed(br#"{"n":2}"#, "g2").await;
    // The canary's delivery of the second event proves a claim round ran after it was stored.
    canary.wait_for(2).await;
    assert_eq!(gone.count(), 1, "nothing more is sent to a disabled destination");
    let gone_states: Vec<String> = app
        .db
        .query(
            "SELECT d.state FROM deliveries d JOIN destinations x ON x.id = d.destination_id WHERE x.slug = 'gone'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(gone_states, ["pending", "pending"], "deliveries wait; they are not burned");
}

#[actix_rt::test]
async fn exhausted_attempts_dead_letter_the_delivery() {
    let rx = Receiver::start(vec![], Some(Reply::Status(500)));
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        let mut d = destination("sink", &url);
        d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![50], max_attempts: 3, jitter: 0.0 };
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "d1").await;
    app.wait_count("dead", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 1).await;
    let (state, attempts, err) = app.deliveries().await.remove(0);
    assert_eq!((state.as_str(), attempts), ("dead", 3));
    assert!(err.unwrap().contains("500"));
    assert_eq!(rx.count(), 3);
    assert_eq!(app.attempts().await.len(), 3);
}

#[actix_rt::test]
async fn a_timeout_is_a_failure_and_a_redirect_is_not_followed() {
    let slow = Receiver::start(vec![], Some(Reply::Sleep(Duration::from_secs(3), 200)));
    let elsewhere = Receiver::start(vec![], None);
    let redirect = Receiver::start(vec![], Some(Reply::With(302, vec![("location", elsewhere.url.clone())])));
    let (s_url, r_url) = (slow.url.clone(), redirect.url.clone());
    let app = spawn_app_with(move |s| {
        for (slug, url) in [("slow", s_url), ("redirecting", r_url)] {
            let mut d = destination(slug, &url);
            d.timeout_ms = 300;
            d.retry.max_attempts = 1;
            s.destinations.push(d);
            s.routes.push(route(&format!("to-{slug}"), "hmac", slug));
        }
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "t1").await;
    app.wait_count("both dead", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 2).await;
    let kinds: std::collections::HashSet<Option<String>> = app.attempts().await.into_iter().map(|a| a.2).collect();
    assert_eq!(kinds, [Some("timeout".to_owned()), Some("redirect".to_owned())].into_iter().collect());
    assert_eq!(elsewhere.count(), 0, "the redirect target was never contacted");
}

#[actix_rt::test]
async fn ssrf_targets_are_refused_at_configuration_and_at_delivery() {
    // At configuration: IP literals in forbidden ranges (never contacted: the check needs no connection).
    for url in [
        "http://127.0.0.2:9/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:9/",
    ] {
        let mut s = hookgate::config::Settings::from_toml(&crate::helpers::test_config_toml()).unwrap();
        s.delivery.allow_private.clear();
        s.destinations.push(destination("bad", url));
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("bad"), "{url}: {err}");
    }
    // At delivery: a hostname that resolves to loopback, with an empty allowlist.
    let rx = Receiver::start(vec![], None);
    let url = rx.url.replace("127.0.0.1", "localhost");
    let app = spawn_app_with(move |s| {
        s.delivery.allow_private.clear();
        let mut d = destination("sneaky", &url);
        d.retry.max_attempts = 1;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "sneaky"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "s1").await;
    app.wait_count("dead", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 1).await;
    assert_eq!(app.attempts().await[0].2.as_deref(), Some("ssrf"));
    assert_eq!(rx.count(), 0, "the receiver was never contacted");
}

#[actix_rt::test]
async fn fifo_keeps_order_across_retries() {
    let rx = Receiver::start(vec![Reply::Status(500), Reply::Status(500)], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        let mut d = destination("ordered", &url);
        d.fifo = true;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "ordered"));
    })
    .await;
    for i in 0..6 {
        assert_eq!(app.post_signed(format!(r#"{{"seq":{i}}}"#).as_bytes(), &format!("f{i}")).await.status, 202);
    }
    app.wait_count("all delivered", DELIVERED, 6).await;
    let bodies: Vec<String> = rx.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    let expected_head = r#"{"seq":0}"#;
    assert_eq!(&bodies[..3], [expected_head; 3], "the failing head holds the rest: {bodies:?}");
    let order: Vec<String> = (0..6).map(|i| format!(r#"{{"seq":{i}}}"#)).collect();
    assert_eq!(bodies[2..].to_vec(), order, "then in event order");
    assert_eq!(rx.state.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn a_big_backlog_on_one_destination_does_not_delay_another() {
    let busy = Receiver::start(vec![], Some(Reply::Sleep(Duration::from_millis(200), 200)));
    let quiet = Receiver::start(vec![], None);
    let (b_url, q_url) = (busy.url.clone(), quiet.url.clone());
    let app = spawn_app_with(move |s| {
        // The node's capacity is smaller than the busy destination's limit: it is contested.
        s.delivery.max_in_flight = 4;
        s.destinations.push(destination("busy", &b_url));
        s.destinations.push(destination("quiet", &q_url));
        s.routes.push(route("to-busy", "open", "busy"));
        s.routes.push(route("to-quiet", "hmac", "quiet"));
    })
    .await;
    // 20,000 due deliveries on "busy", written straight into the tables.
    seed_backlog(&app, "open", "to-busy", 20_000).await;
    busy.wait_for(1).await;
    app.post_signed(br#"{"urgent":true}"#, "u1").await;
    app.wait_count(
        "the quiet destination's delivery",
        "SELECT count(*) FROM deliveries d JOIN destinations x ON x.id = d.destination_id
         WHERE x.slug = 'quiet' AND d.state = 'delivered'",
        1,
    )
    .await;
    let busy_left: i64 =
        app.db.query_one("SELECT count(*) FROM deliveries WHERE state = 'pending'", &[]).await.unwrap().get(0);
    assert!(busy_left > 19_000, "the quiet destination was served while the backlog waited ({busy_left} left)");
}

#[actix_rt::test]
async fn a_receiver_that_sleeps_does_not_slow_a_fast_one() {
    // The slow receiver holds every request until the end of the test (longer than any fixed sleep would).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Receiver::start(vec![], Some(Reply::Gate(gate.clone(), 200)));
    let fast = Receiver::start(vec![], None);
    let (s_url, f_url) = (slow.url.clone(), fast.url.clone());
    let app = spawn_app_with(move |s| {
        // The node's capacity is smaller than the slow destination's limit: slots are contested.
        s.delivery.max_in_flight = 4;
        let mut d = destination("slow", &s_url);
        d.timeout_ms = 60_000;
        s.destinations.push(d);
        s.destinations.push(destination("fast", &f_url));
        s.routes.push(route("to-slow", "hmac", "slow"));
        s.routes.push(route("to-fast", "hmac", "fast"));
    })
    .await;
    for i in 0..5 {
        app.post_signed(format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("k{i}")).await;
    }
    slow.wait_for(1).await;
    fast.wait_for(5).await;
    assert_eq!(
        slow.state.completed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "all five reached the fast receiver while the slow one still held its requests"
    );
    gate.add_permits(100);
}

#[actix_rt::test]
async fn filters_and_transforms_are_applied_and_their_failures_recorded() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("orders", &url));
        let mut r = route("only-orders", "hmac", "orders");
        r.filter = Some(r#".body.kind == "order""#.into());
        r.transform = Some(r#"{id: .body.id, total: ((.body.qty + 0) * .body.price), from: .source}"#.into());
        s.routes.push(r);
    })
    .await;
    app.post_signed(br#"{"kind":"order","id":"A1","qty":2,"price":5}"#, "e1").await;
    app.post_signed(br#"{"kind":"refund","id":"R1"}"#, "e2").await;
    app.post_signed(br#"{"kind":"order","id":"A2","qty":"two","price":5}"#, "e3").await;
    app.wait_count("one delivered", DELIVERED, 1).await;
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    let json: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(json, serde_json::json!({"id": "A1", "total": 10, "from": "hmac"}));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let deliveries = app.deliveries().await;
    assert_eq!(deliveries.len(), 2, "the refund was filtered out: {deliveries:?}");
    let failed = &deliveries[1];
    assert_eq!(failed.0, "failed");
    assert!(failed.2.as_deref().unwrap().contains("transform"), "{failed:?}");
}

#[test]
fn a_jq_program_that_does_not_compile_is_a_configuration_error_naming_the_route() {
    let mut s = hookgate::config::Settings::from_toml(&crate::helpers::test_config_toml()).unwrap();
    s.destinations.push(destination("d", "http://127.0.0.1:9/"));
    let mut r = route("broken-route", "hmac", "d");
    r.filter = Some(".body | ".into());
    s.routes.push(r);
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("broken-route") && err.contains("filter"), "{err}");
}

#[actix_rt::test]
async fn the_circuit_opens_half_opens_and_ramps_and_waiting_deliveries_are_not_burned() {
    use hookgate_actors::limits::{CircuitConfig, CircuitState, Limits};
    // Three failures open it; after 1 s one probe goes through, held at the receiver until the test saw half-open.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let rx = Receiver::start(
        vec![Reply::Status(500), Reply::Status(500), Reply::Status(500), Reply::Gate(gate.clone(), 200)],
        None,
    );
    let circuit = CircuitConfig {
        failure_threshold: 3,
        failure_ratio: 1.0,
        min_requests: 1000,
        window_secs: 60,
        open_secs: 1,
        ..CircuitConfig::default()
    };
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.delivery.circuit = circuit;
        let mut d = destination("flaky", &url);
        // The held probe must not time out while the test looks.
        d.timeout_ms = 60_000;
        d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![20], max_attempts: 20, jitter: 0.0 };
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "flaky"));
    })
    .await;
    let dest: uuid::Uuid = app.db.query_one("SELECT id FROM destinations", &[]).await.unwrap().get(0);
    let limits = Limits::new(&app.settings.redis.key_prefix, circuit);
    let redis = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    let state = || async { limits.state(Some(conn.clone()), dest).await.0 };

    app.post_signed(br#"{"n":1}"#, "c1").await;
    eventually("open", Duration::from_secs(30), || async { (state().await == CircuitState::Open).then_some(()) }).await;
    eventually("half-open", Duration::from_secs(30), || async {
        (state().await == CircuitState::HalfOpen).then_some(())
    })
    .await;
    rx.wait_for(4).await;
    gate.add_permits(1);
    // The probe's success starts the ramp (the circuit closes fully only after ramp_max - ramp_initial successes).
    eventually("ramping", Duration::from_secs(30), || async { (state().await == CircuitState::Ramping).then_some(()) })
        .await;
    app.wait_count("delivered", DELIVERED, 1).await;
    assert_eq!(rx.count(), 4, "while open the delivery waited: 3 failures, then the probe, nothing in between");
    assert_eq!(app.deliveries().await[0].1, 4);
}

#[actix_rt::test]
async fn a_destination_failing_continuously_for_the_configured_period_is_disabled() {
    let rx = Receiver::start(vec![], Some(Reply::Status(500)));
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.delivery.auto_disable_after_secs = 1;
        // A circuit that never opens, so the failures keep coming.
        s.delivery.circuit.failure_threshold = 0;
        s.delivery.circuit.min_requests = u32::MAX;
        let mut d = destination("broken", &url);
        d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![200], max_attempts: 1000, jitter: 0.0 };
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "broken"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "a1").await;
    app.wait_count(
        "the destination to be auto-disabled",
        "SELECT count(*) FROM destinations WHERE state = 'disabled' AND disabled_reason LIKE 'auto: failing%'",
        1,
    )
    .await;
    let first_failure_to_disable: f64 = app
        .db
        .query_one(
            "SELECT extract(epoch FROM d.updated_at - (SELECT min(started_at) FROM attempts))::float8
             FROM destinations d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(first_failure_to_disable >= 1.0, "disabled only after failing for the whole period");
    assert_eq!(app.deliveries().await[0].0, "pending", "its delivery waits");
}

#[actix_rt::test]
async fn a_backlog_drains_by_claim_rounds_that_finished_attempts_start_without_waiting_for_the_poll() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        // The poll never comes within the test: only NOTIFY and finished attempts start claim rounds.
        s.delivery.poll_interval_ms = 3_600_000;
        s.delivery.max_in_flight = 4;
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("to-sink", "open", "sink"));
    })
    .await;
    seed_backlog(&app, "open", "to-sink", 200).await;
    app.wait_count("the whole backlog delivered", DELIVERED, 200).await;
    assert_eq!(rx.count(), 200);
    // These deliveries were created after their events (`created_at` is not the event's `received_at`): the claim
    // found each body by the event's id alone.
    assert!(rx.requests().iter().all(|r| r.body.as_ref() == b"{}"), "every body sent whole");
}

#[actix_rt::test]
async fn a_batch_of_results_held_behind_a_lock_does_not_hold_back_the_next_batch() {
    // The first request is held until the test lets it go; the rest are answered at once.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let rx = Receiver::start(vec![Reply::Gate(gate.clone(), 200)], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("to-sink", "hmac", "sink"));
    })
    .await;
    app.post_signed(br#"{"n":1}"#, "first").await;
    rx.wait_for(1).await;
    // The first delivery's row is locked, then its attempt ends: the batch holding its result waits for the lock.
    let locker = crate::helpers::connect(&app._db.url()).await;
    locker.batch_execute("BEGIN; SELECT 1 FROM deliveries FOR UPDATE").await.unwrap();
    gate.add_permits(1);
    eventually("the first result's batch waits for the row lock", Duration::from_secs(60), || async {
        (app.waiting_for_a_lock("UPDATE deliveries").await > 0).then_some(())
    })
    .await;
    // The next delivery's result is written by another batch meanwhile.
    app.post_signed(br#"{"n":2}"#, "second").await;
    app.wait_count("the second delivery recorded while the first batch waits", DELIVERED, 1).await;
    let first: String = app
        .db
        .query_one(
            "SELECT d.state FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.idempotency_key = 'first'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, "pending", "the first result is still waiting for the lock");
    locker.batch_execute("ROLLBACK").await.unwrap();
    app.wait_count("both recorded once the lock is gone", DELIVERED, 2).await;
}

#[actix_rt::test]
async fn a_destinations_max_in_flight_holds_on_the_claim_path_with_its_window_full_throughout() {
    // Every request is held until the test lets one go: the destination's window stays full throughout.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let rx = Receiver::start(vec![], Some(Reply::Gate(gate.clone(), 200)));
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        // Only finished attempts and committed results start rounds.
        s.delivery.poll_interval_ms = 3_600_000;
        let mut sink = destination("sink", &url);
        sink.max_in_flight = 3;
        s.destinations.push(sink);
        s.routes.push(route("to-sink", "open", "sink"));
    })
    .await;
    seed_backlog(&app, "open", "to-sink", 40).await;
    rx.wait_for(3).await;
    // One answer at a time: each ends an attempt, and its completion and its committed result each start a round.
    for answered in 1..=37 {
        gate.add_permits(1);
        rx.wait_for(3 + answered).await;
    }
    gate.add_permits(100);
    app.wait_count("the whole backlog delivered", DELIVERED, 40).await;
    let most = rx.state.most_at_once.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 3, "{most} requests at once to a destination whose max_in_flight is 3");
    assert_eq!(rx.state.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "no delivery in flight twice");
}

#[actix_rt::test]
async fn a_resumed_destination_starts_its_backlog_without_waiting_for_the_poll() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        // The poll never comes within the test: the resume itself must start the backlog.
        s.delivery.poll_interval_ms = 3_600_000;
        let mut sink = destination("sink", &url);
        sink.state = hookgate_core::state::DestinationState::Paused;
        s.destinations.push(sink);
        s.routes.push(route("to-sink", "open", "sink"));
    })
    .await;
    seed_backlog(&app, "open", "to-sink", 20).await;
    // Resumed as the admin API does it: the row, then the catalog NOTIFY every node's Router and Scheduler hear.
    app.db
        .batch_execute("UPDATE destinations SET state = 'active' WHERE slug = 'sink'; NOTIFY hookgate_catalog")
        .await
        .unwrap();
    app.wait_count("the resumed destination's backlog delivered", DELIVERED, 20).await;
    assert_eq!(rx.count(), 20);
}

/// `n` due deliveries on `route` (from `source`), written straight into the tables, and the schedulers woken.
async fn seed_backlog(app: &TestApp, source: &str, route: &str, n: i32) {
    app.db
        .execute(
            "INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
             SELECT gen_random_uuid(), s.id, 'bulk-' || g, now(), '{}', '\\x7b7d'
             FROM generate_series(1, $2) g, sources s WHERE s.slug = $1",
            &[&source, &n],
        )
        .await
        .unwrap();
    app.db
        .execute(
            "INSERT INTO deliveries (id, event_id, route_id, destination_id, state)
             SELECT gen_random_uuid(), e.id, r.id, r.destination_id, 'pending'
             FROM events e JOIN routes r ON r.source_id = e.source_id WHERE r.slug = $1",
            &[&route],
        )
        .await
        .unwrap();
    app.db.batch_execute("NOTIFY hookgate_deliveries").await.unwrap();
}
