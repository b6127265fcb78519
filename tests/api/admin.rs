//! The admin API: tokens and roles on every route, CRUD with validation, events, replay, dead letter, OpenAPI.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use hookgate::http::admin::auth::READ_ONLY_POSTS;

use crate::helpers::{answer, destination, eventually, route, spawn_app_with, Answer, TestApp};
use crate::receiver::{Receiver, Reply};

pub(crate) const READ: &str = "read-token-for-tests-0123456789";
pub(crate) const WRITE: &str = "write-token-for-tests-0123456789";

pub(crate) fn with_tokens(s: &mut hookgate::config::Settings) {
    use hookgate::config::{AdminRole, AdminToken};
    s.admin.tokens = vec![
        AdminToken { token: READ.to_owned().into(), role: AdminRole::Read },
        AdminToken { token: WRITE.to_owned().into(), role: AdminRole::Write },
    ];
    s.admin.job_interval_ms = 50;
}

impl TestApp {
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let method = awc::http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(&format!("/admin/v1{path}")));
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        let resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        answer(resp.expect("admin request failed")).await
    }

    pub async fn admin_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.admin(method, path, Some(WRITE), body).await;
        assert!((200..300).contains(&a.status), "{method} {path}: {a:?}");
        a.json
    }
}

/// (method, path) of every operation in the served OpenAPI document, with `{id}` filled in.
async fn documented_operations(app: &TestApp) -> Vec<(String, String)> {
    let doc = app.admin("get", "/openapi.json", Some(READ), None).await;
    assert_eq!(doc.status, 200, "{doc:?}");
    let mut ops = Vec::new();
    for (path, item) in doc.json["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                let path = path.trim_start_matches("/admin/v1").replace("{id}", &uuid::Uuid::now_v7().to_string());
                ops.push((method.to_owned(), path));
            }
        }
    }
    ops
}

#[actix_rt::test]
async fn every_admin_route_answers_401_without_a_valid_token_and_403_to_a_read_token_on_writes() {
    let app = spawn_app_with(with_tokens).await;
    let ops = documented_operations(&app).await;
    assert_eq!(ops.len(), hookgate::http::admin::ROUTES.len(), "the document and the route table agree");
    let mut writes = 0;
    for (method, path) in &ops {
        for token in [None, Some("not-a-configured-token-at-all"), Some("")] {
            let a = app.admin(method, path, token, Some(json!({}))).await;
            a.assert_problem(401, "unauthorized");
        }
        if path == "/events/stream" {
            // An endless stream: its status is all there is to read.
            let resp = app.http.get(app.url("/admin/v1/events/stream")).bearer_auth(READ).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            continue;
        }
        let a = app.admin(method, path, Some(READ), Some(json!({}))).await;
        if method == "get" || (method == "post" && READ_ONLY_POSTS.contains(&path.as_str())) {
            assert_ne!(a.status, 401, "{method} {path}");
            assert_ne!(a.status, 403, "{method} {path}");
        } else {
            writes += 1;
            a.assert_problem(403, "forbidden");
        }
    }
    assert!(writes > 10, "write routes were checked ({writes})");
}

#[actix_rt::test]
async fn with_no_token_configured_the_admin_api_is_closed() {
    let app = spawn_app_with(|_| {}).await;
    for (method, path) in hookgate::http::admin::ROUTES {
        let path = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        app.admin(method, &path, Some(WRITE), None).await.assert_problem(401, "unauthorized");
    }
}

fn hmac_source(slug: &str) -> Value {
    json!({
        "slug": slug,
        "require_json": true,
        "idempotency": { "from": "header", "header": "X-Request-Id" },
        "verification": { "kind": "hmac_sha256", "header": "X-Signature", "prefix": "sha256=" }
    })
}

async fn post_with_secret(app: &TestApp, slug: &str, secret: &str, body: &[u8], key: &str) -> u16 {
    let sig = format!("sha256={}", hookgate_core::verify::hmac_sha256_hex(secret.as_bytes(), body));
    let resp = app
        .http
        .post(app.url(&format!("/ingest/{slug}")))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Signature", sig))
        .insert_header(("X-Request-Id", key))
        .send_body(body.to_vec())
        .await
        .expect("ingest request");
    resp.status().as_u16()
}

/// Waits until an ingest request with this secret is accepted (the catalog reload is asynchronous).
async fn wait_accepted(app: &TestApp, slug: &str, secret: &str, body: &[u8], key: &str) {
    eventually("the source to accept the secret", Duration::from_secs(30), || async {
        (post_with_secret(app, slug, secret, body, key).await == 202).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn objects_are_created_validated_delivered_listed_and_replayed_through_the_api() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(with_tokens).await;

    // A source: the secret is shown once, never by GET.
    let created = app.admin_ok("post", "/sources", Some(hmac_source("shop"))).await;
    let secret = created["secret"].as_str().expect("secret shown at creation").to_owned();
    let source_id = created["source"]["id"].as_str().unwrap().to_owned();
    let got = app.admin("get", &format!("/sources/{source_id}"), Some(READ), None).await;
    assert_eq!(got.status, 200);
    assert!(!got.json.to_string().contains(&secret), "GET never shows the secret: {got:?}");
    app.admin("post", "/sources", Some(WRITE), Some(hmac_source("shop"))).await.assert_problem(409, "slug-taken");
    let unknown_kind = json!({"slug": "x", "verification": {"kind": "rot13"}});
    app.admin("post", "/sources", Some(WRITE), Some(unknown_kind)).await.assert_problem(400, "bad-request");

    // Destinations: the SSRF check and slugs.
    let bad = json!({"slug": "inside", "url": "http://169.254.169.254/latest"});
    app.admin("post", "/destinations", Some(WRITE), Some(bad)).await.assert_problem(422, "validation-failed");
    let d = app.admin_ok("post", "/destinations", Some(json!({"slug": "sink", "url": rx.url}))).await;
    assert!(d["secret"].as_str().unwrap().starts_with("whsec_"));
    let dest_id = d["destination"]["id"].as_str().unwrap().to_owned();
    let listed = app.admin("get", "/destinations", Some(READ), None).await;
    assert!(!listed.json.to_string().contains(d["secret"].as_str().unwrap()));

    // Routes: jq must compile; source and destination must exist.
    let bad = json!({"slug": "r", "source": "shop", "destination": "sink", "filter": ".body | ("});
    app.admin("post", "/routes", Some(WRITE), Some(bad)).await.assert_problem(422, "validation-failed");
    let bad = json!({"slug": "r", "source": "nope", "destination": "sink"});
    app.admin("post", "/routes", Some(WRITE), Some(bad)).await.assert_problem(422, "validation-failed");
    app.admin_ok("post", "/routes", Some(json!({"slug": "shop-to-sink", "source": "shop", "destination": "sink"})))
        .await;

    // An event through the new source reaches the new destination. Each node loads the source and the route when
    // their NOTIFYs arrive, so events are sent until one is accepted with its delivery planned.
    let n = std::cell::Cell::new(0);
    let event_id = eventually("an event routed to the new destination", Duration::from_secs(30), || async {
        n.set(n.get() + 1);
        let key = format!("o-{}", n.get());
        if post_with_secret(&app, "shop", &secret, br#"{"order":1}"#, &key).await != 202 {
            return None;
        }
        let row = app
            .db
            .query_one(
                "SELECT e.id, (SELECT count(*) FROM deliveries d WHERE d.event_id = e.id)
                 FROM events e WHERE e.idempotency_key = $1",
                &[&key],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(1) > 0).then(|| row.get::<_, uuid::Uuid>(0).to_string())
    })
    .await;
    app.wait_count("delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 1).await;

    let page = app.admin("get", "/events?source=shop&limit=10", Some(READ), None).await;
    assert_eq!(page.status, 200, "{page:?}");
    let items = page.json["items"].as_array().unwrap();
    assert_eq!(items[0]["id"], event_id.as_str(), "newest first");
    let filtered = app.admin("get", "/events?status=dead", Some(READ), None).await;
    assert_eq!(filtered.json["items"].as_array().unwrap().len(), 0);

    let detail = app.admin("get", &format!("/events/{event_id}"), Some(READ), None).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json["body"]["encoding"], "text");
    assert_eq!(detail.json["body"]["data"], r#"{"order":1}"#);
    assert_eq!(detail.json["headers"]["x-request-id"], format!("o-{}", n.get()));
    let deliveries = detail.json["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["attempt_log"].as_array().unwrap().len(), 1);
    let original_attempt = deliveries[0]["attempt_log"][0].clone();

    // Replay: a new delivery; the original attempt is untouched.
    let replayed = app.admin_ok("post", &format!("/events/{event_id}/replay"), Some(json!({}))).await;
    assert_eq!(replayed["deliveries"].as_array().unwrap().len(), 1);
    app.wait_count("the replay delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 2).await;
    let detail = app.admin("get", &format!("/events/{event_id}"), Some(READ), None).await;
    let deliveries = detail.json["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["attempt_log"][0], original_attempt);
    assert_eq!(rx.count(), 2);

    let bad = json!({"destinations": ["nope"]});
    app.admin("post", &format!("/events/{event_id}/replay"), Some(WRITE), Some(bad))
        .await
        .assert_problem(422, "validation-failed");
    app.admin("get", &format!("/events/{}", uuid::Uuid::now_v7()), Some(READ), None)
        .await
        .assert_problem(404, "not-found");

    // In use: deleting the destination is refused; pause and resume work; health and stats answer.
    app.admin("delete", &format!("/destinations/{dest_id}"), Some(WRITE), None).await.assert_problem(409, "in-use");
    let paused = app.admin_ok("post", &format!("/destinations/{dest_id}/pause"), None).await;
    assert_eq!(paused["state"], "paused");
    let resumed = app.admin_ok("post", &format!("/destinations/{dest_id}/resume"), None).await;
    assert_eq!(resumed["state"], "active");
    let health = app.admin("get", &format!("/destinations/{dest_id}/health"), Some(READ), None).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json["windows"][0]["attempts"], 2);
    assert_eq!(health.json["windows"][0]["success_ratio"], 1.0);
    assert_eq!(health.json["circuit"], "closed");
    assert_eq!(health.json["circuit_ramp_allowance"], serde_json::Value::Null);
    assert_eq!((health.json["circuit_grants"].as_u64(), health.json["circuit_opens"].as_u64()), (Some(0), Some(0)));
    assert_eq!(health.json["circuit_open_period_ms"], 0);
    let stats = app.admin("get", "/stats?window_secs=3600", Some(READ), None).await;
    assert_eq!(stats.status, 200, "{stats:?}");
    let shop = stats.json["sources"].as_array().unwrap().iter().find(|s| s["slug"] == "shop").unwrap().clone();
    assert!(shop["events"].as_i64().is_some_and(|e| e >= 1), "{shop:?}");
}

#[actix_rt::test]
async fn declared_objects_are_refused_with_409_because_the_configuration_wins() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("r", "open", "sink"));
    })
    .await;
    let sources = app.admin("get", "/sources", Some(READ), None).await;
    let hmac = sources.json.as_array().unwrap().iter().find(|s| s["slug"] == "hmac").unwrap().clone();
    assert_eq!(hmac["declared"], true);
    let id = hmac["id"].as_str().unwrap();
    app.admin("put", &format!("/sources/{id}"), Some(WRITE), Some(hmac_source("hmac")))
        .await
        .assert_problem(409, "declared-in-config");
    app.admin("delete", &format!("/sources/{id}"), Some(WRITE), None).await.assert_problem(409, "declared-in-config");
}

#[actix_rt::test]
async fn a_rotated_source_secret_and_the_previous_one_are_both_accepted_during_the_grace_period() {
    let app = spawn_app_with(with_tokens).await;
    let created = app.admin_ok("post", "/sources", Some(hmac_source("rot"))).await;
    let old = created["secret"].as_str().unwrap().to_owned();
    let id = created["source"]["id"].as_str().unwrap().to_owned();
    wait_accepted(&app, "rot", &old, b"{}", "k0").await;
    let rotated =
        app.admin_ok("post", &format!("/sources/{id}/rotate-secret"), Some(json!({"grace_secs": 3600}))).await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    wait_accepted(&app, "rot", &new, b"{}", "k1").await;
    assert_eq!(post_with_secret(&app, "rot", &old, b"{}", "k2").await, 202, "the old secret is still valid");
    assert_eq!(post_with_secret(&app, "rot", "wrong", b"{}", "k3").await, 401);
    let got = app.admin("get", &format!("/sources/{id}"), Some(READ), None).await;
    assert!(got.json["verification"]["previous_secret_valid_until"].is_string(), "{got:?}");
    assert!(!got.json.to_string().contains(&new));

    // With no grace, the previous secret stops working.
    app.admin_ok("post", &format!("/sources/{id}/rotate-secret"), Some(json!({"grace_secs": 0}))).await;
    eventually("the previous secret to be refused", Duration::from_secs(30), || async {
        (post_with_secret(&app, "rot", &new, b"{}", "k4").await == 401).then_some(())
    })
    .await;
}

/// Waits until `send` is answered `status` (the catalog reload after an admin write is asynchronous).
async fn wait_status<F, Fut>(what: &str, status: u16, send: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    eventually(what, Duration::from_secs(30), || async { (send().await == status).then_some(()) }).await;
}

#[actix_rt::test]
async fn the_api_takes_every_source_option_the_configuration_file_takes_through_the_same_validation() {
    let app = spawn_app_with(with_tokens).await;

    // A GitHub preset with no secret: one is generated and shown once; the preset's key and type apply.
    let created =
        app.admin_ok("post", "/sources", Some(json!({"slug": "gh", "verification": {"kind": "github"}}))).await;
    let secret = created["secret"].as_str().expect("a generated secret").to_owned();
    let view = &created["source"];
    assert_eq!(view["verification"]["kind"], "github");
    assert_eq!(view["idempotency"], json!({"from": "header", "header": "X-GitHub-Delivery"}));
    assert_eq!(view["event_type"], json!({"from": "header", "header": "X-GitHub-Event"}));
    let got = app.admin_ok("get", &format!("/sources/{}", view["id"].as_str().unwrap()), None).await;
    assert!(!got.to_string().contains(&secret), "GET never shows the secret: {got}");
    let body = br#"{"action":"opened"}"#;
    let sig = format!("sha256={}", hookgate_core::verify::hmac_sha256_hex(secret.as_bytes(), body));
    let github = |delivery: &'static str, sig: String| {
        let req = app
            .http
            .post(app.url("/ingest/gh"))
            .insert_header(("X-Hub-Signature-256", sig))
            .insert_header(("X-GitHub-Delivery", delivery))
            .insert_header(("X-GitHub-Event", "pull_request"));
        async move { req.send_body(body.to_vec()).await.expect("ingest").status().as_u16() }
    };
    wait_status("the github source to accept its secret", 202, || github("d-1", sig.clone())).await;
    assert_eq!(github("d-2", "sha256=00".into()).await, 401, "a wrong signature is refused");
    let ev = app.db.query_one("SELECT type FROM events WHERE idempotency_key = 'd-1'", &[]).await.unwrap();
    assert_eq!(ev.get::<_, Option<String>>(0).as_deref(), Some("pull_request"), "the preset's event type");

    // A bearer token chosen by the producer, the handshake options, and a rotation of a non-HMAC secret.
    let bearer = json!({"slug": "tok", "verification": {"kind": "bearer", "token": "producer-token-1"},
        "allowed_origins": ["https://producer.example"], "allowed_rate": 120, "dedupe_window_secs": 60});
    let created = app.admin_ok("post", "/sources", Some(bearer)).await;
    let id = created["source"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["source"]["allowed_origins"], json!(["https://producer.example"]));
    assert_eq!(created["source"]["allowed_rate"], 120);
    assert!(created["source"]["verification"].get("token").is_none(), "{created}");
    let with_token = |token: String| {
        let req = app.http.post(app.url("/ingest/tok")).insert_header(("Authorization", format!("Bearer {token}")));
        async move { req.send_body("x").await.expect("ingest").status().as_u16() }
    };
    wait_status("the bearer source", 202, || with_token("producer-token-1".into())).await;
    let rotated = app.admin_ok("post", &format!("/sources/{id}/rotate-secret"), Some(json!({"grace_secs": 0}))).await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    wait_status("the rotated token", 202, || with_token(new.clone())).await;
    wait_status("the previous token to end", 401, || with_token("producer-token-1".into())).await;

    // An update that keeps the kind keeps the secret; the configuration's checks refuse what they refuse there.
    let put = json!({"slug": "tok", "verification": {"kind": "bearer"}, "require_json": true});
    let updated = app.admin_ok("put", &format!("/sources/{id}"), Some(put)).await;
    assert!(updated["secret"].is_null(), "nothing new to show: {updated}");
    wait_status("the update to apply (JSON only now)", 415, || with_token(new.clone())).await;
    let json_with_token = |token: &str| {
        let req = app
            .http
            .post(app.url("/ingest/tok"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .insert_header(("Content-Type", "application/json"));
        async move { req.send_body("{}").await.expect("ingest").status().as_u16() }
    };
    assert_eq!(json_with_token(&new).await, 202, "the update kept the token");
    assert_eq!(json_with_token("producer-token-1").await, 401);
    for (bad, field) in [
        (
            json!({"slug": "t2", "verification": {"kind": "hmac", "header": "x-sig", "signed": "{timestamp}.{body}"}}),
            "timestamp_header",
        ),
        (json!({"slug": "t3", "idempotency": {"from": "json_pointer", "pointer": "id"}}), "idempotency.pointer"),
        (json!({"slug": "t4", "event_type": {"from": "header", "header": "bad header"}}), "event_type.header"),
        (
            json!({"slug": "t5", "verification": {"kind": "standard_webhooks", "secret": "whsec_c2hvcnQ="}}),
            "verification",
        ),
        (json!({"slug": "t6", "max_body_bytes": 1_000_000_000}), "max_body_bytes"),
    ] {
        let a = app.admin("post", "/sources", Some(WRITE), Some(bad.clone())).await;
        a.assert_problem(422, "validation-failed");
        assert!(a.json["detail"].as_str().unwrap().contains(field), "{bad}: {a:?}");
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes();
    let public_key = format!("whpk_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key));
    let public_only = json!({"slug": "pk", "verification": {"kind": "standard_webhooks", "public_key": public_key}});
    let created = app.admin_ok("post", "/sources", Some(public_only)).await;
    assert!(created["secret"].is_null(), "nothing to generate for a public key: {created}");
    assert!(created["source"]["verification"]["public_key"].is_array(), "public keys are shown: {created}");
    let id = created["source"]["id"].as_str().unwrap();
    app.admin("post", &format!("/sources/{id}/rotate-secret"), Some(WRITE), None)
        .await
        .assert_problem(409, "wrong-state");
}

#[actix_rt::test]
async fn new_secrets_end_a_rotations_grace_and_never_freeze_the_sources_of_a_node() {
    let app = spawn_app_with(with_tokens).await;
    let created = app
        .admin_ok("post", "/sources", Some(json!({"slug": "rot2", "verification": {"kind": "bearer", "token": "t-1"}})))
        .await;
    let id = created["source"]["id"].as_str().unwrap().to_owned();
    let rotated =
        app.admin_ok("post", &format!("/sources/{id}/rotate-secret"), Some(json!({"grace_secs": 3600}))).await;
    let new_token = rotated["secret"].as_str().unwrap().to_owned();
    // Another kind, with two keys of its own, while the bearer token's grace is running: the old token is not one
    // of its secrets, and keeping it beside two keys would be a third (more than a source may hold).
    let put = json!({"slug": "rot2", "verification": {"kind": "api_key", "header": "X-Key", "key": ["k-1", "k-2"]}});
    app.admin_ok("put", &format!("/sources/{id}"), Some(put)).await;
    let send = |header: &'static str, value: String| {
        let req = app.http.post(app.url("/ingest/rot2")).insert_header((header, value));
        async move { req.send_body("x").await.expect("ingest").status().as_u16() }
    };
    eventually("the new keys", Duration::from_secs(30), || async {
        (send("X-Key", "k-2".into()).await == 202).then_some(())
    })
    .await;
    assert_eq!(send("X-Key", "t-1".into()).await, 401, "the rotated-out token ended with its kind");
    assert_eq!(send("X-Key", new_token).await, 401);
    // The other sources still reload: a source created now is served.
    app.admin_ok("post", "/sources", Some(json!({"slug": "later"}))).await;
    eventually("a source created afterwards", Duration::from_secs(30), || async {
        let status = app.http.post(app.url("/ingest/later")).send_body("x").await.expect("ingest").status();
        (status.as_u16() == 202).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn a_rotated_destination_secret_signs_beside_the_new_one_until_the_grace_ends() {
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(with_tokens).await;
    let d = app.admin_ok("post", "/destinations", Some(json!({"slug": "sink", "url": rx.url}))).await;
    let id = d["destination"]["id"].as_str().unwrap().to_owned();
    let r = app.admin_ok("post", &format!("/destinations/{id}/rotate-secret"), Some(json!({"grace_secs": 3600}))).await;
    assert!(r["secret"].as_str().unwrap().starts_with("whsec_"));
    let got = app.admin_ok("get", &format!("/destinations/{id}"), None).await;
    assert_eq!(got["signing_secrets"], 1);
    assert_eq!(got["retiring_secrets_until"].as_array().unwrap().len(), 1);
    app.admin_ok("post", &format!("/destinations/{id}/rotate-secret"), Some(json!({"grace_secs": 0}))).await;
    // The admin task removes expired secrets.
    eventually("expired secrets to be removed", Duration::from_secs(30), || async {
        let got = app.admin_ok("get", &format!("/destinations/{id}"), None).await;
        let n: i64 = app
            .db
            .query_one(
                "SELECT jsonb_array_length(retiring_secrets)::int8 FROM destinations WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1 && got["retiring_secrets_until"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn dead_deliveries_are_retried_keeping_their_attempts_and_pending_ones_can_be_cancelled() {
    let rx = Receiver::start(vec![Reply::Status(500)], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        let mut d = destination("sink", &url);
        d.retry.max_attempts = 1;
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":1}"#, "dead-1").await.status, 202);
    app.wait_count("dead", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 1).await;
    let dest: uuid::Uuid = app.db.query_one("SELECT id FROM destinations", &[]).await.unwrap().get(0);
    let dead = app.admin("get", &format!("/destinations/{dest}/deliveries?state=dead"), Some(READ), None).await;
    let delivery = dead.json["items"][0]["id"].as_str().expect("a dead delivery listed").to_owned();

    app.admin("post", &format!("/deliveries/{delivery}/cancel"), Some(WRITE), None)
        .await
        .assert_problem(409, "wrong-state");
    let retried = app.admin_ok("post", &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(retried["state"], "pending");
    app.wait_count("delivered on retry", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 1).await;
    assert_eq!(app.attempts().await.len(), 2, "the first attempt is kept");
    app.admin("post", &format!("/deliveries/{delivery}/retry"), Some(WRITE), None)
        .await
        .assert_problem(409, "wrong-state");

    // Paused: new deliveries wait as pending and can be cancelled.
    app.admin_ok("post", &format!("/destinations/{dest}/pause"), None).await;
    eventually("the pause to reach the catalog", Duration::from_secs(30), || async {
        let s: String = app.db.query_one("SELECT state FROM destinations", &[]).await.unwrap().get(0);
        (s == "paused").then_some(())
    })
    .await;
    assert_eq!(app.post_signed(br#"{"n":2}"#, "pending-1").await.status, 202);
    let n = app.admin_ok("post", &format!("/destinations/{dest}/cancel-pending"), None).await;
    assert_eq!(n["count"], 1);
    assert_eq!(app.wait_count("cancelled", "SELECT count(*) FROM deliveries WHERE state = 'cancelled'", 1).await, 1);
}

#[actix_rt::test]
async fn a_bulk_replay_job_replays_the_matching_events_and_reports_progress() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        s.destinations.push(destination("sink", &url));
        s.routes.push(route("r", "hmac", "sink"));
    })
    .await;
    let from = chrono::Utc::now() - chrono::Duration::minutes(1);
    for i in 0..6 {
        let body = format!(r#"{{"n":{i}}}"#);
        assert_eq!(app.post_signed(body.as_bytes(), &format!("bulk-{i}")).await.status, 202);
    }
    app.wait_count("delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 6).await;
    let to = chrono::Utc::now() + chrono::Duration::minutes(1);
    let job = app
        .admin_ok(
            "post",
            "/replay-jobs",
            Some(json!({"source": "hmac", "from": from, "to": to, "filter": ".body.n % 2 == 0"})),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = eventually("the job to finish", Duration::from_secs(60), || async {
        let j = app.admin_ok("get", &format!("/replay-jobs/{id}"), None).await;
        (j["status"] == "succeeded").then_some(j)
    })
    .await;
    assert_eq!(done["events_scanned"], 6);
    assert_eq!(done["events_matched"], 3);
    assert_eq!(done["deliveries_created"], 3);
    app.wait_count("replays delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 9).await;
    app.admin("post", &format!("/replay-jobs/{id}/cancel"), Some(WRITE), None).await.assert_problem(409, "wrong-state");
    let bad = json!({"source": "hmac", "from": from, "to": to, "filter": "(("});
    app.admin("post", "/replay-jobs", Some(WRITE), Some(bad)).await.assert_problem(422, "validation-failed");
}

#[actix_rt::test]
async fn the_openapi_document_is_valid_according_to_an_independent_validator() {
    let app = spawn_app_with(with_tokens).await;
    let doc = app.admin("get", "/openapi.json", Some(READ), None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3.1"), "{:?}", doc.json["openapi"]);
    let path = std::env::temp_dir().join(format!("hookgate-openapi-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, doc.json.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/validate-openapi.sh");
    let out = std::process::Command::new("bash").arg(script).arg(&path).output().expect("run the validator");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn event_list_and_get_use_indexes_on_200k_events_and_the_first_page_is_timed() {
    let app = spawn_app_with(with_tokens).await;
    // 200,000 events over the last ~2 days across both sources, ids UUIDv7-like in time order.
    app.db
        .batch_execute(
            "INSERT INTO events (id, source_id, idempotency_key, received_at, content_type, headers, body)
             SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0')
                     || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
                    CASE WHEN g % 2 = 0 THEN (SELECT id FROM sources WHERE slug = 'hmac')
                         ELSE (SELECT id FROM sources WHERE slug = 'open') END,
                    'k' || g, t, 'application/json', '{}'::jsonb, convert_to('{\"n\":' || g || '}', 'UTF8')
             FROM generate_series(1, 200000) g,
                  LATERAL (SELECT now() - make_interval(secs => (200000 - g) * 0.8) AS t) x;
             ANALYZE events;",
        )
        .await
        .expect("seed events");
    assert!(app.event_count().await >= 200_000);
    let source: uuid::Uuid = app.db.query_one("SELECT id FROM sources WHERE slug = 'hmac'", &[]).await.unwrap().get(0);
    let some: uuid::Uuid =
        app.db.query_one("SELECT id FROM events ORDER BY id DESC OFFSET 1000 LIMIT 1", &[]).await.unwrap().get(0);

    let explain = |sql: &str| format!("EXPLAIN (FORMAT JSON) {sql}");
    let none_uuid: Option<uuid::Uuid> = None;
    let none_time: Option<chrono::DateTime<chrono::Utc>> = None;
    let none_text: Option<&str> = None;
    let plans = [
        ("list", explain(hookgate_store::events::LIST_SQL), vec![none_uuid, none_uuid], None),
        ("list by source", explain(hookgate_store::events::LIST_SQL), vec![Some(source), none_uuid], None),
        ("list after a cursor", explain(hookgate_store::events::LIST_SQL), vec![Some(source), Some(some)], None),
        ("list by type", explain(hookgate_store::events::LIST_SQL), vec![none_uuid, none_uuid], Some("push")),
    ];
    for (what, sql, ids, event_type) in &plans {
        let limit: i64 = 51;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&ids[0], &none_time, &none_time, &ids[1], &none_text, &limit, event_type];
        let rows = app.db.query(sql.as_str(), &params).await.unwrap();
        let plan: Value = rows[0].get(0);
        assert_no_seq_scan(&app, what, &plan).await;
    }
    let (from, to) = hookgate_store::events::time_window(some);
    let rows = app.db.query(explain(hookgate_store::events::GET_SQL).as_str(), &[&some, &from, &to]).await.unwrap();
    assert_no_seq_scan(&app, "get", &rows[0].get(0)).await;
    let rows = app.db.query(explain(hookgate_store::events::DELIVERIES_SQL).as_str(), &[&some, &from]).await.unwrap();
    assert_no_seq_scan(&app, "get's deliveries", &rows[0].get(0)).await;

    for (label, query) in [("first page", "/events?limit=50"), ("first page by source", "/events?source=hmac&limit=50")]
    {
        let started = Instant::now();
        let page = app.admin("get", query, Some(READ), None).await;
        let took = started.elapsed();
        assert_eq!(page.status, 200);
        assert_eq!(page.json["items"].as_array().unwrap().len(), 50);
        println!("admin events {label} over 200,000 events: {took:?} (HTTP round trip)");
        let cursor = page.json["next_cursor"].as_str().unwrap();
        let next = app.admin("get", &format!("{query}&cursor={cursor}"), Some(READ), None).await;
        assert_eq!(next.json["items"].as_array().unwrap().len(), 50);
        assert!(next.json["items"][0]["id"].as_str().unwrap() < cursor);
    }
    // A time range a day back (ids and `received_at` bound together, ADR-0024): exactly the source's events in it.
    let (from, to): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = {
        let r =
            app.db.query_one("SELECT now() - interval '1 day', now() - interval '1 day' + interval '40 seconds'", &[]);
        let r = r.await.unwrap();
        (r.get(0), r.get(1))
    };
    let expected: Vec<String> = app
        .db
        .query(
            "SELECT id::text FROM events WHERE source_id = $1 AND received_at >= $2 AND received_at < $3
             ORDER BY id DESC",
            &[&source, &from, &to],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!((20..=30).contains(&expected.len()), "{} events in 40 s", expected.len());
    let range = format!(
        "/events?source=hmac&limit=100&from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B"),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B")
    );
    let page = app.admin("get", &range, Some(READ), None).await;
    assert_eq!(page.status, 200, "{page:?}");
    let got: Vec<&str> = page.json["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, expected);

    let started = Instant::now();
    let got = app.admin("get", &format!("/events/{some}"), Some(READ), None).await;
    assert_eq!(got.status, 200);
    println!("admin event detail over 200,000 events: {:?}", started.elapsed());
}

/// Fails when a plan reads a big table sequentially. Sequential scans of small tables (the catalog, empty daily
/// partitions: fewer than 1,000 rows by their statistics) are the planner's right choice and allowed.
async fn assert_no_seq_scan(app: &TestApp, what: &str, plan: &Value) {
    fn walk(node: &Value, found: &mut Vec<String>) {
        if let Some(kind) = node.get("Node Type").and_then(Value::as_str) {
            let rel = node.get("Relation Name").and_then(Value::as_str).unwrap_or("");
            if kind == "Seq Scan" {
                found.push(rel.to_owned());
            }
        }
        for key in ["Plan", "Plans"] {
            match node.get(key) {
                Some(Value::Array(items)) => items.iter().for_each(|n| walk(n, found)),
                Some(n @ Value::Object(_)) => walk(n, found),
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    if let Some(items) = plan.as_array() {
        items.iter().for_each(|n| walk(n, &mut found));
    }
    let mut big = Vec::new();
    for rel in found {
        let rows: f32 = app
            .db
            .query_one("SELECT greatest(reltuples, 0)::float4 FROM pg_class WHERE relname = $1", &[&rel])
            .await
            .unwrap()
            .get(0);
        if rows >= 1000.0 {
            big.push(format!("{rel} ({rows} rows)"));
        }
    }
    assert!(big.is_empty(), "{what}: sequential scans on {big:?}\n{plan:#}");
}

#[actix_rt::test]
async fn a_destination_signs_with_ed25519_keys_beside_or_instead_of_hmac_and_shows_only_public_keys() {
    use hookgate_core::signing::SigningKey;
    let rx = Receiver::start(vec![], None);
    let app = spawn_app_with(with_tokens).await;
    let (key, other) = (SigningKey::generate(), SigningKey::generate());
    let public = SigningKey::parse(&key).unwrap().public_key();

    // Refused, naming the field: a key that is not one, and a destination that would sign nothing.
    let bad = json!({"slug": "k", "url": rx.url, "signing_keys": [key, "whsk_c2hvcnQ="]});
    let a = app.admin("post", "/destinations", Some(WRITE), Some(bad)).await;
    a.assert_problem(422, "validation-failed");
    assert!(a.json["detail"].as_str().unwrap().contains("signing_keys[1]"), "{a:?}");
    let unsigned = json!({"slug": "k", "url": rx.url, "hmac": false});
    let a = app.admin("post", "/destinations", Some(WRITE), Some(unsigned)).await;
    a.assert_problem(422, "validation-failed");
    assert!(a.json["detail"].as_str().unwrap().contains("signing_keys"), "{a:?}");

    // v1a only: no HMAC secret to show; the public key is shown, the signing key never.
    let made = json!({"slug": "k", "url": rx.url, "hmac": false, "signing_keys": [key]});
    let created = app.admin_ok("post", "/destinations", Some(made)).await;
    assert!(created["secret"].is_null(), "{created}");
    assert_eq!(created["destination"]["signing_secrets"], 0);
    assert_eq!(created["destination"]["public_keys"], json!([public]));
    let id = created["destination"]["id"].as_str().unwrap().to_owned();
    for answer in [created.to_string(), app.admin("get", "/destinations", Some(READ), None).await.json.to_string()] {
        assert!(!answer.contains(key.strip_prefix("whsk_").unwrap()), "the signing key is never shown: {answer}");
    }

    app.admin_ok("post", "/routes", Some(json!({"slug": "to-k", "source": "hmac", "destination": "k"}))).await;
    let n = std::cell::Cell::new(0);
    eventually("an event delivered to the new destination", Duration::from_secs(30), || async {
        n.set(n.get() + 1);
        assert_eq!(app.post_signed(br#"{"k":1}"#, &format!("k-{}", n.get())).await.status, 202);
        (rx.count() > 0).then_some(())
    })
    .await;
    let got = rx.requests();
    let sig = got[0].header("webhook-signature").unwrap().to_owned();
    let v1a = sig.strip_prefix("v1a,").unwrap_or_else(|| panic!("one v1a signature: {sig}"));
    assert!(crate::delivery::v1a_verifies(&public, &got[0], v1a));

    // PUT replaces the keys (rotation: the new one beside the old, then the old removed); `[]` would sign
    // nothing, so it is refused while there is no HMAC secret.
    let put = |keys: Value| json!({"slug": "k", "url": rx.url, "signing_keys": keys});
    let both = app.admin_ok("put", &format!("/destinations/{id}"), Some(put(json!([other, key])))).await;
    assert_eq!(both["public_keys"].as_array().unwrap().len(), 2);
    let a = app.admin("put", &format!("/destinations/{id}"), Some(WRITE), Some(put(json!([])))).await;
    a.assert_problem(422, "validation-failed");
    let hmac_on_put = json!({"slug": "k", "url": rx.url, "hmac": true});
    let a = app.admin("put", &format!("/destinations/{id}"), Some(WRITE), Some(hmac_on_put)).await;
    a.assert_problem(422, "validation-failed");
    assert!(a.json["detail"].as_str().unwrap().contains("hmac"), "{a:?}");
    let kept = app.admin_ok("put", &format!("/destinations/{id}"), Some(json!({"slug": "k", "url": rx.url}))).await;
    assert_eq!(kept["public_keys"], both["public_keys"], "omitted keeps the keys");
}

#[actix_rt::test]
async fn a_filter_and_a_transform_are_tested_against_a_stored_event_with_a_read_token() {
    let app = spawn_app_with(with_tokens).await;
    let resp = app
        .http
        .post(app.url("/ingest/open"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"kind":"order.created","total":150}"#)
        .await
        .unwrap();
    let event = crate::helpers::answer(resp).await.id();
    let test = |filter: Option<&str>, transform: Option<&str>| {
        let body = json!({ "event_id": event, "filter": filter, "transform": transform });
        let app = &app;
        async move { app.admin("post", "/routes/test", Some(READ), Some(body)).await }
    };
    let a =
        test(Some(".body.total > 100 and .source == \"open\""), Some("{kind: .body.kind, cents: (.body.total * 100)}"))
            .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json,
        json!({ "matched": true, "output": { "kind": "order.created", "cents": 15000 }, "error": null })
    );
    let a = test(Some(".body.total > 1000"), Some("{}")).await;
    assert_eq!(a.json, json!({ "matched": false, "output": null, "error": null }), "{a:?}");
    let a = test(None, None).await;
    assert_eq!(a.json, json!({ "matched": true, "output": null, "error": null }), "{a:?}");
    let a = test(None, Some("error(\"boom\")")).await;
    assert_eq!((a.status, &a.json["matched"]), (200, &json!(false)), "{a:?}");
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("transform failed") && e.contains("boom")), "{a:?}");
    // A program that does not compile is refused as saving it would be; an unknown event is 404.
    test(Some(".body |||"), None).await.assert_problem(422, "validation-failed");
    let a = test(Some(".body |||"), None).await;
    assert!(a.json["detail"].as_str().unwrap().contains("the filter does not compile"), "{a:?}");
    let unknown = json!({ "event_id": uuid::Uuid::now_v7(), "filter": "true" });
    app.admin("post", "/routes/test", Some(READ), Some(unknown)).await.assert_problem(404, "not-found");
    let body = json!({ "event_id": event });
    app.admin("post", "/routes/test", None, Some(body)).await.assert_problem(401, "unauthorized");
}

#[actix_rt::test]
async fn the_event_list_filters_by_a_jq_program_page_by_page() {
    let app = spawn_app_with(with_tokens).await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let a = app
            .post_signed(
                format!(r#"{{"n":{n},"kind":"{}"}}"#, if n % 2 == 0 { "even" } else { "odd" }).as_bytes(),
                &format!("jq-{n}"),
            )
            .await;
        assert_eq!(a.status, 202, "{a:?}");
        ids.push(a.id());
    }
    // Newest first: the even ones are n = 6, 4, 2, 0; pages of 2 follow the cursor.
    let filter = "filter=.body.kind%20%3D%3D%20%22even%22";
    let first = app.admin_ok("get", &format!("/events?{filter}&limit=2"), None).await;
    let page_ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(page_ids(&first), [ids[6].to_string(), ids[4].to_string()], "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let second = app.admin_ok("get", &format!("/events?{filter}&limit=2&cursor={cursor}"), None).await;
    assert_eq!(page_ids(&second), [ids[2].to_string(), ids[0].to_string()], "{second}");
    assert!(second["next_cursor"].is_null(), "nothing after the last match: {second}");
    // With the other filters, and a program that matches nothing.
    let none = app.admin_ok("get", "/events?source=hmac&filter=.body.n%20%3E%20100", None).await;
    assert_eq!(none["items"], serde_json::json!([]), "{none}");
    // A program that does not compile is refused before anything is read.
    app.admin("get", "/events?filter=.body.%5B", Some(READ), None).await.assert_problem(422, "validation-failed");
}
