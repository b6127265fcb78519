//! Producer formats at the HTTP level: verification presets signed by independent implementations (Python's `hmac`,
//! the `standardwebhooks` crate, `ed25519-dalek`), CloudEvents in all three modes, event types, idempotency keys,
//! the abuse-protection handshake, and a corpus of bad inputs that must be refused with nothing stored.

use awc::http::header::HeaderValue;
use base64::Engine;
use hookgate::config::Settings;
use hookgate_core::source::SourceConfig;
use uuid::Uuid;

use crate::helpers::{answer, destination, eventually, route, spawn_app_with, Answer, TestApp};

const SWH_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const B64: base64::engine::general_purpose::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The sources these tests declare, beside the helpers' `hmac` and `open`.
fn sources() -> Vec<SourceConfig> {
    let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let pk = format!("whpk_{}", B64.encode(sk.verifying_key().to_bytes()));
    let text = format!(
        r#"
        [[sources]]
        slug = "github"
        require_json = true
        verification = {{ kind = "github", secret = ["old-secret", "It's a Secret to Everybody"] }}
        [[sources]]
        slug = "stripe"
        require_json = true
        verification = {{ kind = "stripe", secret = "whsec_stripe_test" }}
        [[sources]]
        slug = "shopify"
        verification = {{ kind = "shopify", secret = "shpss_test" }}
        dedupe_window_secs = 7
        [[sources]]
        slug = "swh"
        verification = {{ kind = "standard_webhooks", secret = "{SWH_SECRET}", public_key = "{pk}", tolerance_secs = 60 }}
        event_type = {{ from = "json_pointer", pointer = "/type" }}
        [[sources]]
        slug = "generic"
        verification = {{ kind = "hmac", header = "X-Sig", algorithm = "sha1", encoding = "base64", secret = "g-key", signed = "{{timestamp}}:{{body}}", timestamp_header = "X-Ts" }}
        event_type = {{ from = "header", header = "X-Kind" }}
        [[sources]]
        slug = "basic"
        verification = {{ kind = "basic", username = "hook", password = "p4ss" }}
        [[sources]]
        slug = "bearer"
        verification = {{ kind = "bearer", token = ["tok-1", "tok-2"] }}
        [[sources]]
        slug = "apikey"
        idempotency = {{ from = "json_pointer", pointer = "/meta/id" }}
        verification = {{ kind = "api_key", header = "X-Api-Key", key = "k-123" }}
        [[sources]]
        slug = "ce"
        cloudevents = true
        allowed_origins = ["https://producer.example"]
        allowed_rate = 120
        "#
    );
    Settings::from_toml(&text).expect("formats test sources").sources
}

async fn spawn() -> TestApp {
    spawn_app_with(|s| s.sources.extend(sources())).await
}

/// HMAC computed by Python's standard library (an implementation independent of ours).
fn py_hmac(algorithm: &str, key: &[u8], msg: &[u8], base64: bool) -> String {
    let script = format!(
        "import hmac,hashlib,sys,base64\nd=hmac.new(bytes.fromhex(sys.argv[1]), sys.stdin.buffer.read(), hashlib.{algorithm}).digest()\n\
         print(base64.b64encode(d).decode() if sys.argv[2]=='1' else d.hex(), end='')"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script, &hex::encode(key), if base64 { "1" } else { "0" }])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), msg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post(app: &TestApp, source: &str, headers: &[(&str, Vec<u8>)], body: &[u8]) -> Answer {
    let mut req = app.http.post(app.url(&format!("/ingest/{source}")));
    for (k, v) in headers {
        req = req.append_header((*k, HeaderValue::from_bytes(v).expect("valid header bytes")));
    }
    answer(req.send_body(body.to_vec()).await.expect("request sent")).await
}

fn h(name: &'static str, value: impl Into<Vec<u8>>) -> (&'static str, Vec<u8>) {
    (name, value.into())
}

async fn stored(app: &TestApp, id: Uuid) -> (String, Option<String>, Vec<u8>) {
    let row = app.db.query_one("SELECT idempotency_key, type, body FROM events WHERE id = $1", &[&id]).await.unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[actix_rt::test]
async fn the_github_preset_takes_its_key_and_type_from_githubs_headers_with_either_rotating_secret() {
    let app = spawn().await;
    let body = br#"{"zen":"Hello, World!"}"#;
    for (i, secret) in ["It's a Secret to Everybody", "old-secret"].iter().enumerate() {
        let sig = format!("sha256={}", py_hmac("sha256", secret.as_bytes(), body, false));
        let delivery = format!("72d3162e-cc78-11e3-81ab-4c9367dc095{i}");
        let a = post(
            &app,
            "github",
            &[
                h("Content-Type", "application/json"),
                h("X-Hub-Signature-256", sig),
                h("X-GitHub-Delivery", delivery.clone()),
                h("X-GitHub-Event", "push"),
            ],
            body,
        )
        .await;
        assert_eq!(a.status, 202, "{a:?}");
        assert_eq!(stored(&app, a.id()).await, (delivery, Some("push".into()), body.to_vec()));
    }
}

#[actix_rt::test]
async fn the_stripe_preset_verifies_a_python_signature_and_keys_on_the_body_id() {
    let app = spawn().await;
    let body = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"charge.succeeded","data":{}}"#;
    let t = now();
    let sig = py_hmac("sha256", b"whsec_stripe_test", &[format!("{t}.").as_bytes(), body].concat(), false);
    let header = format!("t={t},v1={},v1={sig},v0=ignored", "ab".repeat(32));
    let headers = [h("Content-Type", "application/json"), h("Stripe-Signature", header)];
    let first = post(&app, "stripe", &headers, body).await;
    assert_eq!(first.status, 202, "{first:?}");
    let (key, ty, _) = stored(&app, first.id()).await;
    assert_eq!((key.as_str(), ty.as_deref()), ("evt_1NG8Du2eZvKYlo2CUI79vXWy", Some("charge.succeeded")));
    let again = post(&app, "stripe", &headers, body).await;
    assert_eq!((again.id(), again.duplicate()), (first.id(), true));

    // Correctly signed, but 301 s old: refused, and the answer says why.
    let old = t - 301;
    let sig = py_hmac("sha256", b"whsec_stripe_test", &[format!("{old}.").as_bytes(), body].concat(), false);
    let stale = post(
        &app,
        "stripe",
        &[h("Content-Type", "application/json"), h("Stripe-Signature", format!("t={old},v1={sig}"))],
        body,
    )
    .await;
    stale.assert_problem(401, "invalid-signature");
    assert!(stale.json["detail"].as_str().unwrap().contains("stale"), "{stale:?}");
    assert!(!stale.json.to_string().contains("whsec_stripe_test"));
    assert_eq!(app.event_count().await, 1);
}

#[actix_rt::test]
async fn the_shopify_preset_verifies_base64_and_remembers_keys_for_its_dedupe_window() {
    // Remembering a key in Redis is best effort: past the cache's time-out (50 ms by default) it is dropped, which a
    // loaded test machine can reach. This test is about the entry's lifetime, so it gives Redis all the time it needs.
    let app = spawn_app_with(|s| {
        s.sources.extend(sources());
        s.redis.op_timeout_ms = 10_000;
    })
    .await;
    let body = br#"{"id":820982911946154508}"#;
    let sig = py_hmac("sha256", b"shpss_test", body, true);
    let a = post(
        &app,
        "shopify",
        &[
            h("X-Shopify-Hmac-Sha256", sig),
            h("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            h("X-Shopify-Topic", "orders/create"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    let (key, ty, _) = stored(&app, a.id()).await;
    assert_eq!((key.as_str(), ty.as_deref()), ("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", Some("orders/create")));
    // The Redis fast path keeps the key for the source's window (7 s), not the global 24 h.
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let source_id: Uuid = app.db.query_one("SELECT id FROM sources WHERE slug = 'shopify'", &[]).await.unwrap().get(0);
    let key = format!("{}:idem:{source_id}:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", app.settings.redis.key_prefix);
    let ttl: i64 = eventually("the cache entry", std::time::Duration::from_secs(10), || {
        let (key, mut conn) = (key.clone(), conn.clone());
        async move {
            let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut conn).await.ok()?;
            (ttl > 0).then_some(ttl)
        }
    })
    .await;
    assert!((1..=7).contains(&ttl), "TTL {ttl}");
}

#[actix_rt::test]
async fn standard_webhooks_accepts_the_reference_crates_v1_and_an_ed25519_v1a_signature() {
    let app = spawn().await;
    let body = br#"{"type":"invoice.paid","test":2432232314}"#;
    let t = now();
    let v1 = standardwebhooks::Webhook::new(SWH_SECRET).unwrap().sign("msg_1", t, body).unwrap();
    let a = post(
        &app,
        "swh",
        &[h("webhook-id", "msg_1"), h("webhook-timestamp", t.to_string()), h("webhook-signature", v1)],
        body,
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(stored(&app, a.id()).await.0, "msg_1");
    assert_eq!(stored(&app, a.id()).await.1.as_deref(), Some("invoice.paid"));

    use ed25519_dalek::Signer;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let sig = sk.sign(format!("msg_2.{t}.").as_bytes().iter().chain(body).copied().collect::<Vec<u8>>().as_slice());
    let value = format!("v1,{} v1a,{}", B64.encode([0u8; 32]), B64.encode(sig.to_bytes()));
    let b = post(
        &app,
        "swh",
        &[h("webhook-id", "msg_2"), h("webhook-timestamp", t.to_string()), h("webhook-signature", value)],
        body,
    )
    .await;
    assert_eq!(b.status, 202, "{b:?}");

    let future = t + 120;
    let v1 = standardwebhooks::Webhook::new(SWH_SECRET).unwrap().sign("msg_3", future, body).unwrap();
    let c = post(
        &app,
        "swh",
        &[h("webhook-id", "msg_3"), h("webhook-timestamp", future.to_string()), h("webhook-signature", v1)],
        body,
    )
    .await;
    c.assert_problem(401, "invalid-signature");
    assert!(c.json["detail"].as_str().unwrap().contains("future"), "{c:?}");
    assert_eq!(app.event_count().await, 2);
}

#[actix_rt::test]
async fn generic_hmac_basic_bearer_and_api_keys_accept_good_credentials() {
    let app = spawn().await;
    let t = now().to_string();
    let sig = py_hmac("sha1", b"g-key", format!("{t}:payload").as_bytes(), true);
    let a = post(&app, "generic", &[h("X-Sig", sig), h("X-Ts", t), h("X-Kind", "build.done")], b"payload").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(stored(&app, a.id()).await.1.as_deref(), Some("build.done"));

    let basic = format!("Basic {}", B64.encode("hook:p4ss"));
    assert_eq!(post(&app, "basic", &[h("Authorization", basic)], b"1").await.status, 202);
    for tok in ["tok-1", "tok-2"] {
        let a = post(&app, "bearer", &[h("Authorization", format!("Bearer {tok}"))], tok.as_bytes()).await;
        assert_eq!(a.status, 202, "{a:?}");
    }
    let a = post(&app, "apikey", &[h("X-Api-Key", "k-123")], br#"{"meta":{"id":42}}"#).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(stored(&app, a.id()).await.0, "42");
    let stored_headers: serde_json::Value =
        app.db.query_one("SELECT headers FROM events WHERE body = '1'", &[]).await.unwrap().get(0);
    assert!(stored_headers.get("authorization").is_none());
}

fn ce(id: &str, ty: &str) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/orders", "type": ty, "data": {"n": id}})
}

#[actix_rt::test]
async fn cloudevents_are_accepted_in_binary_structured_and_batch_mode() {
    let app = spawn_app_with(|s| {
        s.sources.extend(sources());
        s.destinations.push(destination("sink", "http://127.0.0.1:9/hook"));
        let mut r = route("created-only", "ce", "sink");
        r.filter = Some(r#".type == "order.created""#.into());
        s.routes.push(r);
    })
    .await;
    let binary = post(
        &app,
        "ce",
        &[
            h("ce-specversion", "1.0"),
            h("ce-id", "b-1"),
            h("ce-source", "/orders"),
            h("ce-type", "order.created"),
            h("Content-Type", "text/plain"),
        ],
        b"raw data",
    )
    .await;
    assert_eq!(binary.status, 202, "{binary:?}");
    assert_eq!(
        stored(&app, binary.id()).await,
        ("7:/ordersb-1".into(), Some("order.created".into()), b"raw data".to_vec())
    );

    let body = serde_json::to_vec(&ce("s-1", "order.paid")).unwrap();
    let structured = post(&app, "ce", &[h("Content-Type", "application/cloudevents+json")], &body).await;
    assert_eq!(structured.status, 202, "{structured:?}");
    assert_eq!(stored(&app, structured.id()).await.1.as_deref(), Some("order.paid"));

    let batch =
        serde_json::to_vec(&[ce("m-1", "order.created"), ce("m-2", "order.paid"), ce("s-1", "order.paid")]).unwrap();
    let a = post(&app, "ce", &[h("Content-Type", "application/cloudevents-batch+json")], &batch).await;
    assert_eq!(a.status, 202, "{a:?}");
    let events = a.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events.iter().map(|e| e["duplicate"].as_bool().unwrap()).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(events[2]["id"], structured.json["id"], "s-1 was stored by the structured request");
    let first: Uuid = events[0]["id"].as_str().unwrap().parse().unwrap();
    let (key, ty, bytes) = stored(&app, first).await;
    assert_eq!((key.as_str(), ty.as_deref()), ("7:/ordersm-1", Some("order.created")));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(), ce("m-1", "order.created"));
    assert_eq!(app.event_count().await, 4);
    // Routes filter on the stored type: only the two order.created events got a delivery.
    let n: i64 = app.db.query_one("SELECT count(*) FROM deliveries", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);

    let again = post(&app, "ce", &[h("Content-Type", "application/cloudevents-batch+json")], &batch).await;
    assert!(again.json["events"].as_array().unwrap().iter().all(|e| e["duplicate"] == true), "{again:?}");
    assert_eq!(app.event_count().await, 4);
}

#[actix_rt::test]
async fn a_cloudevents_batch_is_one_transaction_even_past_the_writers_batch_size() {
    let app = spawn_app_with(|s| {
        s.sources.extend(sources());
        s.writer.batch_max = 2;
    })
    .await;
    let batch: Vec<_> = (0..7).map(|i| ce(&format!("tx-{i}"), "t")).collect();
    let a = post(
        &app,
        "ce",
        &[h("Content-Type", "application/cloudevents-batch+json")],
        &serde_json::to_vec(&batch).unwrap(),
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json["events"].as_array().unwrap().len(), 7);
    let tx: i64 = app.db.query_one("SELECT count(DISTINCT xmin::text) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(tx, 1, "all seven events were committed by one transaction");
    assert_eq!(app.event_count().await, 7);
}

#[actix_rt::test]
async fn a_cloudevents_batch_with_one_bad_event_stores_nothing_and_names_it() {
    let app = spawn().await;
    let mut bad = ce("x-2", "t");
    bad.as_object_mut().unwrap().remove("source");
    let batch = serde_json::to_vec(&[ce("x-1", "t"), bad]).unwrap();
    let a = post(&app, "ce", &[h("Content-Type", "application/cloudevents-batch+json")], &batch).await;
    a.assert_problem(400, "invalid-cloudevent");
    assert_eq!(a.json["detail"], "event 1: the required attribute source is missing");
    assert_eq!(app.event_count().await, 0);
}

#[actix_rt::test]
async fn the_abuse_protection_handshake_grants_only_allowed_origins() {
    let app = spawn().await;
    let options = |source: &str, origin: Option<&str>| {
        let mut req = app.http.request(awc::http::Method::OPTIONS, app.url(&format!("/ingest/{source}")));
        if let Some(o) = origin {
            req = req.insert_header(("WebHook-Request-Origin", o));
        }
        req.send()
    };
    let resp = options("ce", Some("https://producer.example")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("webhook-allowed-origin").unwrap(), "https://producer.example");
    assert_eq!(resp.headers().get("webhook-allowed-rate").unwrap(), "120");
    answer(options("ce", Some("https://evil.example")).await.unwrap()).await.assert_problem(403, "origin-not-allowed");
    answer(options("github", Some("https://producer.example")).await.unwrap())
        .await
        .assert_problem(403, "origin-not-allowed");
    answer(options("ce", None).await.unwrap()).await.assert_problem(400, "bad-request");
    answer(options("nope", Some("https://producer.example")).await.unwrap())
        .await
        .assert_problem(404, "unknown-source");
}

#[actix_rt::test]
async fn a_corpus_of_bad_inputs_is_refused_with_the_right_problem_and_nothing_stored() {
    let app = spawn().await;
    let t = now();
    let json = || h("Content-Type", "application/json");
    let gh = |v: &[u8]| h("X-Hub-Signature-256", v.to_vec());
    let good_gh = format!("sha256={}", py_hmac("sha256", b"It's a Secret to Everybody", b"", false));
    let stripe_sig = |ts: i64, body: &[u8]| {
        py_hmac("sha256", b"whsec_stripe_test", &[format!("{ts}.").as_bytes(), body].concat(), false)
    };
    let hex64 = "ab".repeat(32);
    let swh = |id: &str, ts: &str, sig: &str| {
        vec![h("webhook-id", id), h("webhook-timestamp", ts), h("webhook-signature", sig)]
    };
    let basic = |s: &[u8]| vec![h("Authorization", s.to_vec())];
    let ce_ct = |ct: &str| h("Content-Type", ct.to_owned());
    type Case = (&'static str, &'static str, Vec<(&'static str, Vec<u8>)>, Vec<u8>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("github: no signature", "github", vec![json()], b"{}".to_vec(), 401, "invalid-signature"),
        (
            "github: truncated hex",
            "github",
            vec![json(), gh(b"sha256=75710")],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "github: wrong prefix",
            "github",
            vec![json(), gh(format!("sha1={hex64}").as_bytes())],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "github: duplicate header",
            "github",
            vec![json(), gh(good_gh.as_bytes()), gh(good_gh.as_bytes())],
            vec![],
            401,
            "invalid-signature",
        ),
        (
            "github: non-ASCII",
            "github",
            vec![json(), gh("sha256=é".as_bytes())],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "github: huge value",
            "github",
            vec![json(), gh(format!("sha256={}", "a".repeat(9000)).as_bytes())],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        ("github: signed empty body", "github", vec![json(), gh(good_gh.as_bytes())], vec![], 400, "invalid-json"),
        (
            "stripe: empty params",
            "stripe",
            vec![json(), h("Stripe-Signature", "t=,v1=")],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: duplicate t",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("t={t},t={t},v1={}", stripe_sig(t, b"{}")))],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: no t",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("v1={hex64}"))],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: truncated",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("t={t},v1"))],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: future",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("t={},v1={}", t + 900, stripe_sig(t + 900, b"{}")))],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: wrong secret",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("t={t},v1={hex64}"))],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "stripe: signed but no /id",
            "stripe",
            vec![json(), h("Stripe-Signature", format!("t={t},v1={}", stripe_sig(t, b"{}")))],
            b"{}".to_vec(),
            400,
            "bad-request",
        ),
        (
            "shopify: wrong base64",
            "shopify",
            vec![h("X-Shopify-Hmac-Sha256", "%%%notb64")],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        ("swh: not base64", "swh", swh("m", &t.to_string(), "v1,!!!!"), b"{}".to_vec(), 401, "invalid-signature"),
        ("swh: empty signature", "swh", swh("m", &t.to_string(), "v1,"), b"{}".to_vec(), 401, "invalid-signature"),
        (
            "swh: unknown version only",
            "swh",
            swh("m", &t.to_string(), "v9,abcd"),
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "swh: timestamp not digits",
            "swh",
            swh("m", "12e4", &format!("v1,{}", B64.encode([0u8; 32]))),
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "swh: stale",
            "swh",
            swh(
                "m",
                &(t - 61).to_string(),
                &standardwebhooks::Webhook::new(SWH_SECRET).unwrap().sign("m", t - 61, b"{}").unwrap(),
            ),
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "swh: no id",
            "swh",
            vec![h("webhook-timestamp", t.to_string()), h("webhook-signature", "v1,AAAA")],
            b"{}".to_vec(),
            401,
            "invalid-signature",
        ),
        ("basic: truncated", "basic", basic(b"Basic"), b"1".to_vec(), 401, "invalid-signature"),
        ("basic: wrong base64", "basic", basic(b"Basic !!!"), b"1".to_vec(), 401, "invalid-signature"),
        (
            "basic: no colon",
            "basic",
            basic(format!("Basic {}", B64.encode("hookp4ss")).as_bytes()),
            b"1".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "basic: wrong password",
            "basic",
            basic(format!("Basic {}", B64.encode("hook:p4sS")).as_bytes()),
            b"1".to_vec(),
            401,
            "invalid-signature",
        ),
        ("basic: non-ASCII", "basic", basic("Basic ü".as_bytes()), b"1".to_vec(), 401, "invalid-signature"),
        ("bearer: no token", "bearer", basic(b"Bearer"), b"1".to_vec(), 401, "invalid-signature"),
        ("bearer: two tokens", "bearer", basic(b"Bearer tok-1 tok-2"), b"1".to_vec(), 401, "invalid-signature"),
        ("bearer: other scheme", "bearer", basic(b"Token tok-1"), b"1".to_vec(), 401, "invalid-signature"),
        (
            "api key: wrong",
            "apikey",
            vec![h("X-Api-Key", "k-12")],
            br#"{"meta":{"id":1}}"#.to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "api key: key not in body",
            "apikey",
            vec![h("X-Api-Key", "k-123")],
            br#"{"meta":{}}"#.to_vec(),
            400,
            "bad-request",
        ),
        ("api key: body not JSON", "apikey", vec![h("X-Api-Key", "k-123")], b"nope".to_vec(), 400, "invalid-json"),
        ("ce: plain JSON", "ce", vec![json()], ce("a", "t").to_string().into_bytes(), 400, "invalid-cloudevent"),
        ("ce: structured, empty body", "ce", vec![ce_ct("application/cloudevents+json")], vec![], 400, "invalid-json"),
        (
            "ce: structured, no id",
            "ce",
            vec![ce_ct("application/cloudevents+json")],
            br#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_vec(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: structured, specversion 0.3",
            "ce",
            vec![ce_ct("application/cloudevents+json")],
            br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#.to_vec(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: batch, not an array",
            "ce",
            vec![ce_ct("application/cloudevents-batch+json")],
            ce("a", "t").to_string().into_bytes(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: batch, a number inside",
            "ce",
            vec![ce_ct("application/cloudevents-batch+json")],
            format!("[{},5]", ce("a", "t")).into_bytes(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: binary, duplicate ce-id",
            "ce",
            vec![h("ce-specversion", "1.0"), h("ce-id", "1"), h("ce-id", "2"), h("ce-source", "/s"), h("ce-type", "t")],
            b"x".to_vec(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: binary, non-ASCII source",
            "ce",
            vec![h("ce-specversion", "1.0"), h("ce-id", "1"), h("ce-source", "/é".as_bytes()), h("ce-type", "t")],
            b"x".to_vec(),
            400,
            "invalid-cloudevent",
        ),
        (
            "ce: binary, huge id",
            "ce",
            vec![h("ce-specversion", "1.0"), h("ce-id", "i".repeat(5000)), h("ce-source", "/s"), h("ce-type", "t")],
            b"x".to_vec(),
            400,
            "invalid-cloudevent",
        ),
        (
            "generic: no timestamp",
            "generic",
            vec![h("X-Sig", B64.encode([0u8; 20]))],
            b"x".to_vec(),
            401,
            "invalid-signature",
        ),
        (
            "generic: type with control char",
            "generic",
            vec![
                h("X-Sig", py_hmac("sha1", b"g-key", format!("{t}:x").as_bytes(), true)),
                h("X-Ts", t.to_string()),
                h("X-Kind", "a\tb"),
            ],
            b"x".to_vec(),
            400,
            "bad-request",
        ),
    ];
    for (name, source, headers, body, status, problem) in cases {
        let a = post(&app, source, &headers, &body).await;
        assert_eq!(a.status, status, "{name}: {a:?}");
        a.assert_problem(status, problem);
        assert_eq!(app.event_count().await, 0, "{name} stored something");
    }
}
